"""The beat sweep that makes every job finish: rows waiting for a job whose message was lost (a
killed worker, a broker outage) are sent again. See docs/operations.md, "Outages and recovery".

Each row kind has its own rule, all idempotent (a duplicate message finds its row claimed or done):

- TrainingRun (tagging, matching head, matching CNN): mlcore.training.training_runs_recover.
- EmbeddingRun: a stale RUNNING one is failed (mlcore.jobs.embedding_runs_recover); the campaign
  that waits for it is prepared again below, which starts a new run for what is still missing.
- ExportSnapshot (exports and nothing else: training snapshots are written inline by their
  retrain): annotate.exports.services.exports_recover.
- A match campaign stuck in PREPARING: `campaigns_recover`.
- A promoted matching CNN that never became its campaign's model: annotate.learning.
  backbones_unapplied_resume (run with learning_due).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from .models import Campaign

logger = logging.getLogger(__name__)

# A PREPARING campaign whose embedding runs have shown no sign of life for this long is prepared again.
PREPARE_STALLED_AFTER = timedelta(minutes=10)


def campaigns_recover(*, now=None) -> list[Campaign]:
    """Prepare again (annotate.services.campaign_prepare) every match campaign still PREPARING whose
    suggestion pipeline was lost: it was prepared (its embedding model has embedding runs) but none of
    those runs was created, beat (RUNNING) or finished (DONE) within PREPARE_STALLED_AFTER; a FAILED
    run (a lost worker's, failed by mlcore.jobs.embedding_runs_recover, or an error) is retried this
    way too. campaign_prepare is safe to repeat: each step does only what is missing. A campaign
    never prepared is left alone.
    Returns the campaigns prepared again."""
    from mlcore.models import EmbeddingRun

    from .services import campaign_prepare

    now = now or timezone.now()
    quiet_since = now - PREPARE_STALLED_AFTER
    recovered = []
    for campaign in Campaign.objects.filter(kind=Campaign.Kind.MATCH, status=Campaign.Status.PREPARING).select_related(
        "model_version"
    ):
        runs = EmbeddingRun.objects.filter(model_version_id=campaign.model_version_id)
        if not runs.exists():
            continue
        alive = (
            Q(created_at__gte=quiet_since)
            | Q(status=EmbeddingRun.Status.RUNNING, heartbeat_at__gte=quiet_since)
            | Q(status=EmbeddingRun.Status.DONE, finished_at__gte=quiet_since)
        )
        if runs.filter(alive).exists():
            continue
        logger.info("campaign %s: its suggestion pipeline was lost; preparing it again", campaign.slug)
        campaign_prepare(campaign=campaign)
        recovered.append(campaign)
    return recovered


def jobs_recover() -> dict[str, int]:
    """Run every sweep above once (Celery beat, annotate.jobs_recover, every
    settings.FITCHECK_JOBS_RECOVER_S seconds). Idempotent; a broker outage is logged, not raised
    (the next sweep tries again).

    Returns {"embedding_runs_failed", "training_runs", "exports", "campaigns"}: rows failed or sent
    again by each.
    """
    from mlcore import training
    from mlcore.jobs import embedding_runs_recover

    from .exports.services import exports_recover

    return {
        "embedding_runs_failed": embedding_runs_recover(),
        "training_runs": training.training_runs_recover(),
        "exports": exports_recover(),
        "campaigns": len(campaigns_recover()),
    }
