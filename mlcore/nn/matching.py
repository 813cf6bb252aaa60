"""Photo → catalog product matching head, trained from verified matches, with a learned rejection.

The backbone (mlcore.nn.backbones) stays frozen; its L2-normalised embeddings are the input here.
A small head maps them to a shared, L2-normalised space (d = D for the default residual towers,
`dim` for the projection ones) in which cosine similarity ranks catalog products for a photo:

    photo embedding (N, D) ──photo tower──▶ (N, d) ─┐
                                                     ├─ cosine (N, P) ─▶ top-k / "no suggestion"
    product embedding (P, D) ─product tower─▶ (P, d) ┘

- Towers (default): a low-rank residual x + B A x of rank 64 on each side (LowRankResidual; LoRA's
  update, Hu et al. 2021, applied to the identity), zero-initialised so the untrained head *is* the
  pretrained cosine ranking. Alternatives kept behind the config: a linear projection to `dim`
  (`rank=0`) or a 2-layer MLP (`rank=0, hidden>0`), initialised as a random orthogonal projection
  (Johnson & Lindenstrauss 1984). `towers="two"` gives photos and products separate weights (the
  two domains differ: studio packshots vs. phone photos); `towers="shared"` uses one.
- Loss: InfoNCE (Oord, Li & Vinyals 2018, "Representation learning with contrastive predictive
  coding"; the image–text form of Radford et al. 2021, CLIP) over a set of candidate columns per
  batch: the batch's positive products, the **hard negatives** (candidates people rejected for each
  photo of the batch), and `catalog_negatives` products drawn uniformly from the whole catalog.
  One extra column, a learned "dustbin" score (the no-match bin of SuperGlue, Sarlin et al. 2020),
  is the target of photos answered "none of these" / "not a product" / "unfit", so rejections
  push every product's similarity for those photos below a learned level.
- Rejection at inference: a threshold on the top-1 cosine similarity, fitted on a validation split
  of verified matches by the split-conformal quantile (Vovk et al. 2005; Angelopoulos & Bates 2021,
  "A gentle introduction to conformal prediction"), so that a new photo of a catalog product is
  rejected with probability at most `max_match_rejection` (exchangeability assumed).

What was chosen, and why (bench/_match_economy.py on the demo data, 800 verified matches + 240
rejections, 10,000 products, EfficientNet-Lite0 at 96 px; figures in docs/matching.md): frozen
features + two low-rank residual towers of rank 64, 5 epochs at lr 1e-3, 2,048 sampled catalog
negatives. On 1,000 held-out photos of other catalog products recall@1 went from 0.035 to 0.090 and
recall@3 from 0.066 to 0.153. A linear projection to 128 dimensions reached 0.072 (a first run of it
for 30 epochs at lr 3e-3 over-fitted the 800 products: train loss 0.03, recall@1 0.021), an MLP
0.054, shared towers 0.078, rank 16 0.063; rank 256 was no better than 64. Hard negatives made no
measurable difference (mean recall@1 over 3 training seeds 0.086 with, 0.083 without); they stay in
because they cost nothing and are what people actually rejected. Training on the rejected photos is
what makes non-product photos rejectable (0.70 → 0.98 of them get no suggestion). The backbone is
not fine-tuned: on the 2-core CPU every epoch would re-run the network over the photos and the
sampled catalog (the embedding alone ran at 9-30 img/s there under load), while the head trains on
cached embeddings in 10-40 s.

Pure PyTorch and numpy; no Django import.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CHECKPOINT_FORMAT = "fitcheck.match_head/1"


@dataclass(frozen=True)
class MatchConfig:
    """Hyper-parameters of the matching head and its training.

    dim: output embedding size (cosine space shared by photos and products).
    hidden: 0 = one linear layer per tower; > 0 = Linear(D, hidden) → GELU → Linear(hidden, dim).
    rank: > 0 replaces the projection by a low-rank residual x + B A x of that rank (LowRankResidual);
        the output then has D dimensions and `dim`/`hidden` are ignored.
    towers: "two" (separate photo and product weights) or "shared" (one tower for both).
    epochs: passes over the training photos.
    batch_size: photos per optimiser step.
    lr: AdamW learning rate (Loshchilov & Hutter 2019), cosine-annealed to 0 over all steps.
    weight_decay: AdamW decoupled weight decay.
    temperature: InfoNCE softmax temperature τ (logits are cosine / τ).
    catalog_negatives: catalog products drawn uniformly per step as extra negative columns
        (0 = only the batch's positives and hard negatives; >= P = the whole catalog every step).
    dustbin_init: initial similarity level of the learned no-match column, in cosine units.
    seed: seeds weight initialisation, shuffling and negative sampling (training is deterministic
        on the CPU for a given seed and inputs).
    """

    dim: int = 128
    hidden: int = 0
    rank: int = 64
    towers: Literal["two", "shared"] = "two"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    catalog_negatives: int = 2048
    dustbin_init: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if (
            self.dim < 1
            or self.hidden < 0
            or self.rank < 0
            or self.epochs < 0
            or self.batch_size < 1
            or self.catalog_negatives < 0
        ):
            raise ValueError(f"MatchConfig has a non-positive size: {self}")
        if self.towers not in ("two", "shared"):
            raise ValueError(f"towers must be 'two' or 'shared', got {self.towers!r}")
        if not (self.lr > 0 and self.temperature > 0 and self.weight_decay >= 0):
            raise ValueError(f"lr and temperature must be > 0 and weight_decay >= 0: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class LowRankResidual(nn.Module):
    """x ↦ x + B(A x), A: (rank, D), B: (D, rank) zero-initialised: the identity at the start.

    A low-rank update of the identity map, as LoRA (Hu et al. 2021) updates a frozen weight; it
    starts exactly at the backbone's cosine geometry and weight decay pulls it back towards it.
    """

    def __init__(self, in_dim: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_dim, rank, bias=False)  # A
        self.up = nn.Linear(rank, in_dim, bias=False)  # B
        nn.init.orthogonal_(self.down.weight)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))  # (B, D) → (B, rank) → (B, D)


def _tower(in_dim: int, config: MatchConfig) -> nn.Module:
    if config.rank:
        return LowRankResidual(in_dim, config.rank)
    if config.hidden:
        layers = [nn.Linear(in_dim, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.dim)]
    else:
        layers = [nn.Linear(in_dim, config.dim)]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight)  # a rotation/projection: keeps cosines roughly as they were
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class MatchHead(nn.Module):
    """Photo and product towers (D → d, L2-normalised outputs) and the learned no-match level.

    d is D for the low-rank residual towers (config.rank > 0) and config.dim otherwise.

    Attributes:
        photo_tower, product_tower: (B, D) float32 → (B, d); the same module when towers="shared".
        dustbin: scalar parameter, the no-match column's similarity in cosine units.
    """

    def __init__(self, in_dim: int, config: MatchConfig):
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {in_dim}")
        self.in_dim = in_dim
        self.config = config
        self.photo_tower = _tower(in_dim, config)
        if config.towers == "shared":
            self.product_tower = self.photo_tower
        else:  # the same starting weights, so the untrained head ranks as the shared one does
            self.product_tower = _tower(in_dim, config)
            self.product_tower.load_state_dict(self.photo_tower.state_dict())
        self.dustbin = nn.Parameter(torch.tensor(float(config.dustbin_init)))

    def photo(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.photo_tower(x), dim=1)  # (B, D) → (B, d), unit rows

    def product(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.product_tower(x), dim=1)  # (M, D) → (M, d), unit rows


# -- input checks --------------------------------------------------------------------------------


def _matrix(name: str, value, *, dim: int | None = None, allow_empty: bool = False) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, D) array, got shape {array.shape}")
    if not allow_empty and array.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if array.shape[1] == 0 or (dim is not None and array.shape[1] != dim):
        raise ValueError(f"{name} has {array.shape[1]} columns, expected {dim if dim is not None else '>= 1'}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _positives(positives, *, n: int, product_count: int) -> np.ndarray:
    array = np.asarray(positives)
    if array.shape != (n,):
        raise ValueError(f"positives must have shape ({n},), one per photo, got {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"positives must be integer product indices (or -1), got {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < -1 or array.max() >= product_count):
        raise ValueError(f"positives must be in [-1, {product_count - 1}] (-1 = a rejection)")
    return array


def _hard_negatives(hard_negatives, *, positives: np.ndarray, product_count: int) -> list[np.ndarray]:
    n = len(positives)
    if hard_negatives is None:
        return [np.zeros(0, np.int64) for _ in range(n)]
    if len(hard_negatives) != n:
        raise ValueError(f"hard_negatives must hold one list per photo ({n}), got {len(hard_negatives)}")
    out = []
    for i, negatives in enumerate(hard_negatives):
        array = np.asarray(list(negatives), dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() >= product_count):
            raise ValueError(f"hard_negatives[{i}] holds a product index outside [0, {product_count - 1}]")
        if positives[i] >= 0 and (array == positives[i]).any():
            raise ValueError(f"hard_negatives[{i}] holds the photo's own positive product {positives[i]}")
        out.append(np.unique(array))
    return out


# -- loss ----------------------------------------------------------------------------------------


def match_batch_columns(
    positives: np.ndarray,
    hard_negatives: list[np.ndarray],
    *,
    product_count: int,
    sampled: int,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate product columns of one batch and each photo's target column.

    Args:
        positives: (B,) int64, each photo's product index, -1 for a rejection.
        hard_negatives: B arrays of int64 product indices rejected for each photo.
        product_count: P, the catalog size.
        sampled: products drawn uniformly without replacement from the catalog (capped at P).
        generator: torch RNG for the draw.

    Returns:
        (columns (M,) int64 sorted unique product indices, targets (B,) int64): a photo's target is
        the position of its positive in `columns`, or M (the dustbin column) for a rejection.
    """
    parts = [positives[positives >= 0], *hard_negatives]
    if sampled:
        draw = torch.randperm(product_count, generator=generator)[: min(sampled, product_count)]
        parts.append(draw.numpy().astype(np.int64))
    columns = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    targets = np.where(positives >= 0, np.searchsorted(columns, np.maximum(positives, 0)), len(columns))
    return columns.astype(np.int64), targets.astype(np.int64)


def match_loss(
    photo_z: torch.Tensor,
    column_z: torch.Tensor,
    targets: torch.Tensor,
    *,
    dustbin: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE over product columns plus a dustbin column (Oord et al. 2018; Sarlin et al. 2020).

    Args:
        photo_z: (B, d) float32 unit rows.
        column_z: (M, d) float32 unit rows, the candidate products.
        targets: (B,) int64 in [0, M]; M selects the dustbin (a rejected photo).
        dustbin: scalar tensor, the no-match similarity in cosine units.
        temperature: τ > 0.

    Returns:
        Scalar: mean over photos of -log softmax([cos(photo, columns), dustbin] / τ)[target].
    """
    logits = photo_z @ column_z.T  # (B, M) cosine similarities
    logits = torch.cat([logits, dustbin.expand(len(photo_z), 1)], dim=1) / temperature  # (B, M + 1)
    return F.cross_entropy(logits, targets)


# -- training ------------------------------------------------------------------------------------


def _recall_at_1(head: MatchHead, photo: torch.Tensor, product: torch.Tensor, positives: np.ndarray) -> float:
    keep = positives >= 0
    if not keep.any():
        return float("nan")
    with torch.inference_mode():
        scores = head.photo(photo[torch.from_numpy(keep)]) @ head.product(product).T
    top1 = scores.argmax(dim=1).numpy()
    return float((top1 == positives[keep]).mean())


def match_head_train(
    photo_emb: np.ndarray,
    product_emb: np.ndarray,
    positives: np.ndarray,
    hard_negatives: list[list[int]] | None,
    config: MatchConfig,
    *,
    val_photo_emb: np.ndarray | None = None,
    val_positives: np.ndarray | None = None,
) -> tuple[MatchHead, dict]:
    """Train a matching head on verified answers (InfoNCE with hard negatives and a dustbin).

    Args:
        photo_emb: (N, D) float32 backbone embeddings of the answered photos.
        product_emb: (P, D) float32 backbone embeddings of the whole catalog.
        positives: (N,) int64, the product index people confirmed for each photo, or -1 when they
            answered "none of these", "not a product" or "unfit".
        hard_negatives: None or N lists of product indices people rejected for that photo (the
            suggested candidates that were not picked). They become negative columns of its batch.
        config: hyper-parameters; `config.seed` makes the run deterministic on the CPU.
        val_photo_emb, val_positives: optional validation photos (V, D) and products (V,) int64; when
            given, recall@1 over the whole catalog is measured after every epoch and the weights of
            the best epoch are kept (early stopping).

    Returns:
        (head in eval mode on the CPU, report) with report = {"epochs": [{"epoch", "loss",
        "val_recall_at_1"}], "best_epoch", "wall_s", "photos_per_s" (photo rows through the loss per
        second), "pairs_per_s" (photo × candidate-column similarities scored per second), "steps"}.
        Epoch 0 is the untrained head (loss not measured: nan).

    Raises:
        ValueError: empty inputs, mismatched shapes, non-finite values, product indices out of range,
            a photo whose hard negatives hold its own positive, or validation inputs given by half.
    """
    product = _matrix("product_emb", product_emb)
    photo = _matrix("photo_emb", photo_emb, dim=product.shape[1])
    pos = _positives(positives, n=len(photo), product_count=len(product))
    hard = _hard_negatives(hard_negatives, positives=pos, product_count=len(product))
    if (val_photo_emb is None) != (val_positives is None):
        raise ValueError("give both val_photo_emb and val_positives, or neither")
    val = None
    if val_photo_emb is not None:
        val_photo = _matrix("val_photo_emb", val_photo_emb, dim=product.shape[1])
        val = (torch.from_numpy(val_photo), _positives(val_positives, n=len(val_photo), product_count=len(product)))

    torch.manual_seed(config.seed)  # weight init; the loop below draws only from its own generator
    head = MatchHead(product.shape[1], config)
    generator = torch.Generator().manual_seed(config.seed)
    photo_t, product_t = torch.from_numpy(photo), torch.from_numpy(product)
    steps_per_epoch = math.ceil(len(photo) / config.batch_size)
    total_steps = max(1, steps_per_epoch * config.epochs)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )

    def val_recall() -> float:
        return _recall_at_1(head, val[0], product_t, val[1])

    epochs = [{"epoch": 0, "loss": float("nan"), "val_recall_at_1": val_recall() if val else None}]
    best = (epochs[0]["val_recall_at_1"], 0, {k: v.clone() for k, v in head.state_dict().items()}) if val else None
    rows = pairs = 0
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        head.train()
        order = torch.randperm(len(photo), generator=generator).numpy()
        loss_sum = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            columns, targets = match_batch_columns(
                pos[idx],
                [hard[i] for i in idx],
                product_count=len(product),
                sampled=config.catalog_negatives,
                generator=generator,
            )
            photo_z = head.photo(photo_t[torch.from_numpy(idx)])  # (B, dim)
            column_z = head.product(product_t[torch.from_numpy(columns)])  # (M, dim)
            loss = match_loss(
                photo_z, column_z, torch.from_numpy(targets), dustbin=head.dustbin, temperature=config.temperature
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(idx)
            rows += len(idx)
            pairs += len(idx) * (len(columns) + 1)
        head.eval()
        row = {"epoch": epoch, "loss": loss_sum / len(photo), "val_recall_at_1": None}
        if val:
            row["val_recall_at_1"] = val_recall()
            if row["val_recall_at_1"] > best[0]:
                best = (row["val_recall_at_1"], epoch, {k: v.clone() for k, v in head.state_dict().items()})
        epochs.append(row)
    wall_s = time.perf_counter() - started
    best_epoch = config.epochs
    if best is not None:
        best_epoch = best[1]
        head.load_state_dict(best[2])
    return head.eval(), {
        "epochs": epochs,
        "best_epoch": best_epoch,
        "wall_s": wall_s,
        "steps": steps_per_epoch * config.epochs,
        "photos_per_s": rows / wall_s if wall_s else float("nan"),
        "pairs_per_s": pairs / wall_s if wall_s else float("nan"),
    }


# -- inference -----------------------------------------------------------------------------------


def match_head_apply(head: MatchHead, emb: np.ndarray, *, side: Literal["photo", "product"]) -> np.ndarray:
    """Project backbone embeddings through one tower.

    Args:
        head: a trained MatchHead.
        emb: (n, D) float32 backbone embeddings (n may be 0).
        side: "photo" or "product": which tower.

    Returns:
        (n, d) float32 (d: see MatchHead), rows L2-normalised (cosine similarity = dot product).

    Raises:
        ValueError: `emb` is not (n, head.in_dim) float, holds NaN/inf, or `side` is unknown.
    """
    if side not in ("photo", "product"):
        raise ValueError(f"side must be 'photo' or 'product', got {side!r}")
    x = torch.from_numpy(_matrix("emb", emb, dim=head.in_dim, allow_empty=True))
    head.eval()
    with torch.inference_mode():
        z = head.photo(x) if side == "photo" else head.product(x)
    return z.numpy().astype(np.float32, copy=False)


def topk_scores(
    photo_emb: np.ndarray, product_emb: np.ndarray, head: MatchHead | None, *, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k products of each photo by cosine similarity, through `head` (or raw, when None).

    Args:
        photo_emb: (Q, D) float32 backbone embeddings, L2-normalised when head is None.
        product_emb: (P, D) float32 backbone embeddings, L2-normalised when head is None.
        head: a MatchHead, or None for the pretrained baseline (cosine of the backbone embeddings).
        k: products per photo, >= 1; capped at P.

    Returns:
        (indices (Q, k') int64 into product_emb, scores (Q, k') float32 in [-1, 1]), best first.

    Raises:
        ValueError: empty catalog, shape or dimension mismatch, k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dim = head.in_dim if head is not None else None
    product = _matrix("product_emb", product_emb, dim=dim)
    photo = _matrix("photo_emb", photo_emb, dim=product.shape[1], allow_empty=True)
    if head is not None:
        photo = match_head_apply(head, photo, side="photo")
        product = match_head_apply(head, product, side="product")
    k = min(k, len(product))
    if len(photo) == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    scores, idx = torch.topk(torch.from_numpy(photo) @ torch.from_numpy(product).T, k, dim=1)  # (Q, k)
    return idx.numpy().astype(np.int64), scores.numpy()


def suggest(
    photo_emb: np.ndarray,
    product_emb: np.ndarray,
    head: MatchHead | None,
    *,
    k: int = 3,
    threshold: float | None = None,
) -> list[list[tuple[int, float]] | None]:
    """Per photo, its top-k catalog products with scores, or None ("no suggestion").

    Args:
        photo_emb, product_emb, head, k: as in `topk_scores`.
        threshold: a photo whose top-1 cosine similarity is below it gets None (see
            `rejection_threshold_fit`); None = never reject.

    Returns:
        One entry per photo: [(product index, cosine similarity in [-1, 1]), ...] best first, or None.

    Raises:
        ValueError: as `topk_scores`; a NaN threshold.
    """
    if threshold is not None and math.isnan(threshold):
        raise ValueError("threshold is NaN")
    idx, scores = topk_scores(photo_emb, product_emb, head, k=k)
    out: list[list[tuple[int, float]] | None] = []
    for row_idx, row_scores in zip(idx, scores, strict=True):
        if threshold is not None and row_scores[0] < threshold:
            out.append(None)
        else:
            out.append([(int(p), float(s)) for p, s in zip(row_idx, row_scores, strict=True)])
    return out


@dataclass(frozen=True)
class RejectionThreshold:
    """A fitted rejection rule: no suggestion when the top-1 cosine similarity < `threshold`.

    threshold: cosine units; -inf when too few calibration photos allow any rejection at this rate.
    max_match_rejection: the rate asked for, in [0, 1].
    calibration_count: validation photos of catalog products it was fitted on.
    calibration_rejected_share: share of those photos it rejects, in [0, 1].
    """

    threshold: float
    max_match_rejection: float
    calibration_count: int
    calibration_rejected_share: float


def rejection_threshold_fit(match_scores: np.ndarray, *, max_match_rejection: float = 0.05) -> RejectionThreshold:
    """Fit the top-1 similarity threshold below which a photo gets no suggestion.

    Split-conformal quantile (Vovk, Gammerman & Shafer 2005; Angelopoulos & Bates 2021): with n
    calibration scores sorted ascending s_(1) <= ... <= s_(n) and j = floor(α (n + 1)), the threshold is
    s_(j), so a new, exchangeable photo of a catalog product falls below it with probability at most
    j / (n + 1) <= α. When j = 0 the rule rejects nothing (threshold -inf).

    Args:
        match_scores: (n,) float, the top-1 cosine similarity of validation photos that people verified
            show a catalog product (whether or not the top-1 product was the right one: the rule
            decides whether to show suggestions at all).
        max_match_rejection: α in [0, 1), the largest share of such photos that may get no suggestion.

    Returns:
        RejectionThreshold.

    Raises:
        ValueError: empty or non-1-D or non-finite scores, α outside [0, 1).
    """
    scores = np.asarray(match_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"match_scores must be a non-empty 1-D array, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("match_scores holds NaN or infinite values")
    if not 0 <= max_match_rejection < 1:
        raise ValueError(f"max_match_rejection must be in [0, 1), got {max_match_rejection}")
    j = math.floor(max_match_rejection * (len(scores) + 1))
    threshold = float(np.sort(scores)[j - 1]) if j >= 1 else float("-inf")
    return RejectionThreshold(
        threshold=threshold,
        max_match_rejection=float(max_match_rejection),
        calibration_count=len(scores),
        calibration_rejected_share=float((scores < threshold).mean()),
    )


# -- checkpoints ---------------------------------------------------------------------------------


def match_head_save(head: MatchHead, path: str | os.PathLike, *, extra: dict | None = None) -> str:
    """Write the head to `path` (torch.save of a plain dict) and return the file's sha256.

    The checkpoint holds {"format", "config", "in_dim", "state_dict", "extra"}; `extra` is for what
    the caller knows (backbone name and image size the embeddings came from, dataset snapshot id,
    rejection threshold, metrics) and must hold only str/int/float/bool/None, lists and dicts.
    The bytes depend only on the contents, not on the file name (serialised in memory first), so the
    same head gives the same sha256.

    Raises:
        OSError: the file cannot be written.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": head.config.to_dict(),
        "in_dim": head.in_dim,
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # the zip's record names come from the file name; a buffer has none
    data = buffer.getvalue()
    with open(path, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def match_head_load(path: str | os.PathLike) -> tuple[MatchHead, dict]:
    """Read a checkpoint written by `match_head_save`.

    Returns:
        (head in eval mode on the CPU, extra dict).

    Raises:
        OSError: the file cannot be read.
        ValueError: not a match-head checkpoint, or its weights do not fit its config.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    head = MatchHead(int(payload["in_dim"]), MatchConfig(**payload["config"]))
    try:
        head.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the saved config: {exc}") from exc
    return head.eval(), payload["extra"]
