"""Batched, device-agnostic inference: images → L2-normalised embeddings."""

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
        transform: one image → (3, H, W) float32 tensor.
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
