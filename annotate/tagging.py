"""Attribute tagging (campaign kind "attributes"): tasks are products, an answer holds one value per
attribute that applies to the product's category, and each attribute settles on its own consensus.

Consensus per attribute kind, updated inside the answer's transaction:
- single choice: the one-coin Dawid-Skene E-step (`consensus.em.task_posterior`) with the crowd's
  pooled accuracy, over the options and "cant_tell" (so a product most people cannot judge settles
  as "cant_tell"), too-fast answers weighted 0;
- ordinal rating: the weighted median, which respects order where a categorical vote would not
  (a 2 and a 4 say "about 3", not "a tie"); confidence is the weighted share of ratings within one
  step of it (our rule: no library offers an ordinal settle rule);
- multi choice: a vote per option, P(selected) = (votes for + 0.5) / (votes + 1) (Jeffreys prior),
  the label the options above 0.5, confidence the least certain option's max(p, 1 - p).
A label settles like a match task: overlap_min answers and confidence >= confidence_target, or
overlap_max answers. The task completes when every attribute that applies has settled.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from catalog.attribute_schema import CATEGORY_SLUG, attribute_applies, category_paths
from catalog.models import Attribute, Product

from . import roles
from .consensus import em
from .models import (
    Answer,
    AttributeAnswer,
    AttributeLabel,
    AttributeReliability,
    Campaign,
    Lease,
    Task,
    TeamMember,
)
from .selectors import campaign_kind_check
from .services import (
    SHUFFLE_SPACE,
    AnnotatorPaused,
    AnswerConflict,
    AnswerInvalid,
    WrongCampaignKind,
    _answered_by,
    _first_from_seed,
    _skipped_by,
    _stats_on_answer,
    _stats_on_undo,
    annotator_stats_for,
    campaign_kind_require,
    task_next_for,
    undo_candidate,
    undone_task_lease_back,
)

TAG_ROLES = (roles.TAGGER, roles.ADMIN)
# The style-persona ratings: the agreement report reads the attributes persona_<name>
# (selectors.campaign_agreement_report).
PERSONA_PREFIX = "persona_"


def optional_attribute_ids(campaign: Campaign) -> frozenset[int]:
    """The ids of the campaign's optional attributes (Campaign.optional_attributes), read once per
    campaign object (1 query, then cached on it)."""
    cached = getattr(campaign, "_optional_attribute_ids", None)
    if cached is None:
        cached = frozenset(campaign.optional_attributes.values_list("pk", flat=True))
        campaign._optional_attribute_ids = cached
    return cached


def is_persona(attribute: Attribute) -> bool:
    """Whether `attribute` is a style-persona rating (an ordinal attribute named persona_*)."""
    return attribute.kind == Attribute.Kind.ORDINAL and attribute.slug.startswith(PERSONA_PREFIX)


def persona_quota(*, campaign: Campaign, task: Task, personas: list[Attribute]) -> int | None:
    """How many of `personas` (the persona attributes that apply to the product) one tagger rates on
    `task`: campaign.personas_per_task when that samples them (0 < k < len(personas)) and the task is
    not in the calibration sample, else None (every persona is asked)."""
    k = campaign.personas_per_task
    if not k or task.is_calibration or k >= len(personas):
        return None
    return k


def personas_asked(*, task: Task, personas: list[Attribute], user) -> list[Attribute]:
    """The personas `user` is asked on `task` when the campaign samples them (`persona_quota` k):
    the k the product has fewest live ratings of from other people, ties broken by a rotation that
    starts k places further for each tagger before this one (the tagger's order on the product), so
    that without concurrency the taggers cover the personas in turn: after n answers each persona
    has floor(n k / P) or ceil(n k / P) ratings, and ceil(2 P / k) taggers give every persona the
    agreement report's pairable minimum of 2 (agreement.PAIRABLE_MIN_RATINGS). Picking the least
    covered first also fills the gaps two taggers working on the product at once leave.
    Deterministic; every persona when the campaign does not sample (2 queries).

    Returns the personas in form order."""
    k = persona_quota(campaign=task.campaign, task=task, personas=personas)
    if k is None:
        return list(personas)
    others = Answer.objects.filter(task=task, revoked_at__isnull=True).exclude(annotator=user)
    order = others.count()
    counts = Counter(
        AttributeAnswer.objects.filter(answer__in=others, attribute_id__in=[p.pk for p in personas]).values_list(
            "attribute_id", flat=True
        )
    )
    n = len(personas)
    offset = (order * k) % n
    ranked = sorted(range(n), key=lambda i: (counts[personas[i].pk], (i - offset) % n))
    chosen = set(ranked[:k])
    return [p for i, p in enumerate(personas) if i in chosen]


def campaign_attributes(campaign: Campaign) -> list[Attribute]:
    """The campaign's attributes in form order, with options and applies_to prefetched (3 queries)."""
    return list(campaign.attributes.prefetch_related("options", "applies_to").order_by("position", "slug"))


def attributes_for_product(*, attributes: list[Attribute], product: Product) -> list[Attribute]:
    """Of `attributes` (campaign_attributes), those that apply to the product's master category."""
    path = product.master_category.path if product.master_category_id else None
    return [a for a in attributes if attribute_applies(a, path)]


def category_chosen(*, attributes: list[Attribute], value) -> str | None:
    """The TaxonomyNode.path a tagger's category value names, when the campaign asks for the category
    attribute and the value is one of its options (not "can't tell"); else None (one query when the
    campaign has the category attribute)."""
    if not isinstance(value, str) or value in ("", Attribute.CANT_TELL):
        return None
    category = next((a for a in attributes if a.slug == CATEGORY_SLUG), None)
    if category is None or value not in {o.value for o in category.options.all()}:
        return None
    return category_paths().get(value)


def attributes_for_answer(*, attributes: list[Attribute], product: Product, values: dict) -> list[Attribute]:
    """The attributes a tagger's answer must hold: those that apply to the category they chose, when
    the campaign asks for the category and they named one (a tagger may correct the catalog: a
    "T-shirt" that is a dress gets skirt length), else to the product's master category."""
    path = category_chosen(attributes=attributes, value=values.get(CATEGORY_SLUG))
    if path is None:
        return attributes_for_product(attributes=attributes, product=product)
    return [a for a in attributes if attribute_applies(a, path)]


def tag_tasks_build(*, campaign: Campaign, products, calibration: bool = False) -> int:
    """Create a task per product of `products` (a queryset or list) not yet in the campaign; with
    `calibration`, mark those tasks (new or existing) as the calibration sample. Idempotent.
    Returns the number of tasks created.

    Raises:
        ValueError: the campaign is not an attributes campaign.
    """
    if campaign.kind != Campaign.Kind.ATTRIBUTES:
        raise ValueError(f"campaign {campaign.slug} is not an attributes campaign")
    product_ids = [p.pk for p in products]
    with transaction.atomic():
        existing = set(
            Task.objects.filter(campaign=campaign, product_id__in=product_ids).values_list("product_id", flat=True)
        )
        new = [
            Task(
                campaign=campaign,
                product_id=pid,
                shuffle_key=random.randrange(SHUFFLE_SPACE),
                is_calibration=calibration,
            )
            for pid in product_ids
            if pid not in existing
        ]
        Task.objects.bulk_create(new, batch_size=1000)
        if calibration:
            Task.objects.filter(campaign=campaign, product_id__in=product_ids).update(is_calibration=True)
    return len(new)


def tag_values_clean(
    *,
    attributes: list[Attribute],
    values: dict,
    optional: frozenset[int] = frozenset(),
    persona_count: int | None = None,
) -> dict[int, str]:
    """Check a submitted form against the attributes that apply: every required one answered,
    nothing else, each value one of its values. Returns {attribute id: stored value} (multi choice:
    the selected options in option order joined by "|", "" for none); an optional attribute left
    empty has no entry (a multi choice is never empty: nothing ticked is "none of these").

    Args:
        optional: ids of the attributes that may be left empty (Campaign.optional_attributes).
        persona_count: when the campaign samples the persona ratings (`persona_quota`), the number of
            personas to rate: exactly that many (at most, when the personas are optional), any of
            them (the page shows `personas_asked`; which ones were asked may have moved while the
            form was open). None: each persona is an attribute like the others.

    Raises:
        AnswerInvalid: reasons per attribute slug ("personas" for a wrong number of ratings).
    """
    errors: dict[str, list[str]] = {}
    by_slug = {a.slug: a for a in attributes}
    for slug in sorted(set(values) - set(by_slug)):
        errors[slug] = ["does not apply to this product"]
    sampled = set()
    if persona_count is not None:
        sampled = {a.pk for a in attributes if is_persona(a)}
        rated = [a for a in attributes if a.pk in sampled and values.get(a.slug) not in (None, "")]
        all_optional = sampled <= optional
        if len(rated) > persona_count or (len(rated) < persona_count and not all_optional):
            errors["personas"] = [
                f"rate {'at most' if all_optional else 'exactly'} {persona_count} of the personas (the ones shown)"
            ]
    cleaned: dict[int, str] = {}
    for attribute in attributes:
        raw = values.get(attribute.slug)
        # A multi choice has no "empty": nothing ticked is its answer "none of these".
        skippable = attribute.pk in optional or attribute.pk in sampled
        if raw in (None, "") and skippable and attribute.kind != Attribute.Kind.MULTI:
            continue
        allowed = attribute.values()
        if attribute.kind == Attribute.Kind.MULTI:
            chosen = raw if isinstance(raw, list | tuple) else ([] if raw in (None, "") else str(raw).split("|"))
            chosen = [str(v) for v in chosen]
            bad = sorted(set(chosen) - set(allowed))
            if bad:
                errors[attribute.slug] = [f"unknown option(s): {', '.join(bad)}"]
                continue
            cleaned[attribute.pk] = "|".join(v for v in allowed if v in chosen)
            continue
        if raw in (None, ""):
            errors[attribute.slug] = ["required"]
            continue
        if str(raw) not in allowed:
            errors[attribute.slug] = [f"must be one of {', '.join(allowed)}"]
            continue
        cleaned[attribute.pk] = str(raw)
    if errors:
        raise AnswerInvalid(errors)
    return cleaned


def tag_submit(
    *, user, task: Task, values: dict, duration_ms: int, idempotency_key: str, suggestions: dict | None = None
) -> tuple[Answer, bool]:
    """Record a tagger's values for a product task and update each attribute's consensus.

    Args:
        values: {attribute slug: value}; multi choice takes a list (or "a|b"); every required
            attribute that applies to the product must be present (tag_values_clean: optional
            attributes may be left out; sampled personas, exactly campaign.personas_per_task).
        duration_ms: time from the product appearing to the submit, in ms.
        suggestions: {attribute slug: (value, confidence)} the model pre-filled, recorded beside each
            value so confirmations and corrections can be told apart.

    Returns (answer, created); a repeated idempotency key returns the first answer, created False.
    Locks the task row. Idempotent per (user, idempotency_key).

    Raises:
        PermissionDenied: the user lacks the tagger/admin role.
        AnswerInvalid: bad values, per attribute.
        AnswerConflict: "already_answered" (this person answered this product), "task_complete".
        WrongCampaignKind: `task` is a photo task of a match campaign (nothing written).
    """
    from django.core.exceptions import PermissionDenied

    if not roles.user_has_role(user, *TAG_ROLES):
        raise PermissionDenied("Tagging needs the tagger or admin role.")
    campaign_kind_require(task, Campaign.Kind.ATTRIBUTES)
    campaign = task.campaign
    previous = Answer.objects.filter(annotator=user, idempotency_key=idempotency_key).first()
    if previous is not None:
        return previous, False
    stats = annotator_stats_for(user=user, campaign=campaign)
    if stats is not None and stats.is_paused:
        raise AnnotatorPaused()
    every = campaign_attributes(campaign)
    attributes = attributes_for_answer(attributes=every, product=task.product, values=values)
    cleaned = tag_values_clean(
        attributes=attributes,
        values=values,
        optional=optional_attribute_ids(campaign),
        persona_count=persona_quota(campaign=campaign, task=task, personas=[a for a in attributes if is_persona(a)]),
    )
    suggestions = suggestions or {}
    by_id = {a.pk: a for a in attributes}
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        locked.campaign = campaign
        if locked.status == Task.Status.COMPLETE and not locked.is_calibration:
            raise AnswerConflict("task_complete", "This product has all the answers it needs.")
        if Answer.objects.filter(task=locked, annotator=user, revoked_at__isnull=True).exists():
            raise AnswerConflict("already_answered", "You have already tagged this product.")
        try:
            with transaction.atomic():
                answer = Answer.objects.create(
                    task=locked,
                    annotator=user,
                    choice=Answer.Choice.TAGS,
                    duration_ms=duration_ms,
                    is_too_fast=duration_ms < campaign.min_duration_ms,
                    idempotency_key=idempotency_key,
                )
        except IntegrityError:
            previous = Answer.objects.filter(annotator=user, idempotency_key=idempotency_key).first()
            if previous is not None:
                return previous, False
            raise
        AttributeAnswer.objects.bulk_create(
            [
                AttributeAnswer(
                    answer=answer,
                    attribute_id=attribute_id,
                    value=value,
                    suggested_value=str((suggestions.get(by_id[attribute_id].slug) or ("", None))[0] or ""),
                    suggestion_confidence=(suggestions.get(by_id[attribute_id].slug) or ("", None))[1],
                )
                for attribute_id, value in cleaned.items()
            ]
        )
        # "Your stats" and the annotators page count tagging answers too (runs of "options" are a match
        # campaign's notion; a tagging answer counts as one run of "tags").
        _stats_on_answer(stats=stats, user=user, campaign=campaign, label="tags", is_too_fast=answer.is_too_fast)
        Task.objects.filter(pk=locked.pk).update(
            answer_count=locked.answer_count + 1, consensus_version=F("consensus_version") + 1
        )
        locked.answer_count += 1
        locked.product = task.product
        tag_consensus_update(task=locked, attributes=every)
        # The next full recompute (Celery beat) refits each tagger's reliability per attribute.
        Campaign.objects.filter(pk=campaign.pk, consensus_dirty=False).update(consensus_dirty=True)
    return answer, True


@dataclass
class AttributeReliabilityParams:
    """What the per-answer update of one attribute takes from the last full recompute.

    Attributes:
        accuracy: {annotator id: accuracy in [0, 1]} (AttributeReliability.accuracy).
        pooled_accuracy: the crowd's accuracy in [0, 1] on this attribute, for people not yet
            measured; None before any recompute (single choice then uses em.default_pooled).
        class_prior: single choice only: (K,) probabilities over attribute.values(); None = uniform.
    """

    accuracy: dict[int, float] = field(default_factory=dict)
    pooled_accuracy: float | None = None
    class_prior: list[float] | None = None

    def of(self, annotator_id: int) -> float | None:
        """The person's accuracy, else the crowd's, else None."""
        return self.accuracy.get(annotator_id, self.pooled_accuracy)


def _one_coin(accuracy: float, n_classes: int) -> np.ndarray:
    """(K, K) float64: accuracy on the diagonal, the rest spread evenly (the one-coin model)."""
    accuracy = min(max(accuracy, 1e-3), 1 - 1e-3)
    matrix = np.full((n_classes, n_classes), (1 - accuracy) / (n_classes - 1))
    np.fill_diagonal(matrix, accuracy)
    return matrix


def _aggregate(
    attribute: Attribute,
    values: list[str],
    weights: np.ndarray,
    *,
    annotators: list[int] | None = None,
    params: AttributeReliabilityParams | None = None,
) -> tuple[str, dict, float]:
    """(label, posterior, confidence) of one attribute of one product from its answers.

    Args:
        values: the answers' values (AttributeAnswer.value), n of them.
        weights: (n,) float64 in [0, 1], 0 for a too-fast answer.
        annotators: (n,) the answering annotators' ids, to look up their reliability in `params`.
        params: reliability from the last full recompute; None = everyone alike.
    """
    domain = attribute.values()
    params = params or AttributeReliabilityParams()
    annotators = annotators if annotators is not None else [0] * len(values)
    if attribute.kind == Attribute.Kind.SINGLE:
        K = len(domain)
        index = {v: i for i, v in enumerate(domain)}
        labels = np.array([index[v] for v in values], dtype=np.int64)
        default = em.default_pooled(K)
        rows = np.array([default if params.of(a) is None else _one_coin(params.of(a), K) for a in annotators]).reshape(
            len(labels), K, K
        )
        prior = np.asarray(params.class_prior) if params.class_prior and len(params.class_prior) == K else None
        posterior = em.task_posterior(
            labels, rows, np.full(K, 1.0 / K) if prior is None else prior, vote_weight=weights
        )
        best = int(np.argmax(posterior))
        return (
            domain[best],
            {v: round(float(p), 6) for v, p in zip(domain, posterior, strict=True)},
            float(posterior[best]),
        )
    # Ordinal and multi choice: the person's reliability scales their vote (Wawa-style weights).
    weights = weights * np.array([1.0 if params.of(a) is None else params.of(a) for a in annotators])
    if attribute.kind == Attribute.Kind.ORDINAL:
        ratings = np.array([int(v) for v in values])
        total = float(weights.sum())
        if total <= 0:
            return "", {}, 0.0
        median = _weighted_median(ratings, weights)
        share = {v: round(float(weights[ratings == int(v)].sum() / total), 6) for v in domain}
        near = float(weights[np.abs(ratings - median) <= 1].sum() / total)
        return str(median), share, near
    # multi choice: a vote per option
    total = float(weights.sum())
    posterior, chosen, confidence = {}, [], 1.0
    for option in domain:
        selected = float(sum(w for v, w in zip(values, weights, strict=True) if option in v.split("|")))
        p = (selected + 0.5) / (total + 1.0)
        posterior[option] = round(p, 6)
        confidence = min(confidence, max(p, 1.0 - p))
        if p > 0.5:
            chosen.append(option)
    return "|".join(chosen), posterior, confidence


def _weighted_median(ratings: np.ndarray, weights: np.ndarray) -> int:
    """The lower weighted median of integer ratings (n,) with weights (n,) summing to more than 0."""
    order = np.argsort(ratings, kind="stable")
    cumulative = np.cumsum(weights[order])
    return int(ratings[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _task_labels(
    *,
    task: Task,
    campaign: Campaign,
    attributes: list[Attribute],
    rows: list[tuple[int, int, str, bool]],
    reliability: dict[int, AttributeReliabilityParams],
    overlap: dict[int, tuple[int, int]] | None = None,
) -> list[AttributeLabel]:
    """The AttributeLabel of each attribute of `task` (unsaved) from its live answers `rows`
    [(annotator id, attribute id, value, is_too_fast)] and the reliability per attribute id.
    `overlap` ({attribute id: (min answers, max answers)}, `settle_overlap`) overrides the
    campaign's overlap_min/overlap_max for the attributes in it."""
    overlap = overlap or {}
    labels = []
    for attribute in attributes:
        overlap_min, overlap_max = overlap.get(attribute.pk, (campaign.overlap_min, campaign.overlap_max))
        mine = [(who, v, 0.0 if too_fast else 1.0) for who, a, v, too_fast in rows if a == attribute.pk]
        weights = np.array([w for _, _, w in mine], dtype=np.float64)
        count = int((weights > 0).sum())
        label, posterior, confidence = (
            _aggregate(
                attribute,
                [v for _, v, _ in mine],
                weights,
                annotators=[who for who, _, _ in mine],
                params=reliability.get(attribute.pk),
            )
            if count
            else ("", {}, 0.0)
        )
        settled = count >= overlap_max or (count >= overlap_min and confidence >= campaign.confidence_target)
        labels.append(
            AttributeLabel(
                task=task,
                attribute=attribute,
                label=label,
                posterior=posterior,
                confidence=min(max(confidence, 0.0), 1.0),
                answer_count=count,
                is_settled=settled,
            )
        )
    return labels


def _labels_write(labels: list[AttributeLabel]) -> None:
    AttributeLabel.objects.bulk_create(
        labels,
        update_conflicts=True,
        unique_fields=["task", "attribute"],
        update_fields=["label", "posterior", "confidence", "answer_count", "is_settled", "updated_at"],
    )


def reliability_params(
    *, campaign: Campaign, attributes: list[Attribute], annotator_ids
) -> dict[int, AttributeReliabilityParams]:
    """{attribute id: AttributeReliabilityParams} for these annotators, from the AttributeReliability
    rows and campaign.consensus_params["attributes"] of the last full recompute (one query)."""
    stored = (campaign.consensus_params or {}).get("attributes", {})
    out = {
        a.pk: AttributeReliabilityParams(
            pooled_accuracy=stored.get(a.slug, {}).get("pooled_accuracy"),
            class_prior=stored.get(a.slug, {}).get("class_prior"),
        )
        for a in attributes
    }
    for annotator_id, attribute_id, accuracy in AttributeReliability.objects.filter(
        campaign=campaign, annotator_id__in=list(annotator_ids), attribute_id__in=list(out)
    ).values_list("annotator_id", "attribute_id", "accuracy"):
        out[attribute_id].accuracy[annotator_id] = accuracy
    return out


def tag_consensus_update(*, task: Task, attributes: list[Attribute]) -> list[AttributeLabel]:
    """Recompute the attribute labels of `task` from its live answers and write them (upserts on
    (task, attribute)), then the task's status (`_labels_plan`). Each person counts with their
    reliability on that attribute from the last full recompute (`tag_consensus_recompute`).

    Args:
        task: locked, with campaign and product (and its master category) loaded.
        attributes: all the campaign's attributes (campaign_attributes).

    Call inside the answer's transaction with the task locked. Returns the labels written."""
    campaign = task.campaign
    rows = list(
        AttributeAnswer.objects.filter(answer__task=task, answer__revoked_at__isnull=True).values_list(
            "answer__annotator_id", "attribute_id", "value", "answer__is_too_fast"
        )
    )
    reliability = reliability_params(campaign=campaign, attributes=attributes, annotator_ids={r[0] for r in rows})
    labels, required = _labels_plan(
        task=task, campaign=campaign, attributes=attributes, rows=rows, reliability=reliability
    )
    _labels_write(labels)
    _status_write(task, required)
    return labels


def _labels_plan(*, task, campaign, attributes, rows, reliability) -> tuple[list[AttributeLabel], list[AttributeLabel]]:
    """(labels to write, labels that must settle for the task to complete).

    Labelled: every attribute that applies to the product's master category or that someone
    answered (a tagger who re-categorised the product answered the new category's attributes).
    Required: those that apply to the category consensus when the campaign asks for the category
    and its label names a taxonomy node, else to the master category."""
    answered = {a for _, a, _, _ in rows}
    applicable = attributes_for_product(attributes=attributes, product=task.product)
    wanted = {a.pk for a in applicable} | answered
    labels = _task_labels(
        task=task,
        campaign=campaign,
        attributes=[a for a in attributes if a.pk in wanted],
        rows=rows,
        reliability=reliability,
        overlap=settle_overlap(task=task, campaign=campaign, attributes=applicable),
    )
    return labels, required_labels(task=task, attributes=attributes, labels=labels)


def settle_overlap(*, task: Task, campaign: Campaign, attributes: list[Attribute]) -> dict[int, tuple[int, int]]:
    """{attribute id: (min answers, max answers)} for the labels of `task` that settle on other counts
    than the campaign's overlap_min/overlap_max: the sampled personas (`persona_quota` k of the P
    personas among `attributes`, those that apply to the product). Each gets about k/P of the
    task's answers, so its cap is overlap_max * k // P, and it needs at least the agreement
    report's pairable minimum (agreement.PAIRABLE_MIN_RATINGS, 2) either way: the product stays in
    the queue until every persona can be compared across taggers. {} when nothing is sampled."""
    from .agreement import PAIRABLE_MIN_RATINGS

    personas = [a for a in attributes if is_persona(a)]
    k = persona_quota(campaign=campaign, task=task, personas=personas)
    if k is None:
        return {}
    cap = max(PAIRABLE_MIN_RATINGS, campaign.overlap_max * k // len(personas))
    low = min(max(campaign.overlap_min, PAIRABLE_MIN_RATINGS), cap)
    return {p.pk: (low, cap) for p in personas}


def required_labels(*, task, attributes: list[Attribute], labels: list[AttributeLabel]) -> list[AttributeLabel]:
    """The labels that must settle for `task` to complete, among `labels` (its labels, any subset of
    `attributes`): those of the attributes that apply to the category consensus when the campaign
    asks for the category and its label names a taxonomy node, else to the product's master
    category, less the campaign's optional attributes (a product completes without them). A
    required attribute without a label counts as an unsettled one."""
    by_slug = {label.attribute.slug: label for label in labels}
    category = by_slug.get(CATEGORY_SLUG)
    path = category_chosen(attributes=attributes, value=category.label) if category is not None else None
    if path is not None:
        required = [a for a in attributes if attribute_applies(a, path)]
    else:
        required = attributes_for_product(attributes=attributes, product=task.product)
    optional = optional_attribute_ids(task.campaign)
    return [
        by_slug.get(a.slug) or AttributeLabel(task=task, attribute=a, is_settled=False)
        for a in required
        if a.pk not in optional
    ]


def _status_write(task: Task, required: list[AttributeLabel]) -> None:
    complete = bool(required) and all(label.is_settled for label in required)
    if complete and task.is_calibration:
        complete = calibration_done(task=task)
    status = Task.Status.COMPLETE if complete else Task.Status.OPEN
    if status != task.status:
        Task.objects.filter(pk=task.pk).update(status=status, completed_at=timezone.now() if complete else None)
        task.status = status


# -- full recompute: reliability per attribute --------------------------------------------------------

# Pseudo answers pulling an ordinal or multi-choice agreement rate towards the crowd's, like the
# Beta prior of the one-coin accuracy (em.COIN_SHRINKAGE_ANSWERS).
AGREEMENT_PRIOR_ANSWERS = 2.0


@dataclass
class TagRecomputeReport:
    """What a full recompute of an attribute campaign did."""

    campaign_id: int
    answer_count: int
    task_count: int
    tasks_written: int
    tasks_skipped: int
    annotator_count: int
    seconds: float


def _fit_single(attribute: Attribute, answers: list[tuple[int, int, str, float]]):
    """One-coin Dawid-Skene over one single-choice attribute's answers [(task, annotator, value,
    weight)]. Returns ({annotator: accuracy}, pooled accuracy, class prior, {(task, annotator): agrees})."""
    domain = attribute.values()
    index = {v: i for i, v in enumerate(domain)}
    tasks = sorted({t for t, _, _, _ in answers})
    workers = sorted({w for _, w, _, _ in answers})
    t_index = {t: i for i, t in enumerate(tasks)}
    w_index = {w: i for i, w in enumerate(workers)}
    data = em.AnswerArrays.build(
        [t_index[t] for t, _, _, _ in answers],
        [w_index[w] for _, w, _, _ in answers],
        [index[v] for _, _, v, _ in answers],
        weight=[w for _, _, _, w in answers],
        n_tasks=len(tasks),
        n_workers=len(workers),
        n_classes=len(domain),
    )
    result = em.dawid_skene(data, one_coin=True)
    reliability = result.reliability()
    pooled = float(np.diagonal(result.pooled) @ result.class_prior)
    agrees = {(t, w): int(result.label[t_index[t]]) == index[v] for t, w, v, _ in answers}
    accuracy = {w: float(reliability[i]) for w, i in w_index.items()}
    return accuracy, pooled, [round(float(p), 6) for p in result.class_prior], agrees


def _fit_agreement(attribute: Attribute, answers: list[tuple[int, int, str, float]]):
    """Ordinal and multi choice: each person's agreement with the unweighted consensus (a rating
    within one step of the median; for multi choice, the share of options on which they agree with
    the per-option vote), smoothed towards the crowd's rate by AGREEMENT_PRIOR_ANSWERS pseudo
    answers. This is Wawa (worker agreement with aggregate; Crowd-Kit's Wawa does the categorical
    case only, hence our own). Returns ({annotator: accuracy}, crowd rate, {(task, annotator): agrees})."""
    by_task: dict[int, list] = {}
    for t, w, v, weight in answers:
        by_task.setdefault(t, []).append((w, v, weight))
    score: dict[tuple[int, int], float] = {}
    for t, rows in by_task.items():
        weights = np.array([weight for _, _, weight in rows])
        if weights.sum() <= 0:
            continue
        label, _, _ = _aggregate(attribute, [v for _, v, _ in rows], weights)
        for w, v, weight in rows:
            if weight <= 0:
                continue
            if attribute.kind == Attribute.Kind.ORDINAL:
                score[(t, w)] = float(abs(int(v) - int(label)) <= 1)
            else:
                mine, theirs = set(filter(None, v.split("|"))), set(filter(None, label.split("|")))
                domain = attribute.values()
                score[(t, w)] = sum((o in mine) == (o in theirs) for o in domain) / max(len(domain), 1)
    counted = {t for t, rows in by_task.items() if sum(weight > 0 for _, _, weight in rows) >= 2}
    crowd = [s for (t, _), s in score.items() if t in counted]
    rate = float(np.mean(crowd)) if crowd else 0.8
    sums: dict[int, list[float]] = {}
    for (t, w), s in score.items():
        if t in counted:
            sums.setdefault(w, []).append(s)
    c = AGREEMENT_PRIOR_ANSWERS
    accuracy = {w: (sum(s) + c * rate) / (len(s) + c) for w, s in sums.items()}
    return accuracy, rate, {key: s >= 0.5 for key, s in score.items()}


def tag_consensus_recompute(*, campaign: Campaign, chunk_size: int = 500) -> TagRecomputeReport:
    """Full consensus of an attribute campaign: each tagger's reliability per attribute from all live
    answers, then every answered product's labels and status with those reliabilities.

    Per attribute kind: single choice, the one-coin Dawid-Skene model by EM (`em.dawid_skene`,
    Karger, Oh & Shah 2011; K up to ~30 options with few answers per person rules out a full
    confusion matrix per person); ordinal and multi choice, agreement with the unweighted consensus
    (`_fit_agreement`). The reliabilities go to AttributeReliability (one row per person and
    attribute, upserted; stale rows deleted) and the crowd's to campaign.consensus_params
    ["attributes"][slug]; `tag_consensus_update` then weighs each answer by them.

    Safe beside live tagging: task versions are read before the answers, and a chunk of tasks is
    written with those rows locked, only where consensus_version is unchanged; a product tagged
    meanwhile keeps its per-answer update and the campaign stays dirty.
    """
    import time

    started = time.perf_counter()
    now = timezone.now()
    attributes = campaign_attributes(campaign)
    by_id = {a.pk: a for a in attributes}
    versions = dict(Task.objects.filter(campaign=campaign, answer_count__gt=0).values_list("pk", "consensus_version"))
    rows = list(
        AttributeAnswer.objects.filter(
            answer__task__campaign=campaign, answer__revoked_at__isnull=True, attribute_id__in=list(by_id)
        )
        .order_by("answer__task_id", "answer_id", "attribute_id")
        .values_list("answer__task_id", "answer__annotator_id", "attribute_id", "value", "answer__is_too_fast")
    )
    params: dict[str, dict] = {}
    reliability_rows = []
    for attribute in attributes:
        answers = [(t, w, v, 0.0 if fast else 1.0) for t, w, a, v, fast in rows if a == attribute.pk]
        if not any(weight > 0 for *_, weight in answers):
            continue
        if attribute.kind == Attribute.Kind.SINGLE:
            accuracy, pooled, prior, agrees = _fit_single(attribute, answers)
            params[attribute.slug] = {"pooled_accuracy": round(pooled, 6), "class_prior": prior}
        else:
            accuracy, pooled, agrees = _fit_agreement(attribute, answers)
            params[attribute.slug] = {"pooled_accuracy": round(pooled, 6)}
        counted = Counter(t for t, _, _, weight in answers if weight > 0)
        per_person: dict[int, list[int]] = {}
        for t, w, _, weight in answers:
            if weight <= 0:
                continue
            entry = per_person.setdefault(w, [0, 0, 0])
            entry[0] += 1
            if counted[t] >= 2:
                entry[1] += 1
                entry[2] += int(agrees.get((t, w), False))
        reliability_rows += [
            AttributeReliability(
                campaign=campaign,
                annotator_id=w,
                attribute=attribute,
                answer_count=n,
                agreement_total=total,
                agreement_count=agreeing,
                accuracy=min(max(accuracy.get(w, pooled), 0.0), 1.0),
                computed_at=now,
            )
            for w, (n, total, agreeing) in per_person.items()
        ]
    with transaction.atomic():
        AttributeReliability.objects.bulk_create(
            reliability_rows,
            update_conflicts=True,
            unique_fields=["campaign", "annotator", "attribute"],
            update_fields=["answer_count", "agreement_total", "agreement_count", "accuracy", "computed_at"],
            batch_size=1000,
        )
        keep = {(r.annotator_id, r.attribute_id) for r in reliability_rows}
        stale = [
            pk
            for pk, who, attribute_id in AttributeReliability.objects.filter(campaign=campaign).values_list(
                "pk", "annotator_id", "attribute_id"
            )
            if (who, attribute_id) not in keep
        ]
        AttributeReliability.objects.filter(pk__in=stale).delete()
        consensus_params = dict(campaign.consensus_params or {})
        consensus_params["attributes"] = params
        Campaign.objects.filter(pk=campaign.pk).update(consensus_params=consensus_params, consensus_computed_at=now)
        campaign.consensus_params = consensus_params

    reliability = {a.pk: AttributeReliabilityParams() for a in attributes}
    for r in reliability_rows:
        reliability[r.attribute_id].accuracy[r.annotator_id] = r.accuracy
    for attribute in attributes:
        stored = params.get(attribute.slug, {})
        reliability[attribute.pk].pooled_accuracy = stored.get("pooled_accuracy")
        reliability[attribute.pk].class_prior = stored.get("class_prior")
    by_task: dict[int, list] = {}
    for t, w, a, v, fast in rows:
        by_task.setdefault(t, []).append((w, a, v, fast))
    written = skipped = 0
    task_ids = sorted(versions)
    for i in range(0, len(task_ids), chunk_size):
        chunk = task_ids[i : i + chunk_size]
        with transaction.atomic():
            tasks = list(
                Task.objects.select_for_update(of=("self",))
                .select_related("campaign", "product__master_category")
                .filter(pk__in=chunk)
                .order_by("pk")
            )
            current = [t for t in tasks if t.consensus_version == versions[t.pk]]
            skipped += len(tasks) - len(current)
            for task in current:
                task.campaign = campaign
                labels, required = _labels_plan(
                    task=task,
                    campaign=campaign,
                    attributes=attributes,
                    rows=by_task.get(task.pk, []),
                    reliability=reliability,
                )
                _labels_write(labels)
                _status_write(task, required)
                written += 1
        if skipped:
            Campaign.objects.filter(pk=campaign.pk).update(consensus_dirty=True)
    return TagRecomputeReport(
        campaign_id=campaign.pk,
        answer_count=len({(t, w) for t, w, *_ in rows}),
        task_count=len(task_ids),
        tasks_written=written,
        tasks_skipped=skipped,
        annotator_count=len({w for _, w, *_ in rows}),
        seconds=time.perf_counter() - started,
    )


def calibration_done(*, task: Task) -> bool:
    """Whether every calibration team of the task's campaign has given calibration_answers_per_team
    live answers on it."""
    from django.db.models import Count

    campaign = task.campaign
    teams = list(campaign.calibration_teams.values_list("pk", flat=True))
    if not teams:
        return True
    counts = dict(
        Answer.objects.filter(task=task, revoked_at__isnull=True, annotator__team_membership__team_id__in=teams)
        .values_list("annotator__team_membership__team_id")
        .annotate(n=Count("pk"))
    )
    return all(counts.get(team, 0) >= campaign.calibration_answers_per_team for team in teams)


# -- routing and reads for the tagging page ----------------------------------------------------------


def get_tag_campaign_for_user(user, slug: str) -> Campaign:
    """The attributes campaign `slug` if `user` may tag it (1 query, plus the user's roles once).

    Raises:
        PermissionDenied: the user lacks the tagger/admin role.
        CampaignKindMismatch: `slug` is a match campaign (a 404).
        Http404: no such campaign, or it is paused.
    """
    if not roles.user_has_role(user, *TAG_ROLES):
        raise PermissionDenied("Tagging needs the tagger or admin role.")
    campaign = Campaign.objects.filter(slug=slug).first()
    if campaign is None or campaign.status == Campaign.Status.PAUSED:
        raise Http404("No such attributes campaign.")
    campaign_kind_check(campaign, Campaign.Kind.ATTRIBUTES)
    return campaign


def _calibration_open_for(*, user, campaign: Campaign, team_id: int, now):
    """Open calibration tasks of `campaign` that `user` has not answered and on which their team
    (`team_id`) still has fewer than calibration_answers_per_team live answers, counting the live
    leases of the team's other members as answers to come (so a team is never over-served)."""
    team_answers = (
        Answer.objects.filter(task=OuterRef("pk"), revoked_at__isnull=True, annotator__team_membership__team_id=team_id)
        .order_by()
        .values("task")
        .annotate(n=Count("pk"))
        .values("n")
    )
    team_held = (
        Lease.objects.filter(task=OuterRef("pk"), expires_at__gt=now, annotator__team_membership__team_id=team_id)
        .exclude(annotator=user)
        .order_by()
        .values("task")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        Task.objects.filter(campaign=campaign, is_calibration=True, is_gold=False, status=Task.Status.OPEN)
        .exclude(_answered_by(user))
        .exclude(_skipped_by(user))  # task_next_for offers them again when nothing else is left
        .annotate(team_count=Coalesce(Subquery(team_answers), 0), team_held=Coalesce(Subquery(team_held), 0))
        .filter(team_count__lt=campaign.calibration_answers_per_team - F("team_held"))
    )


def tag_next_for(*, user, campaign: Campaign, seed: int) -> Task | None:
    """Hand `user` their next product task in an attributes campaign, leased for campaign.lease_seconds.

    A person in one of campaign.calibration_teams first gets the calibration tasks (is_calibration,
    open) they have not answered and on which their team still has fewer than
    calibration_answers_per_team live answers (other team members' live leases counted), in the
    session's shuffle order from `seed`. Everything else goes through `services.task_next_for`
    (held lease, gold, most useful task): its overlap cap (overlap_max answers) would otherwise let
    the first team fill a calibration task and starve the second.

    A live lease on an open task the person has not answered is honoured first, as task_next_for
    does, so a reload never skips work.

    Locks: the chosen calibration Task row (select_for_update skip_locked on PostgreSQL). Idempotent
    while the lease lives.

    Returns the Task, or None when nothing is left for this person.

    Raises:
        AnnotatorPaused: an admin paused this person in this campaign.
        WrongCampaignKind: `campaign` is a match campaign.
    """
    if campaign.kind != Campaign.Kind.ATTRIBUTES:
        raise WrongCampaignKind(f"campaign {campaign.slug} is a match campaign: its tasks are photos, not products.")
    seed %= SHUFFLE_SPACE
    team_id = (
        TeamMember.objects.filter(user=user, team__calibration_campaigns=campaign)
        .values_list("team_id", flat=True)
        .first()
    )
    if team_id is not None:
        now = timezone.now()
        with transaction.atomic():
            stats = annotator_stats_for(user=user, campaign=campaign)
            holds_work = (
                Lease.objects.filter(
                    annotator=user, expires_at__gt=now, task__campaign=campaign, task__status=Task.Status.OPEN
                )
                .exclude(Exists(Answer.objects.filter(task=OuterRef("task"), annotator=user, revoked_at__isnull=True)))
                .exists()
            )
            # Paused people and held leases: task_next_for raises, or hands the held task back.
            if not (stats is not None and stats.is_paused) and not holds_work:
                queryset = _calibration_open_for(user=user, campaign=campaign, team_id=team_id, now=now)
                task = _first_from_seed(queryset.select_for_update(skip_locked=True, of=("self",)), seed)
                if task is not None:
                    Lease.objects.filter(annotator=user, task__campaign=campaign).delete()
                    Lease.objects.create(
                        task=task, annotator=user, expires_at=now + timedelta(seconds=campaign.lease_seconds)
                    )
                    return task
    return task_next_for(user=user, campaign=campaign, seed=seed)


def tag_undo_last(*, user, campaign: Campaign) -> Task | None:
    """Revoke `user`'s most recent answer in the attributes campaign `campaign` (within
    services.UNDO_WINDOW, as the verify page's undo) and lease its product back to them, so it is
    their next task. The answer row and its values are kept with revoked_at set; the product's
    answer count and every attribute's consensus are recomputed without it (tag_consensus_update),
    the task reopens for its owner, and the campaign is marked dirty for the full recompute (each
    tagger's reliability). Tagging answers earn no points (gamify counts match campaigns only), so
    there are none to take back.

    One transaction; locks the task row. Returns the task, or None when there is nothing to undo.

    Raises:
        WrongCampaignKind: `campaign` is a match campaign (services.answer_undo_last undoes those).
    """
    if campaign.kind != Campaign.Kind.ATTRIBUTES:
        raise WrongCampaignKind(f"campaign {campaign.slug} is a match campaign: undo its answers on the verify page.")
    now = timezone.now()
    with transaction.atomic():
        answer = undo_candidate(user=user, campaign=campaign, now=now)
        if answer is None:
            return None
        task = (
            Task.objects.select_for_update(of=("self",))
            .select_related("campaign", "product__master_category")
            .get(pk=answer.task_id)
        )
        task.campaign = campaign
        Answer.objects.filter(pk=answer.pk).update(revoked_at=now)
        _stats_on_undo(user=user, campaign=campaign)
        live = Answer.objects.filter(task=task, revoked_at__isnull=True).count()
        Task.objects.filter(pk=task.pk).update(answer_count=live, consensus_version=F("consensus_version") + 1)
        task.answer_count = live
        tag_consensus_update(task=task, attributes=campaign_attributes(campaign))
        undone_task_lease_back(user=user, task=task, campaign=campaign, now=now)
        Campaign.objects.filter(pk=campaign.pk, consensus_dirty=False).update(consensus_dirty=True)
        task.refresh_from_db()
        task.campaign = campaign
    return task
