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
