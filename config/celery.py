"""Celery application. Queues: `default` for bookkeeping, `gpu` for embedding and training."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("fitcheck")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
