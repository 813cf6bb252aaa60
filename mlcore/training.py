"""The learning loop's training side: retrain a tagging model from a frozen snapshot, register it as a
candidate, promote it only if it beats the active model on the held-out set, roll back.

A snapshot is a JSON Lines file of settled labels, one product per line (written by annotate, which
orchestrates the loop; mlcore never imports annotate):

    {"product": "<uuid>", "split": "train" | "validation" | "test",
     "labels": {"<attribute slug>": {"label": "<value>", "posterior": {"<value>": p, ...}}}}

A multi-choice label (kind "multi") holds the selected options in option order joined by "|" ("" for
none) and per option P(selected), which is not a distribution over the options:

     "season": {"label": "spring|summer", "kind": "multi",
                "posterior": {"spring": 0.83, "summer": 0.83, "autumn": 0.17, "winter": 0.17}}

The run's config names the attributes and their values ({"attributes": {slug: [value, ...]}}; a
multi-choice attribute: its options, its slug also in "multi_choice": [slug, ...]), the
embedding model version whose image embeddings feed the heads, the target precision, and optionally
text_encoder ("minilm" or "none"), threshold_bound ("wilson", the default, or "point"),
min_accepted, epochs, batch_size, lr, hidden_dim, dropout, seed.

Multi choice is modelled by binary relevance (mlcore.nn.tagging.binary_relevance_values): each
option is a two-class pseudo-attribute "<slug>:<option>" ("no", "yes") with soft target P(selected),
so everything below applies to it unchanged; the model keeps {slug: options} in `multi` to put the
options back together.

Fusion, temperature and thresholds are fitted on out-of-fold predictions of every train and
validation label (cross-fitting, FOLDS folds by a hash of the product: `calibration: "cross_fit"`,
the default), as bench/label_economy.py does; `calibration: "validation"` fits them on the 10%
validation split alone (cheaper, but with the Wilson bound at 98% nothing is auto-accepted before
that split holds ~190 labels the model gets right).

The model: per attribute, an image head over the backbone's embedding and a text head over MiniLM
embeddings of the product's text (mlcore.nn.tagging.TaggingHeads, one network per modality, one head
per attribute), a learned late fusion of the two per attribute, a temperature per attribute, and an
auto-accept threshold per attribute at the target precision, all fitted on the validation split;
the test split measures it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from catalog.models import Product

from .models import EmbeddingRun, ModelVersion, ProductEmbedding, TrainingRun

logger = logging.getLogger(__name__)

STALE_RUN_AFTER = timedelta(minutes=10)  # a RUNNING run without a heartbeat this long is re-claimed
# A stale run this long after it started is failed rather than re-queued (training_runs_recover).
GIVE_UP_AFTER = timedelta(hours=24)
# Sent after a candidate becomes active (or a rollback): annotate re-ranks and auto-accepts.
# Arguments: version (the new active ModelVersion), scope, and replaced (the model that was active
# before, or None) with rollback=True when an admin rolled `replaced` back.
model_activated = Signal()


class TrainingError(RuntimeError):
    """A run cannot train: an unreadable snapshot, no labels in a split, an unknown attribute value."""


def checkpoints_root() -> Path:
    """Where checkpoints live: settings.FITCHECK_MODELS_ROOT (not under MEDIA_ROOT)."""
    return Path(settings.FITCHECK_MODELS_ROOT)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- data ---------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A snapshot as arrays. image: (N, D) float32; text: (N, 384) float32; split: (N,) str;
    targets/masks per attribute: (N, K_a) float32 soft targets and (N,) bool. values, targets and
    masks are keyed by the heads' attributes: a multi-choice attribute by its options'
    pseudo-attributes, listed in multi ({slug: options})."""

    products: list[int]
    keys: list[str]  # product uuids, for folds
    image: np.ndarray
    text: np.ndarray
    split: np.ndarray
    targets: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    values: dict[str, list[str]]
    multi: dict[str, list[str]] = field(default_factory=dict)


def snapshot_lines(path: str) -> list[dict]:
    """A snapshot's JSON Lines file as a list of dicts (blank lines skipped). Raises TrainingError on
    a missing file or a line that is not JSON. Used by every trainer that reads a frozen snapshot."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"cannot read snapshot {path}: {exc}") from exc


def snapshot_read(path: str, *, values: dict[str, list[str]], multi_choice=()) -> list[dict]:
    """The snapshot's records; a label of an attribute in `multi_choice` is "|"-joined options of
    `values[slug]` ("" for none). Raises TrainingError on a missing or malformed file or a value
    that is not one of its attribute's."""
    multi = set(multi_choice)
    records = snapshot_lines(path)
    for n, record in enumerate(records, 1):
        if not {"product", "split", "labels"} <= set(record):
            raise TrainingError(f"snapshot line {n}: needs product, split and labels")
        for slug, label in record["labels"].items():
            if slug in multi:
                parts = str(label.get("label", "")).split("|")
                if not set(p for p in parts if p) <= set(values[slug]):
                    raise TrainingError(f"snapshot line {n}: {slug}={label.get('label')!r} names an unknown option")
                continue
            if slug in values and label.get("label") not in values[slug]:
                raise TrainingError(f"snapshot line {n}: {slug}={label.get('label')!r} is not one of its values")
    return records


def product_texts(products: list[Product]) -> list[str]:
    """The text each product is embedded from (mlcore.nn.text.product_text)."""
    from .nn.text import product_text

    return [
        product_text(
            title=p.title,
            description=p.description,
            native_category=p.native_category.path if p.native_category_id else "",
        )
        for p in products
    ]


def product_features(
    product_ids: list[int], *, embedding_version: ModelVersion, text_encoder: str = "minilm"
) -> tuple[np.ndarray, np.ndarray]:
    """(image (N, D) float32, text (N, 384) float32) for products, in order. Image embeddings come from
    ProductEmbedding of `embedding_version`, computed now for products that lack one (a product
    without a readable image gets zeros: its text still counts). text_encoder "none" gives an
    image-only model: text is (N, 1) zeros, and late fusion learns to ignore it."""
    from .nn.text import embed_texts
    from .services import _image_field, _open_image, images_embed

    by_id = {
        p.pk: p
        for p in Product.objects.filter(pk__in=product_ids).select_related("native_category").prefetch_related("images")
    }
    products = [by_id[i] for i in product_ids]
    stored = dict(
        ProductEmbedding.objects.filter(model_version=embedding_version, product_id__in=product_ids).values_list(
            "product_id", "vector"
        )
    )
    dim = embedding_version.embedding_dim
    image = np.zeros((len(products), dim), np.float32)
    missing = []
    for i, p in enumerate(products):
        if p.pk in stored:
            image[i] = np.frombuffer(bytes(stored[p.pk]), dtype=np.float32)
        else:
            missing.append(i)
    for start in range(0, len(missing), 256):
        rows, images = [], []
        for i in missing[start : start + 256]:
            try:
                images.append(_open_image(_image_field(products[i])))
                rows.append(i)
            except Exception as exc:  # noqa: BLE001 (an unreadable image must not stop training)
                logger.warning("product %s: no image embedding: %s", products[i].pk, exc)
        if images:
            vectors = images_embed(version=embedding_version, images=images)
            image[rows] = vectors
            ProductEmbedding.objects.bulk_create(
                [
                    ProductEmbedding(product=products[i], model_version=embedding_version, vector=v.tobytes())
                    for i, v in zip(rows, vectors, strict=True)
                ],
                ignore_conflicts=True,
            )
    if text_encoder == "none":
        return image, np.zeros((len(products), 1), np.float32)
    return image, embed_texts(product_texts(products))


def dataset_build(
    records: list[dict],
    *,
    values: dict[str, list[str]],
    embedding_version: ModelVersion,
    text_encoder: str = "minilm",
    multi_choice=(),
) -> Dataset:
    """Arrays for training from snapshot records: soft targets from each label's posterior (one-hot
    when the posterior is missing, as for gold), masked where a product has no label. The
    attributes named in `multi_choice` become one pseudo-attribute per option (binary relevance,
    mlcore.nn.tagging.option_targets): target [1 - p, p], p the option's P(selected)."""
    from .nn import tagging as nt

    multi = {slug: list(values[slug]) for slug in multi_choice if slug in values}
    values = nt.binary_relevance_values(values, multi)
    uuids = [r["product"] for r in records]
    ids = dict(Product.objects.filter(uuid__in=uuids).values_list("uuid", "pk"))
    kept = [r for r in records if _uuid(r["product"]) in ids]
    if len(kept) < len(records):
        logger.warning("snapshot: %d products no longer exist; left out", len(records) - len(kept))
    product_ids = [ids[_uuid(r["product"])] for r in kept]
    targets = {slug: np.zeros((len(kept), len(v)), np.float32) for slug, v in values.items()}
    masks = {slug: np.zeros(len(kept), bool) for slug in values}
    for n, record in enumerate(kept):
        for slug, label in record["labels"].items():
            if slug in multi:
                rows = nt.option_targets(
                    multi[slug], label=str(label.get("label", "")), posterior=label.get("posterior")
                )
                for option, row in zip(multi[slug], rows, strict=True):
                    targets[nt.option_slug(slug, option)][n] = row
                    masks[nt.option_slug(slug, option)][n] = True
                continue
            if slug not in values:
                continue
            index = {v: i for i, v in enumerate(values[slug])}
            posterior = label.get("posterior") or {label["label"]: 1.0}
            row = np.array([float(posterior.get(v, 0.0)) for v in values[slug]], np.float32)
            if row.sum() <= 0:
                row[index[label["label"]]] = 1.0
            targets[slug][n] = row / row.sum()
            masks[slug][n] = True
    image, text = product_features(product_ids, embedding_version=embedding_version, text_encoder=text_encoder)
    split = np.array([r["split"] for r in kept])
    keys = [str(r["product"]) for r in kept]
    return Dataset(product_ids, keys, image, text, split, targets, masks, values, multi)


def dataset_labelled(data: Dataset, rows: np.ndarray) -> Dataset:
    """`data` without the attributes that have no label among `rows` (the training split): a head
    trained on nothing would still predict, and its guesses would pre-fill the tagging form. A
    multi-choice attribute goes as a whole (its options share one mask). Logs what it drops.

    Args:
        data: from `dataset_build`.
        rows: (n,) int indices into data's products.

    Returns:
        A Dataset sharing data's arrays (nothing copied).
    """
    from .nn.tagging import option_slug

    labelled = {slug for slug in data.values if data.masks[slug][rows].any()}
    multi = dict(data.multi)
    for slug, options in list(multi.items()):
        heads = {option_slug(slug, option) for option in options}
        if not heads <= labelled:
            labelled -= heads
            del multi[slug]
    dropped = sorted(set(data.values) - labelled)
    if dropped:
        logger.info("training: no training labels for %s; no head for them", ", ".join(dropped))
    return Dataset(
        data.products,
        data.keys,
        data.image,
        data.text,
        data.split,
        {s: t for s, t in data.targets.items() if s in labelled},
        {s: m for s, m in data.masks.items() if s in labelled},
        {s: v for s, v in data.values.items() if s in labelled},
        multi,
    )


def _uuid(value):
    import uuid

    return uuid.UUID(str(value))


# -- the model ------------------------------------------------------------------------------------------


class TaggingModel:
    """A trained tagging model: image and text heads, and per attribute the fusion, temperature and
    auto-accept threshold. `predict` gives calibrated probabilities. `values` is keyed by the heads'
    attributes (a multi-choice attribute by its options' pseudo-attributes "<slug>:<option>");
    `multi` maps each multi-choice attribute to its options (empty in checkpoints from before)."""

    def __init__(
        self,
        *,
        image_heads,
        text_heads,
        fusion: dict,
        temperature: dict,
        thresholds: dict,
        values: dict,
        multi: dict | None = None,
    ):
        self.image_heads, self.text_heads = image_heads, text_heads
        self.fusion, self.temperature, self.thresholds, self.values = fusion, temperature, thresholds, values
        self.multi = dict(multi or {})

    def predict(self, image: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
        """{attribute: (N, K_a) float64 calibrated probabilities} for embeddings image (N, D), text (N, 384)."""
        from .nn import tagging as nt

        log_image = nt.heads_log_proba(self.image_heads, image)
        log_text = nt.heads_log_proba(self.text_heads, text)
        out = {}
        for slug in self.values:
            fused = nt.log_softmax_np(self.fusion[slug].apply(log_image[slug], log_text[slug]))
            out[slug] = np.exp(nt.log_softmax_np(fused / self.temperature[slug]))
        return out

    def save(self, path: Path) -> str:
        """Write the checkpoint; returns its sha256."""
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "image_heads": self.image_heads.state_dict(),
                "text_heads": self.text_heads.state_dict(),
                "input_dims": [self.image_heads.heads_input, self.text_heads.heads_input],
                "hidden_dim": self.image_heads.hidden_dim,
                "fusion": {k: vars(f) for k, f in self.fusion.items()},
                "temperature": self.temperature,
                "thresholds": self.thresholds,
                "values": self.values,
                "multi": self.multi,
            },
            path,
        )
        return file_sha256(path)

    @classmethod
    def load(cls, path: str, *, sha256: str = "") -> TaggingModel:
        """Read a checkpoint written by `save`. Raises TrainingError when the file is missing or its
        sha256 is not the registered one."""
        import torch

        from .nn import tagging as nt

        if not Path(path).is_file():
            raise TrainingError(f"checkpoint {path} is missing")
        if sha256 and file_sha256(Path(path)) != sha256:
            raise TrainingError(f"checkpoint {path} does not match its registered sha256")
        state = torch.load(path, map_location="cpu", weights_only=False)
        classes = {slug: len(v) for slug, v in state["values"].items()}
        heads = []
        for key, dim in zip(("image_heads", "text_heads"), state["input_dims"], strict=True):
            model = nt.TaggingHeads(dim, classes, hidden_dim=state["hidden_dim"], dropout=0.0)
            model.load_state_dict(state[key])
            model.heads_input, model.hidden_dim = dim, state["hidden_dim"]
            heads.append(model.eval())
        return cls(
            image_heads=heads[0],
            text_heads=heads[1],
            fusion={k: nt.Fusion(**v) for k, v in state["fusion"].items()},
            temperature=state["temperature"],
            thresholds=state["thresholds"],
            values=state["values"],
            multi=state.get("multi", {}),
        )


def model_metrics(model: TaggingModel, data: Dataset, rows: np.ndarray, *, target: float) -> dict:
    """Per attribute on `rows`: accuracy, NLL, and coverage and precision at the model's threshold
    (with a Wilson interval); plus "score", the mean accuracy over attributes (what promotion compares).

    A multi-choice attribute gets a row per option pseudo-attribute (with "attribute" and "option"
    keys) and a row of its own ("kind": "multi", "options"): accuracy is exact-set accuracy (every
    option right), coverage the share of products whose every option clears its threshold (what
    auto-accept settles) and precision exact-set precision among those. The score counts the
    attribute once, by its exact-set accuracy, not its options."""
    from .nn import tagging as nt

    proba = model.predict(data.image[rows], data.text[rows])
    out = {"attributes": {}, "rows": int(len(rows))}
    pseudo = {nt.option_slug(slug, o): (slug, o) for slug, options in model.multi.items() for o in options}
    accuracies = []
    for slug, p in proba.items():
        if slug not in data.masks:  # an attribute this data has no head for (no training labels)
            continue
        mask = data.masks[slug][rows]
        if not mask.any():
            continue
        truth = data.targets[slug][rows][mask].argmax(1)
        predicted, confidence = p[mask].argmax(1), p[mask].max(1)
        right = predicted == truth
        threshold = model.thresholds.get(slug)
        accept = confidence >= (math.inf if threshold is None else threshold)
        low, high = nt.wilson_interval(int(right[accept].sum()), int(accept.sum()))
        out["attributes"][slug] = {
            "n": int(mask.sum()),
            "accuracy": float(right.mean()),
            "nll": float(-np.log(np.clip(p[mask][np.arange(len(truth)), truth], 1e-12, None)).mean()),
            "threshold": threshold,
            "coverage": float(accept.mean()),
            "precision": float(right[accept].mean()) if accept.any() else None,
            "precision_low": low,
            "precision_high": high,
            "target_precision": target,
        }
        if slug in pseudo:
            out["attributes"][slug].update(attribute=pseudo[slug][0], option=pseudo[slug][1])
        else:
            accuracies.append(float(right.mean()))
    for slug, options in model.multi.items():
        heads = [nt.option_slug(slug, o) for o in options]
        if not all(h in proba and h in data.masks for h in heads):
            continue
        mask = np.all([data.masks[h][rows] for h in heads], axis=0)
        if not mask.any():
            continue
        right = np.ones(int(mask.sum()), bool)
        accept = np.ones(int(mask.sum()), bool)
        for h in heads:
            truth = data.targets[h][rows][mask].argmax(1)
            p = proba[h][mask]
            right &= p.argmax(1) == truth
            threshold = model.thresholds.get(h)
            accept &= p.max(1) >= (math.inf if threshold is None else threshold)
        low, high = nt.wilson_interval(int(right[accept].sum()), int(accept.sum()))
        out["attributes"][slug] = {
            "kind": "multi",
            "options": list(options),
            "n": int(mask.sum()),
            "accuracy": float(right.mean()),
            "threshold": None,
            "coverage": float(accept.mean()),
            "precision": float(right[accept].mean()) if accept.any() else None,
            "precision_low": low,
            "precision_high": high,
            "target_precision": target,
        }
        accuracies.append(float(right.mean()))
    out["score"] = float(np.mean(accuracies)) if accuracies else 0.0
    return out


# -- runs ------------------------------------------------------------------------------------------------


def training_run_create(
    *, scope: str, snapshot_path: str, snapshot_uuid=None, config: dict, reason: str = ""
) -> TrainingRun:
    """A PENDING run; the caller queues mlcore.train for it after commit. A PENDING run of the same
    scope that never started is reused (its message was lost), with the new snapshot."""
    pending = TrainingRun.objects.filter(scope=scope, status=TrainingRun.Status.PENDING).order_by("created_at").first()
    if pending is not None:
        TrainingRun.objects.filter(pk=pending.pk).update(
            snapshot_path=snapshot_path, snapshot_uuid=snapshot_uuid, config=config, reason=reason
        )
        pending.refresh_from_db()
        return pending
    return TrainingRun.objects.create(
        scope=scope,
        snapshot_path=snapshot_path,
        snapshot_uuid=snapshot_uuid,
        config=config,
        reason=reason,
        epochs=int(config.get("epochs", 30)),
    )


def training_run_execute(*, run_id: int) -> TrainingRun | None:
    """Train the run's candidate, then try to promote it (`candidate_promote`).

    Claims the run with a conditional update (PENDING, or RUNNING with a stale heartbeat: a worker
    that was killed), so two workers never train it at once; a claimed run resumes from its last
    per-epoch checkpoint. Until the candidate is promoted, the active model keeps serving: a failed
    or killed run changes nothing else. On an error the run is left FAILED with the error text (and a
    candidate row, if one was made, FAILED too) and the error is re-raised; but a run stopped by its
    worker's shutdown (mlcore.jobs.worker_stopping: TrainingInterrupted between two steps, or any
    error raised while the worker stops) goes back to PENDING and is sent again, to resume from its
    checkpoint on the next worker (`_run_requeue_after_stop`). A worker already shutting down sends
    a PENDING run on without claiming it.

    Returns the run, or None when it no longer exists.
    """
    from django.db.models import Q

    from .jobs import task_send, worker_stopping

    if worker_stopping():
        # A worker shutting down still runs the message it had prefetched, often the very run it just
        # stopped and queued again: leave it to the next worker rather than load the checkpoint here.
        pending = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.PENDING).first()
        if pending is not None:
            task_send(_run_task(pending.kind, pending.config).si(pending.pk))
            logger.info("training run %s left for the next worker: this one is shutting down", pending.uuid)
            return pending
    now = timezone.now()
    claimed = TrainingRun.objects.filter(
        Q(status=TrainingRun.Status.PENDING)
        | Q(status=TrainingRun.Status.RUNNING, heartbeat_at__lt=now - STALE_RUN_AFTER),
        pk=run_id,
    ).update(status=TrainingRun.Status.RUNNING, heartbeat_at=now, error="")
    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None:
        return None
    if not claimed:
        logger.info("training run %s is %s; nothing to do", run.uuid, run.status)
        return run
    if run.started_at is None:
        TrainingRun.objects.filter(pk=run.pk).update(started_at=now)
    try:
        if run.kind == ModelVersion.Kind.MATCHING:
            from .matching_training import matching_run_train

            matching_run_train(run)
        elif run.kind == ModelVersion.Kind.BACKBONE:
            from .matching_finetune import finetune_run_train, run_is_finetune
            from .matching_pretrain import pretrain_run_train

            (finetune_run_train if run_is_finetune(run) else pretrain_run_train)(run)
        else:
            _train(run)
    except Exception as exc:
        if worker_stopping():
            _run_requeue_after_stop(run, exc)
            return run
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
        ModelVersion.objects.filter(pk=run.candidate_id, status=ModelVersion.Status.TRAINING).update(
            status=ModelVersion.Status.FAILED
        )
        raise
    run.refresh_from_db()
    return run


def _run_requeue_after_stop(run: TrainingRun, exc: Exception) -> None:
    """The worker is shutting down and the run stopped (TrainingInterrupted, or an error the shutdown
    caused, such as a DataLoader worker killed with its process group): not the run's failure. It
    goes back to PENDING and is sent again at once, so the next gpu worker to start (or another one
    running now) resumes it from its last checkpoint; were the message lost, the sweep sends a
    PENDING run again after mlcore.jobs.PENDING_RESEND_AFTER. Failing it instead left a demo
    stopped with Ctrl-C during the matching CNN's training without a trained CNN for good."""
    from .jobs import task_send

    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.PENDING, heartbeat_at=None, error="")
    run.refresh_from_db()
    sent = task_send(_run_task(run.kind, run.config).si(run.pk))
    logger.warning(
        "training run %s stopped at epoch %s by the worker's shutdown (%s: %s); %s",
        run.uuid,
        run.epoch,
        type(exc).__name__,
        exc,
        "queued again, it resumes from its checkpoint" if sent else "left PENDING for the sweep to send",
    )


def _run_task(kind: str, config: dict):
    """The Celery task that trains a run of `kind` (and stage, for a matching CNN run)."""
    from .matching_finetune import STAGE
    from .tasks import matching_finetune_task, matching_pretrain_task, train_task

    if kind == ModelVersion.Kind.BACKBONE:
        return matching_finetune_task if (config or {}).get("stage") == STAGE else matching_pretrain_task
    return train_task


def training_runs_recover(*, pending_after: timedelta | None = None, now=None) -> int:
    """Re-queue every run nobody is working on: RUNNING with a heartbeat older than STALE_RUN_AFTER
    (its worker died; the message may never be redelivered, as with the SQLite-file broker), or
    PENDING for longer than `pending_after` (mlcore.jobs.PENDING_RESEND_AFTER by default: its message
    was lost, or never reached a broker that was down), except a matching CNN run whose base model
    still has an embedding run to finish (`_waits_for_embeddings`: its message comes after those).
    The re-queued run resumes from its last per-epoch checkpoint. Run by Celery beat
    (annotate.jobs_recover) on either broker.

    A stale run that started more than GIVE_UP_AFTER ago is not re-queued but FAILED (its worker
    keeps dying, or no gpu worker has run for that long), so a run can never hold up the learning
    loop (annotate.learning.learning_due skips a scope with a live run) for good.

    Safe to call at any time: training_run_execute claims with a conditional update, so a duplicate
    message does nothing; the messages sent here expire (mlcore.jobs.RESEND_EXPIRES_S) so a long
    worker outage does not pile them up. A broker outage is logged, not raised.
    Returns the number of runs re-queued.
    """
    from django.db.models import Q

    from .jobs import PENDING_RESEND_AFTER, RESEND_EXPIRES_S, task_send

    now = now or timezone.now()
    pending_after = PENDING_RESEND_AFTER if pending_after is None else pending_after
    stale = Q(status=TrainingRun.Status.RUNNING, heartbeat_at__lt=now - STALE_RUN_AFTER)
    given_up = TrainingRun.objects.filter(stale, started_at__lt=now - GIVE_UP_AFTER).update(
        status=TrainingRun.Status.FAILED,
        error=f"given up: no heartbeat for {STALE_RUN_AFTER} and started over {GIVE_UP_AFTER} ago (its worker "
        "keeps getting lost, or no gpu worker runs); the next retrain starts afresh",
        finished_at=now,
    )
    if given_up:
        logger.warning("failed %s training runs whose workers kept getting lost", given_up)
    runs = [
        (pk, kind, config)
        for pk, kind, status, config in TrainingRun.objects.filter(
            stale | Q(status=TrainingRun.Status.PENDING, created_at__lt=now - pending_after)
        ).values_list("pk", "kind", "status", "config")
        if not (status == TrainingRun.Status.PENDING and _waits_for_embeddings(kind, config))
    ]
    sent = 0
    for pk, kind, config in runs:
        sent += task_send(_run_task(kind, config).si(pk), expires=RESEND_EXPIRES_S)
    if runs:
        logger.info("re-queued %s of %s stale training runs", sent, len(runs))
    return sent


def _waits_for_embeddings(kind: str, config: dict) -> bool:
    """Whether a PENDING run is not lost but queued behind its campaign's embedding: a matching CNN
    run is created when a campaign is prepared and sent as the last step of that chain, after the
    products and photos are embedded (annotate.services.campaign_prepare). Sent on its own by the
    sweep before then, it took the single gpu worker for its whole training (20+ minutes) ahead of
    the photos' embedding, so the campaign's first tasks waited for it (issue 16)."""
    base = (config or {}).get("base_version")
    if kind != ModelVersion.Kind.BACKBONE or not base:
        return False
    return EmbeddingRun.objects.filter(
        model_version__uuid=base, status__in=[EmbeddingRun.Status.PENDING, EmbeddingRun.Status.RUNNING]
    ).exists()


def _train(run: TrainingRun) -> None:
    import torch

    from .jobs import worker_stopping
    from .nn import tagging as nt
    from .nn.infer import device_resolve

    config = run.config
    values = {slug: list(v) for slug, v in config["attributes"].items()}
    multi_choice = list(config.get("multi_choice", []))
    target = float(config.get("target_precision", 0.98))
    embedding_version = ModelVersion.objects.get(uuid=config["embedding_version"])
    device = device_resolve(settings.FITCHECK_DEVICE)
    records = snapshot_read(run.snapshot_path, values=values, multi_choice=multi_choice)
    data = dataset_build(
        records,
        values=values,
        embedding_version=embedding_version,
        text_encoder=config.get("text_encoder", "minilm"),
        multi_choice=multi_choice,
    )
    train, val, test = (np.flatnonzero(data.split == s) for s in ("train", "validation", "test"))
    data = dataset_labelled(data, train)
    values = data.values  # the heads' attributes: multi choice as one pseudo-attribute per option
    if not len(train) or not values:
        raise TrainingError("the snapshot has no training labels")
    heads_config = nt.HeadsConfig(
        hidden_dim=int(config.get("hidden_dim", 0)),
        epochs=run.epochs or int(config.get("epochs", 30)),
        batch_size=int(config.get("batch_size", 256)),
        lr=float(config.get("lr", 5e-3)),
        dropout=float(config.get("dropout", 0.0)),
        seed=int(config.get("seed", 0)),
    )
    checkpoint = Path(run.checkpoint_path) if run.checkpoint_path else checkpoints_root() / "runs" / f"{run.uuid}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    TrainingRun.objects.filter(pk=run.pk).update(checkpoint_path=str(checkpoint), device=str(device))
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False) if checkpoint.is_file() else {}
    history = list(run.history) if saved else []
    trained = {}
    for stage, x in (("image", data.image), ("text", data.text)):
        masks = {s: data.masks[s][train] for s in values}
        targets = {s: data.targets[s][train] for s in values}
        val_set = (x[val], {s: data.targets[s][val] for s in values}, {s: data.masks[s][val] for s in values})

        def on_epoch(result, state, stage=stage):
            saved[stage] = state
            saved["done"] = saved.get("done", [])
            torch.save(saved, checkpoint)
            history.append(
                {
                    "stage": stage,
                    "epoch": result.epoch,
                    "train_loss": round(result.train_loss, 6),
                    "val_loss": None if result.val_loss is None else round(result.val_loss, 6),
                    "val_accuracy": {k: round(v, 6) for k, v in result.val_accuracy.items()},
                    "seconds": round(result.seconds, 3),
                }
            )
            TrainingRun.objects.filter(pk=run.pk).update(
                epoch=result.epoch, history=history, heartbeat_at=timezone.now(), rows_per_s=result.rows_per_s
            )
            if worker_stopping():  # the worker is shutting down: resume from this epoch's checkpoint
                from .nn.match_cnn import TrainingInterrupted

                raise TrainingInterrupted(f"stopped after {stage} epoch {result.epoch}")

        state = saved.get(stage)
        if state is not None and state["epoch"] >= heads_config.epochs:
            model = _heads_from(state, x.shape[1], values, heads_config)
        else:
            model, _ = nt.heads_train(
                x[train],
                targets,
                masks,
                config=heads_config,
                val=val_set if len(val) else None,
                device=str(device),
                state=state,
                on_epoch=on_epoch,
            )
        model.heads_input, model.hidden_dim = x.shape[1], heads_config.hidden_dim
        trained[stage] = model
    if config.get("calibration", "cross_fit") == "cross_fit":
        # Out-of-fold predictions of every train and validation label: fusion, temperature and the
        # threshold rest on all of them, not on the 10% validation split alone.
        calibrate = np.concatenate([train, val])
        log_image, log_text = _out_of_fold(data, calibrate, values, heads_config, device=str(device))
    else:
        calibrate = val if len(val) else train
        log_image = nt.heads_log_proba(trained["image"], data.image[calibrate])
        log_text = nt.heads_log_proba(trained["text"], data.text[calibrate])
    fusion, temperature, thresholds = {}, {}, {}
    for slug in values:
        mask = data.masks[slug][calibrate]
        y = data.targets[slug][calibrate][mask].argmax(1)
        fusion[slug] = nt.late_fusion_fit(log_image[slug][mask], log_text[slug][mask], y)
        fused = nt.log_softmax_np(fusion[slug].apply(log_image[slug][mask], log_text[slug][mask]))
        temperature[slug] = nt.temperature_fit(fused, y)
        p = np.exp(nt.log_softmax_np(fused / temperature[slug]))
        choice = nt.threshold_for_precision(
            p.max(1),
            p.argmax(1) == y,
            target=target,
            min_accepted=int(config.get("min_accepted", 30)),
            bound=config.get("threshold_bound", "wilson"),
        )
        thresholds[slug] = None if math.isinf(choice.threshold) else choice.threshold
    model = TaggingModel(
        image_heads=trained["image"],
        text_heads=trained["text"],
        fusion=fusion,
        temperature=temperature,
        thresholds=thresholds,
        values=values,
        multi=data.multi,
    )
    evaluate_on = test if len(test) else calibrate
    metrics = model_metrics(model, data, evaluate_on, target=target)
    metrics["split_sizes"] = {"train": len(train), "validation": len(val), "test": len(test)}
    path = candidate_path(run)
    sha256 = model.save(path)
    candidate = candidate_register(
        run,
        kind=ModelVersion.Kind.TAGGING,
        embedding_version=embedding_version,
        path=path,
        sha256=sha256,
        config={**config, "heads": heads_config.to_dict()},
        metrics=metrics,
    )
    TrainingRun.objects.filter(pk=run.pk).update(candidate=candidate, heartbeat_at=timezone.now())
    promoted, decision = candidate_promote(candidate=candidate, data=data, rows=evaluate_on)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.DONE, promoted=promoted, decision=decision, finished_at=timezone.now()
    )
    checkpoint.unlink(missing_ok=True)  # the resume checkpoint is no longer needed


FOLDS = 3


def candidate_path(run: TrainingRun) -> Path:
    """Where a run's candidate checkpoint goes: <models root>/<scope>/<run uuid>.pt."""
    return checkpoints_root() / run.scope.replace(":", "-") / f"{run.uuid}.pt"


def candidate_register(
    run: TrainingRun, *, kind: str, embedding_version: ModelVersion, path: Path, sha256: str, config: dict, metrics
) -> ModelVersion:
    """The CANDIDATE ModelVersion of a finished run ("<kind>-<scope>-<run uuid prefix>"), over
    `embedding_version`'s backbone, with the checkpoint at `path` (its sha256) and the run's snapshot."""
    return ModelVersion.objects.create(
        name=f"{ModelVersion.Kind(kind).value}-{run.scope}-{run.uuid.hex[:8]}",
        kind=kind,
        status=ModelVersion.Status.CANDIDATE,
        scope=run.scope,
        backbone=embedding_version.backbone,
        image_size_px=embedding_version.image_size_px,
        embedding_dim=embedding_version.embedding_dim,
        weights_path=str(path),
        checkpoint_sha256=sha256,
        snapshot_uuid=run.snapshot_uuid,
        config=config,
        metrics=metrics,
    )


def fold_of(key: str) -> int:
    """A stable cross-fitting fold in [0, FOLDS) from the sha256 of a product uuid."""
    return int(hashlib.sha256(f"fold:{key}".encode()).hexdigest()[:8], 16) % FOLDS


def _out_of_fold(data: Dataset, rows: np.ndarray, values: dict, config, *, device: str):
    """({attribute: (len(rows), K) log-probabilities}, same for text): each row predicted by heads
    trained on the other folds (cross-fitting). FOLDS extra trainings per modality; not
    checkpointed (a resumed run redoes them)."""
    from .nn import tagging as nt

    folds = np.array([fold_of(data.keys[i]) for i in rows])
    out = []
    for x in (data.image, data.text):
        log_p = {slug: np.zeros((len(rows), len(v))) for slug, v in values.items()}
        for f in range(FOLDS):
            fit, held = rows[folds != f], rows[folds == f]
            if not len(held):
                continue
            masks = {s: data.masks[s][fit] for s in values}
            if not len(fit) or not any(m.any() for m in masks.values()):
                raise TrainingError("too few labels to cross-fit: add labels or set calibration to 'validation'")
            model, _ = nt.heads_train(
                x[fit], {s: data.targets[s][fit] for s in values}, masks, config=config, device=device
            )
            for slug, z in nt.heads_log_proba(model, x[held]).items():
                log_p[slug][folds == f] = z
        out.append(log_p)
    return out[0], out[1]


def _heads_from(state, input_dim, values, config):
    from .nn import tagging as nt

    model = nt.TaggingHeads(input_dim, {s: len(v) for s, v in values.items()}, hidden_dim=config.hidden_dim)
    model.load_state_dict(state["model"])
    return model.eval()


# -- the registry ------------------------------------------------------------------------------------


def active_model(scope: str, *, kind: str = ModelVersion.Kind.TAGGING) -> ModelVersion | None:
    """The active model of `kind` (tagging by default) in `scope`, or None."""
    return ModelVersion.objects.filter(kind=kind, scope=scope, status=ModelVersion.Status.ACTIVE).first()


def candidate_promote(
    *, candidate: ModelVersion, data: Dataset | None = None, rows=None, score_active=None
) -> tuple[bool, str]:
    """Make `candidate` the active model of its scope if it beats the active one on the held-out rows:
    the candidate's test split, where both are scored (`candidate.metrics["score"]` against the
    active model's score there: for tagging, `model_metrics`'s mean accuracy over attributes on
    `data`, `rows`; for other kinds, `score_active(active)`). Strictly better wins; a tie keeps the
    active model. With no active model the candidate is promoted. The switch is atomic (the scope's
    rows locked): the old active model becomes RETIRED. Sends `model_activated` after commit.

    Returns (promoted, the decision in words).
    """
    active = active_model(candidate.scope, kind=candidate.kind)
    decision = ""
    if active is not None and (score_active is not None or (data is not None and rows is not None and len(rows))):
        try:
            if score_active is not None:
                old_score = score_active(active)
            else:
                old = TaggingModel.load(active.weights_path, sha256=active.checkpoint_sha256)
                old_score = model_metrics(old, data, rows, target=0.98)["score"]
        except (TrainingError, KeyError, RuntimeError, OSError, ValueError) as exc:
            old_score, decision = -1.0, f"the active model could not be scored ({exc}); "
        new_score = candidate.metrics.get("score", 0.0)
        if new_score <= old_score:
            ModelVersion.objects.filter(pk=candidate.pk).update(status=ModelVersion.Status.RETIRED)
            return False, f"kept {active.name}: held-out score {new_score:.4f} is not above {old_score:.4f}"
        decision += f"held-out score {new_score:.4f} beats {active.name}'s {old_score:.4f}"
    else:
        decision = "no active model" if active is None else "no held-out rows to compare on"
    _activate(candidate)
    return True, decision


def _activate(version: ModelVersion, *, rollback: bool = False) -> None:
    now = timezone.now()
    with transaction.atomic():
        current = list(
            ModelVersion.objects.select_for_update().filter(
                kind=version.kind, scope=version.scope, status=ModelVersion.Status.ACTIVE
            )
        )
        ModelVersion.objects.filter(pk__in=[v.pk for v in current]).update(
            status=ModelVersion.Status.RETIRED, retired_at=now
        )
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.ACTIVE, promoted_at=now)
        replaced = current[0] if current else None
        transaction.on_commit(
            lambda: model_activated.send(
                sender=ModelVersion, version=version, scope=version.scope, replaced=replaced, rollback=rollback
            )
        )


def rollback_target(*, scope: str) -> ModelVersion | None:
    """The model `rollback` would make active again: the RETIRED one of `scope` promoted most
    recently (tagging models, matching heads, matching CNNs), or None."""
    trained = [ModelVersion.Kind.TAGGING, ModelVersion.Kind.MATCHING, ModelVersion.Kind.BACKBONE]
    current = ModelVersion.objects.filter(kind__in=trained, scope=scope, status=ModelVersion.Status.ACTIVE).first()
    return (
        ModelVersion.objects.filter(
            kind__in=trained, scope=scope, status=ModelVersion.Status.RETIRED, promoted_at__isnull=False
        )
        .exclude(pk=getattr(current, "pk", None))
        .order_by("-promoted_at", "-pk")
        .first()
    )


def rollback(*, scope: str) -> ModelVersion | None:
    """Make the previously active model of `scope` active again (`rollback_target`: the RETIRED one
    promoted most recently before the current); the current one is RETIRED. Atomic. Covers tagging
    models, matching heads and matching CNNs (BACKBONE; `model_activated` then makes annotate
    re-apply the restored CNN's embedding: annotate.learning.backbone_apply_start). Returns the model
    now active, or None when there is nothing to roll back to."""
    previous = rollback_target(scope=scope)
    if previous is None:
        return None
    _activate(previous, rollback=True)
    previous.refresh_from_db()
    return previous
