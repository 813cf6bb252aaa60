"""Annotation reads, permission-checked and with their related rows fetched in bulk."""

from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Prefetch, Q, Sum
from django.http import Http404
from django.utils import timezone

from catalog.models import ProductImage
from mlcore.models import EmbeddingRun

from . import roles
from .models import AnnotatorStats, Answer, Campaign, ExportSnapshot, Task, TaskCandidate


class CampaignKindMismatch(Http404):
    """The campaign or task exists but is of the other kind (a match endpoint asked for an attributes
    campaign's product task, or the reverse). A 404 on HTML pages; the API answers 404 with `code`."""

    code = "wrong_campaign_kind"


def campaign_kind_check(campaign: Campaign, kind: str) -> None:
    """For getters: raises CampaignKindMismatch unless `campaign` is of `kind` (a Campaign.Kind value)."""
    if campaign.kind != kind:
        where = "/verify/<slug>/ and /api/v1/" if campaign.kind == Campaign.Kind.MATCH else "/tag/<slug>/"
        raise CampaignKindMismatch(
            f"“{campaign.slug}” is {_KIND_NAMES[campaign.kind]}, not {_KIND_NAMES[kind]}: it is answered at {where}."
        )


_KIND_NAMES = {Campaign.Kind.MATCH: "a match campaign", Campaign.Kind.ATTRIBUTES: "an attributes campaign"}


def _require_verifier(user) -> None:
    if not roles.user_has_role(user, *roles.VERIFY_ROLES):
        raise PermissionDenied("Verifying matches needs the employee or admin role.")


def campaigns_for_user(user):
    """Campaigns `user` may verify, newest first (empty for other roles)."""
    if not roles.user_has_role(user, *roles.VERIFY_ROLES):
        return Campaign.objects.none()
    return (
        Campaign.objects.filter(kind=Campaign.Kind.MATCH).exclude(status=Campaign.Status.PAUSED).order_by("-created_at")
    )


def tag_campaigns_for_user(user):
    """Attribute campaigns `user` may see on the home page, newest first: to tag (taggers, admins) or
    for their agreement report (ML team); empty for other roles."""
    if not roles.user_has_role(user, roles.TAGGER, roles.ADMIN, roles.ML):
        return Campaign.objects.none()
    return (
        Campaign.objects.filter(kind=Campaign.Kind.ATTRIBUTES)
        .exclude(status=Campaign.Status.PAUSED)
        .order_by("-created_at")
    )


def get_campaign_for_user(user, slug: str) -> Campaign:
    """The match campaign `slug` if `user` may verify it.

    Raises:
        PermissionDenied: the user lacks the employee/admin role.
        CampaignKindMismatch: `slug` is an attributes campaign (a 404).
        Http404: no such campaign, or it is paused.
    """
    _require_verifier(user)
    campaign = Campaign.objects.select_related("model_version").filter(slug=slug).first()
    if campaign is None or campaign.status == Campaign.Status.PAUSED:
        raise Http404("No such campaign.")
    campaign_kind_check(campaign, Campaign.Kind.MATCH)
    return campaign


def get_campaign_for_admin(user, slug: str) -> Campaign:
    """The campaign `slug` (paused ones too) if `user` is an admin.

    Raises:
        PermissionDenied: the user lacks the admin role.
        Http404: no such campaign.
    """
    if not roles.user_has_role(user, roles.ADMIN):
        raise PermissionDenied("This page is for admins.")
    campaign = Campaign.objects.filter(slug=slug).first()
    if campaign is None:
        raise Http404("No such campaign.")
    return campaign


def annotator_stats_of(user):
    """`user`'s own stats rows, one per campaign they answered in, newest campaign first."""
    return AnnotatorStats.objects.filter(annotator=user).select_related("campaign").order_by("-campaign__created_at")


def annotator_agreement(*, annotators=None, campaign: Campaign | None = None) -> dict:
    """Agreement with the consensus, the one definition every page shows (your stats, the annotators
    page, your impact; issue 16 found "agreement —" on one and 0.95 on another): of the answers on
    regular tasks that 2+ people answered, the share equal to the settled label, from the last full
    recompute (AnnotatorStats.agreement_count / agreement_total). A task one person settled alone
    agrees with itself, and a gold task is a check, so neither counts.

    Args:
        annotators: a user, a queryset or list of users, or None for everyone.
        campaign: one campaign, or None for all of them.

    Returns:
        {"agree": int, "total": int, "share": agree / total in [0, 1] or None when total is 0}.
        One aggregate query.
    """
    rows = AnnotatorStats.objects.all()
    if campaign is not None:
        rows = rows.filter(campaign=campaign)
    if annotators is not None:
        if hasattr(annotators, "pk"):
            rows = rows.filter(annotator=annotators)
        else:
            rows = rows.filter(annotator__in=annotators)
    sums = rows.aggregate(agree=Sum("agreement_count"), total=Sum("agreement_total"))
    agree, total = sums["agree"] or 0, sums["total"] or 0
    return {"agree": agree, "total": total, "share": agree / total if total else None}


def campaign_annotators(campaign: Campaign):
    """Every annotator's stats in `campaign`: flagged and paused first, then by answers (2 queries
    with the campaign)."""
    rows = list(AnnotatorStats.objects.filter(campaign=campaign).select_related("annotator"))
    rows.sort(key=lambda s: (not s.is_paused, not s.flags, -s.answer_count, s.annotator.username))
    return rows


def campaign_counts(campaign: Campaign) -> dict:
    """The campaign's task figures, the one source for every page that shows them (the verify page's
    header, the annotators page, the announcement page and email): issue 16 found "16 of 1324
    settled" on one page and "16 of 1284" on another, and "matched 0" against 3.

    Regular tasks only count as tasks: gold tasks are checks with a known answer and never settle.
    Returns {"task_count": regular tasks, "complete_count": of them settled, "matched_count": of
    them settled on a product (label "1".."9"), "answered_count": of them with an answer,
    "gold_count": gold tasks}. One aggregate query.
    """
    regular = Q(is_gold=False)
    settled = regular & Q(status=Task.Status.COMPLETE)
    return Task.objects.filter(campaign=campaign).aggregate(
        task_count=Count("pk", filter=regular),
        complete_count=Count("pk", filter=settled),
        matched_count=Count("pk", filter=settled & Q(label__in=[str(r) for r in range(1, 10)])),
        answered_count=Count("pk", filter=regular & Q(answer_count__gt=0)),
        gold_count=Count("pk", filter=Q(is_gold=True)),
    )


def campaign_consensus_summary(campaign: Campaign) -> dict:
    """Counts for the annotators page: campaign_counts (regular tasks, settled, matched, answered,
    gold)."""
    return campaign_counts(campaign)


def _task_queryset():
    return Task.objects.select_related("photo", "campaign", "suggestions_withheld_by").prefetch_related(
        Prefetch(
            "candidates",
            queryset=TaskCandidate.objects.select_related("product", "product__retailer").prefetch_related(
                Prefetch("product__images", queryset=ProductImage.objects.order_by("position", "pk"))
            ),
        ),
    )


def task_with_candidates(task_id: int) -> Task:
    """A task with its photo, campaign, the head that withheld its suggestions (if any) and its
    candidates (product, retailer, images) in 4 queries (2 when it has no candidates)."""
    return _task_queryset().get(pk=task_id)


def _task_by_uuid(uuid) -> Task:
    try:
        return _task_queryset().get(uuid=uuid)
    except (Task.DoesNotExist, ValidationError, ValueError, TypeError):
        raise Http404("No such task.") from None


def get_task_for_user(user, uuid) -> Task:
    """The match task (a photo) `uuid` with its candidates, if `user` may answer it.

    Raises:
        PermissionDenied: the user lacks the employee/admin role.
        CampaignKindMismatch: the task is a product task of an attributes campaign (a 404).
        Http404: no such task (or a malformed uuid).
    """
    _require_verifier(user)
    task = _task_by_uuid(uuid)
    campaign_kind_check(task.campaign, Campaign.Kind.MATCH)
    return task


def get_task_for_gold_editor(user, uuid) -> Task:
    """The match task `uuid` if `user` may set gold answers (ML team or admin).

    Raises:
        PermissionDenied: the user lacks the ml/admin role.
        CampaignKindMismatch: the task belongs to an attributes campaign (a 404).
        Http404: no such task (or a malformed uuid).
    """
    if not roles.user_has_role(user, roles.ML, roles.ADMIN):
        raise PermissionDenied("Gold answers are set by the ML team or admins.")
    task = _task_by_uuid(uuid)
    # Gold answers are match labels (campaign.labels()); attribute campaigns use calibration instead.
    campaign_kind_check(task.campaign, Campaign.Kind.MATCH)
    return task


def campaign_progress(campaign: Campaign) -> dict:
    """Counts for the campaign header and the preparing screen: regular (not gold) tasks and how many
    settled, live answers, the latest embedding run per target (a running one before a newer one
    still queued behind it) and, while preparing, `eta_s` (preparation_eta_s).

    Returns {"task_count", "complete_count", "answer_count", "runs": [EmbeddingRun, ...], "eta_s"}.
    """
    counts = campaign_counts(campaign)
    counts = {"task_count": counts["task_count"], "complete_count": counts["complete_count"]}
    counts["answer_count"] = Answer.objects.filter(task__campaign=campaign, revoked_at__isnull=True).count()
    runs = []
    if campaign.model_version_id:
        latest = {}
        for run in EmbeddingRun.objects.filter(model_version_id=campaign.model_version_id).order_by("-created_at")[:10]:
            shown = latest.get(run.target)
            queued_behind = shown is not None and shown.status == EmbeddingRun.Status.PENDING
            if shown is None or (queued_behind and run.status == EmbeddingRun.Status.RUNNING):
                latest[run.target] = run
        runs = [latest[t] for t in (EmbeddingRun.Target.PRODUCTS, EmbeddingRun.Target.PHOTOS) if t in latest]
    counts["runs"] = runs
    counts["eta_s"] = preparation_eta_s(campaign, runs) if campaign.status == Campaign.Status.PREPARING else None
    return counts


def preparation_eta_s(campaign: Campaign, runs: list) -> float | None:
    """Seconds until a preparing campaign's suggestions are ready, from what is left to embed and the
    embedding rate measured so far: (products + photos without an embedding) / images per second of
    the running run (else the latest finished one of the same model). The task build after it takes
    a few seconds more and is left out. None while no rate has been measured (the first chunk) or
    nothing is left to embed. The rate is the run's average since it started, which is low while the
    demo still generates its photos beside it: demo_progress uses the rate between its own polls."""
    rate = next((r.images_per_s for r in runs if r.status == EmbeddingRun.Status.RUNNING and r.images_per_s), None)
    if rate is None:
        rate = (
            EmbeddingRun.objects.filter(
                model_version_id=campaign.model_version_id, status=EmbeddingRun.Status.DONE, images_per_s__gt=0
            )
            .order_by("-finished_at")
            .values_list("images_per_s", flat=True)
            .first()
        )
    if not rate:
        return None
    left = preparation_left(campaign)
    return left / rate if left else None


def preparation_left(campaign: Campaign) -> int:
    """Products and photos that still lack an embedding for the campaign's model (2 count queries
    and 2 for the totals)."""
    from catalog.models import Photo, Product
    from mlcore.models import PhotoEmbedding, ProductEmbedding

    version_id = campaign.model_version_id
    products = Product.objects.filter(is_active=True, images__isnull=False).distinct().count()
    left = max(0, products - ProductEmbedding.objects.filter(model_version_id=version_id).count())
    return left + max(0, Photo.objects.count() - PhotoEmbedding.objects.filter(model_version_id=version_id).count())


def annotator_today_count(user, campaign: Campaign) -> int:
    """Answers `user` gave in `campaign` since midnight (server time zone), undone ones excluded."""
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    return Answer.objects.filter(
        annotator=user, task__campaign=campaign, revoked_at__isnull=True, created_at__gte=midnight
    ).count()


# -- exports -----------------------------------------------------------------------------------------

EXPORT_ROLES = (roles.ML, roles.ADMIN)


def _require_exporter(user) -> None:
    if not roles.user_has_role(user, *EXPORT_ROLES):
        raise PermissionDenied("Exports are for the ML team and admins.")


def snapshots_for_user(user):
    """Export snapshots, newest first, with their creator (1 query).

    Raises:
        PermissionDenied: the user lacks the ml/admin role.
    """
    _require_exporter(user)
    return ExportSnapshot.objects.select_related("created_by").order_by("-created_at", "-id")


def get_snapshot_for_user(user, snapshot_uuid) -> ExportSnapshot:
    """The snapshot `snapshot_uuid` if `user` may download exports.

    Raises:
        PermissionDenied: the user lacks the ml/admin role.
        Http404: no such snapshot.
    """
    _require_exporter(user)
    snapshot = ExportSnapshot.objects.select_related("created_by").filter(uuid=snapshot_uuid).first()
    if snapshot is None:
        raise Http404("No such export.")
    return snapshot


def get_campaign_for_exporter(user, slug: str) -> Campaign:
    """The campaign `slug` (any status) if `user` may read its raw answers.

    Raises:
        PermissionDenied: the user lacks the ml/admin role.
        Http404: no such campaign.
    """
    _require_exporter(user)
    campaign = Campaign.objects.filter(slug=slug).first()
    if campaign is None:
        raise Http404("No such campaign.")
    return campaign


# -- agreement report (attribute campaigns) ----------------------------------------------------------

REPORT_ROLES = (roles.ML, roles.ADMIN)
NO_TEAM = "no team"


def get_attribute_campaign_for_reporter(user, slug: str) -> Campaign:
    """The attributes campaign `slug` if `user` may read its agreement report (ML team, admins).

    Raises:
        PermissionDenied: the user lacks the ml/admin role (taggers see only their own answers).
        Http404: no such attributes campaign.
    """
    if not roles.user_has_role(user, *REPORT_ROLES):
        raise PermissionDenied("The agreement report is for the ML team and admins.")
    campaign = Campaign.objects.filter(slug=slug, kind=Campaign.Kind.ATTRIBUTES).first()
    if campaign is None:
        raise Http404("No such attributes campaign.")
    return campaign


def campaign_agreement_answers(campaign: Campaign):
    """Every live, counted (not too fast) attribute answer of `campaign` as a DataFrame with the
    columns annotate.agreement expects: item (task id), rater (annotator id), group (team slug, or
    "no team"), attribute (slug), value (str; multi choice a frozenset of options; ordinal an int),
    plus is_calibration (bool). One query, read in chunks."""
    import pandas as pd

    from catalog.models import Attribute

    from .models import AttributeAnswer

    kinds = dict(campaign.attributes.values_list("slug", "kind"))
    rows = (
        AttributeAnswer.objects.filter(
            answer__task__campaign=campaign, answer__revoked_at__isnull=True, answer__is_too_fast=False
        )
        .order_by()
        .values_list(
            "answer__task_id",
            "answer__annotator_id",
            "answer__annotator__team_membership__team__slug",
            "attribute__slug",
            "value",
            "answer__task__is_calibration",
        )
    )
    records = []
    for item, rater, team, slug, value, is_calibration in rows.iterator(chunk_size=10_000):
        kind = kinds.get(slug)
        if kind == Attribute.Kind.MULTI:
            value = frozenset(v for v in value.split("|") if v)
        elif kind == Attribute.Kind.ORDINAL:
            value = int(value)
        records.append((item, rater, team or NO_TEAM, slug, value, bool(is_calibration)))
    return pd.DataFrame.from_records(
        records, columns=["item", "rater", "group", "attribute", "value", "is_calibration"]
    ), kinds


def campaign_agreement_report(campaign: Campaign) -> dict:
    """The agreement report of an attributes campaign: Krippendorff's alpha and Fleiss' kappa per
    attribute over everyone, each team and each pair of teams (annotate.agreement.agreement_rows),
    and the style-persona views over the calibration sample (all tasks when none is marked).

    Returns {"rows": [...], "persona": PersonaViews | None, "answer_count", "item_count",
    "calibration_item_count", "teams": [...]}.
    """
    from . import agreement

    frame, kinds = campaign_agreement_answers(campaign)
    rows = agreement.agreement_rows(frame, attributes=kinds) if len(frame) else []
    persona_slugs = {f"persona_{p}": p for p in agreement.PERSONAS}
    personas = frame[frame["attribute"].isin(list(persona_slugs))]
    calibration = personas[personas["is_calibration"]]
    if len(calibration):
        personas = calibration
    persona = None
    if len(personas):
        personas = personas.assign(attribute=personas["attribute"].map(persona_slugs))
        persona = agreement.persona_views(personas.drop(columns=["is_calibration"]), personas=agreement.PERSONAS)
    return {
        "rows": rows,
        "persona": persona,
        "answer_count": len(frame),
        "item_count": int(frame["item"].nunique()) if len(frame) else 0,
        "calibration_item_count": int(frame.loc[frame["is_calibration"], "item"].nunique()) if len(frame) else 0,
        "teams": sorted(frame["group"].unique()) if len(frame) else [],
    }


def campaign_tagger_reliability(campaign: Campaign) -> dict:
    """Each tagger's reliability per attribute from the last full recompute (AttributeReliability).

    Returns {"attributes": [slug, ...] in form order, "rows": [{"annotator", "team", "cells":
    [{"accuracy": float in [0, 1], "answer_count": int, "agreement": float | None} | None per
    attribute]}], "records": flat rows for CSV, "computed_at"}. Two queries.
    """
    from .models import AttributeReliability

    reliability = list(
        AttributeReliability.objects.filter(campaign=campaign)
        .select_related("annotator__team_membership__team", "attribute")
        .order_by("annotator__username", "attribute__position", "attribute__slug")
    )
    slugs = [a.slug for a in sorted({r.attribute for r in reliability}, key=lambda a: (a.position, a.slug))]
    people: dict[int, dict] = {}
    records = []
    for r in reliability:
        membership = getattr(r.annotator, "team_membership", None)
        team = membership.team.name if membership else ""
        row = people.setdefault(
            r.annotator_id, {"annotator": r.annotator.username, "team": team, "cells": [None] * len(slugs)}
        )
        agreement = r.agreement_count / r.agreement_total if r.agreement_total else None
        row["cells"][slugs.index(r.attribute.slug)] = {
            "accuracy": r.accuracy,
            "answer_count": r.answer_count,
            "agreement": agreement,
        }
        records.append(
            {
                "annotator": r.annotator.username,
                "team": team,
                "attribute": r.attribute.slug,
                "accuracy": round(r.accuracy, 6),
                "answer_count": r.answer_count,
                "agreement_total": r.agreement_total,
                "agreement_count": r.agreement_count,
            }
        )
    return {
        "attributes": slugs,
        "rows": list(people.values()),
        "records": records,
        "computed_at": max((r.computed_at for r in reliability), default=None),
    }
