"""Where is the product in a customer photo? A small fully convolutional network that predicts the
product's foreground mask, so the matching CNN embeds the product, not the frame around it.

Street-to-shop systems localise the garment before they retrieve it (Kiapour et al. 2015, "Where to
Buy It"; DeepFashion2, Ge et al. 2019): a catalog image is the product filling its frame, a
customer photo is the product somewhere in a larger scene. At the matching CNN's 32-px input, an
item that fills a third of a 96-px photo is 11 px wide. Cropping the photo to the predicted box
first gives the embedder the item at the scale it was trained on.

Trained from the catalog alone, like stage 1: the views of mlcore.nn.views.CatalogViews ("photo"
style, zoomed out further) carry the product's mask through the same geometry, so every view comes
with its segmentation target for free. No photo generator is read.

The network: (B, 3, 64, 64) → 2 stride-2 stages (3×3 conv + GroupNorm + ReLU), then dilated 3×3
convs (dilation 2, 4, 8: a receptive field over the whole frame, as in Yu & Koltun 2016) → (B, 1,
16, 16) logits of "product here". Trained by per-cell binary cross-entropy against the view's mask
averaged over 4×4 cells.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .views import CatalogViews, _float_image, _network_input, _square

INPUT_PX = 64
CELL_PX = 4  # one output cell per 4×4 input pixels
ZOOM_OUT = (1.0, 3.0)  # the item fills 1/3 to all of the frame's side
# The box is grown by this share of its side on each edge. Tight crops matched best: on the
# 2,000-product subset bench (docs/matching.md) margins −0.05 / 0 / 0.05 / 0.12 / 0.3 gave demo-photo
# recall@3 0.374 / 0.430 / 0.436 / 0.338 / 0.290 and second-generator 0.104 / 0.138 / 0.146 / 0.138 / 0.080.
MARGIN = 0.05


@dataclass
class LocaliserConfig:
    """How the localiser is trained.

    views: generated views per set (echoed `echo` epochs, as MatchCNNConfig.echo); sets: how many
    sets are drawn in all; epochs per set = echo. batch_size, lr (AdamW), width (channels of the first
    stage), seed.
    """

    views: int = 6000
    sets: int = 3
    echo: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _block(c_in: int, c_out: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(8, c_out),
        nn.ReLU(inplace=True),
    )


class Localiser(nn.Module):
    """(B, 3, 64, 64) normalised network input → (B, 1, 16, 16) foreground logits."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.width = w = width
        self.body = nn.Sequential(
            _block(3, w),
            _block(w, 2 * w, stride=2),
            _block(2 * w, 2 * w),
            _block(2 * w, 4 * w, stride=2),
            _block(4 * w, 4 * w, dilation=2),
            _block(4 * w, 4 * w, dilation=4),
            _block(4 * w, 4 * w, dilation=8),
            nn.Conv2d(4 * w, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LocaliserViews(torch.utils.data.Dataset):
    """(view (3, 64, 64) network input, mask target (1, 16, 16) in [0, 1]) pairs of catalog products,
    drawn once per set from CatalogViews("photo", zoomed out to ZOOM_OUT) and held in memory."""

    def __init__(self, products: torch.Tensor, *, grayscale: bool, count: int, seed: int, view_epoch: int):
        source = CatalogViews(
            products, size_px=INPUT_PX, grayscale=grayscale, seed=seed + 7_919, repaint=0.7, style="photo",
            zoom_out=ZOOM_OUT,
        )
        source.epoch = view_epoch
        g = torch.Generator().manual_seed(seed * 1_000_003 + view_epoch)
        chosen = torch.randint(len(products), (count,), generator=g)
        views, masks = [], []
        for i in chosen.tolist():
            image, mask = source.view_and_mask(i)
            views.append(_network_input(image[None])[0].to(torch.float16))
            masks.append(F.avg_pool2d(mask[None], CELL_PX)[0].to(torch.float16))
        self.views, self.masks = torch.stack(views), torch.stack(masks)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int):
        return self.views[index].float(), self.masks[index].float()


def localiser_fit(
    products: torch.Tensor, config: LocaliserConfig, *, grayscale: bool = True, on_epoch=None
) -> tuple[Localiser, list[dict]]:
    """Train a Localiser on generated views of `products` (uint8 (N, C, H, W), C in {1, 3}) on the
    CPU. Returns (the model in eval mode, one row per epoch: {"epoch", "loss" (mean BCE, nats)}).

    Raises:
        ValueError: no products.
    """
    if len(products) == 0:
        raise ValueError("the localiser needs at least one catalog image")
    torch.manual_seed(config.seed)
    model = Localiser(config.width)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    total = config.sets * config.echo * -(-config.views // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=total)
    rows, epoch = [], 0
    for view_set in range(config.sets):
        data = LocaliserViews(products, grayscale=grayscale, count=config.views, seed=config.seed, view_epoch=view_set)
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
                schedule.step()
                losses.append(float(loss.detach()))
            epoch += 1
            rows.append({"epoch": epoch, "loss": sum(losses) / len(losses)})
            if on_epoch:
                on_epoch(rows[-1])
    model.eval()
    return model, rows


def _main_component(probability: torch.Tensor, threshold: float) -> torch.Tensor | None:
    """The connected region (8-connectivity, scipy.ndimage.label) of cells above `threshold` that
    holds the most probability mass: bool (h, w), or None when no cell is above it."""
    from scipy import ndimage

    on = (probability > threshold).numpy()
    labels, count = ndimage.label(on, structure=[[1, 1, 1], [1, 1, 1], [1, 1, 1]])
    if count == 0:
        return None
    mass = ndimage.sum(probability.numpy(), labels, index=range(1, count + 1))
    return torch.from_numpy(labels == 1 + int(mass.argmax()))


def photo_boxes(
    model: Localiser, photos: torch.Tensor | list[torch.Tensor], *, grayscale: bool = True, margin: float = MARGIN,
    threshold: float = 0.5, batch_size: int = 256,
) -> torch.Tensor:
    """Predicted product boxes of customer photos: int64 (N, 4) rows (top, left, height, width) in
    each photo's own pixels, square where the photo allows, grown by `margin` of the side.

    The box spans the connected region of cells above `threshold` that holds the most probability
    mass (`_main_component`; the 16×16 map, then scaled to the photo); a photo with no such cell
    keeps its whole frame. Each photo is squared (centre crop) and
    resized to 64 px first, as the network was trained; boxes are given in the squared frame's
    coordinates offset back into the photo.

    photos: uint8 (N, C, H, W), or a list of uint8 (C, H, W) of any sizes; C in {1, 3}.
    """
    boxes = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(photos), batch_size):
            chunk = photos[start : start + batch_size]
            x = torch.cat(
                [_network_input(_square(_float_image(p[None], grayscale=grayscale), INPUT_PX)) for p in chunk]
            )
            probability = torch.sigmoid(model(x))[:, 0]  # (B, 16, 16)
            for photo, p in zip(chunk, probability, strict=True):
                h, w = photo.shape[-2:]
                side = min(h, w)
                top0, left0 = (h - side) // 2, (w - side) // 2
                on = _main_component(p, threshold)
                if on is None:
                    boxes.append((top0, left0, side, side))
                    continue
                rows = on.any(dim=1).nonzero()[:, 0]
                cols = on.any(dim=0).nonzero()[:, 0]
                cell = side / p.shape[-1]
                y0, y1 = float(rows.min()) * cell, float(rows.max() + 1) * cell
                x0, x1 = float(cols.min()) * cell, float(cols.max() + 1) * cell
                length = max(y1 - y0, x1 - x0) * (1 + 2 * margin)
                length = min(max(length, cell * 2), side)
                cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
                top = min(max(cy - length / 2, 0.0), side - length)
                left = min(max(cx - length / 2, 0.0), side - length)
                n = max(1, int(round(length)))
                boxes.append((top0 + int(round(top)), left0 + int(round(left)), n, n))
    return torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4)


def photos_crop(photos: torch.Tensor | list[torch.Tensor], boxes: torch.Tensor) -> list[torch.Tensor]:
    """Each photo (uint8 (C, H, W)) cut to its box (top, left, height, width): a list of uint8
    (C, h, w), clipped to the photo."""
    out = []
    for photo, (top, left, height, width) in zip(photos, boxes.tolist(), strict=True):
        h, w = photo.shape[-2:]
        top, left = max(0, min(top, h - 1)), max(0, min(left, w - 1))
        out.append(photo[..., top : min(h, top + max(1, height)), left : min(w, left + max(1, width))])
    return out


def photos_localised(
    model: Localiser, photos: torch.Tensor, *, size_px: int, grayscale: bool = True, margin: float = MARGIN
) -> torch.Tensor:
    """Customer photos cut to their predicted product boxes and resized (bilinear, antialiased):
    uint8 (N, C, H, W) → uint8 (N, C, size_px, size_px). Stage 2 trains on these, as the product
    embeds photos (mlcore.nn.match_cnn.photos_embed)."""
    crops = photos_crop(photos, photo_boxes(model, photos, grayscale=grayscale, margin=margin))
    out = [_square(c[None].float(), size_px).round().clamp(0, 255).to(torch.uint8)[0] for c in crops]
    return torch.stack(out) if out else photos[:0]
