"""Roles are Django groups. `admin` also covers superusers."""

from django.contrib.auth.models import Group

EMPLOYEE = "employee"  # verifies matches
TAGGER = "tagger"  # labels product attributes
ML = "ml"  # exports datasets, manages models
ADMIN = "admin"  # runs campaigns
ALL_ROLES = (EMPLOYEE, TAGGER, ML, ADMIN)
VERIFY_ROLES = (EMPLOYEE, ADMIN)


def user_roles(user) -> frozenset[str]:
    """The role names of `user` (cached on the user object for the request)."""
    if not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_fitcheck_roles", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True))
        if user.is_superuser:
            cached |= {ADMIN}
        user._fitcheck_roles = cached
    return cached


def user_has_role(user, *roles: str) -> bool:
    return bool(user_roles(user) & set(roles))


def roles_ensure() -> None:
    """Create the role groups. Idempotent."""
    for name in ALL_ROLES:
        Group.objects.get_or_create(name=name)
