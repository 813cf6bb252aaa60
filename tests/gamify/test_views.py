"""Gamification pages: permission matrices, leaderboards from tallies with pinned query counts at two
sizes, hidden names, the sprint bar and summary, htmx celebration events, the announcement page."""

import json
import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.consensus.services import consensus_recompute
from annotate.models import ConsensusMethod, Team, TeamMember
from gamify import services
from gamify.models import ALL_TIME, BadgeAward, Profile, Sprint, Tally
from gamify.selectors import period_start

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, UserFactory, task_with_candidates, user_with_role
from .test_points import answer

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def campaign(db):
    campaign = CampaignFactory(consensus_method=ConsensusMethod.MAJORITY_VOTE, overlap_min=3, overlap_max=3)
    task_with_candidates(campaign)  # a sprint needs something to answer
    return campaign


def expect(response, role, allowed):
    if role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    elif role in allowed:
        assert response.status_code == 200, response.content[:300]
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("role", ROLE_MATRIX)
@pytest.mark.parametrize("name", ["gamify:leaderboard", "gamify:impact"])
def test_verifier_pages_permission_matrix(client, as_role, role, name):
    as_role(role)
    expect(client.get(reverse(name)), role, ("employee", "admin"))


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_announce_permission_matrix(client, as_role, campaign, role):
    as_role(role)
    expect(client.get(reverse("gamify:announce")), role, ("admin",))


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_sprint_permission_matrix(client, as_role, campaign, role):
    user = as_role(role)
    start = client.post(reverse("gamify:sprint", args=[campaign.slug]), {"duration_s": "300"}, **HTMX)
    expect(start, role, ("employee", "admin"))
    assert Sprint.objects.count() == (1 if role in ("employee", "admin") else 0)
    # Someone else's sprint is nobody else's business.
    other = Sprint.objects.create(
        user=UserFactory(),
        campaign=campaign,
        duration_s=300,
        started_at=timezone.now() - timedelta(minutes=6),
        ends_at=timezone.now() - timedelta(minutes=1),
    )
    response = client.get(reverse("gamify:sprint-summary", args=[other.uuid]), **HTMX)
    if role == "anonymous":
        assert response.status_code == 302
    elif role in ("employee", "admin"):
        assert response.status_code == 404
    else:
        assert response.status_code == 403
    assert user is None or not Sprint.objects.filter(user=user).exclude(duration_s=300).exists()


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_name_visibility_permission_matrix(client, as_role, role):
    user = as_role(role)
    response = client.post(reverse("gamify:name-visibility"), {"hidden": "1"})
    if role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    elif role in ("employee", "admin"):
        assert response.status_code == 302 and Profile.objects.get(user=user).is_name_hidden
    else:
        assert response.status_code == 403 and not Profile.objects.exists()


def _people(n: int, *, team=None, start_points: int = 0):
    """n people with tallies today, this week and all time (points descending), some in `team`."""
    today = timezone.localdate()
    users = [UserFactory(username=f"p{start_points}-{i:04d}") for i in range(n)]
    rows = []
    for i, user in enumerate(users):
        for period in Tally.Period.values:
            rows.append(
                Tally(
                    user=user,
                    period=period,
                    period_start=period_start(period, today),
                    team=team if i % 2 else None,
                    points=start_points + 10 * (n - i),
                    answer_count=n - i,
                    settled_count=n - i,
                    agree_count=(n - i) // 2,
                )
            )
    Tally.objects.bulk_create(rows)
    return users


@pytest.mark.parametrize("size", [5, 120])
@pytest.mark.parametrize("period", ["day", "week", "all"])
@pytest.mark.parametrize("by_team", [False, True])
def test_leaderboard_query_count_does_not_grow(db, client, django_assert_num_queries, size, period, by_team):
    team = Team.objects.create(slug="merch", name="Merchandising")
    viewer = user_with_role("employee", username="viewer")
    _people(size, team=team)
    Tally.objects.create(user=viewer, period=period, period_start=period_start(period), team=team, points=1)
    Profile.objects.create(user=viewer)
    client.force_login(viewer)
    url = reverse("gamify:leaderboard") + f"?period={period}" + ("&team=merch" if by_team else "")
    # session, user, roles, the team (by slug), teams for the tabs, the top 50, the viewer's row and
    # the count above it, then the teams' totals on the overall board; the nav's role check is cached.
    with django_assert_num_queries(8):
        response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "viewer (you)" in html
    assert html.count('<tr class="you">') == 1


def test_leaderboard_ranks_hide_names_and_split_periods(client, campaign):
    alice, bob, carol, viewer = (user_with_role("employee", username=n) for n in ("alice", "bob", "carol", "vic"))
    today = timezone.localdate()
    for user, day_points, all_points in ((alice, 30, 30), (bob, 30, 500), (carol, 10, 10)):
        Tally.objects.create(user=user, period="day", period_start=today, points=day_points)
        Tally.objects.create(user=user, period="all", period_start=ALL_TIME, points=all_points)
    services.profile_name_hide(user=bob, hidden=True)
    client.force_login(viewer)
    html = client.get(reverse("gamify:leaderboard") + "?period=day").content.decode()
    rows = [r.split("</td>")[0:3] for r in html.split("<tr")[2:]]
    cells = [[c.split(">")[-1] for c in r] for r in rows]
    # Ties share a rank (competition ranking); bob is shown as anonymous with his rank.
    assert cells[:3] == [["1", "alice", "30"], ["1", "anonymous", "30"], ["3", "carol", "10"]]
    assert "bob" not in html
    html = client.get(reverse("gamify:leaderboard") + "?period=all").content.decode()
    assert html.index("anonymous") < html.index("alice")  # 500 points all time


def test_team_board_lists_only_the_team(db, client):
    team = Team.objects.create(slug="cx", name="Customer experience")
    viewer = user_with_role("employee", username="vic")
    _people(6, team=team)
    client.force_login(viewer)
    html = client.get(reverse("gamify:leaderboard") + "?period=week&team=cx").content.decode()
    assert html.count("<tr>") == 3 + 1  # three team members, plus the header row
    partial = client.get(reverse("gamify:leaderboard") + "?period=day", **HTMX).content.decode()
    assert partial.startswith('<div id="board">')
    restore = client.get(reverse("gamify:leaderboard"), HTTP_HX_HISTORY_RESTORE_REQUEST="true", **HTMX)
    assert "<html" in restore.content.decode()  # back button: the whole page
    assert client.get(reverse("gamify:leaderboard") + "?team=nope").status_code == 404
    assert client.get(reverse("gamify:leaderboard") + "?period=year").status_code == 404


def test_answer_response_carries_sprint_and_celebration_events(client, campaign):
    ann, ben, cat = (user_with_role("employee", username=n) for n in ("ann", "ben", "cat"))
    tasks = [task_with_candidates(campaign) for _ in range(10)]
    for task in tasks[:9]:
        answer(ben, task, "1")
        answer(cat, task, "1")
        answer(ann, task, "1")
    services.celebrations_pop(user=ann)  # celebrated already
    client.force_login(ann)
    client.post(reverse("gamify:sprint", args=[campaign.slug]), {"duration_s": "600"}, **HTMX)
    answer(ben, tasks[9], "1")
    answer(cat, tasks[9], "1")
    client.get(reverse("annotate:verify", args=[campaign.slug]), **HTMX)  # leases the last task to ann
    response = client.post(
        reverse("annotate:verify-answer", args=[campaign.slug]),
        {
            "task": tasks[9].uuid,
            "pick": f"product:{tasks[9].candidates.get(rank=1).product.uuid}",
            "idempotency_key": "k10",
            "duration_ms": "2400",
        },
        **HTMX,
    )
    assert response["HX-Trigger"] == "answer-saved"
    events = json.loads(response["HX-Trigger-After-Settle"])
    sprint = events["gamify:sprint"]
    assert sprint["running"] is True and sprint["answer_count"] == 1 and 0 < sprint["remaining_ms"] <= 600_000
    celebrate = events["gamify:celebrate"]["events"]
    # The tenth answer settles its task: 10 verifications, and 10 x 10 = 100 points is level 2.
    assert [(e["kind"], e["title"]) for e in celebrate] == [("badge", "Badge earned"), ("level", "Level 2")]
    assert celebrate[0]["text"] == "First 10 verifications"
    assert BadgeAward.objects.get(user=ann, badge="verified_10").is_seen


def test_sprint_start_is_idempotent_and_only_5_or_10_minutes(client, campaign):
    user = user_with_role("employee", username="kim")
    client.force_login(user)
    url = reverse("gamify:sprint", args=[campaign.slug])
    assert client.post(url, {"duration_s": "120"}, **HTMX).status_code == 400
    first = client.post(url, {"duration_s": "300"}, **HTMX)
    assert 'class="sprint running"' in first.content.decode()
    client.post(url, {"duration_s": "600"}, **HTMX)
    assert Sprint.objects.filter(user=user).count() == 1
    assert Sprint.objects.get(user=user).duration_s == 300
    assert (
        'id="sprint-clock">5:00<' in client.get(url, **HTMX).content.decode()
        or "4:59" in client.get(url).content.decode()
    )


def test_sprint_summary_counts(client, campaign):
    ann, ben, cat = (user_with_role("employee", username=n) for n in ("ann", "ben", "cat"))
    before = [task_with_candidates(campaign) for _ in range(2)]
    for task in before:  # earlier answers: not part of the sprint
        answer(ben, task, "1")
        answer(ann, task, "1")
    sprint = services.sprint_start(user=ann, campaign=campaign, duration_s=300)
    tasks = [task_with_candidates(campaign) for _ in range(4)]
    answer(ann, tasks[0], "1")  # settles as "1": agree, a confirmed match
    answer(ann, tasks[1], "2")  # settles as "1": disagree
    answer(ann, tasks[2], "none")  # stays open: pending
    answer(ann, tasks[3], "3", duration_ms=100)  # too fast: an answer, never points
    for task in tasks[:2]:
        answer(ben, task, "1")
        answer(cat, task, "1")
    for task in before:
        answer(cat, task, "1")
    Sprint.objects.filter(pk=sprint.pk).update(ends_at=timezone.now() + timedelta(milliseconds=1))  # time's up
    time.sleep(0.01)
    client.force_login(ann)
    html = client.get(reverse("gamify:sprint-summary", args=[sprint.uuid]), **HTMX).content.decode()
    assert 'id="summary-answers">4<' in html
    assert 'id="summary-accuracy">50%' in html and "(2 settled so far)" in html
    assert 'id="summary-points">10<' in html  # the unanimous match; the wrong "2" earns nothing
    assert html.count("<img") == 3  # the three photos ann picked a product for, one confirmed
    assert html.count('class="confirmed"') == 1
    # "Matched" counts the confirmed one only, as the impact page does (issue 16: "matched 0 vs 3").
    assert '<p id="summary-matched">Photos you matched: <b>1</b> confirmed by consensus (of 3 you picked' in html
    # Before the end, the same URL gives the running bar, not the summary.
    Sprint.objects.filter(pk=sprint.pk).update(ends_at=timezone.now() + timedelta(minutes=1))
    assert (
        'class="sprint running"'
        in client.get(reverse("gamify:sprint-summary", args=[sprint.uuid]), **HTMX).content.decode()
    )


def test_impact_page_numbers(client, campaign):
    team = Team.objects.create(slug="merch", name="Merchandising")
    ann, ben, cat = (user_with_role("employee", username=n) for n in ("ann", "ben", "cat"))
    TeamMember.objects.create(team=team, user=ann)
    TeamMember.objects.create(team=team, user=ben)
    for label in ("1", "none"):
        task = task_with_candidates(campaign)
        answer(ann, task, label)
        answer(ben, task, "1")
        answer(cat, task, "1")
    consensus_recompute(campaign_id=campaign.pk)  # agreement comes from the full recompute, as on your stats
    client.force_login(ann)
    html = client.get(reverse("gamify:impact")).content.decode()
    assert 'id="impact-matched">1<' in html and 'id="impact-settled">1<' in html
    assert 'id="impact-agreement">0.50 <span class="muted small">of 2 answers' in html  # ann's agreement
    assert "0.75" in html and "0.83" in html  # her team's: 3 of 4; everyone's: 5 of 6


def test_announce_page_has_live_numbers_and_a_draft(client, campaign):
    admin = user_with_role("admin", username="boss")
    ann, ben, cat = (user_with_role("employee", username=n) for n in ("ann", "ben", "cat"))
    for _ in range(2):
        task = task_with_candidates(campaign)
        for person in (ann, ben, cat):
            answer(person, task, "1")
    # The fixture's task is the third, unanswered one.
    services.profile_name_hide(user=ben, hidden=True)
    client.force_login(admin)
    html = client.get(reverse("gamify:announce")).content.decode()
    assert "2 of 3 customer photos (67%)" in html and "3 of you gave 6 verifications" in html
    assert "anonymous" in html and "ben" not in html.split("Email draft")[1]
    assert "This week's top verifiers: ann, cat, a colleague who prefers to stay anonymous, thank you!" in html
    partial = client.get(reverse("gamify:announce") + f"?campaign={campaign.slug}", **HTMX).content.decode()
    assert partial.startswith('<div id="announce-numbers"') and "<b>2</b> of 3" in partial
    assert client.get(reverse("gamify:announce") + "?campaign=nope").status_code == 404


def test_verify_page_loads_the_sprint_bar_and_its_keys(client, campaign):
    user = user_with_role("employee", username="kim")
    task_with_candidates(campaign)
    client.force_login(user)
    html = client.get(reverse("annotate:verify", args=[campaign.slug])).content.decode()
    assert f'hx-get="/verify/{campaign.slug}/sprint"' in html and "sprint.js" in html
    bar = client.get(reverse("gamify:sprint", args=[campaign.slug]), **HTMX).content.decode()
    assert 'data-key="s"' in bar and 'data-key="l"' in bar


@pytest.mark.parametrize(
    "url", ["/admin/gamify/tally/", "/admin/gamify/answerpoints/", "/admin/gamify/badgeaward/", "/admin/gamify/sprint/"]
)
def test_admin_lists_load_for_an_admin_only(client, as_role, campaign, url):
    ann, ben, cat = (user_with_role("employee", username=n) for n in ("ann", "ben", "cat"))
    task = task_with_candidates(campaign)
    for person in (ann, ben, cat):
        answer(person, task, "1")
    services.sprint_start(user=ann, campaign=campaign, duration_s=600)
    as_role("employee")
    assert client.get(url).status_code == 302
    as_role("admin")
    response = client.get(url)
    assert response.status_code == 200 and "ann" in response.content.decode()


@pytest.mark.parametrize("count, unit", [(0, "answers"), (1, "answer"), (2, "answers")])
def test_the_sprint_bar_says_1_answer_not_1_answers(count, unit):
    # Issue 16, bug 14; sprint.js keeps the unit right as the count moves.
    import uuid
    from types import SimpleNamespace

    from django.template.loader import render_to_string

    state = {"is_over": False, "remaining_ms": 1000, "duration_ms": 300_000, "clock": "4:59", "elapsed_pct": 1}
    html = render_to_string(
        "gamify/_sprint.html",
        {"sprint": SimpleNamespace(uuid=uuid.uuid4()), "state": {**state, "answer_count": count}, "campaign": None},
    )
    assert f'<b id="sprint-count">{count}</b> <span id="sprint-count-unit">{unit}</span>' in html


def test_a_sprint_cannot_start_before_the_campaign_has_a_task(client, db):
    # Issue 16, bug 6: the clock would run while the campaign is still preparing.
    from annotate.models import Campaign
    from gamify.models import Sprint

    from ..factories import CampaignFactory, user_with_role

    campaign = CampaignFactory(slug="fresh", status=Campaign.Status.PREPARING)
    client.force_login(user_with_role("employee", username="early"))
    response = client.post(f"/verify/{campaign.slug}/sprint", {"duration_s": 300}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert "still preparing" in response.content.decode()
    assert not Sprint.objects.exists()
