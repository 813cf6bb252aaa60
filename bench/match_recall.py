"""How good are the model's suggestions on the Fashion-MNIST demo data, and how fast is embedding?

Loads the demo catalog and photo queue (catalog.fashion_mnist.fashion_mnist_load) into a fresh
database, embeds products and photos with a pretrained backbone by calling the mlcore services
in-process (embedding_run_create + embedding_run_execute, no Celery: this measures the model, not
the app's job queue), takes the top-k products of every photo (mlcore.services.photos_topk_products)
and compares them with the truth kept in catalog.models.DemoPhotoTruth.

Prints, per image size:
- recall@1 and recall@k over in-catalog photos (the true product is the top-1 / among the top k),
  with 95% Wilson intervals;
- category recall@1: the top-1 product has the photo's Fashion-MNIST class (for in-catalog
  photos, and for not-in-catalog photos, whose class is known too). A product's class is the
  training label of the Fashion-MNIST image it was made from: its SKU carries that image's index
  ("NW-01234"); it is checked against the product's master category where it has one;
- the top-1 cosine similarity by photo kind (in-catalog, not-in-catalog, non-product), with the
  AUROC of "in-catalog vs. the rest" by that score: how well a rejection threshold could work;
- embedding throughput for products and photos, both EmbeddingRun.images_per_s (the service's
  own figure) and images / wall-clock seconds of embedding_run_execute.

Run (about 2.5 minutes for the defaults on an idle 2-core CPU, of which the data load is ~1 minute):

    .venv/bin/python bench/match_recall.py
    .venv/bin/python bench/match_recall.py --products 1000 --photos 200 --photos-not-in-catalog 50
    .venv/bin/python bench/match_recall.py --image-size 96,128,224
    .venv/bin/python bench/match_recall.py --database-url postgres://fitcheck@127.0.0.1:55432/fitcheck_bench

State lives in var/bench/match_recall/ (wiped at start) or in the --database-url database
(dropped and recreated; its name must contain "bench").
"""

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (bench/ is not a package; _common then puts the repository on sys.path)

IMAGE_SIZES = _common.int_list(low=16, high=1024, what="image sizes (px)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Recall@k of the pretrained embedding's suggestions on the Fashion-MNIST demo data, "
        "and embedding throughput. Uses a throwaway database (var/bench/match_recall/).",
    )
    parser.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="a name from mlcore.nn.backbones.BACKBONES (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=IMAGE_SIZES,
        default=[96],
        metavar="PX[,PX...]",
        help="network input side in px (default: 96); several, e.g. 96,128,224, are compared on the same data",
    )
    parser.add_argument("--weights", default="", help="local weights file (torchvision backbones need one)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--products", type=int, default=10_000, help="catalog products (default: %(default)s)")
    parser.add_argument("--photos", type=int, default=1_000, help="photos of catalog products (default: %(default)s)")
    parser.add_argument(
        "--photos-not-in-catalog",
        type=int,
        default=300,
        help="photos of products from the test split (default: %(default)s)",
    )
    parser.add_argument(
        "--photos-non-product", type=int, default=24, help="photos of no product (default: %(default)s)"
    )
    parser.add_argument(
        "--k", type=int, default=3, help="the k of recall@k; recall@1 is always printed (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="data seed for fashion_mnist_load (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--dataset-dir", default=None, help="Fashion-MNIST directory (default: the loader's search)")
    parser.add_argument(
        "--train",
        action="store_true",
        help="also train the matching CNN (stage 1 from the catalog, stage 2 from verified matches) "
        "and report it on the demo photos and on the second generator (bench/_photos_alt.py)",
    )
    parser.add_argument("--skip-pretrained", action="store_true", help="with --train: skip the pretrained backbone")
    parser.add_argument(
        "--train-matches",
        type=int,
        default=1_000,
        help="stage 2: verified matches, photos of products with no test photo (default: %(default)s)",
    )
    parser.add_argument(
        "--train-rejections",
        type=int,
        default=300,
        help="stage 2: photos answered none / not a product (default: %(default)s)",
    )
    parser.add_argument("--stage1-epochs", type=int, default=24, help="default: %(default)s, as the app's")
    parser.add_argument(
        "--echo",
        type=int,
        default=4,
        help="epochs per drawn view set (MatchCNNConfig.echo; default: %(default)s, as the app's)",
    )
    parser.add_argument("--stage2-epochs", type=int, default=4, help="default: %(default)s")
    parser.add_argument(
        "--no-localise",
        action="store_true",
        help="with --train: no product localiser after stage 1 (photos embedded whole, as before)",
    )
    parser.add_argument(
        "--localiser-views", type=int, default=6000, help="localiser views per set (default: %(default)s)"
    )
    parser.add_argument("--matte-views", type=int, default=6000, help="matte views per set (default: %(default)s)")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="with --train: no geometric verification (mlcore.nn.verify) of the shortlist",
    )
    parser.add_argument(
        "--no-pair",
        action="store_true",
        help="with --train: geometric verification without the learned pair verifier (three terms)",
    )
    parser.add_argument("--pair-views", type=int, default=3000, help="pair verifier views (default: %(default)s)")
    parser.add_argument("--pair-epochs", type=int, default=12, help="pair verifier epochs (default: %(default)s)")
    parser.add_argument(
        "--train-config",
        default="",
        help="JSON overrides of mlcore.nn.match_cnn.MatchCNNConfig, e.g. '{\"image_size_px\": 40}'",
    )
    parser.add_argument("--device", default="auto", help="training device: auto, cpu, cuda (default: %(default)s)")
    parser.add_argument("--alt-size", type=int, default=96, help="second generator's photo side in px")
    parser.add_argument(
        "--database-url",
        default=None,
        help="run on this database (dropped and recreated; name must contain 'bench') instead of SQLite",
    )
    return parser.parse_args(argv)


def _auroc(positives: list[float], negatives: list[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counting half
    (Mann-Whitney U / (n_pos * n_neg)); nan when a side is empty."""
    import numpy as np

    if not positives or not negatives:
        return float("nan")
    pos, neg = np.asarray(positives), np.asarray(negatives)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def _product_classes(dataset_dir: str | None) -> dict[int, int]:
    """{product id: Fashion-MNIST class} from the training image index in the SKU, cross-checked
    against the master category where the product has one."""
    from catalog import demo_data
    from catalog.fashion_mnist import MASTER_PATHS
    from catalog.models import Product

    root = demo_data.fashion_mnist_locate(dataset_dir, allow_download=False)
    _, train_y = demo_data.fashion_mnist_read(root, "train")
    label_of_path = {path: label for label, path in enumerate(MASTER_PATHS)}
    classes, mismatches = {}, 0
    for pk, sku, master_path in Product.objects.values_list("pk", "sku", "master_category__path"):
        label = int(train_y[int(sku.rsplit("-", 1)[1])])
        if master_path is not None and label_of_path.get(master_path) != label:
            mismatches += 1
        classes[pk] = label
    if mismatches:
        print(f"warning: {mismatches} products' master category disagrees with their Fashion-MNIST label")
    return classes


def _embed(version, target: str) -> dict:
    """Run one embedding run in-process; returns its counts and throughput figures."""
    from mlcore import services as ml
    from mlcore.models import EmbeddingRun

    run = ml.embedding_run_create(version=version, target=target)
    started = time.perf_counter()
    run = ml.embedding_run_execute(run_id=run.pk)
    wall_s = time.perf_counter() - started
    if run.status != EmbeddingRun.Status.DONE:
        raise _common.BenchError(f"embedding run {run.uuid} ended {run.status}: {run.error}")
    return {
        "target": target,
        "count": run.done_count,
        "skipped": run.skipped_count,
        "wall_s": wall_s,
        "run_images_per_s": run.images_per_s or 0.0,
        "wall_images_per_s": run.done_count / wall_s if wall_s else float("nan"),
    }


def evaluate(*, backbone: str, image_size_px: int, args, product_class: dict[int, int]) -> dict:
    """Embed everything with (backbone, image_size_px) and score the top-k suggestions."""
    from PIL import Image

    from catalog.models import DemoPhotoTruth
    from mlcore import services as ml
    from mlcore.nn.config import EmbedConfig

    config = EmbedConfig(
        backbone=backbone, image_size_px=image_size_px, batch_size=args.batch_size, weights_path=args.weights
    )
    version = ml.model_version_ensure(config=config)

    # Load the network once before timing, so the throughput figures are steady-state ones.
    started = time.perf_counter()
    ml.images_embed(version=version, images=[Image.new("RGB", (28, 28))])
    load_s = time.perf_counter() - started

    products = _embed(version, "products")
    photos = _embed(version, "photos")
    load_average = os.getloadavg()[0]  # other processes on the machine slow the embedding figures

    truths = list(DemoPhotoTruth.objects.values_list("photo_id", "kind", "product_id", "source_label"))
    started = time.perf_counter()
    topk = ml.photos_topk_products(version=version, photo_ids=[t[0] for t in truths], k=args.k)
    topk_s = time.perf_counter() - started

    hits1 = hitsk = cat_in = cat_out = n_in = n_out = missing = 0
    top1_by_kind: dict[str, list[float]] = defaultdict(list)
    for photo_id, kind, product_id, source_label in truths:
        suggestions = topk.get(photo_id)
        if not suggestions:
            missing += 1
            continue
        top_product, top_score = suggestions[0]
        top1_by_kind[kind].append(top_score)
        if kind == DemoPhotoTruth.Kind.IN_CATALOG:
            n_in += 1
            hits1 += top_product == product_id
            hitsk += product_id in {p for p, _ in suggestions}
            cat_in += product_class[top_product] == source_label
        elif kind == DemoPhotoTruth.Kind.NOT_IN_CATALOG:
            n_out += 1
            cat_out += product_class[top_product] == source_label
    rest = top1_by_kind[DemoPhotoTruth.Kind.NOT_IN_CATALOG] + top1_by_kind[DemoPhotoTruth.Kind.NOT_A_PRODUCT]
    return {
        "image_size_px": image_size_px,
        "version": version.name,
        "load_s": load_s,
        "load_average": load_average,
        "products": products,
        "photos": photos,
        "topk_s": topk_s,
        "n_in": n_in,
        "n_out": n_out,
        "hits1": hits1,
        "hitsk": hitsk,
        "cat_in": cat_in,
        "cat_out": cat_out,
        "missing": missing,
        "top1_by_kind": top1_by_kind,
        "auroc": _auroc(top1_by_kind[DemoPhotoTruth.Kind.IN_CATALOG], rest),
    }


def _rate(hits: int, n: int) -> str:
    low, high = _common.wilson_interval(hits, n)
    share = hits / n if n else float("nan")
    return f"{share:.3f} ({hits}/{n}; 95% CI {low:.3f}-{high:.3f})"


def report(result: dict, *, k: int) -> str:
    import numpy as np

    from catalog.models import DemoPhotoTruth

    lines = [
        f"== {result['version']} ==",
        f"recall@1            {_rate(result['hits1'], result['n_in'])}",
        f"recall@{k:<12} {_rate(result['hitsk'], result['n_in'])}",
        f"category recall@1   {_rate(result['cat_in'], result['n_in'])}   in-catalog photos",
        f"category recall@1   {_rate(result['cat_out'], result['n_out'])}   not-in-catalog photos",
    ]
    if result["missing"]:
        lines.append(f"photos without suggestions: {result['missing']}")
    lines.append("")
    rows = []
    for kind in DemoPhotoTruth.Kind:
        scores = result["top1_by_kind"].get(kind.value, [])
        if scores:
            a = np.asarray(scores)
            rows.append(
                [
                    kind.value,
                    len(a),
                    f"{a.mean():.3f}",
                    f"{a.std():.3f}",
                    f"{np.percentile(a, 5):.3f}",
                    f"{np.median(a):.3f}",
                    f"{np.percentile(a, 95):.3f}",
                ]
            )
        else:
            rows.append([kind.value, 0, "-", "-", "-", "-", "-"])
    lines.append(_common.table(["top-1 cosine", "photos", "mean", "sd", "p5", "p50", "p95"], rows))
    lines.append(f"AUROC in-catalog vs. rest by top-1 cosine: {result['auroc']:.3f}")
    lines.append("")
    rows = [
        [
            r["target"],
            r["count"],
            r["skipped"],
            f"{r['wall_s']:.1f}",
            f"{r['run_images_per_s']:.1f}",
            f"{r['wall_images_per_s']:.1f}",
        ]
        for r in (result["products"], result["photos"])
    ]
    lines.append(_common.table(["embedding", "images", "skipped", "wall s", "run img/s", "wall img/s"], rows))
    lines.append(
        f"model load {result['load_s']:.1f} s; top-{k} for all photos {result['topk_s'] * 1000:.0f} ms; "
        f"load average after embedding {result['load_average']:.2f}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.bench_environment("match_recall", database_url=args.database_url)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    vendor = _common.django_ready()

    import platform

    import torch
    from django.conf import settings

    from catalog.fashion_mnist import fashion_mnist_load
    from mlcore.nn.infer import device_resolve

    print(
        f"match_recall: backbone {args.backbone}, image size(s) {','.join(map(str, args.image_size))} px, "
        f"database {_common.database_label(args.database_url)} ({vendor}), "
        f"torch {torch.__version__} on {device_resolve(settings.FITCHECK_DEVICE)} ({platform.machine()}, "
        f"{torch.get_num_threads()} threads), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    with _common.Stopwatch() as load:
        loaded = fashion_mnist_load(
            directory=args.dataset_dir,
            product_count=args.products,
            photo_in_catalog_count=args.photos,
            photo_not_in_catalog_count=args.photos_not_in_catalog,
            photo_non_product_count=args.photos_non_product,
            seed=args.seed,
            allow_download=False,
        )
    print(
        f"data: {loaded.product_count} products, photos: {loaded.photo_in_catalog_count} in catalog, "
        f"{loaded.photo_not_in_catalog_count} not in catalog, {loaded.photo_non_product_count} non-product "
        f"(seed {args.seed}; loaded in {load.seconds:.1f} s)\n"
    )
    product_class = _product_classes(args.dataset_dir)
    results = []
    for size in [] if (args.train and args.skip_pretrained) else args.image_size:
        result = evaluate(backbone=args.backbone, image_size_px=size, args=args, product_class=product_class)
        results.append(result)
        print(report(result, k=args.k), end="\n\n", flush=True)
    if len(results) > 1:
        rows = [
            [
                f"{r['image_size_px']} px",
                f"{r['hits1'] / r['n_in']:.3f}",
                f"{r['hitsk'] / r['n_in']:.3f}",
                f"{r['cat_in'] / r['n_in']:.3f}",
                f"{r['auroc']:.3f}",
                f"{r['products']['wall_images_per_s']:.1f}",
                f"{r['photos']['wall_images_per_s']:.1f}",
            ]
            for r in results
        ]
        print(
            _common.table(
                [
                    "image size",
                    "recall@1",
                    f"recall@{args.k}",
                    "cat. recall@1",
                    "AUROC",
                    "products img/s",
                    "photos img/s",
                ],
                rows,
            )
        )
        print()
    if args.train:
        import _match_train

        _match_train.stages_run(args, product_class)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except _common.BenchError as exc:
        print(f"match_recall: {exc}", file=sys.stderr)
        sys.exit(2)
