"""How many human answers does the learning loop save? The whole loop on the Fashion-MNIST demo.

10,000 demo products (Fashion-MNIST training images, with the demo loader's titles, descriptions and
native categories, 12% of them uninformative such as "New In"), the category attribute (10 classes),
and a simulated crowd from bench/_crowd.py answering in place of people. Three ways to label them:

1. **baseline**: 3 answers per item, majority vote, items in random order, no model.
2. **consensus + dynamic overlap**: the product's consensus (Dawid-Skene EM with gold tasks,
   annotate.consensus.em) and stopping rule (overlap_min 2, confidence target 0.95, cap 7), no model.
3. **full loop**: people label a first batch with (2); then, every `--batch` human-settled labels:
   train the multitask heads (mlcore.nn.tagging) on the settled labels (the consensus posterior as
   soft targets) over frozen EfficientNet-Lite0 image embeddings and MiniLM text embeddings,
   fuse image and text (late fusion), calibrate (temperature scaling), choose the auto-accept
   threshold that meets the target precision (98%, Wilson lower bound) on held-out settled labels,
   auto-accept every unlabelled item above it except a 2% audit sample, re-rank the rest (smallest
   margin first, round-robin over predicted classes for diversity) and send the next batch to
   people. Until every item has a label.

Prints, per strategy: human answers (gold answers included), answers per item, final label
accuracy against the Fashion-MNIST truth, and the saving against the baseline at equal or better
accuracy; for the loop also each round (labels, threshold, coverage, precision), the auto-accepted
labels' measured precision against the truth and as the audit sample saw it, training throughput
and time per retrain cycle. Then (part "matching", from bench/_match_economy.py when present)
matching recall before and after fine-tuning.

The loop here calls the same functions the product's retrain task does (mlcore.nn.tagging) and the
same consensus (annotate.consensus.em), in memory: it does not go through the database, Celery or
the web pages (bench/api_latency.py and the test suite cover those).

Run (about 4 minutes on a 2-core CPU; embeddings are cached under var/bench/label_economy/):

    .venv/bin/python bench/label_economy.py
    .venv/bin/python bench/label_economy.py --modality image     # the image model alone
    .venv/bin/python bench/label_economy.py --regime 1           # 30% spammers
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402, I001  (puts the repository on sys.path)
from _crowd import N_CLASSES  # noqa: E402
from consensus import answer_arrays, answer_round, setting_build, settled, stream_start  # noqa: E402

CACHE = _common.BENCH_VAR / "label_economy"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument(
        "--regime", type=int, default=0, help="bench/_crowd.py regime (0 reliable staff, 1 spammers, ...)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gold", type=int, default=100, help="gold items (answered, not counted in accuracy)")
    parser.add_argument("--first-batch", type=int, default=1000, help="items people label before the first model")
    parser.add_argument("--batch", type=int, default=1000, help="human-labelled items between retrains")
    parser.add_argument("--target-precision", type=float, default=0.98)
    parser.add_argument("--audit", type=float, default=0.02, help="share of auto-accepted items still sent to people")
    parser.add_argument("--confidence-target", type=float, default=0.95)
    parser.add_argument("--overlap-min", type=int, default=2)
    parser.add_argument("--overlap-max", type=int, default=7)
    parser.add_argument("--modality", choices=("image", "text", "fusion"), default="fusion")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=0, help="hidden layer of the heads (0: linear heads)")
    parser.add_argument(
        "--bound", choices=("wilson", "point"), default="wilson", help="threshold rule (mlcore.nn.tagging)"
    )
    parser.add_argument("--parts", default="economy,matching")
    parser.add_argument("--dataset-dir", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args(argv)
    if not 100 <= args.products <= 60_000:
        parser.error("--products must be between 100 and 60000")
    return args


# -- data -------------------------------------------------------------------------------------------


def demo_products(args) -> dict:
    """The products: Fashion-MNIST training images with the demo loader's text. Returns {"index":
    (N,) image indices, "truth": (N,) int64 classes, "texts": N strings, "images": (N, 28, 28) uint8}."""
    from catalog import demo_data
    from catalog.fashion_mnist import RETAILERS, UNINFORMATIVE_NATIVE, UNINFORMATIVE_SHARE, _title
    from mlcore.nn.text import product_text

    train_x, train_y = demo_data.fashion_mnist_read(Path(args.dataset_dir), "train")
    rng = np.random.default_rng([args.seed, 7])
    index = np.sort(rng.choice(len(train_y), args.products, replace=False))
    texts = []
    for i, label in zip(index, train_y[index], strict=True):
        spec = RETAILERS[int(i) % len(RETAILERS)]
        native = (
            UNINFORMATIVE_NATIVE[int(rng.integers(len(UNINFORMATIVE_NATIVE)))]
            if rng.random() < UNINFORMATIVE_SHARE
            else spec["native"][int(label)]
        )
        title, description = _title(int(label), rng)
        texts.append(product_text(title=title, description=description, native_category=native))
    return {"index": index, "truth": train_y[index].astype(np.int64), "texts": texts, "images": train_x[index]}


def _cached(name: str, build) -> np.ndarray:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    value = build()
    np.save(path, value)
    print(f"  computed {name} in {time.perf_counter() - started:.1f} s (cached at {path})")
    return value


def embeddings(data: dict, args) -> tuple[np.ndarray, np.ndarray, dict]:
    """(image (N, 1280) float32, text (N, 384) float32, throughput figures)."""
    import torch
    from PIL import Image

    from mlcore.nn.backbones import BACKBONES, backbone_build
    from mlcore.nn.data import eval_transform
    from mlcore.nn.infer import embed_images, model_prepare
    from mlcore.nn.text import embed_texts

    key = hashlib.sha256(data["index"].tobytes()).hexdigest()[:12]
    figures = {}

    def image_build():
        model, spec = backbone_build("efficientnet_lite0", weights_path="")
        model = model_prepare(model, torch.device("cpu"))
        transform = eval_transform(image_size_px=args.image_size, mean=spec.mean, std=spec.std)
        started = time.perf_counter()
        out = embed_images(
            model,
            (Image.fromarray(x) for x in data["images"]),
            transform=transform,
            batch_size=64,
            device=torch.device("cpu"),
        )
        figures["image_embed_per_s"] = len(out) / (time.perf_counter() - started)
        return out

    def text_build():
        started = time.perf_counter()
        out = embed_texts(data["texts"])
        figures["text_embed_per_s"] = len(out) / (time.perf_counter() - started)
        return out

    assert BACKBONES["efficientnet_lite0"]
    image = _cached(f"image-{args.image_size}px-{key}", image_build)
    # The text cache is keyed by the texts themselves: a change to the demo loader's titles recomputes it.
    text_key = hashlib.sha256("\n".join(data["texts"]).encode()).hexdigest()[:12]
    text = _cached(f"text-{text_key}", text_build)
    return image.astype(np.float32), text.astype(np.float32), figures


# -- strategies --------------------------------------------------------------------------------------


def _accuracy(labels: np.ndarray, truth: np.ndarray, items: np.ndarray) -> float:
    return float((labels[items] == truth[items]).mean())


def run_baseline(truth: np.ndarray, args) -> dict:
    """3 answers per item, majority vote, random order, no gold, no model."""
    from annotate.consensus import em

    setting = setting_build(truth, regime=args.regime, seed=args.seed, gold_count=args.gold)
    stream = stream_start(setting)
    stream.gold_items = np.zeros(0, dtype=np.int64)  # no gold in the baseline
    stream.gold_first, stream.gold_rate = 0, 0.0
    for _ in range(3):
        answer_round(stream, setting.items)
    result = em.majority_vote(answer_arrays(stream, setting))
    return {
        "answers": len(stream.tasks),
        "accuracy": _accuracy(result.label, truth, setting.items),
        "items": len(setting.items),
    }


def _dynamic(stream, setting, items: np.ndarray, args, consensus=None):
    """Answer `items` by the product's stopping rule; returns the final consensus over all answers."""
    from annotate.consensus import em

    for _ in range(args.overlap_min):
        answer_round(stream, items)
    consensus = em.dawid_skene(answer_arrays(stream, setting), gold=setting.gold)
    while True:
        count = np.bincount(np.asarray(stream.tasks, dtype=np.int64), minlength=len(setting.truth))[items]
        done = settled(
            count,
            consensus.confidence[items],
            target=args.confidence_target,
            overlap_min=args.overlap_min,
            overlap_max=args.overlap_max,
        )
        if done.all() or answer_round(stream, items[~done]) == 0:
            return consensus
        consensus = em.dawid_skene(answer_arrays(stream, setting), gold=setting.gold)


def run_dynamic(truth: np.ndarray, args) -> dict:
    """The product's consensus and dynamic overlap over every item, no model."""
    setting = setting_build(truth, regime=args.regime, seed=args.seed, gold_count=args.gold)
    stream = stream_start(setting)
    consensus = _dynamic(stream, setting, setting.items, args)
    return {
        "answers": len(stream.tasks),
        "accuracy": _accuracy(consensus.label, truth, setting.items),
        "items": len(setting.items),
    }


def _fold_of(item: int) -> int:
    """The item's cross-fitting fold, by the product's own rule (mlcore.training.fold_of)."""
    from mlcore.training import fold_of

    return fold_of(f"product-{item}")


def run_loop(truth: np.ndarray, image: np.ndarray, text: np.ndarray, args) -> dict:
    """The full loop; see the module docstring."""
    from mlcore.nn import tagging as nt

    setting = setting_build(truth, regime=args.regime, seed=args.seed, gold_count=args.gold)
    stream = stream_start(setting)
    rng = np.random.default_rng([args.seed, 11])
    T = len(truth)
    fold = np.array([_fold_of(i) for i in range(T)])
    final = np.full(T, -1, dtype=np.int64)
    source = np.full(T, "", dtype=object)  # "human" or "model"
    human_items: list[int] = []
    audited: list[int] = []
    audit_label: dict[int, int] = {}  # the model's label of each audited item, when it was sent
    pending = set(int(i) for i in setting.items)
    order = rng.permutation(setting.items)
    batch = np.asarray(order[: args.first_batch], dtype=np.int64)
    rounds, retrain_s, rows_per_s = [], [], []
    consensus = None
    features = {"image": image, "text": text, "fusion": None}[args.modality]
    while True:
        if len(batch):
            consensus = _dynamic(stream, setting, batch, args)
            human_items += [int(i) for i in batch]
            for i in batch:
                pending.discard(int(i))
            labelled = np.asarray(human_items)
            final[labelled] = consensus.label[labelled]
            source[labelled] = "human"
        if not pending:
            break
        started = time.perf_counter()
        model_out = _train_and_predict(consensus, labelled, fold, image, text, features, args)
        retrain_s.append(time.perf_counter() - started)
        rows_per_s.append(model_out["rows_per_s"])
        rest = np.asarray(sorted(pending), dtype=np.int64)
        proba = model_out["proba"][rest]
        confidence, predicted = proba.max(axis=1), proba.argmax(axis=1)
        choice = model_out["choice"]
        sure = confidence >= choice.threshold
        audit = sure & (rng.random(len(rest)) < args.audit)
        accept = sure & ~audit
        final[rest[accept]] = predicted[accept]
        source[rest[accept]] = "model"
        for i in rest[accept]:
            pending.discard(int(i))
        audited += [int(i) for i in rest[audit]]
        for i, label in zip(rest[audit], predicted[audit], strict=True):
            audit_label[int(i)] = int(label)
        rounds.append(
            {
                "labels": len(labelled),
                "threshold": choice.threshold,
                "held_out": choice.n,
                "coverage_held_out": choice.coverage,
                "precision_held_out": choice.precision,
                "accepted": int(accept.sum()),
                "accepted_right": int((predicted[accept] == truth[rest[accept]]).sum()),
                "pending": len(pending),
                "answers": len(stream.tasks),
            }
        )
        if not pending:
            break
        # Re-rank what is left: the audit sample first, then the smallest margin, round-robin over
        # predicted classes so that a batch is not all one kind of item.
        rest = np.asarray(sorted(pending), dtype=np.int64)
        p = model_out["proba"][rest]
        top2 = np.sort(p, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        is_audit = np.isin(rest, audited)
        ranked = _diverse_order(rest, margin, p.argmax(axis=1), is_audit)
        batch = ranked[: args.batch]
    model_items = np.flatnonzero(source == "model")
    audit_items = np.asarray([i for i in audited if source[i] == "human"], dtype=np.int64)
    audit_agree = None
    if len(audit_items):
        # What the product can see: people's consensus on the audited items against the model's label
        # (the model's label at audit time is the one that cleared the threshold).
        model_said = np.asarray([audit_label[int(i)] for i in audit_items])
        audit_agree = float((consensus.label[audit_items] == model_said).mean())
    items = setting.items
    return {
        "answers": len(stream.tasks),
        "accuracy": _accuracy(final, truth, items),
        "items": len(items),
        "human_items": int((source[items] == "human").sum()),
        "model_items": len(model_items),
        "model_precision": float((final[model_items] == truth[model_items]).mean()) if len(model_items) else None,
        "model_precision_interval": nt.wilson_interval(
            int((final[model_items] == truth[model_items]).sum()), len(model_items)
        ),
        "audited": len(audit_items),
        "audit_agreement": audit_agree,
        "rounds": rounds,
        "retrain_s": retrain_s,
        "rows_per_s": rows_per_s,
    }


def _diverse_order(items, margin, predicted, is_audit) -> np.ndarray:
    """Audit items first; then round-robin over predicted classes, each class's items by margin."""
    by_class = {}
    for c in np.unique(predicted):
        mine = np.flatnonzero((predicted == c) & ~is_audit)
        by_class[int(c)] = list(mine[np.argsort(margin[mine], kind="stable")])
    out = list(np.flatnonzero(is_audit))
    while any(by_class.values()):
        # the next pick of each class, least certain class first
        heads = sorted((margin[q[0]], c) for c, q in by_class.items() if q)
        for _, c in heads:
            out.append(by_class[c].pop(0))
    return items[np.asarray(out, dtype=np.int64)]


def _train_and_predict(consensus, labelled, fold, image, text, features, args) -> dict:
    """Train on the settled human labels and predict every item, calibrated.

    Out-of-fold predictions (FOLDS folds by a hash of the item id) give every labelled item a
    held-out prediction: late fusion, the temperature and the auto-accept threshold are fitted on
    them against the consensus labels; the model that predicts the unlabelled items is then trained
    on all the labels."""
    from mlcore.nn import tagging as nt
    from mlcore.training import FOLDS

    posterior, labels = consensus.posterior, consensus.label
    config = nt.HeadsConfig(
        hidden_dim=args.hidden,
        epochs=args.epochs,
        batch_size=512,
        lr=5e-3 if not args.hidden else 2e-3,
        dropout=0.0 if not args.hidden else 0.2,
        seed=args.seed,
    )
    started = time.perf_counter()
    rates = []

    def log_proba(x, train, predict):
        targets = {"category": posterior[train].astype(np.float32)}
        model, history = nt.heads_train(x[train], targets, {"category": np.ones(len(train), bool)}, config=config)
        rates.append(sum(h.rows_per_s for h in history) / len(history))
        return nt.heads_log_proba(model, x[predict])["category"]

    inputs = [features] if features is not None else [image, text]
    folds = fold[labelled]
    oof = [np.zeros((len(labelled), N_CLASSES)) for _ in inputs]
    everything = np.arange(len(labels))
    full = []
    for m, x in enumerate(inputs):
        for f in range(FOLDS):
            oof[m][folds == f] = log_proba(x, labelled[folds != f], labelled[folds == f])
        full.append(log_proba(x, labelled, everything))
    y = labels[labelled]
    if len(inputs) == 2:
        fusion = nt.late_fusion_fit(oof[0], oof[1], y)
        held, log_p = nt.log_softmax_np(fusion.apply(*oof)), nt.log_softmax_np(fusion.apply(*full))
    else:
        held, log_p = oof[0], full[0]
    temperature = nt.temperature_fit(held, y)
    held_p = np.exp(nt.log_softmax_np(held / temperature))
    proba = np.exp(nt.log_softmax_np(log_p / temperature))
    choice = nt.threshold_for_precision(
        held_p.max(axis=1), held_p.argmax(axis=1) == y, target=args.target_precision, min_accepted=50, bound=args.bound
    )
    return {
        "proba": proba,
        "choice": choice,
        "rows_per_s": float(np.mean(rates)),
        "seconds": time.perf_counter() - started,
    }


# -- report ------------------------------------------------------------------------------------------


def economy_report(args) -> dict:
    import torch

    torch.set_num_threads(2)
    print(
        f"== label economy: {args.products} demo products, category ({N_CLASSES} classes), crowd regime {args.regime}, "
        f"seed {args.seed}, model input: {args.modality} =="
    )
    data = demo_products(args)
    image, text, figures = embeddings(data, args)
    truth = data["truth"]
    started = time.perf_counter()
    baseline = run_baseline(truth, args)
    dynamic = run_dynamic(truth, args)
    loop = run_loop(truth, image, text, args)
    wall = time.perf_counter() - started
    print(f"\n{'strategy':34} {'human answers':>13} {'per item':>9} {'accuracy':>9} {'vs baseline':>12}")
    for name, r in (
        ("baseline (3 answers, majority)", baseline),
        ("consensus + dynamic overlap", dynamic),
        ("full loop", loop),
    ):
        ratio = baseline["answers"] / r["answers"]
        verdict = "" if r["accuracy"] >= baseline["accuracy"] else "  (less accurate)"
        print(
            f"{name:34} {r['answers']:>13,} {r['answers'] / r['items']:>9.2f} {r['accuracy']:>9.4f} "
            f"{ratio:>11.2f}x{verdict}"
        )
    goal = loop["accuracy"] >= baseline["accuracy"] and baseline["answers"] >= 4 * loop["answers"]
    print(f"\ngoal (full loop >= 4x fewer answers at equal accuracy): {'MET' if goal else 'NOT MET'}")
    low, high = loop["model_precision_interval"]
    print(
        f"auto-accepted labels: {loop['model_items']:,} of {loop['items']:,} items; precision against the truth "
        f"{_fmt(loop['model_precision'])} (95% CI {low:.4f}-{high:.4f}); "
        f"audit sample {loop['audited']} items, people agreed with the model on {_fmt(loop['audit_agreement'])}"
    )
    print(f"human-labelled items: {loop['human_items']:,}")
    print(
        "\nround  labels  threshold  held-out  coverage(held-out)  precision(held-out)  accepted  right"
        "  pending  answers"
    )
    for i, r in enumerate(loop["rounds"], 1):
        print(
            f"{i:>5} {r['labels']:>7} {_fmt(None if np.isinf(r['threshold']) else r['threshold']):>10} "
            f"{r['held_out']:>9} {r['coverage_held_out']:>19.3f} {_fmt(r['precision_held_out']):>20} "
            f"{r['accepted']:>9} {r['accepted_right']:>6} {r['pending']:>8} {r['answers']:>8}"
        )
    print(
        f"\nretrain cycle (train heads, fuse, calibrate, threshold, predict {args.products:,}): "
        f"mean {np.mean(loop['retrain_s']):.2f} s over {len(loop['retrain_s'])} cycles on this CPU "
        f"({torch.get_num_threads()} threads); head training {np.mean(loop['rows_per_s']):,.0f} rows/s"
    )
    for name, value in figures.items():
        print(f"{name}: {value:,.0f} per s (first run only; later runs read the cache)")
    print(f"simulation wall time {wall:.1f} s")
    return {"baseline": baseline, "dynamic": dynamic, "loop": loop, "goal_met": goal}


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.4f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    # The demo loader's text helpers live in a Django app: set Django up on a throwaway SQLite file
    # (nothing is written to it). The embedding cache is elsewhere (CACHE), so it survives.
    _common.bench_environment("label_economy_env")
    import django

    django.setup()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if "economy" in parts:
        economy_report(args)
    if "matching" in parts:
        try:
            import _match_economy
        except ImportError:
            print("\n(part matching: bench/_match_economy.py is not there)")
        else:
            print()
            # Matching: recall@1/@3 before and after fine-tuning on 1,000 verified matches, and the
            # share of non-product photos left without a suggestion (bench/_match_economy.py).
            _match_economy.main(["--seed", str(args.seed), "--image-size", str(args.image_size)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
