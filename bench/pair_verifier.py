"""Prototype (2026-12-08) of the learned pair verifier over aligned pairs, against geometric
verification's 3-term fusion (mlcore.nn.verify.rerank). The product's version, the same network
and recipe, is mlcore.nn.verify.PairVerifier / pair_fit; this script keeps the subset comparison
that chose it.

Each (photo, candidate) pair is aligned as mlcore.nn.verify.align does; a small CNN (6 conv + GroupNorm
+ ReLU, 16-64 channels) reads the photo's matte and intensity, the warped candidate's mask and
intensity, and their masked difference (5 × 48 × 48) and gives a logit. It is trained listwise
(softmax cross-entropy over each view's 20 candidates, its own product the target) on 3,000
"photo" CatalogViews of the catalog (repaint 0.7), whose candidates are the CNN's top 20: no photo
generator is read. 6 epochs. Tested on the CNN's top 60 of the subset's 500 demo and 500
second-generator photos. Figures: docs/matching.md, "A learned pair verifier".

    .venv/bin/python bench/verify_subset.py OUT_DIR
    .venv/bin/python bench/pair_verifier.py OUT_DIR [EPOCHS]   # 6 epochs: about 45 min beside a demo
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
out = Path(sys.argv[1])
import numpy as np
import torch
import torch.nn.functional as F

from mlcore.nn import match_cnn as mc
from mlcore.nn import verify
from mlcore.nn.views import CatalogViews

torch.set_num_threads(2)
cpu = torch.device("cpu")
model, config, _, _ = mc.match_cnn_load(out / "sub.pt")
d = torch.load(out / "sub_data.pt")
products = d["products"]
catalog = mc.images_embed(model, products, config, device=cpu)
sil = verify.silhouettes(products)


def pairs_of(photos, k, own=None):
    z = mc.photos_embed(model, photos, config, device=cpu)
    idx, cos = mc.topk_search(z, catalog, k=k)
    if own is not None:
        has = (idx == own[:, None]).any(1)
        idx[~has, -1] = own[~has]
        cos[~has, -1] = (z[~has] * catalog[own[~has]]).sum(1)
    matted = verify.photos_matted(model, photos)
    q = len(idx)
    cand = sil[idx.reshape(-1)].float()
    flat_photo = matted[:, None].expand(-1, k, -1, -1, -1).reshape(q * k, 2, 48, 48)
    warped, ious, nccs = [], [], []
    for s in range(0, q * k, 1500):
        part = cand[s : s + 1500]
        iou, ncc, theta = verify.align(flat_photo[s : s + 1500], part, return_warp=True)
        grid = F.affine_grid(theta, (len(part), 1, 48, 48), align_corners=False)
        warped.append(F.grid_sample(part, grid, align_corners=False).half())
        ious.append(iou)
        nccs.append(ncc)
    return {
        "idx": idx,
        "cos": cos,
        "matted": matted.half(),
        "warped": torch.cat(warped).view(q, k, 2, 48, 48),
        "iou": torch.cat(ious).view(q, k),
        "ncc": torch.cat(nccs).view(q, k),
    }


t = time.perf_counter()
if (out / "pair_train.pt").exists():
    tr = torch.load(out / "pair_train.pt")
else:
    views = CatalogViews(
        products, size_px=96, grayscale=True, seed=999, repaint=0.7, style="photo", zoom_out=(1.0, 2.0)
    )
    g = torch.Generator().manual_seed(5)
    own = torch.randint(len(products), (3000,), generator=g)
    photos = []
    for n, i in enumerate(own.tolist()):
        views.epoch = n // len(products)
        photos.append((views.view_and_mask(i)[0] * 255).round().to(torch.uint8))
    tr = pairs_of(torch.stack(photos), 20, own=own)
    tr["own"] = own
    torch.save(tr, out / "pair_train.pt")
print("train pairs", time.perf_counter() - t, flush=True)
t = time.perf_counter()
if (out / "pair_test.pt").exists():
    te = torch.load(out / "pair_test.pt")
else:
    te = {name: pairs_of(d[name], 60) for name in ("demo_in", "alt_in")}
    torch.save(te, out / "pair_test.pt")
print("test pairs", time.perf_counter() - t, flush=True)


Pair = verify.PairVerifier  # the prototype's network, now the product's (same layers, same init)


def inputs(p, rows):
    k = p["idx"].shape[1]
    ph = p["matted"][rows].float()[:, None].expand(-1, k, -1, -1, -1).reshape(-1, 2, 48, 48)
    return ph, p["warped"][rows].float().reshape(-1, 2, 48, 48)


torch.manual_seed(0)
net = Pair()
target = (tr["idx"] == tr["own"][:, None]).float().argmax(1)
opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
E, B = int(sys.argv[2]) if len(sys.argv) > 2 else 6, 16  # epochs (second argument), views per step
steps = E * (len(target) // B)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
t = time.perf_counter()
for e in range(E):
    perm = torch.randperm(len(target))
    losses = []
    for s in range(0, len(perm) - B + 1, B):
        rows = perm[s : s + B]
        ph, wa = inputs(tr, rows)
        if torch.rand(()) < 0.5:
            ph, wa = ph.flip(-1), wa.flip(-1)
        logits = net(ph, wa).view(B, -1)
        loss = F.cross_entropy(logits, target[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    print(f"epoch {e + 1} loss {np.mean(losses):.3f} {time.perf_counter() - t:.0f} s", flush=True)
net.eval()
truth = d["test"]
for name, p in te.items():
    with torch.no_grad():
        logit = torch.cat(
            [net(*inputs(p, torch.arange(s, min(s + 50, len(p["idx"]))))) for s in range(0, len(p["idx"]), 50)]
        ).view(len(p["idx"]), -1)
    Z = verify._z
    variants = {
        "cnn": p["cos"],
        "3-term": Z(p["cos"]) + Z(p["iou"]) + Z(p["ncc"]),
        "pair": logit,
        "cos+iou+pair": Z(p["cos"]) + Z(p["iou"]) + Z(logit),
        "cos+pair": Z(p["cos"]) + Z(logit),
        "4-term": Z(p["cos"]) + Z(p["iou"]) + Z(p["ncc"]) + Z(logit),
    }
    for v, sc in variants.items():
        o = p["idx"].gather(1, sc.argsort(1, descending=True))
        hits = [float((o[:, :n] == truth[:, None]).any(1).float().mean()) for n in (1, 3, 10)]
        print(f"{name} {v:14s} r@1 {hits[0]:.3f} r@3 {hits[1]:.3f} r@10 {hits[2]:.3f}", flush=True)
torch.save(net.state_dict(), out / "pair_net.pt")
