"""The points, level and streak rules, as pure functions (no database). Pinned by
tests/gamify/test_rules.py and described in docs/gamification.md.

Points per answer (match campaigns; `answer_outcome`):

====================================================  =========  ===========
the answer                                            outcome    points
====================================================  =========  ===========
undone                                                revoked    0
under the campaign's min_duration_ms (is_too_fast)    too_fast   0
its task has not settled yet                          pending    0
its author is flagged or paused (AnnotatorStats)      spam       0
differs from the settled label / gold answer          disagree   0
equals the settled label / gold answer                agree      10 (AGREE_POINTS)
... on a contested task                               agree      15 (+ CONTESTED_BONUS)
====================================================  =========  ===========

- A regular task has settled when its status is complete (dynamic overlap); the reference is its
  consensus label. If it reopens or its label changes, every answer on it is settled again and the
  difference goes to the tallies (points can go down as well as up).
- A gold task settles against its known answer at the full consensus recompute (Celery beat, every
  FITCHECK_CONSENSUS_RECOMPUTE_S), not on the answer, and only once its author's gold record is
  revealed (annotate.consensus.services.gold_reveal: five or more gold answers at once, all past the
  undo window), so points never tell which task was a check. Gold answers get no contested bonus.
- Contested (`is_contested`): the task's answers at human speed do not all agree, or it settled with
  a confidence under the campaign's confidence_target (it reached overlap_max instead).
- Spam is judged when the answer is (re)settled; the full recompute re-settles the tasks of anyone
  whose flags or pause changed, so a person flagged later loses those points and gets them back if
  the flag goes.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

AGREE_POINTS = 10
CONTESTED_BONUS = 5
STREAK_MIN_ANSWERS = 5  # answers at human speed in a local day for it to count towards a streak
LEVEL_STEP_POINTS = 50  # level n starts at 50 * n * (n - 1) points: 0, 100, 300, 600, 1000, ...
VERIFIED_BADGES = ((10, "verified_10"), (100, "verified_100"), (350, "verified_350"))
GOLD_RUN_LENGTH = 5  # correct gold answers in a row for the "perfect gold run" badge

PENDING, AGREE, DISAGREE, TOO_FAST, SPAM, REVOKED = "pending", "agree", "disagree", "too_fast", "spam", "revoked"


def answer_outcome(
    *,
    answer_label: str,
    is_revoked: bool,
    is_too_fast: bool,
    is_settled: bool,
    reference_label: str,
    is_spam: bool,
    is_contested: bool,
) -> tuple[str, int]:
    """The outcome and points of one answer (the table in the module docstring).

    Args:
        answer_label: the answer as a key of campaign.labels() ("1".."k", "none", ...).
        is_settled: the task has settled (complete), or it is gold and gold is being settled.
        reference_label: the settled label or the gold answer ("" when not settled).
        is_spam: the author is flagged or paused in the campaign.
        is_contested: see `is_contested`; ignored unless the answer agrees.

    Returns:
        (outcome, points): outcome one of AnswerPoints.Outcome's values, points >= 0.
    """
    if is_revoked:
        return REVOKED, 0
    if is_too_fast:
        return TOO_FAST, 0
    if not is_settled:
        return PENDING, 0
    if is_spam:
        return SPAM, 0
    if answer_label != reference_label:
        return DISAGREE, 0
    return AGREE, AGREE_POINTS + (CONTESTED_BONUS if is_contested else 0)


def is_contested(*, counted_labels: list[str], confidence: float, confidence_target: float) -> bool:
    """A task is contested when its answers at human speed (live, not too fast) do not all agree, or
    its consensus confidence (in [0, 1]) is under the campaign's confidence_target."""
    return len(set(counted_labels)) > 1 or confidence < confidence_target


def tally_contribution(*, outcome: str, points: int, is_match: bool) -> tuple[int, int, int, int, int]:
    """What one answer adds to its tallies: (points, answer_count, settled_count, agree_count,
    match_count). Too-fast and undone answers add nothing at all."""
    counted = outcome not in (TOO_FAST, REVOKED)
    settled = outcome in (AGREE, DISAGREE)
    return points, int(counted), int(settled), int(outcome == AGREE), int(outcome == AGREE and is_match)


def level_of(points: int) -> int:
    """Level 1 from 0 points; level n from LEVEL_STEP_POINTS * n * (n - 1) points (100, 300, 600, ...)."""
    if points <= 0:
        return 1
    n = int((1 + math.sqrt(1 + 4 * points / LEVEL_STEP_POINTS)) / 2)
    while LEVEL_STEP_POINTS * (n + 1) * n <= points:
        n += 1
    while n > 1 and LEVEL_STEP_POINTS * n * (n - 1) > points:
        n -= 1
    return n


def level_floor(level: int) -> int:
    """Points at which `level` starts."""
    return LEVEL_STEP_POINTS * level * (level - 1)


def streak_after(*, streak_days: int, last_on: date | None, today: date) -> int:
    """The streak once `today` reached STREAK_MIN_ANSWERS answers: one more if the last counted day
    was yesterday, unchanged if it was today, else 1 (a new streak)."""
    if last_on == today:
        return streak_days
    if last_on == today - timedelta(days=1):
        return streak_days + 1
    return 1


def streak_current(*, streak_days: int, last_on: date | None, today: date) -> int:
    """The streak shown today: alive while the last counted day is today or yesterday, else 0."""
    if last_on is None or last_on < today - timedelta(days=1):
        return 0
    return streak_days


def week_of(day: date) -> date:
    """The Monday of `day`'s ISO week."""
    return day - timedelta(days=day.weekday())
