"""A trainable matching CNN: image → L2-normalised embedding, trained on the catalog itself (stage 1)
and on people's verified matches (stage 2). Pure PyTorch, no Django.

Stage 1, instance discrimination (Wu et al. 2018, "Unsupervised feature learning via
non-parametric instance discrimination"; the InfoNCE loss of Oord, Li & Vinyals 2018): every
catalog product is its own class. A generated view of a product (`views.py`: torchvision.transforms.v2
geometry and photometry, composited on clutter) must find its own product among all catalog
products, whose embeddings are kept in a memory bank refreshed every epoch, with the batch's own
products as fresh columns. A category head over the master taxonomy leaves is trained on the same
embedding (a multitask embedding), with partial labels for products filed under an inner node.

Stage 2, from people: photos people matched are positives against the whole catalog, the candidates
they turned down are hard negatives (an extra softmax over the positive and those), and photos
answered none / not a product / unfit target a learned no-match column (the "dustbin" of SuperGlue,
Sarlin et al. 2020). The stage-1 loss keeps running in the same steps so the catalog is not forgotten.

Rejection ("this photo's product is not in the catalog") is a logistic model (Platt 1999) over the
ranking's shape (top-1 cosine, top-1 minus top-2, top-1 minus the mean of the top 10), fitted on
views of catalog products (positives) against the same views searched with their own product left
out (negatives: "a product like the catalog's, but not in it"), plus people's none answers in stage 2.

Shapes: images are uint8 tensors (N, C, H, W) with C in {1, 3}; embeddings (N, D) float32, unit rows.
"""

import copy
import hashlib
import io
import math
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .views import CatalogViews, PhotoViews, eval_batch

CHECKPOINT_FORMAT = "fitcheck-match-cnn-1"
CATEGORY_SCALE = 16.0


class MatchTrainingError(ValueError):
    """The training data or a checkpoint cannot be used; the message says why."""


@dataclass(frozen=True)
class MatchCNNConfig:
    """How the matching CNN is built and trained.

    arch: "catalog_cnn" (a small CNN at the catalog's own resolution, trains in minutes on a CPU) or
        "efficientnet_lite0" (the pretrained backbone fine-tuned, with a linear projection; for a GPU).
    image_size_px: square network input side.
    grayscale: feed luminance only. True when the catalog's images carry no colour (Fashion-MNIST):
        colour then only tells the photo's lighting, never the product.
    width: channels of the first catalog_cnn stage (doubling per stage, 4 stages).
    embedding_dim: D of the output embedding.
    epochs, batch_size (products per step), lr (AdamW, cosine schedule with 1 warm-up epoch),
    weight_decay, temperature (InfoNCE τ), category_weight (weight of the category loss),
    photo_batch_size (stage 2: verified photos per step), hard_negative_weight (stage 2),
    workers (DataLoader processes generating views; 0 = in the training process),
    views: "photo" (default) or "hard", the family of generated views (mlcore.nn.views.CatalogViews):
        "photo" keeps the item mostly whole and visible against what is behind it; "hard" is the
        earlier, harsher recipe. repaint: the share of views whose product is repainted (a random
        tone curve, fabric and tone; coverage from intensity half the time). On a 2,000-product
        subset, 16 epochs, "photo" with repaint 0.7 beat "hard" without on both photo generators
        (docs/matching.md, "Views that repaint the product").
    bank_from_epoch: from this epoch on, views are also scored against the memory bank of all catalog
        embeddings (-1: never). Off by default: on a 2,000-product subset the instance loss rose
        towards chance as soon as the bank term was added (epoch 3: 8.4 → 14.5 → 15.7) and recall did
        not improve, while in-batch negatives alone trained; see docs/matching.md.
    echo: epochs each drawn set of views is trained on (data echoing, EchoViews); 1 draws fresh views
        every epoch. On the CPU views bound the run, so echoing buys the steps the network needs.
    seed.
    """

    arch: str = "catalog_cnn"
    image_size_px: int = 32
    grayscale: bool = True
    width: int = 32
    embedding_dim: int = 128
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    temperature: float = 0.07
    category_weight: float = 0.3
    photo_batch_size: int = 64
    hard_negative_weight: float = 0.5
    workers: int = 1
    views: str = "photo"
    repaint: float = 0.7
    bank_from_epoch: int = -1
    echo: int = 1
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# -- networks ----------------------------------------------------------------------------------------


def _stage(c_in: int, c_out: int, convs: int = 2) -> nn.Sequential:
    layers = []
    for i in range(convs):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.GroupNorm(8, c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class CatalogCNN(nn.Module):
    """4 VGG-style stages (3×3 conv + GroupNorm + ReLU, once in the first stage and twice in the others, then
    2×2 max-pool), global average pool.

    (B, 3, S, S) → (B, w, S/2, S/2) → (B, 2w, S/4) → (B, 4w, S/8) → (B, 8w, S/16) → pool → (B, 8w).

    GroupNorm (Wu & He 2018), not BatchNorm: the memory bank of catalog embeddings is computed in
    eval mode and compared with embeddings computed in train mode in the same loss; with BatchNorm the
    two differ (running vs batch statistics) and training collapsed (measured: the instance loss rose
    towards log N within 4 epochs), and batch statistics would leak which images share a batch.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            _stage(3, width, 1), _stage(width, 2 * width), _stage(2 * width, 4 * width), _stage(4 * width, 8 * width)
        )
        self.out_dim = 8 * width

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))  # (B, 8w)


class MatchNet(nn.Module):
    """features (B, F) → linear projection → (B, D), L2-normalised; category logits over C leaves from
    the embedding; a learned no-match similarity (the dustbin), in cosine units."""

    def __init__(self, features: nn.Module, feature_dim: int, embedding_dim: int, category_count: int):
        super().__init__()
        self.features = features
        self.project = nn.Linear(feature_dim, embedding_dim)
        self.category = nn.Linear(embedding_dim, max(category_count, 1))
        self.dustbin = nn.Parameter(torch.tensor(0.5))
        # Where the product is in a customer photo (mlcore.nn.localise), trained after stage 1 and
        # carried by stage 2 unchanged; None: photos are embedded whole.
        self.localiser: nn.Module | None = None
        # The photo's per-pixel product mask (mlcore.nn.verify), trained after the localiser and
        # carried by stage 2 unchanged; None: the CNN's ranking is not re-ranked.
        self.matte: nn.Module | None = None
        # The learned fourth term of that re-ranking (mlcore.nn.verify.PairVerifier), trained after
        # the matte and carried by stage 2 unchanged; None: three terms.
        self.pair: nn.Module | None = None

    def category_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) unit embeddings → (B, C) logits, scaled as a cosine classifier would be (NormFace,
        Wang et al. 2017): a unit vector through a freshly initialised linear layer gives logits too
        small to train in a few hundred steps."""
        return self.category(z) * CATEGORY_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 normalised → (B, D) float32 unit rows."""
        return F.normalize(self.project(self.features(x)).float(), dim=1)


def matchnet_build(config: MatchCNNConfig, *, category_count: int) -> MatchNet:
    """A MatchNet for `config`, with random (catalog_cnn) or ImageNet (efficientnet_lite0) features.

    Raises:
        MatchTrainingError: unknown arch.
    """
    torch.manual_seed(config.seed)
    if config.arch == "catalog_cnn":
        features = CatalogCNN(config.width)
        dim = features.out_dim
    elif config.arch == "efficientnet_lite0":
        from .backbones import backbone_build

        features, spec = backbone_build("efficientnet_lite0")
        features.train()
        dim = spec.embedding_dim
    else:
        raise MatchTrainingError(f"unknown arch {config.arch!r}; choose catalog_cnn or efficientnet_lite0")
    return MatchNet(features, dim, config.embedding_dim, category_count)


# -- inference ---------------------------------------------------------------------------------------


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def images_embed(
    model: MatchNet, images: torch.Tensor, config: MatchCNNConfig, *, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    """Embed uint8 images (N, C, H, W), C in {1, 3}, any H, W: (N, D) float32 unit rows on the CPU.

    Each image is resized (bilinear, antialiased) so that it fills the network input, as the eval
    transform of mlcore.nn.views does. CUDA runs under bf16 autocast with channels_last.
    """
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = eval_batch(images[start : start + batch_size], config.image_size_px, grayscale=config.grayscale)
            with _autocast(device):
                out.append(model(_to_device(x, device)).float().cpu())
    if not out:
        return torch.zeros((0, config.embedding_dim))
    return torch.cat(out)


# Test-time crops of a customer photo: side fractions, each giving a centre and four corner crops.
PHOTO_CROPS = (0.9, 0.8)


def photo_crops(image: torch.Tensor, fractions: tuple[float, ...] = PHOTO_CROPS) -> list[torch.Tensor]:
    """uint8 (C, H, W) → [the whole image, then per fraction f its centre and four corner crops of
    f·H × f·W], 1 + 5·len(fractions) views of (C, h, w)."""
    h, w = image.shape[-2:]
    views = [image]
    for f in fractions:
        ch, cw = max(1, int(h * f)), max(1, int(w * f))
        oh, ow = h - ch, w - cw
        for top, left in ((oh // 2, ow // 2), (0, 0), (0, ow), (oh, 0), (oh, ow)):
            views.append(image[..., top : top + ch, left : left + cw])
    return views


def photos_embed(
    model: MatchNet,
    images: torch.Tensor | list[torch.Tensor],
    config: MatchCNNConfig,
    *,
    device: torch.device,
    fractions: tuple[float, ...] = PHOTO_CROPS,
    batch_size: int = 64,
) -> torch.Tensor:
    """Embed customer photos with test-time crops: (N, D) float32 unit rows on the CPU.

    A customer photo shows the item somewhere in a larger frame, while catalog images fill theirs.
    Each photo's embedding is the re-normalised mean of the embeddings of the whole photo and of its
    crops (`photo_crops`: by default 11 views, the centre and corners at 90% and 80% of the side), so
    a product framed off-centre or small still matches (test-time augmentation; multi-crop
    evaluation as in Krizhevsky et al. 2012, Simonyan & Zisserman 2015). One vector per photo, so the
    index and the stored embeddings are unchanged. Measured on 500 demo photos of a 2,000-product
    subset (docs/matching.md): recall@3 0.288 → 0.338.

    A model with a localiser (mlcore.nn.localise, trained after stage 1) embeds each photo once,
    cut to its predicted product box instead: on the same subset, recall@3 0.330 → 0.436 on demo
    photos and 0.080 → 0.146 on the second generator's.

    images: uint8 (N, C, H, W), or a list of uint8 (C, H, W) of any sizes; C in {1, 3}.
    """
    model.eval()
    localiser = getattr(model, "localiser", None)
    if localiser is not None and len(images):
        from .localise import photo_boxes, photos_crop

        localiser.cpu()
        images = photos_crop(images, photo_boxes(localiser, images, grayscale=config.grayscale))
        fractions = ()  # the crop is the product: measured, crops of it only lost recall (docs/matching.md)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.cat(
                [
                    torch.cat([eval_batch(v[None], config.image_size_px, grayscale=config.grayscale)
                               for v in photo_crops(image, fractions)])
                    for image in chunk
                ]
            )  # (B·V, 3, S, S)
            with _autocast(device):
                z = model(_to_device(x, device)).float().cpu()
            out.append(F.normalize(z.view(len(chunk), -1, z.shape[1]).mean(dim=1), dim=1))
    if not out:
        return torch.zeros((0, config.embedding_dim))
    return torch.cat(out)


def ranking_features(scores: torch.Tensor) -> torch.Tensor:
    """Sorted top-k cosine scores (Q, k ≥ 2), best first → (Q, 3) rejection features: top-1,
    top-1 − top-2, top-1 − mean(top-2..top-k)."""
    top1 = scores[:, 0]
    return torch.stack([top1, top1 - scores[:, 1], top1 - scores[:, 1:].mean(dim=1)], dim=1)


@dataclass
class Rejection:
    """Logistic model P(the photo's product is in the catalog | ranking features): weights (3,), bias."""

    weights: list[float]
    bias: float
    mean: list[float]
    std: list[float]
    # Photos with probability below it get no suggestion; None: reject nothing.
    threshold: float | None = None

    def probability(self, features: torch.Tensor) -> torch.Tensor:
        """(Q, 3) float32 → (Q,) in [0, 1]."""
        z = (features - torch.tensor(self.mean)) / torch.tensor(self.std)
        return torch.sigmoid(z @ torch.tensor(self.weights) + self.bias)


def rejection_fit(features: torch.Tensor, in_catalog: torch.Tensor, *, l2: float = 1e-3) -> Rejection:
    """Fit the logistic rejection model by L-BFGS on standardised features, classes weighted equally.

    Args:
        features: (n, 3) float32 from ranking_features.
        in_catalog: (n,) bool, True for photos whose product is in the catalog.

    Raises:
        MatchTrainingError: fewer than 2 examples of either class.
    """
    y = in_catalog.float()
    if y.sum() < 2 or (1 - y).sum() < 2:
        raise MatchTrainingError("rejection needs at least 2 in-catalog and 2 not-in-catalog examples")
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    w = torch.zeros(3, requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    pos_weight = (1 - y).sum() / y.sum()
    sample_weight = torch.where(y > 0, pos_weight, torch.ones(()))
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y, weight=sample_weight) + l2 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Rejection(w.detach().tolist(), float(b.detach()), mean.tolist(), std.tolist())


# -- training ----------------------------------------------------------------------------------------


@dataclass
class MatchData:
    """What stage 1 and 2 train on.

    products: (N, C, H, W) uint8 catalog images, one per product, in catalog order.
    category_mask: (N, L) bool, the master-taxonomy leaves each product may be (one True for a
        product filed under a leaf; several for one filed under an inner node; all for an unknown).
    photos: (M, C, H', W') uint8 verified photos (stage 2), or None.
    photo_product: (M,) int64 catalog index of each photo's product, -1 for none / not a product / unfit.
    hard_negatives: (M, K) int64 catalog indices people turned down for each photo, -1 padding.
    """

    products: torch.Tensor
    category_mask: torch.Tensor
    photos: torch.Tensor | None = None
    photo_product: torch.Tensor | None = None
    hard_negatives: torch.Tensor | None = None

    def validate(self) -> None:
        """Raises MatchTrainingError naming the argument that is off."""
        if self.products.dtype != torch.uint8 or self.products.ndim != 4 or self.products.shape[1] not in (1, 3):
            raise MatchTrainingError(
                f"products must be uint8 (N, 1|3, H, W), got {tuple(self.products.shape)} {self.products.dtype}"
            )
        if len(self.products) < 2:
            raise MatchTrainingError("products: at least 2 are needed to discriminate")
        if self.category_mask.shape[0] != len(self.products) or self.category_mask.dtype != torch.bool:
            raise MatchTrainingError("category_mask must be bool (N, L) with N the number of products")
        if not self.category_mask.any(dim=1).all():
            raise MatchTrainingError("category_mask: every product needs at least one possible leaf")
        if self.photos is not None:
            if self.photo_product is None or len(self.photo_product) != len(self.photos):
                raise MatchTrainingError("photo_product must give one catalog index (or -1) per photo")
            if self.photos.dtype != torch.uint8 or self.photos.ndim != 4:
                raise MatchTrainingError("photos must be uint8 (M, C, H, W)")
            if ((self.photo_product < -1) | (self.photo_product >= len(self.products))).any():
                raise MatchTrainingError("photo_product: an index is outside the catalog")
            if self.hard_negatives is not None:
                if len(self.hard_negatives) != len(self.photos):
                    raise MatchTrainingError("hard_negatives must have one row per photo")
                if (self.hard_negatives >= len(self.products)).any():
                    raise MatchTrainingError("hard_negatives: an index is outside the catalog")
                own = (self.hard_negatives == self.photo_product[:, None]) & (self.photo_product[:, None] >= 0)
                if own.any():
                    raise MatchTrainingError("hard_negatives: a photo's own product is among its negatives")


def _partial_label_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−log Σ_{allowed leaves} softmax(logits): cross-entropy with a set of allowed classes (partial
    labels; Jin & Ghahramani 2002). logits (B, L), mask (B, L) bool → scalar."""
    log_p = logits.float().log_softmax(dim=1)
    return -(log_p.masked_fill(~mask, -math.inf).logsumexp(dim=1)).mean()


def _schedule(optimizer, *, steps_per_epoch: int, epochs: int):
    warmup = steps_per_epoch
    total = max(steps_per_epoch * epochs, warmup + 1)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


class TrainingInterrupted(Exception):
    """Raised by Trainer.fit (between two steps) and EchoViews.draw (between two batches) when the
    `should_stop` callable they were given returns True: the process is shutting down. The last
    epoch's checkpoint (written by fit's `on_epoch`) is where a resumed run starts again."""


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _loader_worker_init(worker_id: int) -> None:
    """A DataLoader worker ignores SIGINT and SIGTERM: a stop signal sent to the whole process group
    (Ctrl-C of `make demo`, which signals each worker's group) is for the training process to act on.
    Killed first, a DataLoader worker made the training process raise "DataLoader worker exited
    unexpectedly" and the run was failed instead of resumed. A worker still exits when the training
    process is gone (PyTorch's watchdog checks its parent every 5 s).

    The worker was forked with both signals blocked (`_iterate`): one that arrived before this point
    is pending, and is discarded when its action becomes SIG_IGN (POSIX), before they are unblocked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _iterate(loader: torch.utils.data.DataLoader):
    """iter(loader), with SIGINT and SIGTERM blocked in this thread while its worker processes are
    started. They inherit the block, so a stop signal sent to the process group before a worker has
    run `_loader_worker_init` waits there and is discarded, instead of killing a worker half-started
    (PyTorch's own SIGTERM handler is set first in a worker, and re-raises the signal). This
    process's own pending stop signals are delivered when the block is lifted."""
    if not loader.num_workers:
        return iter(loader)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _loader(dataset, *, batch_size: int, workers: int, seed: int, epoch: int, drop_last: bool):
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        num_workers=workers,
        generator=generator,
        persistent_workers=False,
        worker_init_fn=_loader_worker_init if workers else None,
    )


class EchoViews(torch.utils.data.Dataset):
    """A set of generated views held in memory and trained on for several epochs (data echoing: Choi
    et al. 2019, "Faster Neural Network Training with Data Echoing").

    On a CPU the views, not the network, bound stage 1: one DataLoader worker makes about 70 views/s
    while two threads train on about 250 views/s (measured on this project's 2-core machine). Reusing
    each view for a few epochs lets the network take the steps it needs; more distinct views per
    product are still drawn every `echo` epochs. Items are (clean (3, S, S), view (3, S, S), index),
    float32, as CatalogViews gives them.
    """

    def __init__(self, clean: torch.Tensor, views: torch.Tensor, view_epoch: int):
        self.clean, self.views, self.view_epoch = clean, views, view_epoch  # float16 (N, 1|3, S, S) each

    @classmethod
    def draw(
        cls, source: CatalogViews, view_epoch: int, *, workers: int, should_stop: Callable[[], bool] | None = None
    ) -> "EchoViews":
        """Draw one view of every product of `source` (its .epoch already set to view_epoch).

        Raises:
            TrainingInterrupted: `should_stop()` returned True between two batches of 64 views (about
                a second's work on one CPU core: a stopping worker has 5 s before bin/demo kills it).
        """
        loader = torch.utils.data.DataLoader(
            source,
            batch_size=64,
            shuffle=False,
            num_workers=workers,
            worker_init_fn=_loader_worker_init if workers else None,
        )
        clean, views = [], []
        keep = 1 if source.images.shape[1] == 1 else 3  # grayscale views repeat one channel
        for c, v, _ in _iterate(loader):
            if should_stop is not None and should_stop():
                raise TrainingInterrupted(f"stopped while drawing views, after {sum(map(len, views))} of {len(source)}")
            clean.append(c[:, :keep].half())
            views.append(v[:, :keep].half())
        return cls(torch.cat(clean), torch.cat(views), view_epoch)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int):
        return (
            self.clean[index].float().expand(3, -1, -1),
            self.views[index].float().expand(3, -1, -1),
            index,
        )


class Trainer:
    """Stage 1 or stage 2 training of a MatchNet, resumable after any epoch.

    Deterministic for a seed on the CPU: views are drawn from a per-(seed, epoch, item) generator, the
    order from a per-(seed, epoch) one, so a run resumed from a checkpoint is bit-identical to one
    that was never interrupted (tested).
    """

    def __init__(
        self,
        data: MatchData,
        config: MatchCNNConfig,
        *,
        device: torch.device,
        model: MatchNet | None = None,
        stage: int = 1,
    ):
        data.validate()
        if stage == 2 and data.photos is None:
            raise MatchTrainingError("stage 2 needs verified photos (photos, photo_product)")
        self.data, self.config, self.device, self.stage = data, config, device, stage
        self.model = (model or matchnet_build(config, category_count=data.category_mask.shape[1])).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.views = CatalogViews(
            data.products,
            size_px=config.image_size_px,
            grayscale=config.grayscale,
            seed=config.seed,
            repaint=config.repaint,
            style=config.views,
        )
        self.photo_views = (
            PhotoViews(data.photos, size_px=config.image_size_px, grayscale=config.grayscale, seed=config.seed)
            if stage == 2
            else None
        )
        self.steps_per_epoch = max(1, len(data.products) // config.batch_size)
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if name.startswith(("localiser.", "matte.", "pair.")):  # trained on their own; stage 2 keeps them
                p.requires_grad_(False)
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
        self.scheduler = _schedule(self.optimizer, steps_per_epoch=self.steps_per_epoch, epochs=config.epochs)
        self.epoch = 0
        self.history: list[dict] = []
        self._echo_set: EchoViews | None = None
        self._should_stop: Callable[[], bool] | None = None  # set by fit

    # -- checkpoints --
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "stage": self.stage,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`. Raises MatchTrainingError when it belongs to another config."""
        if state.get("format") != CHECKPOINT_FORMAT or state.get("stage") != self.stage:
            raise MatchTrainingError("checkpoint is not a matching-CNN checkpoint of this stage")
        if state["config"] != self.config.to_dict():
            raise MatchTrainingError("checkpoint was made with another config")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])

    # -- one epoch --
    def _bank(self) -> torch.Tensor:
        return images_embed(self.model, self.data.products, self.config, device=self.device).to(self.device)

    def _epoch_views(self) -> torch.utils.data.Dataset:
        """This epoch's dataset of (clean, view, index). With config.echo == 1, CatalogViews drawing
        fresh views; with echo = E > 1, a view set drawn once for epochs kE..kE+E-1 (view seed kE, so
        resuming at any epoch redraws the same set) and held in memory as float16, (N, 1|3, S, S)."""
        echo = max(1, self.config.echo)
        if echo == 1:
            self.views.epoch = self.epoch
            return self.views
        view_epoch = self.epoch // echo
        if self._echo_set is None or self._echo_set.view_epoch != view_epoch:
            self._echo_set = None  # free the old set before drawing the next
            self.views.epoch = view_epoch
            self._echo_set = EchoViews.draw(
                self.views, view_epoch, workers=self.config.workers, should_stop=self._should_stop
            )
        return self._echo_set

    def train_one_epoch(self) -> dict:
        """One pass over the catalog (and, in stage 2, the verified photos). Returns the epoch's
        {"epoch", "loss", "instance_loss", "category_loss", "photo_loss", "seconds", "images_per_s"}."""
        config, device = self.config, self.device
        started = time.perf_counter()
        # (N, D), detached: the memory of catalog embeddings for this epoch. Only stage 2 and the bank
        # term read it; embedding the catalog costs stage 1 seconds per epoch for nothing otherwise.
        bank = self._bank() if self.photo_views is not None or config.bank_from_epoch >= 0 else None
        views = self._epoch_views()
        loader = _loader(
            views,
            batch_size=config.batch_size,
            workers=0 if isinstance(views, EchoViews) else config.workers,
            seed=config.seed,
            epoch=self.epoch,
            drop_last=len(self.views) > config.batch_size,
        )
        photo_iter = None
        if self.photo_views is not None:
            self.photo_views.epoch = self.epoch
            photo_loader = _loader(
                self.photo_views,
                batch_size=config.photo_batch_size,
                workers=0,
                seed=config.seed + 1,
                epoch=self.epoch,
                drop_last=False,
            )
            photo_iter = _cycle(photo_loader)
        self.model.train()
        mask = self.data.category_mask.to(device)
        totals = {"loss": 0.0, "instance_loss": 0.0, "category_loss": 0.0, "photo_loss": 0.0}
        steps = images = 0
        tau = config.temperature
        for clean, view, idx in _iterate(loader):
            if self._should_stop is not None and self._should_stop():
                raise TrainingInterrupted(f"stopped in epoch {self.epoch + 1} after {steps} steps")
            clean, view, idx = _to_device(clean, device), _to_device(view, device), idx.to(device)
            with _autocast(device):
                z = self.model(torch.cat([clean, view]))  # (2B, D)
            z = z.float()
            z_p, z_v = z[: len(idx)], z[len(idx) :]
            in_batch = torch.arange(len(idx), device=device)
            instance = F.cross_entropy(z_v @ z_p.T / tau, in_batch) + F.cross_entropy(z_p @ z_v.T / tau, in_batch)
            # (N, D): the batch's products fresh, the rest from memory
            columns = bank.index_put((idx,), z_p) if bank is not None else None
            if 0 <= config.bank_from_epoch <= self.epoch:
                instance = instance + F.cross_entropy(z_v @ columns.T / tau, idx)
            category_logits = self.model.category_logits(z)
            category = _partial_label_loss(category_logits, mask[idx].repeat(2, 1))
            loss = instance + config.category_weight * category
            photo_loss = torch.zeros((), device=device)
            if photo_iter is not None:
                photo, photo_idx = next(photo_iter)
                photo_loss = self._photo_loss(_to_device(photo, device), photo_idx.to(device), columns, mask)
                loss = loss + photo_loss
                images += len(photo)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if bank is not None:
                bank = bank.index_put((idx,), z_p.detach())
            for name, value in (
                ("loss", loss),
                ("instance_loss", instance),
                ("category_loss", category),
                ("photo_loss", photo_loss),
            ):
                totals[name] += float(value.detach())
            steps += 1
            images += 2 * len(idx)
        seconds = time.perf_counter() - started
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            **{k: v / max(steps, 1) for k, v in totals.items()},
            "seconds": seconds,
            "images_per_s": images / seconds,
        }
        self.history.append(row)
        return row

    def _photo_loss(self, photo, photo_idx, columns, mask) -> torch.Tensor:
        """Stage 2: verified photos against the catalog (+ the dustbin), hard negatives, category."""
        tau = self.config.temperature
        product = self.data.photo_product.to(self.device)[photo_idx]  # (P,), -1 = no match
        with _autocast(self.device):
            z = self.model(photo)
        z = z.float()
        scores = z @ columns.T  # (P, N)
        dustbin = self.model.dustbin.expand(len(z), 1)
        logits = torch.cat([scores, dustbin], dim=1) / tau
        target = torch.where(product >= 0, product, torch.full_like(product, scores.shape[1]))
        loss = F.cross_entropy(logits, target)
        matched = product >= 0
        if self.data.hard_negatives is not None and matched.any():
            negatives = self.data.hard_negatives.to(self.device)[photo_idx][matched]  # (P', K)
            pos = scores[matched].gather(1, product[matched, None])  # (P', 1)
            neg = scores[matched].gather(1, negatives.clamp_min(0)).masked_fill(negatives < 0, -math.inf)
            hard = F.cross_entropy(
                torch.cat([pos, neg], 1) / tau, torch.zeros(int(matched.sum()), dtype=torch.long, device=self.device)
            )
            loss = loss + self.config.hard_negative_weight * hard
        if matched.any():
            loss = loss + self.config.category_weight * _partial_label_loss(
                self.model.category_logits(z[matched]), mask[product[matched]]
            )
        return loss

    def fit(
        self,
        *,
        on_epoch: Callable[[dict, "Trainer"], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[dict]:
        """Train the remaining epochs; `on_epoch(row, trainer)` after each (save a checkpoint there).

        `should_stop()` is asked before every step (and every batch of views drawn): when it returns
        True, fit raises TrainingInterrupted and the epoch in progress is lost; the state after the
        last whole epoch, which `on_epoch` saw, is what to resume from. Returns the history rows.
        """
        self._should_stop = should_stop
        while self.epoch < self.config.epochs:
            row = self.train_one_epoch()
            if on_epoch:
                on_epoch(row, self)
        return self.history


def _cycle(loader):
    while True:
        yield from loader


# -- evaluation and rejection --------------------------------------------------------------------------


def topk_search(
    queries: torch.Tensor, catalog: torch.Tensor, *, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine: queries (Q, D), catalog (N, D), unit rows → (indices (Q, k), scores (Q, k)),
    best first. exclude: (Q,) catalog index to leave out per query (-1 = none)."""
    out_idx, out_scores = [], []
    for start in range(0, len(queries), 1024):
        s = queries[start : start + 1024] @ catalog.T
        if exclude is not None:
            e = exclude[start : start + 1024]
            rows = torch.nonzero(e >= 0).flatten()
            s[rows, e[rows]] = -math.inf
        scores, idx = torch.topk(s, min(k, catalog.shape[0]), dim=1)
        out_idx.append(idx)
        out_scores.append(scores)
    return torch.cat(out_idx), torch.cat(out_scores)


def conformal_threshold(scores: torch.Tensor, *, max_rejection: float) -> float | None:
    """The split-conformal lower quantile (Vovk, Gammerman & Shafer 2005): the j-th smallest of the
    n scores of true matches, j = ⌊α(n + 1)⌋, so that a new true match falls below it with probability
    at most α = max_rejection. None when n is too small for any rejection at that α."""
    j = math.floor(max_rejection * (len(scores) + 1))
    if j < 1:
        return None
    return float(torch.sort(scores.flatten()).values[j - 1])


def rejection_calibrate(
    model: MatchNet,
    data: MatchData,
    config: MatchCNNConfig,
    *,
    device: torch.device,
    count: int = 2000,
    seed: int = 1,
    max_match_rejection: float = 0.05,
) -> Rejection:
    """Fit the rejection model on `count` fresh catalog views: each searched with its product in the
    catalog (positive) and with it left out (negative), plus, in stage 2, people's verified photos
    (matched: positive; none / not a product / unfit: negative). Its threshold is the conformal
    quantile of the positives' P(in catalog) (conformal_threshold, α = max_match_rejection), over
    people's verified matches when there are at least 20, else over the catalog views.

    Raises:
        MatchTrainingError: too few examples of a class.
    """
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data.products), generator=generator)[:count]
    views = CatalogViews(
        data.products, size_px=config.image_size_px, grayscale=config.grayscale, seed=config.seed + 10_000 + seed
    )
    catalog = images_embed(model, data.products, config, device=device)
    batch = torch.stack([views.view_of(int(i)) for i in pick])
    model.eval()
    with torch.inference_mode():
        z = torch.cat([model(_to_device(batch[s : s + 512], device)).float().cpu() for s in range(0, len(batch), 512)])
    _, with_own = topk_search(z, catalog, k=10)
    _, without_own = topk_search(z, catalog, k=10, exclude=pick)
    features = [ranking_features(with_own), ranking_features(without_own)]
    labels = [torch.ones(len(pick), dtype=torch.bool), torch.zeros(len(pick), dtype=torch.bool)]
    if data.photos is not None:
        zp = photos_embed(model, data.photos, config, device=device)
        _, s = topk_search(zp, catalog, k=10)
        features.append(ranking_features(s))
        labels.append(data.photo_product >= 0)
    rejection = rejection_fit(torch.cat(features), torch.cat(labels))
    if data.photos is not None and int((data.photo_product >= 0).sum()) >= 20:
        positives = rejection.probability(features[-1][labels[-1]])
    else:
        positives = rejection.probability(features[0])
    rejection.threshold = conformal_threshold(positives, max_rejection=max_match_rejection)
    return rejection


# -- checkpoints -------------------------------------------------------------------------------------


def match_cnn_save(
    model: MatchNet, config: MatchCNNConfig, path, *, rejection: Rejection | None = None, extra: dict | None = None
) -> str:
    """Write the model (weights, config, rejection model, extra) to `path`; returns its sha256 hex."""
    buffer = io.BytesIO()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "category_count": model.category.out_features,
            "model": {k: v.cpu() for k, v in model.state_dict().items()},
            "rejection": asdict(rejection) if rejection else None,
            "localiser_width": model.localiser.width if getattr(model, "localiser", None) is not None else None,
            "matte_width": model.matte.width if getattr(model, "matte", None) is not None else None,
            "pair_width": model.pair.width if getattr(model, "pair", None) is not None else None,
            "extra": extra or {},
        },
        buffer,
    )
    data = buffer.getvalue()
    with open(path, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def match_cnn_load(
    path, *, device: torch.device | None = None
) -> tuple[MatchNet, MatchCNNConfig, Rejection | None, dict]:
    """Read a checkpoint written by match_cnn_save → (model in eval mode, config, rejection, extra).

    Raises:
        MatchTrainingError: not a matching-CNN checkpoint. OSError: unreadable file.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise MatchTrainingError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise MatchTrainingError(f"{path}: not a matching-CNN checkpoint")
    config = MatchCNNConfig(**state["config"])
    model = matchnet_build(
        replace(config, arch="catalog_cnn") if config.arch == "catalog_cnn" else config,
        category_count=state["category_count"],
    )
    if state.get("localiser_width"):
        from .localise import Localiser

        model.localiser = Localiser(int(state["localiser_width"]))
    if state.get("matte_width"):
        from .verify import Matte

        model.matte = Matte(int(state["matte_width"]))
    if state.get("pair_width"):
        from .verify import PairVerifier

        model.pair = PairVerifier(int(state["pair_width"]))
    model.load_state_dict(state["model"])
    model = model.to(device or torch.device("cpu")).eval()
    rejection = Rejection(**state["rejection"]) if state.get("rejection") else None
    return model, config, rejection, state.get("extra", {})


def model_copy(model: MatchNet) -> MatchNet:
    """A deep copy (stage 2 starts from stage 1's model without changing it)."""
    return copy.deepcopy(model)


__all__ = [
    "MatchCNNConfig",
    "MatchNet",
    "CatalogCNN",
    "MatchData",
    "Trainer",
    "Rejection",
    "images_embed",
    "photos_embed",
    "photo_crops",
    "matchnet_build",
    "ranking_features",
    "rejection_fit",
    "rejection_calibrate",
    "topk_search",
    "match_cnn_save",
    "match_cnn_load",
    "model_copy",
    "MatchTrainingError",
    "np",
]
