"""Stage 1 of the matching CNN in the product: train it on the catalog itself as soon as a campaign is
prepared (mlcore.nn.match_cnn), register it as a BACKBONE ModelVersion, and promote it only when it
finds products better than the model serving now.

Runs as TrainingRun(kind=BACKBONE) through mlcore.training.training_run_execute (Celery
`mlcore.train`, queue gpu): the same conditional claim, stale-run takeover and failure handling as
the tagging runs. Progress (epoch, history, images/s, heartbeat) is written after every epoch, with
a checkpoint holding model, optimizer, scheduler, epoch and RNG state, so a killed worker's run
resumes where it stopped and ends bit-identical to an uninterrupted one.

Held-out photos at preparation time are generated views of a tenth of the catalog (a stable hash
fold), drawn with a seed the training never uses; both the candidate and the serving model embed
the same views, and recall@1 against the whole catalog decides. After people verify photos, stage 2
(mlcore.matching_finetune) fine-tunes the CNN on them and is judged on held-out verified photos.
"""

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.utils import timezone
from PIL import Image

from catalog.models import Product, TaxonomyNode

from .models import ModelVersion, TrainingRun

logger = logging.getLogger(__name__)

BACKBONE_NAME = "match_cnn"  # ModelVersion.backbone of a trained matching CNN (mlcore.services loads it)
HELD_OUT_FOLDS = 10


def category_masks(master_paths: list[str | None], *, leaves: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Which master-taxonomy leaves each product may be.

    Args:
        master_paths: each product's master category path ("Clothing › Tops › Shirt"), or None.
        leaves: the columns to use (a trained model's, which stage 2 keeps); None: the taxonomy's
            leaves now, sorted.

    Returns:
        (mask (N, L) bool, leaf paths (L,) in column order). A product under a leaf has one True; one
        under an inner node ("Shoes") every leaf below it; one with no category (or a category
        none of the leaves is under) every leaf.
    """
    from catalog.services import TAXONOMY_SEPARATOR

    if leaves is None:
        paths = list(TaxonomyNode.objects.values_list("path", flat=True))
        prefixes = {p.rsplit(TAXONOMY_SEPARATOR, 1)[0] for p in paths if TAXONOMY_SEPARATOR in p}
        leaves = sorted(p for p in paths if p not in prefixes) or ["(none)"]
    column = {p: i for i, p in enumerate(leaves)}
    mask = np.zeros((len(master_paths), len(leaves)), bool)
    for row, path in enumerate(master_paths):
        if path in column:
            mask[row, column[path]] = True
        else:
            under = [column[leaf] for leaf in leaves if path and leaf.startswith(path + TAXONOMY_SEPARATOR)]
            mask[row, under or list(range(len(leaves)))] = True
    return mask, leaves


def _image_u8(field_file, size_px: int) -> tuple[np.ndarray, bool]:
    """A stored image → ((3, size_px, size_px) uint8, whether it is grayscale)."""
    with field_file.open("rb") as fh:
        image = Image.open(fh)
        image.load()
    gray = image.mode in ("L", "LA", "I", "I;16", "1")
    image = image.convert("RGB")
    if image.size != (size_px, size_px):
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size_px, size_px), Image.BILINEAR)
    array = np.asarray(image)
    if not gray:
        gray = bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())
    return array.transpose(2, 0, 1), gray


def catalog_load(*, size_px: int, leaves: list[str] | None = None) -> dict:
    """The active catalog as training data: {"product_ids" (N,), "products" uint8 (N, 3, S, S),
    "category_mask" (N, L) bool, "leaves", "grayscale" (every image without colour)}. `leaves`: the
    category columns to use (category_masks).

    Products whose first image cannot be read are left out (logged). Raises TrainingError when fewer
    than 2 remain."""
    from .training import TrainingError

    ids, arrays, grays, paths = [], [], [], []
    products = (
        Product.objects.filter(is_active=True, images__isnull=False)
        .distinct()
        .order_by("pk")
        .select_related("master_category")
        .prefetch_related("images")
    )
    for product in products.iterator(chunk_size=500):
        images = sorted(product.images.all(), key=lambda image: (image.position, image.pk))
        try:
            array, gray = _image_u8(images[0].image, size_px)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            logger.warning("matching pretrain: skipping product %s: %s", product.pk, exc)
            continue
        ids.append(product.pk)
        arrays.append(array)
        grays.append(gray)
        paths.append(product.master_category.path if product.master_category else None)
    if len(ids) < 2:
        raise TrainingError("the catalog needs at least 2 products with a readable image to train a matcher")
    mask, leaves = category_masks(paths, leaves=leaves)
    return {
        "product_ids": np.asarray(ids, np.int64),
        "products": np.stack(arrays),
        "category_mask": mask,
        "leaves": leaves,
        "grayscale": all(grays),
    }


def held_out_rows(product_ids: np.ndarray) -> np.ndarray:
    """Rows of the held-out fold (a stable sha256 hash of the product id, 1 in HELD_OUT_FOLDS)."""
    fold = [int(hashlib.sha256(f"heldout:{p}".encode()).hexdigest()[:8], 16) % HELD_OUT_FOLDS for p in product_ids]
    return np.flatnonzero(np.asarray(fold) == 0)


def matching_pretrain_create(*, scope: str, base_version: ModelVersion, reason: str = "", config: dict | None = None):
    """A PENDING BACKBONE TrainingRun for `scope`, with the campaign's current embedding model as the
    yardstick. Reuses a PENDING or RUNNING one of the scope (idempotent). The caller enqueues
    mlcore.train for it after commit."""
    existing = TrainingRun.objects.filter(
        kind=ModelVersion.Kind.BACKBONE,
        scope=scope,
        status__in=[TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING],
    ).first()
    if existing:
        return existing
    config = {**settings.FITCHECK_MATCH_PRETRAIN_CONFIG, **(config or {})}
    return TrainingRun.objects.create(
        kind=ModelVersion.Kind.BACKBONE,
        scope=scope,
        reason=reason or "catalog prepared",
        config={
            "base_version": str(base_version.uuid),
            "cnn": config,
            "localise": settings.FITCHECK_MATCH_LOCALISE,
            "localiser": dict(settings.FITCHECK_MATCH_LOCALISER_CONFIG),
            "verify": settings.FITCHECK_MATCH_VERIFY,
            "matte": dict(settings.FITCHECK_MATCH_MATTE_CONFIG),
            "pair_verify": settings.FITCHECK_MATCH_PAIR_VERIFY,
            "pair": dict(settings.FITCHECK_MATCH_PAIR_CONFIG),
        },
        epochs=int(config.get("epochs", 12)),
    )


def _views_of(trainer_views, rows: np.ndarray):
    import torch

    return torch.stack([trainer_views.view_of(int(r)) for r in rows])


def _recall_at_1(queries, catalog, truth) -> float:
    from .nn.match_cnn import topk_search

    idx, _ = topk_search(queries, catalog, k=1)
    return float((idx[:, 0].numpy() == truth).mean()) if len(truth) else 0.0


def _views_uint8(views) -> np.ndarray:
    """Network-input views, float32 (N, 3, S, S) in [-1, 1] → uint8 (N, 3, S, S) images."""
    return ((views.numpy() * 0.5 + 0.5).clip(0, 1) * 255).round().astype(np.uint8)


def _score_version(version: ModelVersion, views, truth: np.ndarray, data: dict) -> float:
    """recall@1 of `version` (any embedding model the services can load) on the held-out views."""
    import torch

    from . import services

    images = [Image.fromarray(v.transpose(1, 2, 0)) for v in _views_uint8(views)]
    products = [Image.fromarray(p.transpose(1, 2, 0)) for p in data["products"]]
    catalog = torch.from_numpy(services.images_embed(version=version, images=products))
    queries = torch.from_numpy(services.images_embed(version=version, images=images, photos=True))
    return _recall_at_1(queries, catalog, truth)


def trainer_fit_resumable(run: TrainingRun, trainer, *, stage_name: str, device, history_extra: tuple[str, ...] = ()):
    """Train `trainer` (a mlcore.nn.match_cnn.Trainer) for `run`, resuming from the run's checkpoint.

    After each epoch the whole training state is written to a temporary file and renamed over the
    checkpoint (a kill mid-save leaves the previous epoch's), and the run's epoch, history (rows
    tagged `stage_name`, with the epoch row's `history_extra` keys too), images/s and heartbeat are
    updated. Shared by stage 1 (this module) and stage 2 (mlcore.matching_finetune).
    """
    import torch

    from .training import candidate_path

    checkpoint = Path(run.checkpoint_path) if run.checkpoint_path else candidate_path(run).with_suffix(".train.pt")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint.exists():
        trainer.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        logger.info("training run %s resumes after epoch %s", run.uuid, trainer.epoch)
    TrainingRun.objects.filter(pk=run.pk).update(
        checkpoint_path=str(checkpoint), epochs=trainer.config.epochs, device=str(device), epoch=trainer.epoch
    )

    def on_epoch(row, trainer):
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(trainer.state_dict(), tmp)
        tmp.replace(checkpoint)  # atomic: a kill mid-save leaves the previous epoch's checkpoint
        TrainingRun.objects.filter(pk=run.pk).update(
            epoch=trainer.epoch,
            history=[
                {
                    "stage": stage_name,
                    "epoch": h["epoch"],
                    "train_loss": h["loss"],
                    **{key: h[key] for key in history_extra},
                    "val_loss": None,
                    "val_accuracy": {},
                    "seconds": h["seconds"],
                }
                for h in trainer.history
            ],
            rows_per_s=row["images_per_s"],
            heartbeat_at=timezone.now(),
        )

    from .jobs import worker_stopping

    # A worker asked to shut down stops between two steps (TrainingInterrupted); training_run_execute
    # queues the run again and the next worker resumes it from the checkpoint above.
    trainer.fit(on_epoch=on_epoch, should_stop=worker_stopping)


def _part_beat(run: TrainingRun, part: str):
    """The `on_epoch` of a part trained after stage 1 (localiser, matte, pair verifier): each call
    beats the run's heartbeat, so the stale-run sweep leaves it alone, logs the epoch, and raises
    TrainingInterrupted when the worker is shutting down. The parts are seeded, so the resumed run
    trains the same part again from its start. Called with {"epoch": 0} at the end of a part's
    preparation, and with no row during it (only the heartbeat and the stop check)."""
    from .jobs import worker_stopping
    from .nn.match_cnn import TrainingInterrupted

    def beat(row=None):
        TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
        if row is not None and row["epoch"]:
            logger.info("training run %s: %s epoch %s, loss %.4f", run.uuid, part, row["epoch"], row["loss"])
        if worker_stopping():
            where = f"after {part} epoch {row['epoch']}" if row is not None else f"while preparing the {part}"
            raise TrainingInterrupted(f"stopped {where}")

    return beat


def localiser_train(run: TrainingRun, model, products, *, grayscale: bool) -> float | None:
    """Train the product localiser (mlcore.nn.localise) on views of `products` (uint8 (N, C, H, W))
    and attach it to `model` (model.localiser), unless the run's config says {"localise": false}.
    Each of its epochs beats the run's heartbeat and checks for a stop (`_part_beat`). Returns its
    seconds, or None when skipped."""
    from .nn import localise

    if not run.config.get("localise", True):
        return None
    started = time.perf_counter()
    known = localise.LocaliserConfig.__dataclass_fields__
    fields = {k: v for k, v in run.config.get("localiser", {}).items() if k in known}
    model.localiser, _ = localise.localiser_fit(
        products, localise.LocaliserConfig(**fields), grayscale=grayscale, on_epoch=_part_beat(run, "localiser")
    )
    return time.perf_counter() - started


def matte_train(run: TrainingRun, model, products, *, grayscale: bool) -> float | None:
    """Train the matte of geometric verification (mlcore.nn.verify) on views of `products` (uint8
    (N, C, H, W)) and attach it to `model` (model.matte), unless the run's config says
    {"verify": false} or the model has no localiser (verification cuts photos with it). Heartbeat
    and stop as localiser_train. Returns its seconds, or None when skipped."""
    from .nn import verify

    if not run.config.get("verify", True) or getattr(model, "localiser", None) is None:
        return None
    started = time.perf_counter()
    known = verify.MatteConfig.__dataclass_fields__
    fields = {k: v for k, v in run.config.get("matte", {}).items() if k in known}
    model.matte, _ = verify.matte_fit(
        products, verify.MatteConfig(**fields), grayscale=grayscale, on_epoch=_part_beat(run, "matte")
    )
    return time.perf_counter() - started


def pair_train(run: TrainingRun, model, products, catalog, config, *, device) -> float | None:
    """Train the pair verifier (mlcore.nn.verify.PairVerifier, the fourth term of geometric
    verification) for `model` on views of `products` (uint8 (N, C, H, W)), with `catalog` (N, D) the
    model's embeddings of them and `config` its MatchCNNConfig, and attach it (model.pair), unless the
    run's config says {"pair_verify": false} or the model has no matte. Heartbeat and stop as
    localiser_train, during the alignment of its views too. Returns its seconds, or None when
    skipped."""
    from .nn import verify

    if not run.config.get("pair_verify", True) or getattr(model, "matte", None) is None:
        return None
    started = time.perf_counter()
    known = verify.PairConfig.__dataclass_fields__
    fields = {k: v for k, v in run.config.get("pair", {}).items() if k in known}
    beat = _part_beat(run, "pair verifier")
    model.pair, _ = verify.pair_fit(
        model,
        products,
        catalog,
        verify.PairConfig(**fields),
        match_config=config,
        grayscale=config.grayscale,
        device=device,
        on_epoch=beat,
        on_progress=beat,  # the alignment takes minutes before the first epoch
    )
    return time.perf_counter() - started


def pretrain_run_train(run: TrainingRun) -> None:
    """Train stage 1 for `run`, resuming from its checkpoint; register and try to promote the model."""
    import torch

    from .nn import match_cnn as mc
    from .nn.infer import device_resolve
    from .training import candidate_path, candidate_promote

    device = device_resolve(settings.FITCHECK_DEVICE)
    fields = dict(run.config.get("cnn", {}))
    base = ModelVersion.objects.get(uuid=run.config["base_version"])
    size_px = int(fields.get("image_size_px", mc.MatchCNNConfig.image_size_px))
    data = catalog_load(size_px=max(size_px, 28))
    fields.setdefault("grayscale", data["grayscale"])
    known = set(mc.MatchCNNConfig.__dataclass_fields__)
    config = mc.MatchCNNConfig(**{k: v for k, v in fields.items() if k in known})
    train_data = mc.MatchData(
        products=torch.from_numpy(data["products"]), category_mask=torch.from_numpy(data["category_mask"])
    )
    trainer = mc.Trainer(train_data, config, device=device)
    trainer_fit_resumable(run, trainer, stage_name="matching_pretrain", device=device)
    model = trainer.model
    localiser_s = localiser_train(run, model, train_data.products, grayscale=config.grayscale)
    matte_s = matte_train(run, model, train_data.products, grayscale=config.grayscale)
    catalog = mc.images_embed(model, train_data.products, config, device=device)
    pair_s = pair_train(run, model, train_data.products, catalog, config, device=device)
    started = time.perf_counter()
    rejection = mc.rejection_calibrate(model, train_data, config, device=device, count=min(2000, len(data["products"])))
    held_out = held_out_rows(data["product_ids"])
    if not len(held_out):
        held_out = np.arange(len(data["product_ids"]))
    views = mc.CatalogViews(
        train_data.products, size_px=config.image_size_px, grayscale=config.grayscale, seed=config.seed + 777
    )
    batch = _views_of(views, held_out)
    # scored as the product scores photos: with the test-time crops (services.images_embed, photos=True)
    queries = mc.photos_embed(model, torch.from_numpy(_views_uint8(batch)), config, device=device)
    score = _recall_at_1(queries, catalog, held_out)
    path = candidate_path(run)
    sha256 = mc.match_cnn_save(
        model, config, path, rejection=rejection, extra={"leaves": data["leaves"], "run": str(run.uuid)}
    )
    metrics = {
        "score": score,
        "held_out_views": int(len(held_out)),
        "recall_at_1": score,
        "threshold": rejection.threshold,
        "calibration_s": time.perf_counter() - started,
        "localiser_s": localiser_s,
        "matte_s": matte_s,
        "pair_s": pair_s,
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
        config={**run.config, "cnn": config.to_dict()},
        metrics=metrics,
    )
    TrainingRun.objects.filter(pk=run.pk).update(candidate=candidate)

    def score_active(active: ModelVersion) -> float:
        return _score_version(active, batch, held_out, data)

    baseline = score_active(base)
    candidate.metrics["base"] = {"name": base.name, "recall_at_1": baseline}
    ModelVersion.objects.filter(pk=candidate.pk).update(metrics=candidate.metrics)
    if score <= baseline:
        ModelVersion.objects.filter(pk=candidate.pk).update(status=ModelVersion.Status.RETIRED)
        promoted, decision = False, f"held-out recall@1 {score:.4f} does not beat {base.name}'s {baseline:.4f}"
    else:
        promoted, decision = candidate_promote(candidate=candidate, score_active=score_active)
        if decision == "no active model":  # the first CNN of the scope: say what it beat
            decision = f"the first matching CNN: held-out recall@1 {score:.4f} beats {base.name}'s {baseline:.4f}"
        else:
            decision = f"{decision} (and {base.name}'s {baseline:.4f})"
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.DONE, promoted=promoted, decision=decision, finished_at=timezone.now()
    )
