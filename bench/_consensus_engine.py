"""Part "engine" of bench/consensus.py: the consensus engine alone, beside Crowd-Kit's DawidSkene.

Two synthetic crowds, built as arrays (no database):
- "1M answers": --recompute-answers answers (1,000,000) over --recompute-tasks tasks (300,000) by
  --recompute-annotators people (2,000), a 6-option question, the generator of part recompute
  (one-coin accuracy uniform in 0.6-0.95, Pareto workloads, 1% of tasks gold).
- "50 labels": --engine-wide-tasks tasks (40,000), 5 answers each, by 2,000 people, 50 classes;
  each person's accuracy uniform in 0.6-0.95, and a third of them confuse each class with one
  personal look-alike class (half of their errors go there), so the full-matrix path runs too.

Each engine fits the same answers in this one process, one after the other: ours (the working
tree's `dawid_skene`, gold clamped), ours as it was before issue 15 (annotate/consensus/em.py at
commit BEFORE_ISSUE_15, read with `git show`; skipped where there is no git history), and Crowd-Kit
DawidSkene(n_iter=100), which sees the answers on gold tasks but not the gold labels. Prints wall
seconds, iterations and accuracy on the non-gold tasks.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from functools import partial

import _common
import numpy as np
from _consensus_db import distinct_workers, one_coin_answers

# The engine as the issue measured it ("today's"), before the variational rewrite.
BEFORE_ISSUE_15 = "5b49c1f"


def one_coin_crowd(n_tasks: int, n_answers: int, n_annotators: int, seed: int):
    """The recompute part's crowd (`_consensus_db.one_coin_answers`) as arrays.

    Returns:
        (task, worker, label) (N,) int64 each, truth (T,) int64, gold (G,) int64 task indices, K.
    """
    truth, gold, task, worker, label = one_coin_answers(np.random.default_rng(seed), n_tasks, n_answers, n_annotators)
    return task, worker, label, truth, gold, 6


def wide_crowd(n_tasks: int, n_annotators: int, seed: int, *, K: int = 50, per_task: int = 5):
    """The 50-label crowd (module docstring) as arrays; returns as `one_coin_crowd`."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, K, n_tasks)
    gold = rng.choice(n_tasks, max(n_tasks // 100, 1), replace=False)
    accuracy = rng.uniform(0.6, 0.95, n_annotators)
    confuser = rng.random(n_annotators) < 1 / 3
    look_alike = (np.arange(K)[None, :] + rng.integers(1, K, (n_annotators, K))) % K  # (W, K)
    workload = rng.pareto(1.5, n_annotators) + 1
    workload /= workload.sum()
    counts = np.full(n_tasks, per_task)
    task = np.repeat(np.arange(n_tasks), counts)
    worker = distinct_workers(rng, counts, workload)
    true = truth[task]
    right = rng.random(len(task)) < accuracy[worker]
    uniform_wrong = (true + rng.integers(1, K, len(task))) % K
    to_look_alike = confuser[worker] & (rng.random(len(task)) < 0.5)
    wrong = np.where(to_look_alike, look_alike[worker, true], uniform_wrong)
    return task, worker, np.where(right, true, wrong), truth, gold, K


def engine_before_load():
    """The module annotate/consensus/em.py at BEFORE_ISSUE_15, or None without git history."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE_ISSUE_15}:annotate/consensus/em.py"],
            cwd=_common.ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="fitcheck-em-"), "em_before_issue_15.py")
    with open(path, "w") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location("em_before_issue_15", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fit_ours(module, task, worker, label, gold_map, T, W, K):
    answers = module.AnswerArrays.build(task, worker, label, n_tasks=T, n_workers=W, n_classes=K)
    started = time.perf_counter()
    fit = module.dawid_skene(answers, gold=gold_map)
    return time.perf_counter() - started, fit.label, fit.n_iter


def _fit_crowdkit(task, worker, label, T):
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    frame = pd.DataFrame({"worker": worker, "task": task, "label": label})
    started = time.perf_counter()
    model = DawidSkene(n_iter=100)
    predicted = model.fit_predict(frame)
    seconds = time.perf_counter() - started
    labels = np.full(T, -1, dtype=np.int64)
    labels[predicted.index.to_numpy(dtype=np.int64)] = predicted.to_numpy(dtype=np.int64)
    return seconds, labels, len(getattr(model, "loss_history_", [])) or "n/a"


def engine_report(args) -> None:
    """Print part "engine" (module docstring)."""
    from annotate.consensus import em

    before = engine_before_load()
    crowds = [
        (
            f"1M answers: {args.recompute_answers:,} answers, {args.recompute_tasks:,} tasks, "
            f"{args.recompute_annotators:,} people, 6 labels",
            one_coin_crowd(args.recompute_tasks, args.recompute_answers, args.recompute_annotators, args.seed),
        ),
        (
            f"50 labels: {args.engine_wide_tasks * 5:,} answers, {args.engine_wide_tasks:,} tasks, "
            f"{args.recompute_annotators:,} people, 50 labels",
            wide_crowd(args.engine_wide_tasks, args.recompute_annotators, args.seed),
        ),
    ]
    print("== engine: one fit each, in this process, one after the other ==")
    if before is None:
        print(f"(no git history: the engine before issue 15, {BEFORE_ISSUE_15}, is left out)")
    rows = []
    for title, (task, worker, label, truth, gold, K) in crowds:
        T, W = len(truth), int(worker.max()) + 1
        gold_map = {int(t): int(truth[t]) for t in gold}
        scored = np.ones(T, dtype=bool)
        scored[gold] = False
        data = (task, worker, label, gold_map, T, W, K)
        engines = [("ours", partial(_fit_ours, em, *data))]
        if before is not None:
            engines.append((f"ours before issue 15 ({BEFORE_ISSUE_15})", partial(_fit_ours, before, *data)))
        engines.append(("Crowd-Kit DawidSkene(n_iter=100)", partial(_fit_crowdkit, task, worker, label, T)))
        for name, fit in engines:
            seconds, labels, n_iter = fit()
            accuracy = float((labels[scored] == truth[scored]).mean())
            rows.append([title.split(":")[0], name, f"{seconds:.2f}", n_iter, f"{accuracy:.4f}"])
            print(f"  {title}: {name}: {seconds:.2f} s, {n_iter} iterations, accuracy {accuracy:.4f}", flush=True)
    print()
    print(_common.table(["crowd", "engine", "wall s", "iterations", "accuracy (non-gold)"], rows))
    print(f"load average {os.getloadavg()[0]:.2f}\n")
