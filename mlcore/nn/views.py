"""Generated "customer photo" views of catalog images, for training the matching CNN (stage 1), and the
eval preprocessing shared by training and inference. Pure PyTorch + torchvision.transforms.v2.

This module is the training side only. The demo's photo generator (catalog.demo_data) is never
imported here, nor anywhere in mlcore.nn: the views below are built from library transforms so that
the model learns invariances, not one generator's habits (a test imports this module with
catalog.demo_data made unimportable).

A view of product i, drawn from a generator seeded by (seed, epoch, i), so it is reproducible:
1. the catalog image at the network size, with a foreground mask: pixels that differ from the
   image's border colour (packshots have a plain background), closed by a 3×3 max-pool and softened;
2. geometry (image and mask together): v2.RandomZoomOut (the item smaller in the frame),
   v2.RandomAffine (rotation ±25°, shear, scale, shift), v2.RandomPerspective, v2.RandomResizedCrop
   (a crop of 40-100% of the area, so parts of the item may be cut off), v2.RandomHorizontalFlip;
3. background clutter behind the mask: other catalog images cropped and scaled by
   v2.RandomResizedCrop, low-frequency noise, gratings and a flat level, mixed at random;
4. photometry: v2.ColorJitter (brightness, contrast), v2.GaussianBlur, v2.RandomErasing with a
   random fill (occlusion), v2.GaussianNoise.
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights


def _float_image(images: torch.Tensor, *, grayscale: bool) -> torch.Tensor:
    """uint8 (B, C, H, W), C in {1, 3} → float32 in [0, 1], (B, 1, H, W) if grayscale else (B, 3, H, W)."""
    x = images.float() / 255.0
    if grayscale and x.shape[1] == 3:
        x = (x * LUMA.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    elif not grayscale and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _square(x: torch.Tensor, size_px: int) -> torch.Tensor:
    """(B, C, H, W) float → (B, C, size_px, size_px): centre-crop to a square, resize (bilinear, antialiased)."""
    h, w = x.shape[-2:]
    if h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top : top + side, left : left + side]
    if x.shape[-1] != size_px:
        x = F.interpolate(x, size=(size_px, size_px), mode="bilinear", antialias=True, align_corners=False)
    return x


def _network_input(x: torch.Tensor) -> torch.Tensor:
    """float (B, 1|3, S, S) in [0, 1] → (B, 3, S, S) normalised to about [-1, 1]."""
    x = (x.clamp(0, 1) - 0.5) / 0.5
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def eval_batch(images: torch.Tensor, size_px: int, *, grayscale: bool) -> torch.Tensor:
    """The eval transform: uint8 (B, C, H, W) → float32 (B, 3, size_px, size_px) network input."""
    return _network_input(_square(_float_image(images, grayscale=grayscale), size_px))


@contextlib.contextmanager
def _one_thread():
    """Run the block on one torch intra-op thread, then restore the previous count.

    A view is a chain of small tensor ops on a 32-px image: spread over the training process's
    threads they spend their time waiting on each other. Measured on the 2-core CPU under load:
    8.7 views/s with 2 threads, 72 with one (DataLoader worker processes already use one).
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


class CatalogViews(torch.utils.data.Dataset):
    """Dataset of (clean product (3, S, S), generated view (3, S, S), index) for stage 1.

    products: uint8 (N, C, H, W). Set `.epoch` before each epoch: views differ per epoch and repeat
    exactly for the same (seed, epoch, index).
    style: "hard" (the default here, and the evaluation views of rejection calibration and held-out
        scoring) or "photo" (training's default, MatchCNNConfig.views): the item zoomed out to at
        most 1.8×, crops of 70-100% of the area, clutter behind it in 25% of views, occlusion in 30%,
        and its luma kept ≥ 0.25 from the background's under it (a product photographed to be seen).
    repaint: the share of views whose product is repainted first (`_repainted`).
    zoom_out: the "photo" style's v2.RandomZoomOut side range (default (1.0, 1.8)); the localiser's
        views (mlcore.nn.localise) zoom out further, so the item may fill a third of the frame.
    """

    def __init__(
        self,
        products: torch.Tensor,
        *,
        size_px: int,
        grayscale: bool,
        seed: int = 0,
        repaint: float = 0.0,
        style: str = "hard",
        zoom_out: tuple[float, float] | None = None,
    ):
        self.images = _square(_float_image(products, grayscale=grayscale), size_px)  # (N, C, S, S)
        self.size_px, self.seed, self.epoch, self.repaint, self.style = size_px, seed, 0, repaint, style
        border = torch.cat(
            [self.images[..., 0, :], self.images[..., -1, :], self.images[..., :, 0], self.images[..., :, -1]], dim=-1
        )  # (N, C, 4S)
        background = border.median(dim=-1).values[..., None, None]  # (N, C, 1, 1)
        mask = ((self.images - background).abs().amax(dim=1, keepdim=True) > 0.04).float()
        mask = F.max_pool2d(mask, 3, stride=1, padding=1)
        self.masks = F.avg_pool2d(mask, 3, stride=1, padding=1)  # (N, 1, S, S) soft foreground
        s = size_px
        photo = style == "photo"
        self.min_contrast = 0.25 if photo else 0.0
        self.clutter_p = 0.25 if photo else 0.5
        self.geometry = v2.Compose(
            [
                v2.RandomZoomOut(fill=0.0, side_range=zoom_out or (1.0, 1.8), p=0.7),
                v2.RandomAffine(degrees=20, translate=(0.08, 0.08), scale=(0.85, 1.1), shear=(-8, 8, -8, 8)),
                v2.RandomPerspective(distortion_scale=0.3, p=0.5),
                v2.RandomResizedCrop(s, scale=(0.7, 1.0), ratio=(0.8, 1.25), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
            if photo
            else [
                v2.RandomZoomOut(fill=0.0, side_range=(1.0, 2.0), p=0.5),
                v2.RandomAffine(degrees=25, translate=(0.1, 0.1), scale=(0.8, 1.15), shear=(-10, 10, -10, 10)),
                v2.RandomPerspective(distortion_scale=0.35, p=0.5),
                v2.RandomResizedCrop(s, scale=(0.4, 1.0), ratio=(0.75, 1.333), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )
        self.clutter = v2.Compose(
            [
                v2.RandomResizedCrop(s, scale=(0.1, 1.0), antialias=True),
                v2.RandomRotation(180),
            ]
        )
        self.photometry = v2.Compose(
            [
                v2.ColorJitter(brightness=0.5, contrast=0.5),
                v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.6 if not photo else 1.2))], p=0.5),
                v2.RandomApply(
                    [
                        v2.RandomChoice(
                            [v2.RandomErasing(p=1.0, scale=(0.02, 0.2), value=v) for v in (0.0, 0.35, 0.7, 1.0)]
                        )
                    ],
                    p=0.3 if photo else 0.5,
                ),
                v2.GaussianNoise(mean=0.0, sigma=0.03 if not photo else 0.02, clip=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def _background(self, index: int) -> torch.Tensor:
        c, s = self.images.shape[1], self.size_px
        level = torch.rand(c, 1, 1) * 0.8
        bg = level.expand(c, s, s).clone()
        if torch.rand(()) < 0.6:  # low-frequency noise: a few cells upsampled
            cells = int(torch.randint(2, 9, ()))
            noise = F.interpolate(torch.rand(1, c, cells, cells), size=(s, s), mode="bicubic", align_corners=False)[0]
            bg = bg + (noise - 0.5) * float(torch.rand(()) * 0.8)
        if torch.rand(()) < 0.3:  # a grating (fabric, blinds, tiles)
            theta = float(torch.rand(()) * math.pi)
            period = float(2 + torch.rand(()) * 10)
            y, x = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            wave = torch.sin(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / period)
            bg = bg + wave * float(torch.rand(()) * 0.25)
        if torch.rand(()) < self.clutter_p:  # clutter: other catalog items behind the product
            for _ in range(int(torch.randint(1, 4, ()))):
                other = int(torch.randint(len(self.images), ()))
                if other == index:
                    continue
                patch = self.clutter(torch.cat([self.images[other], self.masks[other]]))
                alpha = patch[-1:] * float(0.3 + torch.rand(()) * 0.6)
                bg = alpha * patch[:-1] + (1 - alpha) * bg
        return bg.clamp(0, 1)

    def _fabric(self, c: int) -> torch.Tensor:
        """A random fabric pattern in [0, 1], (1, S, S), in the product's own frame (it deforms with
        the geometry after it): none, stripes, checks, dots or blotches."""
        s = self.size_px
        kind = int(torch.randint(5, ()))
        axis = torch.arange(s, dtype=torch.float32)
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        theta = float(torch.rand(()) * math.pi)
        period = float(2 + torch.rand(()) * 8)
        u = x * math.cos(theta) + y * math.sin(theta)
        v = -x * math.sin(theta) + y * math.cos(theta)
        if kind == 0:
            return torch.zeros(1, s, s)
        if kind == 1:  # stripes
            return (0.5 + 0.5 * torch.sin(2 * math.pi * u / period))[None]
        if kind == 2:  # checks (gingham)
            checks = torch.sin(2 * math.pi * u / period).sign() + torch.sin(2 * math.pi * v / period).sign()
            return (0.25 * (2 + checks))[None]
        if kind == 3:  # dots
            du = torch.remainder(u, period) - period / 2
            dv = torch.remainder(v, period) - period / 2
            return ((du**2 + dv**2).sqrt() < period * 0.3).float()[None]
        cells = int(torch.randint(3, 12, ()))  # blotches: low-frequency noise
        blotches = F.interpolate(torch.rand(1, 1, cells, cells), size=(s, s), mode="bicubic", align_corners=False)
        return blotches[0].clamp(0, 1)

    def _repainted(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Product `index` repainted as a photo repaints it: (image (C, S, S), mask (1, S, S)).

        A photo never shows the packshot's grey levels: the garment has its own colour and fabric,
        and its folds and seams only shade it. So the packshot's intensity v becomes a shading
        (1 − s) + s·v^γ (v2.functional.adjust_gamma), times a random fabric pattern, times a random
        tone; with probability 1/2 the coverage also follows the intensity (dark parts of the packshot
        let the background through, a soft threshold). Identity must then come from the silhouette,
        the seams and the coarse shading, which both photo generators keep, not from exact grey levels.
        """
        image, mask = self.images[index], self.masks[index]
        c = image.shape[0]
        intensity = image.mean(dim=0, keepdim=True).clamp(0, 1)  # (1, S, S)
        gamma = float(torch.empty(()).uniform_(-0.8, 0.8).exp())
        strength = float(torch.empty(()).uniform_(0.2, 1.0))
        shading = (1 - strength) + strength * v2.functional.adjust_gamma(intensity, gamma)
        fabric = 1 - float(torch.empty(()).uniform_(0.1, 0.6)) * self._fabric(c)
        tone = torch.empty(c, 1, 1).uniform_(0.1, 1.0)
        if c == 3 and torch.rand(()) < 0.5:  # a grey garment in a colour photo
            tone = tone[:1].expand(3, 1, 1)
        painted = (tone * shading * fabric).clamp(0, 1)
        if torch.rand(()) < 0.5:
            lo = float(torch.empty(()).uniform_(0.0, 0.1))
            hi = lo + float(torch.empty(()).uniform_(0.05, 0.4))
            mask = mask * ((intensity - lo) / (hi - lo)).clamp(0, 1)
        return painted, mask

    def view_of(self, index: int) -> torch.Tensor:
        """A generated view of product `index` for this epoch: (3, S, S) float32 network input."""
        return _network_input(self.view_and_mask(index)[0][None])[0]

    def view_and_mask(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A generated view of product `index` for this epoch and where the product is in it:
        (image (C, S, S) float32 in [0, 1], mask (1, S, S) float32 in [0, 1], the product's soft
        foreground after the geometry, before occlusion). Same draws as `view_of`."""
        with _one_thread(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(_item_seed(self.seed, self.epoch, index))
            if self.repaint > 0 and torch.rand(()) < self.repaint:
                image, mask = self._repainted(index)
            else:
                image, mask = self.images[index], self.masks[index]
            x = self.geometry(torch.cat([image, mask]))  # (C+1, S, S)
            image, mask = x[:-1], x[-1:].clamp(0, 1)
            background = self._background(index)
            if self.min_contrast > 0:  # a product photographed to be seen: its luma differs from what is behind it
                weight = mask.sum().clamp_min(1e-6)
                fg = float((image.mean(0, keepdim=True) * mask).sum() / weight)
                bg = float((background.mean(0, keepdim=True) * mask).sum() / weight)
                gap = self.min_contrast - abs(fg - bg)
                if gap > 0:
                    up = bg >= fg if abs(fg - bg) > 1e-3 else fg < 0.5
                    if (up and bg + gap > 1) or (not up and bg - gap < 0):
                        up = not up
                    background = (background + (gap if up else -gap)).clamp(0, 1)
            image = mask * image + (1 - mask) * background
            image = self.photometry(image.clamp(0, 1))
        return image.clamp(0, 1), mask

    def __getitem__(self, index: int):
        clean = _network_input(self.images[index][None])[0]
        return clean, self.view_of(index), index


class PhotoViews(torch.utils.data.Dataset):
    """Dataset of (lightly augmented verified photo (3, S, S), index) for stage 2: a photo is already a
    customer photo, so it only gets a mild crop, flip and lighting change."""

    def __init__(self, photos: torch.Tensor, *, size_px: int, grayscale: bool, seed: int = 0):
        self.images = _square(_float_image(photos, grayscale=grayscale), int(size_px * 1.15))
        self.seed, self.epoch = seed, 0
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(size_px, scale=(0.7, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=0.2, contrast=0.2),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        with _one_thread(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(_item_seed(self.seed, self.epoch, index))
            x = self.transform(self.images[index])
        return _network_input(x[None])[0], index
