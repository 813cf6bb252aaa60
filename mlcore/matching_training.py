"""Retrain the matching head (mlcore.nn.matching) from verified matches: the TrainingRun path for
kind "matching" (mlcore.training.training_run_execute dispatches here).

A matching snapshot is a JSON Lines file, one verified photo per line (written by annotate):

    {"photo": "<uuid>", "split": "train" | "validation" | "test",
     "product": "<product uuid>" | null,          # null: people said none / not a product / unfit
     "hard_negatives": ["<product uuid>", ...]}   # candidates people were shown and turned down

The config names the embedding model version whose PhotoEmbedding and ProductEmbedding rows feed
the head (the backbone stays frozen), and optionally max_match_rejection (default 0.05), epochs,
lr, rank, seed (mlcore.nn.matching.MatchConfig).

Metrics on the test split, against the pretrained cosine: recall@1 and recall@3 of verified
matches, the share of rejected photos (people said no product) that get no suggestion, and the
share of verified matches wrongly left without one. "score" (what promotion compares) is recall@1.
"""

from __future__ import annotations

import logging

import numpy as np
from django.utils import timezone

from .models import ModelVersion, PhotoEmbedding, ProductEmbedding, TrainingRun

logger = logging.getLogger(__name__)


def _finite(value) -> float | None:
    """A JSON-safe float: None for None, NaN or infinity."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _vectors(rows, dim: int) -> dict:
    return {key: np.frombuffer(bytes(blob), dtype=np.float32).reshape(dim) for key, blob in rows}


def matching_data(records: list[dict], *, embedding_version: ModelVersion) -> dict:
    """Arrays for the head from snapshot records: photo (N, D), product (P, D) float32 (every active
    product with an embedding), positives (N,) int64 (-1 for a rejection), hard negatives, splits.
    Photos or products without an embedding are left out (logged)."""
    from .training import TrainingError

    dim = embedding_version.embedding_dim
    products = _vectors(
        ProductEmbedding.objects.filter(model_version=embedding_version, product__is_active=True)
        .order_by("product_id")
        .values_list("product__uuid", "vector"),
        dim,
    )
    if not products:
        raise TrainingError(f"no product embeddings for {embedding_version.name}")
    product_keys = list(products)
    index = {str(k): i for i, k in enumerate(product_keys)}
    photos = _vectors(
        PhotoEmbedding.objects.filter(
            model_version=embedding_version, photo__uuid__in=[r["photo"] for r in records]
        ).values_list("photo__uuid", "vector"),
        dim,
    )
    photos = {str(k): v for k, v in photos.items()}
    kept = [r for r in records if r["photo"] in photos and (r.get("product") is None or r["product"] in index)]
    if len(kept) < len(records):
        logger.warning(
            "matching snapshot: %d photos without an embedding or product left out", len(records) - len(kept)
        )
    return {
        "photo": np.stack([photos[r["photo"]] for r in kept]) if kept else np.zeros((0, dim), np.float32),
        "product": np.stack([products[k] for k in product_keys]),
        "positives": np.array([index[r["product"]] if r.get("product") else -1 for r in kept], dtype=np.int64),
        "hard_negatives": [
            [index[h] for h in r.get("hard_negatives", []) if h in index and h != r.get("product")] for r in kept
        ],
        "split": np.array([r["split"] for r in kept]),
    }


def matching_metrics(data: dict, rows: np.ndarray, head, threshold: float | None) -> dict:
    """recall@1/@3 over the verified matches of `rows`, and the no-suggestion shares, for `head`
    (None: the pretrained cosine)."""
    from .nn.matching import suggest, topk_scores
    from .nn.stats import wilson_interval

    positives = data["positives"][rows]
    matches = rows[positives >= 0]
    rejected = rows[positives < 0]
    out = {"matches": int(len(matches)), "rejections": int(len(rejected))}
    if len(matches):
        idx, _ = topk_scores(data["photo"][matches], data["product"], head, k=3)
        truth = data["positives"][matches]
        for k in (1, 3):
            hits = int((idx[:, :k] == truth[:, None]).any(axis=1).sum())
            low, high = wilson_interval(hits, len(matches))
            out[f"recall_at_{k}"] = hits / len(matches)
            out[f"recall_at_{k}_interval"] = [low, high]
    for name, subset in (("matches_rejected", matches), ("rejections_without_suggestion", rejected)):
        if len(subset):
            suggestions = suggest(data["photo"][subset], data["product"], head, k=3, threshold=threshold)
            out[name] = sum(s is None for s in suggestions) / len(subset)
    out["score"] = out.get("recall_at_1", 0.0)
    return out


def matching_run_train(run: TrainingRun) -> None:
    """Train, measure, save and register the candidate head of `run`, then try to promote it. The
    head must beat the pretrained cosine and the active head on the test split (recall@1)."""
    from .nn.matching import (
        MatchConfig,
        match_head_load,
        match_head_save,
        match_head_train,
        rejection_threshold_fit,
        topk_scores,
    )
    from .training import TrainingError, candidate_path, candidate_promote, candidate_register, snapshot_lines

    config = run.config
    embedding_version = ModelVersion.objects.get(uuid=config["embedding_version"])
    records = snapshot_lines(run.snapshot_path)
    data = matching_data(records, embedding_version=embedding_version)
    train, val, test = (np.flatnonzero(data["split"] == s) for s in ("train", "validation", "test"))
    if not (data["positives"][train] >= 0).any():
        raise TrainingError("the snapshot has no verified matches to train on")
    fields = {k: config[k] for k in ("epochs", "lr", "rank", "seed", "batch_size") if k in config}
    match_config = MatchConfig(**fields)
    val_matches = val[data["positives"][val] >= 0]
    head, report = match_head_train(
        data["photo"][train],
        data["product"],
        data["positives"][train],
        [data["hard_negatives"][i] for i in train],
        match_config,
        val_photo_emb=data["photo"][val_matches] if len(val_matches) else None,
        val_positives=data["positives"][val_matches] if len(val_matches) else None,
    )
    TrainingRun.objects.filter(pk=run.pk).update(
        epoch=len(report["epochs"]),
        epochs=match_config.epochs,
        history=[
            {
                "stage": "matching",
                "epoch": e["epoch"],
                "train_loss": _finite(e.get("loss")),
                "val_loss": None,
                "val_accuracy": {}
                if _finite(e.get("val_recall_at_1")) is None
                else {"recall_at_1": _finite(e["val_recall_at_1"])},
                "seconds": None,
            }
            for e in report["epochs"]
        ],
        rows_per_s=_finite(report.get("photos_per_s")),
        heartbeat_at=timezone.now(),
    )
    calibration = val_matches if len(val_matches) else train[data["positives"][train] >= 0]
    _, scores = topk_scores(data["photo"][calibration], data["product"], head, k=1)
    threshold = rejection_threshold_fit(
        scores[:, 0], max_match_rejection=float(config.get("max_match_rejection", 0.05))
    )
    limit = None if np.isinf(threshold.threshold) else threshold.threshold
    evaluate_on = test if len(test) else (val if len(val) else train)
    metrics = matching_metrics(data, evaluate_on, head, limit)
    metrics["pretrained"] = matching_metrics(data, evaluate_on, None, None)
    metrics["threshold"] = limit
    metrics["split_sizes"] = {"train": len(train), "validation": len(val), "test": len(test)}
    path = candidate_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    sha256 = match_head_save(head, path, extra={"threshold": limit, "embedding_version": str(embedding_version.uuid)})
    candidate = candidate_register(
        run,
        kind=ModelVersion.Kind.MATCHING,
        embedding_version=embedding_version,
        path=path,
        sha256=sha256,
        config={**config, "head": match_config.to_dict()},
        metrics=metrics,
    )
    TrainingRun.objects.filter(pk=run.pk).update(candidate=candidate)

    def active_score(active: ModelVersion) -> float:
        old, _ = match_head_load(active.weights_path)
        return matching_metrics(data, evaluate_on, old, None)["score"]

    baseline = metrics["pretrained"]["score"]
    if metrics["score"] <= baseline:
        ModelVersion.objects.filter(pk=candidate.pk).update(status=ModelVersion.Status.RETIRED)
        promoted, decision = (
            False,
            f"recall@1 {metrics['score']:.4f} does not beat the pretrained cosine's {baseline:.4f}",
        )
    else:
        promoted, decision = candidate_promote(candidate=candidate, score_active=active_score)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.DONE, promoted=promoted, decision=decision, finished_at=timezone.now()
    )
