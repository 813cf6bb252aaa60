"""The JSON API: next-task and answers, with the permission matrix, idempotency and bad input."""

import uuid

import pytest
from knox.models import AuthToken

from annotate.models import Answer, Task

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, task_with_candidates, user_with_role

ALLOWED = {"employee", "admin"}


@pytest.fixture
def campaign(db):
    return CampaignFactory()


def _login(api, role):
    if role == "anonymous":
        return None
    user = user_with_role(role, username=f"api-{role}")
    api.force_authenticate(user)
    return user


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_next_task_permission_matrix(api, campaign, role):
    task_with_candidates(campaign)
    _login(api, role)
    response = api.get(f"/api/v1/campaigns/{campaign.slug}/next-task")
    expected = 200 if role in ALLOWED else (401 if role == "anonymous" else 403)
    assert response.status_code == expected


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_answer_permission_matrix(api, campaign, role):
    task = task_with_candidates(campaign)
    _login(api, role)
    response = api.post(
        f"/api/v1/tasks/{task.uuid}/answers",
        {"choice": "none", "duration_ms": 900, "idempotency_key": "k"},
        format="json",
    )
    expected = 201 if role in ALLOWED else (401 if role == "anonymous" else 403)
    assert response.status_code == expected
    assert Answer.objects.count() == (1 if role in ALLOWED else 0)


def test_anonymous_gets_401_with_a_token_challenge(api, campaign):
    response = api.get(f"/api/v1/campaigns/{campaign.slug}/next-task")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_next_task_payload_has_photo_three_candidates_and_no_truth(api, campaign, employee):
    task = task_with_candidates(campaign)
    api.force_authenticate(employee)
    data = api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").json()
    assert data["uuid"] == str(task.uuid)
    assert data["photo"]["image_url"].startswith("http://testserver/media/photos/")
    assert [c["rank"] for c in data["candidates"]] == [1, 2, 3]
    assert all(c["product"]["image_url"].startswith("http://testserver/media/products/") for c in data["candidates"])
    assert data["choices"] == ["product", "none", "not_a_product", "unfit"]
    assert data["lease_expires_at"]
    assert "score" not in str(data) and "truth" not in str(data)


def test_next_task_is_204_when_nothing_is_left(api, campaign, employee):
    api.force_authenticate(employee)
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").status_code == 204


def test_unknown_campaign_is_404(api, employee):
    api.force_authenticate(employee)
    assert api.get("/api/v1/campaigns/nope/next-task").status_code == 404


def test_token_auth(api, campaign, employee):
    task_with_candidates(campaign)
    _, token = AuthToken.objects.create(user=employee)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").status_code == 200
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").status_code == 401


class TestAnswers:
    def url(self, task):
        return f"/api/v1/tasks/{task.uuid}/answers"

    def test_pick_a_candidate(self, api, campaign, employee):
        task = task_with_candidates(campaign)
        api.force_authenticate(employee)
        product = task.candidates.get(rank=1).product
        response = api.post(
            self.url(task),
            {"choice": "product", "product": str(product.uuid), "duration_ms": 2100, "idempotency_key": "a1"},
            format="json",
        )
        assert response.status_code == 201
        assert response.json()["product"] == str(product.uuid)
        assert Answer.objects.get().product == product

    def test_same_idempotency_key_again_gives_the_same_answer(self, api, campaign, employee):
        task = task_with_candidates(campaign)
        api.force_authenticate(employee)
        body = {"choice": "none", "duration_ms": 700}
        first = api.post(self.url(task), body, format="json", HTTP_IDEMPOTENCY_KEY="abc")
        second = api.post(self.url(task), body, format="json", HTTP_IDEMPOTENCY_KEY="abc")
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.json()["uuid"] == second.json()["uuid"]
        assert Answer.objects.count() == 1
        assert Task.objects.get().answer_count == 1

    def test_second_answer_by_the_same_person_is_409(self, api, campaign, employee):
        task = task_with_candidates(campaign)
        api.force_authenticate(employee)
        api.post(self.url(task), {"choice": "none", "duration_ms": 1, "idempotency_key": "1"}, format="json")
        response = api.post(
            self.url(task), {"choice": "unfit", "duration_ms": 1, "idempotency_key": "2"}, format="json"
        )
        assert response.status_code == 409
        assert response.json()["code"] == "already_answered"

    def test_task_leased_to_someone_else_is_409(self, api, campaign, employee):
        campaign.overlap_min = campaign.overlap_max = 1
        campaign.save()
        task = task_with_candidates(campaign)
        holder = user_with_role("employee")
        api.force_authenticate(holder)
        assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").json()["uuid"] == str(task.uuid)
        api.force_authenticate(employee)
        response = api.post(self.url(task), {"choice": "none", "duration_ms": 5, "idempotency_key": "x"}, format="json")
        assert response.status_code == 409
        assert response.json() == {
            "code": "leased_to_other",
            "detail": "This task is reserved for other annotators right now.",
        }
        assert not Answer.objects.exists()

    @pytest.mark.parametrize(
        "body, field",
        [
            ({"duration_ms": 5, "idempotency_key": "k"}, "choice"),
            ({"choice": "yes", "duration_ms": 5, "idempotency_key": "k"}, "choice"),
            ({"choice": "none", "idempotency_key": "k"}, "duration_ms"),
            ({"choice": "none", "duration_ms": -1, "idempotency_key": "k"}, "duration_ms"),
            ({"choice": "none", "duration_ms": 5}, "idempotency_key"),
            ({"choice": "product", "duration_ms": 5, "idempotency_key": "k"}, "product"),
            ({"choice": "product", "product": str(uuid.uuid4()), "duration_ms": 5, "idempotency_key": "k"}, "product"),
            ({"choice": "product", "product": "not-a-uuid", "duration_ms": 5, "idempotency_key": "k"}, "product"),
        ],
    )
    def test_bad_fields_are_400_with_reasons(self, api, campaign, employee, body, field):
        task = task_with_candidates(campaign)
        api.force_authenticate(employee)
        response = api.post(self.url(task), body, format="json")
        assert response.status_code == 400
        assert field in response.json()
        assert not Answer.objects.exists()

    def test_unknown_task_is_404(self, api, employee):
        api.force_authenticate(employee)
        response = api.post(
            f"/api/v1/tasks/{uuid.uuid4()}/answers",
            {"choice": "none", "duration_ms": 1, "idempotency_key": "k"},
            format="json",
        )
        assert response.status_code == 404

    def test_malformed_json_is_400(self, api, campaign, employee):
        task = task_with_candidates(campaign)
        api.force_authenticate(employee)
        response = api.post(self.url(task), "{not json", content_type="application/json")
        assert response.status_code == 400
        assert not Answer.objects.exists()


def test_schema_and_docs_are_served_without_a_cdn(client, employee):
    client.force_login(employee)
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/tasks/{uuid}/answers" in schema.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/" in html
    assert "cdn.jsdelivr" not in html and "unpkg.com" not in html


def test_healthz_needs_no_login(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok", "storage": "ok"}


def test_next_task_while_the_campaign_prepares_is_409_with_retry_after_not_nothing_left(api, employee, db):
    # Issue 16, bug 5: 204 means "nothing left for you"; a preparing campaign has not started yet.
    from annotate.models import Campaign

    campaign = CampaignFactory(slug="warming-up", status=Campaign.Status.PREPARING)
    api.force_authenticate(employee)
    response = api.get(f"/api/v1/campaigns/{campaign.slug}/next-task")
    assert response.status_code == 409
    assert response.json()["code"] == "campaign_preparing"
    assert int(response["Retry-After"]) > 0
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.ACTIVE)
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").status_code == 204
