"""Gamification: points per answer, leaderboard tallies, badges, streaks, levels and lunch-break
sprints. The rules are in gamify.rules; the writes in gamify.services. Match campaigns only."""

import uuid
from datetime import date

from django.conf import settings
from django.db import models
from django.db.models import Q


class Profile(models.Model):
    """A person's gamification record: their name preference, streak and the level last celebrated."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="gamify_profile"
    )
    is_name_hidden = models.BooleanField(
        default=False, help_text="Shown as 'anonymous' (with their rank) on leaderboards and announcements."
    )
    # Streak: local days (settings.TIME_ZONE) in a row with at least rules.STREAK_MIN_ANSWERS answers.
    streak_days = models.PositiveIntegerField(default=0)
    streak_best_days = models.PositiveIntegerField(default=0)
    streak_last_on = models.DateField(null=True, blank=True, help_text="The last local day that counted.")
    streak_celebrated_on = models.DateField(null=True, blank=True)
    level_seen = models.PositiveSmallIntegerField(default=1, help_text="The level last celebrated.")
    # Consecutive correct gold answers (settled in answer order at the full recompute).
    gold_run_length = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"profile of user {self.user_id}"


class AnswerPoints(models.Model):
    """The points of one answer in a match campaign and how they were settled (rules.answer_outcome).
    `points`, `outcome` and `is_match` change when the task's consensus settles or changes; each
    change is applied as a delta to the person's tallies."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "Waiting for the task to settle"
        AGREE = "agree", "Agrees with the settled label or the gold answer"
        DISAGREE = "disagree", "Differs from the settled label or the gold answer"
        TOO_FAST = "too_fast", "Under the campaign's human-speed floor"
        SPAM = "spam", "The annotator is flagged or paused"
        REVOKED = "revoked", "Undone"

    answer = models.OneToOneField(
        "annotate.Answer", primary_key=True, on_delete=models.CASCADE, related_name="gamify_points"
    )
    task = models.ForeignKey("annotate.Task", on_delete=models.CASCADE, related_name="+")
    campaign = models.ForeignKey("annotate.Campaign", on_delete=models.CASCADE, related_name="+")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # The local day (settings.TIME_ZONE) and the Monday of the ISO week of the answer: the tallies
    # its points go to, whenever they settle.
    answered_on = models.DateField()
    week_of = models.DateField()
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.PENDING)
    points = models.PositiveIntegerField(default=0)
    is_match = models.BooleanField(default=False, help_text="Agrees with a settled product match (rank 1..k).")
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = verbose_name_plural = "answer points"
        indexes = [
            # points_settle: every answer of the tasks being settled.
            models.Index(fields=["task"], name="gamify_answerpoints_task"),
            # points_recompute_after: a campaign's pending gold answers, flagged or paused people's
            # paid answers, and the spam answers of people no longer flagged.
            models.Index(fields=["campaign", "outcome", "annotator"], name="gamify_answerpoints_outcome"),
        ]

    def __str__(self):
        return f"{self.points} points for answer {self.answer_id} ({self.outcome})"


ALL_TIME = date(2000, 1, 1)  # period_start of the all-time tallies


class Tally(models.Model):
    """A person's totals over one period: a local day, an ISO week (starting Monday) or all time.
    Kept up to date in the transaction of every answer and every settlement, so leaderboards read
    these rows and never scan answers."""

    class Period(models.TextChoices):
        DAY = "day", "Today"
        WEEK = "week", "This week"
        ALL = "all", "All time"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    period = models.CharField(max_length=8, choices=Period.choices)
    period_start = models.DateField(help_text="The day, the Monday of the week, or 2000-01-01 for all time.")
    # The person's team when the row was last written (annotate.TeamMember), for per-team boards.
    team = models.ForeignKey("annotate.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    points = models.IntegerField(default=0)
    answer_count = models.IntegerField(default=0, help_text="Live answers at human speed.")
    settled_count = models.IntegerField(default=0, help_text="Of those, answers on settled tasks (agree + disagree).")
    agree_count = models.IntegerField(default=0, help_text="Answers agreeing with the settled label or gold.")
    match_count = models.IntegerField(default=0, help_text="Agreeing answers that matched a photo to a product.")

    class Meta:
        verbose_name_plural = "tallies"
        constraints = [
            models.UniqueConstraint(fields=["user", "period", "period_start"], name="gamify_tally_unique"),
        ]
        indexes = [
            # The overall board: one period's rows by points.
            models.Index(fields=["period", "period_start", "-points", "user"], name="gamify_tally_board"),
            # A team's board.
            models.Index(fields=["period", "period_start", "team", "-points"], name="gamify_tally_team_board"),
        ]

    def __str__(self):
        return f"{self.period} {self.period_start} of user {self.user_id}: {self.points}"


class Badge(models.TextChoices):
    VERIFIED_10 = "verified_10", "First 10 verifications"
    VERIFIED_100 = "verified_100", "100 verifications"
    VERIFIED_350 = "verified_350", "350 verifications"
    GOLD_RUN = "gold_run", "Perfect gold run"
    FIRST_MATCH = "first_match", "First to match a photo"
    RESCUED = "rescued", "Rescued: overturned the model's top suggestion, and was right"


class BadgeAward(models.Model):
    """A badge a person earned (each once). `is_seen` turns true once it was celebrated on screen."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    badge = models.CharField(max_length=32, choices=Badge.choices)
    awarded_at = models.DateTimeField(auto_now_add=True)
    is_seen = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "badge"], name="gamify_badgeaward_unique")]
        indexes = [
            # celebrations_pop: a person's unseen badges.
            models.Index(fields=["user"], condition=Q(is_seen=False), name="gamify_badgeaward_unseen"),
        ]

    def __str__(self):
        return f"{self.badge} for user {self.user_id}"


class Sprint(models.Model):
    """A timed lunch-break session (5 or 10 minutes) in one campaign. Its counts are read from the
    person's answers in [started_at, ends_at) when asked (a handful of rows by index)."""

    DURATIONS_S = (300, 600)

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    campaign = models.ForeignKey("annotate.Campaign", on_delete=models.CASCADE, related_name="+")
    duration_s = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    # The all-time rank when the sprint started (1 = first), for the summary's rank change.
    rank_before = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(duration_s__in=(300, 600)), name="gamify_sprint_duration"),
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("started_at")), name="gamify_sprint_ends_after"),
        ]
        indexes = [models.Index(fields=["user", "-ends_at"], name="gamify_sprint_recent")]

    def __str__(self):
        return f"sprint {self.uuid} of user {self.user_id}"
