"""Celery wiring: embedding goes to queue gpu, bookkeeping to default; tasks have stable names."""

from config.celery import app as celery_app


def _queue(name: str) -> str:
    celery_app.loader.import_default_modules()
    return celery_app.amqp.router.route({}, name, args=(), kwargs={})["queue"].name


def test_embedding_runs_on_the_gpu_queue():
    assert _queue("mlcore.embed") == "gpu"


def test_task_building_runs_on_the_default_queue():
    assert _queue("annotate.campaign_tasks_build") == "default"


def test_task_names_are_registered():
    celery_app.loader.import_default_modules()
    assert {"mlcore.embed", "annotate.campaign_tasks_build"} <= set(celery_app.tasks)
