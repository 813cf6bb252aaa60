"""Skipping a task (services.task_skip): the lease is released, no answer is stored, the task goes
back to the pool and comes back to the person only when nothing else is left; the verify page's k
(views.verify_skip) and the API's POST /api/v1/tasks/<uuid>/skip, with their permission matrix."""

import uuid

import pytest
from django.urls import reverse

from annotate import services
from annotate.models import AnnotatorStats, Answer, Lease, Skip, Task

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, task_with_candidates, user_with_role

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def campaign(db):
    # One person per task at a time, no gold: a held lease keeps the task from everyone else.
    return CampaignFactory(overlap_min=1, overlap_max=1, gold_first_count=0, gold_rate=0, gold_early_rate=0)


def _next(user, campaign, seed=0):
    return services.task_next_for(user=user, campaign=campaign, seed=seed)


class TestTaskSkip:
    def test_releases_the_lease_stores_no_answer_and_hands_out_another_task(self, campaign):
        first = task_with_candidates(campaign, shuffle_key=10)
        second = task_with_candidates(campaign, shuffle_key=20)
        kim, lee = user_with_role("employee"), user_with_role("employee")
        assert _next(kim, campaign) == first
        assert _next(lee, campaign) == second  # first is held by kim
        services.task_skip(user=kim, task=first)
        assert not Lease.objects.filter(task=first).exists()
        assert not Answer.objects.exists() and not AnnotatorStats.objects.exists()
        assert Task.objects.get(pk=first.pk).answer_count == 0
        # Back in the pool at once: the next person gets it.
        carol = user_with_role("employee")
        assert _next(carol, campaign) == first

    def test_the_skipped_task_comes_back_only_when_nothing_else_is_left_oldest_first(self, campaign):
        tasks = [task_with_candidates(campaign, shuffle_key=k) for k in (10, 20, 30)]
        kim = user_with_role("employee")
        handed = _next(kim, campaign)
        assert handed == tasks[0]
        services.task_skip(user=kim, task=handed)
        assert _next(kim, campaign) == tasks[1]  # not the same one again
        services.task_skip(user=kim, task=tasks[1])
        assert _next(kim, campaign) == tasks[2]
        services.task_skip(user=kim, task=tasks[2])
        # Everything skipped: the longest skipped first, then the next.
        assert _next(kim, campaign) == tasks[0]
        services.task_skip(user=kim, task=tasks[0])  # again: to the back
        assert _next(kim, campaign) == tasks[1]

    def test_skipping_is_idempotent_and_refused_after_an_answer(self, campaign):
        task = task_with_candidates(campaign, shuffle_key=10)
        kim = user_with_role("employee")
        _next(kim, campaign)
        services.task_skip(user=kim, task=task)
        services.task_skip(user=kim, task=task)
        assert Skip.objects.filter(task=task, annotator=kim).count() == 1
        _next(kim, campaign)
        services.answer_submit(user=kim, task=task, choice="none", duration_ms=1500, idempotency_key="a1")
        with pytest.raises(services.AnswerConflict) as caught:
            services.task_skip(user=kim, task=task)
        assert caught.value.code == "already_answered"
        assert Answer.objects.filter(task=task, revoked_at__isnull=True).count() == 1

    def test_a_skipped_gold_task_is_not_offered_again(self, campaign):
        gold = task_with_candidates(campaign, shuffle_key=10)
        services.gold_set(task=gold, label="none")
        regular = task_with_candidates(campaign, shuffle_key=20)
        campaign.gold_first_count, campaign.gold_early_rate = 100, 1.0
        campaign.save()
        kim = user_with_role("employee")
        assert _next(kim, campaign) == gold  # every draw is gold
        services.task_skip(user=kim, task=gold)
        assert _next(kim, campaign) == regular

    def test_the_peek_never_prefetches_a_skipped_task(self, campaign):
        first = task_with_candidates(campaign, shuffle_key=10)
        second = task_with_candidates(campaign, shuffle_key=20)
        kim = user_with_role("employee")
        services.task_skip(user=kim, task=second)
        current = _next(kim, campaign)
        assert current == first
        assert services.task_peek_after(user=kim, campaign=campaign, seed=0, current=current) is None


class TestVerifySkipView:
    def test_k_partial_shows_the_next_task_and_says_skipped(self, client, campaign):
        first = task_with_candidates(campaign, shuffle_key=10)
        second = task_with_candidates(campaign, shuffle_key=20)
        kim = user_with_role("employee")
        client.force_login(kim)
        page = client.get(reverse("annotate:verify", args=[campaign.slug])).content.decode()
        assert 'data-key="k"' in page and "<kbd>k</kbd> skip" in page and "<kbd>Space</kbd> zoom" in page
        response = client.post(reverse("annotate:verify-skip", args=[campaign.slug]), {"task": first.uuid}, **HTMX)
        html = response.content.decode()
        assert response.status_code == 200 and f'value="{second.uuid}"' in html and "Skipped." in html
        assert not Answer.objects.exists()

    def test_the_last_task_skipped_comes_back_with_a_notice(self, client, campaign):
        only = task_with_candidates(campaign, shuffle_key=10)
        client.force_login(user_with_role("employee"))
        client.get(reverse("annotate:verify", args=[campaign.slug]))
        response = client.post(reverse("annotate:verify-skip", args=[campaign.slug]), {"task": only.uuid}, **HTMX)
        html = response.content.decode()
        assert f'value="{only.uuid}"' in html and "no other task left for you" in html

    @pytest.mark.parametrize("role", ROLE_MATRIX)
    def test_permission_matrix(self, client, as_role, campaign, role):
        task = task_with_candidates(campaign, shuffle_key=10)
        as_role(role)
        response = client.post(reverse("annotate:verify-skip", args=[campaign.slug]), {"task": task.uuid})
        if role == "anonymous":
            assert response.status_code == 302 and "/accounts/login/" in response["Location"]
        elif role in ("employee", "admin"):
            assert response.status_code == 302 and Skip.objects.filter(task=task).count() == 1
        else:
            assert response.status_code == 403
        if role not in ("employee", "admin"):
            assert not Skip.objects.exists()

    def test_a_task_of_another_campaign_is_404_and_nothing_is_skipped(self, client, campaign):
        other = task_with_candidates(CampaignFactory(slug="dinner"), shuffle_key=10)
        client.force_login(user_with_role("employee"))
        response = client.post(reverse("annotate:verify-skip", args=[campaign.slug]), {"task": other.uuid}, **HTMX)
        assert response.status_code == 404 and not Skip.objects.exists()


class TestSkipApi:
    @pytest.mark.parametrize("role", ROLE_MATRIX)
    def test_permission_matrix(self, api, campaign, role):
        task = task_with_candidates(campaign)
        if role != "anonymous":
            api.force_authenticate(user_with_role(role, username=f"api-{role}"))
        response = api.post(f"/api/v1/tasks/{task.uuid}/skip")
        expected = 200 if role in ("employee", "admin") else (401 if role == "anonymous" else 403)
        assert response.status_code == expected
        assert Skip.objects.filter(task=task).count() == (1 if expected == 200 else 0)

    def test_skip_then_next_task_is_another_and_a_skip_after_an_answer_is_409(self, api, campaign):
        first = task_with_candidates(campaign, shuffle_key=10)
        second = task_with_candidates(campaign, shuffle_key=20)
        kim = user_with_role("employee")
        api.force_authenticate(kim)
        assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task?seed=0").json()["uuid"] == str(first.uuid)
        body = api.post(f"/api/v1/tasks/{first.uuid}/skip").json()
        assert body["task"] == str(first.uuid) and body["skipped_at"]
        assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task?seed=0").json()["uuid"] == str(second.uuid)
        answered = api.post(
            f"/api/v1/tasks/{second.uuid}/answers",
            {"choice": "none", "duration_ms": 1500, "idempotency_key": "k1"},
            format="json",
        )
        assert answered.status_code == 201
        response = api.post(f"/api/v1/tasks/{second.uuid}/skip")
        assert response.status_code == 409 and response.json()["code"] == "already_answered"
        assert api.post(f"/api/v1/tasks/{uuid.uuid4()}/skip").status_code == 404
