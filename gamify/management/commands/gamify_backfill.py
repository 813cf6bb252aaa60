from django.core.management.base import BaseCommand, CommandError

from annotate.models import Campaign
from gamify.services import points_backfill


class Command(BaseCommand):
    help = (
        "Give points to answers given before gamification was installed (match campaigns), and build "
        "their leaderboard tallies. Idempotent: run it once after installing; a second run does nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("--campaign", help="A campaign's slug (default: every match campaign).")

    def handle(self, *args, **options):
        campaigns = Campaign.objects.filter(kind=Campaign.Kind.MATCH).order_by("pk")
        if options["campaign"]:
            campaigns = campaigns.filter(slug=options["campaign"])
            if not campaigns.exists():
                raise CommandError(f"no match campaign {options['campaign']!r}")
        for campaign in campaigns:
            changed = points_backfill(campaign=campaign)
            self.stdout.write(f"{campaign.slug}: {changed} answers settled")
