"""/healthz: the state of each dependency, for load balancers, `bin/demo` and people on call.

The body names each dependency's state in one word, never its error text (that can carry paths,
hosts or SQL; it is logged here instead), so it is safe to answer anonymous callers.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0


def database_state() -> str:
    """"ok", "locked" (SQLite: another connection holds the write lock longer than PROBE_TIMEOUT_S,
    so writes would wait and then fail) or "unavailable" (no answer). On SQLite the lock is probed
    with BEGIN IMMEDIATE on a connection of its own (taken and rolled back at once), except inside a
    transaction of the caller's (tests), where this connection holds that lock itself."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if connection.vendor == "sqlite" and not connection.in_atomic_block:
            probe = sqlite3.connect(connection.settings_dict["NAME"], timeout=PROBE_TIMEOUT_S)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
            finally:
                probe.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            logger.warning("healthz: the database is locked: %s", exc)
            return "locked"
        logger.error("healthz: the database is unavailable: %s", exc)
        return "unavailable"
    except Exception as exc:  # noqa: BLE001 (whatever the driver raises, the database is not usable)
        logger.error("healthz: the database is unavailable: %s", exc)
        return "unavailable"
    return "ok"


def broker_state() -> str:
    """"ok" when the Celery broker answers (the default queue's length is read), else "unavailable".
    Takes at most about settings.FITCHECK_BROKER_TIMEOUT_S plus one retry."""
    from config.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=PROBE_TIMEOUT_S)
            conn.default_channel._size(settings.CELERY_TASK_DEFAULT_QUEUE)
    except Exception as exc:  # noqa: BLE001 (kombu, redis-py and SQLAlchemy each raise their own)
        logger.error("healthz: the broker is unavailable: %s", exc)
        return "unavailable"
    return "ok"


def storage_state() -> str:
    """"ok" when MEDIA_ROOT, the exports root and the models root (or, before their first use, the
    nearest folder above each) are writable by this process, else "not_writable"."""
    for root in (settings.MEDIA_ROOT, settings.FITCHECK_EXPORTS_ROOT, settings.FITCHECK_MODELS_ROOT):
        path = Path(root)
        while not path.exists() and path != path.parent:
            path = path.parent
        if not os.access(path, os.W_OK):
            logger.error("healthz: %s is not writable", path)
            return "not_writable"
    return "ok"


@never_cache
@require_GET
def healthz(request):
    """{"status", "database", "broker", "storage"}; no login needed.

    status is "ok" when every dependency is; "degraded" (HTTP 200) when only the broker or storage is
    not (people can still answer; jobs wait, docs/operations.md); "error" (HTTP 503) when the
    database is locked or unavailable (every page would fail).
    """
    states = {"database": database_state(), "broker": broker_state(), "storage": storage_state()}
    if states["database"] != "ok":
        status, code = "error", 503
    elif any(state != "ok" for state in states.values()):
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    return JsonResponse({"status": status, **states}, status=code)
