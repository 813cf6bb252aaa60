"""How fast, and in how much memory, does a gold-dataset export build at full size?

Builds a match campaign of --items settled items (default 200,000: a photo, 3 candidate products
from one retailer's --products, a label with its posterior; 1% gold) and --answers live answers
(default 1,000,000, by distinct annotators per item out of --annotators) in a throwaway database
(bench/_export_db.py), then builds one export snapshot per format with
`annotate.exports.services.export_build`, each in a fresh child process outside any transaction, as
the Celery worker runs it, so that the peak resident memory is the build's own (VmHWM, not
ru_maxrss, which on Linux carries the parent's RSS over fork and exec):

- every format of --formats alone (jsonl, csv, parquet, hf, crowdkit, label_studio);
- jsonl and parquet again with include_answers and include_reliability (the answers and annotators
  side tables): runs "jsonl+answers" and "parquet+answers" (--with-answers);
- hf again with embed_images (run "hf+images"; --no-images-run skips it);
- the runs of --repeat a second time, to check that a rebuild gives byte-identical files.

The photos are files under MEDIA_ROOT (--photo-px noise JPEGs, hard links to a pool of 32, so reads
come from the page cache): the hf format reads them (datasets' save_to_disk embeds local image
files, and sizes the first 1,000 of them), the other formats only name them.

Prints per run: status (an error in full below the table), wall time of export_build, items and
items/s, answers read and answers/s (formats that read answers), the child's peak RSS (VmHWM, pages
of memory-mapped files included), its peak anonymous memory (RssAnon sampled every 20 ms) and its
RSS before the build (Django, pyarrow loaded), output size, and a digest of the run's files (sha256
over the sorted "path sha256" lines of snapshot.files, first 12 hex digits). Then the reproducibility
check and a one-line verdict against the goal: every run under 60 s and under 500 MB peak RSS.

--profile runs every build under cProfile (slower: the figures are not the goal's), prints the top
functions by own time and keeps the stats as var/bench/export/profile-<run>.pstats.

Run (full size on a 2-core VM: about 10 minutes on SQLite, 2 of them building; 13 on PostgreSQL):

    .venv/bin/python bench/export.py
    .venv/bin/python bench/export.py --items 5000 --answers 25000          # a quick check, ~1 minute
    .venv/bin/python bench/export.py --formats jsonl,hf --with-answers "" --profile
    bin/services start
    .venv/bin/python bench/export.py --database-url postgres://fitcheck@127.0.0.1:55432/fitcheck_bench

State lives in var/bench/export/ (wiped at start: SQLite file, exports/) or in the --database-url
database (dropped and recreated; its name must contain "bench").
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (bench/ is not a package)

NAME = "export"
FORMATS = ("jsonl", "csv", "parquet", "hf", "crowdkit", "label_studio")
ANSWERS_SUFFIX = "+answers"  # a run with include_answers and include_reliability
IMAGES_RUN = "hf+images"  # the hf format with embed_images
GOAL_S = 60.0
GOAL_MB = 500.0


def _run_options(label: str) -> dict:
    """The snapshot options of a run label: "csv", "jsonl+answers", "hf+images"."""
    fmt, _, variant = label.partition("+")
    return {
        "formats": [fmt],
        "include_answers": variant == "answers",
        "include_reliability": variant == "answers",
        "embed_images": variant == "images",
    }


def _format_list(*, allow_empty: bool, runs: bool = False):
    """An argparse type: "jsonl,csv" → ["jsonl", "csv"], each a known format (or, with `runs`, a
    run label: a format, a format+answers, or hf+images), each once."""
    known = list(FORMATS) + ([f + ANSWERS_SUFFIX for f in FORMATS] + [IMAGES_RUN] if runs else [])

    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        bad = [v for v in values if v not in known]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; known: {', '.join(known)}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError("each once")
        if not values and not allow_empty:
            raise argparse.ArgumentTypeError("at least one format")
        return values

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build a database of settled items and answers, then time every export format in a child "
        "process: rows/s, peak memory, output size, reproducibility. Uses a throwaway database.",
    )
    parser.add_argument("--items", type=int, default=200_000, help="settled items (tasks) (default: %(default)s)")
    parser.add_argument("--answers", type=int, default=1_000_000, help="live answers (default: %(default)s)")
    parser.add_argument("--annotators", type=int, default=2_000, help="annotators (default: %(default)s)")
    parser.add_argument("--products", type=int, default=3_000, help="catalog products (default: %(default)s)")
    parser.add_argument(
        "--photo-px",
        type=int,
        default=96,
        help="side of the photo files, noise JPEGs; the hf format embeds their bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--formats",
        type=_format_list(allow_empty=False),
        default=list(FORMATS),
        metavar="F[,F...]",
        help=f"formats, each built alone (default: {','.join(FORMATS)})",
    )
    parser.add_argument(
        "--with-answers",
        type=_format_list(allow_empty=True),
        default=["jsonl", "parquet"],
        metavar="F[,F...]",
        help="formats built once more with include_answers and include_reliability; '' for none "
        "(default: jsonl,parquet)",
    )
    parser.add_argument(
        "--repeat",
        type=_format_list(allow_empty=True, runs=True),
        default=["hf"],
        metavar="RUN[,RUN...]",
        help="runs built a second time to compare their files' sha256 (a format, a format+answers or "
        "hf+images); '' for none (default: hf)",
    )
    parser.add_argument(
        "--images-run",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when hf is among --formats, build it once more with embed_images (run hf+images) (default: on)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL (dropped and recreated; name must contain 'bench'); default SQLite",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the data (default: %(default)s)")
    parser.add_argument("--profile", action="store_true", help="run each build under cProfile; print its hotspots")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # internal: a snapshot id
    parser.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)  # internal: the child's stats file
    args = parser.parse_args(argv)
    if args.child is None:
        if args.items < 1 or args.answers < 0 or args.annotators < 1 or args.products < 3 or args.photo_px < 1:
            parser.error("need --items >= 1, --answers >= 0, --annotators >= 1, --products >= 3, --photo-px >= 1")
        if args.answers > args.items * args.annotators:
            parser.error("--answers exceeds --items x --annotators (answers per item are by distinct people)")
        missing = [r for r in args.repeat if r not in _runs(args)]
        if missing:
            parser.error(f"--repeat {','.join(missing)}: not among the runs ({', '.join(_runs(args))})")
    return args


def _runs(args) -> list[str]:
    """The run labels, in build order, without the repeats."""
    runs = list(args.formats) + [f + ANSWERS_SUFFIX for f in args.with_answers]
    return runs + ([IMAGES_RUN] if args.images_run and "hf" in args.formats else [])


def _digest(files: list[dict]) -> str:
    """First 12 hex digits of the sha256 over a snapshot's sorted "path sha256" lines."""
    text = "".join(f"{f['path']} {f['sha256']}\n" for f in sorted(files, key=lambda f: f["path"]))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _run_child(env: dict, snapshot_id: int, profile_out: Path | None) -> tuple[dict, float]:
    """Build `snapshot_id` in a fresh child process. Returns (its JSON result, its wall time including
    Django start-up)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(snapshot_id)]
    if profile_out:
        command += ["--profile-out", str(profile_out)]
    started = time.perf_counter()
    child = subprocess.run(
        command, env=env | {"PYTHONUNBUFFERED": "1"}, cwd=_common.ROOT, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        # A crash outside export_build's own error handling (killed, out of memory, a bad import): one
        # row of the table, the output tail printed here.
        print(child.stdout[-3000:], child.stderr[-3000:], sep="\n")
        last = (child.stderr.strip().splitlines() or [""])[-1]
        return {
            "snapshot_id": snapshot_id,
            "wall_s": wall,
            "base_rss_mb": 0.0,
            "peak_rss_mb": 0.0,
            "peak_anon_mb": 0.0,
            "status": f"crashed ({child.returncode})",
            "error": last,
            "item_count": 0,
            "answer_count": 0,
            "annotator_count": 0,
            "size_bytes": 0,
            "files": [],
        }, wall
    return json.loads(lines[-1]), wall


def _row(label: str, r: dict, child_wall: float) -> list:
    items_per_s = r["item_count"] / r["wall_s"] if r["wall_s"] else 0
    answers = r["answer_count"]
    return [
        label,
        r["status"],
        f"{r['wall_s']:.1f}",
        f"{child_wall:.1f}",
        f"{r['item_count']:,}",
        f"{items_per_s:,.0f}",
        f"{answers:,}" if answers else "-",
        f"{answers / r['wall_s']:,.0f}" if answers and r["wall_s"] else "-",
        f"{r['peak_rss_mb']:.0f}",
        f"{r['peak_anon_mb']:.0f}",
        f"{r['base_rss_mb']:.0f}",
        f"{r['size_bytes'] / 1e6:.1f}",
        len(r["files"]),
        _digest(r["files"]) if r["files"] else "-",
    ]


def report(args) -> int:
    """Build the database, then every run in a child process; print the tables and the verdict.
    Returns 0 (the bench never fails on a missed goal; it says so)."""
    env = _common.bench_environment(NAME, database_url=args.database_url)
    vendor = _common.django_ready()
    from importlib.metadata import version

    print(
        f"export: {args.items:,} items, {args.answers:,} answers, {args.annotators:,} annotators, "
        f"{args.products:,} products, seed {args.seed}; {_common.database_label(args.database_url)}; "
        f"pyarrow {version('pyarrow')}, datasets {version('datasets')}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    import _export_db

    built = _export_db.build(
        n_items=args.items,
        n_answers=args.answers,
        n_annotators=args.annotators,
        n_products=args.products,
        photo_px=args.photo_px,
        seed=args.seed,
    )
    from django.db import connections

    rows, results, seen, built_runs = [], {}, {}, []  # results: label -> [result]; built_runs: (shown, result)
    for label in _runs(args) + args.repeat:
        attempt = seen[label] = seen.get(label, 0) + 1
        shown = label if attempt == 1 else f"{label} (again)"
        snapshot_id = _export_db.snapshot_create(
            name="bench-" + label.replace("+", "-").replace("_", "-"), **_run_options(label)
        )
        connections.close_all()  # the child reads alone; no connection of ours holds a SQLite snapshot
        profile_out = _common.BENCH_VAR / NAME / f"profile-{label}-{attempt}.pstats" if args.profile else None
        result, child_wall = _run_child(env, snapshot_id, profile_out)
        results.setdefault(label, []).append(result)
        built_runs.append((shown, result))
        rows.append(_row(shown, result, child_wall))
        print(
            f"  {shown}: {result['status']} in {result['wall_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        if args.profile:
            print(f"\n-- cProfile of {shown}, top functions by own time ({profile_out}) --")
            print(result.get("profile_top", "").strip()[:6000], "\n", flush=True)

    print(
        f"\n== export builds ({_common.database_label(args.database_url)}; {built['items']:,} items, "
        f"{built['answers']:,} answers, photo files {built['photo_kb']:.1f} KB; database built in "
        f"{built['build_s']:.0f} s) =="
    )
    headers = [
        "run",
        "status",
        "build s",
        "child s",
        "items",
        "items/s",
        "answers",
        "answers/s",
        "peak RSS MB",
        "peak anon MB",
        "base RSS MB",
        "output MB",
        "files",
        "digest",
    ]
    print(_common.table(headers, rows))
    print(
        "(build s: export_build alone; child s: the child process incl. Django start-up; answers: answer rows "
        "read, for formats that read them; peak RSS: VmHWM of the child, memory-mapped file pages included; "
        "peak anon: its largest RssAnon, sampled every 20 ms; base RSS: the child before the build; digest: "
        "sha256 of the files' sha256s" + ("; timings under cProfile" if args.profile else "") + ")"
    )
    failed = [(shown, r["error"]) for shown, r in built_runs if r["status"] != "done"]
    for label, error in failed:
        print(f"FAILED {label}: {error}")

    if args.repeat:
        print("\n== reproducibility: the same snapshot options built twice ==")
        repro = []
        for label in args.repeat:
            first, second = results[label][0], results[label][-1]
            a = {f["path"]: f["sha256"] for f in first["files"]}
            b = {f["path"]: f["sha256"] for f in second["files"]}
            differing = sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
            repro.append(
                [
                    label,
                    len(a),
                    _digest(first["files"]) if a else "-",
                    _digest(second["files"]) if b else "-",
                    "yes" if a and not differing else "NO",
                    ", ".join(differing) or "-",
                ]
            )
        print(_common.table(["run", "files", "first", "second", "identical", "differing files"], repro))

    slow = [f"{shown} {r['wall_s']:.0f} s" for shown, r in built_runs if r["wall_s"] >= GOAL_S]
    heavy = [
        f"{shown} {r['peak_rss_mb']:.0f} MB (anon {r['peak_anon_mb']:.0f})"
        for shown, r in built_runs
        if r["peak_rss_mb"] >= GOAL_MB
    ]
    problems = [f"failed: {', '.join(shown for shown, _ in failed)}"] if failed else []
    problems += [f"over {GOAL_S:.0f} s: {', '.join(slow)}"] if slow else []
    problems += [f"over {GOAL_MB:.0f} MB peak RSS: {', '.join(heavy)}"] if heavy else []
    verdict = "MET" if not problems else "NOT MET (" + "; ".join(problems) + ")"
    print(
        f"\nverdict ({vendor}): goal every format under {GOAL_S:.0f} s and {GOAL_MB:.0f} MB peak RSS at "
        f"{built['items']:,} items / {built['answers']:,} answers: {verdict}; "
        f"load average now {os.getloadavg()[0]:.2f}"
    )
    os.environ.pop("DATABASE_URL", None)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        from _export_db import build_child

        build_child(args.child, profile=args.profile_out)
        return 0
    started = time.perf_counter()
    code = report(args)
    print(f"total {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except _common.BenchError as exc:
        print(f"export: {exc}", file=sys.stderr)
        sys.exit(2)
