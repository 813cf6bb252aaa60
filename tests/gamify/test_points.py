"""Points settled through the real answer path (annotate.services.answer_submit / answer_undo_last and
the consensus hooks): hand-made crowds with known outcomes, tallies kept equal to the answers' points."""

import io
from collections import Counter
from datetime import timedelta

import pytest
from django.db import transaction
from django.db.models import F, Sum

from annotate.consensus.services import consensus_recompute
from annotate.models import AnnotatorStats, Answer, ConsensusMethod, Lease, Task, Team, TeamMember
from annotate.services import answer_submit, answer_undo_last, gold_set
from gamify import rules, services
from gamify.models import ALL_TIME, AnswerPoints, BadgeAward, Profile, Tally

from ..factories import CampaignFactory, task_with_candidates, user_with_role


@pytest.fixture
def campaign(db):
    # Fixed overlap of 3 and a plain majority vote: each task settles on its third answer, to the
    # majority's label, which makes the expected points easy to write down.
    return CampaignFactory(consensus_method=ConsensusMethod.MAJORITY_VOTE, overlap_min=3, overlap_max=3)


@pytest.fixture
def people(db):
    return [user_with_role("employee", username=name) for name in ("ann", "ben", "cat", "dan")]


def answer(user, task, label, *, duration_ms=2000):
    """Answer `task` with a label key ("1".."3", "none", "not_a_product", "unfit")."""
    if label.isdigit():
        product = task.candidates.get(rank=int(label)).product
        choice, product_uuid = "product", product.uuid
    else:
        choice, product_uuid = label, None
    return answer_submit(
        user=user,
        task=task,
        choice=choice,
        product_uuid=product_uuid,
        duration_ms=duration_ms,
        idempotency_key=f"{user.pk}-{task.pk}-{label}-{Answer.objects.count()}",
    )[0]


def points_of(user) -> int:
    return AnswerPoints.objects.filter(annotator=user).aggregate(s=Sum("points"))["s"] or 0


def tally(user, period=Tally.Period.ALL):
    return Tally.objects.filter(user=user, period=period).first()


def assert_tallies_match_answers():
    """Every tally equals the sum of its answers' contributions (the invariant deltas must keep)."""
    expected = Counter()
    for p in AnswerPoints.objects.all():
        c = rules.tally_contribution(outcome=p.outcome, points=p.points, is_match=p.is_match)
        for key in (("day", p.answered_on), ("week", p.week_of), ("all", ALL_TIME)):
            for i, name in enumerate(("points", "answer_count", "settled_count", "agree_count", "match_count")):
                expected[(p.annotator_id, *key, name)] += c[i]
    for t in Tally.objects.all():
        for name in ("points", "answer_count", "settled_count", "agree_count", "match_count"):
            assert getattr(t, name) == expected[(t.user_id, t.period, t.period_start, name)], (t, name)


def test_points_wait_for_the_task_to_settle_then_reward_the_majority(campaign, people):
    ann, ben, cat, _ = people
    task = task_with_candidates(campaign)
    answer(ann, task, "1")
    answer(ben, task, "1")
    assert points_of(ann) == points_of(ben) == 0
    assert set(AnswerPoints.objects.values_list("outcome", flat=True)) == {"pending"}
    assert tally(ann).answer_count == 1 and tally(ann).points == 0
    answer(cat, task, "1")  # third answer: settles, unanimous, confidence 1.0
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETE and task.label == "1"
    assert points_of(ann) == points_of(ben) == points_of(cat) == 10
    assert tally(ann).match_count == 1 and tally(ann, Tally.Period.DAY).points == 10
    assert_tallies_match_answers()


def test_fast_wrong_clicker_earns_nothing_while_careful_people_earn(campaign, people):
    ann, ben, cat, dan = people
    tasks = [task_with_candidates(campaign) for _ in range(3)]
    for task in tasks:
        answer(dan, task, "unfit", duration_ms=150)  # under the 700 ms human-speed floor, and wrong
        answer(ann, task, "2")
        answer(ben, task, "2")
    # The too-fast answer counts 0 in consensus: the careful pair settles each task as "2"; the third
    # slot was taken by the fast clicker, so every task settled at overlap_max.
    assert set(Task.objects.values_list("label", "status")) == {("2", "complete")}
    assert points_of(dan) == 0
    assert set(AnswerPoints.objects.filter(annotator=dan).values_list("outcome", flat=True)) == {"too_fast"}
    assert tally(dan) is None  # too fast: no count, no points, no streak, no badge
    # A too-fast answer does not make a task contested either (else a spammer would raise everyone's
    # bonus): the two counted answers agree at confidence 1.0, so 10 each.
    assert points_of(ann) == points_of(ben) == 3 * 10
    assert_tallies_match_answers()


def test_contested_task_pays_the_majority_more_and_the_minority_nothing(campaign, people):
    ann, ben, cat, _ = people
    task = task_with_candidates(campaign)
    answer(ann, task, "none")
    answer(ben, task, "none")
    answer(cat, task, "3")
    task.refresh_from_db()
    assert task.label == "none" and task.status == Task.Status.COMPLETE
    assert points_of(ann) == points_of(ben) == 15 and points_of(cat) == 0
    assert AnswerPoints.objects.get(annotator=cat).outcome == "disagree"
    assert tally(ann).match_count == 0  # "none" is a settled label, not a product match
    assert_tallies_match_answers()


def test_points_follow_the_label_when_consensus_flips(campaign, people):
    ann, ben, cat, dan = people
    task = task_with_candidates(campaign)
    answer(ann, task, "1")
    answer(ben, task, "none")
    answer(cat, task, "none")
    assert (points_of(ann), points_of(ben), points_of(cat)) == (0, 15, 15)
    # cat undoes: the task reopens, so nobody's points on it stand any more.
    answer_undo_last(user=cat, campaign=campaign)
    assert (points_of(ann), points_of(ben), points_of(cat)) == (0, 0, 0)
    assert AnswerPoints.objects.get(answer__annotator=cat).outcome == "revoked"
    Lease.objects.filter(annotator=cat).delete()  # cat's lease on the reopened task runs out
    # dan sides with ann: the label flips from "none" to "1" and the points move with it.
    answer(dan, task, "1")
    task.refresh_from_db()
    assert task.label == "1" and task.status == Task.Status.COMPLETE
    assert (points_of(ann), points_of(ben), points_of(cat), points_of(dan)) == (15, 0, 0, 15)
    assert tally(cat).answer_count == 0 and tally(ben).settled_count == 1 and tally(ben).agree_count == 0
    assert_tallies_match_answers()


def test_bulk_path_resettles_only_changed_tasks_in_one_batch(campaign, people, django_assert_max_num_queries):
    ann, ben, cat, _ = people
    tasks = [task_with_candidates(campaign) for _ in range(4)]
    for task in tasks:
        answer(ann, task, "1")
        answer(ben, task, "1")
        answer(cat, task, "2")
    assert points_of(cat) == 0 and points_of(ann) == 4 * 15
    ids = [t.pk for t in tasks]
    # What the full recompute's _tasks_write does: snapshot, bulk write, re-settle the changed ones.
    with transaction.atomic():
        before = services.tasks_label_status(ids)
        Task.objects.filter(pk__in=ids[:2]).update(label="2")  # the EM now believes cat on two tasks
        after = {pk: ("2" if pk in ids[:2] else "1", "complete") for pk in ids}
        with django_assert_max_num_queries(14):  # one batch, whatever the number of tasks
            changed = services.points_settle_changed(before=before, after=after)
    assert changed == 6  # three answers on each of the two flipped tasks
    assert points_of(cat) == 2 * 15 and points_of(ann) == points_of(ben) == 2 * 15
    assert_tallies_match_answers()


def test_gold_answers_settle_five_at_a_time_once_past_the_undo_window(campaign, people):
    ann, ben, *_ = people
    gold_tasks = [task_with_candidates(campaign) for _ in range(AnnotatorStats.GOLD_REVEAL_BATCH)]
    for i, task in enumerate(gold_tasks):
        gold_set(task=task, label="2")
        answer(ann, task, "2")
        answer(ben, task, "none" if i == 0 else "2")  # 4 of 5 right: not flagged
    # Nothing on screen may tell a gold task apart: its answers stay pending after the answer, and
    # after the full recompute too while they can still be undone.
    assert set(AnswerPoints.objects.values_list("outcome", flat=True)) == {"pending"}
    consensus_recompute(campaign_id=campaign.pk)
    assert set(AnswerPoints.objects.values_list("outcome", flat=True)) == {"pending"}
    Answer.objects.update(created_at=F("created_at") - timedelta(minutes=11))
    consensus_recompute(campaign_id=campaign.pk)
    assert points_of(ann) == 50 and points_of(ben) == 40
    assert AnswerPoints.objects.get(annotator=ben, answer__task=gold_tasks[0]).outcome == "disagree"
    consensus_recompute(campaign_id=campaign.pk)  # idempotent
    assert points_of(ann) == 50
    gold_set(task=gold_tasks[0], label="none")  # the ML team corrects a known answer
    assert points_of(ann) == 50  # still nothing moves on screen until the recompute
    consensus_recompute(campaign_id=campaign.pk)
    assert points_of(ann) == 40 and points_of(ben) == 50
    assert_tallies_match_answers()


def test_fewer_than_five_gold_answers_stay_pending(campaign, people):
    ann, *_ = people
    for _ in range(AnnotatorStats.GOLD_REVEAL_BATCH - 1):
        task = task_with_candidates(campaign)
        gold_set(task=task, label="2")
        answer(ann, task, "2")
    Answer.objects.update(created_at=F("created_at") - timedelta(minutes=11))
    consensus_recompute(campaign_id=campaign.pk)
    assert points_of(ann) == 0
    assert set(AnswerPoints.objects.values_list("outcome", flat=True)) == {"pending"}
    assert AnnotatorStats.objects.get(annotator=ann).gold_shown_answer_count == 0


def test_flagged_or_paused_people_lose_their_points_at_the_recompute_and_regain_them(campaign, people):
    from annotate.services import annotator_pause

    ann, ben, cat, _ = people
    task = task_with_candidates(campaign)
    for person in (ann, ben, cat):
        answer(person, task, "3")
    assert points_of(ann) == 10
    annotator_pause(campaign=campaign, annotator=ann, paused=True)
    consensus_recompute(campaign_id=campaign.pk)
    assert points_of(ann) == 0 and AnswerPoints.objects.get(annotator=ann).outcome == "spam"
    assert points_of(ben) == 10
    annotator_pause(campaign=campaign, annotator=ann, paused=False)
    AnnotatorStats.objects.filter(annotator=ann).update(flags=[])
    consensus_recompute(campaign_id=campaign.pk)
    assert points_of(ann) == 10
    assert_tallies_match_answers()


def test_badges_and_streak(campaign, people):
    ann, ben, cat, _ = people
    tasks = [task_with_candidates(campaign) for _ in range(10)]
    for i, task in enumerate(tasks):
        answer(ann, task, "2")
        answer(ben, task, "2")
        answer(cat, task, "2" if i else "1")
    badges = set(BadgeAward.objects.filter(user=ann).values_list("badge", flat=True))
    # 10 verifications; first live answer on tasks that settled to a product; answers other than
    # the model's top suggestion that consensus confirmed.
    assert badges == {"verified_10", "first_match", "rescued"}
    assert set(BadgeAward.objects.filter(user=ben).values_list("badge", flat=True)) == {"verified_10", "rescued"}
    profile = Profile.objects.get(user=ann)
    assert profile.streak_days == 1 and profile.streak_last_on == services.local_today()
    events = services.celebrations_pop(user=ann)
    assert {e["kind"] for e in events} == {"badge", "level", "streak"}
    assert [e for e in events if e["kind"] == "level"][0]["title"] == "Level 2"  # 10 x 15 = 150 points
    assert services.celebrations_pop(user=ann) == []  # each celebrated once


def test_tallies_carry_the_team_for_team_boards(campaign, people):
    ann, ben, cat, _ = people
    team = Team.objects.create(slug="merch", name="Merchandising")
    TeamMember.objects.create(team=team, user=ann)
    task = task_with_candidates(campaign)
    for person in (ann, ben, cat):
        answer(person, task, "1")
    assert set(Tally.objects.filter(user=ann).values_list("team_id", flat=True)) == {team.pk}
    assert set(Tally.objects.filter(user=ben).values_list("team_id", flat=True)) == {None}


def test_attribute_campaigns_earn_no_points(db, people):
    from annotate.models import Campaign

    tagging = CampaignFactory(slug="tagging", kind=Campaign.Kind.ATTRIBUTES)
    task = task_with_candidates(tagging)
    Answer.objects.create(
        task=task, annotator=people[0], choice="none", label="none", duration_ms=2000, idempotency_key="t1"
    )
    Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE, label="none")
    task.refresh_from_db()
    assert services.points_settle_task(task=task, campaign=tagging) == 0
    assert services.points_settle(task_ids=[task.pk]) == 0
    assert not AnswerPoints.objects.exists() and not Tally.objects.exists()


def test_backfill_settles_answers_given_before_gamify(campaign, people, monkeypatch):
    from django.core.management import call_command

    ann, ben, cat, _ = people
    # Answers recorded while gamify was not installed: its hook did nothing.
    monkeypatch.setattr(services, "points_settle", lambda **kwargs: 0)
    tasks = [task_with_candidates(campaign) for _ in range(2)]
    for task in tasks:
        for person in (ann, ben, cat):
            answer(person, task, "1")
    gold_task = task_with_candidates(campaign)
    gold_set(task=gold_task, label="none")
    answer(ann, gold_task, "none")
    monkeypatch.undo()
    assert not AnswerPoints.objects.exists()
    call_command("gamify_backfill", stdout=io.StringIO())
    # The gold answer waits, pending, until ann's gold record is revealed (five checks at once).
    assert points_of(ann) == 2 * 10 and points_of(ben) == 20
    assert AnswerPoints.objects.get(answer__task=gold_task).outcome == "pending"
    assert tally(ann).answer_count == 3
    out = io.StringIO()
    call_command("gamify_backfill", "--campaign", campaign.slug, stdout=out)
    assert "0 answers settled" in out.getvalue()  # idempotent
    assert_tallies_match_answers()
