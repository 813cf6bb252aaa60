from django.core.management.base import BaseCommand

from catalog.services import photos_import

from ._importing import run_import


class Command(BaseCommand):
    help = (
        "Import customer photos to match from a CSV or JSONL manifest with columns source, image "
        "(path or URL), and optionally caption, posted_at (ISO 8601). Idempotent: photos are keyed by "
        "the sha256 of their image."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="manifest path (.csv or .jsonl)")

    def handle(self, *args, file, **options):
        run_import(self, photos_import, file)
