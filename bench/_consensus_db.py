"""The database part of bench/consensus.py: time a full consensus recompute (annotate.consensus.services
.consensus_recompute) over a campaign of --recompute-answers answers on --recompute-tasks tasks.

The campaign is built with bulk inserts on a fresh SQLite file (or --database-url PostgreSQL, a
throwaway database whose name contains "bench"): photos without image files (the recompute never
opens them), tasks, 1% of them gold, annotators, and answers drawn from a one-coin crowd (accuracy
0.6-0.95) on the 6 options of a match task. The recompute then runs in a fresh child process so its
peak memory (VmHWM) is its own, not the builder's (ru_maxrss would carry the builder's over fork
and exec).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from _common import Stopwatch, bench_environment, database_label, django_ready, peak_rss_mb, table

ROOT = Path(__file__).resolve().parent.parent
BATCH = 20_000


def distinct_workers(rng: np.random.Generator, per_task: np.ndarray, workload: np.ndarray) -> np.ndarray:
    """(sum(per_task),) int64: for each task in turn, per_task[t] distinct people drawn by `workload`
    ((W,) float64 summing to 1)."""
    worker = np.empty(int(per_task.sum()), dtype=np.int64)
    pos = 0
    for n in per_task.tolist():
        worker[pos : pos + n] = rng.choice(len(workload), n, replace=False, p=workload)
        pos += n
    return worker


def one_coin_answers(rng: np.random.Generator, n_tasks: int, n_answers: int, n_annotators: int, K: int = 6):
    """This part's crowd as arrays: true classes (35/10/5/35/10/5% over K = 6), 1% of tasks gold, every
    task floor(n_answers / n_tasks) distinct annotators (some one more), Pareto workloads, one-coin
    accuracies uniform in 0.6-0.95 with errors uniform over the other classes.

    Returns:
        truth (T,) int64, gold (G,) int64 task indices, and per answer task, worker, label (N,) int64.
    """
    truth = rng.choice(K, n_tasks, p=[0.35, 0.1, 0.05, 0.35, 0.1, 0.05])
    gold = rng.choice(n_tasks, max(n_tasks // 100, 1), replace=False)
    per_task = np.full(n_tasks, n_answers // n_tasks)
    per_task[rng.choice(n_tasks, n_answers - per_task.sum(), replace=False)] += 1
    accuracy = rng.uniform(0.6, 0.95, n_annotators)
    workload = rng.pareto(1.5, n_annotators) + 1
    workload /= workload.sum()
    task = np.repeat(np.arange(n_tasks), per_task)
    worker = distinct_workers(rng, per_task, workload)
    right = rng.random(len(task)) < accuracy[worker]
    wrong = (truth[task] + rng.integers(1, K, len(task))) % K
    return truth, gold, task, worker, np.where(right, truth[task], wrong)


def _build(n_tasks: int, n_answers: int, n_annotators: int, seed: int) -> int:
    """Create the campaign; returns its id. Prints what it built and how long it took."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from annotate.models import Campaign, GoldLabel, Task
    from catalog.models import Photo

    rng = np.random.default_rng(seed)
    User = get_user_model()
    labels = ["1", "2", "3", "none", "not_a_product", "unfit"]
    K = len(labels)
    with Stopwatch() as sw:
        campaign = Campaign.objects.create(slug="recompute-bench", name="recompute bench", status="active")
        User.objects.bulk_create([User(username=f"annotator-{i:05d}") for i in range(n_annotators)], batch_size=BATCH)
        user_ids = np.array(User.objects.order_by("pk").values_list("pk", flat=True))
        for start in range(0, n_tasks, BATCH):
            stop = min(start + BATCH, n_tasks)
            with transaction.atomic():
                Photo.objects.bulk_create(
                    [
                        Photo(
                            source="bench", image=f"photos/bench-{i}.png", sha256=f"{i:064x}", width_px=96, height_px=96
                        )
                        for i in range(start, stop)
                    ],
                    batch_size=BATCH,
                )
        photo_ids = np.array(Photo.objects.order_by("pk").values_list("pk", flat=True))
        shuffle = rng.integers(0, 2**31, n_tasks)
        for start in range(0, n_tasks, BATCH):
            stop = min(start + BATCH, n_tasks)
            with transaction.atomic():
                Task.objects.bulk_create(
                    [
                        Task(campaign=campaign, photo_id=int(photo_ids[i]), shuffle_key=int(shuffle[i]))
                        for i in range(start, stop)
                    ],
                    batch_size=BATCH,
                )
        task_ids = np.array(Task.objects.filter(campaign=campaign).order_by("pk").values_list("pk", flat=True))
        # Every task gets floor(n_answers / n_tasks) distinct annotators, some one more.
        truth, gold, task_of, worker_of, answer_label = one_coin_answers(rng, n_tasks, n_answers, n_annotators, K)
        GoldLabel.objects.bulk_create(
            [GoldLabel(task_id=int(task_ids[i]), label=labels[truth[i]], source="import") for i in gold],
            batch_size=BATCH,
        )
        Task.objects.filter(pk__in=[int(task_ids[i]) for i in gold]).update(is_gold=True)
        duration = rng.lognormal(np.log(2500), 0.5, len(task_of)).astype(np.int64)
        now = timezone.now()
        # Raw executemany: Django model instances cost ~4x more per row at this size.
        sql = (
            "INSERT INTO annotate_answer (uuid, task_id, annotator_id, choice, product_id, label, duration_ms, "
            "is_too_fast, idempotency_key, created_at, revoked_at) "
            "VALUES (%s, %s, %s, %s, NULL, %s, %s, %s, %s, %s, NULL)"
        )
        sqlite = connection.vendor == "sqlite"
        stamp = now.isoformat(" ") if sqlite else now
        for start in range(0, len(task_of), BATCH):
            stop = min(start + BATCH, len(task_of))
            rows = []
            for i in range(start, stop):
                label = labels[answer_label[i]]
                key = uuid.uuid4()
                rows.append(
                    (
                        key.hex if sqlite else key,
                        int(task_ids[task_of[i]]),
                        int(user_ids[worker_of[i]]),
                        "none" if label.isdigit() else label,  # no candidate products here; only `label` counts
                        label,
                        int(duration[i]),
                        bool(duration[i] < 700),
                        f"b{i}",
                        stamp,
                    )
                )
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, rows)
        Task.objects.filter(campaign=campaign).update(answer_count=0)
        counts = np.bincount(task_of, minlength=n_tasks)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(
                "UPDATE annotate_task SET answer_count = %s WHERE id = %s",
                [(int(c), int(t)) for c, t in zip(counts, task_ids, strict=True)],
            )
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE annotate_answer")
                cursor.execute("VACUUM ANALYZE annotate_task")
        else:
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
    print(
        f"built: {n_tasks:,} tasks ({len(gold):,} gold), {len(task_of):,} answers by {n_annotators:,} annotators "
        f"in {sw.seconds:.0f} s"
    )
    return campaign.pk


def recompute_child(campaign_id: int, runs: int = 2) -> None:
    """Entry point of the child process (bench/consensus.py --recompute-child ID, with the parent's
    environment): run the recompute `runs` times, print one JSON line each."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    django_ready(migrate=False)
    from annotate.consensus.services import consensus_recompute

    for run in range(runs):
        with Stopwatch() as sw:
            report = consensus_recompute(campaign_id=campaign_id)
        peak_mb = peak_rss_mb()
        print(
            json.dumps(
                {
                    "run": run + 1,
                    "total_s": sw.seconds,
                    "load_s": report.load_s,
                    "fit_s": report.fit_s,
                    "write_s": report.write_s,
                    "n_iter": report.n_iter,
                    "tasks_written": report.tasks_written,
                    "tasks_skipped": report.tasks_skipped,
                    "peak_rss_mb": peak_mb,
                }
            ),
            flush=True,
        )


def recompute_report(args) -> None:
    """Build the campaign, then time its full recompute in a child process (twice: the second run
    shows the cost when nothing changed, the steady state under Celery beat). Prints a table."""
    env = bench_environment("consensus_recompute", database_url=args.database_url)
    vendor = django_ready()
    print(
        f"\n== full recompute: {args.recompute_answers:,} answers over {args.recompute_tasks:,} tasks "
        f"({database_label(args.database_url)}) =="
    )
    campaign_id = _build(args.recompute_tasks, args.recompute_answers, args.recompute_annotators, args.seed)
    from django.db import connections

    connections.close_all()
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parent / "consensus.py"), "--recompute-child", str(campaign_id)],
        env=env | {"PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if child.returncode != 0:
        print(child.stdout[-3000:], child.stderr[-3000:], sep="\n")
        raise SystemExit(f"the recompute child failed with exit code {child.returncode}")
    results = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    rows = [
        [
            r["run"],
            f"{r['total_s']:.1f}",
            f"{r['load_s']:.1f}",
            f"{r['fit_s']:.1f}",
            f"{r['write_s']:.1f}",
            r["n_iter"],
            f"{r['tasks_written']:,}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        for r in results
    ]
    print(table(["run", "total s", "load s", "EM s", "write s", "EM iterations", "tasks written", "peak RSS MB"], rows))
    print(
        f"(database {vendor}; child process wall time incl. Django start-up {wall:.1f} s; "
        f"goal: under 60 s per recompute; peak RSS is the child's maximum resident set)"
    )
    os.environ.pop("DATABASE_URL", None)
