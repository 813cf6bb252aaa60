"""Routing, leases, answers and undo (annotate.services)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from annotate import services
from annotate.models import Answer, Lease, Task

from ..factories import CampaignFactory, task_with_candidates, user_with_role


@pytest.fixture
def campaign(db):
    # Fixed overlap of 3 (overlap_min = overlap_max), no gold: the routing rules in isolation.
    return CampaignFactory(overlap_min=3, overlap_max=3, lease_seconds=300)


def _answer(user, task, choice="none", key=None, product=None):
    return services.answer_submit(
        user=user,
        task=task,
        choice=choice,
        product_uuid=product,
        duration_ms=1200,
        idempotency_key=key or f"{user.pk}-{task.pk}",
    )


class TestTaskNextFor:
    def test_leases_the_first_task_in_shuffle_order_from_the_seed(self, campaign, employee):
        low = task_with_candidates(campaign, shuffle_key=100)
        high = task_with_candidates(campaign, shuffle_key=900)
        assert services.task_next_for(user=employee, campaign=campaign, seed=500) == high
        lease = Lease.objects.get(annotator=employee)
        assert lease.task == high
        assert lease.expires_at > timezone.now() + timedelta(seconds=290)
        # A seed past the last key wraps round to the start.
        other = user_with_role("employee")
        assert services.task_next_for(user=other, campaign=campaign, seed=950) == low

    def test_same_task_again_while_the_lease_lives(self, campaign, employee):
        task_with_candidates(campaign, shuffle_key=1)
        task_with_candidates(campaign, shuffle_key=2)
        first = services.task_next_for(user=employee, campaign=campaign, seed=0)
        again = services.task_next_for(user=employee, campaign=campaign, seed=12345)
        assert first == again
        assert Lease.objects.filter(annotator=employee).count() == 1

    def test_never_hands_out_a_task_the_person_answered(self, campaign, employee):
        task = task_with_candidates(campaign, shuffle_key=1)
        _answer(employee, task)
        assert services.task_next_for(user=employee, campaign=campaign, seed=0) is None

    def test_a_task_is_shared_by_at_most_answers_per_task_people(self, campaign):
        first = task_with_candidates(campaign, shuffle_key=1)
        second = task_with_candidates(campaign, shuffle_key=2)
        people = [user_with_role("employee") for _ in range(4)]
        handed = [services.task_next_for(user=p, campaign=campaign, seed=0) for p in people]
        assert handed[:3] == [first, first, first]
        assert handed[3] == second  # the first task's three slots are all leased

    def test_an_expired_lease_frees_its_slot(self, campaign):
        task = task_with_candidates(campaign, shuffle_key=1)
        people = [user_with_role("employee") for _ in range(3)]
        for p in people:
            services.task_next_for(user=p, campaign=campaign, seed=0)
        late = user_with_role("employee")
        assert services.task_next_for(user=late, campaign=campaign, seed=0) is None
        Lease.objects.filter(annotator=people[0]).update(expires_at=timezone.now() - timedelta(seconds=1))
        assert services.task_next_for(user=late, campaign=campaign, seed=0) == task

    def test_complete_tasks_are_not_handed_out(self, campaign, employee):
        task_with_candidates(campaign, shuffle_key=1)
        Task.objects.update(status=Task.Status.COMPLETE)
        assert services.task_next_for(user=employee, campaign=campaign, seed=0) is None

    def test_taking_a_new_task_releases_the_previous_lease(self, campaign, employee):
        first = task_with_candidates(campaign, shuffle_key=1)
        task_with_candidates(campaign, shuffle_key=2)
        services.task_next_for(user=employee, campaign=campaign, seed=0)
        _answer(employee, first)
        nxt = services.task_next_for(user=employee, campaign=campaign, seed=0)
        assert nxt != first
        assert list(Lease.objects.filter(annotator=employee).values_list("task", flat=True)) == [nxt.pk]

    def test_peek_does_not_lease(self, campaign, employee):
        first = task_with_candidates(campaign, shuffle_key=1)
        second = task_with_candidates(campaign, shuffle_key=2)
        current = services.task_next_for(user=employee, campaign=campaign, seed=0)
        assert current == first
        assert services.task_peek_after(user=employee, campaign=campaign, seed=0, current=current) == second
        assert Lease.objects.filter(task=second).count() == 0


class TestAnswerSubmit:
    def test_stores_the_answer_and_releases_the_lease(self, campaign, employee):
        task = task_with_candidates(campaign)
        services.task_next_for(user=employee, campaign=campaign, seed=0)
        product = task.candidates.get(rank=2).product
        answer, created = _answer(employee, task, choice="product", product=product.uuid)
        assert created
        assert (answer.choice, answer.product, answer.duration_ms) == ("product", product, 1200)
        task.refresh_from_db()
        assert task.answer_count == 1 and task.status == Task.Status.OPEN
        assert not Lease.objects.filter(annotator=employee).exists()

    def test_same_idempotency_key_returns_the_first_answer(self, campaign, employee):
        task = task_with_candidates(campaign)
        first, created = _answer(employee, task, key="k1")
        again, created_again = _answer(employee, task, key="k1")
        assert created and not created_again
        assert again.pk == first.pk
        assert Answer.objects.count() == 1
        task.refresh_from_db()
        assert task.answer_count == 1

    def test_same_key_with_a_different_answer_is_a_conflict(self, campaign, employee):
        task = task_with_candidates(campaign)
        _answer(employee, task, key="k1", choice="none")
        with pytest.raises(services.AnswerConflict) as err:
            _answer(employee, task, key="k1", choice="unfit")
        assert err.value.code == "idempotency_key_reused"

    def test_second_answer_by_the_same_person_is_a_conflict(self, campaign, employee):
        task = task_with_candidates(campaign)
        _answer(employee, task, key="a")
        with pytest.raises(services.AnswerConflict) as err:
            _answer(employee, task, key="b")
        assert err.value.code == "already_answered"
        assert Answer.objects.count() == 1

    def test_completes_after_answers_per_task_distinct_people(self, campaign, employee, employee2, employee3):
        task = task_with_candidates(campaign)
        for user in (employee, employee2, employee3):
            _answer(user, task)
        task.refresh_from_db()
        assert task.status == Task.Status.COMPLETE and task.answer_count == 3
        late = user_with_role("employee")
        with pytest.raises(services.AnswerConflict) as err:
            _answer(late, task)
        assert err.value.code == "task_complete"

    def test_answer_to_a_task_leased_to_others_is_refused(self, campaign, employee):
        task = task_with_candidates(campaign)
        holders = [user_with_role("employee") for _ in range(3)]
        for holder in holders:
            assert services.task_next_for(user=holder, campaign=campaign, seed=0) == task
        with pytest.raises(services.AnswerConflict) as err:
            _answer(employee, task)
        assert err.value.code == "leased_to_other"
        assert not Answer.objects.exists()
        task.refresh_from_db()
        assert task.answer_count == 0

    def test_an_unleased_task_with_room_can_be_answered(self, campaign, employee):
        task = task_with_candidates(campaign)
        answer, created = _answer(employee, task)
        assert created and answer.task == task

    @pytest.mark.parametrize(
        "fields, bad",
        [
            ({"choice": "maybe"}, "choice"),
            ({"choice": "product", "product_uuid": None}, "product"),
            ({"choice": "none", "product_uuid": "00000000-0000-0000-0000-000000000000"}, "product"),
            ({"duration_ms": -5}, "duration_ms"),
            ({"duration_ms": "soon"}, "duration_ms"),
            ({"idempotency_key": ""}, "idempotency_key"),
            ({"idempotency_key": "x" * 81}, "idempotency_key"),
        ],
    )
    def test_invalid_fields_are_reported_and_nothing_is_written(self, campaign, employee, fields, bad):
        task = task_with_candidates(campaign)
        kwargs = {"choice": "none", "product_uuid": None, "duration_ms": 100, "idempotency_key": "k"} | fields
        with pytest.raises(services.AnswerInvalid) as err:
            services.answer_submit(user=employee, task=task, **kwargs)
        assert bad in err.value.errors
        assert not Answer.objects.exists()

    def test_a_product_outside_the_candidates_is_refused(self, campaign, employee):
        task = task_with_candidates(campaign)
        elsewhere = task_with_candidates(campaign).candidates.first().product
        with pytest.raises(services.AnswerInvalid) as err:
            _answer(employee, task, choice="product", product=elsewhere.uuid)
        assert err.value.errors == {"product": ["is not one of this task's candidates"]}


class TestUndo:
    def test_undo_revokes_the_last_answer_and_gives_the_task_back(self, campaign, employee):
        first = task_with_candidates(campaign, shuffle_key=1)
        second = task_with_candidates(campaign, shuffle_key=2)
        _answer(employee, first, key="a")
        _answer(employee, second, key="b")
        assert services.answer_undo_last(user=employee, campaign=campaign) == second
        revoked = Answer.objects.get(idempotency_key="b")
        assert revoked.revoked_at is not None  # kept, not deleted
        second.refresh_from_db()
        assert second.answer_count == 0
        assert services.task_next_for(user=employee, campaign=campaign, seed=0) == second
        # Answering it again is allowed after the undo.
        answer, created = _answer(employee, second, key="c", choice="unfit")
        assert created and answer.choice == "unfit"

    def test_undo_reopens_a_completed_task(self, campaign, employee, employee2, employee3):
        task = task_with_candidates(campaign)
        for user in (employee2, employee3, employee):
            _answer(user, task)
        services.answer_undo_last(user=employee, campaign=campaign)
        task.refresh_from_db()
        assert (task.status, task.answer_count) == (Task.Status.OPEN, 2)

    def test_nothing_to_undo(self, campaign, employee):
        assert services.answer_undo_last(user=employee, campaign=campaign) is None

    def test_answers_older_than_the_window_cannot_be_undone(self, campaign, employee):
        task = task_with_candidates(campaign)
        _answer(employee, task)
        Answer.objects.update(created_at=timezone.now() - services.UNDO_WINDOW - timedelta(seconds=1))
        assert services.answer_undo_last(user=employee, campaign=campaign) is None
