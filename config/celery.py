"""Celery application. Queues: `default` for bookkeeping, `gpu` for embedding and training."""

import os
import signal
import sys

from celery import Celery
from celery.signals import beat_embedded_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("fitcheck")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

_STARTED_BY = os.getpid()  # in a beat process forked by `celery worker --beat`: the worker's pid


@beat_embedded_init.connect
def _beat_dies_with_its_worker(**kwargs) -> None:
    """The beat a worker embeds (`celery worker --beat`, as bin/demo runs it) is a child process:
    when the worker is killed (kill -9, the OOM killer) it would live on as an orphan, scheduling
    jobs that no worker of its own runs. On Linux, ask the kernel to send it SIGTERM when the worker
    dies (PR_SET_PDEATHSIG), and exit now if the worker is already gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != _STARTED_BY:
        os._exit(0)
