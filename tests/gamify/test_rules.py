"""gamify.rules on hand-made cases: the points table, contested tasks, levels and streaks."""

from datetime import date

import pytest

from gamify import rules


def outcome(**overrides):
    args = dict(
        answer_label="1",
        is_revoked=False,
        is_too_fast=False,
        is_settled=True,
        reference_label="1",
        is_spam=False,
        is_contested=False,
    )
    args.update(overrides)
    return rules.answer_outcome(**args)


def test_agreeing_answer_earns_ten_and_fifteen_when_contested():
    assert outcome() == ("agree", 10)
    assert outcome(is_contested=True) == ("agree", 15)


def test_wrong_answer_earns_nothing_even_when_contested():
    assert outcome(answer_label="none", is_contested=True) == ("disagree", 0)


def test_fast_wrong_clicker_earns_nothing_and_fast_right_clicker_neither():
    assert outcome(answer_label="2", is_too_fast=True) == ("too_fast", 0)
    assert outcome(is_too_fast=True, is_contested=True) == ("too_fast", 0)


def test_flagged_or_paused_author_earns_nothing_once_settled():
    assert outcome(is_spam=True) == ("spam", 0)
    assert outcome(is_spam=True, is_settled=False, reference_label="") == ("pending", 0)


def test_unsettled_and_revoked_answers():
    assert outcome(is_settled=False, reference_label="") == ("pending", 0)
    assert outcome(is_revoked=True, is_too_fast=True) == ("revoked", 0)


def test_contested_when_answers_differ_or_confidence_under_target():
    assert rules.is_contested(counted_labels=["1", "1"], confidence=0.97, confidence_target=0.95) is False
    assert rules.is_contested(counted_labels=["1", "none"], confidence=0.97, confidence_target=0.95) is True
    assert rules.is_contested(counted_labels=["1", "1", "1"], confidence=0.9, confidence_target=0.95) is True


def test_tally_contribution():
    assert rules.tally_contribution(outcome="agree", points=15, is_match=True) == (15, 1, 1, 1, 1)
    assert rules.tally_contribution(outcome="agree", points=10, is_match=False) == (10, 1, 1, 1, 0)
    assert rules.tally_contribution(outcome="disagree", points=0, is_match=False) == (0, 1, 1, 0, 0)
    assert rules.tally_contribution(outcome="pending", points=0, is_match=False) == (0, 1, 0, 0, 0)
    assert rules.tally_contribution(outcome="spam", points=0, is_match=False) == (0, 1, 0, 0, 0)
    assert rules.tally_contribution(outcome="too_fast", points=0, is_match=False) == (0, 0, 0, 0, 0)
    assert rules.tally_contribution(outcome="revoked", points=0, is_match=False) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "points, level", [(-5, 1), (0, 1), (99, 1), (100, 2), (299, 2), (300, 3), (599, 3), (600, 4), (1000, 5)]
)
def test_levels(points, level):
    assert rules.level_of(points) == level
    assert rules.level_floor(level) <= max(points, 0) < rules.level_floor(level + 1)


def test_streaks():
    today = date(2026, 3, 10)
    assert rules.streak_after(streak_days=4, last_on=date(2026, 3, 9), today=today) == 5
    assert rules.streak_after(streak_days=4, last_on=today, today=today) == 4
    assert rules.streak_after(streak_days=4, last_on=date(2026, 3, 7), today=today) == 1
    assert rules.streak_after(streak_days=0, last_on=None, today=today) == 1
    assert rules.streak_current(streak_days=4, last_on=date(2026, 3, 9), today=today) == 4
    assert rules.streak_current(streak_days=4, last_on=date(2026, 3, 8), today=today) == 0


def test_week_starts_monday():
    assert rules.week_of(date(2026, 3, 15)) == date(2026, 3, 9)  # a Sunday
    assert rules.week_of(date(2026, 3, 9)) == date(2026, 3, 9)
