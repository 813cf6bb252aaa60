"""Embedding inside the Celery task vs the bare model, in one run (issue 13, item 7: ≥ 90%).

Loads a Fashion-MNIST catalog (catalog.fashion_mnist.fashion_mnist_load, no photos) into a fresh
database under var/bench/embed_throughput/, then measures, in this order:

1. **bare model**: the network alone on images already decoded, resized and stacked into tensors
   (batches of --batch-size, inference mode), images/s of the forward passes only;
2. **bare pipeline**: the same images opened from storage, decoded, transformed and embedded with
   mlcore.nn.infer.embed_images in this process (what the task does, minus the database);
3. **the Celery task**: an EmbeddingRun of the products sent as `mlcore.embed` to a real
   `celery worker -Q gpu --pool solo` process (SQLite-file broker, as `make demo`), polled until
   DONE. Two figures: EmbeddingRun.images_per_s (the task's own clock, started after the model is
   loaded) and products / wall-clock seconds from send to DONE (includes the worker's model load
   and the broker's polling);
4. the bare model again, so that a change in the machine's load between 1 and 3 shows.

The ratio printed is the task's images_per_s over the mean of the two bare-model figures. Both
run in one process tree, one after the other, so they see about the same load; the load average
is printed before and after.

    .venv/bin/python bench/embed_throughput.py                       # 2,000 products, EfficientNet-Lite0 at 96 px
    .venv/bin/python bench/embed_throughput.py --products 5000 --image-size 224
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=2_000, help="catalog products (default: %(default)s)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="default: %(default)s")
    parser.add_argument("--image-size", type=int, default=96, help="network input side in px (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads here (default: torch's choice)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for the task (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.products < 1 or args.batch_size < 1:
        parser.error("--products and --batch-size must be positive")
    return args


def _bare_model(model, tensors, *, batch_size: int, device) -> float:
    """images/s of forward passes over pre-made (N, 3, S, S) float32 inputs."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(tensors), batch_size):
            model(tensors[start : start + batch_size].to(device))
    return len(tensors) / (time.perf_counter() - started)


def _worker(env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 (kept open for the child; closed at exit)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu", "--pool", "solo",
         "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        cwd=_common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    env = _common.bench_environment("embed_throughput")
    var_dir = Path(env["FITCHECK_VAR_DIR"])
    broker = f"sqla+sqlite:///{var_dir / 'broker.sqlite3'}"
    os.environ["CELERY_BROKER_URL"] = broker
    env = dict(os.environ, FITCHECK_DEVICE="cpu", PYTHONUNBUFFERED="1")
    _common.django_ready()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from catalog.fashion_mnist import fashion_mnist_load
    from catalog.models import Product
    from mlcore import services as ml
    from mlcore.models import EmbeddingRun
    from mlcore.nn.config import EmbedConfig
    from mlcore.nn.infer import embed_images
    from mlcore.tasks import embed_run_task

    load_before = os.getloadavg()
    started = time.perf_counter()
    fashion_mnist_load(product_count=args.products, photo_in_catalog_count=0, photo_not_in_catalog_count=0,
                       photo_non_product_count=0, allow_download=False)
    print(f"catalog: {Product.objects.count():,} products loaded in {time.perf_counter() - started:.0f} s")

    version = ml.model_version_ensure(
        config=EmbedConfig(backbone=args.backbone, image_size_px=args.image_size, batch_size=args.batch_size)
    )
    model, transform, device = ml._model_for(version)
    products = list(Product.objects.filter(is_active=True).order_by("pk").prefetch_related("images"))
    fields = [ml._image_field(p) for p in products]
    images = [ml._open_image(f) for f in fields]
    tensors = torch.stack([transform(im) for im in images])
    _bare_model(model, tensors[: args.batch_size], batch_size=args.batch_size, device=device)  # warm-up

    bare_1 = _bare_model(model, tensors, batch_size=args.batch_size, device=device)
    started = time.perf_counter()
    embed_images(model, [ml._open_image(f) for f in fields], transform=transform, batch_size=args.batch_size,
                 device=device)
    pipeline = len(fields) / (time.perf_counter() - started)

    worker = _worker(env, var_dir / "worker.log")
    try:
        run = ml.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
        sent = time.perf_counter()
        embed_run_task.delay(run.pk)
        while True:
            run.refresh_from_db()
            if run.status in (EmbeddingRun.Status.DONE, EmbeddingRun.Status.FAILED):
                break
            if worker.poll() is not None:
                raise _common.BenchError(f"the worker exited ({worker.returncode}); see {var_dir / 'worker.log'}")
            if time.perf_counter() - sent > args.timeout:
                raise _common.BenchError(f"the task did not finish in {args.timeout:.0f} s")
            time.sleep(0.2)
        wall = time.perf_counter() - sent
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    if run.status != EmbeddingRun.Status.DONE:
        raise _common.BenchError(f"embedding run ended {run.status}: {run.error}")
    bare_2 = _bare_model(model, tensors, batch_size=args.batch_size, device=device)
    load_after = os.getloadavg()
    bare = (bare_1 + bare_2) / 2

    print(f"model {version.name}, {args.image_size} px, batch {args.batch_size}, device {device}, "
          f"torch threads here {torch.get_num_threads()}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores)")
    rows = [
        ["bare model (forward passes only), before", f"{bare_1:,.0f}", ""],
        ["bare pipeline (decode + transform + forward, in-process)", f"{pipeline:,.0f}", f"{pipeline / bare:.2f}"],
        ["Celery task, EmbeddingRun.images_per_s", f"{run.images_per_s:,.0f}", f"{run.images_per_s / bare:.2f}"],
        ["Celery task, send to DONE (wall clock)", f"{run.done_count / wall:,.0f}",
         f"{run.done_count / wall / bare:.2f}"],
        ["bare model (forward passes only), after", f"{bare_2:,.0f}", ""],
    ]
    print(_common.table(["what", "images/s", "÷ bare model"], rows, align="<>>"))
    print(f"target: the task's images_per_s ≥ 0.90 × the bare model's: "
          f"{'met' if run.images_per_s >= 0.9 * bare else 'MISSED'} ({run.images_per_s / bare:.2f})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except _common.BenchError as exc:
        print(f"bench/embed_throughput.py: {exc}", file=sys.stderr)
        sys.exit(2)
