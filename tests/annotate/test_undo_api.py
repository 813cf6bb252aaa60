"""The API's POST /api/v1/campaigns/<slug>/undo (api.UndoView): the caller's last answer in a match
campaign is revoked, as z does on the verify page, and its task comes back as their next task; with
its permission matrix, nothing to undo, and the wrong kind of campaign."""

import pytest

from annotate.models import Answer, Campaign

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, task_with_candidates, user_with_role


@pytest.fixture
def campaign(db):
    return CampaignFactory(overlap_min=1, overlap_max=1, gold_first_count=0, gold_rate=0, gold_early_rate=0)


def _answer(api, task, key: str, choice: str = "none"):
    response = api.post(
        f"/api/v1/tasks/{task.uuid}/answers",
        {"choice": choice, "duration_ms": 1500, "idempotency_key": key},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response


class TestUndoApi:
    def test_undo_revokes_the_last_answer_and_next_task_returns_its_task(self, api, campaign):
        first = task_with_candidates(campaign, shuffle_key=10)
        second = task_with_candidates(campaign, shuffle_key=20)
        kim = user_with_role("employee")
        api.force_authenticate(kim)
        assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task?seed=0").json()["uuid"] == str(first.uuid)
        _answer(api, first, "k1")
        assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task?seed=0").json()["uuid"] == str(second.uuid)

        response = api.post(f"/api/v1/campaigns/{campaign.slug}/undo")

        assert response.status_code == 200
        body = response.json()
        assert body["uuid"] == str(first.uuid) and len(body["candidates"]) == 3 and body["lease_expires_at"]
        answer = Answer.objects.get(task=first)
        assert answer.revoked_at is not None  # kept, marked revoked
        first.refresh_from_db()
        assert first.status == first.Status.OPEN
        # Leased back: it is the caller's next task, and it can be answered again.
        assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task?seed=0").json()["uuid"] == str(first.uuid)
        _answer(api, first, "k2", choice="not_a_product")
        assert Answer.objects.filter(task=first, revoked_at__isnull=True).get().choice == "not_a_product"

    def test_nothing_to_undo_is_409_and_changes_nothing(self, api, campaign):
        task = task_with_candidates(campaign, shuffle_key=10)
        kim, lee = user_with_role("employee"), user_with_role("employee")
        api.force_authenticate(lee)
        _answer(api, task, "lee-1")
        api.force_authenticate(kim)  # kim has answered nothing: lee's answer is not kim's to undo
        response = api.post(f"/api/v1/campaigns/{campaign.slug}/undo")
        assert response.status_code == 409 and response.json()["code"] == "nothing_to_undo"
        assert Answer.objects.get(task=task).revoked_at is None

    def test_undoing_twice_undoes_the_answer_before_then_runs_out(self, api, campaign):
        tasks = [task_with_candidates(campaign, shuffle_key=k) for k in (10, 20)]
        api.force_authenticate(user_with_role("employee"))
        for i, task in enumerate(tasks):
            assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task?seed=0").json()["uuid"] == str(task.uuid)
            _answer(api, task, f"k{i}")
        assert api.post(f"/api/v1/campaigns/{campaign.slug}/undo").json()["uuid"] == str(tasks[1].uuid)
        assert api.post(f"/api/v1/campaigns/{campaign.slug}/undo").json()["uuid"] == str(tasks[0].uuid)
        assert api.post(f"/api/v1/campaigns/{campaign.slug}/undo").status_code == 409
        assert not Answer.objects.filter(revoked_at__isnull=True).exists()

    @pytest.mark.parametrize("role", ROLE_MATRIX)
    def test_permission_matrix(self, api, campaign, role):
        task = task_with_candidates(campaign)
        user = user_with_role(role, username=f"api-{role}") if role != "anonymous" else None
        if user is not None and role in ("employee", "admin"):
            api.force_authenticate(user)
            _answer(api, task, "k1")
        api.force_authenticate(user)
        response = api.post(f"/api/v1/campaigns/{campaign.slug}/undo")
        expected = 200 if role in ("employee", "admin") else (401 if role == "anonymous" else 403)
        assert response.status_code == expected
        if expected == 200:
            assert Answer.objects.get(task=task).revoked_at is not None

    def test_an_attributes_campaign_or_an_unknown_one_is_404(self, api, campaign):
        tagging = CampaignFactory(slug="tagging", kind=Campaign.Kind.ATTRIBUTES)
        api.force_authenticate(user_with_role("employee"))
        for slug, code in ((tagging.slug, "wrong_campaign_kind"), ("no-such-campaign", "not_found")):
            response = api.post(f"/api/v1/campaigns/{slug}/undo")
            assert (response.status_code, response.json()["code"]) == (404, code)
