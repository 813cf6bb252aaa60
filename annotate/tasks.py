"""Celery tasks of annotate. Each takes ids, re-fetches rows and calls one service."""

from celery import shared_task

from mlcore.services import EmbeddingsMissing

from . import services
from .models import Campaign


@shared_task(name="annotate.campaign_tasks_build", acks_late=True, ignore_result=True)
def campaign_tasks_build_task(campaign_id: int) -> None:
    """Create tasks with top-3 candidates for every embedded photo of the campaign. Idempotent."""
    try:
        services.campaign_tasks_build(campaign_id=campaign_id)
    except EmbeddingsMissing as exc:
        Campaign.objects.filter(pk=campaign_id).update(status=Campaign.Status.FAILED, status_detail=str(exc))
