"""How accurate is our consensus (annotate.consensus.em) against Crowd-Kit, and how many answers does
dynamic overlap save over a fixed number of answers per task?

Simulated crowds (bench/_crowd.py: five regimes, from reliable staff to a sparse crowd) answer the
category question of real Fashion-MNIST training images, whose labels are the truth. Per seed, the
crowds are drawn afresh and 100 items (--gold) are picked at random as gold tasks; the answer stream
mixes answers on gold items in as the router does (each annotator's first answers, then a share).
Accuracy is always measured on non-gold items that got at least one answer (all of them, unless the
crowd runs out of people).

Part "accuracy": every non-gold item gets a fixed 3 answers (three rounds over all items). On exactly
the same answers, compares
- ours: `dawid_skene(answers, gold=...)`, the product's default; ours without gold; ours one-coin
  (with gold); our weighted majority vote;
- Crowd-Kit 1.4.2 (crowdkit.aggregation): MajorityVote, Wawa, DawidSkene(n_iter=100),
  OneCoinDawidSkene(n_iter=100), GLAD and MACE, which see the answers on gold items but not the gold
  labels.
Prints per regime the mean accuracy over seeds per method with its range, the wall time of one
aggregation (the call alone, data already in the method's input format), and the paired difference
ours - best Crowd-Kit method with a rough 95% interval over seeds; then whether our goal (ours >= the
best Crowd-Kit method) is met.

Part "overlap": the answers per item needed for 98% accuracy (--target-accuracy), with
- fixed overlap: k = 1..7 answers per item (rounds over all items), ours with gold after each round;
- dynamic overlap, the product's rule: a task stops collecting answers once (answer_count >=
  overlap_min and confidence >= target) or answer_count >= overlap_max. Simulated in rounds: round 1
  gives every item overlap_min answers (the same answers as fixed overlap's first rounds); then
  `dawid_skene(..., gold=...)` runs over all answers so far and every task not settled by the rule
  gets one more answer, until all are settled or people run out. Targets 0.8 .. 0.999 are swept.
Besides answers and accuracy, the sweep shows the accuracy of tasks whose final confidence reached the
target (calibrated posteriors give at least the target), the share of tasks stopped at overlap_max
below the target ("capped") and the share left unsettled because people ran out.
Answers per item count answers on non-gold items only (gold answers are printed apart). Both curves,
averaged over seeds, are interpolated linearly between the two points that bracket the target
accuracy; the saving is 1 - dynamic / fixed (goal: >= 30% fewer answers).

Part "recompute" (bench/_consensus_db.py): builds a campaign of --recompute-answers answers (default
1,000,000) over --recompute-tasks tasks (300,000) by --recompute-annotators people (2,000) in a fresh
SQLite file (or --database-url PostgreSQL), then times `consensus_recompute` twice in a child
process: load, EM and write, with the child's peak resident memory. Goal: under 60 s.

Part "engine" (bench/_consensus_engine.py): the engine alone on 1,000,000 answers and on 50 labels ×
2,000 annotators, beside the engine before issue 15 and Crowd-Kit's DawidSkene, in one process.

Run (about 10 minutes for the default parts on an idle 2-core CPU: 6.5 for part accuracy, nearly all of it
Crowd-Kit's GLAD and MACE, 3 for part overlap; about 5 minutes with --skip-slow):

    .venv/bin/python bench/consensus.py
    .venv/bin/python bench/consensus.py --items 1500 --seeds 2 --skip-slow       # about 2.5 minutes
    .venv/bin/python bench/consensus.py --parts overlap --overlap-max 7
    .venv/bin/python bench/consensus.py --jobs 1                  # timings without a second process
    .venv/bin/python bench/consensus.py --parts recompute         # about 5 minutes, most of it building
    .venv/bin/python bench/consensus.py --parts recompute \
        --database-url postgres://fitcheck@127.0.0.1:55432/fitcheck_bench

Work is spread over --jobs processes, one (regime, seed) at a time each; figures do not depend on
--jobs, only wall times do. No database is used.
"""

import argparse
import copy
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (bench/ is not a package)

if str(_common.ROOT) not in sys.path:
    sys.path.insert(0, str(_common.ROOT))

import numpy as np  # noqa: E402
from _crowd import N_CLASSES, AnswerStream, Crowd, regimes  # noqa: E402

from annotate.consensus.em import AnswerArrays, Consensus, dawid_skene, majority_vote  # noqa: E402

# Every part --parts knows, each a `<part>_report(args)`.
PARTS = ("accuracy", "overlap", "calibration", "recompute", "engine")
DEFAULT_PARTS = "accuracy,overlap,calibration,recompute,engine"
REGIME_COUNT = 5
# Part "accuracy": answers per non-gold item.
FIXED_ANSWERS = 3
# Part "overlap".
DYNAMIC_TARGETS = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
PRODUCT_TARGET = 0.95  # the campaign default of the confidence target
FIXED_OVERLAPS = tuple(range(1, 8))
SAVING_GOAL = 0.30

OURS = "ours: Dawid-Skene + gold"
SLOW_METHODS = ("GLAD", "MACE")


# -- arguments -------------------------------------------------------------------------------------


def _parts(text: str) -> list[str]:
    """An argparse type: "accuracy,overlap" → ["accuracy", "overlap"], each a known part, at least one."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"parts are a comma list of {', '.join(PARTS)}; got {text!r}")
    return parts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Consensus accuracy of ours vs Crowd-Kit, and answers saved by dynamic overlap, on simulated "
        "crowds answering real Fashion-MNIST labels.",
    )
    parser.add_argument(
        "--parts",
        type=_parts,
        default=DEFAULT_PARTS,
        metavar="PART[,PART...]",
        help=f"which parts to run, in the order given: {', '.join(PARTS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--items",
        type=int,
        default=6000,
        help="the first N Fashion-MNIST training items are the tasks (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds 0..N-1; each draws the crowds, gold items and answers (default: %(default)s)",
    )
    parser.add_argument("--gold", type=int, default=100, help="gold items per seed (default: %(default)s)")
    parser.add_argument("--skip-slow", action="store_true", help="leave out Crowd-Kit's GLAD and MACE")
    parser.add_argument(
        "--overlap-min",
        type=int,
        default=1,
        help="dynamic overlap: answers every task gets before it may stop (default: %(default)s)",
    )
    parser.add_argument(
        "--overlap-max",
        type=int,
        default=5,
        help="dynamic overlap: answers after which a task stops anyway (default: %(default)s)",
    )
    parser.add_argument(
        "--target-accuracy",
        type=float,
        default=0.98,
        help="label accuracy at which answers per item are compared (default: %(default)s)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes, one (regime, seed) each at a time (default: %(default)s)",
    )
    parser.add_argument(
        "--replay-answers",
        type=float,
        default=3.0,
        help="calibration part: the answer budget per non-gold item, gold answers included (default: %(default)s)",
    )
    parser.add_argument(
        "--replay-recompute",
        type=int,
        default=500,
        help="calibration part: a full recompute after every N answers (default: %(default)s)",
    )
    parser.add_argument("--dataset-dir", default=None, help="Fashion-MNIST directory (default: the loader's search)")
    parser.add_argument("--recompute-tasks", type=int, default=300_000, help="recompute part (default: %(default)s)")
    parser.add_argument(
        "--recompute-answers", type=int, default=1_000_000, help="recompute part (default: %(default)s)"
    )
    parser.add_argument("--recompute-annotators", type=int, default=2_000, help="recompute part (default: %(default)s)")
    parser.add_argument(
        "--engine-wide-tasks",
        type=int,
        default=40_000,
        help="engine part: tasks of the 50-label crowd (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="recompute and engine parts: data seed (default: %(default)s)"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="recompute part: run on this PostgreSQL database (dropped and recreated; its name must contain 'bench')",
    )
    parser.add_argument("--recompute-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    if not 0 <= args.gold < args.items <= 60_000:
        parser.error("need 0 <= --gold < --items <= 60000")
    if not 1 <= args.overlap_min <= min(args.overlap_max, FIXED_OVERLAPS[-1]):
        parser.error(f"need 1 <= --overlap-min <= --overlap-max and --overlap-min <= {FIXED_OVERLAPS[-1]}")
    if not 0 < args.target_accuracy < 1:
        parser.error("--target-accuracy must lie in (0, 1)")
    return args


# -- simulation ------------------------------------------------------------------------------------


@dataclass
class Setting:
    """One regime under one seed.

    Attributes:
        crowd: the simulated annotators.
        truth: (T,) int64, the Fashion-MNIST label of each item.
        gold: {item index: true class} of the gold items.
        is_gold: (T,) bool.
        items: (T - G,) int64, the non-gold item indices, ascending.
        seed, regime: what it was built from (regime: index into `_crowd.regimes`).
    """

    crowd: Crowd
    truth: np.ndarray
    gold: dict[int, int]
    is_gold: np.ndarray
    items: np.ndarray
    seed: int
    regime: int


def setting_build(truth: np.ndarray, *, regime: int, seed: int, gold_count: int) -> Setting:
    """The crowd of `regime` and the gold items for `seed`; deterministic in (regime, seed).

    Every regime of a seed shares the gold items; the crowds are `_crowd.regimes` drawn from the seed.
    """
    crowd = regimes(np.random.default_rng([seed, 0]), len(truth))[regime]
    gold_items = np.random.default_rng([seed, 1]).choice(len(truth), gold_count, replace=False)
    is_gold = np.zeros(len(truth), dtype=bool)
    is_gold[gold_items] = True
    gold = {int(i): int(truth[i]) for i in np.sort(gold_items)}
    return Setting(crowd, truth, gold, is_gold, np.flatnonzero(~is_gold), seed, regime)


def stream_start(setting: Setting) -> AnswerStream:
    """A fresh answer stream; every part starts from the same one, so their first rounds coincide."""
    rng = np.random.default_rng([setting.seed, 2, setting.regime])
    return AnswerStream(setting.crowd, setting.truth, rng, gold_items=np.flatnonzero(setting.is_gold))


def answer_round(stream: AnswerStream, items: np.ndarray) -> int:
    """One more answer for each of `items` (int64 indices), asked in a random order so that, when people
    run out, the items left without are random ones. Returns the number of answers given to `items`
    (gold answers the stream mixes in are not counted)."""
    return stream.ask(stream.rng.permutation(items))


def answer_arrays(stream: AnswerStream, setting: Setting) -> AnswerArrays:
    """Everything `stream` has handed out so far, as AnswerArrays (N answers, weights 1)."""
    task, worker, label = stream.arrays()
    return AnswerArrays.build(
        task, worker, label, n_tasks=len(setting.truth), n_workers=setting.crowd.n_workers, n_classes=N_CLASSES
    )


def answer_tally(stream: AnswerStream, setting: Setting) -> dict:
    """Counts of what `stream` handed out.

    Returns:
        {"answers": all answers, "gold_answers": answers on gold items, "answers_per_item": answers on
        non-gold items / non-gold items, "gold_per_item": gold answers / non-gold items (the cost of gold
        per item labelled), "answered": (T - G,) bool, the non-gold items with at least one answer}.
    """
    task = np.asarray(stream.tasks, dtype=np.int64)
    on_gold = int(setting.is_gold[task].sum())
    n_items = len(setting.items)
    return {
        "answers": len(task),
        "gold_answers": on_gold,
        "answers_per_item": (len(task) - on_gold) / n_items,
        "gold_per_item": on_gold / n_items,
        "answered": np.bincount(task, minlength=len(setting.truth))[setting.items] > 0,
    }


def accuracy_of(labels: np.ndarray, setting: Setting, answered: np.ndarray) -> float:
    """Share of the answered non-gold items whose label is right.

    Args:
        labels: (T,) int64 class per item (-1 where a method gave none).
        answered: (T - G,) bool over `setting.items`.
    """
    items = setting.items[answered]
    return float((labels[items] == setting.truth[items]).mean()) if len(items) else float("nan")


# -- part "accuracy" -------------------------------------------------------------------------------


def _our_methods(gold: dict[int, int]) -> list[tuple[str, Callable]]:
    """(name, AnswerArrays → (T,) int64 labels) for our aggregators."""
    return [
        (OURS, lambda a: dawid_skene(a, gold=gold).label),
        ("ours: Dawid-Skene, no gold", lambda a: dawid_skene(a).label),
        ("ours: one-coin + gold", lambda a: dawid_skene(a, gold=gold, one_coin=True).label),
        ("ours: weighted majority vote", lambda a: majority_vote(a, gold=gold).label),
    ]


def _crowdkit_methods(*, skip_slow: bool) -> list[tuple[str, Callable]]:
    """(name, () → a fresh Crowd-Kit aggregator) in report order."""
    from crowdkit.aggregation import GLAD, MACE, DawidSkene, MajorityVote, OneCoinDawidSkene, Wawa

    methods = [
        ("MajorityVote", MajorityVote),
        ("Wawa", Wawa),
        ("DawidSkene", lambda: DawidSkene(n_iter=100)),
        ("OneCoinDawidSkene", lambda: OneCoinDawidSkene(n_iter=100)),
        ("GLAD", GLAD),
        ("MACE", MACE),
    ]
    return [(name, make) for name, make in methods if not (skip_slow and name in SLOW_METHODS)]


def accuracy_job(job: tuple) -> dict:
    """Part "accuracy" for one (regime, seed): FIXED_ANSWERS answers per non-gold item, every method.

    Args:
        job: (truth (T,) int64, regime, seed, gold_count, skip_slow).

    Returns:
        {"regime", "seed", "name", "description", tally fields (see `answer_tally`), "evaluated": items
        scored, "accuracy": {method: float}, "seconds": {method: wall s of one aggregation}}.
    """
    import pandas as pd

    truth, regime, seed, gold_count, skip_slow = job
    setting = setting_build(truth, regime=regime, seed=seed, gold_count=gold_count)
    stream = stream_start(setting)
    for _ in range(FIXED_ANSWERS):
        answer_round(stream, setting.items)
    answers = answer_arrays(stream, setting)
    tally = answer_tally(stream, setting)
    answered = tally.pop("answered")
    accuracy, seconds = {}, {}
    for name, aggregate in _our_methods(setting.gold):
        with _common.Stopwatch() as sw:
            labels = aggregate(answers)
        accuracy[name], seconds[name] = accuracy_of(labels, setting, answered), sw.seconds
    fit = dawid_skene(answers, gold=setting.gold)
    fit_summary = (fit.n_iter, fit.trace.converged, fit.trace.final_change, fit.trace.objective[-1])
    frame = pd.DataFrame({"worker": answers.worker, "task": answers.task, "label": answers.label})
    for name, make in _crowdkit_methods(skip_slow=skip_slow):
        with _common.Stopwatch() as sw:
            predicted = make().fit_predict(frame)  # Series: task → label, answered tasks only
        labels = np.full(len(truth), -1, dtype=np.int64)
        labels[predicted.index.to_numpy(dtype=np.int64)] = predicted.to_numpy(dtype=np.int64)
        accuracy[name], seconds[name] = accuracy_of(labels, setting, answered), sw.seconds
    return {
        "regime": regime,
        "seed": seed,
        "name": setting.crowd.name,
        "description": setting.crowd.description,
        **tally,
        "evaluated": int(answered.sum()),
        "accuracy": accuracy,
        "seconds": seconds,
        "fit": fit_summary,
    }


def mean_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): mean ± 1.96 * sd / sqrt(n) over the values (sd with n - 1); a rough normal
    95% interval, nan bounds for fewer than two values."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, float("nan"), float("nan")
    half = 1.96 * float(data.std(ddof=1)) / np.sqrt(len(data))
    return mean, mean - half, mean + half


def goal_verdict(mean: float, low: float, high: float) -> tuple[str, str]:
    """Whether ours >= the best Crowd-Kit method, from the paired difference ours - best and its interval.

    Returns:
        (short verdict for the summary table, the sentence for the regime's report).
    """
    met = "goal met" if mean >= 0 else "goal not met"
    if np.isnan(low):
        return met, f"{met} (one seed: no interval)"
    if low > 0:
        return met, f"{met}: ours is better beyond the noise"
    if high < 0:
        return met, f"{met}: ours is worse beyond the noise"
    return f"{met} (tie)", f"{met} on the mean, but a tie within noise (the interval holds 0)"


def _signed(x: float, digits: int = 4) -> str:
    return "n/a" if np.isnan(x) else f"{x:+.{digits}f}"


def accuracy_regime_report(results: list[dict]) -> tuple[str, dict]:
    """The table of one regime (results of `accuracy_job`, one per seed). Returns (text, summary row)."""
    methods = list(results[0]["accuracy"])
    crowdkit = [m for m in methods if not m.startswith("ours")]
    first = results[0]
    n_seeds = len(results)
    lines = [
        f"== {first['name']}: {first['description']} ==",
        f"per seed (mean): {np.mean([r['answers'] for r in results]):,.0f} answers; "
        f"{np.mean([r['answers_per_item'] for r in results]):.2f} per non-gold item, "
        f"{np.mean([r['gold_answers'] for r in results]):,.0f} on gold items; "
        f"{np.mean([r['evaluated'] for r in results]):,.0f} non-gold items with an answer scored",
    ]
    rows = []
    for m in methods:
        acc = [r["accuracy"][m] for r in results]
        seconds = np.mean([r["seconds"][m] for r in results])
        rows.append([m, f"{np.mean(acc):.4f}", f"{min(acc):.4f}", f"{max(acc):.4f}", f"{seconds:.2f}"])
    lines.append(_common.table(["method", "accuracy", "min", "max", "wall s"], rows))
    best = max(crowdkit, key=lambda m: np.mean([r["accuracy"][m] for r in results]))
    mean, low, high = mean_interval([r["accuracy"][OURS] - r["accuracy"][best] for r in results])
    lines.append(
        f"ours - best Crowd-Kit ({best}), paired over {n_seeds} seed(s): {_signed(mean)} "
        f"(95% interval {_signed(low)} .. {_signed(high)}; rough with so few seeds)"
    )
    short, sentence = goal_verdict(mean, low, high)
    lines.append(f"ours >= best Crowd-Kit: {sentence}")
    fits = [r["fit"] for r in results]
    lines.append(
        f"ours' fit: iterations {', '.join(str(f[0]) for f in fits)}; converged {sum(f[1] for f in fits)}/{len(fits)}; "
        f"last objective change {', '.join(f'{f[2]:.2g}' for f in fits)} nats "
        f"(objective {', '.join(f'{f[3]:.6g}' for f in fits)})"
    )
    summary = {
        "regime": first["name"],
        "ours": np.mean([r["accuracy"][OURS] for r in results]),
        "best": best,
        "best_accuracy": np.mean([r["accuracy"][best] for r in results]),
        "difference": (mean, low, high),
        "verdict": short,
    }
    return "\n".join(lines), summary


def accuracy_report(args: argparse.Namespace) -> None:
    """Part "accuracy": prints one table per regime and a summary."""
    truth = labels_load(args)
    print(f"## Part accuracy: {FIXED_ANSWERS} answers per non-gold item, ours vs Crowd-Kit\n", flush=True)
    jobs = [
        (truth, regime, seed, args.gold, args.skip_slow) for regime in range(REGIME_COUNT) for seed in range(args.seeds)
    ]
    with _common.Stopwatch() as sw:
        results = run_jobs(accuracy_job, jobs, n_jobs=args.jobs)
    summaries = []
    for regime in range(REGIME_COUNT):
        text, summary = accuracy_regime_report([r for r in results if r["regime"] == regime])
        summaries.append(summary)
        print(text, end="\n\n")
    rows = [
        [
            s["regime"],
            f"{s['ours']:.4f}",
            s["best"],
            f"{s['best_accuracy']:.4f}",
            f"{_signed(s['difference'][0])} ({_signed(s['difference'][1])} .. {_signed(s['difference'][2])})",
            s["verdict"],
        ]
        for s in summaries
    ]
    print(
        _common.table(
            ["regime", "ours", "best Crowd-Kit", "its accuracy", "ours - best (95% interval)", "ours >= best"],
            rows,
            align="<><>><",
        )
    )
    print(
        f"wall s: one aggregation call, mean over seeds, while {args.jobs} process(es) ran such jobs at once"
        f"\npart accuracy: {sw.seconds:.0f} s\n",
        flush=True,
    )


# -- part "overlap" --------------------------------------------------------------------------------


def settled(answer_count: np.ndarray, confidence: np.ndarray, *, target: float, overlap_min: int, overlap_max: int):
    """The product's stopping rule: (answer_count >= overlap_min and confidence >= target) or
    answer_count >= overlap_max. Arrays are (n,) per task; returns (n,) bool."""
    return ((answer_count >= overlap_min) & (confidence >= target)) | (answer_count >= overlap_max)


def _point(stream: AnswerStream, setting: Setting, labels: np.ndarray) -> dict:
    """`answer_tally` of `stream` with, instead of the per-item mask, "accuracy" of `labels` ((T,) int64)
    and "coverage", the share of non-gold items with at least one answer."""
    tally = answer_tally(stream, setting)
    answered = tally.pop("answered")
    tally["accuracy"] = accuracy_of(labels, setting, answered)
    tally["coverage"] = float(answered.mean())
    return tally


def dynamic_run(stream: AnswerStream, consensus: Consensus, setting: Setting, *, target: float, args) -> dict:
    """Dynamic overlap from the first rounds' state: recompute consensus, give one more answer to each
    unsettled task, until every task is settled or people run out.

    Args:
        stream: the stream after overlap_min rounds over all items (mutated).
        consensus: `dawid_skene(..., gold=...)` over the stream's answers.
        target: the confidence target, in [0, 1].

    Returns:
        `_point` fields plus, as shares of non-gold items, "open": left unsettled when people ran out;
        "capped": stopped at overlap_max below the target; and "confident_accuracy": the accuracy of the
        answered tasks whose final confidence reached the target (at least the target if the posteriors
        are calibrated; nan if there are none).
    """
    while True:
        count = np.bincount(np.asarray(stream.tasks, dtype=np.int64), minlength=len(setting.truth))[setting.items]
        done = settled(
            count,
            consensus.confidence[setting.items],
            target=target,
            overlap_min=args.overlap_min,
            overlap_max=args.overlap_max,
        )
        if done.all() or answer_round(stream, setting.items[~done]) == 0:
            break
        consensus = dawid_skene(answer_arrays(stream, setting), gold=setting.gold)
    point = _point(stream, setting, consensus.label)
    confident = consensus.confidence[setting.items] >= target
    point["open"] = float(1 - done.mean())
    point["capped"] = float(((count >= args.overlap_max) & ~confident).mean())
    point["confident_accuracy"] = accuracy_of(consensus.label, setting, confident & (count > 0))
    return point


def overlap_job(job: tuple) -> dict:
    """Part "overlap" for one (regime, seed).

    Args:
        job: (truth (T,) int64, regime, seed, gold_count, args).

    Returns:
        {"regime", "seed", "name", "description", "fixed": [`_point` per k in FIXED_OVERLAPS],
        "dynamic": [`dynamic_run` result per target in DYNAMIC_TARGETS]}.
    """
    truth, regime, seed, gold_count, args = job
    setting = setting_build(truth, regime=regime, seed=seed, gold_count=gold_count)
    stream = stream_start(setting)
    fixed, consensus = [], None
    for k in FIXED_OVERLAPS:
        given = answer_round(stream, setting.items)
        if given or consensus is None:  # nobody answered: the consensus cannot have changed
            consensus = dawid_skene(answer_arrays(stream, setting), gold=setting.gold)
        fixed.append(_point(stream, setting, consensus.label))
        if k == args.overlap_min:
            start = (copy.deepcopy(stream), consensus)
    dynamic = [
        dynamic_run(copy.deepcopy(start[0]), start[1], setting, target=target, args=args) for target in DYNAMIC_TARGETS
    ]
    return {
        "regime": regime,
        "seed": seed,
        "name": setting.crowd.name,
        "description": setting.crowd.description,
        "fixed": fixed,
        "dynamic": dynamic,
    }


def answers_for_accuracy(points: list[tuple[float, float]], target: float) -> tuple[float | None, str]:
    """Answers per item at which accuracy first reaches `target`, by linear interpolation.

    Args:
        points: (answers per item, accuracy in [0, 1]) pairs, in any order.
        target: accuracy in [0, 1].

    Returns:
        (answers, how): how is "" (interpolated between the two points, ordered by answers, where
        accuracy first crosses the target), "<=" (the cheapest point already reaches it) or "not reached"
        (answers is then None).
    """
    points = sorted(points)
    if points[0][1] >= target:
        return points[0][0], "<="
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if y0 < target <= y1:
            return x0 + (target - y0) / (y1 - y0) * (x1 - x0), ""
    return None, "not reached"


def _mean_points(results: list[dict], key: str) -> list[dict]:
    """Means over seeds of each point's numbers, for results[*][key] lists of equal length."""
    fields = ("answers_per_item", "gold_per_item", "accuracy", "coverage", "open", "capped", "confident_accuracy")
    return [
        {f: float(np.mean([r[key][i][f] for r in results])) for f in fields if f in results[0][key][i]}
        for i in range(len(results[0][key]))
    ]


def _needed(answers: float | None, how: str) -> str:
    return how if answers is None else f"{how}{answers:.2f}"


def overlap_saving(fixed: tuple[float | None, str], dynamic: tuple[float | None, str], *, top_k: int):
    """The saving 1 - dynamic / fixed in answers per item, and whether it meets SAVING_GOAL.

    Args:
        fixed, dynamic: `answers_for_accuracy` results of fixed and dynamic overlap.
        top_k: the largest fixed overlap tried.

    Returns:
        (the saving as text, "goal met" / "goal not met" with the reason where it is not a plain comparison).
    """
    (f, f_how), (d, d_how) = fixed, dynamic
    if d is None:
        reason = "dynamic overlap never gets there" if f is not None else "neither gets there"
        return "n/a", f"goal not met ({reason})"
    if f is None:
        bound = 1 - d / top_k
        if bound >= SAVING_GOAL:
            return f"> {bound:.0%}", f"goal met (fixed overlap needs more than {top_k})"
        return f"> {bound:.0%}", f"goal unknown (fixed overlap needs more than {top_k})"
    if f_how == "<=":
        return "n/a", "goal not met (one answer per item is already enough)"
    saving = 1 - d / f
    text = f">= {saving:.0%}" if d_how == "<=" else f"{saving:.0%}"
    return text, "goal met" if saving >= SAVING_GOAL else "goal not met"


def overlap_regime_report(results: list[dict], args) -> tuple[str, dict]:
    """The tables of one regime (results of `overlap_job`, one per seed). Returns (text, summary row)."""
    first = results[0]
    fixed, dynamic = _mean_points(results, "fixed"), _mean_points(results, "dynamic")
    lines = [f"== {first['name']}: {first['description']} =="]
    rows = [
        [
            f"{t}",
            f"{p['answers_per_item']:.3f}",
            f"{p['gold_per_item']:.3f}",
            f"{p['accuracy']:.4f}",
            "n/a" if np.isnan(p["confident_accuracy"]) else f"{p['confident_accuracy']:.4f}",
            f"{p['capped']:.1%}",
            f"{p['open']:.1%}",
        ]
        for t, p in zip(DYNAMIC_TARGETS, dynamic, strict=True)
    ]
    lines.append(
        f"dynamic overlap (min {args.overlap_min}, max {args.overlap_max}), ours with gold, "
        f"mean over {len(results)} seed(s):"
    )
    headers = ["target", "answers/item", "gold/item", "accuracy", "acc. if conf. >= target", "capped", "unsettled"]
    lines.append(_common.table(headers, rows))
    rows = [
        [k, f"{p['answers_per_item']:.3f}", f"{p['gold_per_item']:.3f}", f"{p['accuracy']:.4f}"]
        for k, p in zip(FIXED_OVERLAPS, fixed, strict=True)
    ]
    lines.append("fixed overlap, ours with gold:")
    lines.append(_common.table(["k", "answers/item", "gold/item", "accuracy"], rows))
    target = args.target_accuracy
    need_fixed = answers_for_accuracy([(p["answers_per_item"], p["accuracy"]) for p in fixed], target)
    need_dynamic = answers_for_accuracy([(p["answers_per_item"], p["accuracy"]) for p in dynamic], target)
    saving, goal = overlap_saving(need_fixed, need_dynamic, top_k=FIXED_OVERLAPS[-1])
    lines.append(
        f"answers per item for {target:.1%} accuracy: fixed {_needed(*need_fixed)}, dynamic {_needed(*need_dynamic)}; "
        f"saving {saving}: {goal.replace('goal', f'goal (>= {SAVING_GOAL:.0%} fewer)', 1)}"
    )
    if need_dynamic[0] is None:
        # Where dynamic overlap falls short, compare the two at the best accuracy it does reach.
        best = max(dynamic, key=lambda p: p["accuracy"])
        need = answers_for_accuracy([(p["answers_per_item"], p["accuracy"]) for p in fixed], best["accuracy"])
        lines.append(
            f"dynamic overlap's best: accuracy {best['accuracy']:.4f} at {best['answers_per_item']:.2f} answers/item; "
            f"fixed overlap needs {_needed(*need)} for that"
        )
    coverage = min(p["coverage"] for p in fixed + dynamic)
    if coverage < 1:
        lines.append(
            f"people ran out: as few as {coverage:.1%} of non-gold items got an answer; accuracy is over those only"
        )
    default = dynamic[DYNAMIC_TARGETS.index(PRODUCT_TARGET)]
    fixed3 = fixed[FIXED_OVERLAPS.index(FIXED_ANSWERS)]
    lines.append(
        f"product default, dynamic at target {PRODUCT_TARGET}: {default['answers_per_item']:.2f} answers/item, "
        f"accuracy {default['accuracy']:.4f}; fixed {FIXED_ANSWERS}: {fixed3['answers_per_item']:.2f} answers/item, "
        f"accuracy {fixed3['accuracy']:.4f}"
    )
    summary = [
        first["name"],
        _needed(*need_fixed),
        _needed(*need_dynamic),
        saving,
        goal.removeprefix("goal "),
        f"{default['answers_per_item']:.2f} / {default['accuracy']:.4f}",
        f"{fixed3['answers_per_item']:.2f} / {fixed3['accuracy']:.4f}",
    ]
    return "\n".join(lines), summary


def overlap_report(args: argparse.Namespace) -> None:
    """Part "overlap": prints the sweep and fixed-overlap tables per regime and a summary."""
    truth = labels_load(args)
    print(f"## Part overlap: answers per item for {args.target_accuracy:.1%} accuracy, dynamic vs fixed\n", flush=True)
    jobs = [(truth, regime, seed, args.gold, args) for regime in range(REGIME_COUNT) for seed in range(args.seeds)]
    with _common.Stopwatch() as sw:
        results = run_jobs(overlap_job, jobs, n_jobs=args.jobs)
    summaries = []
    for regime in range(REGIME_COUNT):
        text, summary = overlap_regime_report([r for r in results if r["regime"] == regime], args)
        summaries.append(summary)
        print(text, end="\n\n")
    headers = ["regime", "fixed", "dynamic", "saving", f">= {SAVING_GOAL:.0%} fewer?"]
    headers += [f"dynamic {PRODUCT_TARGET}: answers/acc.", f"fixed {FIXED_ANSWERS}: answers/acc."]
    print(_common.table(headers, summaries, align="<>>><>>"))
    print(f"(answers per item for {args.target_accuracy:.1%} accuracy; answers on gold items not counted)")
    print(f"\npart overlap: {sw.seconds:.0f} s\n", flush=True)


# -- part "calibration" ----------------------------------------------------------------------------

CHECKPOINTS = (0.10, 0.25, 0.50, 1.00)
ECE_BINS = 15
CALIBRATION_ACCURACY_GOAL = 0.95
ECE_GOAL = 0.03


def _app_rules():
    """The product's own rules, from the app: dynamic overlap (`is_settled`), routing priority
    (`task_priority`) and the gold draw's probability (`gold_probability`). They read a campaign's
    fields only, so a SimpleNamespace stands in for the row; Django is set up without a database."""
    os.environ.setdefault("FITCHECK_ENV", "test")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from annotate.consensus.services import is_settled, task_priority
    from annotate.services import gold_probability

    return is_settled, task_priority, gold_probability


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |accuracy - mean confidence| x
    the bin's share of tasks. confidence (n,) float in [0, 1], correct (n,) bool; nan when n = 0."""
    if not len(confidence):
        return float("nan")
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = edges == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def calibration_job(job: tuple) -> dict:
    """Part "calibration" for one (regime, seed): replay the campaign answer by answer as the product
    runs it, and measure calibration at CHECKPOINTS shares of the answer budget.

    Each step a person is drawn by workload (caps respected); their task is gold with the app's
    `gold_probability` (gold_early_rate during their first gold_first_count answers, then gold_rate),
    else the open task the app's router would serve (highest `task_priority`, ties in a shuffled
    order, never one they answered, never one at overlap_max). After each answer the task's posterior
    is the per-task update of `consensus_task_update` (`em.task_posterior` with each person's matrix
    from the last full recompute, the pooled matrix for people it has not seen) and its status the
    app's `is_settled`; a full recompute (`dawid_skene` over all answers, gold clamped) runs every
    --replay-recompute answers, as Celery beat would.

    Args:
        job: (truth (T,) int64, regime, seed, gold_count, args).

    Returns:
        {"regime", "seed", "name", "description", "points": [per checkpoint: {"share", "answers",
        "answers_per_item", "ece", "settled_accuracy", "settled_share", "accuracy", "confidence",
        "one_answer_settled": share of non-gold items settled on one answer, "one_answer_accuracy"}],
        "fits": [(n_iter, converged, final objective change) per full recompute]}.
    """
    from types import SimpleNamespace

    from annotate.consensus import em

    is_settled, task_priority, gold_probability = _app_rules()
    truth, regime, seed, gold_count, args = job
    setting = setting_build(truth, regime=regime, seed=seed, gold_count=gold_count)
    crowd, T, K, W = setting.crowd, len(truth), N_CLASSES, setting.crowd.n_workers
    rng = np.random.default_rng([seed, 3, regime])
    campaign = SimpleNamespace(
        overlap_min=args.overlap_min,
        overlap_max=args.overlap_max,
        confidence_target=PRODUCT_TARGET,
        gold_first_count=crowd.gold_first if crowd.gold_first is not None else 5,
        gold_early_rate=0.5,
        gold_rate=0.05,
    )
    budget = int(round(args.replay_answers * len(setting.items)))
    marks = sorted({max(1, int(round(share * budget))) for share in CHECKPOINTS})
    every = max(1, args.replay_recompute)
    class_prior, pooled = np.full(K, 1.0 / K), em.default_pooled(K)
    confusion = np.zeros((W, K, K))
    seen = np.zeros(W, dtype=bool)  # has a matrix from a full recompute
    posterior = np.tile(class_prior, (T, 1))
    count = np.zeros(T, dtype=np.int64)
    settled = np.zeros(T, dtype=bool)
    key_order = np.empty(T, dtype=np.int64)
    key_order[rng.permutation(T)] = np.arange(T)[::-1]  # the shuffled tie-break: larger goes first
    priority = np.full(
        T, int(task_priority(campaign=campaign, posterior=class_prior, pooled=pooled, answer_count=0)[0])
    )
    by_task: list[list[int]] = [[] for _ in range(T)]
    answered_by: list[list[int]] = [[] for _ in range(W)]
    worker_count = np.zeros(W, dtype=np.int64)
    exhausted = np.zeros(W, dtype=bool)
    gold_items = np.flatnonzero(setting.is_gold)
    tasks, workers, labels = [], [], []
    points, fits = [], []
    regular = ~setting.is_gold

    def per_task(t: int) -> None:
        idx = by_task[t]
        if setting.is_gold[t]:
            posterior[t] = 0.0
            posterior[t, setting.gold[t]] = 1.0
            return
        who = np.asarray([workers[i] for i in idx])
        rows = np.where(seen[who][:, None, None], confusion[who], pooled[None])
        posterior[t] = em.task_posterior(np.asarray([labels[i] for i in idx]), rows, class_prior)
        conf = posterior[t].max()
        settled[t] = bool(is_settled(campaign=campaign, answer_count=count[t], confidence=conf))
        priority[t] = int(
            task_priority(campaign=campaign, posterior=posterior[t], pooled=pooled, answer_count=count[t])[0]
        )

    def recompute() -> None:
        nonlocal class_prior, pooled
        answers = AnswerArrays.build(tasks, workers, labels, n_tasks=T, n_workers=W, n_classes=K)
        result = dawid_skene(answers, gold=setting.gold)
        fits.append((result.n_iter, result.trace.converged, result.trace.final_change))
        class_prior, pooled = result.class_prior, result.pooled
        used = np.bincount(answers.worker, minlength=W) > 0
        confusion[used] = result.confusion[used]
        seen[:] = used
        answered = count > 0
        posterior[answered] = result.posterior[answered]
        posterior[~answered] = class_prior
        settled[:] = (
            is_settled(campaign=campaign, answer_count=count, confidence=posterior.max(axis=1)) & regular & answered
        )
        priority[:] = task_priority(campaign=campaign, posterior=posterior, pooled=pooled, answer_count=count)

    def measure(given: int) -> None:
        items = setting.items[count[setting.items] > 0]
        label = posterior[items].argmax(axis=1)
        correct = label == truth[items]
        conf = posterior[items].max(axis=1)
        done = settled[items]
        one = done & (count[items] == 1)
        points.append(
            {
                "share": given / budget,
                "answers": given,
                "answers_per_item": given / len(setting.items),
                "ece": expected_calibration_error(conf, correct),
                "settled_accuracy": float(correct[done].mean()) if done.any() else float("nan"),
                "settled_share": float(done.sum() / len(setting.items)),
                "settled_count": int(done.sum()),
                "accuracy": float(correct.mean()) if len(items) else float("nan"),
                "confidence": float(conf.mean()) if len(items) else float("nan"),
                "one_answer_settled": float(one.sum() / len(setting.items)),
                "one_answer_accuracy": float(correct[one].mean()) if one.any() else float("nan"),
            }
        )

    given = 0
    while given < budget and not exhausted.all():
        weights = crowd.workload * ~exhausted
        if crowd.max_answers is not None:
            weights = weights * (worker_count < crowd.max_answers)
        if weights.sum() <= 0:
            break
        w = int(rng.choice(W, p=weights / weights.sum()))
        t = -1
        if len(gold_items) and rng.random() < gold_probability(answered=int(worker_count[w]), campaign=campaign):
            fresh = np.setdiff1d(gold_items, answered_by[w], assume_unique=False)
            if len(fresh):
                t = int(rng.choice(fresh))
        if t < 0:
            wants = regular & ~settled & (count < campaign.overlap_max)
            wants[answered_by[w]] = False
            if not wants.any():
                exhausted[w] = True
                continue
            key = np.where(wants, priority * (T + 1) + key_order, -1)
            t = int(key.argmax())
        label = int(crowd.answer(np.array([w]), truth[[t]], np.array([t]), rng)[0])
        by_task[t].append(len(tasks))
        tasks.append(t)
        workers.append(w)
        labels.append(label)
        answered_by[w].append(t)
        worker_count[w] += 1
        count[t] += 1
        given += 1
        per_task(t)
        if given % every == 0:
            recompute()
        if given in marks:
            measure(given)
    while len(points) < len(marks):  # people ran out or everything settled: the later checkpoints are the end
        recompute()
        measure(given)
    return {
        "regime": regime,
        "seed": seed,
        "name": crowd.name,
        "description": crowd.description,
        "points": points,
        "fits": fits,
    }


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def calibration_report(args: argparse.Namespace) -> None:
    """Part "calibration": prints, per regime, ECE, accuracy of settled tasks and share settled at each
    checkpoint of the replay (means over seeds), and the full recomputes' convergence."""
    truth = labels_load(args)
    print(
        f"## Part calibration: the product's router and dynamic overlap replayed answer by answer "
        f"(overlap {args.overlap_min}-{args.overlap_max}, target {PRODUCT_TARGET}, "
        f"budget {args.replay_answers} answers per item, full recompute every {args.replay_recompute} answers)\n",
        flush=True,
    )
    jobs = [(truth, regime, seed, args.gold, args) for regime in range(REGIME_COUNT) for seed in range(args.seeds)]
    with _common.Stopwatch() as sw:
        results = run_jobs(calibration_job, jobs, n_jobs=args.jobs)
    fields = (
        "answers_per_item",
        "ece",
        "settled_accuracy",
        "settled_share",
        "accuracy",
        "confidence",
        "one_answer_settled",
        "one_answer_accuracy",
    )
    summary = []
    for regime in range(REGIME_COUNT):
        mine = [r for r in results if r["regime"] == regime]
        print(f"== {mine[0]['name']}: {mine[0]['description']} ==")
        rows = []
        for i, share in enumerate(CHECKPOINTS):
            mean = {f: _nanmean([r["points"][i][f] for r in mine]) for f in fields}
            rows.append(
                [
                    f"{share:.0%}",
                    f"{mean['answers_per_item']:.2f}",
                    f"{mean['ece']:.4f}",
                    f"{mean['settled_accuracy']:.4f}",
                    f"{mean['settled_share']:.1%}",
                    f"{mean['accuracy']:.4f}",
                    f"{mean['confidence']:.4f}",
                    f"{mean['one_answer_settled']:.1%}",
                    "n/a" if np.isnan(mean["one_answer_accuracy"]) else f"{mean['one_answer_accuracy']:.4f}",
                ]
            )
        headers = ["answers", "per item", "ECE", "settled acc.", "settled", "acc. (answered)", "mean conf."]
        headers += ["settled on 1", "its acc."]
        print(_common.table(headers, rows))
        fits = [f for r in mine for f in r["fits"]]
        iters = [f[0] for f in fits]
        changes = [abs(f[2]) for f in fits if not np.isnan(f[2])]
        unconverged = sum(not f[1] for f in fits)
        print(
            f"full recomputes: {len(fits)}, iterations {min(iters)}-{max(iters)} (mean {np.mean(iters):.1f}), "
            f"not converged {unconverged}, "
            f"final objective change at most {max(changes, default=float('nan')):.2g} nats\n"
        )
        worst_point = min(
            (p for r in mine for p in r["points"] if p["settled_count"]),
            key=lambda p: p["settled_accuracy"],
            default={"settled_accuracy": float("nan"), "settled_count": 0, "share": float("nan")},
        )
        worst, worst_n = worst_point["settled_accuracy"], worst_point["settled_count"]
        low, high = _common.wilson_interval(int(round(worst * worst_n)), worst_n) if worst_n else (np.nan, np.nan)
        final_ece = float(np.mean([r["points"][-1]["ece"] for r in mine]))
        summary.append(
            [
                mine[0]["name"],
                f"{worst:.4f}",
                f"{worst_point['share']:.0%}",
                f"{worst_n} ({low:.3f}-{high:.3f})",
                "met" if worst >= CALIBRATION_ACCURACY_GOAL else "missed",
                f"{final_ece:.4f}",
                "met" if final_ece <= ECE_GOAL else "missed",
                f"{max(iters)}",
                f"{unconverged}",
            ]
        )
    headers = ["regime", "worst settled acc.", "at", "its n settled (95% CI)", f">= {CALIBRATION_ACCURACY_GOAL}"]
    headers += ["final ECE", f"<= {ECE_GOAL}"]
    headers += ["max iterations", "not converged"]
    print(_common.table(headers, summary, align="<>>><><>>"))
    print(
        "(worst settled acc.: the lowest over checkpoints and seeds, at that checkpoint's share of the answers, "
        f"with its number of settled tasks and their Wilson 95% interval)\npart calibration: {sw.seconds:.0f} s\n",
        flush=True,
    )


# -- running ---------------------------------------------------------------------------------------

_thread_limits = None


def _worker_init() -> None:
    """One BLAS/OpenMP thread per worker process, so that --jobs processes do not fight over cores."""
    global _thread_limits
    from threadpoolctl import threadpool_limits  # installed with scikit-learn (a Crowd-Kit dependency)

    _thread_limits = threadpool_limits(limits=1)


def run_jobs(function, jobs: list[tuple], *, n_jobs: int) -> list[dict]:
    """function(job) for every job, in `n_jobs` spawned processes (in this one when n_jobs is 1), with a
    progress line per job on stderr. Returns the results in job order."""
    started = time.perf_counter()

    def progress(i: int, result: dict) -> None:
        print(
            f"  {function.__name__} {i + 1}/{len(jobs)}: {result['name']}, seed {result['seed']} "
            f"({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    if n_jobs == 1:
        results = []
        for i, job in enumerate(jobs):
            results.append(function(job))
            progress(i, results[-1])
        return results
    with multiprocessing.get_context("spawn").Pool(n_jobs, initializer=_worker_init) as pool:
        results = []
        for i, result in enumerate(pool.imap(function, jobs, chunksize=1)):
            results.append(result)
            progress(i, result)
        return results


def labels_load(args: argparse.Namespace) -> np.ndarray:
    """(args.items,) int64: the labels of the first Fashion-MNIST training items (never downloads).

    Raises:
        BenchError: the dataset is not found or does not parse.
    """
    from catalog.demo_data import DatasetError, fashion_mnist_locate, fashion_mnist_read

    try:
        directory = fashion_mnist_locate(args.dataset_dir, allow_download=False)
        _, labels = fashion_mnist_read(directory, "train")
    except DatasetError as exc:
        raise _common.BenchError(str(exc)) from exc
    return labels[: args.items]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.recompute_child is not None:  # the child process of part recompute
        from _consensus_db import recompute_child

        recompute_child(args.recompute_child)
        return 0
    started = time.perf_counter()
    from importlib.metadata import version

    print(
        f"consensus: {args.items} Fashion-MNIST train items ({args.gold} gold per seed), {args.seeds} seed(s), "
        f"parts {','.join(args.parts)}; numpy {np.__version__}, crowd-kit {version('crowd-kit')}; "
        f"{args.jobs} process(es) on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}\n",
        flush=True,
    )
    from _consensus_db import recompute_report
    from _consensus_engine import engine_report

    reports = {
        "accuracy": accuracy_report,
        "overlap": overlap_report,
        "calibration": calibration_report,
        "recompute": recompute_report,
        "engine": engine_report,
    }
    for part in args.parts:
        reports[part](args)
    print(f"total {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except _common.BenchError as exc:
        print(f"consensus: {exc}", file=sys.stderr)
        sys.exit(2)
