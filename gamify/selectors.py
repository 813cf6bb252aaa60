"""Gamification reads: leaderboards (from the precomputed tallies only), ranks, the impact page, the
sprint bar and summary, and the announcement page's live numbers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from django.core.exceptions import PermissionDenied
from django.db.models import Count, Sum
from django.http import Http404
from django.utils import timezone

from annotate import roles
from annotate.models import AnnotatorStats, Answer, Campaign, Team, TeamMember
from annotate.selectors import annotator_agreement, campaign_counts

from . import rules
from .models import ALL_TIME, AnswerPoints, BadgeAward, Profile, Sprint, Tally

BOARD_SIZE = 50
ANONYMOUS = "anonymous"


def require_verifier(user) -> None:
    """Raises PermissionDenied unless `user` verifies (employee) or is an admin."""
    if not roles.user_has_role(user, *roles.VERIFY_ROLES):
        raise PermissionDenied("This page is for people who verify matches.")


def require_admin(user) -> None:
    """Raises PermissionDenied unless `user` is an admin."""
    if not roles.user_has_role(user, roles.ADMIN):
        raise PermissionDenied("This page is for admins.")


def period_start(period: str, today: date | None = None) -> date:
    """The period_start of the tallies of `period` ("day", "week", "all") that hold `today` (local
    date in settings.TIME_ZONE)."""
    today = today or timezone.localdate()
    if period == Tally.Period.DAY:
        return today
    if period == Tally.Period.WEEK:
        return rules.week_of(today)
    return ALL_TIME


def display_name(user, *, viewer=None) -> str:
    """The name shown on boards: "anonymous" if the person hides it (but "you" see yourself)."""
    if viewer is not None and user.pk == viewer.pk:
        return f"{user.get_username()} (you)"
    profile = getattr(user, "gamify_profile", None)
    if profile is not None and profile.is_name_hidden:
        return ANONYMOUS
    return user.get_username()


def _is_hidden(user) -> bool:
    profile = getattr(user, "gamify_profile", None)
    return bool(profile and profile.is_name_hidden)


@dataclass
class BoardRow:
    rank: int
    name: str
    points: int
    answer_count: int
    agreement: float | None  # agree_count / settled_count, in [0, 1]
    is_you: bool


def _row(tally: Tally, rank: int, viewer) -> BoardRow:
    return BoardRow(
        rank=rank,
        name=display_name(tally.user, viewer=viewer),
        points=tally.points,
        answer_count=tally.answer_count,
        agreement=tally.agree_count / tally.settled_count if tally.settled_count else None,
        is_you=tally.user_id == viewer.pk,
    )


def rank_of(*, user, period: str, team: Team | None = None, today: date | None = None) -> int | None:
    """`user`'s rank on a board (1 = most points; ties share a rank), or None without a tally there.
    Two indexed queries (the person's row, then the rows with more points)."""
    rows = Tally.objects.filter(period=period, period_start=period_start(period, today))
    if team is not None:
        rows = rows.filter(team=team)
    mine = rows.filter(user=user).values_list("points", flat=True).first()
    if mine is None:
        return None
    return rows.filter(points__gt=mine).count() + 1


def leaderboard(*, viewer, period: str, team: Team | None = None, limit: int = BOARD_SIZE, today=None) -> dict:
    """One board: the top `limit` people of `period` (overall, or of `team`) by points, and the
    viewer's own row and rank when they are not among them. Reads Tally rows only (indexes
    gamify_tally_board / gamify_tally_team_board); the query count does not grow with people or
    answers (tests/gamify/test_views.py pins it).

    Returns:
        {"rows": [BoardRow], "you": BoardRow | None (only when outside the top), "your_rank": int | None}.
    """
    start = period_start(period, today)
    rows = Tally.objects.filter(period=period, period_start=start)
    if team is not None:
        rows = rows.filter(team=team)
    top = list(rows.select_related("user", "user__gamify_profile").order_by("-points", "user_id")[:limit])
    board = []
    for i, tally in enumerate(top):
        # Competition ranking (1, 2, 2, 4): the list starts at the top, so a row's rank is one more
        # than the number of rows before it with more points.
        rank = board[-1].rank if board and board[-1].points == tally.points else i + 1
        board.append(_row(tally, rank, viewer))
    # The viewer's own row and rank, always (two indexed queries): the count stays the same whether or
    # not they are in the top.
    mine = rows.filter(user=viewer).select_related("user", "user__gamify_profile").first()
    you = _row(mine, rows.filter(points__gt=mine.points).count() + 1, viewer) if mine is not None else None
    in_top = any(r.is_you for r in board)
    return {"rows": board, "you": None if in_top else you, "your_rank": you.rank if you else None}


def teams_board(*, period: str, today=None) -> list[dict]:
    """Teams by points over `period`: [{"name", "points", "people"}], from the period's tallies."""
    return list(
        Tally.objects.filter(period=period, period_start=period_start(period, today), team__isnull=False)
        .values("team__name", "team__slug")
        .annotate(points=Sum("points"), people=Count("pk"))
        .order_by("-points", "team__name")
    )


def get_team(slug: str | None) -> Team | None:
    """The team `slug`, None for no slug. Raises Http404 for an unknown one."""
    if not slug:
        return None
    team = Team.objects.filter(slug=slug).first()
    if team is None:
        raise Http404("No such team.")
    return team


# -- impact -----------------------------------------------------------------------------------------


def impact_of(user) -> dict:
    """`user`'s effect: photos matched (answers agreeing with a settled product match: the matches
    product pages can show) and labels helped settle (agreeing answers), from the all-time tallies;
    agreement with the consensus beside their team's and everyone's, as every page shows it
    (annotate.selectors.annotator_agreement: {"agree", "total", "share"}); points, level, streak and
    badges."""
    all_time = Tally.objects.filter(period=Tally.Period.ALL, period_start=ALL_TIME)
    mine = all_time.filter(user=user).first()
    membership = TeamMember.objects.filter(user=user).select_related("team").first()
    profile = Profile.objects.filter(user=user).first()
    today = timezone.localdate()
    points = mine.points if mine else 0
    level = rules.level_of(points)
    return {
        "tally": mine,
        "points": points,
        "level": level,
        "next_level_points": rules.level_floor(level + 1),
        "agreement": annotator_agreement(annotators=user),
        "team": membership.team if membership else None,
        "team_agreement": (
            annotator_agreement(annotators=membership.team.members.values("user")) if membership else None
        ),
        "everyone_agreement": annotator_agreement(),
        "streak_days": rules.streak_current(
            streak_days=profile.streak_days if profile else 0,
            last_on=profile.streak_last_on if profile else None,
            today=today,
        ),
        "streak_best_days": profile.streak_best_days if profile else 0,
        "is_name_hidden": bool(profile and profile.is_name_hidden),
        "badges": list(BadgeAward.objects.filter(user=user).order_by("awarded_at")),
        "streak_min_answers": rules.STREAK_MIN_ANSWERS,
    }


# -- sprints ----------------------------------------------------------------------------------------


def sprint_running(*, user, campaign: Campaign, now=None) -> Sprint | None:
    """`user`'s sprint in `campaign` that has not ended, or None."""
    now = now or timezone.now()
    return Sprint.objects.filter(user=user, campaign=campaign, ends_at__gt=now).order_by("-ends_at").first()


def _sprint_answers(sprint: Sprint):
    """Live answers `sprint`'s person gave in its campaign between its start and end (index
    annotate_answer_recent: the person's recent answers)."""
    return Answer.objects.filter(
        annotator_id=sprint.user_id,
        task__campaign_id=sprint.campaign_id,
        revoked_at__isnull=True,
        created_at__gte=sprint.started_at,
        created_at__lt=sprint.ends_at,
    )


def sprint_state(sprint: Sprint, *, now=None) -> dict:
    """The sprint bar: {"uuid", "remaining_ms", "duration_ms", "elapsed_pct" (0..100), "clock"
    ("m:ss" left), "answer_count", "is_over"}."""
    now = now or timezone.now()
    remaining_ms = max(0, int((sprint.ends_at - now).total_seconds() * 1000))
    duration_ms = sprint.duration_s * 1000
    return {
        "uuid": str(sprint.uuid),
        "remaining_ms": remaining_ms,
        "duration_ms": duration_ms,
        "elapsed_pct": round(100 * (duration_ms - remaining_ms) / duration_ms),
        "clock": f"{remaining_ms // 60000}:{remaining_ms // 1000 % 60:02d}",
        "answer_count": _sprint_answers(sprint).count(),
        "is_over": remaining_ms == 0,
    }


def get_sprint_for_user(user, uuid) -> Sprint:
    """The sprint `uuid` if it is `user`'s. Raises Http404 otherwise."""
    sprint = Sprint.objects.select_related("campaign").filter(uuid=uuid, user=user).first()
    if sprint is None:
        raise Http404("No such sprint.")
    return sprint


def sprint_summary(sprint: Sprint) -> dict:
    """The card at the end of a sprint: answers given, accuracy on the settled ones (agree /
    (agree + disagree), in [0, 1], None before any settles), points earned so far (more arrive as
    tasks settle), the all-time rank before and now (rank_change > 0 means up), and the photos the
    person picked a product for (up to 12, newest first, each with whether consensus confirmed it):
    `matched_count` counts the confirmed ones, as the impact page does, `picked_count` all of them."""
    answers = list(
        _sprint_answers(sprint)
        .select_related("task__photo")
        .order_by("-created_at", "-pk")
        .only("pk", "choice", "created_at", "task__photo__image")
    )
    points = {
        p["answer_id"]: p
        for p in AnswerPoints.objects.filter(answer_id__in=[a.pk for a in answers]).values(
            "answer_id", "outcome", "points", "is_match"
        )
    }
    agree = sum(1 for p in points.values() if p["outcome"] == AnswerPoints.Outcome.AGREE)
    disagree = sum(1 for p in points.values() if p["outcome"] == AnswerPoints.Outcome.DISAGREE)
    rank_now = rank_of(user=sprint.user, period=Tally.Period.ALL)
    # "Matched" means what the impact page and the tallies count (AnswerPoints.is_match: the answer
    # agreed with a task settled on a product), not every product the person picked.
    picks = [
        {"image_url": a.task.photo.image.url, "confirmed": bool(points.get(a.pk, {}).get("is_match"))}
        for a in answers
        if a.choice == Answer.Choice.PRODUCT and a.task.photo_id
    ]
    matched_count = sum(p["confirmed"] for p in picks)
    return {
        "sprint": sprint,
        "answer_count": len(answers),
        "settled_count": agree + disagree,
        "accuracy": agree / (agree + disagree) if agree + disagree else None,
        "points": sum(p["points"] for p in points.values()),
        "rank_before": sprint.rank_before,
        "rank_now": rank_now,
        "rank_change": (sprint.rank_before - rank_now) if sprint.rank_before and rank_now else None,
        "matched": picks[:12],
        "matched_count": matched_count,
        "picked_count": len(picks),
    }


# -- announcement -----------------------------------------------------------------------------------

ANNOUNCE_DAYS = 14


def campaign_announcement(campaign: Campaign, *, now=None) -> dict:
    """Live numbers for the admin's announcement email: tasks, settled tasks, photos matched to a
    product, share settled (in [0, 1]), answers and people over the last ANNOUNCE_DAYS days and in
    all, and this week's top three (names hidden as asked). Admin page: it counts the campaign's
    tasks and recent answers (two aggregate queries), not for a hot path."""
    now = now or timezone.now()
    tasks = campaign_counts(campaign)  # the figures every page shows (issue 16, bug 12)
    recent = Answer.objects.filter(
        task__campaign=campaign, revoked_at__isnull=True, created_at__gte=now - timedelta(days=ANNOUNCE_DAYS)
    ).aggregate(answers=Count("pk"), people=Count("annotator", distinct=True))
    totals = AnnotatorStats.objects.filter(campaign=campaign).aggregate(answers=Sum("answer_count"), people=Count("pk"))
    top = list(
        Tally.objects.filter(period=Tally.Period.WEEK, period_start=period_start(Tally.Period.WEEK), points__gt=0)
        .select_related("user", "user__gamify_profile")
        .order_by("-points", "user_id")[:3]
    )
    return {
        "campaign": campaign,
        "task_count": tasks["task_count"],
        "settled_count": tasks["complete_count"],
        "matched_count": tasks["matched_count"],
        "settled_share": tasks["complete_count"] / tasks["task_count"] if tasks["task_count"] else 0.0,
        "recent_days": ANNOUNCE_DAYS,
        "recent_answer_count": recent["answers"],
        "recent_people_count": recent["people"],
        "answer_count": totals["answers"] or 0,
        "people_count": totals["people"],
        "top": [{"name": display_name(t.user), "points": t.points, "is_hidden": _is_hidden(t.user)} for t in top],
        "at": now,
    }
