"""Latency and throughput of the annotators' JSON API loop, and a check that routing keeps its rules.

Builds a campaign of 10,000 tasks (3 candidates each, random shuffle keys) over 3,000 products and
10,000 photos (distinct 4x4 PNGs, so Photo.sha256 stays unique) in a throwaway database, serves the
app with gunicorn (2 workers x 8 threads) and drives it with N concurrent annotators, each a thread
with its own httpx.Client and DRF token, looping

    GET  /api/v1/campaigns/<slug>/next-task        (lease the next task)
    POST /api/v1/tasks/<uuid>/answers              (candidate of rank 1, or "none" one time in 5)

for a fixed number of iterations (default 150 for 1 annotator, 40 each otherwise) or until
--duration-s. Each concurrency level gets a fresh campaign and fresh annotators. Prints one table
row per (database, concurrency, endpoint): requests, 200/201s, 204s (no task left), errors by
status code (409s by their conflict code), p50/p95/p99 latency in ms as seen by the client, and
throughput in requests/s over the level's wall-clock time.

Then checks, from the database: no task has more than answers_per_task live answers, nobody
answered a task twice, Task.answer_count and status agree with the answers, and every 201 left
exactly one answer row. Exits 1 when a check fails.

On PostgreSQL it runs ANALYZE after building each campaign (as autovacuum would within about a
minute; --no-analyze skips it) and samples pg_locks every 100 ms during the load, printing how many
sessions waited for a lock and on what.

The load generator and the server share the machine's CPUs: on a small machine the figures are a
lower bound for the server alone.

Run:

    .venv/bin/python bench/api_latency.py                      # SQLite, 1 and 20 annotators
    bin/services start
    .venv/bin/python bench/api_latency.py --database-url postgres://fitcheck@127.0.0.1:55432/fitcheck_bench
    .venv/bin/python bench/api_latency.py --annotators 20 --seed-mode shared   # everyone in one order

State lives in var/bench/api_latency/ (wiped at start: SQLite file, media, gunicorn.log) or in the
--database-url database (dropped and recreated; its name must contain "bench").
"""

import argparse
import io
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (bench/ is not a package; _common then puts the repository on sys.path)

NEXT = "next-task"
ANSWER = "answer"


ANNOTATOR_COUNTS = _common.int_list(low=1, high=1000, what="annotator counts")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Drive next-task -> answer through gunicorn with concurrent annotators; print latency "
        "percentiles and throughput, then check the answer invariants. Uses a throwaway database.",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL (dropped and recreated; name must contain 'bench'); default SQLite",
    )
    parser.add_argument(
        "--annotators",
        type=ANNOTATOR_COUNTS,
        default=[1, 20],
        metavar="N[,N...]",
        help="concurrency levels, run one after the other (default: 1,20)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="next-task/answer pairs per annotator (default: 150 alone, 40 each when several)",
    )
    parser.add_argument("--duration-s", type=float, default=None, help="also stop each level after this long")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks (and photos) (default: %(default)s)")
    parser.add_argument("--products", type=int, default=3_000, help="catalog products (default: %(default)s)")
    parser.add_argument(
        "--answers-per-task", type=int, default=3, help="fixed overlap of the campaign (default: %(default)s)"
    )
    parser.add_argument(
        "--seed-mode",
        choices=["user", "shared"],
        default="user",
        help="user: each annotator's default order (the API's per-user seed); shared: all "
        "annotators ask for the same seed, so they compete for the same tasks (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for data and choices (default: %(default)s)")
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="PostgreSQL: skip the ANALYZE after building each campaign (by default the bench runs "
        "it, as autovacuum would within about a minute; without it the first queries run on a "
        "planner that has no statistics for the new rows)",
    )
    return parser.parse_args(argv)


# -- data --------------------------------------------------------------------------------------------


def _tiny_png(kind: int, n: int) -> bytes:
    """A distinct 4x4 RGB PNG for (kind, n): the bytes encode both, so every sha256 differs."""
    from PIL import Image

    raw = bytes([kind]) + n.to_bytes(4, "big") + bytes(43)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (4, 4), raw).save(buffer, format="PNG")
    return buffer.getvalue()


def _stored(kind: int, n: int, prefix: str):
    from catalog.images import image_inspect, image_store

    data = _tiny_png(kind, n)
    info = image_inspect(data)
    return image_store(data, info, prefix=prefix), info


def catalog_build(*, product_count: int, photo_count: int) -> tuple[list[int], list[int]]:
    """A retailer with `product_count` products (one image each) and `photo_count` photos, in bulk.
    Returns (product ids, photo ids)."""
    from django.db import transaction

    from catalog.models import Photo, Product, ProductImage, Retailer

    with transaction.atomic():
        retailer = Retailer.objects.create(slug="bench", name="Bench Retail")
        products = Product.objects.bulk_create(
            [Product(retailer=retailer, sku=f"B-{i:05d}", title=f"Bench product {i}") for i in range(product_count)],
            batch_size=1000,
        )
        images = []
        for i, product in enumerate(products):
            name, info = _stored(1, i, "products")
            images.append(
                ProductImage(
                    product=product,
                    image=name,
                    sha256=info.sha256,
                    width_px=info.width_px,
                    height_px=info.height_px,
                    position=0,
                )
            )
        ProductImage.objects.bulk_create(images, batch_size=1000)
        photos = []
        for i in range(photo_count):
            name, info = _stored(2, i, "photos")
            photos.append(
                Photo(
                    source="bench",
                    caption=f"photo {i}",
                    image=name,
                    sha256=info.sha256,
                    width_px=info.width_px,
                    height_px=info.height_px,
                )
            )
        photos = Photo.objects.bulk_create(photos, batch_size=1000)
    return [p.pk for p in products], [p.pk for p in photos]


def campaign_build(*, slug: str, answers_per_task: int, product_ids, photo_ids, rng: random.Random):
    """An ACTIVE campaign with a task per photo, 3 distinct candidates each, random shuffle keys."""
    from django.db import transaction

    from annotate.models import Campaign, Task, TaskCandidate
    from annotate.services import SHUFFLE_SPACE
    from mlcore.models import ModelVersion

    version, _ = ModelVersion.objects.get_or_create(
        name="bench-none", defaults={"backbone": "tiny_cnn", "image_size_px": 32, "embedding_dim": 32}
    )
    with transaction.atomic():
        campaign = Campaign.objects.create(
            # Fixed overlap (overlap_min = overlap_max) and no gold tasks, so that the invariants below
            # are exact: a task completes at exactly answers_per_task answers.
            slug=slug,
            name=slug,
            status=Campaign.Status.ACTIVE,
            overlap_min=answers_per_task,
            overlap_max=answers_per_task,
            gold_first_count=0,
            gold_rate=0,
            candidate_count=3,
            model_version=version,
        )
        tasks = Task.objects.bulk_create(
            [Task(campaign=campaign, photo_id=pid, shuffle_key=rng.randrange(SHUFFLE_SPACE)) for pid in photo_ids],
            batch_size=1000,
        )
        TaskCandidate.objects.bulk_create(
            [
                TaskCandidate(task=task, product_id=product_id, rank=rank, score=1.0 - rank / 10)
                for task in tasks
                for rank, product_id in enumerate(rng.sample(product_ids, 3), start=1)
            ],
            batch_size=2000,
        )
    return campaign


def annotators_build(*, prefix: str, count: int) -> list[tuple[int, str]]:
    """`count` users in the employee group, each with an API token. Returns [(user id, token)]."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from annotate import auth, roles

    roles.roles_ensure()
    group = Group.objects.get(name=roles.EMPLOYEE)
    out = []
    for i in range(count):
        user = get_user_model().objects.create_user(username=f"{prefix}-{i:02d}", password=None)
        user.groups.add(group)
        out.append((user.pk, auth.token_create(user=user)[1]))
    return out


def statistics_refresh() -> None:
    """ANALYZE the whole (small) database, so that PostgreSQL's planner knows the bulk-loaded rows."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


# -- server ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_start(*, env: dict, workers: int, threads: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start gunicorn on a free loopback port and wait (up to 60 s) for /healthz. Returns (process, base URL).

    Raises:
        BenchError: gunicorn exited or never answered; the message holds its log's tail.
    """
    import httpx

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        "120",
        "--error-logfile",
        str(log_path),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd, cwd=_common.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server_stop(proc)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    raise _common.BenchError(f"gunicorn did not come up on {base} (exit {proc.returncode}); log:\n{tail}")


def server_stop(proc: subprocess.Popen) -> None:
    """SIGTERM the gunicorn master we started (it stops its workers); SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- load --------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Client-side results of one level: (endpoint, outcome, seconds) per request."""

    rows: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, endpoint: str, outcome: str, seconds: float) -> None:
        with self.lock:
            self.rows.append((endpoint, outcome, seconds))


def _outcome(response) -> str:
    """ "200", "201", "204", or for a 409 "409:<conflict code>", else the status code."""
    if response.status_code == 409:
        try:
            return f"409:{response.json().get('code', '?')}"
        except ValueError:
            return "409"
    return str(response.status_code)


def annotator_run(
    *,
    base: str,
    token: str,
    slug: str,
    iterations: int,
    deadline: float,
    seed: int | None,
    rng: random.Random,
    samples: Samples,
) -> None:
    """One annotator: next-task, then answer it, `iterations` times, until 204 or the deadline."""
    import httpx

    params = {"seed": seed} if seed is not None else None
    with httpx.Client(base_url=base, headers={"Authorization": f"Token {token}"}, timeout=120) as client:
        for _ in range(iterations):
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            try:
                response = client.get(f"/api/v1/campaigns/{slug}/next-task", params=params)
            except httpx.HTTPError as exc:
                samples.add(NEXT, f"exc:{type(exc).__name__}", time.perf_counter() - started)
                continue
            samples.add(NEXT, _outcome(response), time.perf_counter() - started)
            if response.status_code == 204:
                return
            if response.status_code != 200:
                continue
            task = response.json()
            rank1 = next(c for c in task["candidates"] if c["rank"] == 1)
            choose_none = rng.random() < 0.2
            body = {
                "choice": "none" if choose_none else "product",
                "product": None if choose_none else rank1["product"]["uuid"],
                "duration_ms": rng.randint(800, 9000),
                "idempotency_key": uuid.uuid4().hex,
            }
            started = time.perf_counter()
            try:
                response = client.post(f"/api/v1/tasks/{task['uuid']}/answers", json=body)
            except httpx.HTTPError as exc:
                samples.add(ANSWER, f"exc:{type(exc).__name__}", time.perf_counter() - started)
                continue
            samples.add(ANSWER, _outcome(response), time.perf_counter() - started)


def warm_up(*, base: str, token: str, workers: int, threads: int) -> None:
    """Touch every worker thread once (URLconf, DRF, token auth, a DB connection) before timing:
    a 404 for a campaign that does not exist leases nothing."""
    import httpx

    def hit(_):
        with httpx.Client(base_url=base, headers={"Authorization": f"Token {token}"}, timeout=60) as client:
            for _ in range(3):
                client.get("/api/v1/campaigns/no-such-campaign/next-task")

    with ThreadPoolExecutor(max_workers=workers * threads) as pool:
        list(pool.map(hit, range(workers * threads)))


def level_run(
    *,
    base: str,
    slug: str,
    tokens: list[str],
    iterations: int,
    duration_s: float | None,
    shared_seed: int | None,
    rng: random.Random,
) -> tuple[Samples, float]:
    """Run len(tokens) annotators at once. Returns (samples, wall-clock seconds)."""
    samples = Samples()
    deadline = time.monotonic() + (duration_s if duration_s else 10**9)
    rngs = [random.Random(rng.random()) for _ in tokens]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        futures = [
            pool.submit(
                annotator_run,
                base=base,
                token=token,
                slug=slug,
                iterations=iterations,
                deadline=deadline,
                seed=shared_seed,
                rng=r,
                samples=samples,
            )
            for token, r in zip(tokens, rngs, strict=True)
        ]
        for future in futures:
            future.result()
    return samples, time.perf_counter() - started


class LockSampler(threading.Thread):
    """PostgreSQL only: every `interval_s`, count the bench database's sessions waiting for a lock, by
    what they wait on (the relation of a row's tuple lock, or "transactionid" for the first waiter
    behind a row lock). Shows where concurrent requests queue."""

    QUERY = """
        SELECT coalesce(l.relation::regclass::text, l.locktype), count(*)
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE NOT l.granted AND a.datname = current_database()
        GROUP BY 1
    """

    def __init__(self, database_url: str, interval_s: float = 0.1):
        super().__init__(daemon=True)
        self.url = database_url.replace("postgres://", "postgresql://", 1)
        self.interval_s = interval_s
        self.samples = 0
        self.waiting: Counter = Counter()
        self._halt = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            while not self._halt.wait(self.interval_s):
                self.samples += 1
                for what, n in conn.execute(self.QUERY).fetchall():
                    self.waiting[what] += n

    def stop(self) -> str:
        """Stop sampling; returns a one-line summary."""
        self._halt.set()
        self.join(timeout=10)
        if not self.samples:
            return "lock waits: no samples"
        total = sum(self.waiting.values())
        parts = ", ".join(f"{what} {n / total:.0%}" for what, n in self.waiting.most_common(4)) or "-"
        return (
            f"lock waits (sampled every {self.interval_s * 1000:.0f} ms): {total / self.samples:.1f} sessions "
            f"waiting on average; on: {parts}"
        )


def level_rows(*, database: str, concurrency: int, samples: Samples, wall_s: float) -> list[list]:
    by_endpoint = defaultdict(list)
    for endpoint, outcome, seconds in samples.rows:
        by_endpoint[endpoint].append((outcome, seconds))
    rows = []
    for endpoint in (NEXT, ANSWER):
        results = by_endpoint.get(endpoint, [])
        outcomes = Counter(o for o, _ in results)
        ok = sum(n for o, n in outcomes.items() if o.startswith("2") and o != "204")
        errors = ", ".join(f"{o}x{n}" for o, n in sorted(outcomes.items()) if not o.startswith("2")) or "-"
        ms = [s * 1000 for _, s in results]
        rows.append(
            [
                database,
                concurrency,
                endpoint,
                len(results),
                ok,
                outcomes.get("204", 0),
                errors,
                f"{_common.percentile(ms, 50):.1f}",
                f"{_common.percentile(ms, 95):.1f}",
                f"{_common.percentile(ms, 99):.1f}",
                f"{len(results) / wall_s:.1f}",
            ]
        )
    return rows


def invariants_check(*, campaign, created_201: int) -> tuple[bool, str]:
    """Query the campaign's answers and tasks; returns (all good, a one-paragraph report)."""
    from django.db.models import Count, F, Q

    from annotate.models import Answer, Task

    limit = campaign.overlap_max
    live = Answer.objects.filter(task__campaign=campaign, revoked_at__isnull=True)
    per_task = live.values("task").annotate(n=Count("pk")).order_by()
    max_per_task = max((row["n"] for row in per_task), default=0)
    over_limit = sum(1 for row in per_task if row["n"] > limit)
    twice = live.values("task", "annotator").annotate(n=Count("pk")).filter(n__gt=1).count()
    tasks = Task.objects.filter(campaign=campaign).annotate(
        live=Count("answers", filter=Q(answers__revoked_at__isnull=True))
    )
    count_drift = tasks.exclude(answer_count=F("live")).count()
    status_wrong = (
        tasks.filter(status=Task.Status.COMPLETE, live__lt=limit).count()
        + tasks.filter(status=Task.Status.OPEN, live__gte=limit).count()
    )
    total = live.count()
    complete = Task.objects.filter(campaign=campaign, status=Task.Status.COMPLETE).count()
    good = over_limit == 0 and twice == 0 and count_drift == 0 and status_wrong == 0 and total == created_201
    text = (
        f"check {'OK' if good else 'FAILED'}: {total} answers ({created_201} 201 responses), "
        f"{complete} tasks complete; max answers on one task {max_per_task} (limit {limit}), "
        f"tasks over the limit {over_limit}, (task, annotator) pairs answered twice {twice}, "
        f"answer_count drift {count_drift}, status disagreeing with answers {status_wrong}"
    )
    return good, text


# -- main --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    env = _common.bench_environment("api_latency", database_url=args.database_url)
    os.environ["LOG_LEVEL"] = env["LOG_LEVEL"] = "WARNING"  # no per-request httpx INFO lines
    total_started = time.perf_counter()
    with _common.Stopwatch() as booted:
        vendor = _common.django_ready()
        import annotate.services  # noqa: F401  (imports torch via mlcore.services; keep it out of the timings)
    database = "sqlite" if vendor == "sqlite" else "postgresql"
    rng = random.Random(args.seed)
    print(
        f"api_latency: database {_common.database_label(args.database_url)}, gunicorn {args.workers} workers x "
        f"{args.threads} threads, annotators {','.join(map(str, args.annotators))}, seed mode {args.seed_mode}, "
        f"{'no ANALYZE, ' if vendor == 'postgresql' and args.no_analyze else ''}"
        f"{os.cpu_count()} CPUs shared by server and load generator, load average {os.getloadavg()[0]:.2f}"
    )
    with _common.Stopwatch() as built:
        product_ids, photo_ids = catalog_build(product_count=args.products, photo_count=args.tasks)
    print(
        f"setup: django + migrate + app imports {booted.seconds:.1f} s; {len(product_ids)} products, "
        f"{len(photo_ids)} photos in {built.seconds:.1f} s"
    )

    from annotate.models import Answer, Campaign

    warm_user = annotators_build(prefix="warm", count=1)[0][1]
    log_path = Path(env["FITCHECK_VAR_DIR"]) / "gunicorn.log"
    with _common.Stopwatch() as boot:
        proc, base = server_start(env=env, workers=args.workers, threads=args.threads, log_path=log_path)
    print(f"gunicorn answered /healthz after {boot.seconds:.1f} s")
    rows, checks, all_good = [], [], True
    try:
        warm_up(base=base, token=warm_user, workers=args.workers, threads=args.threads)
        for n in args.annotators:
            iterations = args.iterations or (150 if n == 1 else 40)
            slug = f"bench-{n}"
            with _common.Stopwatch() as built:
                campaign = campaign_build(
                    slug=slug,
                    answers_per_task=args.answers_per_task,
                    product_ids=product_ids,
                    photo_ids=photo_ids,
                    rng=rng,
                )
                tokens = [key for _, key in annotators_build(prefix=f"a{n}", count=n)]
            if vendor == "postgresql" and not args.no_analyze:
                statistics_refresh()
            shared_seed = rng.randrange(2**31) if args.seed_mode == "shared" else None
            sampler = LockSampler(args.database_url) if vendor == "postgresql" else None
            if sampler:
                sampler.start()
            samples, wall_s = level_run(
                base=base,
                slug=slug,
                tokens=tokens,
                iterations=iterations,
                duration_s=args.duration_s,
                shared_seed=shared_seed,
                rng=rng,
            )
            locks = f"\n  {sampler.stop()}" if sampler else ""
            created = sum(1 for e, o, _ in samples.rows if e == ANSWER and o == "201")
            good, text = invariants_check(campaign=campaign, created_201=created)
            all_good &= good
            level_rows_ = level_rows(database=database, concurrency=n, samples=samples, wall_s=wall_s)
            rows += level_rows_
            checks.append(
                f"{database}, {n} annotator(s) x {iterations} iterations: {wall_s:.1f} s "
                f"(campaign built in {built.seconds:.1f} s), load average {os.getloadavg()[0]:.2f}\n  {text}{locks}"
            )
            print(_common.table(HEADERS, level_rows_), "\n", checks[-1], "\n", sep="", flush=True)
            # The next level starts on a table of the same size.
            Answer.objects.filter(task__campaign=campaign).delete()
            Campaign.objects.filter(pk=campaign.pk).delete()
    finally:
        server_stop(proc)
    if len(args.annotators) > 1:
        print("== summary ==")
        print(_common.table(HEADERS, rows))
        print("\n".join(checks))
    log = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    errors = [line for line in log if "Traceback" in line or "ERROR" in line]
    if errors:
        print(f"gunicorn.log: {len(errors)} error lines, see {log_path}")
    print(f"total {time.perf_counter() - total_started:.0f} s")
    return 0 if all_good else 1


HEADERS = [
    "database",
    "annotators",
    "endpoint",
    "requests",
    "200/201",
    "204",
    "errors",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "req/s",
]

if __name__ == "__main__":
    try:
        sys.exit(main())
    except _common.BenchError as exc:
        print(f"api_latency: {exc}", file=sys.stderr)
        sys.exit(2)
