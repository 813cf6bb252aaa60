"""The multitask tagging model and the pieces of the learning loop around it (no Django here).

- `TaggingHeads`: an embedding → one linear head per attribute (multitask learning: the backbone's
  embedding is shared, each attribute of the schema has its own head).
- `masked_multitask_loss`: soft-target cross-entropy per attribute, rows without a label masked out.
- `temperature_fit`: temperature scaling (Guo et al. 2017, "On calibration of modern neural networks").
- `late_fusion_fit`: a learned weighted sum of the image and text models' log-probabilities.
- `threshold_for_precision`: the auto-accept threshold that meets a target precision on held-out
  labels, with coverage and a Wilson interval of the measured precision.
- `hierarchical_backoff`: a category prediction backs off to the deepest confident ancestor.
- `heads_train`: trains TaggingHeads on embeddings, epoch by epoch, resumable from a checkpoint.
- Multi choice by binary relevance (`binary_relevance_values`, `option_targets`,
  `multi_choice_decision`): each option of a multi-choice attribute is its own two-class
  pseudo-attribute ("season:summer": "no" / "yes"), so heads, loss, fusion, temperature and
  thresholds need nothing new.

Shapes use N rows (products), D embedding dimensions, K_a classes of attribute a.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .stats import wilson_interval  # noqa: F401  (re-exported: callers use nt.wilson_interval)


@dataclass(frozen=True)
class HeadsConfig:
    """How tagging heads are trained.

    hidden_dim: width of the shared hidden layer after the embedding (0: heads straight on the
        embedding).
    epochs, batch_size, lr, weight_decay: AdamW settings.
    dropout: on the shared layer.
    seed: torch and numpy seed; the same seed and data give the same weights.
    """

    hidden_dim: int = 256
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TaggingHeads(nn.Module):
    """(N, D) embeddings → {attribute: (N, K_a) logits}: a shared hidden layer, then a linear head
    per attribute."""

    def __init__(self, input_dim: int, classes: dict[str, int], *, hidden_dim: int = 256, dropout: float = 0.2):
        super().__init__()
        if not classes or any(k < 2 for k in classes.values()):
            raise ValueError("every attribute needs at least two classes")
        self.classes = dict(classes)
        if hidden_dim:
            self.shared = nn.Sequential(
                nn.LayerNorm(input_dim), nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout)
            )
            width = hidden_dim
        else:
            self.shared = nn.LayerNorm(input_dim)
            width = input_dim
        self.heads = nn.ModuleDict({name: nn.Linear(width, k) for name, k in self.classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.shared(x)
        return {name: head(h) for name, head in self.heads.items()}


def masked_multitask_loss(
    logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Sum over attributes of the mean soft-target cross-entropy over the rows that have a label.

    Args:
        logits: {attribute: (B, K_a) float}.
        targets: {attribute: (B, K_a) float}, each labelled row a distribution (the consensus
            posterior as a soft target; one-hot for gold). Unlabelled rows may hold anything.
        masks: {attribute: (B,) bool}, True where the row has a label for that attribute.

    Returns:
        A scalar tensor. An attribute with no labelled row in the batch adds 0 (and no gradient),
        so a product missing some labels still trains the heads it has labels for.

    Raises:
        KeyError: an attribute of `logits` is missing from targets or masks.
    """
    total = None
    for name, z in logits.items():
        mask = masks[name]
        if not bool(mask.any()):
            continue
        log_p = F.log_softmax(z[mask], dim=1)
        loss = -(targets[name][mask] * log_p).sum(dim=1).mean()
        total = loss if total is None else total + loss
    if total is None:
        first = next(iter(logits.values()))
        return first.sum() * 0.0
    return total


def temperature_fit(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 100) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of softmax(logits / T) on a
    validation set (temperature scaling, Guo et al. 2017). One parameter: it changes confidence,
    never the argmax.

    Args:
        logits: (N, K) float, uncalibrated scores (log-probabilities work too).
        labels: (N,) int64 class indices.

    Returns:
        T as a float (1.0 when N == 0).
    """
    if len(labels) == 0:
        return 1.0
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


@dataclass
class Fusion:
    """Late fusion of two models' log-probabilities: softmax(w_image * log p_image + w_text *
    log p_text + bias). Learned on validation labels by `late_fusion_fit`."""

    w_image: float = 1.0
    w_text: float = 1.0
    bias: list[float] = field(default_factory=list)

    def apply(self, log_p_image: np.ndarray, log_p_text: np.ndarray | None) -> np.ndarray:
        """(N, K) fused logits (not normalised); text None → the image model alone, scaled."""
        z = self.w_image * np.asarray(log_p_image, dtype=np.float64)
        if log_p_text is not None:
            z = z + self.w_text * np.asarray(log_p_text, dtype=np.float64)
        if self.bias:
            z = z + np.asarray(self.bias)
        return z


def late_fusion_fit(log_p_image: np.ndarray, log_p_text: np.ndarray, labels: np.ndarray, *, l2: float = 1e-2) -> Fusion:
    """Fit the fusion weights and a class bias by minimising the NLL of the fused softmax on held-out
    labels (stacking, Wolpert 1992, with a linear combiner), with a small L2 penalty on the bias.

    Args:
        log_p_image, log_p_text: (N, K) float, each model's log-probabilities.
        labels: (N,) int64.

    Returns:
        Fusion. With no labels, equal weights and no bias.
    """
    if len(labels) == 0:
        return Fusion()
    a = torch.as_tensor(np.asarray(log_p_image), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(log_p_text), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    weights = torch.ones(2, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights, bias], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(weights[0] * a + weights[1] * b + bias, y) + l2 * (bias**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    w = weights.detach().numpy()
    return Fusion(w_image=float(w[0]), w_text=float(w[1]), bias=[float(x) for x in bias.detach().numpy()])


@dataclass
class ThresholdChoice:
    """An auto-accept threshold and what it does on the held-out set.

    threshold: accept when confidence >= threshold (inf: accept nothing).
    accepted, correct: held-out items at or above it, and how many of those were right.
    coverage: accepted / held-out items, in [0, 1].
    precision: correct / accepted (None when nothing is accepted); precision_low/high its 95%
        Wilson interval.
    target: the precision asked for.
    """

    threshold: float
    accepted: int
    correct: int
    coverage: float
    precision: float | None
    precision_low: float
    precision_high: float
    target: float
    n: int

    def to_dict(self) -> dict:
        out = asdict(self)
        out["threshold"] = None if math.isinf(self.threshold) else self.threshold
        return out


def threshold_for_precision(
    confidence: np.ndarray, correct: np.ndarray, *, target: float = 0.98, min_accepted: int = 30, bound: str = "wilson"
) -> ThresholdChoice:
    """The lowest confidence threshold whose accepted set meets the target precision.

    Candidates are the distinct confidences, highest first; the accepted set of threshold t is every
    item with confidence >= t. A threshold qualifies when at least `min_accepted` items are accepted
    and the precision's 95% Wilson lower bound (bound="wilson", the default: a threshold that only
    looks good on few items is not taken) or its point estimate (bound="point") is >= target. Of the
    qualifying thresholds the lowest (the largest coverage) is chosen.

    Args:
        confidence: (N,) float in [0, 1], the calibrated confidence of the predicted label.
        correct: (N,) bool, whether the predicted label equals the held-out label.
        target: the precision to meet, in (0, 1].
        min_accepted: the fewest accepted items a threshold may rest on.
        bound: "wilson" or "point".

    Returns:
        ThresholdChoice; threshold inf (accept nothing) when no threshold qualifies.

    Raises:
        ValueError: mismatched lengths, target outside (0, 1], or an unknown bound.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError("confidence and correct must be (N,) arrays of the same length")
    if not 0 < target <= 1:
        raise ValueError("target must lie in (0, 1]")
    if bound not in ("wilson", "point"):
        raise ValueError("bound must be 'wilson' or 'point'")
    n = len(confidence)
    order = np.argsort(-confidence, kind="stable")
    sorted_conf, hits = confidence[order], np.cumsum(correct[order])
    best = None
    for i in range(n):
        if i + 1 < n and sorted_conf[i + 1] == sorted_conf[i]:
            continue  # ties enter together
        accepted, right = i + 1, int(hits[i])
        if accepted < min_accepted:
            continue
        low, high = wilson_interval(right, accepted)
        value = low if bound == "wilson" else right / accepted
        if value >= target:
            best = (float(sorted_conf[i]), accepted, right, low, high)
    if best is None:
        return ThresholdChoice(math.inf, 0, 0, 0.0, None, 0.0, 1.0, target, n)
    threshold, accepted, right, low, high = best
    return ThresholdChoice(
        threshold, accepted, right, accepted / n if n else 0.0, right / accepted, low, high, target, n
    )


def hierarchical_backoff(
    probabilities: np.ndarray, leaf_paths: list[str], *, threshold: float, separator: str = " › "
) -> tuple[str, float]:
    """The deepest node of the taxonomy whose probability reaches `threshold`.

    A node's probability is the sum of its leaves' (the leaves are mutually exclusive). When the
    most likely leaf is not sure enough, the prediction backs off to the deepest ancestor that is:
    "Shoes" at 0.97 rather than a wrong "Shoes › Sandal" at 0.55. The accuracy-specificity trade-off
    of Deng et al. 2012 ("Hedging your bets", CVPR), in its simplest form: a fixed confidence
    threshold instead of their optimised reward.

    Args:
        probabilities: (K,) float, a distribution over the leaves.
        leaf_paths: the K leaves' paths ("Shoes › Sandal"), in the same order.
        threshold: in (0, 1].
        separator: between path segments.

    Returns:
        (path, probability). Ties at equal depth go to the more probable node; when not even a root
        reaches the threshold, the most probable root is returned with its probability.

    Raises:
        ValueError: lengths differ.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(probabilities) != len(leaf_paths):
        raise ValueError("probabilities and leaf_paths must have the same length")
    mass: dict[str, float] = {}
    for p, path in zip(probabilities, leaf_paths, strict=True):
        parts = path.split(separator)
        for depth in range(1, len(parts) + 1):
            node = separator.join(parts[:depth])
            mass[node] = mass.get(node, 0.0) + float(p)
    depth_of = {node: node.count(separator) for node in mass}
    sure = [node for node, p in mass.items() if p >= threshold]
    if sure:
        node = max(sure, key=lambda n: (depth_of[n], mass[n]))
        return node, mass[node]
    roots = [node for node in mass if depth_of[node] == 0]
    node = max(roots, key=lambda n: mass[n])
    return node, mass[node]


@dataclass
class EpochResult:
    """One epoch of `heads_train`: mean training loss, and validation loss and accuracy per attribute
    (None without validation rows)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: dict[str, float]
    seconds: float
    rows_per_s: float


def heads_train(
    x: np.ndarray,
    targets: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    *,
    config: HeadsConfig,
    val: tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
    device: str = "cpu",
    state: dict | None = None,
    on_epoch: Callable[[EpochResult, dict], None] | None = None,
) -> tuple[TaggingHeads, list[EpochResult]]:
    """Train TaggingHeads on embeddings with `masked_multitask_loss`.

    Args:
        x: (N, D) float32 embeddings.
        targets: {attribute: (N, K_a) float32 soft targets}.
        masks: {attribute: (N,) bool}.
        config: HeadsConfig.
        val: optional (x, targets, masks) held out, scored after every epoch.
        device: a torch device string; on CUDA, bf16 autocast is used for the forward pass.
        state: a checkpoint from an earlier, interrupted run (`on_epoch`'s second argument):
            training resumes after its epoch with its weights, optimiser and RNG state.
        on_epoch: called after each epoch with (EpochResult, checkpoint dict), e.g. to save the
            checkpoint and report progress.

    Returns:
        (model in eval mode on CPU, the epochs run in this call).

    Raises:
        ValueError: shapes disagree or no row has any label.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if any(len(t) != n for t in targets.values()) or any(len(m) != n for m in masks.values()):
        raise ValueError("every target and mask must have one row per embedding")
    if not any(np.asarray(m).any() for m in masks.values()):
        raise ValueError("no row has a label")
    classes = {name: int(t.shape[1]) for name, t in targets.items()}
    torch.manual_seed(config.seed)
    model = TaggingHeads(x.shape[1], classes, hidden_dim=config.hidden_dim, dropout=config.dropout).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(config.epochs, 1))
    start = 0
    generator = torch.Generator().manual_seed(config.seed)
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])  # dropout's draws continue where they stopped
        start = int(state["epoch"])
    xt = torch.from_numpy(x)
    tt = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in targets.items()}
    mt = {k: torch.from_numpy(np.asarray(v, dtype=bool)) for k, v in masks.items()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else _nullcontext()
    results = []
    import time

    for epoch in range(start + 1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator)
        losses = []
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            xb = xt[idx].to(device)
            with autocast:
                logits = model(xb)
            logits = {k: v.float() for k, v in logits.items()}
            loss = masked_multitask_loss(
                logits, {k: v[idx].to(device) for k, v in tt.items()}, {k: v[idx].to(device) for k, v in mt.items()}
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        seconds = time.perf_counter() - started
        val_loss, val_acc = (None, {}) if val is None else _evaluate(model, *val, device=device)
        result = EpochResult(epoch, float(np.mean(losses)), val_loss, val_acc, seconds, n / max(seconds, 1e-9))
        results.append(result)
        if on_epoch is not None:
            checkpoint = copy.deepcopy(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "classes": classes,
                    "config": config.to_dict(),
                }
            )  # copies: state_dict() holds live references that later epochs would change
            on_epoch(result, checkpoint)
    model.eval()
    return model.cpu(), results


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@torch.no_grad()
def _evaluate(model, x, targets, masks, *, device: str) -> tuple[float, dict[str, float]]:
    model.eval()
    logits = model(torch.from_numpy(np.asarray(x, dtype=np.float32)).to(device))
    logits = {k: v.float().cpu() for k, v in logits.items()}
    tt = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in targets.items()}
    mt = {k: torch.from_numpy(np.asarray(v, dtype=bool)) for k, v in masks.items()}
    loss = float(masked_multitask_loss(logits, tt, mt))
    accuracy = {}
    for name, z in logits.items():
        mask = mt[name]
        if bool(mask.any()):
            accuracy[name] = float((z[mask].argmax(1) == tt[name][mask].argmax(1)).float().mean())
    return loss, accuracy


@torch.no_grad()
def heads_log_proba(model: TaggingHeads, x: np.ndarray, *, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """{attribute: (N, K_a) float64 log-probabilities} of embeddings x (N, D)."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in model.classes}
    x = np.array(x, dtype=np.float32)  # a writable copy: torch.from_numpy warns on read-only arrays
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[i : i + batch_size]))
        for name, z in logits.items():
            out[name].append(F.log_softmax(z.double(), dim=1).numpy())
    return {name: np.concatenate(parts) if parts else np.zeros((0, model.classes[name])) for name, parts in out.items()}


def log_softmax_np(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (N, K) float64."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# -- multi choice: binary relevance ---------------------------------------------------------------------

OPTION_VALUES = ["no", "yes"]  # the classes of a multi-choice option's pseudo-attribute, in this order


def option_slug(attribute: str, option: str) -> str:
    """The pseudo-attribute of one option of a multi-choice attribute: "season:summer" (a ":" never
    occurs in an attribute slug)."""
    return f"{attribute}:{option}"


def binary_relevance_values(values: dict[str, list[str]], multi_choice) -> dict[str, list[str]]:
    """The heads to train: every attribute of `values` as it is, except that each multi-choice one
    (named in `multi_choice`) is replaced by one pseudo-attribute per option with the classes
    OPTION_VALUES. This is binary relevance (Tsoumakas & Katakis 2007, "Multi-label classification:
    an overview"): the options are predicted independently, which ignores their co-occurrence
    ("summer" rarely with "winter") but keeps one calibrated, thresholded head per decision.

    Args:
        values: {attribute slug: its values (a multi-choice attribute: its options)}.
        multi_choice: the slugs of the multi-choice attributes among them.

    Returns:
        {attribute or pseudo-attribute slug: classes}, in `values`' order with each attribute's
        options in place.
    """
    multi = set(multi_choice)
    out: dict[str, list[str]] = {}
    for slug, options in values.items():
        if slug in multi:
            out.update({option_slug(slug, o): list(OPTION_VALUES) for o in options})
        else:
            out[slug] = list(options)
    return out


def option_targets(options: list[str], *, label: str, posterior: dict | None) -> np.ndarray:
    """Soft targets of a multi-choice label's option pseudo-attributes: (K, 2) float32 rows
    [1 - p, p], p the consensus's P(option selected) (its posterior, one number per option, not a
    distribution over options); without a posterior (gold) p is 1 for the options in `label`
    ("a|b") and 0 for the others. An option the posterior does not mention counts as in `label`."""
    chosen = {v for v in label.split("|") if v}
    posterior = posterior or {}
    p = np.array(
        [float(posterior[o]) if o in posterior else float(o in chosen) for o in options], dtype=np.float32
    ).clip(0.0, 1.0)
    return np.stack([1.0 - p, p], axis=1)


def multi_choice_decision(p_yes: np.ndarray, thresholds: list[float | None]) -> tuple[np.ndarray, np.ndarray, bool]:
    """A multi-choice prediction from its options' calibrated P(yes).

    Each option is selected when P(yes) > 0.5 (the consensus's rule); its confidence is
    max(p, 1 - p), the probability of its own decision. The whole label may be auto-accepted only
    when every option's confidence clears that option's threshold (None: the option never reached
    the target precision, so the label is never accepted).

    Args:
        p_yes: (K,) float in [0, 1], per option.
        thresholds: K thresholds in [0, 1] or None.

    Returns:
        (selected (K,) bool, confidence (K,) float64, accept).
    """
    p_yes = np.asarray(p_yes, dtype=np.float64)
    confidence = np.maximum(p_yes, 1.0 - p_yes)
    accept = bool(len(p_yes)) and all(t is not None and c >= t for c, t in zip(confidence, thresholds, strict=True))
    return p_yes > 0.5, confidence, accept
