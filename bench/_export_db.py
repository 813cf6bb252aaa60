"""The database and child-process parts of bench/export.py: build a match campaign of settled items
with their answers in bulk, create export snapshots, and build one snapshot in a child process.

Everything built is a function of --seed alone (uuids drawn from the seeded generator, fixed
timestamps), so the same seed gives the same export on SQLite and on PostgreSQL up to what the
database itself changes (PostgreSQL's jsonb stores object keys in its own order, for one).
"""

from __future__ import annotations

import cProfile
import datetime as dt
import io
import json
import pstats
import resource
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
from _common import Stopwatch, django_ready, peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent
BATCH = 20_000
LABELS = ("1", "2", "3", "none", "not_a_product", "unfit")  # a match campaign with 3 candidates
LABEL_SHARES = (0.35, 0.1, 0.05, 0.35, 0.1, 0.05)  # how often each label is the settled one
CAMPAIGN_SLUG = "export-bench"
SETTLED_AT = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)  # completed_at of every task; answers before it


def _uuids(rng: np.random.Generator, n: int) -> list[uuid.UUID]:
    """`n` version-4 uuids drawn from `rng` (reproducible, unlike uuid.uuid4)."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return [uuid.UUID(bytes=row.tobytes()) for row in raw]


def _distinct_rows(rng: np.random.Generator, n_rows: int, width: int, high: int, p=None) -> np.ndarray:
    """An (n_rows, width) int64 array of values in [0, high), distinct within each row, drawn from
    `p` (uniform when None): rows with a repeat are redrawn until none is left."""
    out = rng.choice(high, (n_rows, width), p=p)
    while True:
        ordered = np.sort(out, axis=1)
        bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if not len(bad):
            return out
        out[bad] = rng.choice(high, (len(bad), width), p=p)


def _photo_files(rng: np.random.Generator, n: int, *, size_px: int, pool: int = 32) -> list[str]:
    """`n` photo files under MEDIA_ROOT/photos/ (image names relative to MEDIA_ROOT), hard links to
    `pool` distinct noise JPEGs of size_px x size_px (noise compresses badly: roughly the size of a
    photo of that size). The hf format needs the files: datasets' save_to_disk embeds their bytes."""
    import os

    from django.conf import settings
    from PIL import Image

    folder = Path(settings.MEDIA_ROOT) / "photos"
    pool_folder = Path(settings.MEDIA_ROOT) / "pool"
    folder.mkdir(parents=True, exist_ok=True)
    pool_folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for k in range(min(pool, n)):
        pixels = rng.integers(0, 256, (size_px, size_px, 3), dtype=np.uint8)
        source = pool_folder / f"noise-{k:02d}.jpg"
        Image.fromarray(pixels).save(source, format="JPEG", quality=85)
        sources.append(source)
    names = []
    for i in range(n):
        name = f"photos/bench-{i:07d}.jpg"
        os.link(sources[i % len(sources)], folder / f"bench-{i:07d}.jpg")
        names.append(name)
    return names


def build(*, n_items: int, n_answers: int, n_annotators: int, n_products: int, photo_px: int, seed: int) -> dict:
    """Create a match campaign of `n_items` settled tasks (photos with 3 candidate products, 1% gold
    with a GoldLabel), `n_answers` live answers by distinct annotators per task, and AnnotatorStats
    for everyone who answered. Prints what it built and how long it took.

    Args:
        n_items: tasks (and photos); every one settled: status complete, label, posterior over the 6
            labels (sums to 1), confidence = the label's posterior, answer_count, completed_at.
        n_answers: answers, spread evenly (floor(n_answers / n_items) per task, some one more); at most
            n_annotators per task. A digit label is choice "product" with that candidate's product.
        n_annotators: people; each answers a share drawn from a Pareto workload.
        n_products: catalog products of one retailer; each task's 3 candidates are distinct ones.
        photo_px: side of the photo files (noise JPEGs, hard links to a pool of 32): the hf format
            embeds every photo's bytes.

    Returns:
        {"campaign_id", "items", "gold", "answers", "annotators", "build_s", "photo_kb"}.
    """
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotate.models import AnnotatorStats, Campaign, GoldLabel, Task
    from catalog.models import Photo, Product, Retailer

    if n_answers > n_items * n_annotators:
        raise ValueError(f"{n_answers} answers need more than {n_annotators} annotators per task")
    rng = np.random.default_rng(seed)
    K = len(LABELS)
    User = get_user_model()
    sqlite = connection.vendor == "sqlite"
    ops = connection.ops

    def db_uuid(value: uuid.UUID):
        return value.hex if sqlite else value

    with Stopwatch() as sw:
        # -- catalog: one retailer, products, photos (image paths only: no export opens a file) --
        with transaction.atomic():
            retailer = Retailer.objects.create(slug="export-bench", name="Export bench retail")
            product_uuids = _uuids(rng, n_products)
            Product.objects.bulk_create(
                [
                    Product(
                        uuid=product_uuids[i],
                        retailer=retailer,
                        sku=f"EB-{i:06d}",
                        title=f"Bench product {i}, 'quoted'",
                    )
                    for i in range(n_products)
                ],
                batch_size=BATCH,
            )
        product_ids = np.array(Product.objects.order_by("pk").values_list("pk", flat=True))
        photo_uuids = _uuids(rng, n_items)
        photo_names = _photo_files(rng, n_items, size_px=photo_px)
        for start in range(0, n_items, BATCH):
            stop = min(start + BATCH, n_items)
            with transaction.atomic():
                Photo.objects.bulk_create(
                    [
                        Photo(
                            uuid=photo_uuids[i],
                            source="bench",
                            image=photo_names[i],
                            sha256=f"{i:064x}",  # not the file's: the files are hard links to a few
                            width_px=photo_px,
                            height_px=photo_px,
                        )
                        for i in range(start, stop)
                    ],
                    batch_size=BATCH,
                )
        photo_ids = np.array(Photo.objects.order_by("pk").values_list("pk", flat=True))

        # -- settled tasks: label, posterior (label gets the confidence, the rest shares what is left) --
        campaign = Campaign.objects.create(
            slug=CAMPAIGN_SLUG, name="Export bench", status=Campaign.Status.ACTIVE, candidate_count=3
        )
        truth = rng.choice(K, n_items, p=LABEL_SHARES)
        confidence = rng.uniform(0.5, 0.999, n_items)
        rest = rng.dirichlet(np.ones(K - 1), n_items) * (1 - confidence)[:, None]
        posterior = np.empty((n_items, K))
        others = np.array([[k for k in range(K) if k != t] for t in range(K)])  # labels other than t, in order
        posterior[np.arange(n_items)[:, None], others[truth]] = rest
        posterior[np.arange(n_items), truth] = confidence
        per_task = np.full(n_items, n_answers // n_items)
        per_task[rng.choice(n_items, n_answers - int(per_task.sum()), replace=False)] += 1
        gold = np.sort(rng.choice(n_items, max(n_items // 100, 1), replace=False))
        gold_mask = np.zeros(n_items, bool)
        gold_mask[gold] = True
        task_uuids = _uuids(rng, n_items)
        shuffle = rng.integers(0, 2**31, n_items)
        for start in range(0, n_items, BATCH):
            stop = min(start + BATCH, n_items)
            with transaction.atomic():
                Task.objects.bulk_create(
                    [
                        Task(
                            uuid=task_uuids[i],
                            campaign=campaign,
                            photo_id=int(photo_ids[i]),
                            shuffle_key=int(shuffle[i]),
                            status=Task.Status.COMPLETE,
                            is_gold=bool(gold_mask[i]),
                            label=LABELS[truth[i]],
                            posterior={label: float(p) for label, p in zip(LABELS, posterior[i].tolist(), strict=True)},
                            confidence=float(confidence[i]),
                            answer_count=int(per_task[i]),
                            consensus_version=1,
                            completed_at=SETTLED_AT,
                        )
                        for i in range(start, stop)
                    ],
                    batch_size=BATCH,
                )
        task_ids = np.array(Task.objects.filter(campaign=campaign).order_by("pk").values_list("pk", flat=True))
        GoldLabel.objects.bulk_create(
            [GoldLabel(task_id=int(task_ids[i]), label=LABELS[truth[i]], source="import") for i in gold],
            batch_size=BATCH,
        )
        GoldLabel.objects.filter(task__campaign=campaign).update(created_at=SETTLED_AT - dt.timedelta(days=30))
        Task.objects.filter(campaign=campaign).update(created_at=SETTLED_AT - dt.timedelta(days=60))

        # -- candidates: 3 distinct products per task, scores falling with rank --
        candidates = _distinct_rows(rng, n_items, 3, n_products)  # indexes into product_ids
        scores = -np.sort(-rng.uniform(0.2, 0.95, (n_items, 3)), axis=1)
        sql = "INSERT INTO annotate_taskcandidate (task_id, product_id, rank, score) VALUES (%s, %s, %s, %s)"
        for start in range(0, n_items, BATCH // 3):
            stop = min(start + BATCH // 3, n_items)
            rows = [
                (int(task_ids[i]), int(product_ids[candidates[i, r]]), r + 1, round(float(scores[i, r]), 6))
                for i in range(start, stop)
                for r in range(3)
            ]
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, rows)

        # -- annotators and answers: distinct people per task, most agreeing with the settled label --
        User.objects.bulk_create(
            [User(username=f"export-annotator-{i:05d}") for i in range(n_annotators)], batch_size=BATCH
        )
        user_ids = np.array(
            User.objects.filter(username__startswith="export-annotator-").order_by("pk").values_list("pk", flat=True)
        )
        workload = rng.pareto(3.0, n_annotators) + 1
        workload /= workload.sum()
        width = int(per_task.max())
        people = _distinct_rows(rng, n_items, width, n_annotators, p=workload)
        keep = np.arange(width)[None, :] < per_task[:, None]
        task_of = np.repeat(np.arange(n_items), per_task)
        worker_of = people[keep]  # row-major: task by task, as task_of
        n_rows = len(task_of)
        agrees = rng.random(n_rows) < 0.8
        answer_label = np.where(agrees, truth[task_of], (truth[task_of] + rng.integers(1, K, n_rows)) % K)
        duration = rng.lognormal(np.log(2500), 0.5, n_rows).astype(np.int64)
        too_fast = duration < campaign.min_duration_ms
        # Answers arrive over the 30 days before the tasks settled, in task order.
        offsets_ms = np.sort(rng.integers(0, 30 * 86_400_000, n_rows))[::-1]
        answer_uuids = _uuids(rng, n_rows)
        sql = (
            "INSERT INTO annotate_answer (uuid, task_id, annotator_id, choice, product_id, label, duration_ms, "
            "is_too_fast, idempotency_key, created_at, revoked_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL)"
        )
        for start in range(0, n_rows, BATCH):
            stop = min(start + BATCH, n_rows)
            rows = []
            for i in range(start, stop):
                t = int(task_of[i])
                k = int(answer_label[i])
                digit = k < 3  # labels "1".."3": the candidate of that rank
                rows.append(
                    (
                        db_uuid(answer_uuids[i]),
                        int(task_ids[t]),
                        int(user_ids[worker_of[i]]),
                        "product" if digit else LABELS[k],
                        int(product_ids[candidates[t, k]]) if digit else None,
                        LABELS[k],
                        int(duration[i]),
                        bool(too_fast[i]),
                        f"eb{i}",
                        ops.adapt_datetimefield_value(SETTLED_AT - dt.timedelta(milliseconds=int(offsets_ms[i]))),
                    )
                )
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, rows)

        # -- AnnotatorStats, as a full recompute would leave them (roughly) --
        counts = np.bincount(worker_of, minlength=n_annotators)
        fast = np.bincount(worker_of, weights=too_fast, minlength=n_annotators).astype(int)
        on_gold = gold_mask[task_of]
        gold_answers = np.bincount(worker_of, weights=on_gold, minlength=n_annotators).astype(int)
        gold_right = np.bincount(worker_of, weights=on_gold & agrees, minlength=n_annotators).astype(int)
        agreed = np.bincount(worker_of, weights=agrees, minlength=n_annotators).astype(int)
        by_worker = np.split(duration[np.argsort(worker_of, kind="stable")], np.cumsum(counts)[:-1])
        median_ms = [int(np.median(d)) if len(d) else None for d in by_worker]
        stats = []
        for a in np.flatnonzero(counts):
            stats.append(
                AnnotatorStats(
                    campaign=campaign,
                    annotator_id=int(user_ids[a]),
                    answer_count=int(counts[a]),
                    too_fast_count=int(fast[a]),
                    gold_answer_count=int(gold_answers[a]),
                    gold_correct_count=int(gold_right[a]),
                    agreement_total=int(counts[a]),
                    agreement_count=int(agreed[a]),
                    reliability=round(float(agreed[a] / counts[a]), 6),
                    median_duration_ms=median_ms[a],
                    flags=["too_fast"] if fast[a] > counts[a] * 0.2 else [],
                    computed_at=SETTLED_AT,
                )
            )
        AnnotatorStats.objects.bulk_create(stats, batch_size=BATCH)

        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                for name in ("annotate_answer", "annotate_task", "annotate_taskcandidate", "catalog_photo"):
                    cursor.execute(f"VACUUM ANALYZE {name}")
            else:
                cursor.execute("ANALYZE")
    pool = sorted((Path(settings.MEDIA_ROOT) / "pool").iterdir())
    photo_kb = sum(p.stat().st_size for p in pool) / len(pool) / 1024
    print(
        f"built: {n_items:,} settled tasks ({len(gold):,} gold), {n_items * 3:,} candidates over {n_products:,} "
        f"products, {n_rows:,} answers by {int((counts > 0).sum()):,} annotators, photo files of "
        f"{photo_px} px ({photo_kb:.1f} KB each) in {sw.seconds:.0f} s",
        flush=True,
    )
    return {
        "campaign_id": campaign.pk,
        "items": n_items,
        "gold": len(gold),
        "answers": n_rows,
        "annotators": int((counts > 0).sum()),
        "build_s": sw.seconds,
        "photo_kb": photo_kb,
    }


def snapshot_create(
    *, name: str, formats: list[str], include_answers: bool, include_reliability: bool, embed_images: bool
) -> int:
    """A PENDING ExportSnapshot named `name` (a slug), as export_create makes it but without queueing
    the Celery task (the bench builds it itself). Returns its id."""
    from django.db.models import Max

    from annotate.exports import records
    from annotate.models import ExportSnapshot

    last = ExportSnapshot.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0
    snapshot = ExportSnapshot.objects.create(
        name=name,
        version=last + 1,
        schema_version=records.SCHEMA_VERSION,
        formats=formats,
        filters=records.ExportFilters.parse({}).as_json(),
        include_answers=include_answers,
        include_reliability=include_reliability,
        embed_images=embed_images,
    )
    return snapshot.pk


def _proc_status_kb(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in kB (Linux); {} where there is none."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return {}
    return {k: int(fields[k].split()[0]) for k in keys if k in fields}


class _AnonSampler:
    """Samples the process's anonymous resident memory (RssAnon: heap, arrays; not the page cache of
    memory-mapped files) every `interval_s` in a thread; `peak_mb` is the largest seen."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            anon = _proc_status_kb("RssAnon").get("RssAnon")
            if anon is not None:
                self.peak_mb = max(self.peak_mb, anon / 1024)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def build_child(snapshot_id: int, *, profile: str | None = None) -> None:
    """Entry point of the child process (bench/export.py --child ID, with the parent's environment):
    run export_build on the snapshot, outside any transaction as the Celery worker does, and print one
    JSON line: wall time, status, error, counts, files, and memory:

    - peak_rss_mb: VmHWM, the peak resident set of this process's own address space, memory-mapped
      file pages included. Not ru_maxrss: on Linux that also keeps the high-water mark of the
      address space replaced by exec, i.e. the RSS of the parent (the builder) at fork time.
    - peak_anon_mb: the largest RssAnon sampled every 20 ms (heap and arrays, without file pages).
    - base_rss_mb: VmHWM before the build (Django, pyarrow loaded).

    With `profile` (a file path), runs the build under cProfile, dumps the stats there and adds the
    top functions by own time to the JSON line."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    django_ready(migrate=False)
    from annotate.exports.services import export_build

    base_mb = peak_rss_mb()
    profiler = cProfile.Profile() if profile else None
    with _AnonSampler() as anon, Stopwatch() as sw:
        if profiler:
            profiler.enable()
        snapshot = export_build(snapshot_id=snapshot_id)
        if profiler:
            profiler.disable()
    result = {
        "snapshot_id": snapshot_id,
        "wall_s": sw.seconds,
        "base_rss_mb": base_mb,
        "peak_rss_mb": peak_rss_mb(),
        "peak_anon_mb": anon.peak_mb,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "status": snapshot.status if snapshot else "skipped",
        "error": snapshot.error if snapshot else "",
        "item_count": snapshot.item_count if snapshot else 0,
        "answer_count": snapshot.answer_count if snapshot else 0,
        "annotator_count": snapshot.annotator_count if snapshot else 0,
        "size_bytes": snapshot.size_bytes if snapshot else 0,
        "files": snapshot.files if snapshot else [],
    }
    if profiler:
        profiler.dump_stats(profile)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        result["profile_top"] = text.getvalue()
    print(json.dumps(result), flush=True)
