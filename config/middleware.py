"""Outages answered cleanly: a database or broker that is down, or a SQLite database locked past its
busy timeout, becomes a 503 with Retry-After, never a traceback or an HTML 500 on the JSON API.

- /api/...: JSON {"code": "database_unavailable" | "broker_unavailable", "detail": ...}.
- Every other route: templates/503.html, rendered without the request (its context processors
  would query the database that is down).

The error itself is logged here, with its traceback, and never shown to the client. No partial
writes: the view's transaction (services use atomic()) was rolled back by the time the exception
reaches this middleware, and rows whose job message could not be sent stay PENDING for the beat
sweep (mlcore.jobs). See docs/operations.md, "Outages and recovery".
"""

from __future__ import annotations

import logging
import sys

from django import db
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views import defaults

from mlcore.jobs import BROKER_ERRORS

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 30
DATABASE_ERRORS = (db.OperationalError, db.InterfaceError)


def outage_kind(exc: BaseException | None) -> str | None:
    """"database" or "broker" when `exc` (or an exception it was raised from) means that dependency is
    unavailable (django.db OperationalError/InterfaceError, kombu's OperationalError and the socket
    errors a publish can raise); None for any other error."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, DATABASE_ERRORS):
            return "database"
        if isinstance(exc, BROKER_ERRORS):
            return "broker"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def outage_response(request, kind: str) -> HttpResponse:
    """The 503 for an outage of `kind` ("database" or "broker"): JSON on /api/, else the plain page;
    both with Retry-After (seconds) and no-store."""
    what = "The database" if kind == "database" else "The job queue"
    detail = f"{what} is unavailable right now; try again in a minute."
    if request.path.startswith("/api/"):
        response = JsonResponse({"code": f"{kind}_unavailable", "detail": detail}, status=503)
    else:
        response = HttpResponse(render_to_string("503.html", {"detail": detail}), status=503)
    response["Retry-After"] = str(RETRY_AFTER_S)
    response["Cache-Control"] = "no-store"
    return response


class OutageMiddleware:
    """Turns a view's database or broker outage into `outage_response` (DRF re-raises exceptions it
    does not know, so API views land here too). Listed last in settings.MIDDLEWARE."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        kind = outage_kind(exception)
        if kind is None:
            return None
        logger.error("%s unavailable: %s %s", kind, request.method, request.path, exc_info=exception)
        return outage_response(request, kind)


def server_error(request):
    """handler500 (config.urls): an outage raised outside a view (a middleware saving the session,
    say) still answers `outage_response`; anything else is Django's plain 500 page."""
    kind = outage_kind(sys.exc_info()[1])
    if kind is not None:
        return outage_response(request, kind)
    return defaults.server_error(request)
