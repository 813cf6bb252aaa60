"""Prototype (2026-12-08): a stage-1 matching CNN on a 2,000-product Fashion-MNIST subset, with its
localiser and matte, and its test photos, saved for bench/pair_verifier.py. No database.

Products: a fixed draw (seed 7) of 2,000 Fashion-MNIST training images; test photos, 96 px: one
demo-generator photo and one second-generator photo (bench/_photos_alt.py) of each of 500 of them,
and 300 of each generator of training images outside the subset (not-in-catalog). Stage 1 is the
app's recipe (MatchCNNConfig(epochs=24, echo=4)), then the localiser and the matte on 6,000 views
per set. About 10 min idle on the 2 cores (30 min beside a demo).

    .venv/bin/python bench/verify_subset.py OUT_DIR   # writes OUT_DIR/sub.pt and OUT_DIR/sub_data.pt
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
import _photos_alt
import numpy as np
import torch

from catalog import demo_data
from mlcore.nn import localise as loc
from mlcore.nn import match_cnn as mc
from mlcore.nn import verify

torch.set_num_threads(2)
x, y = demo_data.fashion_mnist_read(demo_data.fashion_mnist_locate(None, allow_download=False), "train")
rng = np.random.default_rng(7)
rows = rng.choice(len(x), 2000, replace=False)
test = rng.choice(2000, 500, replace=False)
outside = np.setdiff1d(np.arange(len(x)), rows)
out_rows = rng.choice(outside, 600, replace=False)


def L(ims):
    return torch.from_numpy(np.stack([np.asarray(im.convert("L")) for im in ims]))[:, None].contiguous()


data = {
    "products": torch.from_numpy(x[rows])[:, None].contiguous(),
    "labels": torch.from_numpy(y[rows].astype(np.int64)),
    "test": torch.from_numpy(test),
    "demo_in": L([demo_data.customer_photo_render(x[rows[i]], rng=rng, size_px=96) for i in test]),
    "demo_out": L([demo_data.customer_photo_render(x[i], rng=rng, size_px=96) for i in out_rows[:300]]),
    "alt_in": L(_photos_alt.photos_alt_for(x[rows[test]], seed=11, size_px=96)),
    "alt_out": L(_photos_alt.photos_alt_for(x[out_rows[300:]], seed=12, size_px=96)),
}
torch.save(data, out / "sub_data.pt")
print("data saved", flush=True)
config = mc.MatchCNNConfig(epochs=24, echo=4)
cd = mc.MatchData(products=data["products"], category_mask=torch.nn.functional.one_hot(data["labels"], 10).bool())
t = mc.Trainer(cd, config, device=torch.device("cpu"))
s = time.perf_counter()
t.fit(on_epoch=lambda r, tr: print("epoch", r["epoch"], round(r["loss"], 3), flush=True))
print("cnn", time.perf_counter() - s, flush=True)
s = time.perf_counter()
t.model.localiser, _ = loc.localiser_fit(cd.products, loc.LocaliserConfig(views=6000), grayscale=True)
print("localiser", time.perf_counter() - s, flush=True)
s = time.perf_counter()
t.model.matte, _ = verify.matte_fit(cd.products, verify.MatteConfig(views=6000), grayscale=True)
print("matte", time.perf_counter() - s, flush=True)
mc.match_cnn_save(t.model, config, out / "sub.pt")
print("saved", flush=True)
