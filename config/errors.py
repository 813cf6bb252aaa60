"""The project's 400 and 404 views (config.urls.handler400, handler404).

Django's own `bad_request` view is wrapped in `requires_csrf_token`, which runs the CSRF check again
and so reads request.POST again. When the 400 came from that very read (a form POST declaring a
charset other than UTF-8, which Django refuses with BadRequest inside CsrfViewMiddleware), the
second read raised once more and the request ended as a bare 500. This view reads nothing of the
request body.

Under /api/ both answer JSON with a `code`, as the API's own errors do (annotate.api): a path that
matches no URL pattern (a slug with a space, say) got Django's HTML 404 page.
"""

import logging

from django.core.exceptions import BadRequest
from django.http import HttpResponseBadRequest, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.html import escape
from django.views import defaults

GENERIC = "The request could not be read."
FORM_ENCODING_HINT = "Send forms as UTF-8 (the only encoding HTML forms and Django accept)."


def bad_request(request, exception=None):
    """400 with a message a client can act on: the text of a BadRequest or MultiPartParserError
    (Django writes those for the client, e.g. "HTTP requests with the 'application/x-www-form-urlencoded'
    content type must be UTF-8 encoded."), plus a hint when it is about the encoding; the generic
    text for anything else (a SuspiciousOperation's message is for the log, not the client).

    Returns:
        JSON `{"code": "bad_request", "detail": ...}` under /api/, else a small HTML page. Never
        touches request.POST or request.body, and renders no template (no context processors run).
    """
    detail = GENERIC
    if isinstance(exception, BadRequest | MultiPartParserError) and str(exception):
        detail = str(exception)
        if "UTF-8" in detail:
            detail = f"{detail} {FORM_ENCODING_HINT}"
    if request.path.startswith("/api/"):
        return JsonResponse({"code": "bad_request", "detail": detail}, status=400)
    return HttpResponseBadRequest(
        '<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8"><title>Bad request (400)</title></head>\n'
        f"<body>\n  <h1>Bad request (400)</h1>\n  <p>{escape(detail)}</p>\n</body>\n</html>\n",
        content_type="text/html; charset=utf-8",
    )


def page_not_found(request, exception=None):
    """404: JSON `{"code": "not_found", "detail": ...}` under /api/, Django's own page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"code": "not_found", "detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


class ClientErrorWithoutTraceback(logging.Filter):
    """Logging filter for `django.request`: a 4xx record (a 403 for the wrong role, a 404) keeps its
    one line but loses the traceback Django attaches to it; a client's mistake is not a server
    error, and the tracebacks buried the demo's terminal. 5xx records are untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is not None and 400 <= status < 500:
            record.exc_info = None
            record.exc_text = None
        return True
