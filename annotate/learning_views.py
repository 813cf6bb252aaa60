"""The ML team's page of the learning loop (annotate.learning): per attribute campaign, the active
and past models with their metrics per attribute, coverage at the target precision, labels the model
settled ("humans saved"), the audit sample's precision, and the training runs with their curves;
retrain and roll back."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from mlcore import training
from mlcore.models import TrainingRun

from . import learning, selectors
from .models import Campaign


def _curve(history: list[dict], key: str, *, width: int = 320, height: int = 80) -> dict | None:
    """SVG polyline points of `key` over a run's epochs (image stage then text stage, in order)."""
    values = [h[key] for h in history if h.get(key) is not None]
    if len(values) < 2:
        return None
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - (v - low) / span * height:.1f}" for i, v in enumerate(values))
    return {"points": points, "low": low, "high": high, "width": width, "height": height}


@login_required
@require_GET
def learning_page(request):
    """ML team and admins: the learning loop of every attribute campaign, and the matching heads of
    every match campaign with the photos each one withheld suggestions from."""
    selectors.snapshots_for_user(request.user)  # the ml/admin check
    sections, matching = [], []
    for campaign in Campaign.objects.order_by("name"):
        if campaign.kind == Campaign.Kind.ATTRIBUTES:
            report = learning.learning_report(campaign=campaign)
            sections.append({"campaign": campaign, "report": report})
        else:
            report = learning.matching_report(campaign=campaign)
            matching.append({"campaign": campaign, "report": report})
        # A section with a run pending or running polls itself (htmx), so progress and curves move live.
        (sections if campaign.kind == Campaign.Kind.ATTRIBUTES else matching)[-1]["busy"] = any(
            run.status in (TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING) for run in report["runs"]
        )
        for run in report["runs"]:
            history = run.history or []
            run.loss_curve = _curve(history, "train_loss")
            run.accuracy_curve = _curve(
                [
                    {"acc": sum(h["val_accuracy"].values()) / len(h["val_accuracy"])}
                    for h in history
                    if h["val_accuracy"]
                ],
                "acc",
            )
    return render(request, "annotate/learning.html", {"sections": sections, "matching": matching})


@login_required
@require_POST
def learning_retrain(request, slug):
    """Start a retrain of the campaign now (ML team and admins)."""
    return _retrain(request, slug, learning.retrain_start, "Retraining {name}: the run shows below.")


@login_required
@require_POST
def matching_retrain(request, slug):
    """Retrain a match campaign from its verified photos (ML team and admins): stage 2 of its matching
    CNN when one serves it (learning.matching_finetune_start), else the matching head."""
    campaign = selectors.get_campaign_for_exporter(request.user, slug)
    if learning.serving_cnn(campaign) is not None:
        return _retrain(
            request,
            slug,
            learning.matching_finetune_start,
            "Fine-tuning the matching CNN of {name} on its verified photos: the run shows below.",
            campaign=campaign,
        )
    return _retrain(
        request,
        slug,
        learning.matching_retrain_start,
        "Retraining the matching head of {name}: the run shows below.",
        campaign=campaign,
    )


@login_required
@require_POST
def matching_pretrain(request, slug):
    """Train a match campaign's matching CNN on its catalog again (stage 1; ML team and admins), when a
    pretrained embedding still serves it (learning.matching_pretrain_start)."""
    return _retrain(
        request,
        slug,
        learning.matching_pretrain_start,
        "Training the matching CNN of {name} on its catalog: the run shows below.",
    )


def _retrain(request, slug, start, success: str, *, campaign=None):
    """Run `start` (a learning.*_start service) for campaign `slug`; a refusal becomes a message."""
    campaign = campaign or selectors.get_campaign_for_exporter(request.user, slug)
    try:
        with transaction.atomic():
            start(campaign=campaign, reason=f"by {request.user.get_username()}", created_by=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, success.format(name=campaign.name))
    return redirect("annotate:learning")


@login_required
@require_POST
def learning_rollback(request, slug):
    """Make the previously active model of the campaign active again (ML team and admins): its tagging
    model, or for a match campaign its matching CNN (whose embedding is then applied again)."""
    campaign = selectors.get_campaign_for_exporter(request.user, slug)
    match = campaign.kind == Campaign.Kind.MATCH
    scope = learning.backbone_scope_of(campaign) if match else learning.scope_of(campaign)
    restored = training.rollback(scope=scope)
    if restored is None:
        messages.error(request, "There is no earlier model to roll back to.")
    else:
        messages.success(request, f"{restored.name} is active again.")
    return redirect("annotate:learning")
