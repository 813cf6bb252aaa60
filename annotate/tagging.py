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
from datetime import timedelta

import numpy as np
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from catalog.attribute_schema import attribute_applies
from catalog.models import Attribute, Product

from . import roles
from .consensus import em
from .models import Answer, AttributeAnswer, AttributeLabel, Campaign, Lease, Task, TeamMember
from .services import (
    SHUFFLE_SPACE,
    AnnotatorPaused,
    AnswerConflict,
    AnswerInvalid,
    _answered_by,
    _first_from_seed,
    _stats_on_answer,
    annotator_stats_for,
    task_next_for,
)

TAG_ROLES = (roles.TAGGER, roles.ADMIN)


def campaign_attributes(campaign: Campaign) -> list[Attribute]:
    """The campaign's attributes in form order, with options and applies_to prefetched (3 queries)."""
    return list(campaign.attributes.prefetch_related("options", "applies_to").order_by("position", "slug"))


def attributes_for_product(*, attributes: list[Attribute], product: Product) -> list[Attribute]:
    """Of `attributes` (campaign_attributes), those that apply to the product's master category."""
    path = product.master_category.path if product.master_category_id else None
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


def tag_values_clean(*, attributes: list[Attribute], values: dict) -> dict[int, str]:
    """Check a submitted form against the attributes that apply: every one answered, nothing else,
    each value one of its values. Returns {attribute id: stored value} (multi choice: the selected
    options in option order joined by "|", "" for none).

    Raises:
        AnswerInvalid: reasons per attribute slug.
    """
    errors: dict[str, list[str]] = {}
    by_slug = {a.slug: a for a in attributes}
    for slug in sorted(set(values) - set(by_slug)):
        errors[slug] = ["does not apply to this product"]
    cleaned: dict[int, str] = {}
    for attribute in attributes:
        raw = values.get(attribute.slug)
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
        values: {attribute slug: value}; multi choice takes a list (or "a|b"); every attribute that
            applies to the product must be present.
        duration_ms: time from the product appearing to the submit, in ms.
        suggestions: {attribute slug: (value, confidence)} the model pre-filled, recorded beside each
            value so confirmations and corrections can be told apart.

    Returns (answer, created); a repeated idempotency key returns the first answer, created False.
    Locks the task row. Idempotent per (user, idempotency_key).

    Raises:
        PermissionDenied: the user lacks the tagger/admin role.
        AnswerInvalid: bad values, per attribute.
        AnswerConflict: "already_answered" (this person answered this product), "task_complete".
    """
    from django.core.exceptions import PermissionDenied

    if not roles.user_has_role(user, *TAG_ROLES):
        raise PermissionDenied("Tagging needs the tagger or admin role.")
    campaign = task.campaign
    previous = Answer.objects.filter(annotator=user, idempotency_key=idempotency_key).first()
    if previous is not None:
        return previous, False
    stats = annotator_stats_for(user=user, campaign=campaign)
    if stats is not None and stats.is_paused:
        raise AnnotatorPaused()
    attributes = attributes_for_product(attributes=campaign_attributes(campaign), product=task.product)
    cleaned = tag_values_clean(attributes=attributes, values=values)
    suggestions = suggestions or {}
    by_id = {a.pk: a for a in attributes}
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
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
        Task.objects.filter(pk=locked.pk).update(answer_count=locked.answer_count + 1)
        locked.answer_count += 1
        tag_consensus_update(task=locked, attributes=attributes)
    return answer, True


def _aggregate(attribute: Attribute, values: list[str], weights: np.ndarray) -> tuple[str, dict, float]:
    """(label, posterior, confidence) of one attribute from its answers' values and weights."""
    domain = attribute.values()
    if attribute.kind == Attribute.Kind.SINGLE:
        K = len(domain)
        index = {v: i for i, v in enumerate(domain)}
        labels = np.array([index[v] for v in values], dtype=np.int64)
        pooled = em.default_pooled(K)
        posterior = em.task_posterior(
            labels, np.repeat(pooled[None], len(labels), axis=0), np.full(K, 1.0 / K), vote_weight=weights
        )
        best = int(np.argmax(posterior))
        return (
            domain[best],
            {v: round(float(p), 6) for v, p in zip(domain, posterior, strict=True)},
            float(posterior[best]),
        )
    if attribute.kind == Attribute.Kind.ORDINAL:
        ratings = np.array([int(v) for v in values])
        total = float(weights.sum())
        if total <= 0:
            return "", {}, 0.0
        order = np.argsort(ratings, kind="stable")
        cumulative = np.cumsum(weights[order])
        median = int(ratings[order][np.searchsorted(cumulative, total / 2)])
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


def tag_consensus_update(*, task: Task, attributes: list[Attribute]) -> list[AttributeLabel]:
    """Recompute every attribute label of `task` from its live answers and write them (upserts on
    (task, attribute)), then the task's status: complete when every attribute has settled and, for
    a calibration task, every calibration team has given its answers. Call inside the answer's
    transaction with the task locked."""
    campaign = task.campaign
    rows = list(
        AttributeAnswer.objects.filter(answer__task=task, answer__revoked_at__isnull=True).values_list(
            "attribute_id", "value", "answer__is_too_fast"
        )
    )
    labels = []
    for attribute in attributes:
        mine = [(v, 0.0 if too_fast else 1.0) for a, v, too_fast in rows if a == attribute.pk]
        values = [v for v, _ in mine]
        weights = np.array([w for _, w in mine], dtype=np.float64)
        count = int((weights > 0).sum())
        label, posterior, confidence = _aggregate(attribute, values, weights) if count else ("", {}, 0.0)
        settled = count >= campaign.overlap_max or (
            count >= campaign.overlap_min and confidence >= campaign.confidence_target
        )
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
    AttributeLabel.objects.bulk_create(
        labels,
        update_conflicts=True,
        unique_fields=["task", "attribute"],
        update_fields=["label", "posterior", "confidence", "answer_count", "is_settled", "updated_at"],
    )
    complete = bool(labels) and all(label.is_settled for label in labels)
    if complete and task.is_calibration:
        complete = calibration_done(task=task)
    status = Task.Status.COMPLETE if complete else Task.Status.OPEN
    if status != task.status:
        Task.objects.filter(pk=task.pk).update(status=status, completed_at=timezone.now() if complete else None)
        task.status = status
    return labels


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
        Http404: no such attributes campaign, or it is paused.
    """
    if not roles.user_has_role(user, *TAG_ROLES):
        raise PermissionDenied("Tagging needs the tagger or admin role.")
    campaign = Campaign.objects.filter(slug=slug, kind=Campaign.Kind.ATTRIBUTES).first()
    if campaign is None or campaign.status == Campaign.Status.PAUSED:
        raise Http404("No such attributes campaign.")
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
    """
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
