"""Batched, device-agnostic inference: images → L2-normalised embeddings."""

import os
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn


def device_resolve(name: str = "auto") -> torch.device:
    """ "auto" → CUDA when present, else CPU; otherwise torch.device(name).

    Raises:
        ValueError: a CUDA device is asked for and none is available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name} asked for, but CUDA is not available on this machine")
    return device


def model_prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to `device` in eval mode; channels_last on CUDA (faster convolutions with bf16)."""
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _cpu_sample() -> tuple[float, float, float] | None:
    """(monotonic s, CPU seconds busy on the whole machine, CPU seconds of this process), or None where
    /proc/stat cannot be read (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    ticks = [int(value) for value in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()


class CpuThreads:
    """Torch's intra-op thread count for the next batch, from the cores other processes left idle.

    Call it between batches; it returns round(cores - cores others kept busy since the last call),
    clamped to [1, max_threads]. On a 2-core machine where another process keeps one core busy,
    EfficientNet-Lite0 at 96 px embedded 95 images/s on 2 threads and 155 on 1 (the second
    thread waits at every operator's barrier for a core it rarely gets); alone, 292 on 2 threads
    and 162 on 1 (docs/benchmarks.md, the demo's first start). Where /proc/stat is unreadable, or
    less than `min_interval_s` passed since the last reading, the last choice stands.

    Args:
        max_threads: the most threads to use; default torch.get_num_threads() when constructed.
        min_interval_s: the shortest interval, in seconds, worth measuring.
    """

    def __init__(self, max_threads: int | None = None, *, min_interval_s: float = 0.1):
        self.max_threads = max(1, max_threads or torch.get_num_threads())
        self.min_interval_s = min_interval_s
        self.threads = self.max_threads
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self._last = _cpu_sample()

    def apply(self) -> int:
        """Measure, set torch.set_num_threads to the choice, and return it."""
        torch.set_num_threads(self())
        return self.threads

    def restore(self) -> None:
        """Set torch's thread count back to max_threads."""
        torch.set_num_threads(self.max_threads)

    def __call__(self) -> int:
        """The thread count for the next batch (see the class docstring); sets nothing."""
        now = _cpu_sample()
        if now is None or self._last is None or now[0] - self._last[0] < self.min_interval_s:
            return self.threads
        wall, busy, own = (a - b for a, b in zip(now, self._last, strict=True))
        others = max(0.0, busy - own) / wall  # cores kept busy by other processes
        self.threads = max(1, min(self.max_threads, round(self._cores - others)))
        self._last = now
        return self.threads


def embed_images(
    model: nn.Module,
    images: Iterable,
    *,
    transform: Callable,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Embed images in batches.

    Args:
        model: maps (B, 3, H, W) float32 to (B, D); already on `device` (see model_prepare).
        images: PIL images (or anything `transform` accepts).
        transform: one image → (3, H, W) float32 tensor; one with a `batch` method (list of images →
            (B, 3, H, W), mlcore.nn.data.EvalTransform) is given each batch at once.
        batch_size: images per forward pass.
        device: CUDA runs under bf16 autocast with channels_last inputs; CPU runs in float32.

    Returns:
        (N, D) float32 array, each row L2-normalised (cosine similarity = dot product).
        (0, D) is not knowable without a forward pass, so an empty input returns shape (0, 0).
    """
    out: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush():
        x = torch.stack(batch).to(device, non_blocking=True)  # (B, 3, H, W)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            z = model(x)  # (B, D)
        z = torch.nn.functional.normalize(z.float(), dim=1)
        out.append(z.cpu().numpy().astype(np.float32, copy=False))
        batch.clear()

    if hasattr(transform, "batch"):  # mlcore.nn.data.EvalTransform: a batch transformed at once
        pending: list = []
        for image in images:
            pending.append(image)
            if len(pending) == batch_size:
                batch.extend(transform.batch(pending))
                pending.clear()
                flush()
        if pending:
            batch.extend(transform.batch(pending))
            flush()
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
    for image in images:
        batch.append(transform(image))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


class ExactIndex:
    """Exact top-k cosine search over L2-normalised vectors (brute-force matrix product).

    Fine to ~100k items on a CPU (10k × 1280 float32 is 51 MB; one query is ~1 ms). The interface
    (`search`) is what an ANN index such as pgvector HNSW or FAISS would implement to replace it.
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        """ids: (N,) int64 row keys; vectors: (N, D) float32, L2-normalised."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self.ids = np.asarray(ids, dtype=np.int64)
        self.vectors = torch.from_numpy(np.array(vectors, dtype=np.float32, order="C"))  # a writable copy

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine similarity.

        Args:
            queries: (Q, D) float32, L2-normalised.
            k: neighbours wanted; fewer come back when the index holds fewer than k items.

        Returns:
            (ids (Q, k') int64, scores (Q, k') float32 in [-1, 1]), best first, k' = min(k, N).
        """
        k = min(k, len(self))
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        q = torch.from_numpy(np.array(queries, dtype=np.float32, order="C"))
        scores, idx = torch.topk(q @ self.vectors.T, k, dim=1)  # (Q, k)
        return self.ids[idx.numpy()], scores.numpy()
