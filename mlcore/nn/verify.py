"""Geometric verification of the matching CNN's candidates: re-rank them by how well each product's
silhouette, aligned to the photo, covers the product the photo shows.

Instance retrieval re-ranks its shortlist by spatial verification (Philbin et al. 2007, "Object
retrieval with large vocabularies and fast spatial matching"): a global embedding finds the
neighbourhood, a geometric fit tells the exact item from its look-alikes. The 32-px matching CNN
pools its features over the whole image; among 1,000 near-identical T-shirts the true one is often
in its top 30 but not in its top 3 (docs/matching.md, "Geometric verification").

Three pieces, all trained or computed from the catalog alone (no photo generator is read):

- **The matte** (`Matte`): a fully convolutional network (3×3 conv + GroupNorm + ReLU at full
  resolution, dilations 1-2-4-8-16-1 for a receptive field over the frame, Yu & Koltun 2016) that
  maps the photo cut to its product box (mlcore.nn.localise) at 48 px to a per-pixel foreground
  probability. Trained on CatalogViews ("photo" style, repainted) cut to their own product's box,
  each with its mask carried through the geometry: per-pixel binary cross-entropy.
- **The silhouettes** (`silhouettes`): each catalog image's soft foreground mask (pixels that differ
  from its border colour, as CatalogViews computes it) and its intensity, cut to the mask's box the
  same way, at 48 px.
- **The alignment** (`align`): for each (photo, candidate) pair an affine warp of the candidate's
  silhouette, started at the identity (both are cut to their boxes), is fitted by Adam to maximise
  the soft IoU (intersection over union of the soft masks) with the photo's matte; a direct
  (intensity-based) image alignment, as in Lucas & Kanade 1981, over masks. The pair is then scored
  by that IoU and by the normalised cross-correlation of the two intensities over the joint
  foreground (shading and print, when the photo keeps them).

A fourth, learned piece reads the aligned pair:

- **The pair verifier** (`PairVerifier`): a small CNN (6 × (3×3 conv + GroupNorm + ReLU), 16-64
  channels, about 110 k parameters) over the photo's matte and intensity, the candidate's mask and
  intensity warped by the fitted alignment, and their masked difference (5 × 48 × 48) → one logit.
  It is trained listwise, a softmax over each view's shortlist with its own product the target
  (ListNet, Cao et al. 2007, with a one-hot target), on "photo" CatalogViews (repainted) whose
  shortlists are the CNN's own top candidates (`pair_fit`): it learns which differences between an
  aligned photo and a candidate survive the change of look, where the NCC compares raw intensities.
  No photo generator is read.

`rerank` fuses the CNN's cosine, the IoU, the NCC and, when the model has one, the pair verifier's
logit by equal-weight z-scores over each photo's shortlist (score normalisation as in Montague &
Aslam 2001): no weight was fitted to test photos.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .localise import _block  # 3×3 conv + GroupNorm + ReLU, as the localiser's
from .views import CatalogViews, _float_image, _network_input, _square

MATTE_PX = 48
SHORTLIST = 60  # candidates re-ranked per photo (30 and 60 measured, docs/matching.md)
BOX_GROWTH = 1.1  # a box's side grown by 5% on each edge, as mlcore.nn.localise.MARGIN


@dataclass
class MatteConfig:
    """How the matte is trained: `views` generated views per set, `sets` sets, each trained on for
    `echo` epochs (data echoing, as MatchCNNConfig.echo); batch_size, lr (AdamW, one-cycle), width
    (channels of the first layer), jitter (the share of the box side by which training cuts are
    shifted and scaled, as the localiser's boxes err), seed."""

    views: int = 6000
    sets: int = 3
    echo: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16
    jitter: float = 0.06
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Matte(nn.Module):
    """(B, 3, 48, 48) normalised network input → (B, 1, 48, 48) foreground logits."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.width = w = width
        self.body = nn.Sequential(
            _block(3, w),
            _block(w, 2 * w, dilation=2),
            _block(2 * w, 2 * w, dilation=4),
            _block(2 * w, 2 * w, dilation=8),
            _block(2 * w, 2 * w, dilation=16),
            _block(2 * w, 2 * w, dilation=1),
            nn.Conv2d(2 * w, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def box_cut(
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    size_px: int = MATTE_PX,
    jitter: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Cut an image (C, H, W) float and its mask (1, H, W) in [0, 1] to the mask's box (cells > 0.5),
    squared and grown by BOX_GROWTH, shifted and scaled by up to ±`jitter` of its side (uniform
    draws from `generator`); resampled bilinearly to size_px (the border repeated outside the frame).
    Returns (image (C, S, S), mask (1, S, S)), or None when the mask is empty."""
    on = mask[0] > 0.5
    if not bool(on.any()):
        return None
    rows, cols = on.any(1).nonzero()[:, 0], on.any(0).nonzero()[:, 0]
    y0, y1 = float(rows.min()), float(rows.max() + 1)
    x0, x1 = float(cols.min()), float(cols.max() + 1)
    h, w = image.shape[-2:]
    u = torch.rand(3, generator=generator) - 0.5 if jitter else torch.zeros(3)
    side = max(y1 - y0, x1 - x0) * (BOX_GROWTH + 2 * jitter * float(u[0]))
    cy = (y0 + y1) / 2 + 2 * jitter * float(u[1]) * side
    cx = (x0 + x1) / 2 + 2 * jitter * float(u[2]) * side
    theta = torch.tensor([[side / w, 0.0, 2 * cx / w - 1], [0.0, side / h, 2 * cy / h - 1]])[None]
    grid = F.affine_grid(theta, (1, 1, size_px, size_px), align_corners=False)
    out = F.grid_sample(
        torch.cat([image, mask])[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    return out[:-1], out[-1:]


class MatteViews(torch.utils.data.Dataset):
    """(cut (3, 48, 48) network input, mask target (1, 48, 48)) pairs: "photo" CatalogViews of the
    products at 96 px, cut to their product's box (`box_cut`, jittered); drawn once per set."""

    def __init__(
        self, products: torch.Tensor, *, grayscale: bool, count: int, seed: int, view_epoch: int, jitter: float
    ):
        source = CatalogViews(
            products,
            size_px=96,
            grayscale=grayscale,
            seed=seed + 4_241,
            repaint=0.7,
            style="photo",
            zoom_out=(1.0, 1.5),
        )
        source.epoch = view_epoch
        g = torch.Generator().manual_seed(seed * 1_000_033 + view_epoch)
        chosen = torch.randint(len(products), (count,), generator=g)
        views, masks = [], []
        for i in chosen.tolist():
            cut = box_cut(*source.view_and_mask(i), jitter=jitter, generator=g)
            if cut is None:
                continue
            views.append(_network_input(cut[0][None])[0].to(torch.float16))
            masks.append(cut[1].to(torch.float16))
        self.views = torch.stack(views) if views else torch.zeros((0, 3, MATTE_PX, MATTE_PX), dtype=torch.float16)
        self.masks = torch.stack(masks) if masks else torch.zeros((0, 1, MATTE_PX, MATTE_PX), dtype=torch.float16)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index):
        return self.views[index].float(), self.masks[index].float()


def matte_fit(
    products: torch.Tensor, config: MatteConfig, *, grayscale: bool = True, on_epoch=None
) -> tuple[Matte, list[dict]]:
    """Train a Matte on generated views of `products` (uint8 (N, C, H, W), C in {1, 3}) on the CPU.
    Returns (the model in eval mode, one row per epoch: {"epoch", "loss" (mean BCE, nats)}).
    Deterministic for a seed. `on_epoch(row)` is called after each epoch (it may raise to stop).

    Raises:
        ValueError: no products.
    """
    if len(products) == 0:
        raise ValueError("the matte needs at least one catalog image")
    torch.manual_seed(config.seed)
    model = Matte(config.width)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    total = config.sets * config.echo * -(-config.views // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=total)
    rows, epoch = [], 0
    for view_set in range(config.sets):
        data = MatteViews(
            products,
            grayscale=grayscale,
            count=config.views,
            seed=config.seed,
            view_epoch=view_set,
            jitter=config.jitter,
        )
        for _ in range(config.echo):
            model.train()
            g = torch.Generator().manual_seed(config.seed * 7 + epoch)
            order = torch.randperm(len(data), generator=g)
            losses = []
            for start in range(0, len(order), config.batch_size):
                x, m = data[order[start : start + config.batch_size]]
                if torch.rand((), generator=g) < 0.5:
                    x, m = x.flip(-1), m.flip(-1)
                loss = F.binary_cross_entropy_with_logits(model(x), m)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if schedule.last_epoch < total - 1:
                    schedule.step()
                losses.append(float(loss.detach()))
            epoch += 1
            rows.append({"epoch": epoch, "loss": sum(losses) / max(1, len(losses))})
            if on_epoch:
                on_epoch(rows[-1])
    model.eval()
    return model, rows


def silhouettes(products: torch.Tensor, *, grayscale: bool = True, chunk: int = 1000) -> torch.Tensor:
    """Catalog images uint8 (N, C, H, W) → float16 (N, 2, 48, 48): channel 0 the soft foreground mask,
    channel 1 the intensity (luma in [0, 1] when grayscale), both cut to the mask's box (`box_cut`).
    An image with an empty mask is kept whole. Works `chunk` images at a time (each is resized to
    96 px first, as CatalogViews holds them)."""
    out = torch.zeros((len(products), 2, MATTE_PX, MATTE_PX), dtype=torch.float16)
    for start in range(0, len(products), chunk):
        source = CatalogViews(products[start : start + chunk], size_px=96, grayscale=grayscale)
        for j in range(len(source.images)):
            image, mask = source.images[j].mean(0, keepdim=True), source.masks[j]
            cut = box_cut(image, mask)
            if cut is None:
                cut = (_square(image[None], MATTE_PX)[0], _square(mask[None], MATTE_PX)[0])
            out[start + j, 0], out[start + j, 1] = cut[1][0].half(), cut[0][0].half()
    return out


def photo_mattes(
    matte: Matte, cuts: list[torch.Tensor], *, grayscale: bool = True, batch_size: int = 256
) -> torch.Tensor:
    """Photos cut to their product boxes (a list of uint8 (C, h, w); mlcore.nn.localise.photos_crop) →
    float32 (N, 2, 48, 48): channel 0 the matte's foreground probability, channel 1 the intensity."""
    out = []
    matte.eval()
    with torch.inference_mode():
        for start in range(0, len(cuts), batch_size):
            x = torch.cat(
                [
                    _square(_float_image(c[None], grayscale=grayscale), MATTE_PX)
                    for c in cuts[start : start + batch_size]
                ]
            )
            x = x.mean(1, keepdim=True)
            out.append(torch.cat([torch.sigmoid(matte(_network_input(x))), x], dim=1))
    return torch.cat(out) if out else torch.zeros((0, 2, MATTE_PX, MATTE_PX))


def photos_matted(model, photos, *, grayscale: bool = True) -> torch.Tensor:
    """Customer photos (uint8 (N, C, H, W), or a list of uint8 (C, H, W)) → float32 (N, 2, 48, 48)
    `photo_mattes` rows, each photo first cut to its product box by `model.localiser`
    (mlcore.nn.localise.photo_boxes, as photos_embed cuts it). Needs model.localiser and model.matte."""
    from .localise import photo_boxes, photos_crop

    if not len(photos):
        return torch.zeros((0, 2, MATTE_PX, MATTE_PX))
    cuts = photos_crop(photos, photo_boxes(model.localiser, photos, grayscale=grayscale))
    return photo_mattes(model.matte, cuts, grayscale=grayscale)


def align(
    photo: torch.Tensor, candidate: torch.Tensor, *, steps: int = 40, lr: float = 0.02, return_warp: bool = False
) -> tuple[torch.Tensor, ...]:
    """Fit an affine warp of each candidate's silhouette to its photo's matte and score the fit.

    photo: float (P, 2, S, S) (photo_mattes rows), candidate: float (P, 2, S, S) (silhouettes rows),
    row i of one paired with row i of the other. The warp (P, 2, 3), started at the identity, is
    fitted by `steps` Adam steps at `lr` on −soft IoU (the candidate mask resampled bilinearly by
    F.affine_grid / F.grid_sample). Returns (IoU (P,) in [0, 1], NCC (P,) in [-1, 1]): the soft IoU
    at the fitted warp, and the normalised cross-correlation of the two intensities weighted by
    the product of the two masks. With `return_warp`, also the fitted warp θ (P, 2, 3) float32, for
    F.affine_grid (bench/pair_verifier.py resamples the candidate with it).

    The warp is free (no penalty towards the identity): on the 2,000-product subset a penalty of
    0.5·‖A − I‖² on its linear part moved demo-photo recall@3 by +0.016 and the second generator's
    by −0.008, and 2 lost on both. So a silhouette that is an affine image of another (a rectangle
    of another aspect) fits as well as the true one; the NCC and the cosine must tell them apart.
    """
    n = len(photo)
    if n == 0:
        return (
            (torch.zeros(0), torch.zeros(0), torch.zeros((0, 2, 3)))
            if return_warp
            else (torch.zeros(0), torch.zeros(0))
        )
    photo, candidate = photo.float(), candidate.float()
    q, qi = photo[:, :1], photo[:, 1:]
    size = (n, 1) + tuple(photo.shape[-2:])
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).repeat(n, 1, 1).requires_grad_(True)
    optimiser = torch.optim.Adam([theta], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            grid = F.affine_grid(theta, size, align_corners=False)
            warped = F.grid_sample(candidate[:, :1], grid, align_corners=False)
            inter = (warped * q).sum((1, 2, 3))
            union = (warped + q - warped * q).sum((1, 2, 3)).clamp_min(1e-6)
            loss = -(inter / union).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        warped = F.grid_sample(candidate, F.affine_grid(theta, size, align_corners=False), align_corners=False)
        w, wi = warped[:, :1], warped[:, 1:]
        iou = (w * q).sum((1, 2, 3)) / (w + q - w * q).sum((1, 2, 3)).clamp_min(1e-6)
        joint = w * q
        weight = joint.sum((1, 2, 3), keepdim=True).clamp_min(1e-6)

        def centred(a):
            return ((a - (a * joint).sum((1, 2, 3), keepdim=True) / weight) * joint.sqrt()).flatten(1)

        a, b = centred(wi), centred(qi)
        ncc = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-6)
    return (iou, ncc, theta.detach()) if return_warp else (iou, ncc)


@dataclass
class PairConfig:
    """How the pair verifier is trained: `views` generated "photo" views of random catalog products
    (repaint, zoomed out by `zoom_out`), each with the CNN's top `shortlist` candidates (its own
    product put last when the CNN misses it), trained for `epochs` epochs of `batch_size` views
    (AdamW, one-cycle at `lr`); width (channels of the first layer), seed. On the 2,000-product
    subset (docs/matching.md) 12 epochs beat 6 by 0.022 at demo-photo recall@3."""

    views: int = 3000
    shortlist: int = 20
    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    width: int = 16
    repaint: float = 0.7
    zoom_out: tuple[float, float] = (1.0, 2.0)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class PairVerifier(nn.Module):
    """photo (B, 2, 48, 48) (`photo_mattes` rows) and warped candidate (B, 2, 48, 48) (a `silhouettes`
    row resampled by the fitted alignment, `pair_warp`) → (B,) logits, higher for the same product."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.width = w = width

        def block(c_in, c_out, stride):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(4, c_out), nn.ReLU())

        self.body = nn.Sequential(
            block(5, w, 1),
            block(w, 2 * w, 2),
            block(2 * w, 2 * w, 1),
            block(2 * w, 4 * w, 2),
            block(4 * w, 4 * w, 1),
            block(4 * w, 4 * w, 2),
        )
        self.head = nn.Linear(4 * w, 1)

    def forward(self, photo: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        difference = (photo[:, 1:] - warped[:, 1:]) * photo[:, :1] * warped[:, :1]
        x = torch.cat([photo, warped, difference], dim=1)
        return self.head(self.body(x).mean((2, 3)))[:, 0]


def pair_warp(candidate: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Candidates float (P, 2, S, S) resampled (bilinear, zeros outside) by the warps θ (P, 2, 3)
    that `align(..., return_warp=True)` fitted → float32 (P, 2, S, S)."""
    candidate = candidate.float()
    grid = F.affine_grid(theta.float(), (len(candidate), 1) + tuple(candidate.shape[-2:]), align_corners=False)
    return F.grid_sample(candidate, grid, align_corners=False)


def pair_logits(pair: PairVerifier, photos: torch.Tensor, warped: torch.Tensor, *, chunk: int = 2000) -> torch.Tensor:
    """The pair verifier's logits (P,) float32 for paired rows of photos and warped candidates (both
    float (P, 2, S, S)), `chunk` pairs at a time, without gradients."""
    pair.eval()
    with torch.inference_mode():
        parts = [
            pair(photos[s : s + chunk].float(), warped[s : s + chunk].float()) for s in range(0, len(photos), chunk)
        ]
    return torch.cat(parts) if parts else torch.zeros(0)


def _per_candidate(photos: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, 2, S, S) → (Q·k, 2, S, S): each photo repeated for each of its k candidates, in the
    order of candidates.reshape(Q·k, ...)."""
    return photos[:, None].expand(-1, k, -1, -1, -1).reshape(len(photos) * k, *photos.shape[1:])


def _aligned(photos: torch.Tensor, candidates: torch.Tensor, *, steps: int, chunk: int):
    """Align each photo (Q, 2, S, S) with each of its candidates (Q, K, 2, S, S) → (IoU (Q, K), NCC
    (Q, K), θ (Q, K, 2, 3))."""
    q, k = candidates.shape[:2]
    flat_photo = _per_candidate(photos, k)
    flat_cand = candidates.reshape(q * k, *candidates.shape[2:])
    ious, nccs, thetas = [], [], []
    for start in range(0, q * k, chunk):
        iou, ncc, theta = align(
            flat_photo[start : start + chunk], flat_cand[start : start + chunk], steps=steps, return_warp=True
        )
        ious.append(iou)
        nccs.append(ncc)
        thetas.append(theta)
    return torch.cat(ious).view(q, k), torch.cat(nccs).view(q, k), torch.cat(thetas).view(q, k, 2, 3)


def pair_fit(
    model,
    products: torch.Tensor,
    catalog: torch.Tensor,
    config: PairConfig,
    *,
    match_config,
    grayscale: bool = True,
    device: torch.device | None = None,
    on_epoch=None,
    on_progress=None,
) -> tuple[PairVerifier, list[dict]]:
    """Train a PairVerifier for `model` (a MatchNet with localiser and matte) on the CPU (the views
    are embedded on `device`, the CPU by default).

    products: the catalog, uint8 (N, C, H, W); catalog: its embeddings by `model`, float32 (N, D) unit
    rows; match_config: the model's MatchCNNConfig. Each of `config.views` "photo" CatalogViews of a
    random product is embedded and cut as the product embeds a customer photo (photos_embed,
    photos_matted), its top
    `config.shortlist` candidates are aligned (`align`), and the verifier learns, listwise, to put
    the view's own product first. Returns (the verifier in eval mode, one row per epoch: {"epoch",
    "loss" (mean softmax cross-entropy, nats; chance is ln shortlist)}). Deterministic for a seed.
    `on_epoch(row)` is called after each epoch, and once with {"epoch": 0} when the views are
    aligned (it may raise to stop); `on_progress()` after each chunk of 75 aligned views (the
    alignment takes minutes: a caller beats its heartbeat there, and may raise to stop too).

    Raises:
        ValueError: fewer than 2 products, or a shortlist under 2.
    """
    from .match_cnn import photos_embed, topk_search

    if len(products) < 2 or config.shortlist < 2:
        raise ValueError("the pair verifier needs at least 2 catalog products and a shortlist of 2")
    k = min(config.shortlist, len(products))
    sil = silhouettes(products, grayscale=grayscale)
    source = CatalogViews(
        products,
        size_px=96,
        grayscale=grayscale,
        seed=config.seed + 999,
        repaint=config.repaint,
        style="photo",
        zoom_out=tuple(config.zoom_out),
    )
    g = torch.Generator().manual_seed(config.seed * 1_000_033 + 5)
    own = torch.randint(len(products), (config.views,), generator=g)
    views = []
    for n, i in enumerate(own.tolist()):
        source.epoch = n // len(products)
        views.append((source.view_and_mask(i)[0] * 255).round().to(torch.uint8))
    views = torch.stack(views)
    z = photos_embed(model, views, match_config, device=device or torch.device("cpu"))
    idx, _ = topk_search(z, catalog, k=k)
    missed = ~(idx == own[:, None]).any(1)
    idx[missed, -1] = own[missed]
    target = (idx == own[:, None]).float().argmax(1)
    matted = photos_matted(model, views, grayscale=grayscale)
    del views
    thetas = []
    for s in range(0, len(idx), 75):
        candidates = sil[idx[s : s + 75].reshape(-1)].float().view(-1, k, *sil.shape[1:])
        thetas.append(_aligned(matted[s : s + 75], candidates, steps=40, chunk=1500)[2])
        if on_progress:
            on_progress()
    theta = torch.cat(thetas)
    if on_epoch:
        on_epoch({"epoch": 0, "loss": None})
    torch.manual_seed(config.seed)
    pair = PairVerifier(config.width)
    optimiser = torch.optim.AdamW(pair.parameters(), lr=config.lr, weight_decay=1e-4)
    per_epoch = len(target) // config.batch_size
    if per_epoch == 0:
        raise ValueError(f"the pair verifier needs at least batch_size={config.batch_size} views")
    total = config.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=total)
    rows = []
    for epoch in range(config.epochs):
        pair.train()
        order = torch.randperm(len(target), generator=g)
        losses = []
        for start in range(0, per_epoch * config.batch_size, config.batch_size):
            chosen = order[start : start + config.batch_size]
            photo = _per_candidate(matted[chosen], k)
            warped = pair_warp(sil[idx[chosen].reshape(-1)], theta[chosen].reshape(-1, 2, 3))
            if torch.rand((), generator=g) < 0.5:
                photo, warped = photo.flip(-1), warped.flip(-1)
            loss = F.cross_entropy(pair(photo, warped).view(len(chosen), k), target[chosen])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if schedule.last_epoch < total - 1:
                schedule.step()
            losses.append(float(loss.detach()))
        rows.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses)})
        if on_epoch:
            on_epoch(rows[-1])
    pair.eval()
    return pair, rows


def _z(scores: torch.Tensor) -> torch.Tensor:
    if scores.shape[1] < 2:
        return torch.zeros_like(scores)
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp_min(1e-6)


def rerank(
    cosine: torch.Tensor, iou: torch.Tensor, ncc: torch.Tensor, pair: torch.Tensor | None = None
) -> torch.Tensor:
    """Fused scores (Q, K) of each photo's K candidates: z(cosine) + z(IoU) + z(NCC), plus z(pair
    logit) when given, each z-scored over the photo's own shortlist (equal weights). Higher is
    better."""
    fused = _z(cosine.float()) + _z(iou.float()) + _z(ncc.float())
    return fused if pair is None else fused + _z(pair.float())


def shortlist_verify(
    photos: torch.Tensor,
    candidates: torch.Tensor,
    cosine: torch.Tensor,
    *,
    pair: PairVerifier | None = None,
    steps: int = 40,
    chunk: int = 1500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank shortlists: photos float (Q, 2, S, S) (photo_mattes), candidates float (Q, K, 2, S, S)
    (their silhouettes rows), cosine (Q, K) (the CNN's scores), pair: the model's PairVerifier or
    None (three terms) → (order (Q, K) int64, positions into each shortlist best first; fused (Q, K)
    float32, the fused score in that order)."""
    q, k = cosine.shape
    if q == 0 or k == 0:
        return torch.zeros((q, k), dtype=torch.int64), torch.zeros((q, k))
    iou, ncc, theta = _aligned(photos, candidates, steps=steps, chunk=chunk)
    logits = None
    if pair is not None:
        warped = pair_warp(candidates.reshape(q * k, *candidates.shape[2:]), theta.reshape(-1, 2, 3))
        logits = pair_logits(pair, _per_candidate(photos, k), warped).view(q, k)
    fused = rerank(cosine, iou, ncc, logits)
    order = fused.argsort(dim=1, descending=True)
    return order, fused.gather(1, order)


def shortlists_rerank(
    model,
    photos,
    idx: torch.Tensor,
    cosine: torch.Tensor,
    catalog_silhouettes: torch.Tensor,
    *,
    grayscale: bool = True,
    steps: int = 40,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank each photo's shortlist by geometric verification.

    photos: uint8 (Q, C, H, W) or a list of uint8 (C, H, W); idx (Q, K) int64 rows into
    `catalog_silhouettes` (N, 2, 48, 48) (`silhouettes` of the catalog), the CNN's shortlist best
    first; cosine (Q, K) its scores. Needs model.localiser and model.matte; uses model.pair (the
    fourth term) when it has one.
    Returns (idx (Q, K), cosine (Q, K)) in the fused order (`rerank`): the cosines are the CNN's,
    no longer sorted.
    """
    if not len(idx):
        return idx, cosine
    matted = photos_matted(model, photos, grayscale=grayscale)
    candidates = catalog_silhouettes[idx.reshape(-1)].view(*idx.shape, *catalog_silhouettes.shape[1:])
    order, _ = shortlist_verify(matted, candidates.float(), cosine, pair=getattr(model, "pair", None), steps=steps)
    return idx.gather(1, order), cosine.gather(1, order)


__all__ = [
    "MATTE_PX",
    "SHORTLIST",
    "Matte",
    "MatteConfig",
    "MatteViews",
    "PairConfig",
    "PairVerifier",
    "align",
    "box_cut",
    "matte_fit",
    "pair_fit",
    "pair_logits",
    "pair_warp",
    "photo_mattes",
    "photos_matted",
    "rerank",
    "shortlist_verify",
    "shortlists_rerank",
    "silhouettes",
]
