"""Authentication helpers: the client address used by the login lockout, and the API's token
endpoints (hashed, expiring django-rest-knox tokens)."""

from datetime import timedelta

from django.http import HttpRequest
from django.utils import timezone
from knox.models import AuthToken
from knox.settings import knox_settings
from rest_framework.throttling import BaseThrottle


def client_ip(request: HttpRequest) -> str:
    """The client's address for django-axes (AXES_CLIENT_IP_CALLABLE): REMOTE_ADDR, or behind
    FITCHECK_PROXY_COUNT proxies (REST_FRAMEWORK["NUM_PROXIES"]) the address the outermost of them
    appended to X-Forwarded-For. The same rule as DRF's throttles, so a client cannot dodge a
    lockout by sending its own X-Forwarded-For."""
    return BaseThrottle().get_ident(request)


def token_create(*, user, ttl: timedelta | None = None) -> tuple[AuthToken, str]:
    """A new API token for `user`: stored as a SHA-512 digest (django-rest-knox), valid for `ttl`
    (default REST_KNOX["TOKEN_TTL"], settings FITCHECK_TOKEN_TTL_HOURS) from now.

    Returns:
        (the AuthToken row, the token itself). The token is shown once: only its digest is stored.

    Raises:
        TokenLimitReached: the user already holds REST_KNOX["TOKEN_LIMIT_PER_USER"] live tokens.

    Not idempotent: every call creates a token. Expired tokens of the user are deleted first.
    """
    now = timezone.now()
    AuthToken.objects.filter(user=user, expiry__lte=now).delete()
    limit = knox_settings.TOKEN_LIMIT_PER_USER
    if limit is not None and AuthToken.objects.filter(user=user).count() >= limit:
        raise TokenLimitReached(f"{user.get_username()} already holds {limit} live API tokens; revoke one first")
    return AuthToken.objects.create(user=user, expiry=ttl if ttl is not None else knox_settings.TOKEN_TTL)


class TokenLimitReached(Exception):
    """The user holds as many live tokens as REST_KNOX["TOKEN_LIMIT_PER_USER"] allows."""
