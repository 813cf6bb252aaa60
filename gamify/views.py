"""Gamification pages: leaderboards, your impact, the sprint bar and summary on the verify page, and
the admins' announcement page. Celebrations reach the verify page as htmx events
(`answer_events_header`), never as a reload."""

import json

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate import selectors as annotate_selectors
from annotate.models import Campaign, Team

from . import selectors, services
from .models import Sprint, Tally


def answer_events_header(*, user, campaign: Campaign) -> str:
    """The HX-Trigger-After-Settle value the verify page gets after an answer or undo:
    `gamify:sprint` (the running sprint's state, or {"running": false}) and `gamify:celebrate`
    ({"events": [...]} from services.celebrations_pop). sprint.js handles both."""
    sprint = selectors.sprint_running(user=user, campaign=campaign)
    state = {"running": True, **selectors.sprint_state(sprint)} if sprint else {"running": False}
    return json.dumps(
        {"gamify:sprint": state, "gamify:celebrate": {"events": services.celebrations_pop(user=user)}},
        separators=(",", ":"),
    )


@login_required
@require_GET
def leaderboard(request):
    """Today, this week or all time (?period=day|week|all), overall or of one team (?team=<slug>):
    the top 50 by points, your own rank, and the teams' totals. Tally rows only, never answers."""
    selectors.require_verifier(request.user)
    period = request.GET.get("period", Tally.Period.WEEK)
    if period not in Tally.Period.values:
        raise Http404("No such period.")
    team = selectors.get_team(request.GET.get("team"))
    context = {
        "period": period,
        "periods": Tally.Period.choices,
        "team": team,
        "teams": list(Team.objects.order_by("name")),
        "board": selectors.leaderboard(viewer=request.user, period=period, team=team),
        "teams_board": selectors.teams_board(period=period) if team is None else None,
    }
    partial = request.htmx and not request.htmx.history_restore_request
    template = "gamify/_board.html" if partial else "gamify/leaderboard.html"
    return render(request, template, context)


@login_required
@require_GET
def impact(request):
    """Your impact: photos matched, labels settled, agreement beside your team's and everyone's,
    points, level, streak and badges; the name-on-boards preference."""
    selectors.require_verifier(request.user)
    return render(request, "gamify/impact.html", {"impact": selectors.impact_of(request.user)})


@login_required
@require_POST
def name_visibility(request):
    """Hide (hidden=1) or show (hidden=0) your name on leaderboards."""
    selectors.require_verifier(request.user)
    services.profile_name_hide(user=request.user, hidden=request.POST.get("hidden") == "1")
    return redirect(request.POST.get("next") if request.POST.get("next") == "/leaderboard/" else "gamify:impact")


def _sprint_bar(request, campaign, sprint=None):
    return render(
        request,
        "gamify/_sprint.html",
        {
            "campaign": campaign,
            "sprint": sprint,
            "state": selectors.sprint_state(sprint) if sprint else None,
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def sprint(request, slug):
    """The sprint bar of the verify page (GET), or start a sprint (POST duration_s=300|600): the bar
    with its countdown, running count and progress bar."""
    campaign = annotate_selectors.get_campaign_for_user(request.user, slug)
    if campaign.kind != Campaign.Kind.MATCH:
        raise Http404("Sprints are for match campaigns.")
    if request.method == "POST":
        try:
            duration_s = int(request.POST.get("duration_s", ""))
            running = services.sprint_start(user=request.user, campaign=campaign, duration_s=duration_s)
        except services.SprintInvalid as exc:
            error = str(exc)
        except ValueError:  # duration_s is no integer
            error = "A sprint lasts 5 or 10 minutes."
        else:
            return _sprint_bar(request, campaign, running)
        return render(request, "gamify/_sprint.html", {"campaign": campaign, "error": error}, status=400)
    return _sprint_bar(request, campaign, selectors.sprint_running(user=request.user, campaign=campaign))


@login_required
@require_GET
def sprint_summary(request, uuid):
    """The summary card of one of your sprints once it has ended (before that, its bar)."""
    selectors.require_verifier(request.user)
    sprint: Sprint = selectors.get_sprint_for_user(request.user, uuid)
    state = selectors.sprint_state(sprint)
    if not state["is_over"]:
        return _sprint_bar(request, sprint.campaign, sprint)
    summary = selectors.sprint_summary(sprint)
    template = "gamify/_sprint_summary.html" if request.htmx else "gamify/sprint_summary.html"
    return render(request, template, {"campaign": sprint.campaign, "summary": summary})


@login_required
@require_GET
def announce(request):
    """Admins: a match campaign's live progress (?campaign=<slug>, else the newest active one) and a
    ready-to-send announcement email with those numbers. The htmx partial refreshes the numbers."""
    selectors.require_admin(request.user)
    campaigns = list(Campaign.objects.filter(kind=Campaign.Kind.MATCH).order_by("-created_at"))
    slug = request.GET.get("campaign")
    campaign = next((c for c in campaigns if c.slug == slug), None) if slug else None
    if slug and campaign is None:
        raise Http404("No such campaign.")
    campaign = campaign or next((c for c in campaigns if c.status == Campaign.Status.ACTIVE), None)
    if campaign is None and campaigns:
        campaign = campaigns[0]
    context = {"campaigns": campaigns, "campaign": campaign}
    if campaign is not None:
        context["numbers"] = selectors.campaign_announcement(campaign)
        context["verify_url"] = request.build_absolute_uri(f"/verify/{campaign.slug}/")
    template = "gamify/_announce_numbers.html" if request.htmx else "gamify/announce.html"
    return render(request, template, context)
