"""The learning loop of an attribute campaign, orchestrated from annotate (mlcore trains; it never
imports annotate): snapshot → retrain → promote → re-rank.

1. `learning_snapshot`: the settled human and gold labels, frozen in a JSON Lines file registered as
   an ExportSnapshot (the ML team sees and downloads it on /exports/, like any export), with the
   stable 80/10/10 split by a hash of the product uuid (exports.records.split_of).
2. `retrain_start`: a TrainingRun over that snapshot, queued on Celery queue gpu (mlcore.train).
   mlcore.training promotes the candidate only if it beats the active model.
3. On promotion (signal mlcore.training.model_activated), `predictions_apply`: predict every open
   product task with the active model; store the predictions (they pre-fill the tagging form);
   auto-accept each attribute whose confidence clears the model's threshold for it (AttributeLabel
   with model_version set: provenance "model"), except an audit sample (campaign.audit_share,
   chosen by a hash of task and model) that people still answer; and set each task's routing
   priority from the model's uncertainty, so people see the most informative products first.
   The category's prediction backs off to the deepest confident taxonomy node when its leaf is
   unsure (`category_backoff`): "Shoes", not a wrong "Shoes › Sandal".
4. `learning_due` (Celery beat): start a retrain when campaign.retrain_every_labels new labels have
   settled since the last run, or a day has passed and any have.

Match campaigns learn from the photos people verified (`matching_snapshot`): a matching head over
the frozen embedding (`matching_retrain_start`), or, when the campaign is served by a trained
matching CNN, stage 2 of that CNN (`matching_finetune_start`, started by `matching_finetune_due`
once settings.FITCHECK_MATCH_FINETUNE_MIN_NEW new verified matches have settled).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta

import numpy as np
from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from catalog.attribute_schema import CATEGORY_SLUG, category_paths
from catalog.models import Attribute
from catalog.services import TAXONOMY_SEPARATOR
from mlcore import training
from mlcore.jobs import send_on_commit, task_send
from mlcore.models import AttributePrediction, ModelVersion, TrainingRun

from .exports.formats import file_sha256
from .exports.records import split_of
from .exports.services import snapshot_folder
from .models import AttributeLabel, Campaign, ExportSnapshot, Task

logger = logging.getLogger(__name__)

SNAPSHOT_SCHEMA_VERSION = 1
RETRAIN_AT_LEAST_EVERY = timedelta(days=1)
CHUNK = 500


def scope_of(campaign: Campaign) -> str:
    """The model registry scope of a campaign's tagging models."""
    return f"campaign:{campaign.slug}"


def learned_attributes(campaign: Campaign) -> list[Attribute]:
    """The attributes the model learns: all of the campaign's. Single choice and ratings get a head
    each; multi choice one two-class head per option (binary relevance, see mlcore.training)."""
    from .tagging import campaign_attributes

    return list(campaign_attributes(campaign))


def human_labels(campaign: Campaign):
    """Settled labels people gave (model-accepted ones left out: the model must not learn from
    itself), on non-gold tasks."""
    return AttributeLabel.objects.filter(
        task__campaign=campaign, is_settled=True, model_version__isnull=True, task__is_gold=False
    )


def learning_snapshot(*, campaign: Campaign, created_by=None) -> ExportSnapshot:
    """Freeze the campaign's settled human labels (and gold answers, one-hot) in items.jsonl, one
    product per line ({"product", "sku", "split", "labels": {slug: {"label", "posterior",
    "provenance"}}}), registered as a DONE ExportSnapshot named "training-<campaign slug>" with the
    file's size and sha256. Reads in chunks; written to <uuid>.partial/ then renamed.

    A multi-choice label is stored as consensus stores it, with "kind": "multi": "label" the selected
    options in option order joined by "|" ("" for none, a label like any other) and "posterior" each
    option's P(selected) (not a distribution over options; see mlcore.training). Single-choice and
    rating labels are unchanged (no "kind")."""
    attributes = {a.pk: a for a in learned_attributes(campaign)}
    snapshot = _snapshot_start(
        f"training-{campaign.slug}",
        filters={
            "campaigns": [campaign.slug],
            "purpose": "training",
            "attributes": sorted(a.slug for a in attributes.values()),
        },
        created_by=created_by,
    )
    folder = snapshot_folder(snapshot)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    path = partial / "items.jsonl"
    count = 0
    task_ids = list(
        human_labels(campaign).filter(attribute_id__in=list(attributes)).values_list("task_id", flat=True).distinct()
    )
    task_ids = sorted(set(task_ids))
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(0, len(task_ids), CHUNK):
            chunk = task_ids[i : i + CHUNK]
            products = dict(Task.objects.filter(pk__in=chunk).values_list("pk", "product__uuid"))
            skus = dict(Task.objects.filter(pk__in=chunk).values_list("pk", "product__sku"))
            labels: dict[int, dict] = {}
            for task_id, attribute_id, label, posterior in (
                human_labels(campaign)
                .filter(task_id__in=chunk, attribute_id__in=list(attributes))
                .values_list("task_id", "attribute_id", "label", "posterior")
            ):
                attribute = attributes[attribute_id]
                if attribute.kind == Attribute.Kind.MULTI:
                    if posterior:  # settled by votes: "" (no option) is a label too
                        labels.setdefault(task_id, {})[attribute.slug] = _multi_record(attribute, label, posterior)
                    continue
                if label == Attribute.CANT_TELL or not label:
                    continue  # "can't tell" is not a class the model should learn to predict
                values = attribute.values()
                labels.setdefault(task_id, {})[attribute.slug] = {
                    "label": label,
                    "posterior": {v: round(float(posterior.get(v, 0.0)), 6) for v in values if v in posterior},
                    "provenance": "human",
                }
            for task_id in chunk:
                if task_id not in labels:
                    continue
                product = str(products[task_id])
                fh.write(
                    json.dumps(
                        {
                            "product": product,
                            "sku": skus[task_id],
                            "split": split_of(product),
                            "labels": labels[task_id],
                        },
                        sort_keys=True,
                    )
                    + "\n"
                )
                count += 1
    return _snapshot_finish(snapshot, partial=partial, count=count)


def _multi_record(attribute: Attribute, label: str, posterior: dict) -> dict:
    """The snapshot record of a multi-choice label: its options in option order, P(selected) per
    option (an option the posterior lacks: 1 if selected, else 0)."""
    chosen = set(label.split("|")) - {""}
    return {
        "kind": "multi",
        "label": "|".join(o for o in attribute.values() if o in chosen),
        "posterior": {o: round(float(posterior.get(o, float(o in chosen))), 6) for o in attribute.values()},
        "provenance": "human",
    }


def _snapshot_start(name: str, *, filters: dict, created_by) -> ExportSnapshot:
    """A RUNNING JSONL ExportSnapshot `name` (at most 80 characters), the next version of that name."""
    last = ExportSnapshot.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0
    return ExportSnapshot.objects.create(
        name=name[:80],
        version=last + 1,
        schema_version=SNAPSHOT_SCHEMA_VERSION,
        status=ExportSnapshot.Status.RUNNING,
        formats=["jsonl"],
        filters=filters,
        created_by=created_by,
        started_at=timezone.now(),
    )


def _snapshot_finish(snapshot: ExportSnapshot, *, partial, count: int) -> ExportSnapshot:
    """Move a training snapshot's items.jsonl from `partial` into place and mark the export DONE with
    the file's size and sha256 and `count` items."""
    folder = snapshot_folder(snapshot)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(folder)
    final = folder / "items.jsonl"
    size = final.stat().st_size
    ExportSnapshot.objects.filter(pk=snapshot.pk).update(
        status=ExportSnapshot.Status.DONE,
        files=[{"path": "items.jsonl", "format": "jsonl", "size_bytes": size, "sha256": file_sha256(final)}],
        size_bytes=size,
        item_count=count,
        total_count=count,
        done_count=count,
        finished_at=timezone.now(),
    )
    snapshot.refresh_from_db()
    return snapshot


def retrain_start(*, campaign: Campaign, reason: str = "", created_by=None, config: dict | None = None) -> TrainingRun:
    """Snapshot the campaign's labels and queue a retrain on queue gpu (after commit). When the broker
    cannot take the message the run stays PENDING and the beat sweep sends it again
    (mlcore.training.training_runs_recover); no error reaches the caller.

    Raises:
        ValueError: the campaign is not an attribute campaign, has no embedding model version, or has
            no settled human label yet (a run would only fail on an empty snapshot).
    """
    from mlcore.tasks import train_task

    if campaign.kind != Campaign.Kind.ATTRIBUTES:
        raise ValueError("the learning loop runs on attribute campaigns")
    if campaign.model_version_id is None:
        raise ValueError("the campaign needs an embedding model version (campaign.model_version)")
    if not human_labels(campaign).exists():
        raise ValueError("There are no settled labels to learn from yet: tag some products first.")
    snapshot = learning_snapshot(campaign=campaign, created_by=created_by)
    learned = learned_attributes(campaign)
    settings = {
        "attributes": {a.slug: [v for v in a.values() if v != Attribute.CANT_TELL] for a in learned},
        "multi_choice": [a.slug for a in learned if a.kind == Attribute.Kind.MULTI],
        "embedding_version": str(campaign.model_version.uuid),
        "target_precision": campaign.auto_accept_precision,
        "labels_at_snapshot": human_labels(campaign).count(),
        "epochs": 30,
        **(config or {}),
    }
    run = training.training_run_create(
        scope=scope_of(campaign),
        snapshot_path=str(snapshot_folder(snapshot) / "items.jsonl"),
        snapshot_uuid=snapshot.uuid,
        config=settings,
        reason=reason,
    )
    send_on_commit(train_task.si(run.pk))
    return run


def learning_due(*, now=None) -> list[TrainingRun]:
    """Start a retrain for each learning campaign with enough new settled labels: at least
    campaign.retrain_every_labels since the last run's snapshot, or any after RETRAIN_AT_LEAST_EVERY.
    A campaign with a run pending or running is left alone: the beat sweep re-queues such a run when
    its message or worker was lost, and fails one whose worker keeps dying
    (mlcore.training.training_runs_recover), so no run holds the campaign up for good.
    Returns the runs started."""
    now = now or timezone.now()
    started = []
    for campaign in Campaign.objects.filter(
        learning_enabled=True, kind=Campaign.Kind.ATTRIBUTES, model_version__isnull=False
    ):
        scope = scope_of(campaign)
        runs = TrainingRun.objects.filter(scope=scope)
        if runs.filter(status__in=[TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING]).exists():
            continue
        last = runs.order_by("-created_at").first()
        labels = human_labels(campaign).count()
        before = int(last.config.get("labels_at_snapshot", 0)) if last else 0
        new = labels - before
        due = new >= campaign.retrain_every_labels or (
            new > 0 and (last is None or last.created_at <= now - RETRAIN_AT_LEAST_EVERY)
        )
        if due:
            reason = f"{new} new labels" if new >= campaign.retrain_every_labels else "daily"
            started.append(retrain_start(campaign=campaign, reason=reason))
    return started


def _audit_pick(task_uuid, version_uuid, share: float) -> bool:
    digest = hashlib.sha256(f"audit:{version_uuid}:{task_uuid}".encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF < share


def category_backoff(probabilities: np.ndarray, leaf_paths: list[str], *, threshold: float) -> tuple[str, float | None]:
    """The back-off of one category prediction: ("", None) when the most probable leaf reaches
    `threshold` (it stands), else the deepest taxonomy node whose leaves together reach it, with that
    probability (mlcore.nn.tagging.hierarchical_backoff: a node's probability is the sum of its
    leaves'). The node need not be an ancestor of the most probable leaf (Sandal 0.4, Tote 0.3 and
    Clutch 0.3 back off to "Bags" at 0.6 for a threshold of 0.55). When no node reaches the
    threshold, the most probable root, below it. ("", None) too when that is the leaf itself (a leaf
    at the top of the taxonomy has nowhere to back off to). Method: hierarchical back-off with a
    fixed threshold, the simplest form of Deng et al. 2012 ("Hedging your bets").

    Args:
        probabilities: (K,) float, the model's distribution over the category's values.
        leaf_paths: the K values' TaxonomyNode.path, " › "-joined, in the same order.
        threshold: in (0, 1], the category's auto-accept threshold.

    Returns:
        (node path or "", its probability in [0, 1] or None).

    Raises:
        ValueError: lengths differ.
    """
    from mlcore.nn.tagging import hierarchical_backoff

    if len(probabilities) != len(leaf_paths):
        raise ValueError("probabilities and leaf_paths must have the same length")
    best = int(np.argmax(probabilities))
    if float(probabilities[best]) >= threshold:
        return "", None
    node, mass = hierarchical_backoff(probabilities, leaf_paths, threshold=threshold, separator=TAXONOMY_SEPARATOR)
    if node == leaf_paths[best]:
        return "", None
    return node, min(max(float(mass), 0.0), 1.0)


def _multi_choice_prediction(model, proba: dict, n: int, *, attribute: Attribute):
    """Row `n`'s prediction of multi-choice `attribute` from its options' pseudo-attributes
    (mlcore.nn.tagging.multi_choice_decision), in the representation consensus uses: the label the
    selected options in option order joined by "|" ("" for none), the posterior each option's
    P(selected), the confidence the least sure option's max(p, 1 - p).

    Returns (label, posterior, confidence in [0, 1], per-option margins |2p - 1| (the routing
    uncertainty), acceptable): acceptable when every option's confidence clears its own threshold
    and the model knows exactly the attribute's current options (an option added since training
    is one it cannot decide: people do)."""
    from mlcore.nn.tagging import OPTION_VALUES, multi_choice_decision, option_slug

    options = model.multi[attribute.slug]
    heads = [option_slug(attribute.slug, o) for o in options]
    p_yes = np.array([proba[h][n][OPTION_VALUES.index("yes")] for h in heads], dtype=np.float64)
    selected, confidence, acceptable = multi_choice_decision(p_yes, [model.thresholds.get(h) for h in heads])
    current = attribute.values()
    chosen = {o for o, yes in zip(options, selected, strict=True) if yes}
    label = "|".join(o for o in current if o in chosen)
    by_option = dict(zip(options, p_yes, strict=True))
    posterior = {o: round(float(by_option[o]), 6) for o in current if o in by_option}
    acceptable = acceptable and set(options) == set(current)
    lowest = float(confidence.min()) if len(confidence) else 0.0
    return label, posterior, lowest, [float(2 * c - 1) for c in confidence], acceptable


def predictions_apply(*, campaign: Campaign, version: ModelVersion | None = None) -> dict:
    """Predict every open product task of `campaign` with its active model (or `version`), store the
    predictions, auto-accept what clears each attribute's threshold (not on audit tasks), complete
    tasks whose required attributes are all settled, and set routing priorities from uncertainty.

    Priority: 100 x (1 - the smallest top-1 vs top-2 margin over the task's attributes), so the
    products the model is least sure of come first; the session's shuffle order breaks ties, which
    keeps batches diverse. Gold and calibration tasks are left to their own routing.

    A multi-choice attribute (binary relevance: one pseudo-attribute per option) is stored as the set
    of options predicted "yes" ("a|b", as consensus stores it) with the smallest per-option
    confidence, and auto-accepted as a whole only when every option's decision clears its own
    threshold (`_multi_choice_prediction`); its options' margins count for the priority.

    The category attribute's prediction also stores its back-off (`category_backoff` over the
    values' taxonomy paths, AttributePrediction.backoff_path and backoff_confidence) when its leaf
    is below the threshold: the model's auto-accept threshold for the category, or the campaign's
    auto_accept_precision when the model has none (too few validation labels to fit one). A leaf
    that clears the threshold stores no back-off. Predictions are upserts on (model version,
    product, attribute): applying a model again is idempotent.

    Returns {"tasks", "accepted_labels", "completed_tasks", "audit_tasks", "backed_off"} (the last:
    category predictions stored with a back-off).
    """
    from .tagging import _status_write, attributes_for_product, campaign_attributes, required_labels

    version = version or training.active_model(scope_of(campaign))
    counts = {"tasks": 0, "accepted_labels": 0, "completed_tasks": 0, "audit_tasks": 0, "backed_off": 0}
    if version is None:
        return counts
    model = training.TaggingModel.load(version.weights_path, sha256=version.checkpoint_sha256)
    every = campaign_attributes(campaign)
    by_slug = {a.slug: a for a in every}
    leaf_paths = None
    if CATEGORY_SLUG in model.values and CATEGORY_SLUG in by_slug:
        paths = category_paths()
        # A value whose taxonomy node is gone stands alone, as a root: it has no ancestor to back off to.
        leaf_paths = [paths.get(value, value) for value in model.values[CATEGORY_SLUG]]
    embedding_version = ModelVersion.objects.get(uuid=version.config["embedding_version"])
    text_encoder = version.config.get("text_encoder", "minilm")
    open_ids = list(
        Task.objects.filter(campaign=campaign, status=Task.Status.OPEN, is_gold=False, is_calibration=False)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for i in range(0, len(open_ids), CHUNK):
        tasks = list(
            Task.objects.filter(pk__in=open_ids[i : i + CHUNK]).select_related("product__master_category", "campaign")
        )
        image, text = training.product_features(
            [t.product_id for t in tasks], embedding_version=embedding_version, text_encoder=text_encoder
        )
        proba = model.predict(image, text)
        predictions, priorities = [], {}
        accept: dict[int, list[tuple[Attribute, str, dict, float]]] = {}
        for n, task in enumerate(tasks):
            applicable = {a.slug for a in attributes_for_product(attributes=every, product=task.product)}
            margins = []
            audit = _audit_pick(task.uuid, version.uuid, campaign.audit_share)
            for slug, p in proba.items():
                if slug not in applicable or slug not in by_slug:
                    continue
                values = model.values[slug]
                row = p[n]
                best = int(row.argmax())
                confidence = float(row[best])
                threshold = model.thresholds.get(slug)
                backoff_path, backoff_confidence = "", None
                if slug == CATEGORY_SLUG and leaf_paths is not None:
                    backoff_path, backoff_confidence = category_backoff(
                        row,
                        leaf_paths,
                        threshold=threshold if threshold is not None else campaign.auto_accept_precision,
                    )
                    counts["backed_off"] += bool(backoff_path)
                predictions.append(
                    AttributePrediction(
                        product_id=task.product_id,
                        attribute=by_slug[slug],
                        model_version=version,
                        value=values[best],
                        confidence=confidence,
                        backoff_path=backoff_path,
                        backoff_confidence=backoff_confidence,
                    )
                )
                top2 = np.sort(row)[-2:]
                margins.append(float(top2[1] - top2[0]))
                if threshold is not None and confidence >= threshold and not audit:
                    posterior = {v: round(float(x), 6) for v, x in zip(values, row, strict=True)}
                    accept.setdefault(task.pk, []).append((by_slug[slug], values[best], posterior, confidence))
            for slug in model.multi:  # multi choice: its options' pseudo-attributes, put back together
                if slug not in applicable or slug not in by_slug:
                    continue
                label, posterior, confidence, option_margins, acceptable = _multi_choice_prediction(
                    model, proba, n, attribute=by_slug[slug]
                )
                predictions.append(
                    AttributePrediction(
                        product_id=task.product_id,
                        attribute=by_slug[slug],
                        model_version=version,
                        value=label,
                        confidence=confidence,
                    )
                )
                margins += option_margins
                if acceptable and not audit:
                    accept.setdefault(task.pk, []).append((by_slug[slug], label, posterior, confidence))
            priorities[task.pk] = int(round(100 * (1 - min(margins)))) if margins else 0
            if audit and margins:
                counts["audit_tasks"] += 1
        AttributePrediction.objects.bulk_create(
            predictions,
            update_conflicts=True,
            unique_fields=["model_version", "product", "attribute"],
            update_fields=["value", "confidence", "backoff_path", "backoff_confidence"],
        )
        with transaction.atomic():
            locked = {
                t.pk: t
                for t in Task.objects.select_for_update(of=("self",))
                .select_related("product__master_category", "campaign")
                .filter(pk__in=list(priorities), status=Task.Status.OPEN)
            }
            settled_by_people = set(
                AttributeLabel.objects.filter(task_id__in=list(locked), is_settled=True).values_list(
                    "task_id", "attribute_id"
                )
            )
            rows = []
            for task_id, accepted in accept.items():
                if task_id not in locked:
                    continue
                for attribute, label, posterior, confidence in accepted:
                    if (task_id, attribute.pk) in settled_by_people:
                        continue
                    rows.append(
                        AttributeLabel(
                            task_id=task_id,
                            attribute=attribute,
                            label=label,
                            posterior=posterior,
                            confidence=min(max(confidence, 0.0), 1.0),
                            answer_count=0,
                            is_settled=True,
                            model_version=version,
                        )
                    )
            AttributeLabel.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["task", "attribute"],
                update_fields=["label", "posterior", "confidence", "is_settled", "model_version", "updated_at"],
            )
            counts["accepted_labels"] += len(rows)
            audit_ids = [t.pk for t in tasks if _audit_pick(t.uuid, version.uuid, campaign.audit_share)]
            Task.objects.filter(pk__in=[pk for pk in audit_ids if pk in locked]).update(is_audit=True)
            for task_id, priority in priorities.items():
                if task_id in locked:
                    Task.objects.filter(pk=task_id).update(priority=min(max(priority, 0), 100))
            for task_id in {r.task_id for r in rows}:
                task = locked[task_id]
                labels = list(AttributeLabel.objects.filter(task=task).select_related("attribute"))
                required = required_labels(task=task, attributes=every, labels=labels)
                before = task.status
                _status_write(task, required)
                if task.status != before and task.status == Task.Status.COMPLETE:
                    counts["completed_tasks"] += 1
        counts["tasks"] += len(tasks)
    return counts


# -- matching: learning from verified matches -----------------------------------------------------------


def matching_scope_of(campaign: Campaign) -> str:
    """The model registry scope of a match campaign's matching heads."""
    return f"matching:{campaign.slug}"


def backbone_scope_of(campaign: Campaign) -> str:
    """The model registry scope of a match campaign's trained matching CNNs (ModelVersion BACKBONE)."""
    return f"backbone:{campaign.slug}"


def backbone_apply_start(*, campaign: Campaign, version: ModelVersion) -> None:
    """A matching CNN became active for `campaign`: embed the catalog and the photos with it (queue
    gpu), then switch the campaign to it and re-suggest the open photos (`backbone_apply`). Each
    step is idempotent; the embedding runs resume what a killed worker left."""
    from celery import chain

    from mlcore import services as ml_services
    from mlcore.models import EmbeddingRun
    from mlcore.tasks import embed_run_task

    from .tasks import backbone_apply_task

    products = ml_services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
    photos = ml_services.embedding_run_create(version=version, target=EmbeddingRun.Target.PHOTOS)
    pipeline = chain(
        embed_run_task.si(products.pk), embed_run_task.si(photos.pk), backbone_apply_task.si(campaign.pk, version.pk)
    )
    send_on_commit(pipeline)


def backbones_unapplied_resume() -> list[Campaign]:
    """Re-start `backbone_apply_start` for every match campaign whose active matching CNN is not yet
    its embedding model: the chain that switches it was lost (a killed worker, a broker outage).
    Idempotent: embedding runs embed only what is missing and backbone_apply re-checks. Run by
    Celery beat with learning_due. Returns the campaigns resumed."""
    resumed = []
    for campaign in Campaign.objects.filter(kind=Campaign.Kind.MATCH).select_related("model_version"):
        version = training.active_model(backbone_scope_of(campaign), kind=ModelVersion.Kind.BACKBONE)
        if version is not None and campaign.model_version_id != version.pk:
            backbone_apply_start(campaign=campaign, version=version)
            resumed.append(campaign)
    return resumed


def backbone_apply(*, campaign: Campaign, version: ModelVersion) -> dict:
    """Make `version` (an active BACKBONE model, its embeddings made) the campaign's embedding model:
    new tasks get its suggestions; the campaign's active matching head, trained over the old
    embedding, is retired; and the open, unanswered photos are re-suggested (`matching_apply`'s
    locking and rules). A version that is no longer active changes nothing. Idempotent.

    Returns matching_apply's counts."""
    version.refresh_from_db()
    if version.status != ModelVersion.Status.ACTIVE:
        return {"tasks": 0, "resuggested": 0, "withheld": 0, "restored": 0}
    with transaction.atomic():
        Campaign.objects.filter(pk=campaign.pk).update(model_version=version)
        ModelVersion.objects.filter(
            kind=ModelVersion.Kind.MATCHING, scope=matching_scope_of(campaign), status=ModelVersion.Status.ACTIVE
        ).update(status=ModelVersion.Status.RETIRED, retired_at=timezone.now())
    campaign.refresh_from_db()
    return matching_apply(campaign=campaign, version=version)


def matching_snapshot(*, campaign: Campaign, created_by=None) -> ExportSnapshot:
    """Freeze the verified photos of a match campaign in items.jsonl, one per line: {"photo",
    "split", "gold" (a gold task's known answer), "product" (the matched product's uuid, or null
    when people said none / not a product / unfit), "hard_negatives" (the candidates turned down)},
    from tasks people settled (not the model) and gold tasks; registered as a DONE export
    "matching-<campaign slug>" with its sha256."""
    from .models import GoldLabel, TaskCandidate

    snapshot = _snapshot_start(
        f"matching-{campaign.slug}",
        filters={"campaigns": [campaign.slug], "purpose": "matching"},
        created_by=created_by,
    )
    gold = dict(GoldLabel.objects.filter(task__campaign=campaign).values_list("task_id", "label"))
    settled = dict(
        Task.objects.filter(
            campaign=campaign, status=Task.Status.COMPLETE, is_gold=False, label_model_version__isnull=True
        ).values_list("pk", "label")
    )
    labels = {**settled, **gold}
    folder = snapshot_folder(snapshot)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    count = 0
    task_ids = sorted(labels)
    with open(partial / "items.jsonl", "w", encoding="utf-8") as fh:
        for i in range(0, len(task_ids), CHUNK):
            chunk = task_ids[i : i + CHUNK]
            photos = dict(Task.objects.filter(pk__in=chunk).values_list("pk", "photo__uuid"))
            candidates: dict[int, dict[str, str]] = {}
            for task_id, rank, product in TaskCandidate.objects.filter(task_id__in=chunk).values_list(
                "task_id", "rank", "product__uuid"
            ):
                candidates.setdefault(task_id, {})[str(rank)] = str(product)
            for task_id in chunk:
                label, shown = labels[task_id], candidates.get(task_id, {})
                if not label or (label.isdigit() and label not in shown):
                    continue
                product = shown.get(label) if label.isdigit() else None
                photo = str(photos[task_id])
                record = {
                    "photo": photo,
                    "split": split_of(photo),
                    "gold": task_id in gold,
                    "product": product,
                    "hard_negatives": sorted(p for p in shown.values() if p != product),
                }
                fh.write(json.dumps(record, sort_keys=True) + "\n")
                count += 1
    return _snapshot_finish(snapshot, partial=partial, count=count)


def matching_retrain_start(*, campaign: Campaign, reason: str = "", created_by=None, config: dict | None = None):
    """Snapshot a match campaign's verified photos and queue a matching-head retrain (queue gpu). The
    new head becomes active only if it beats the pretrained cosine and the active head on recall@1.

    On promotion, `matching_apply` re-suggests (or withholds) the open photos' candidates.

    Raises:
        ValueError: not a match campaign, or no embedding model version.
    """
    from mlcore.tasks import train_task

    if campaign.kind != Campaign.Kind.MATCH or campaign.model_version_id is None:
        raise ValueError("matching heads learn from a match campaign with an embedding model version")
    snapshot = matching_snapshot(campaign=campaign, created_by=created_by)
    run = TrainingRun.objects.create(
        kind=ModelVersion.Kind.MATCHING,
        scope=matching_scope_of(campaign),
        snapshot_path=str(snapshot_folder(snapshot) / "items.jsonl"),
        snapshot_uuid=snapshot.uuid,
        config={"embedding_version": str(campaign.model_version.uuid), "max_match_rejection": 0.05, **(config or {})},
        reason=reason,
        epochs=int((config or {}).get("epochs", 5)),
    )
    send_on_commit(train_task.si(run.pk))
    return run


def matching_pretrain_start(
    *, campaign: Campaign, reason: str = "", created_by=None, config: dict | None = None
) -> TrainingRun:
    """Queue stage 1 of the matching CNN (mlcore.matching_pretrain, queue gpu) again for a match
    campaign still served by a pretrained embedding: what preparing the campaign starts
    (annotate.services.campaign_prepare), by hand, for a campaign whose run failed or whose CNN was
    not promoted. Promoted, the CNN re-suggests the open photos as after the first run.

    Args:
        config: the CNN's config over settings.FITCHECK_MATCH_PRETRAIN_CONFIG (tests: a tiny one).

    Raises:
        ValueError: not a match campaign; a trained matching CNN serves it already (the Retrain
            button fine-tunes that one on verified photos); a matching CNN run of the campaign is
            queued or running.
    """
    from mlcore.matching_pretrain import matching_pretrain_create
    from mlcore.tasks import matching_pretrain_task

    refusal = _pretrain_refusal(campaign)
    if refusal is not None:
        raise ValueError(refusal)
    scope = backbone_scope_of(campaign)
    run = matching_pretrain_create(
        scope=scope, base_version=campaign.model_version, reason=reason or "by hand", config=config
    )
    send_on_commit(matching_pretrain_task.si(run.pk))
    return run


def _pretrain_refusal(campaign: Campaign) -> str | None:
    """Why stage 1 of the matching CNN cannot be started by hand for `campaign`, or None when it can
    (`matching_pretrain_start`; the Models page offers the button exactly then)."""
    from .services import version_is_pretrained

    if campaign.kind != Campaign.Kind.MATCH or campaign.model_version_id is None:
        return "the matching CNN learns for a match campaign with an embedding model version"
    if not version_is_pretrained(campaign.model_version):
        return (
            f"{campaign.model_version.name} is already a trained model; Retrain fine-tunes the matching CNN "
            "on verified photos"
        )
    live = TrainingRun.objects.filter(
        kind=ModelVersion.Kind.BACKBONE,
        scope=backbone_scope_of(campaign),
        status__in=[TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING],
    )
    if live.exists():
        return f"the matching CNN of {campaign.name} is already queued or training: its run shows below"
    return None


def verified_matches(campaign: Campaign):
    """The tasks of a match campaign whose photo people settled on a product (a candidate's rank as
    the label; not gold, not settled by a model): what stage 2 of the matching CNN learns from and
    what its trigger counts."""
    return Task.objects.filter(
        campaign=campaign,
        status=Task.Status.COMPLETE,
        is_gold=False,
        label_model_version__isnull=True,
        label__regex=r"^[0-9]+$",
    )


def serving_cnn(campaign: Campaign) -> ModelVersion | None:
    """The campaign's serving model when it is an active matching CNN of the campaign's own scope
    (one stage 2 can fine-tune), else None."""
    from mlcore.matching_pretrain import BACKBONE_NAME

    version = campaign.model_version
    if (
        version is not None
        and version.kind == ModelVersion.Kind.BACKBONE
        and version.backbone == BACKBONE_NAME
        and version.status == ModelVersion.Status.ACTIVE
        and version.scope == backbone_scope_of(campaign)
    ):
        return version
    return None


def matching_finetune_start(*, campaign: Campaign, reason: str = "", created_by=None, config: dict | None = None):
    """Snapshot a match campaign's verified photos (`matching_snapshot`) and queue stage 2 of its
    serving matching CNN on them (mlcore.matching_finetune, queue gpu, after commit). The fine-tuned
    CNN replaces the serving one only if it finds the products of held-out verified photos (gold and
    the test split) more often; the catalog and photos are then embedded with it and the open
    photos re-suggested (`backbone_apply_start`, on model_activated).

    Raises:
        ValueError: not a match campaign; its serving model is not an active matching CNN of its own
            (the pretrained backbone: stage 1 comes first); no verified match yet; a CNN run of the
            campaign already pending or running; a bad config (mlcore.matching_finetune).
    """
    from mlcore.matching_finetune import matching_finetune_create
    from mlcore.tasks import matching_finetune_task

    if campaign.kind != Campaign.Kind.MATCH:
        raise ValueError("the matching CNN learns from a match campaign")
    base = serving_cnn(campaign)
    if base is None:
        raise ValueError(
            f"{campaign.name} is not served by a matching CNN of its own, so there is none to fine-tune: "
            "stage 1 (training on the catalog) comes first."
        )
    verified = verified_matches(campaign).count()
    if not verified:
        raise ValueError("There are no verified matches to learn from yet: verify some photos first.")
    scope = backbone_scope_of(campaign)
    live = [TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING]
    if TrainingRun.objects.filter(kind=ModelVersion.Kind.BACKBONE, scope=scope, status__in=live).exists():
        raise ValueError("A matching-CNN run of this campaign is already pending or running: it shows below.")
    snapshot = matching_snapshot(campaign=campaign, created_by=created_by)
    run = matching_finetune_create(
        scope=scope,
        base_version=base,
        snapshot_path=str(snapshot_folder(snapshot) / "items.jsonl"),
        snapshot_uuid=snapshot.uuid,
        verified_count=verified,
        reason=reason,
        config=config,
    )
    send_on_commit(matching_finetune_task.si(run.pk))
    return run


def matching_finetune_due() -> list[TrainingRun]:
    """Start stage 2 for each match campaign served by its own matching CNN once
    settings.FITCHECK_MATCH_FINETUNE_MIN_NEW (0: never) new verified matches have settled since its
    last CNN run (stage 1 counts as none). Unlike the tagging loop there is no daily run: a CNN run
    is GPU time, worth it only for a batch of new matches. A campaign with a CNN run pending or
    running is left alone (the beat sweep re-queues or fails such runs,
    mlcore.training.training_runs_recover). Run by Celery beat with learning_due. Returns the runs
    started."""
    from django.conf import settings

    threshold = settings.FITCHECK_MATCH_FINETUNE_MIN_NEW
    started = []
    if threshold <= 0:
        return started
    for campaign in Campaign.objects.filter(kind=Campaign.Kind.MATCH, model_version__isnull=False).select_related(
        "model_version"
    ):
        if serving_cnn(campaign) is None:
            continue
        runs = TrainingRun.objects.filter(kind=ModelVersion.Kind.BACKBONE, scope=backbone_scope_of(campaign))
        if runs.filter(status__in=[TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING]).exists():
            continue
        last = runs.order_by("-created_at").first()
        before = int(last.config.get("verified_at_snapshot", 0)) if last else 0
        new = verified_matches(campaign).count() - before
        if new >= threshold:
            started.append(matching_finetune_start(campaign=campaign, reason=f"{new} new verified matches"))
    return started


def matching_apply(*, campaign: Campaign, version: ModelVersion | None = None) -> dict:
    """Re-suggest products for the open, unanswered, unleased, non-gold photos of a match campaign
    with its active matching head (or `version`: a matching head, or a matching CNN, a BACKBONE
    version, whose suggestions are mlcore.services.photos_suggest's: its index's shortlist re-ranked
    by geometric verification when it carries a matte, as new tasks get them, and withheld by its
    rejection model).

    - A photo the head suggests products for: its candidates become the head's top
      campaign.candidate_count products with their cosine scores, and a withholding by an earlier
      head (`Task.suggestions_withheld_by`) is cleared ("restored").
    - A photo the head rejects (top-1 cosine under the head's fitted rejection threshold, "this photo
      shows no catalog product"): its candidates are deleted and `suggestions_withheld_by` is set to
      the head ("withheld"). The verify page then shows the photo alone and asks only none / not a
      product / unfit; a product pick is refused (services.answer_submit: no candidate to pick).

    People still answer a withheld photo: the head's rejection is a suggestion, not a label. Routing
    is unchanged (the task keeps its priority), and the model voter of consensus abstains on it (no
    rank-1 candidate score, consensus.services.model_vote). A rollback re-runs this with the head
    made active again (on_model_activated), which suggests or withholds by its own threshold.

    Locks: each chunk's tasks are re-checked under their row lock (select_for_update: still open,
    unanswered, not gold, no live lease) and their candidates and flag are written in that one
    transaction, so a person looking at a task never sees its candidates change under them, and
    answered, leased, gold or complete tasks are never touched. Idempotent: the same head gives the
    same candidates and flags.

    Returns {"tasks" (re-checked and written), "resuggested", "withheld", "restored" (of the
    resuggested, those a head had withheld)}.

    Raises:
        OSError, ValueError: the head's checkpoint is missing or unreadable (match_head_load).
    """
    from mlcore import services as ml_services
    from mlcore.models import PhotoEmbedding, ProductEmbedding

    from .models import Lease, TaskCandidate

    version = version or training.active_model(matching_scope_of(campaign), kind=ModelVersion.Kind.MATCHING)
    counts = {"tasks": 0, "resuggested": 0, "withheld": 0, "restored": 0}
    if version is None:
        return counts
    k = campaign.candidate_count
    if version.kind == ModelVersion.Kind.BACKBONE:  # a matching CNN: its index, verification, rejection
        embedding_version = version
        if not ProductEmbedding.objects.filter(model_version=version, product__is_active=True).exists():
            return counts

        def suggestions_of(photo_ids: list[int]) -> dict:
            return ml_services.photos_suggest(version=version, photo_ids=photo_ids, k=k)

    else:
        suggestions_of = _head_suggester(version, k=k)
        embedding_version = ModelVersion.objects.get(uuid=version.config["embedding_version"])
        if suggestions_of is None:
            return counts
    now = timezone.now()
    leased = Lease.objects.filter(expires_at__gt=now).values("task_id")
    open_ids = list(
        Task.objects.filter(campaign=campaign, status=Task.Status.OPEN, is_gold=False, answer_count=0)
        .exclude(pk__in=leased)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for i in range(0, len(open_ids), CHUNK):
        chunk = open_ids[i : i + CHUNK]
        photo_of = dict(Task.objects.filter(pk__in=chunk).values_list("pk", "photo_id"))
        embedded = set(
            PhotoEmbedding.objects.filter(
                model_version=embedding_version, photo_id__in=list(photo_of.values())
            ).values_list("photo_id", flat=True)
        )
        tasks = [t for t in chunk if photo_of.get(t) in embedded]
        if not tasks:
            continue
        by_photo = suggestions_of(sorted({photo_of[t] for t in tasks}))
        tasks = [t for t in tasks if photo_of[t] in by_photo]
        suggestions = [by_photo[photo_of[t]] for t in tasks]
        with transaction.atomic():
            fresh = set(
                Task.objects.select_for_update(of=("self",))
                .filter(pk__in=tasks, answer_count=0, status=Task.Status.OPEN, is_gold=False)
                .exclude(pk__in=Lease.objects.filter(expires_at__gt=timezone.now()).values("task_id"))
                .values_list("pk", flat=True)
            )
            rows, resuggested, withheld = [], [], []
            for task_id, suggested in zip(tasks, suggestions, strict=True):
                if task_id not in fresh:
                    continue
                if suggested is None:
                    withheld.append(task_id)
                    continue
                rows += [
                    TaskCandidate(task_id=task_id, product_id=p, rank=rank, score=round(score, 6))
                    for rank, (p, score) in enumerate(suggested, start=1)
                ]
                resuggested.append(task_id)
            TaskCandidate.objects.filter(task_id__in=resuggested + withheld).delete()
            TaskCandidate.objects.bulk_create(rows)
            Task.objects.filter(pk__in=withheld).update(suggestions_withheld_by=version)
            counts["restored"] += Task.objects.filter(pk__in=resuggested, suggestions_withheld_by__isnull=False).update(
                suggestions_withheld_by=None
            )
            counts["tasks"] += len(resuggested) + len(withheld)
            counts["resuggested"] += len(resuggested)
            counts["withheld"] += len(withheld)
    return counts


def _head_suggester(version: ModelVersion, *, k: int):
    """A matching head's suggestions, as photos_suggest gives a CNN's: a function of photo pks →
    {photo_id: [(product pk, cosine), ...] best first, or None where the head's rejection threshold
    withholds them}, over its embedding model's active products; None when that model has no product
    embeddings.

    Raises:
        OSError, ValueError: the head's checkpoint is missing or unreadable (match_head_load).
    """
    from mlcore.models import PhotoEmbedding, ProductEmbedding
    from mlcore.nn.matching import match_head_load, suggest

    head, extra = match_head_load(version.weights_path)
    threshold = extra.get("threshold")
    embedding_version = ModelVersion.objects.get(uuid=version.config["embedding_version"])
    dim = embedding_version.embedding_dim
    product_rows = list(
        ProductEmbedding.objects.filter(model_version=embedding_version, product__is_active=True)
        .order_by("product_id")
        .values_list("product_id", "vector")
    )
    if not product_rows:
        return None
    product_ids = [p for p, _ in product_rows]
    products = np.stack([np.frombuffer(bytes(v), dtype=np.float32).reshape(dim) for _, v in product_rows])

    def suggestions_of(photo_ids: list[int]) -> dict:
        vectors = dict(
            PhotoEmbedding.objects.filter(model_version=embedding_version, photo_id__in=photo_ids).values_list(
                "photo_id", "vector"
            )
        )
        shown = [p for p in photo_ids if p in vectors]
        if not shown:
            return {}
        photos = np.stack([np.frombuffer(bytes(vectors[p]), dtype=np.float32).reshape(dim) for p in shown])
        suggested = suggest(photos, products, head, k=k, threshold=threshold)
        return {
            p: None if s is None else [(product_ids[i], score) for i, score in s]
            for p, s in zip(shown, suggested, strict=True)
        }

    return suggestions_of


def matching_metric_intervals(version: ModelVersion) -> dict:
    """A matching head's or matching CNN's proportions with their n and 95% Wilson interval, for the
    ML page (mlcore.nn.stats.proportion_summary dicts, None where a metric is missing):
    "recall_at_1", "recall_at_3" and the pretrained yardstick's ("base_recall_at_1",
    "base_recall_at_3") over the held-out verified matches (a CNN: its held-out views), and
    "matches_rejected" (over the matches) and "rejections_without_suggestion" (over the photos
    people rejected every suggestion of)."""
    from mlcore.nn.stats import proportion_summary

    m = version.metrics or {}
    if version.kind == ModelVersion.Kind.BACKBONE:  # stage 1: held-out views; stage 2: held-out verified photos
        n = m.get("held_out_matches") if m.get("stage") == 2 else m.get("held_out_views")
        return {
            "recall_at_1": proportion_summary(m.get("recall_at_1"), n),
            "base_recall_at_1": proportion_summary((m.get("base") or {}).get("recall_at_1"), n),
        }
    matches, rejections = m.get("matches"), m.get("rejections")
    base = m.get("pretrained") or {}
    return {
        "recall_at_1": proportion_summary(m.get("recall_at_1"), matches),
        "recall_at_3": proportion_summary(m.get("recall_at_3"), matches),
        "base_recall_at_1": proportion_summary(base.get("recall_at_1"), base.get("matches")),
        "base_recall_at_3": proportion_summary(base.get("recall_at_3"), base.get("matches")),
        "matches_rejected": proportion_summary(m.get("matches_rejected"), matches),
        "rejections_without_suggestion": proportion_summary(m.get("rejections_without_suggestion"), rejections),
    }


def matching_report(*, campaign: Campaign) -> dict:
    """For the ML page: a match campaign's matching heads and their training runs. Each head carries
    `withheld_count` (photos it withheld suggestions from that still carry its flag),
    `withheld_open_count` (of those, the ones nobody has answered yet; one grouped query) and
    `intervals` (matching_metric_intervals)."""
    scope = matching_scope_of(campaign)
    scopes = [scope, backbone_scope_of(campaign)]
    versions = list(
        ModelVersion.objects.filter(
            kind__in=[ModelVersion.Kind.MATCHING, ModelVersion.Kind.BACKBONE], scope__in=scopes
        ).order_by("-created_at")
    )
    runs = list(TrainingRun.objects.filter(scope__in=scopes).select_related("candidate").order_by("-created_at")[:20])
    withheld = {
        row["suggestions_withheld_by"]: row
        for row in Task.objects.filter(campaign=campaign, suggestions_withheld_by__isnull=False)
        .values("suggestions_withheld_by")
        .annotate(n=Count("pk"), open=Count("pk", filter=Q(status=Task.Status.OPEN, answer_count=0)))
        .order_by()
    }
    for version in versions:
        row = withheld.get(version.pk, {})
        version.withheld_count, version.withheld_open_count = row.get("n", 0), row.get("open", 0)
        version.intervals = matching_metric_intervals(version)
    return {
        "scope": scope,
        "versions": versions,
        "active": _active_of(versions, ModelVersion.Kind.MATCHING),
        "active_backbone": _active_of(versions, ModelVersion.Kind.BACKBONE),
        "serving": campaign.model_version,
        "serving_cnn": serving_cnn(campaign),
        "pretrain_available": _pretrain_refusal(campaign) is None,
        "runs": runs,
    }


def _active_of(versions: list[ModelVersion], kind: str) -> ModelVersion | None:
    return next((v for v in versions if v.status == ModelVersion.Status.ACTIVE and v.kind == kind), None)


def category_backoff_report(*, campaign: Campaign, version: ModelVersion | None) -> dict:
    """How many of `version`'s category predictions for the campaign's open products backed off to a
    taxonomy node above the leaf (AttributePrediction.backoff_path set by `predictions_apply`): the
    products people are asked "which kind?" rather than shown a guess (1 query; none without a
    version).

    Returns {"open": predictions, "backed_off": of them backed off, "share": backed_off / open in
    [0, 1] or None when open is 0, "by_depth": [(depth, count)] by TaxonomyNode.depth (0: top level),
    "nodes": [(path, count)] most frequent first, at most 5}.
    """
    out = {"open": 0, "backed_off": 0, "share": None, "by_depth": [], "nodes": []}
    if version is None:
        return out
    open_products = Task.objects.filter(
        campaign=campaign, status=Task.Status.OPEN, is_gold=False, is_calibration=False
    ).values("product_id")
    rows = (
        AttributePrediction.objects.filter(
            model_version=version, attribute__slug=CATEGORY_SLUG, product_id__in=open_products
        )
        .values_list("backoff_path")
        .annotate(n=Count("pk"))
        .order_by("backoff_path")
    )
    depths: dict[int, int] = {}
    nodes = []
    for path, n in rows:
        out["open"] += n
        if path:
            out["backed_off"] += n
            depth = path.count(TAXONOMY_SEPARATOR)
            depths[depth] = depths.get(depth, 0) + n
            nodes.append((path, n))
    out["share"] = out["backed_off"] / out["open"] if out["open"] else None
    out["by_depth"] = sorted(depths.items())
    out["nodes"] = sorted(nodes, key=lambda item: (-item[1], item[0]))[:5]
    return out


def metric_rows(metrics: dict) -> list[tuple[str, dict]]:
    """A model's per-attribute metrics (mlcore.training.model_metrics) as (slug, row) pairs for the
    ML page, in stored order except that each multi-choice option's row comes right after its
    attribute's (PostgreSQL's jsonb orders keys by length, so "season:summer" may come last).

    Each row is a copy with its proportions' 95% Wilson intervals added (issue 16: every metric with
    its n and interval): "accuracy_ci" and "coverage_ci" over the n test products, "precision_ci"
    over the accepted ones (n x coverage), each mlcore.nn.stats.proportion_summary ({"value", "n",
    "successes", "low", "high"}) or None. The stored precision_low/high, computed at training from
    exact counts, are kept for the precision interval."""
    from mlcore.nn.stats import proportion_summary

    rows = {}
    for slug, stored in ((metrics or {}).get("attributes", {})).items():
        row = dict(stored)
        n = row.get("n")
        row["accuracy_ci"] = proportion_summary(row.get("accuracy"), n)
        row["coverage_ci"] = proportion_summary(row.get("coverage"), n)
        accepted = round(row["coverage"] * n) if n and row.get("coverage") is not None else None
        precision = proportion_summary(row.get("precision"), accepted)
        if precision is not None and row.get("precision_low") is not None:
            precision.update(low=row["precision_low"], high=row["precision_high"])
        row["precision_ci"] = precision
        rows[slug] = row
    options: dict[str, list[tuple[str, dict]]] = {}
    for slug, row in rows.items():
        if row.get("option") is not None:
            options.setdefault(row.get("attribute", ""), []).append((slug, row))
    out = []
    for slug, row in rows.items():
        if row.get("option") is None:
            out.append((slug, row))
            out += sorted(options.pop(slug, []))
    return out + sorted(pair for pairs in options.values() for pair in pairs)  # options of an attribute with no row


def learning_report(*, campaign: Campaign) -> dict:
    """For the ML page: the models of this campaign's scope with their runs, labels settled by the
    model ("humans saved": those labels times the mean answers people needed per settled label), the
    audit sample's measured precision (people's consensus against the model's prediction on audit
    tasks they settled), and the active model's category back-offs on open products
    (`category_backoff_report`). Each version gets its `metric_rows`."""
    scope = scope_of(campaign)
    versions = list(ModelVersion.objects.filter(kind=ModelVersion.Kind.TAGGING, scope=scope).order_by("-created_at"))
    for version in versions:
        version.metric_rows = metric_rows(version.metrics)
    active = next((v for v in versions if v.status == ModelVersion.Status.ACTIVE), None)
    runs = list(TrainingRun.objects.filter(scope=scope).select_related("candidate").order_by("-created_at")[:20])
    model_labels = AttributeLabel.objects.filter(task__campaign=campaign, model_version__isnull=False).count()
    people = human_labels(campaign).filter(answer_count__gt=0)
    answers = sum(people.values_list("answer_count", flat=True))
    per_label = answers / people.count() if people.exists() else None
    audit_rows = list(
        AttributeLabel.objects.filter(
            task__campaign=campaign, task__is_audit=True, is_settled=True, model_version__isnull=True
        ).values_list("task__product_id", "attribute_id", "label")
    )
    agree = total = 0
    if audit_rows:
        predicted = {
            (p, a): v
            for p, a, v in AttributePrediction.objects.filter(
                product_id__in={r[0] for r in audit_rows}, model_version__scope=scope
            )
            .order_by("model_version__created_at")
            .values_list("product_id", "attribute_id", "value")
        }
        for product_id, attribute_id, label in audit_rows:
            if (product_id, attribute_id) in predicted:
                total += 1
                agree += predicted[(product_id, attribute_id)] == label
    from mlcore.nn.stats import wilson_interval  # not mlcore.nn.tagging: that imports torch

    low, high = wilson_interval(agree, total)
    return {
        "scope": scope,
        "versions": versions,
        "active": active,
        "can_roll_back": training.rollback_target(scope=scope) is not None,
        "runs": runs,
        "model_labels": model_labels,
        "answers_per_human_label": per_label,
        "humans_saved": round(model_labels * per_label) if per_label else None,
        "audit": {"n": total, "agree": agree, "precision": agree / total if total else None, "low": low, "high": high},
        "category_backoff": category_backoff_report(campaign=campaign, version=active),
    }


def on_model_activated(sender, *, version: ModelVersion, scope: str, replaced=None, rollback=False, **kwargs) -> None:
    """mlcore.training.model_activated → queue annotate.learning_apply for the campaign of `scope`.
    On a rollback, the labels the rolled-back model settled are withdrawn first (their tasks reopen):
    the ML team rolled it back because they do not trust it."""
    if scope.startswith("backbone:"):
        campaign = Campaign.objects.filter(slug=scope.removeprefix("backbone:")).first()
        if campaign is not None:
            backbone_apply_start(campaign=campaign, version=version)
        return
    if scope.startswith("matching:"):
        campaign = Campaign.objects.filter(slug=scope.removeprefix("matching:")).first()
        if campaign is not None:
            from .tasks import matching_apply_task

            task_send(matching_apply_task.si(campaign.pk))
        return
    if not scope.startswith("campaign:"):
        return
    campaign = Campaign.objects.filter(slug=scope.removeprefix("campaign:")).first()
    if campaign is None:
        return
    if rollback and replaced is not None:
        model_labels_withdraw(campaign=campaign, version=replaced)
    from .tasks import learning_apply_task

    task_send(learning_apply_task.si(campaign.pk))


def model_labels_withdraw(*, campaign: Campaign, version: ModelVersion) -> int:
    """Delete the labels `version` auto-accepted in `campaign` and reopen their tasks (people or the
    next model settle them again). Returns the number of labels withdrawn."""
    with transaction.atomic():
        labels = AttributeLabel.objects.filter(task__campaign=campaign, model_version=version)
        task_ids = list(labels.values_list("task_id", flat=True).distinct())
        count, _ = labels.delete()
        Task.objects.filter(pk__in=task_ids, status=Task.Status.COMPLETE).update(
            status=Task.Status.OPEN, completed_at=None
        )
    return count
