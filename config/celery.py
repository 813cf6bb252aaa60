"""Celery application. Queues: `default` for bookkeeping, `gpu` for embedding and training."""

import logging
import os
import signal
import sys
import threading

from celery import Celery
from celery.signals import beat_embedded_init, celeryd_after_setup

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


@celeryd_after_setup.connect
def _gpu_worker_imports_torch(sender, instance, **kwargs) -> None:
    """A solo worker of queue `gpu` imports torch and torchvision in a background thread as it starts
    (about 3 s of CPU on this 2-core VM), so that its first embedding job does not wait for them: in
    the demo that job arrives about 15 s after the worker is up, once the catalog is imported.
    Solo pool only: a prefork pool forking while another thread holds an import lock could deadlock
    its children."""
    from celery.concurrency.solo import TaskPool as SoloPool

    queues = instance.app.amqp.queues
    consumed = queues.consume_from or queues
    if "gpu" not in consumed or not (isinstance(instance.pool_cls, type) and issubclass(instance.pool_cls, SoloPool)):
        return

    threading.Thread(target=_torch_import, name="torch-import", daemon=True).start()


def _torch_import() -> None:
    try:
        import mlcore.nn.backbones  # noqa: F401  torch, torchvision
    except Exception:  # the job that needs them reports it; this is only a head start
        logging.getLogger(__name__).exception("importing torch ahead of the first job failed")
