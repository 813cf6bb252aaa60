"""403 and 404 pages are the app's own, and a client's mistake logs one line, not a traceback
(issue 16, bug 7)."""

import logging
import sys

from config.errors import ClientErrorWithoutTraceback

from .factories import user_with_role


def test_a_403_is_a_page_of_the_app_that_says_why(client, db):
    client.force_login(user_with_role("employee", username="emma"))
    response = client.get("/exports/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "This page is not for your role" in html
    assert "Exports are for the ML team and admins." in html
    assert 'href="/"' in html and "<nav" in html  # the app's frame, not a bare line


def test_a_404_says_what_was_not_found(client, db):
    client.force_login(user_with_role("employee", username="emma"))
    response = client.get("/verify/no-such-campaign/")
    assert response.status_code == 404
    assert "No such campaign." in response.content.decode()
    assert "There is nothing at this address." in client.get("/no/such/page/").content.decode()


def _record(status_code: int) -> logging.LogRecord:
    try:
        raise PermissionError("x")
    except PermissionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "Forbidden: /x", (), exc_info)
    record.status_code = status_code
    return record


def test_client_errors_log_without_their_traceback_and_server_errors_keep_it():
    keep = ClientErrorWithoutTraceback()
    forbidden, server = _record(403), _record(500)
    assert keep.filter(forbidden) and forbidden.exc_info is None
    assert keep.filter(server) and server.exc_info is not None
    assert logging.Formatter().format(forbidden) == "Forbidden: /x"
