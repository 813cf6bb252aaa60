"""Stage 2 of the matching CNN in the product: fine-tune a campaign's serving CNN on the photos people
verified (mlcore.nn.match_cnn.Trainer(stage=2)), register it as a BACKBONE ModelVersion, and promote it
only when it finds the products of held-out verified photos more often than the serving CNN.

Runs as TrainingRun(kind=BACKBONE, config["stage"] = 2) through mlcore.training.training_run_execute
(Celery `mlcore.matching_finetune`, queue gpu): the conditional claim, stale-run takeover and failure
handling of every run, and the per-epoch checkpoint of stage 1 (mlcore.matching_pretrain), so a
killed worker's run resumes where it stopped and ends bit-identical to an uninterrupted one.

It reads a frozen matching snapshot (annotate.learning.matching_snapshot, the one the matching head
trains on), one verified photo per line:

    {"photo": "<uuid>", "split": "train" | "validation" | "test", "gold": bool,
     "product": "<product uuid>" | null,          # null: people said none / not a product / unfit
     "hard_negatives": ["<product uuid>", ...]}   # candidates people were shown and turned down

- Training photos: every record that is neither gold nor in the test split (split_of, a stable
  hash of the photo uuid). A matched photo's target is its product's catalog row, its hard
  negatives the candidates turned down; a photo settled none / not a product / unfit targets the
  dustbin (photo_product -1).
- Held out: gold photos and the test split. Their verified matches decide promotion: recall@1
  against the whole active catalog, the candidate and the serving CNN embedding the same photos
  and catalog images through mlcore.services (the path suggestions take). Strictly better wins.
- Rejection: mlcore.nn.match_cnn.rejection_calibrate over catalog views and the held-out photos
  (matched: in the catalog; settled none / not a product / unfit: not), its threshold the
  conformal quantile over the held-out verified matches when there are at least 20. Held-out, not
  training photos: the fine-tuned model scores the photos it trained on higher than new ones, so a
  threshold over them would reject more than max_match_rejection of new true matches.

The config: {"stage": 2, "base_version": <uuid of the CNN to start from>, "cnn": {MatchCNNConfig
fields that change for fine-tuning: epochs, lr (default: the base's / 3, as in the bench),
batch_size, photo_batch_size, hard_negative_weight, category_weight, temperature, weight_decay,
workers, seed}, "max_match_rejection": 0.05, "verified_at_snapshot": n}. The architecture
(arch, image_size_px, width, embedding_dim, grayscale) is the base's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from django.conf import settings
from django.utils import timezone
from PIL import Image

from catalog.models import Photo, Product

from .matching_pretrain import BACKBONE_NAME, _image_u8, _recall_at_1, catalog_load, trainer_fit_resumable
from .models import ModelVersion, TrainingRun

logger = logging.getLogger(__name__)

STAGE = 2
# MatchCNNConfig fields a fine-tuning run may set; the others are the base model's.
TUNABLE = (
    "epochs",
    "lr",
    "batch_size",
    "photo_batch_size",
    "hard_negative_weight",
    "category_weight",
    "temperature",
    "weight_decay",
    "workers",
    "seed",
)


def run_is_finetune(run: TrainingRun) -> bool:
    """Whether a BACKBONE run is a stage-2 fine-tuning run (else stage 1, mlcore.matching_pretrain)."""
    return run.kind == ModelVersion.Kind.BACKBONE and (run.config or {}).get("stage") == STAGE


def matching_finetune_create(
    *,
    scope: str,
    base_version: ModelVersion,
    snapshot_path: str,
    snapshot_uuid=None,
    verified_count: int = 0,
    reason: str = "",
    config: dict | None = None,
) -> TrainingRun:
    """A PENDING stage-2 BACKBONE TrainingRun for `scope`, starting from `base_version` (a trained
    matching CNN) over the matching snapshot at `snapshot_path`. The caller enqueues
    mlcore.matching_finetune for it after commit.

    Args:
        verified_count: the verified matches settled when the snapshot was taken (the learning
            loop's trigger counts new ones from it).
        config: overrides of FITCHECK_MATCH_FINETUNE_CONFIG (TUNABLE fields) and
            "max_match_rejection" in (0, 1).

    Raises:
        ValueError: base_version is not a matching CNN; a field outside TUNABLE; a run of the scope
            is already PENDING or RUNNING (one CNN run at a time per campaign).
    """
    if base_version.kind != ModelVersion.Kind.BACKBONE or base_version.backbone != BACKBONE_NAME:
        raise ValueError(f"{base_version.name} is not a matching CNN: stage 2 fine-tunes one")
    overrides = {**settings.FITCHECK_MATCH_FINETUNE_CONFIG, **(config or {})}
    max_rejection = float(overrides.pop("max_match_rejection", 0.05))
    unknown = sorted(set(overrides) - set(TUNABLE))
    if unknown:
        raise ValueError(f"stage 2 keeps the base model's {', '.join(unknown)}; it may set {', '.join(TUNABLE)}")
    if not 0 < max_rejection < 1:
        raise ValueError("max_match_rejection must be in (0, 1)")
    live = TrainingRun.objects.filter(
        kind=ModelVersion.Kind.BACKBONE,
        scope=scope,
        status__in=[TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING],
    ).first()
    if live is not None:
        raise ValueError("A matching-CNN run of this campaign is already pending or running: it shows below.")
    return TrainingRun.objects.create(
        kind=ModelVersion.Kind.BACKBONE,
        scope=scope,
        reason=reason or "verified matches",
        snapshot_path=snapshot_path,
        snapshot_uuid=snapshot_uuid,
        config={
            "stage": STAGE,
            "base_version": str(base_version.uuid),
            "cnn": overrides,
            "max_match_rejection": max_rejection,
            "verified_at_snapshot": int(verified_count),
        },
        epochs=int(overrides.get("epochs", 4)),
    )


def snapshot_records(path: str) -> list[dict]:
    """The records of a matching snapshot. Raises TrainingError on a missing or malformed file."""
    from .training import TrainingError, snapshot_lines

    records = snapshot_lines(path)
    for n, record in enumerate(records, 1):
        if not {"photo", "split", "product"} <= set(record):
            raise TrainingError(f"snapshot line {n}: needs photo, split and product")
    return records


def is_held_out(record: dict) -> bool:
    """Gold photos and the test split are held out of training for scoring."""
    return bool(record.get("gold")) or record["split"] == "test"


def finetune_data(records: list[dict], *, product_ids: np.ndarray, photo_px: int) -> dict:
    """Training and held-out arrays from snapshot records over the catalog rows `product_ids` (N,).

    Returns {"train": {...}, "held_out": {...}}, each {"photos" (M, 3, photo_px, photo_px) uint8,
    "photo_product" (M,) int64 catalog row or -1, "photo_ids" (M,) Photo pks}, "train" also
    "hard_negatives" (M, K) int64 rows (-1 padding, K ≥ 1). A record whose product is no longer in
    the catalog (inactive, no readable image) or whose photo cannot be read is left out (logged); a
    photo held out is never trained on, even when another record of it is not held out.
    """
    uuid_of = dict(Product.objects.filter(pk__in=product_ids.tolist()).values_list("pk", "uuid"))
    rows = {str(uuid_of[int(p)]): i for i, p in enumerate(product_ids)}
    photos = {str(p.uuid): p for p in Photo.objects.filter(uuid__in=[r["photo"] for r in records])}
    held_photos = {r["photo"] for r in records if is_held_out(r)}
    out = {}
    dropped = 0
    for part in ("train", "held_out"):
        arrays, targets, negatives, ids = [], [], [], []
        for record in records:
            if (record["photo"] in held_photos) != (part == "held_out"):
                continue
            product = record.get("product")
            photo = photos.get(record["photo"])
            if photo is None or (product is not None and product not in rows):
                dropped += 1
                continue
            try:
                array, _ = _image_u8(photo.image, photo_px)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                logger.warning("matching fine-tune: skipping photo %s: %s", photo.pk, exc)
                dropped += 1
                continue
            arrays.append(array)
            targets.append(rows[product] if product is not None else -1)
            negatives.append([rows[h] for h in record.get("hard_negatives", []) if h in rows and h != product])
            ids.append(photo.pk)
        k = max([len(n) for n in negatives] + [1])
        out[part] = {
            "photos": np.stack(arrays) if arrays else np.zeros((0, 3, photo_px, photo_px), np.uint8),
            "photo_product": np.asarray(targets, np.int64),
            "hard_negatives": np.asarray([n + [-1] * (k - len(n)) for n in negatives], np.int64).reshape(-1, k),
            "photo_ids": np.asarray(ids, np.int64),
        }
    if dropped:
        logger.warning("matching fine-tune: %d snapshot records left out (product or photo gone)", dropped)
    return out


def _score_version(version: ModelVersion, products: list[Image.Image], photos: list[Image.Image], truth) -> float:
    """recall@1 of `version` (any embedding model mlcore.services loads) on `photos` against
    `products` (the catalog, in row order): truth (Q,) int catalog rows."""
    import torch

    from . import services

    catalog = torch.from_numpy(services.images_embed(version=version, images=products))
    queries = torch.from_numpy(services.images_embed(version=version, images=photos, photos=True))
    return _recall_at_1(queries, catalog, np.asarray(truth))


def _photo_images(photo_ids) -> list[Image.Image]:
    from .services import _open_image

    by_id = Photo.objects.in_bulk([int(p) for p in photo_ids])
    return [_open_image(by_id[int(p)].image) for p in photo_ids]


def finetune_run_train(run: TrainingRun) -> None:
    """Train stage 2 for `run`, resuming from its checkpoint; register the candidate, re-calibrate its
    rejection, and promote it if it beats the serving CNN on the held-out verified matches.

    Raises:
        TrainingError: unreadable snapshot or base model, no verified match to train on, a catalog
            of fewer than 2 products.
    """
    import torch

    from .nn import match_cnn as mc
    from .nn.infer import device_resolve
    from .training import TrainingError, candidate_path, candidate_promote, file_sha256

    device = device_resolve(settings.FITCHECK_DEVICE)
    base = ModelVersion.objects.get(uuid=run.config["base_version"])
    if base.checkpoint_sha256 and file_sha256(Path(base.weights_path)) != base.checkpoint_sha256:
        raise TrainingError(f"{base.weights_path} does not match the sha256 registered for {base.name}")
    try:
        base_model, base_config, _, base_extra = mc.match_cnn_load(base.weights_path)
    except (mc.MatchTrainingError, OSError) as exc:
        raise TrainingError(f"the base model {base.name} cannot be loaded: {exc}") from exc
    fields = dict(run.config.get("cnn", {}))
    config = replace(
        base_config,
        **{"lr": base_config.lr / 3, **{k: v for k, v in fields.items() if k in TUNABLE}},
    )
    records = snapshot_records(run.snapshot_path)
    categories = base_model.category.out_features
    leaves = base_extra.get("leaves")
    data = catalog_load(
        size_px=max(config.image_size_px, 28), leaves=leaves if leaves and len(leaves) == categories else None
    )
    if data["category_mask"].shape[1] != categories:  # the base kept no leaves: constrain nothing
        data["category_mask"] = np.ones((len(data["product_ids"]), categories), bool)
        data["leaves"] = leaves or []
    parts = finetune_data(records, product_ids=data["product_ids"], photo_px=2 * config.image_size_px)
    train, held = parts["train"], parts["held_out"]
    if not (train["photo_product"] >= 0).any():
        raise TrainingError("the snapshot has no verified matches to train on (outside the held-out photos)")
    products = torch.from_numpy(data["products"])
    mask = torch.from_numpy(data["category_mask"])
    if base_model.localiser is not None and len(train["photos"]):
        # Trained on the photos as the product embeds them: cut to the product (held-out photos are
        # embedded by photos_embed, which cuts them itself).
        from .nn.localise import photos_localised

        train["photos"] = photos_localised(
            base_model.localiser, torch.from_numpy(train["photos"]), size_px=train["photos"].shape[-1],
            grayscale=config.grayscale,
        ).numpy()
    train_data = mc.MatchData(
        products=products,
        category_mask=mask,
        photos=torch.from_numpy(train["photos"]),
        photo_product=torch.from_numpy(train["photo_product"]),
        hard_negatives=torch.from_numpy(train["hard_negatives"]),
    )
    torch.manual_seed(config.seed)  # the base model is given: nothing else seeds the global RNG
    trainer = mc.Trainer(train_data, config, device=device, model=base_model, stage=STAGE)
    trainer_fit_resumable(
        run, trainer, stage_name="matching_finetune", device=device, history_extra=("photo_loss",)
    )
    model = trainer.model
    started = time.perf_counter()
    held_matched = held["photo_product"] >= 0
    calibration = mc.MatchData(
        products=products,
        category_mask=mask,
        photos=torch.from_numpy(held["photos"]) if len(held["photos"]) else None,
        photo_product=torch.from_numpy(held["photo_product"]) if len(held["photos"]) else None,
    )
    rejection = mc.rejection_calibrate(
        model,
        calibration,
        config,
        device=device,
        count=min(2000, len(products)),
        max_match_rejection=float(run.config.get("max_match_rejection", 0.05)),
    )
    path = candidate_path(run)
    sha256 = mc.match_cnn_save(
        model, config, path, rejection=rejection, extra={"leaves": data["leaves"], "run": str(run.uuid), "stage": 2}
    )
    metrics = {
        "stage": STAGE,
        "train_matches": int((train["photo_product"] >= 0).sum()),
        "train_rejections": int((train["photo_product"] < 0).sum()),
        "held_out_matches": int(held_matched.sum()),
        "held_out_rejections": int((~held_matched).sum()),
        "threshold": rejection.threshold,
        "threshold_over": "held-out verified matches" if held_matched.sum() >= 20 else "catalog views",
        "calibration_s": time.perf_counter() - started,
        "images_per_s": float(np.mean([h["images_per_s"] for h in trainer.history])) if trainer.history else None,
    }
    candidate = ModelVersion.objects.create(
        name=f"matching-cnn-{run.scope.removeprefix('backbone:')}-{run.uuid.hex[:8]}",
        kind=ModelVersion.Kind.BACKBONE,
        status=ModelVersion.Status.CANDIDATE,
        scope=run.scope,
        backbone=BACKBONE_NAME,
        image_size_px=config.image_size_px,
        embedding_dim=config.embedding_dim,
        weights_path=str(path),
        checkpoint_sha256=sha256,
        snapshot_uuid=run.snapshot_uuid,
        config={**run.config, "cnn": config.to_dict()},
        metrics=metrics,
    )
    TrainingRun.objects.filter(pk=run.pk).update(candidate=candidate)
    if not held_matched.any():
        ModelVersion.objects.filter(pk=candidate.pk).update(status=ModelVersion.Status.RETIRED)
        promoted, decision = False, "no held-out verified match (gold or test split) to compare on: not promoted"
    else:
        product_images = [Image.fromarray(p.transpose(1, 2, 0)) for p in data["products"]]
        photo_images = _photo_images(held["photo_ids"][held_matched])
        truth = held["photo_product"][held_matched]

        def score_active(active: ModelVersion) -> float:
            return _score_version(active, product_images, photo_images, truth)

        score = score_active(candidate)
        baseline = score_active(base)
        metrics.update(score=score, recall_at_1=score, base={"name": base.name, "recall_at_1": baseline})
        ModelVersion.objects.filter(pk=candidate.pk).update(metrics=metrics)
        candidate.metrics = metrics
        if score <= baseline:
            ModelVersion.objects.filter(pk=candidate.pk).update(status=ModelVersion.Status.RETIRED)
            promoted = False
            decision = (
                f"recall@1 {score:.4f} on {int(held_matched.sum())} held-out verified matches does not beat "
                f"{base.name}'s {baseline:.4f}"
            )
        else:
            promoted, decision = candidate_promote(candidate=candidate, score_active=score_active)
            decision = (
                f"{decision} (and {base.name}'s {baseline:.4f}) on {int(held_matched.sum())} held-out verified matches"
            )
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.DONE, promoted=promoted, decision=decision, finished_at=timezone.now()
    )
