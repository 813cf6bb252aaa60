"""Gamification writes: settling answers' points (on every answer, undo and consensus change),
keeping the leaderboard tallies, streaks and badges current, sprints and the name preference.

annotate calls in through three small hooks, imported lazily (gamify imports annotate, never the
reverse at module level): `points_settle` from consensus_task_update (each answer, undo, gold
change) and from the full recompute's `_tasks_write` (the tasks whose label or status changed, per
batch), and `points_recompute_after` at the end of the full recompute (gold answers; people whose
flags or pause changed). The rules themselves are pure functions in gamify.rules.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from annotate.models import AnnotatorStats, Answer, Campaign, GoldLabel, Task

from . import rules
from .models import ALL_TIME, AnswerPoints, Badge, BadgeAward, Profile, Sprint, Tally

logger = logging.getLogger(__name__)

Outcome = AnswerPoints.Outcome


def local_today():
    """Today in settings.TIME_ZONE (the day boundaries of 'today', 'this week' and streaks)."""
    return timezone.localdate()


# -- settling points --------------------------------------------------------------------------------


def points_settle_task(*, task: Task, campaign: Campaign, now=None) -> int:
    """`points_settle` for one task whose new consensus is already in memory (consensus_task_update
    after an answer or undo): saves reading the task again."""
    if campaign.kind != Campaign.Kind.MATCH:
        return 0
    row = {
        "pk": task.pk,
        "campaign_id": campaign.pk,
        "status": task.status,
        "label": task.label,
        "confidence": task.confidence,
        "is_gold": task.is_gold,
        "campaign__confidence_target": campaign.confidence_target,
    }
    return points_settle(task_ids=[task.pk], now=now, _tasks={task.pk: row})


def points_settle(*, task_ids, include_gold: bool = False, now=None, _tasks=None) -> int:
    """(Re)settle the points of every answer on `task_ids` (match campaigns only) by gamify.rules,
    and apply each change as a delta to the authors' tallies (day and ISO week of the answer, all
    time), then streaks and badges. Answers without an AnswerPoints row (a new answer, or answers
    given before gamify existed) get one.

    Gold tasks are settled against their known answer only when `include_gold` (the full
    recompute), and then only the answers their author's revealed gold record covers
    (AnnotatorStats.gold_shown_through, consensus.services.gold_reveal), so points and badges move
    with that record, five checks at a time; otherwise their answers keep their state, except that
    undone ones are revoked.

    Call inside the transaction that changed the tasks (the task rows locked by the caller). Locks the
    affected tally rows in id order (select_for_update), always last, so concurrent settlements do
    not deadlock. Idempotent: a second call with nothing changed writes nothing.

    Args:
        task_ids: iterable of Task primary keys.

    Returns:
        The number of AnswerPoints rows created or changed.
    """
    task_ids = list(task_ids)
    if not task_ids:
        return 0
    now = now or timezone.now()
    tasks = _tasks or {
        row["pk"]: row
        for row in Task.objects.filter(pk__in=task_ids, campaign__kind=Campaign.Kind.MATCH).values(
            "pk", "campaign_id", "status", "label", "confidence", "is_gold", "campaign__confidence_target"
        )
    }
    if not tasks:
        return 0
    gold = {}
    if include_gold and any(t["is_gold"] for t in tasks.values()):
        gold = dict(
            GoldLabel.objects.filter(task_id__in=[pk for pk, t in tasks.items() if t["is_gold"]]).values_list(
                "task_id", "label"
            )
        )
    # One query: the answers, their points rows (a left join) and their authors' teams.
    answers = list(
        Answer.objects.filter(task_id__in=list(tasks))
        .order_by("created_at", "pk")
        .values(
            "pk",
            "task_id",
            "annotator_id",
            "label",
            "is_too_fast",
            "revoked_at",
            "created_at",
            "gamify_points__answered_on",
            "gamify_points__week_of",
            "gamify_points__outcome",
            "gamify_points__points",
            "gamify_points__is_match",
            "annotator__team_membership__team_id",
        )
    )
    if not answers:
        return 0
    rows = {
        a["pk"]: _Row(
            a["pk"],
            a["gamify_points__answered_on"],
            a["gamify_points__week_of"],
            a["gamify_points__outcome"],
            a["gamify_points__points"],
            a["gamify_points__is_match"],
        )
        for a in answers
        if a["gamify_points__outcome"] is not None
    }
    teams = {a["annotator_id"]: a["annotator__team_membership__team_id"] for a in answers}
    campaign_ids = {t["campaign_id"] for t in tasks.values()}
    any_settled = any(t["status"] == Task.Status.COMPLETE or (t["is_gold"] and include_gold) for t in tasks.values())
    # Spam only matters once a task has settled (pending answers earn nothing anyway).
    spam = (
        {
            (campaign_id, annotator_id)
            for campaign_id, annotator_id, flags, paused in AnnotatorStats.objects.filter(
                campaign_id__in=campaign_ids, annotator_id__in={a["annotator_id"] for a in answers}
            ).values_list("campaign_id", "annotator_id", "flags", "is_paused")
            if flags or paused
        }
        if any_settled
        else set()
    )
    revealed = {}  # (campaign id, annotator id) -> gold_shown_through
    if gold:
        revealed = {
            (campaign_id, annotator_id): through
            for campaign_id, annotator_id, through in AnnotatorStats.objects.filter(
                campaign_id__in=campaign_ids,
                annotator_id__in={a["annotator_id"] for a in answers},
                gold_shown_through__isnull=False,
            ).values_list("campaign_id", "annotator_id", "gold_shown_through")
        }
    zone = timezone.get_current_timezone()  # settings.TIME_ZONE: the day an answer counts for
    by_task = defaultdict(list)
    for a in answers:
        by_task[a["task_id"]].append(a)

    created, changed = [], []
    deltas = defaultdict(lambda: [0, 0, 0, 0, 0])  # (user, answered_on, week_of) -> tally_contribution delta
    agreed = []  # (answer dict, row) newly agreeing: badges
    gold_settled = []  # (answer dict, outcome) gold answers leaving pending: gold runs
    for task_id, task_answers in by_task.items():
        task = tasks[task_id]
        counted = [a["label"] for a in task_answers if a["revoked_at"] is None and not a["is_too_fast"]]
        first_live = next((a["pk"] for a in task_answers if a["revoked_at"] is None), None)
        if task["is_gold"]:
            settled, reference, contested = task_id in gold, gold.get(task_id, ""), False
        else:
            settled = task["status"] == Task.Status.COMPLETE
            reference = task["label"] if settled else ""
            contested = settled and rules.is_contested(
                counted_labels=counted,
                confidence=task["confidence"],
                confidence_target=task["campaign__confidence_target"],
            )
        for a in task_answers:
            row = rows.get(a["pk"])
            is_revoked = a["revoked_at"] is not None
            through = revealed.get((task["campaign_id"], a["annotator_id"]))
            gold_now = include_gold and through is not None and a["created_at"] <= through
            if task["is_gold"] and not gold_now and row is not None and not is_revoked:
                continue  # gold answers settle only at the full recompute, once revealed
            outcome, points = rules.answer_outcome(
                answer_label=a["label"],
                is_revoked=is_revoked,
                is_too_fast=a["is_too_fast"],
                is_settled=settled and not (task["is_gold"] and not gold_now),
                reference_label=reference,
                is_spam=(task["campaign_id"], a["annotator_id"]) in spam,
                is_contested=contested,
            )
            is_match = outcome == Outcome.AGREE and reference.isdigit()
            if row is None:
                day = a["created_at"].astimezone(zone).date()
                row = _Row(a["pk"], day, rules.week_of(day), None, 0, False)
                old = (0, 0, 0, 0, 0)
                created.append((row, task_id, task["campaign_id"], a["annotator_id"]))
            else:
                if (row.outcome, row.points, row.is_match) == (outcome, points, is_match):
                    continue
                old = rules.tally_contribution(outcome=row.outcome, points=row.points, is_match=row.is_match)
                changed.append(row)
            previous = row.outcome
            row.outcome, row.points, row.is_match = outcome, points, is_match
            new = rules.tally_contribution(outcome=outcome, points=points, is_match=is_match)
            delta = deltas[(a["annotator_id"], row.answered_on, row.week_of)]
            for i in range(5):
                delta[i] += new[i] - old[i]
            if outcome == Outcome.AGREE and previous != Outcome.AGREE:
                agreed.append((a, row, a["pk"] == first_live))
            if task["is_gold"] and gold_now and previous in (None, Outcome.PENDING):
                if outcome in (Outcome.AGREE, Outcome.DISAGREE):
                    gold_settled.append((a, outcome))
    _rows_write(created, changed, now=now)
    _tallies_apply(deltas, teams=teams)
    _badges_on_settle(agreed, gold_settled)
    return len(created) + len(changed)


@dataclass(slots=True)
class _Row:
    """An AnswerPoints row while it is settled (plain values: the bulk path settles a million)."""

    answer_id: int
    answered_on: date
    week_of: date
    outcome: str | None  # None: not stored yet
    points: int
    is_match: bool


def _rows_write(created, changed, *, now) -> None:
    """Insert the new AnswerPoints rows and update the changed ones, with raw executemany (the ORM's
    per-object cost dominated the full recompute's first run, bench/leaderboard.py)."""
    ops = connection.ops
    settled = (Outcome.AGREE, Outcome.DISAGREE, Outcome.SPAM)

    def stamp(outcome):
        return ops.adapt_datetimefield_value(now) if outcome in settled else None

    with connection.cursor() as cursor:
        if created:
            cursor.executemany(
                "INSERT INTO gamify_answerpoints (answer_id, task_id, campaign_id, annotator_id, answered_on, "
                "week_of, outcome, points, is_match, settled_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        row.answer_id,
                        task_id,
                        campaign_id,
                        annotator_id,
                        ops.adapt_datefield_value(row.answered_on),
                        ops.adapt_datefield_value(row.week_of),
                        row.outcome,
                        row.points,
                        row.is_match,
                        stamp(row.outcome),
                    )
                    for row, task_id, campaign_id, annotator_id in created
                ],
            )
        if changed:
            cursor.executemany(
                "UPDATE gamify_answerpoints SET outcome = %s, points = %s, is_match = %s, settled_at = %s "
                "WHERE answer_id = %s",
                [(r.outcome, r.points, r.is_match, stamp(r.outcome), r.answer_id) for r in changed],
            )


def _tallies_apply(deltas: dict, *, teams: dict[int, int | None]) -> None:
    """Add each (user, answered_on, week_of) delta (points, answer_count, settled_count, agree_count,
    match_count) to the user's day, week and all-time tallies, creating missing rows. Rows are
    locked in id order before they are written. Then streaks and answer-count badges for people whose
    answers today went up."""
    keyed = defaultdict(lambda: [0, 0, 0, 0, 0])
    for (user_id, day, week), delta in deltas.items():
        if not any(delta):
            continue
        for key in (
            (user_id, Tally.Period.DAY, day),
            (user_id, Tally.Period.WEEK, week),
            (user_id, Tally.Period.ALL, ALL_TIME),
        ):
            total = keyed[key]
            for i in range(5):
                total[i] += delta[i]
    if not keyed:
        return

    def existing(keys):
        """{key: (id, answer_count)} of the tally rows of `keys`, locked, read as plain tuples (the
        bulk path reads tens of thousands per batch)."""
        users = sorted({k[0] for k in keys})
        starts = {k[2] for k in keys}
        return {
            (user_id, period, start): (pk, answer_count)
            for pk, user_id, period, start, answer_count in Tally.objects.select_for_update()
            .filter(user_id__in=users, period_start__in=starts)
            .order_by("pk")
            .values_list("pk", "user_id", "period", "period_start", "answer_count")
            if (user_id, period, start) in keyed
        }

    have = existing(keyed)
    missing = [k for k in keyed if k not in have]
    if missing:
        Tally.objects.bulk_create(
            [Tally(user_id=u, period=p, period_start=s, team_id=teams.get(u)) for u, p, s in sorted(missing)],
            batch_size=1000,
            ignore_conflicts=True,
        )
        have.update(existing(missing))
    with connection.cursor() as cursor:
        cursor.executemany(
            "UPDATE gamify_tally SET points = points + %s, answer_count = answer_count + %s, "
            "settled_count = settled_count + %s, agree_count = agree_count + %s, match_count = match_count + %s, "
            "team_id = %s WHERE id = %s",
            sorted(((*delta, teams.get(key[0]), have[key][0]) for key, delta in keyed.items()), key=lambda r: r[-1]),
        )
    today = local_today()
    grew = {u for (u, p, s), d in keyed.items() if p == Tally.Period.DAY and s == today and d[1] > 0}
    if grew:
        _streaks_and_counts(sorted(grew), have, keyed, today)


def _streaks_and_counts(users, have, keyed, today) -> None:
    """For people whose answers today went up: extend their streak when today just reached
    rules.STREAK_MIN_ANSWERS, and award the 10/100/350-verification badges their all-time count
    crossed."""
    awards = []
    for user_id in users:
        day_before = have[(user_id, Tally.Period.DAY, today)][1]
        day_after = day_before + keyed[(user_id, Tally.Period.DAY, today)][1]
        if day_before < rules.STREAK_MIN_ANSWERS <= day_after:  # today just started to count
            profile, _ = Profile.objects.select_for_update().get_or_create(user_id=user_id)
            if profile.streak_last_on != today:
                profile.streak_days = rules.streak_after(
                    streak_days=profile.streak_days, last_on=profile.streak_last_on, today=today
                )
                profile.streak_best_days = max(profile.streak_best_days, profile.streak_days)
                profile.streak_last_on = today
                profile.save(update_fields=["streak_days", "streak_best_days", "streak_last_on"])
        total = have.get((user_id, Tally.Period.ALL, ALL_TIME))
        if total is not None:
            before = total[1]
            after = before + keyed[(user_id, Tally.Period.ALL, ALL_TIME)][1]
            awards += [BadgeAward(user_id=user_id, badge=b) for n, b in rules.VERIFIED_BADGES if before < n <= after]
    if awards:
        BadgeAward.objects.bulk_create(awards, ignore_conflicts=True)


def _badges_on_settle(agreed, gold_settled) -> None:
    """First match (the first live answer on a task that settled to a product, agreeing), rescued (an
    agreeing answer other than the model's top suggestion "1"), and the perfect gold run
    (rules.GOLD_RUN_LENGTH correct gold answers in a row, in answer order)."""
    awards = set()  # (user id, badge): a million-answer backfill repeats them
    for a, row, is_first in agreed:
        if row.is_match and is_first:
            awards.add((a["annotator_id"], Badge.FIRST_MATCH))
        if a["label"] != "1":
            awards.add((a["annotator_id"], Badge.RESCUED))
    by_user = defaultdict(list)
    for a, outcome in gold_settled:
        by_user[a["annotator_id"]].append((a["created_at"], a["pk"], outcome))
    for user_id in sorted(by_user):
        profile, _ = Profile.objects.select_for_update().get_or_create(user_id=user_id)
        run = profile.gold_run_length
        for _, _, outcome in sorted(by_user[user_id]):
            run = run + 1 if outcome == Outcome.AGREE else 0
            if run >= rules.GOLD_RUN_LENGTH:
                awards.add((user_id, Badge.GOLD_RUN))
        if run != profile.gold_run_length:
            Profile.objects.filter(pk=user_id).update(gold_run_length=run)
    if awards:
        BadgeAward.objects.bulk_create(
            [BadgeAward(user_id=user_id, badge=badge) for user_id, badge in sorted(awards)], ignore_conflicts=True
        )


def points_recompute_after(*, campaign_id: int) -> int:
    """After a full consensus recompute of a match campaign: settle its gold tasks' answers against
    their known answers, and re-settle the tasks of people whose spam state changed (flagged or
    paused people holding points; people no longer flagged holding spam answers).

    Each part is one transaction; idempotent. Returns the number of AnswerPoints rows changed."""
    spam_users = [
        annotator_id
        for annotator_id, flags, paused in AnnotatorStats.objects.filter(campaign_id=campaign_id).values_list(
            "annotator_id", "flags", "is_paused"
        )
        if flags or paused
    ]
    # Gold tasks with answers to settle: new (pending) ones, or settled ones that no longer match the
    # known answer (changed with gold_set). Read from the gold labels (index gamify_answerpoints_task),
    # so every minute costs the gold answers, not a scan of the campaign's points.
    known = dict(GoldLabel.objects.filter(task__campaign_id=campaign_id).values_list("task_id", "label"))
    task_ids = {
        task_id
        for task_id, outcome, label in AnswerPoints.objects.filter(task_id__in=list(known)).values_list(
            "task_id", "outcome", "answer__label"
        )
        if outcome == Outcome.PENDING
        or (outcome == Outcome.AGREE and label != known[task_id])
        or (outcome == Outcome.DISAGREE and label == known[task_id])
    }
    if spam_users:  # flagged or paused people still paid (index gamify_answerpoints_outcome)
        task_ids |= set(
            AnswerPoints.objects.filter(
                campaign_id=campaign_id, outcome=Outcome.AGREE, annotator_id__in=spam_users
            ).values_list("task_id", flat=True)
        )
    task_ids |= set(  # people no longer flagged or paused, with spam answers
        AnswerPoints.objects.filter(campaign_id=campaign_id, outcome=Outcome.SPAM)
        .exclude(annotator_id__in=spam_users)
        .values_list("task_id", flat=True)
    )
    done = 0
    ordered = sorted(task_ids)
    for start in range(0, len(ordered), 2000):
        with transaction.atomic():
            done += points_settle(task_ids=ordered[start : start + 2000], include_gold=True)
    return done


def tasks_label_status(task_ids) -> dict[int, tuple[str, str]]:
    """{task id: (label, status)} now, for `points_settle_changed` after a bulk write. Plain SQL:
    the full recompute reads every task of the campaign through this."""
    task_ids = [int(pk) for pk in task_ids]
    if not task_ids:
        return {}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One array parameter: 5,000 bound parameters took 55 ms a batch to plan (bench/leaderboard.py).
            cursor.execute("SELECT id, label, status FROM annotate_task WHERE id = ANY(%s)", [task_ids])
        else:
            placeholders = ", ".join(["%s"] * len(task_ids))
            cursor.execute(f"SELECT id, label, status FROM annotate_task WHERE id IN ({placeholders})", task_ids)
        return {pk: (label, status) for pk, label, status in cursor.fetchall()}


def points_settle_changed(*, before: dict[int, tuple[str, str]], after: dict[int, tuple[str, str]], now=None) -> int:
    """Re-settle, in one batch, the tasks whose (label, status) in `after` (what a bulk write just
    wrote: the full recompute's `_tasks_write`) differs from `before` (`tasks_label_status`, read
    before it). A task the write skipped (answered meanwhile) may be among them: settling reads the
    task's current state, so that is harmless. Call in the same transaction as the write.

    Returns the number of AnswerPoints rows changed."""
    changed = [pk for pk, values in after.items() if pk in before and values != before[pk]]
    return points_settle(task_ids=changed, now=now) if changed else 0


# -- celebrations -----------------------------------------------------------------------------------


def celebrations_pop(*, user, today=None) -> list[dict]:
    """What to celebrate on `user`'s screen now, each once: badges not yet seen, a level reached
    since the last celebration, and today's streak day. Marks them celebrated.

    Returns:
        [{"kind": "badge"|"level"|"streak", "title": str, "text": str}], in that order.
    """
    today = today or local_today()
    events = []
    unseen = list(BadgeAward.objects.filter(user=user, is_seen=False).order_by("awarded_at", "pk"))
    if unseen:
        BadgeAward.objects.filter(pk__in=[b.pk for b in unseen]).update(is_seen=True)
        events += [{"kind": "badge", "title": "Badge earned", "text": b.get_badge_display()} for b in unseen]
    points = (
        Tally.objects.filter(user=user, period=Tally.Period.ALL, period_start=ALL_TIME)
        .values_list("points", flat=True)
        .first()
        or 0
    )
    level = rules.level_of(points)
    profile = Profile.objects.filter(user=user).first()
    if level > (profile.level_seen if profile else 1):
        Profile.objects.update_or_create(user=user, defaults={"level_seen": level})
        events.append({"kind": "level", "title": f"Level {level}", "text": f"{points} points so far."})
    if profile is not None and profile.streak_last_on == today and profile.streak_celebrated_on != today:
        Profile.objects.filter(pk=profile.pk).update(streak_celebrated_on=today)
        days = profile.streak_days
        events.append(
            {"kind": "streak", "title": f"{days}-day streak", "text": f"{rules.STREAK_MIN_ANSWERS}+ answers today."}
        )
    return events


def profile_name_hide(*, user, hidden: bool) -> Profile:
    """Show (False) or hide (True) `user`'s name on leaderboards and announcements. Idempotent."""
    profile, _ = Profile.objects.update_or_create(user=user, defaults={"is_name_hidden": hidden})
    return profile


# -- sprints ----------------------------------------------------------------------------------------


class SprintInvalid(ValueError):
    """The sprint cannot start as asked (the message says why)."""


def sprint_start(*, user, campaign: Campaign, duration_s: int, now=None) -> Sprint:
    """Start a lunch-break sprint of `duration_s` seconds (300 or 600) in `campaign`, or return the
    person's sprint that is still running there (idempotent while it runs). Records their all-time
    rank for the summary's rank change.

    Raises:
        SprintInvalid: a duration other than 300 or 600 s, a campaign that is not a match campaign,
            or one with no open task (still preparing, or finished): the clock would run on nothing.
    """
    from .selectors import rank_of

    if duration_s not in Sprint.DURATIONS_S:
        raise SprintInvalid("A sprint lasts 5 or 10 minutes.")
    if campaign.kind != Campaign.Kind.MATCH:
        raise SprintInvalid("Sprints are for match campaigns.")
    if not Task.objects.filter(campaign=campaign, status=Task.Status.OPEN).exists():
        if campaign.status == Campaign.Status.PREPARING:
            raise SprintInvalid("No tasks yet: the campaign is still preparing its suggestions.")
        raise SprintInvalid("Nothing is left to answer in this campaign.")
    now = now or timezone.now()
    with transaction.atomic():
        running = Sprint.objects.filter(user=user, campaign=campaign, ends_at__gt=now).order_by("-ends_at").first()
        if running is not None:
            return running
        sprint = Sprint(
            user=user,
            campaign=campaign,
            duration_s=duration_s,
            started_at=now,
            ends_at=now + timedelta(seconds=duration_s),
            rank_before=rank_of(user=user, period=Tally.Period.ALL),
        )
        sprint.save()
    return sprint


def points_backfill(*, campaign: Campaign, batch_size: int = 2000) -> int:
    """Give every answer of `campaign` (a match campaign) that has no AnswerPoints row one, settled
    by the rules, with its tallies: for answers given before gamify was installed, whose tasks may
    never change again. Gold tasks are settled against their known answer. One transaction per
    batch of tasks; idempotent (a second run finds nothing to do).

    Returns the number of AnswerPoints rows created or changed."""
    if campaign.kind != Campaign.Kind.MATCH:
        return 0
    has_points = AnswerPoints.objects.filter(answer_id=OuterRef("pk"))
    task_ids = sorted(
        set(
            Answer.objects.filter(task__campaign=campaign).exclude(Exists(has_points)).values_list("task_id", flat=True)
        )
    )
    done = 0
    for start in range(0, len(task_ids), batch_size):
        with transaction.atomic():
            done += points_settle(task_ids=task_ids[start : start + batch_size], include_gold=True)
    return done
