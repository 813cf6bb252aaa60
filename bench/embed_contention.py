"""Embedding throughput on a CPU that other processes keep busy: fixed thread counts vs CpuThreads.

The demo embeds the catalog while its setup generates photos on one of the machine's cores
(issue 16). torch's intra-op threads then wait at every operator for a core they rarely get. This
bench embeds --products Fashion-MNIST catalog images (decoded once, as the embedding run does) with
EfficientNet-Lite0, once per (busy processes, threads) pair, where "busy" processes are `while True:
pass` loops started beside it and "threads" is 1, torch's default, or "auto": the thread count
mlcore.nn.infer.CpuThreads picks before each chunk of 256 images, as an embedding run does.

    .venv/bin/python bench/embed_contention.py                  # 1,024 products, 96 px, 0 and 1 busy processes
    .venv/bin/python bench/embed_contention.py --busy 0 1 2 --image-size 64

It prints images/s per pair and the load average before and after. Timings are the machine's own:
run it on an otherwise idle machine.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

CHUNK = 256  # images per chunk, as mlcore.services.embedding_run_execute's default


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=1_024, help="catalog images (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=96, help="network input side in px (default: %(default)s)")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1],
                        help="busy-loop processes beside the embedding, one run each (default: 0 1)")
    args = parser.parse_args(argv)
    if args.products < CHUNK or min(args.busy) < 0:
        parser.error(f"--products must be >= {CHUNK} and --busy >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.bench_environment("embed_contention")
    _common.django_ready()

    import torch

    from catalog.fashion_mnist import fashion_mnist_load
    from catalog.models import Product
    from mlcore import services as ml
    from mlcore.nn.config import EmbedConfig
    from mlcore.nn.infer import CpuThreads, embed_images

    fashion_mnist_load(product_count=args.products, photo_in_catalog_count=0, photo_not_in_catalog_count=0,
                       photo_non_product_count=0, allow_download=False)
    version = ml.model_version_ensure(config=EmbedConfig(image_size_px=args.image_size))
    model, transform, device = ml._model_for(version)
    products = Product.objects.filter(is_active=True).order_by("pk").prefetch_related("images")
    images = [ml._open_image(ml._image_field(p)) for p in products]
    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()

    def embed(threads) -> tuple[float, list[int]]:
        chooser = CpuThreads(default_threads) if threads == "auto" else None
        if chooser:
            time.sleep(0.15)  # a first reading, as a run's spans the network's loading
        chosen = []
        started = time.perf_counter()
        for start in range(0, len(images), CHUNK):
            torch.set_num_threads(chooser() if chooser else threads)
            chosen.append(torch.get_num_threads())
            embed_images(model, images[start : start + CHUNK], transform=transform,
                         batch_size=version.config.get("batch_size", EmbedConfig.batch_size), device=device)
        torch.set_num_threads(default_threads)
        return len(images) / (time.perf_counter() - started), chosen

    embed(default_threads)  # warm-up: allocator, first-call costs
    rows = []
    for busy in args.busy:
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(0.5)
            for threads in dict.fromkeys([1, default_threads, "auto"]):
                rate, chosen = embed(threads)
                picked = ", ".join(str(n) for n in sorted(set(chosen)))
                label = f"auto (chose {picked})" if threads == "auto" else threads
                rows.append([busy, label, f"{rate:.0f}"])
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
    print(f"EfficientNet-Lite0 at {args.image_size} px, {len(images):,} images in chunks of {CHUNK}, "
          f"{os.cpu_count()} CPUs, torch default {default_threads} threads, "
          f"load {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(_common.table(["busy processes", "threads", "images/s"], rows, align="<<>"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
