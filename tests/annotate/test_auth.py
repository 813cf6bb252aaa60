"""Issue 14 item 6: login lockout (django-axes), API throttling, hashed expiring API tokens
(django-rest-knox) and the token endpoints."""

import datetime as dt
import io

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.utils import timezone
from knox.crypto import hash_token
from knox.models import AuthToken
from rest_framework.throttling import UserRateThrottle

from annotate import auth

from ..factories import CampaignFactory, task_with_candidates, user_with_role

PASSWORD = "right-password-1"


@pytest.fixture
def alice(db):
    return user_with_role("employee", username="alice", password=PASSWORD)


def _login(client, password, **extra):
    return client.post("/accounts/login/", {"username": "alice", "password": password}, **extra)


def _logged_in(client) -> bool:
    return "_auth_user_id" in client.session


# -- login lockout -----------------------------------------------------------------------------------


def test_forty_wrong_passwords_lock_the_login_out_even_for_the_right_one(client, alice, settings):
    for _ in range(40):
        assert _login(client, "wrong").status_code in (200, 429)
    response = _login(client, PASSWORD)
    assert response.status_code == 429
    assert not _logged_in(client)
    assert AccessAttempt.objects.get(username="alice").failures_since_start >= settings.AXES_FAILURE_LIMIT


def test_the_lockout_starts_at_the_failure_limit_and_a_success_before_it_resets_the_count(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, "wrong").status_code == 200  # the form again, with its error
    assert _login(client, PASSWORD).status_code == 302 and _logged_in(client)
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _login(client, "wrong")
    assert _login(client, PASSWORD).status_code == 302  # the count restarted at the success


def test_the_lockout_is_per_username_and_address_and_ends_after_the_cool_off(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(client, "wrong", REMOTE_ADDR="10.0.0.1")
    assert _login(client, PASSWORD, REMOTE_ADDR="10.0.0.1").status_code == 429
    assert _login(client, PASSWORD, REMOTE_ADDR="10.0.0.2").status_code == 302  # another address
    client.logout()
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - dt.timedelta(seconds=1))
    assert _login(client, PASSWORD, REMOTE_ADDR="10.0.0.1").status_code == 302


def test_without_a_proxy_a_forged_x_forwarded_for_does_not_escape_the_lockout(client, alice, settings):
    for i in range(settings.AXES_FAILURE_LIMIT):
        _login(client, "wrong", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")
    assert _login(client, PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.99").status_code == 429


def test_behind_one_proxy_the_lockout_is_by_the_forwarded_client_address(client, alice, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}  # FITCHECK_PROXY_COUNT=1
    # The proxy appends the address it saw; what the client sent before it is not trusted.
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(client, "wrong", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.7", REMOTE_ADDR="10.0.0.1")
    assert _login(client, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.7", REMOTE_ADDR="10.0.0.1").status_code == 429
    assert _login(client, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.8", REMOTE_ADDR="10.0.0.1").status_code == 302


# -- API tokens --------------------------------------------------------------------------------------


def test_the_stored_token_is_a_hash_not_the_token(alice):
    instance, token = auth.token_create(user=alice)
    row = AuthToken.objects.get(pk=instance.pk)
    assert token not in (row.digest, row.token_key) and row.token_key == token[: len(row.token_key)]
    assert row.digest == hash_token(token)
    assert row.expiry > timezone.now() + dt.timedelta(days=29)  # FITCHECK_TOKEN_TTL_HOURS: 30 days


def test_a_token_works_until_it_expires(api, alice):
    campaign = CampaignFactory()
    task_with_candidates(campaign)
    instance, token = auth.token_create(user=alice)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").status_code == 200
    AuthToken.objects.filter(pk=instance.pk).update(expiry=timezone.now() - dt.timedelta(seconds=1))
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").status_code == 401


def test_the_token_endpoint_trades_a_password_for_a_token_that_can_be_revoked(api, alice):
    campaign = CampaignFactory()
    task_with_candidates(campaign)
    response = api.post("/api/v1/auth/token", {"username": "alice", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expiry"}
    assert AuthToken.objects.get(user=alice).digest == hash_token(body["token"])
    api.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").status_code == 200
    assert api.post("/api/v1/auth/token/revoke").status_code == 204
    assert not AuthToken.objects.exists()
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").status_code == 401


def test_the_token_endpoint_rejects_a_wrong_password_and_counts_it_towards_the_lockout(api, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = api.post("/api/v1/auth/token", {"username": "alice", "password": "wrong"}, format="json")
        assert response.status_code in (400, 429)
    response = api.post("/api/v1/auth/token", {"username": "alice", "password": PASSWORD}, format="json")
    assert response.status_code == 429
    assert not AuthToken.objects.exists()


def test_the_token_command_prints_a_working_token(api, alice):
    out = io.StringIO()
    call_command("token_create", "alice", "--ttl-hours", "2", stdout=out, stderr=io.StringIO())
    token = out.getvalue().strip()
    row = AuthToken.objects.get(user=alice)
    assert row.digest == hash_token(token)
    assert timezone.now() + dt.timedelta(hours=1.9) < row.expiry < timezone.now() + dt.timedelta(hours=2.1)


# -- API throttling ----------------------------------------------------------------------------------


def test_the_token_endpoint_is_throttled(api, alice, settings):
    limit = int(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["token"].split("/")[0])
    for _ in range(limit):
        response = api.post("/api/v1/auth/token", {"username": "alice", "password": PASSWORD}, format="json")
        assert response.status_code == 200
    response = api.post("/api/v1/auth/token", {"username": "alice", "password": PASSWORD}, format="json")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0


def test_a_signed_in_client_is_throttled_at_the_user_rate(api, employee, monkeypatch):
    # DRF binds the rates when the throttle class is defined: change them there.
    monkeypatch.setitem(UserRateThrottle.THROTTLE_RATES, "user", "3/minute")
    campaign = CampaignFactory()
    api.force_authenticate(employee)
    codes = [api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").status_code for _ in range(4)]
    assert codes == [204, 204, 204, 429]
