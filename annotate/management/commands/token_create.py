from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotate import auth


class Command(BaseCommand):
    help = (
        "Create an API token for a user and print it (it is shown once: only its hash is stored). "
        "It expires after --ttl-hours (default FITCHECK_TOKEN_TTL_HOURS). Clients send "
        "`Authorization: Token <token>`. Users can also POST username and password to /api/v1/auth/token."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--ttl-hours", type=float, default=None, help="lifetime; default from settings")

    def handle(self, *args, username, ttl_hours, **options):
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None or not user.is_active:
            raise CommandError(f"no active user {username!r}")
        ttl = timedelta(hours=ttl_hours) if ttl_hours is not None else None
        try:
            instance, token = auth.token_create(user=user, ttl=ttl)
        except auth.TokenLimitReached as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(token)
        self.stderr.write(f"expires {instance.expiry.isoformat()}")
