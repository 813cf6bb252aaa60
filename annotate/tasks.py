"""Celery tasks of annotate. Each takes ids, re-fetches rows and calls one service."""

from celery import shared_task

from mlcore.services import EmbeddingsMissing

from . import services
from .consensus import services as consensus_services
from .exports import services as export_services
from .models import Campaign


@shared_task(name="annotate.campaign_tasks_build", acks_late=True, ignore_result=True)
def campaign_tasks_build_task(campaign_id: int) -> None:
    """Create tasks with top-3 candidates for every embedded photo of the campaign. Idempotent."""
    try:
        services.campaign_tasks_build(campaign_id=campaign_id)
    except EmbeddingsMissing as exc:
        Campaign.objects.filter(pk=campaign_id).update(status=Campaign.Status.FAILED, status_detail=str(exc))


@shared_task(name="annotate.consensus_recompute", acks_late=True, ignore_result=True)
def consensus_recompute_task(campaign_id: int) -> None:
    """Full consensus over one campaign (EM), whatever its dirty flag. Idempotent."""
    consensus_services.consensus_recompute(campaign_id=campaign_id)


@shared_task(name="annotate.consensus_recompute_dirty", acks_late=True, ignore_result=True)
def consensus_recompute_dirty_task() -> None:
    """Run by Celery beat: full consensus over every campaign whose answers changed. Idempotent."""
    consensus_services.consensus_recompute_dirty()


@shared_task(name="annotate.demo_gold_mark", acks_late=True, ignore_result=True)
def demo_gold_mark_task(campaign_id: int, count: int) -> None:
    """Demo only: mark `count` tasks gold from the demo's ground truth. Idempotent."""
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is not None:
        services.gold_mark_demo(campaign=campaign, count=count)


@shared_task(name="annotate.export_build", acks_late=True, ignore_result=True)
def export_build_task(snapshot_id: int) -> None:
    """Build one gold-dataset export snapshot. Idempotent (a built or running snapshot is skipped)."""
    export_services.export_build(snapshot_id=snapshot_id)


@shared_task(name="annotate.learning_due", acks_late=True, ignore_result=True)
def learning_due_task() -> None:
    """Run by Celery beat: start a retrain for each learning campaign with enough new labels, stage 2
    of the matching CNN for each match campaign with enough new verified matches, and resume
    switching a match campaign to its promoted matching CNN when that chain was lost."""
    from . import learning

    learning.learning_due()
    learning.matching_finetune_due()
    learning.backbones_unapplied_resume()


@shared_task(name="annotate.jobs_recover", ignore_result=True)
def jobs_recover_task() -> None:
    """Run by Celery beat on queue default: send again the jobs whose rows wait for them (training
    runs, exports, campaign preparation) after a killed worker or a broker outage (annotate.recovery)."""
    from . import recovery

    recovery.jobs_recover()


@shared_task(name="annotate.learning_apply", acks_late=True, ignore_result=True)
def learning_apply_task(campaign_id: int) -> None:
    """After a model is activated: predict open tasks, auto-accept, re-rank (queue gpu: it runs the
    model). Idempotent: predictions and labels are upserts, settled tasks are skipped."""
    from . import learning

    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is not None:
        learning.predictions_apply(campaign=campaign)


@shared_task(name="annotate.matching_apply", acks_late=True, ignore_result=True)
def matching_apply_task(campaign_id: int) -> None:
    """After a matching head is activated: re-suggest products for open, unanswered photos (queue
    gpu). Idempotent: the same head gives the same candidates."""
    from . import learning

    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is not None:
        learning.matching_apply(campaign=campaign)


@shared_task(name="annotate.backbone_apply", acks_late=True, ignore_result=True)
def backbone_apply_task(campaign_id: int, version_id: int) -> None:
    """After a matching CNN is activated and its embeddings are made: switch the campaign to it and
    re-suggest open, unanswered photos (queue gpu). Idempotent."""
    from mlcore.models import ModelVersion

    from . import learning

    campaign = Campaign.objects.filter(pk=campaign_id).first()
    version = ModelVersion.objects.filter(pk=version_id).first()
    if campaign is not None and version is not None:
        learning.backbone_apply(campaign=campaign, version=version)
