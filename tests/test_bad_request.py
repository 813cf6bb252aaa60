"""A form POST that is not UTF-8 (issue 14 item 7): Django refuses an urlencoded body with another
charset with BadRequest inside CsrfViewMiddleware, and its own 400 view, wrapped in
requires_csrf_token, read request.POST again, raised again and ended as a bare 500. It is a 400
with a clear message now, HTML for pages and JSON with a `code` for the API."""

import json

import pytest
from django.test import Client

from tests.factories import user_with_role

LATIN_1 = "application/x-www-form-urlencoded; charset=latin-1"


@pytest.fixture
def browser(db):
    """A client that enforces CSRF like a browser's session does, holding a valid token."""
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    client.get("/accounts/login/")
    return client, client.cookies["csrftoken"].value


def _post(client, token, url, charset_type=LATIN_1):
    body = f"csrfmiddlewaretoken={token}&username=caf\xe9&password=x".encode("latin-1")
    return client.generic("POST", url, data=body, content_type=charset_type, HTTP_X_CSRFTOKEN=token)


def test_a_latin_1_login_post_is_a_400_saying_to_send_utf_8(browser):
    client, token = browser
    response = _post(client, token, "/accounts/login/")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "UTF-8" in html and "must be UTF-8 encoded" in html


@pytest.mark.parametrize("charset", ["ISO-8859-1", "windows-1252", "utf-16"])
def test_every_other_charset_of_a_page_form_is_a_400(browser, charset):
    client, token = browser
    user = user_with_role("ml", username="mia")
    client.force_login(user)
    token = client.cookies["csrftoken"].value
    response = _post(client, token, "/exports/", f"application/x-www-form-urlencoded; charset={charset}")
    assert response.status_code == 400 and "UTF-8" in response.content.decode()


def test_an_api_form_post_in_latin_1_is_no_500(browser):
    """DRF parses the API's forms itself and honours the declared charset; POST /exports takes JSON
    only (tests/annotate/test_api_schema.py), so the answer is a 415 with a code."""
    client, token = browser
    client.force_login(user_with_role("ml", username="mia"))
    token = client.cookies["csrftoken"].value
    body = f"csrfmiddlewaretoken={token}&name=caf\xe9&formats=csv".encode("latin-1")
    response = client.generic("POST", "/api/v1/exports", data=body, content_type=LATIN_1, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"


def test_the_400_view_answers_json_under_api(rf):
    from django.core.exceptions import BadRequest

    from config.errors import bad_request

    response = bad_request(rf.post("/api/v1/exports"), BadRequest("must be UTF-8 encoded."))
    assert response.status_code == 400
    assert json.loads(response.content) == {
        "code": "bad_request",
        "detail": "must be UTF-8 encoded. Send forms as UTF-8 (the only encoding HTML forms and Django accept).",
    }
    from django.core.exceptions import SuspiciousOperation

    hidden = bad_request(rf.get("/exports/"), SuspiciousOperation("secret detail for the log"))
    assert hidden.status_code == 400 and b"secret" not in hidden.content


def test_a_latin_1_body_without_a_charset_is_still_read(browser):
    """Django reads such a body as ISO-8859-1 (some user agents do this); the login form answers."""
    client, token = browser
    response = _post(client, token, "/accounts/login/", "application/x-www-form-urlencoded")
    assert response.status_code == 200
