"""Template context shared by every page."""

from . import roles


def user_roles(request) -> dict:
    """`can_export`: whether the nav shows Exports (the ML team and admins)."""
    return {"can_export": roles.user_has_role(request.user, roles.ML, roles.ADMIN)}
