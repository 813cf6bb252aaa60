"""Consensus on the database: per-task updates, dynamic overlap, routing by priority, gold mixing, the
full recompute (idempotent, version-checked) and annotator flags."""

from datetime import timedelta

import numpy as np
import pytest
from django.db.models import F

from annotate import services
from annotate.consensus import em
from annotate.consensus import services as consensus
from annotate.models import AnnotatorStats, Answer, Campaign, Task
from annotate.tasks import consensus_recompute_dirty_task, consensus_recompute_task

from ..factories import CampaignFactory, task_with_candidates, user_with_role


@pytest.fixture
def campaign(db):
    return CampaignFactory(overlap_min=1, overlap_max=5, confidence_target=0.95, gold_first_count=0, gold_rate=0)


def _people(n):
    return [user_with_role("employee") for _ in range(n)]


_keys = iter(range(10**9))


def _answer(user, task, pick="none", duration_ms=1500):
    choice, product = (pick, None)
    if pick.isdigit():
        choice, product = "product", task.candidates.get(rank=int(pick)).product.uuid
    return services.answer_submit(
        user=user,
        task=task,
        choice=choice,
        product_uuid=product,
        duration_ms=duration_ms,
        idempotency_key=f"k{next(_keys)}",
    )[0]


class TestDynamicOverlap:
    def test_two_agreeing_answers_settle_a_task(self, campaign):
        task = task_with_candidates(campaign)
        first, second = _people(2)
        _answer(first, task, "none")
        task.refresh_from_db()
        # One answer with the prior pooled matrix (accuracy 0.7, 6 options): P(none) = 0.7.
        assert task.status == Task.Status.OPEN and task.label == "none"
        assert task.confidence == pytest.approx(0.7, abs=1e-6)
        assert sum(task.posterior.values()) == pytest.approx(1.0, abs=1e-4)
        _answer(second, task, "none")
        task.refresh_from_db()
        # 0.7^2 / (0.7^2 + 5 * 0.06^2) = 0.9646 >= 0.95
        assert task.confidence == pytest.approx(0.49 / 0.508, abs=1e-5)
        assert task.status == Task.Status.COMPLETE and task.completed_at is not None and task.answer_count == 2

    def test_a_contested_task_collects_answers_up_to_the_cap(self, campaign):
        task = task_with_candidates(campaign)
        for person, pick in zip(_people(5), ["1", "none", "1", "none", "2"], strict=True):
            task.refresh_from_db()
            assert task.status == Task.Status.OPEN
            _answer(person, task, pick)
        task.refresh_from_db()
        assert task.answer_count == 5 and task.status == Task.Status.COMPLETE
        assert task.confidence < campaign.confidence_target

    def test_a_task_is_never_handed_to_more_people_than_it_needs(self, campaign):
        first_task = task_with_candidates(campaign, shuffle_key=1)
        second_task = task_with_candidates(campaign, shuffle_key=2)
        a, b, c = _people(3)
        # overlap_min 1: each fresh task needs one answer, so one live lease each.
        assert services.task_next_for(user=a, campaign=campaign, seed=0) == first_task
        assert services.task_next_for(user=b, campaign=campaign, seed=0) == second_task
        assert services.task_next_for(user=c, campaign=campaign, seed=0) is None
        with pytest.raises(services.AnswerConflict) as exc:
            services.answer_submit(user=c, task=first_task, choice="none", duration_ms=1500, idempotency_key="c-1")
        assert exc.value.code == "leased_to_other"

    def test_the_router_serves_the_highest_priority_first(self, campaign):
        low = task_with_candidates(campaign, shuffle_key=1)
        high = task_with_candidates(campaign, shuffle_key=2)
        Task.objects.filter(pk=low.pk).update(priority=10)
        Task.objects.filter(pk=high.pk).update(priority=40)
        (person,) = _people(1)
        assert services.task_next_for(user=person, campaign=campaign, seed=0) == high

    def test_priority_follows_the_overlap_rule(self, campaign):
        campaign.overlap_min, campaign.overlap_max = 2, 3
        uniform = np.full((3, 6), 1 / 6)
        pooled = em.default_pooled(6)
        priority = consensus.task_priority(
            campaign=campaign, posterior=uniform, pooled=pooled, answer_count=np.array([0, 1, 2])
        )
        # 0 answers: the next cannot reach overlap_min; 2 answers: the next reaches overlap_max.
        assert priority[0] == 0 and priority[2] == 100
        # 1 answer, uniform posterior: no single answer lifts it to 0.95.
        assert priority[1] == 0

    def test_a_task_one_answer_from_settling_is_served_first(self, campaign):
        started = task_with_candidates(campaign, shuffle_key=5)
        for _ in range(3):
            task_with_candidates(campaign, shuffle_key=1)
        first, second = _people(2)
        _answer(first, started, "none")
        started.refresh_from_db()
        # P(settle) = P(the next answer agrees) = 0.7 * 0.7 + 0.3 * 0.06 = 0.508 with the prior pooled matrix.
        assert started.priority == 51
        assert services.task_next_for(user=second, campaign=campaign, seed=0) == started

    def test_undo_takes_the_answer_out_of_the_consensus(self, campaign):
        task = task_with_candidates(campaign)
        first, second = _people(2)
        _answer(first, task, "none")
        _answer(second, task, "none")
        services.answer_undo_last(user=second, campaign=campaign)
        task.refresh_from_db()
        assert task.answer_count == 1 and task.status == Task.Status.OPEN
        assert task.confidence == pytest.approx(0.7, abs=1e-6)

    def test_a_too_fast_answer_is_kept_but_counts_nothing(self, campaign):
        task = task_with_candidates(campaign)
        (person,) = _people(1)
        answer = _answer(person, task, "1", duration_ms=campaign.min_duration_ms - 1)
        assert answer.is_too_fast and answer.label == "1"
        task.refresh_from_db()
        assert task.confidence == pytest.approx(1 / 6, abs=1e-6)
        assert AnnotatorStats.objects.get(annotator=person).too_fast_count == 1


class TestGoldMixing:
    def test_a_new_annotator_gets_gold_first_then_regular_tasks(self, campaign):
        campaign.gold_first_count = 2
        campaign.save()
        gold = [task_with_candidates(campaign, shuffle_key=k) for k in (1, 2, 3)]
        regular = task_with_candidates(campaign, shuffle_key=4)
        for task in gold:
            services.gold_set(task=task, label="none")
        (person,) = _people(1)
        served = []
        for _ in range(3):
            task = services.task_next_for(user=person, campaign=campaign, seed=0)
            served.append(task)
            _answer(person, task, "none")
        assert served[0].is_gold and served[1].is_gold
        assert served[2] == regular

    def test_gold_tasks_take_any_number_of_people_and_never_complete(self, campaign):
        campaign.gold_rate = 1.0
        campaign.save()
        task = task_with_candidates(campaign)
        services.gold_set(task=task, label="2")
        for person in _people(6):
            assert services.task_next_for(user=person, campaign=campaign, seed=0) == task
            _answer(person, task, "2")
        task.refresh_from_db()
        assert task.status == Task.Status.OPEN and task.answer_count == 6
        assert task.label == "2" and task.confidence == 1.0

    def test_gold_set_refuses_an_unknown_label(self, campaign):
        task = task_with_candidates(campaign)
        with pytest.raises(services.GoldInvalid):
            services.gold_set(task=task, label="7")
        assert not Task.objects.get(pk=task.pk).is_gold


class TestFullRecompute:
    def _answered_campaign(self, campaign):
        good = _people(3)
        bad = user_with_role("employee")
        tasks = [task_with_candidates(campaign) for _ in range(8)]
        for task in tasks[:5]:
            services.gold_set(task=task, label="1")
        for task in tasks:
            for person in good:
                Answer.objects.create(
                    task=task,
                    annotator=person,
                    choice="product",
                    product=task.candidates.get(rank=1).product,
                    label="1",
                    duration_ms=2000,
                    idempotency_key=f"{person.pk}-{task.pk}",
                )
            Answer.objects.create(
                task=task,
                annotator=bad,
                choice="unfit",
                label="unfit",
                duration_ms=300,
                is_too_fast=True,
                idempotency_key=f"{bad.pk}-{task.pk}",
            )
        Task.objects.filter(campaign=campaign).update(answer_count=4)
        return good, bad, tasks

    def test_writes_consensus_stats_and_flags_and_is_idempotent(self, campaign):
        campaign.same_option_run_limit = 8
        campaign.save()
        good, bad, tasks = self._answered_campaign(campaign)
        # Gold answers count towards what people see (the gold_accuracy_low flag) once past the undo
        # window (consensus.gold_reveal).
        Answer.objects.update(created_at=F("created_at") - timedelta(minutes=11))
        report = consensus.consensus_recompute(campaign_id=campaign.pk)
        assert report.answer_count == 32 and report.task_count == 8 and report.tasks_skipped == 0
        first = {t.pk: (t.label, t.posterior, t.status) for t in Task.objects.filter(campaign=campaign)}
        assert all(label == "1" for label, _, _ in first.values())
        regular = {t.pk for t in tasks[5:]}
        assert all(status == Task.Status.COMPLETE for pk, (_, _, status) in first.items() if pk in regular)
        assert all(status == Task.Status.OPEN for pk, (_, _, status) in first.items() if pk not in regular)
        stats = {s.annotator_id: s for s in AnnotatorStats.objects.filter(campaign=campaign)}
        assert stats[good[0].pk].gold_answer_count == 5 and stats[good[0].pk].gold_correct_count == 5
        assert stats[good[0].pk].agreement == 1.0 and stats[good[0].pk].flags == []
        assert stats[bad.pk].gold_correct_count == 0 and stats[bad.pk].agreement == 0.0
        # 0 of 5 gold right, 8 of 8 answers too fast, 8 "unfit" in a row.
        assert set(stats[bad.pk].flags) == {"gold_accuracy_low", "too_fast", "same_option_run"}
        assert stats[good[0].pk].reliability > stats[bad.pk].reliability
        campaign.refresh_from_db()
        assert campaign.consensus_params["labels"] == campaign.labels()
        assert campaign.consensus_computed_at is not None

        again = consensus.consensus_recompute(campaign_id=campaign.pk)
        assert again.tasks_skipped == 0
        assert {t.pk: (t.label, t.posterior, t.status) for t in Task.objects.filter(campaign=campaign)} == first

    def test_a_task_answered_during_the_recompute_keeps_its_own_update(self, campaign, monkeypatch):
        _, _, tasks = self._answered_campaign(campaign)
        load = consensus._load_answers

        def load_then_answer(c):
            data = load(c)
            # Someone answers tasks[6] after the recompute read the answers.
            Task.objects.filter(pk=tasks[6].pk).update(consensus_version=99, label="racing")
            return data

        monkeypatch.setattr(consensus, "_load_answers", load_then_answer)
        report = consensus.consensus_recompute(campaign_id=campaign.pk)
        assert report.tasks_skipped == 1
        assert Task.objects.get(pk=tasks[6].pk).label == "racing"
        assert Task.objects.get(pk=tasks[7].pk).label == "1"

    def test_paused_people_weigh_less_and_keep_their_answers(self, campaign):
        task = task_with_candidates(campaign)
        first, second = _people(2)
        _answer(first, task, "1")
        _answer(second, task, "none")
        consensus.consensus_recompute(campaign_id=campaign.pk)
        before = Task.objects.get(pk=task.pk).posterior
        services.annotator_pause(campaign=campaign, annotator=second, paused=True)
        consensus.consensus_recompute(campaign_id=campaign.pk)
        after = Task.objects.get(pk=task.pk).posterior
        assert Answer.objects.filter(annotator=second, revoked_at__isnull=True).count() == 1
        assert after["1"] > before["1"] and after["none"] < before["none"]

    def test_model_voter_learns_a_confusion_and_is_not_a_human_answer(self, campaign):
        campaign.model_votes = True
        campaign.save()
        tasks = [task_with_candidates(campaign) for _ in range(4)]  # top score 0.9 >= 0.5: votes "1"
        people = _people(2)
        for task in tasks:
            for person in people:
                _answer(person, task, "1")
        consensus.consensus_recompute(campaign_id=campaign.pk)
        campaign.refresh_from_db()
        model = campaign.consensus_params[consensus.MODEL_VOTER]
        assert len(model) == 6 and model[0][0] > 0.5
        assert {t.answer_count for t in Task.objects.filter(campaign=campaign)} == {2}

    def test_the_dirty_flag_drives_the_beat_task(self, campaign):
        task = task_with_candidates(campaign)
        _answer(_people(1)[0], task, "none")
        campaign.refresh_from_db()
        assert campaign.consensus_dirty
        consensus_recompute_dirty_task()  # a direct call, as beat would queue it
        campaign.refresh_from_db()
        assert not campaign.consensus_dirty and campaign.consensus_computed_at is not None
        computed_at = campaign.consensus_computed_at
        consensus_recompute_dirty_task()  # nothing dirty: nothing done
        campaign.refresh_from_db()
        assert campaign.consensus_computed_at == computed_at
        consensus_recompute_task(campaign.pk)  # explicit, whatever the flag
        campaign.refresh_from_db()
        assert campaign.consensus_computed_at > computed_at

    def test_a_failed_recompute_leaves_the_campaign_dirty(self, campaign, monkeypatch):
        Campaign.objects.filter(pk=campaign.pk).update(consensus_dirty=True)

        def broken(**kwargs):
            raise RuntimeError("disk full")

        monkeypatch.setattr(consensus, "consensus_recompute", broken)
        with pytest.raises(RuntimeError):
            consensus.consensus_recompute_dirty()
        assert Campaign.objects.get(pk=campaign.pk).consensus_dirty

    def test_a_missing_campaign_is_logged_and_skipped(self, db):
        assert consensus.consensus_recompute(campaign_id=999_999) is None


@pytest.mark.parametrize("method", ["dawid_skene", "majority_vote"])
def test_a_task_whose_answers_all_weigh_nothing_stays_unlabelled(campaign, method):
    # Issue 15, item 4: a task answered only too fast used to get the class prior's label written.
    Campaign.objects.filter(pk=campaign.pk).update(consensus_method=method, min_duration_ms=700)
    campaign.refresh_from_db()
    task = task_with_candidates(campaign)
    other = task_with_candidates(campaign)
    (person,) = _people(1)
    _answer(person, task, "none", duration_ms=100)  # too fast: weight 0
    _answer(person, other, "1")
    task.refresh_from_db()
    assert (task.label, task.status, task.answer_count) == ("", Task.Status.OPEN, 1)
    consensus.consensus_recompute(campaign_id=campaign.pk)
    task.refresh_from_db()
    other.refresh_from_db()
    assert (task.label, task.status) == ("", Task.Status.OPEN)
    assert other.label == "1"


def test_a_flag_informs_admins_but_does_not_lower_the_vote(campaign):
    # Issue 15, item 3: the model learns a flagged person's reliability; only a pause (an admin's
    # decision) tempers their votes.
    flagged = AnnotatorStats(campaign=campaign, flags=[AnnotatorStats.Flag.TOO_FAST.value])
    paused = AnnotatorStats(campaign=campaign, flags=[AnnotatorStats.Flag.TOO_FAST.value], is_paused=True)
    assert consensus.annotator_vote_weight(flagged, campaign) == 1.0
    assert consensus.annotator_vote_weight(paused, campaign) == campaign.paused_vote_weight
    assert consensus.annotator_vote_weight(None, campaign) == 1.0
