"""Celery tasks of mlcore. Each takes ids, re-fetches rows and calls one service."""

from celery import shared_task

from . import services


@shared_task(name="mlcore.embed", acks_late=True, ignore_result=True)
def embed_run_task(run_id: int) -> None:
    """Embed the products or photos of EmbeddingRun `run_id` (queue gpu). Idempotent."""
    services.embedding_run_execute(run_id=run_id)


@shared_task(name="mlcore.train", acks_late=True, ignore_result=True)
def train_task(run_id: int) -> None:
    """Train TrainingRun `run_id` and promote its candidate if it beats the active model (queue gpu,
    concurrency 1). Idempotent and resumable: see mlcore.training.training_run_execute."""
    from . import training

    training.training_run_execute(run_id=run_id)


@shared_task(name="mlcore.matching_pretrain", acks_late=True, ignore_result=True)
def matching_pretrain_task(run_id: int) -> None:
    """Train the matching CNN of BACKBONE TrainingRun `run_id` on the catalog (stage 1) and promote it
    if it beats the serving model on held-out views (queue gpu). Idempotent and resumable from its
    per-epoch checkpoint: see mlcore.matching_pretrain and mlcore.training.training_run_execute."""
    from . import training

    training.training_run_execute(run_id=run_id)


@shared_task(name="mlcore.matching_finetune", acks_late=True, ignore_result=True)
def matching_finetune_task(run_id: int) -> None:
    """Fine-tune the matching CNN of stage-2 BACKBONE TrainingRun `run_id` on a campaign's verified
    photos and promote it if it beats the serving CNN on held-out verified matches (queue gpu).
    Idempotent and resumable from its per-epoch checkpoint: see mlcore.matching_finetune and
    mlcore.training.training_run_execute."""
    from . import training

    training.training_run_execute(run_id=run_id)


@shared_task(name="mlcore.training_runs_recover", ignore_result=True)
def training_runs_recover_task() -> None:
    """Celery beat: re-queue training runs whose message was lost (a killed worker, a broker outage)."""
    from . import training

    training.training_runs_recover()
