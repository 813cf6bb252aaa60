"""Does fine-tuning a matching head on ~1,000 verified matches fix the suggestions? (no database)

Builds the demo's data in memory with the demo's own generators (catalog.demo_data), as
catalog.fashion_mnist.fashion_mnist_load does, but without Django:

- catalog: `--products` Fashion-MNIST training images (one product each, the 28×28 image as stored);
- verified matches: `--train-matches` customer photos (`customer_photo_render`) of distinct catalog
  products, whose product people confirmed. Hard negatives: the pretrained model's top-3 candidates
  for that photo other than the true product (what people saw and did not pick);
- rejections: `--train-rejections` photos answered "not a product" (`non_product_photos`, half of
  them) or "none of these" (photos of test-split images, i.e. products not in the catalog, the other
  half); their hard negatives are all 3 pretrained candidates;
- 20% of the verified matches and rejections (`--val-share`) are held back as a validation split: it
  picks the best epoch and fits the rejection threshold;
- test: `--test-photos` photos of catalog products *not* among the verified ones (new products, new
  photos), `--test-non-product` non-product photos and `--test-not-in-catalog` photos of products not
  in the catalog; with `--seen-photos`, also one new photo of each product verified in training.

Embeds everything with the pretrained backbone (mlcore.nn.backbones.backbone_build +
mlcore.nn.infer.embed_images, cached in var/bench/match_economy/ keyed by the data arguments), trains
mlcore.nn.matching.match_head_train and prints recall@1/@3 before (pretrained cosine) and after, with
95% Wilson intervals, the rejection figures at the fitted threshold, and training throughput.

Run standalone. With the cache it took 25-70 s on the shared 2-core dev VM. The first run took
23 min there, with the load average at 6-8 from other work: products embedded at 9 img/s. At the
140-200 img/s of an idle machine (docs/benchmarks.md) it should take about 2-3 min.

    .venv/bin/python bench/_match_economy.py
    .venv/bin/python bench/_match_economy.py --train-matches 1000 --test-photos 1000 --products 10000 \\
        --image-size 96 --seed 0
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (bench/ is not a package; _common puts the repository on sys.path)

if str(_common.ROOT) not in sys.path:
    sys.path.insert(0, str(_common.ROOT))

import numpy as np  # noqa: E402

CACHE_DIR = _common.BENCH_VAR / "match_economy"
DATA_VERSION = 1  # bump when the way the data is drawn changes, so old caches are not reused


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Recall of the pretrained embedding vs. a matching head fine-tuned on simulated verified "
        "matches, on the Fashion-MNIST demo photos, with a learned rejection threshold. No database.",
    )
    parser.add_argument("--backbone", default="efficientnet_lite0", help="(default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=96, help="network input side, px (default: %(default)s)")
    parser.add_argument("--products", type=int, default=10_000, help="catalog products (default: %(default)s)")
    parser.add_argument(
        "--train-matches",
        type=int,
        default=1_000,
        help="verified matches, before the validation split (default: %(default)s)",
    )
    parser.add_argument(
        "--train-rejections",
        type=int,
        default=300,
        help="photos answered 'not a product' / 'none of these' (default: %(default)s)",
    )
    parser.add_argument(
        "--val-share",
        type=float,
        default=0.2,
        help="share of verified answers held back for validation (default: %(default)s)",
    )
    parser.add_argument(
        "--test-photos", type=int, default=1_000, help="held-out photos of catalog products (default: %(default)s)"
    )
    parser.add_argument("--test-non-product", type=int, default=200, help="(default: %(default)s)")
    parser.add_argument("--test-not-in-catalog", type=int, default=300, help="(default: %(default)s)")
    parser.add_argument(
        "--max-match-rejection",
        type=float,
        default=0.05,
        help="largest share of catalog-product photos the threshold may reject (default: %(default)s)",
    )
    parser.add_argument("--k", type=int, default=3, help="the k of recall@k (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=None, help="head output size (default: MatchConfig's)")
    parser.add_argument("--hidden", type=int, default=None, help="head hidden size, 0 = linear")
    parser.add_argument("--rank", type=int, default=None, help="low-rank residual head of this rank (0 = projection)")
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--batch", type=int, default=None, help="photos per training step")
    parser.add_argument("--towers", choices=("two", "shared"), default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--catalog-negatives", type=int, default=None)
    parser.add_argument("--no-hard-negatives", action="store_true", help="train without the rejected candidates")
    parser.add_argument("--no-rejections", action="store_true", help="train without the rejected photos")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed (default: %(default)s)")
    parser.add_argument("--train-seed", type=int, default=None, help="training seed only (default: --seed)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per embedding pass")
    parser.add_argument("--dataset-dir", default=None, help="Fashion-MNIST directory (default: the loader's search)")
    parser.add_argument(
        "--seen-photos", action="store_true", help="also score new photos of the products verified in training"
    )
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON at the end")
    return parser.parse_args(argv)


# -- data ----------------------------------------------------------------------------------------


def _data_key(args) -> str:
    fields = {
        "version": DATA_VERSION,
        **{
            name: getattr(args, name)
            for name in (
                "backbone",
                "image_size",
                "products",
                "train_matches",
                "train_rejections",
                "test_photos",
                "test_non_product",
                "test_not_in_catalog",
                "seed",
            )
        },
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _build_and_embed(args) -> dict[str, np.ndarray]:
    """Draw the catalog and photos with the demo's generators and embed them (pretrained backbone)."""
    import torch
    from PIL import Image

    from catalog import demo_data
    from mlcore.nn.backbones import backbone_build
    from mlcore.nn.data import eval_transform
    from mlcore.nn.infer import embed_images, model_prepare

    root = demo_data.fashion_mnist_locate(args.dataset_dir, allow_download=False)
    train_x, train_y = demo_data.fashion_mnist_read(root, "train")
    test_x, test_y = demo_data.fashion_mnist_read(root, "test")
    if not 3 <= args.products <= len(train_x):
        raise _common.BenchError(f"--products must be between 3 and {len(train_x)}")
    if args.train_matches + args.test_photos > args.products:
        raise _common.BenchError("--train-matches + --test-photos cannot exceed --products (one photo per product)")
    rng = np.random.default_rng(args.seed)
    catalog = np.sort(rng.choice(len(train_x), size=args.products, replace=False))  # as fashion_mnist_load
    shown = rng.permutation(args.products)[: args.train_matches + args.test_photos]  # product positions
    match_products, test_products = shown[: args.train_matches], shown[args.train_matches :]
    n_nonprod_train = args.train_rejections // 2
    n_out_train = args.train_rejections - n_nonprod_train
    out_images = rng.choice(len(test_x), size=n_out_train + args.test_not_in_catalog, replace=False)
    non_products = demo_data.non_product_photos(rng=rng, count=n_nonprod_train + args.test_non_product)

    def render(images_28):
        return [demo_data.customer_photo_render(image, rng=rng) for image in images_28]

    with _common.Stopwatch() as render_sw:
        photos = {
            "match": render(train_x[catalog[match_products]]),
            "test": render(train_x[catalog[test_products]]),
            "out": render(test_x[out_images]),
            "nonprod": [image for _, image in non_products],
        }
    model, spec = backbone_build(args.backbone)
    device = torch.device("cpu")
    model = model_prepare(model, device)
    transform = eval_transform(image_size_px=args.image_size, mean=spec.mean, std=spec.std)

    def embed(images):
        return embed_images(model, images, transform=transform, batch_size=args.batch_size, device=device)

    with _common.Stopwatch() as products_sw:
        product_emb = embed(Image.fromarray(train_x[i]) for i in catalog)  # the 28×28 "L" image, as stored
    with _common.Stopwatch() as photos_sw:
        emb = {name: embed(images) for name, images in photos.items()}
    photo_count = sum(len(v) for v in photos.values())
    print(
        f"data: rendered {photo_count} photos in {render_sw.seconds:.1f} s; embedded {len(catalog)} products in "
        f"{products_sw.seconds:.1f} s ({len(catalog) / products_sw.seconds:.0f} img/s) and the photos in "
        f"{photos_sw.seconds:.1f} s ({photo_count / photos_sw.seconds:.0f} img/s)"
    )
    out_split = n_out_train
    nonprod_split = n_nonprod_train
    return {
        "product_emb": product_emb,
        "product_label": train_y[catalog],
        "match_emb": emb["match"],
        "match_product": match_products.astype(np.int64),
        "test_emb": emb["test"],
        "test_product": test_products.astype(np.int64),
        "reject_emb": np.concatenate([emb["nonprod"][:nonprod_split], emb["out"][:out_split]]),
        "reject_kind": np.array(["not_a_product"] * nonprod_split + ["not_in_catalog"] * out_split),
        "test_nonprod_emb": emb["nonprod"][nonprod_split:],
        "test_out_emb": emb["out"][out_split:],
        "test_out_label": test_y[out_images[out_split:]],
    }


def data_load(args) -> tuple[dict[str, np.ndarray], bool]:
    """The embedded data for these arguments, from var/bench/match_economy/<key>.npz when cached."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"data-{_data_key(args)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}, True
    data = _build_and_embed(args)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return data, False


def seen_photos_load(args, match_product: np.ndarray) -> np.ndarray:
    """Embeddings (M, D) of new photos of the verified products (one each, in `match_product` order):
    how well the head does on products people already matched. Cached like data_load."""
    path = CACHE_DIR / f"seen-{_data_key(args)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as npz:
            return npz["emb"]
    import torch

    from catalog import demo_data
    from mlcore.nn.backbones import backbone_build
    from mlcore.nn.data import eval_transform
    from mlcore.nn.infer import embed_images, model_prepare

    root = demo_data.fashion_mnist_locate(args.dataset_dir, allow_download=False)
    train_x, _ = demo_data.fashion_mnist_read(root, "train")
    catalog = np.sort(np.random.default_rng(args.seed).choice(len(train_x), size=args.products, replace=False))
    rng = np.random.default_rng([args.seed, 7])  # a stream of its own: new photos, not the training ones
    photos = [demo_data.customer_photo_render(train_x[catalog[p]], rng=rng) for p in match_product]
    model, spec = backbone_build(args.backbone)
    transform = eval_transform(image_size_px=args.image_size, mean=spec.mean, std=spec.std)
    device = torch.device("cpu")
    emb = embed_images(
        model_prepare(model, device), photos, transform=transform, batch_size=args.batch_size, device=device
    )
    np.savez(path.with_suffix(".tmp.npz"), emb=emb)
    os.replace(path.with_suffix(".tmp.npz"), path)
    return emb


# -- evaluation ----------------------------------------------------------------------------------


def _rate(hits: int, n: int) -> dict:
    low, high = _common.wilson_interval(hits, n)
    return {"share": hits / n if n else float("nan"), "hits": int(hits), "n": int(n), "ci95": [low, high]}


def _fmt(rate: dict) -> str:
    low, high = rate["ci95"]
    return f"{rate['share']:.3f} ({rate['hits']}/{rate['n']}; 95% CI {low:.3f}-{high:.3f})"


def _auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos n_neg), ties half: P(a positive scores above a negative)."""
    if not len(positives) or not len(negatives):
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def _evaluate(data, head, *, k: int, max_match_rejection: float, val_emb, val_product) -> dict:
    """Recall and rejection figures of one model (head None = pretrained cosine)."""
    from mlcore.nn.matching import rejection_threshold_fit, topk_scores

    products = data["product_emb"]
    idx, scores = topk_scores(data["test_emb"], products, head, k=k)
    truth = data["test_product"]
    hit1 = int((idx[:, 0] == truth).sum())
    hitk = int((idx == truth[:, None]).any(axis=1).sum())
    cat1 = int((data["product_label"][idx[:, 0]] == data["product_label"][truth]).sum())
    _, val_scores = topk_scores(val_emb, products, head, k=1)
    rule = rejection_threshold_fit(val_scores[:, 0], max_match_rejection=max_match_rejection)
    _, nonprod_scores = topk_scores(data["test_nonprod_emb"], products, head, k=1)
    _, out_scores = topk_scores(data["test_out_emb"], products, head, k=1)
    top1 = scores[:, 0]
    return {
        "recall_at_1": _rate(hit1, len(truth)),
        f"recall_at_{k}": _rate(hitk, len(truth)),
        "category_recall_at_1": _rate(cat1, len(truth)),
        "threshold": rule.threshold,
        "val_matches_rejected": rule.calibration_rejected_share,
        "test_matches_rejected": _rate(int((top1 < rule.threshold).sum()), len(top1)),
        "non_product_rejected": _rate(int((nonprod_scores[:, 0] < rule.threshold).sum()), len(nonprod_scores)),
        "not_in_catalog_rejected": _rate(int((out_scores[:, 0] < rule.threshold).sum()), len(out_scores)),
        "auroc_match_vs_non_product": _auroc(top1, nonprod_scores[:, 0]),
        "auroc_match_vs_not_in_catalog": _auroc(top1, out_scores[:, 0]),
        "top1_mean": {
            "match": float(top1.mean()),
            "non_product": float(nonprod_scores[:, 0].mean()),
            "not_in_catalog": float(out_scores[:, 0].mean()),
        },
    }


def matching_report(args) -> dict:
    """Build (or load) the data, train the head, evaluate before and after; returns every figure.

    Args:
        args: the namespace of parse_args (or one with the same attributes).

    Returns:
        {"args", "data", "before", "after", "training", "config"}; "before"/"after" hold recall@1,
        recall@k, category recall@1 (each {"share", "hits", "n", "ci95"}), the fitted threshold and the
        rejected shares of test photos by kind; "training" holds per-epoch loss and validation recall@1,
        the wall time and throughput.

    Raises:
        BenchError: impossible counts. DatasetError: Fashion-MNIST is missing.
    """
    import torch

    from mlcore.nn.matching import MatchConfig, match_head_train, topk_scores

    torch.set_num_threads(args.threads)
    with _common.Stopwatch() as data_sw:
        data, cached = data_load(args)
    rng = np.random.default_rng(args.seed + 1)

    # Split verified answers into train / validation.
    n_match = len(data["match_emb"])
    match_order = rng.permutation(n_match)
    n_val = int(round(args.val_share * n_match))
    val_m, train_m = match_order[:n_val], match_order[n_val:]
    n_rej = len(data["reject_emb"])
    rej_order = rng.permutation(n_rej)
    n_val_rej = int(round(args.val_share * n_rej))
    val_r, train_r = rej_order[:n_val_rej], rej_order[n_val_rej:]

    # Hard negatives: the pretrained model's top-3 candidates that people did not pick.
    products = data["product_emb"]
    match_top3, _ = topk_scores(data["match_emb"], products, None, k=3)
    reject_top3, _ = topk_scores(data["reject_emb"], products, None, k=3)
    match_hard = [[int(p) for p in row if p != data["match_product"][i]] for i, row in enumerate(match_top3)]
    reject_hard = [[int(p) for p in row] for row in reject_top3]

    photo_emb = data["match_emb"][train_m]
    positives = data["match_product"][train_m]
    hard = [match_hard[i] for i in train_m]
    if not args.no_rejections:
        photo_emb = np.concatenate([photo_emb, data["reject_emb"][train_r]])
        positives = np.concatenate([positives, np.full(len(train_r), -1, np.int64)])
        hard += [reject_hard[i] for i in train_r]
    if args.no_hard_negatives:
        hard = None
    overrides = {
        name: getattr(args, name)
        for name in (
            "dim",
            "hidden",
            "rank",
            "towers",
            "epochs",
            "lr",
            "temperature",
            "catalog_negatives",
            "weight_decay",
        )
        if getattr(args, name) is not None
    }
    if args.batch is not None:
        overrides["batch_size"] = args.batch
    train_seed = args.seed if args.train_seed is None else args.train_seed
    config = MatchConfig(seed=train_seed, **overrides)
    head, training = match_head_train(
        photo_emb,
        products,
        positives,
        hard,
        config,
        val_photo_emb=data["match_emb"][val_m],
        val_positives=data["match_product"][val_m],
    )
    val_emb = data["match_emb"][val_m]
    common = {
        "k": args.k,
        "max_match_rejection": args.max_match_rejection,
        "val_emb": val_emb,
        "val_product": data["match_product"][val_m],
    }
    before = _evaluate(data, None, **common)
    after = _evaluate(data, head, **common)
    if args.seen_photos:
        # New photos of products verified in training (not validation): the case of a returning product.
        seen = seen_photos_load(args, data["match_product"])[train_m]
        seen_truth = data["match_product"][train_m]
        for result, model in ((before, None), (after, head)):
            idx, _ = topk_scores(seen, products, model, k=args.k)
            result["seen_recall_at_1"] = _rate(int((idx[:, 0] == seen_truth).sum()), len(seen_truth))
            result[f"seen_recall_at_{args.k}"] = _rate(
                int((idx == seen_truth[:, None]).any(axis=1).sum()), len(seen_truth)
            )
    return {
        "args": vars(args),
        "config": config.to_dict(),
        "data": {
            "cached": cached,
            "load_s": data_sw.seconds,
            "products": len(products),
            "train_matches": len(train_m),
            "val_matches": len(val_m),
            "train_rejections": 0 if args.no_rejections else len(train_r),
            "val_rejections": len(val_r),
            "test_photos": len(data["test_emb"]),
            "test_non_product": len(data["test_nonprod_emb"]),
            "test_not_in_catalog": len(data["test_out_emb"]),
        },
        "before": before,
        "after": after,
        "training": training,
    }


def report_text(result: dict) -> str:
    k = result["args"]["k"]
    d = result["data"]
    t = result["training"]
    lines = [
        f"data: {d['products']} products; train {d['train_matches']} verified matches + {d['train_rejections']} "
        f"rejections; validation {d['val_matches']} matches; test {d['test_photos']} photos of other catalog "
        f"products, {d['test_non_product']} non-product, {d['test_not_in_catalog']} not-in-catalog "
        f"({'cached' if d['cached'] else 'built'} in {d['load_s']:.1f} s)",
        "",
    ]
    rows = []
    for name, key in (
        ("recall@1", "recall_at_1"),
        (f"recall@{k}", f"recall_at_{k}"),
        ("category recall@1", "category_recall_at_1"),
        ("test matches rejected", "test_matches_rejected"),
        ("non-product rejected", "non_product_rejected"),
        ("not-in-catalog rejected", "not_in_catalog_rejected"),
        ("recall@1, verified products", "seen_recall_at_1"),
        (f"recall@{k}, verified products", f"seen_recall_at_{k}"),
    ):
        if key in result["before"]:
            rows.append([name, _fmt(result["before"][key]), _fmt(result["after"][key])])
    rows.append(
        ["threshold (top-1 cosine)", f"{result['before']['threshold']:.3f}", f"{result['after']['threshold']:.3f}"]
    )
    rows.append(
        [
            "AUROC match vs non-product",
            f"{result['before']['auroc_match_vs_non_product']:.3f}",
            f"{result['after']['auroc_match_vs_non_product']:.3f}",
        ]
    )
    rows.append(
        [
            "AUROC match vs not-in-catalog",
            f"{result['before']['auroc_match_vs_not_in_catalog']:.3f}",
            f"{result['after']['auroc_match_vs_not_in_catalog']:.3f}",
        ]
    )
    lines.append(_common.table(["test set", "pretrained cosine", "fine-tuned head"], rows, align="<<<"))
    lines.append(
        f"threshold fitted on the validation matches for at most {result['args']['max_match_rejection']:.0%} "
        f"rejected (split-conformal quantile)"
    )
    lines.append("")
    epochs = t["epochs"]
    shown = epochs if len(epochs) <= 12 else [e for e in epochs if e["epoch"] in (0, 1, 2, 5) or e["epoch"] % 10 == 0]
    if shown[-1] is not epochs[-1]:
        shown.append(epochs[-1])
    lines.append(
        _common.table(
            ["epoch", "train loss", "val recall@1"],
            [[e["epoch"], f"{e['loss']:.3f}", f"{e['val_recall_at_1']:.3f}"] for e in shown],
        )
    )
    lines.append(
        f"kept epoch {t['best_epoch']}; fine-tune wall time {t['wall_s']:.1f} s for {t['steps']} steps "
        f"({t['photos_per_s']:.0f} photos/s, {t['pairs_per_s'] / 1e3:.0f}k photo-product pairs/s); "
        f"config {result['config']}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(
        f"match_economy: {args.backbone} at {args.image_size} px, seed {args.seed}, torch {torch.__version__} on "
        f"cpu ({platform.machine()}, {torch.get_num_threads()} threads), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    started = time.perf_counter()
    result = matching_report(args)
    print(report_text(result))
    print(f"total {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except _common.BenchError as exc:
        print(f"match_economy: {exc}", file=sys.stderr)
        sys.exit(2)
