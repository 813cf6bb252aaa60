"""Template context for the nav: which gamification pages the signed-in person may open."""

from annotate import roles


def nav(request) -> dict:
    """`can_verify`: leaderboards and your impact (employees, admins); `is_admin`: the announcement page."""
    return {
        "can_verify": roles.user_has_role(request.user, *roles.VERIFY_ROLES),
        "is_admin": roles.user_has_role(request.user, roles.ADMIN),
    }
