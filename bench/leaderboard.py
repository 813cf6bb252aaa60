"""Leaderboard latency at scale, and what gamification costs the answer path and the full recompute.

Builds, in a throwaway database, a match campaign with --annotators people (default 1,000, spread
over 10 teams) and --answers answers (default 1,000,000, over --tasks tasks) with bulk inserts
(bench/_consensus_db.py's builder: a one-coin crowd, 1% gold tasks), their answer times spread
over the last 28 days. Then:

1. the full consensus recompute, four times (annotate.consensus.services.consensus_recompute): the
   first settles every answer's points through gamify's bulk hook (AnswerPoints rows created,
   tallies per day, ISO week and all time built by deltas), the second re-settles what the first
   run's flags changed, the third is the steady state, the fourth runs with gamify's hooks as no-ops;
2. each leaderboard page (today, this week, all time; overall and for one team) through the Django
   test client as a logged-in employee, --requests times each (default 200): p50/p95 in ms and the
   queries per page;
3. the per-answer overhead of gamify's hook: answer_submit on fresh tasks with the hook and with it
   replaced by a no-op, --hook-answers answers each (default 300), p50/p95 in ms.

Run:

    .venv/bin/python bench/leaderboard.py
    bin/services start
    .venv/bin/python bench/leaderboard.py --database-url postgres://fitcheck@127.0.0.1:55532/fitcheck_bench

State lives in var/bench/leaderboard/ (wiped at start) or in the --database-url database (dropped
and recreated; its name must contain "bench"). Timings are the machine's, single-threaded client
and server in one process: a lower bound for a real server's latency under load.
"""

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Stopwatch, bench_environment, database_label, django_ready, percentile, table  # noqa: E402
from _consensus_db import _build  # noqa: E402


def _spread_answer_times(days: int) -> None:
    """Move each answer back by (id mod `days`) days, so today, this week and all time differ."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "UPDATE annotate_answer SET created_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', created_at, "
                "'-' || (id %% %s) || ' days')",
                [days],
            )
        else:
            cursor.execute("UPDATE annotate_answer SET created_at = created_at - (id %% %s) * interval '1 day'", [days])


def _teams(n_teams: int) -> None:
    from django.contrib.auth import get_user_model

    from annotate.models import Team, TeamMember

    teams = Team.objects.bulk_create([Team(slug=f"team-{i}", name=f"Team {i}") for i in range(n_teams)])
    users = get_user_model().objects.filter(username__startswith="annotator-").order_by("pk")
    TeamMember.objects.bulk_create([TeamMember(team=teams[i % n_teams], user=u) for i, u in enumerate(users)])


def _recompute(campaign_id: int) -> list[list]:
    """Four full recomputes: the first settles every answer (AnswerPoints rows created); the second
    re-settles what the first's flags changed (gold points and flags move; flags no longer lower
    anyone's vote, issue 15); the third is the steady state; the fourth runs with
    gamify's recompute hooks replaced by no-ops (the recompute as it was before gamify). Prints the
    time spent in gamify's hooks and the number of tasks they re-settled."""
    import gamify.services as hooks
    from annotate.consensus.services import consensus_recompute
    from gamify.models import AnswerPoints, Tally

    real = hooks.tasks_label_status, hooks.points_settle_changed, hooks.points_recompute_after, hooks.points_settle
    spent = {"s": 0.0, "tasks": 0}

    def timed(fn):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["s"] += time.perf_counter() - started

        return run

    def counting(*args, **kwargs):
        spent["tasks"] += len(kwargs.get("task_ids", ()))
        return real[3](*args, **kwargs)

    rows = []
    for run in ("1: settles every answer", "2: after the first flags", "3: steady state", "4: hooks as no-ops"):
        spent.update(s=0.0, tasks=0)
        if run.startswith("4"):
            hooks.tasks_label_status = lambda task_ids: {}
            hooks.points_settle_changed = lambda **kwargs: 0
            hooks.points_recompute_after = lambda **kwargs: 0
        else:
            hooks.tasks_label_status = timed(real[0])
            hooks.points_settle_changed = timed(real[1])
            hooks.points_recompute_after = timed(real[2])
            hooks.points_settle = counting
        with Stopwatch() as sw:
            report = consensus_recompute(campaign_id=campaign_id)
        rows.append(
            [
                run,
                f"{sw.seconds:.1f}",
                f"{report.write_s:.1f}",
                f"{spent['s']:.1f}",
                f"{spent['tasks']:,}",
                f"{AnswerPoints.objects.count():,}",
                f"{Tally.objects.count():,}",
            ]
        )
    hooks.tasks_label_status, hooks.points_settle_changed, hooks.points_recompute_after, hooks.points_settle = real
    return rows


def _pages(n_requests: int) -> list[list]:
    from django.db import connection
    from django.test import Client

    from annotate.models import Team
    from tests.factories import user_with_role

    viewer = user_with_role("employee", username="bench-viewer")
    client = Client()
    client.force_login(viewer)
    team = Team.objects.order_by("pk").first()
    rows = []
    for period in ("day", "week", "all"):
        for scope in ("overall", "team"):
            url = f"/leaderboard/?period={period}" + (f"&team={team.slug}" if scope == "team" else "")
            for _ in range(5):  # warm-up
                assert client.get(url).status_code == 200
            # request_started resets connection.queries, so count through an execute wrapper instead.
            queries = []

            def count(execute, sql, *rest, queries=queries):
                queries.append(sql)
                return execute(sql, *rest)

            with connection.execute_wrapper(count):
                client.get(url)
            times = []
            for _ in range(n_requests):
                started = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
            rows.append(
                [
                    f"{period} / {scope}",
                    n_requests,
                    len(queries),
                    f"{percentile(times, 50):.1f}",
                    f"{percentile(times, 95):.1f}",
                ]
            )
    return rows


def _hook_overhead(n_answers: int, seed: int) -> list[list]:
    """answer_submit on fresh open tasks of a small campaign (overlap 3, so tasks settle on every
    third answer), by the bench's annotators, with gamify's hook and with a no-op in its place."""
    from django.contrib.auth import get_user_model

    import gamify.services
    from annotate.models import Campaign, Task
    from annotate.services import answer_submit
    from catalog.models import Photo

    rng = random.Random(seed)
    users = list(get_user_model().objects.filter(username__startswith="annotator-").order_by("pk")[:150])
    assert len(users) == 150, "the hook bench needs at least 150 annotators"
    rows = []
    real = gamify.services.points_settle
    for mode in ("with gamify", "hook as no-op", "with gamify (again)"):
        campaign = Campaign.objects.create(
            slug=f"hook-{mode.replace(' ', '-').strip('()')}", name=mode, status="active", overlap_min=3, overlap_max=3
        )
        photos = Photo.objects.bulk_create(
            [
                Photo(
                    source="bench",
                    image=f"photos/hook-{campaign.pk}-{i}.png",
                    sha256=f"h{campaign.pk:04d}{i:059x}",
                    width_px=96,
                    height_px=96,
                )
                for i in range(n_answers)
            ]
        )
        tasks = Task.objects.bulk_create(
            [Task(campaign=campaign, photo=p, shuffle_key=rng.randrange(2**31)) for p in photos]
        )
        gamify.services.points_settle = real if "gamify" in mode else (lambda **kwargs: 0)
        times = []
        for i in range(n_answers):
            task = tasks[i // 3]
            user = users[(i % 3) * 50 + (i // 3) % 50]
            started = time.perf_counter()
            answer_submit(
                user=user,
                task=task,
                choice=rng.choice(["none", "none", "not_a_product"]),
                duration_ms=2000,
                idempotency_key=f"hook-{campaign.pk}-{i}",
            )
            times.append((time.perf_counter() - started) * 1000)
        rows.append([mode, n_answers, f"{percentile(times, 50):.2f}", f"{percentile(times, 95):.2f}"])
    gamify.services.points_settle = real
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL of a throwaway database (name containing 'bench')")
    parser.add_argument("--annotators", type=int, default=1_000)
    parser.add_argument("--answers", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=300_000)
    parser.add_argument("--teams", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--hook-answers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    bench_environment("leaderboard", database_url=args.database_url)
    vendor = django_ready()
    print(
        f"== leaderboard bench: {args.annotators:,} annotators, {args.answers:,} answers over {args.tasks:,} tasks "
        f"({database_label(args.database_url)}) =="
    )
    campaign_id = _build(args.tasks, args.answers, args.annotators, args.seed)
    _spread_answer_times(28)
    _teams(args.teams)

    print("\n-- full consensus recompute (the first run settles every answer's points) --")
    headers = ["run", "total s", "write s", "gamify s", "tasks re-settled", "AnswerPoints rows", "tallies"]
    print(table(headers, _recompute(campaign_id)))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE" if vendor == "sqlite" else "VACUUM ANALYZE gamify_tally")

    print(f"\n-- leaderboard pages, Django test client, {args.requests} requests each --")
    print(table(["page", "requests", "queries", "p50 ms", "p95 ms"], _pages(args.requests)))

    print("\n-- answer_submit with and without gamify's hook --")
    print(table(["mode", "answers", "p50 ms", "p95 ms"], _hook_overhead(args.hook_answers, args.seed)))


if __name__ == "__main__":
    main()
