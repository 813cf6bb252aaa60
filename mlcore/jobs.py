"""Sending Celery jobs for rows that wait for them, so that a broker outage never loses a job or turns
into a server error after the row was saved.

The rule (docs/operations.md, "Outages and recovery"): a row that needs a job (a TrainingRun, an
EmbeddingRun, an ExportSnapshot, a PREPARING campaign) is committed first and its message is sent
after commit (`send_on_commit`). When the broker cannot take the message, the failure is logged and
swallowed: the row stays PENDING (the API answers 202 with status "pending", shown as "Queued") and
the beat sweep (annotate.recovery.jobs_recover) sends it again once the broker is back. Nothing is
ever run inline instead (house style, Celery rule 6).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

logger = logging.getLogger(__name__)

# A PENDING row older than this whose job has not started is sent again (its message may be lost).
# Duplicates are harmless: every job claims its row with a conditional update.
PENDING_RESEND_AFTER = timedelta(minutes=2)
# Messages sent by the sweep expire after this, so a long worker outage does not pile up copies:
# the next sweep sends a fresh one.
RESEND_EXPIRES_S = 600

# What a publish raises when the broker is down or unreachable: kombu wraps the transport's
# connection errors (redis-py's ConnectionError and TimeoutError, SQLAlchemy's OperationalError) in
# its own OperationalError; a bare socket error can still escape on some paths.
BROKER_ERRORS = (KombuOperationalError, ConnectionError, TimeoutError)


def task_send(signature, *, expires: float | None = None) -> bool:
    """Publish a Celery signature (`task.si(...)`, or a chain); never raises for a broker outage.

    Args:
        signature: a celery Signature or chain.
        expires: seconds after which a worker discards the message unrun (sweeps set it).

    Returns:
        True when the broker took the message; False when it could not (logged as a warning: the
        row it was for stays PENDING and the sweep sends it again).
    """
    options = {"expires": expires} if expires is not None else {}
    try:
        signature.apply_async(**options)
    except BROKER_ERRORS as exc:
        logger.warning("broker unavailable, %s not sent (the sweep re-sends it): %s", _name(signature), exc)
        return False
    return True


def send_on_commit(signature) -> None:
    """`task_send(signature)` after the current transaction commits (at once outside one). A broker
    outage leaves the committed rows as they are (see the module docstring)."""
    transaction.on_commit(lambda: task_send(signature))


def _name(signature) -> str:
    tasks = getattr(signature, "tasks", None)
    if tasks:
        return " → ".join(str(getattr(t, "task", t)) for t in tasks)
    return str(getattr(signature, "task", signature))


def embedding_runs_recover(*, now=None) -> int:
    """Fail every RUNNING EmbeddingRun whose heartbeat is older than mlcore.services.STALE_RUN_AFTER:
    its worker died and, with the chain it was part of lost, nothing would ever finish it. The
    chain's owner (annotate.recovery.campaigns_recover, annotate.learning.backbones_unapplied_resume)
    starts a new run, which embeds only what is still missing. Idempotent. Returns the runs failed."""
    from .models import EmbeddingRun
    from .services import STALE_RUN_AFTER

    now = now or timezone.now()
    failed = EmbeddingRun.objects.filter(
        status=EmbeddingRun.Status.RUNNING, heartbeat_at__lt=now - STALE_RUN_AFTER
    ).update(
        status=EmbeddingRun.Status.FAILED,
        error=f"its worker was lost (no heartbeat for {STALE_RUN_AFTER}); a new run takes over",
        finished_at=now,
    )
    if failed:
        logger.info("failed %s embedding runs whose worker was lost", failed)
    return failed


def worker_stopping() -> bool:
    """Whether the Celery worker this code runs in has been asked to shut down (SIGTERM or SIGINT:
    `make demo`'s Ctrl-C, a deploy). Celery sets celery.worker.state.should_stop (warm shutdown) or
    should_terminate (cold) in its signal handler and lets the running task go on; a long job polls
    this to stop at a point it can resume from instead of being killed mid-step. False outside a
    worker (tests, the shell)."""
    from celery.worker import state

    return state.should_stop is not None or state.should_terminate not in (None, False)
