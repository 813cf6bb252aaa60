"""Which generated views train the matching CNN best? A quick stage-1 comparison on a subset.

No database: products are --products Fashion-MNIST training images (a fixed random draw), the test
photos are one demo-generator photo (catalog.demo_data.customer_photo_render, 96 px) and one
second-generator photo (bench/_photos_alt.py, 96 px) of each of --test of those products. Trains
stage 1 (mlcore.nn.match_cnn.Trainer) for --epochs with the view family and repaint share asked
for, and prints recall@1, recall@3 and category@1 on both generators every quarter of the run;
at the end also with the product's test-time crops (mlcore.nn.match_cnn.photos_embed: one vector
per photo, the mean over the whole photo and its centre and corner crops at 90% and 80%).

    .venv/bin/python bench/match_views.py --views hard --repaint 0      # the earlier recipe
    .venv/bin/python bench/match_views.py --views photo --repaint 0.7   # fresh views, 16 epochs
    .venv/bin/python bench/match_views.py --epochs 96 --echo 6 --workers 2 --threads 2  # data echoing
The 16-epoch runs take about 6 min idle (25 min under load ~4-8) at 2,000 products on the 2-core
CPU; the echo run about 20 min idle.
The generators never reach training: they only make the test photos.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _score(scores, truth, labels):
    idx = scores.topk(3, dim=1).indices
    return (
        float((idx[:, 0] == truth).float().mean()),
        float((idx == truth[:, None]).any(1).float().mean()),
        float((labels[idx[:, 0]] == labels[truth]).float().mean()),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500, help="test products (one photo per generator)")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--views", default="photo", choices=["photo", "hard"])
    parser.add_argument("--repaint", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=7, help="data seed (default: %(default)s)")
    parser.add_argument("--echo", type=int, default=1, help="MatchCNNConfig.echo (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="view-generating DataLoader workers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)

    import _photos_alt
    import numpy as np
    import torch

    from catalog import demo_data
    from mlcore.nn import match_cnn as mc

    torch.set_num_threads(args.threads)
    x, y = demo_data.fashion_mnist_read(demo_data.fashion_mnist_locate(None, allow_download=False), "train")
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(len(x), args.products, replace=False)
    test = torch.from_numpy(rng.choice(args.products, args.test, replace=False))
    started = time.perf_counter()
    photos = {
        "demo": [np.asarray(demo_data.customer_photo_render(x[rows[i]], rng=rng, size_px=96).convert("L"))
                 for i in test.tolist()],
        "second": [np.asarray(im.convert("L"))
                   for im in _photos_alt.photos_alt_for(x[rows[test.numpy()]], seed=args.seed + 4, size_px=96)],
    }
    photos = {k: torch.from_numpy(np.stack(v))[:, None].contiguous() for k, v in photos.items()}
    print(f"{args.products} products, {args.test} photos per generator, rendered in "
          f"{time.perf_counter() - started:.0f} s; views {args.views}, repaint {args.repaint}")
    products = torch.from_numpy(x[rows])[:, None].contiguous()
    labels = torch.from_numpy(y[rows].astype(np.int64))
    config = mc.MatchCNNConfig(
        epochs=args.epochs, views=args.views, repaint=args.repaint, echo=args.echo, workers=args.workers
    )
    trainer = mc.Trainer(
        mc.MatchData(products=products, category_mask=torch.nn.functional.one_hot(labels, 10).bool()),
        config, device=torch.device("cpu"),
    )
    cpu = torch.device("cpu")

    def report(tag, *, crops=False):
        catalog = mc.images_embed(trainer.model, products, config, device=cpu)
        line = []
        for name, images in photos.items():
            scores = mc.images_embed(trainer.model, images, config, device=cpu) @ catalog.T
            r1, r3, c1 = _score(scores, test, labels)
            line.append(f"{name}: recall@1 {r1:.3f} recall@3 {r3:.3f} category@1 {c1:.3f}")
            if crops:
                scores = mc.photos_embed(trainer.model, images, config, device=cpu) @ catalog.T
                r1, r3, c1 = _score(scores, test, labels)
                line.append(f"{name} test-time crops: recall@1 {r1:.3f} recall@3 {r3:.3f} category@1 {c1:.3f}")
        print(f"{tag}: " + "; ".join(line), flush=True)

    report("epoch 0")
    started = time.perf_counter()
    while trainer.epoch < args.epochs:
        row = trainer.train_one_epoch()
        print(f"epoch {trainer.epoch}: instance loss {row['instance_loss']:.2f}, category loss "
              f"{row['category_loss']:.2f}, {row['seconds']:.0f} s", flush=True)
        if trainer.epoch % max(1, args.epochs // 4) == 0 and trainer.epoch < args.epochs:
            report(f"epoch {trainer.epoch}")
    report(f"epoch {trainer.epoch}", crops=True)
    print(f"training: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
