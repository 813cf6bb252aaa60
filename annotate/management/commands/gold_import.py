from django.core.management.base import BaseCommand

from annotate.services import gold_import
from catalog.management.commands._importing import run_import


class Command(BaseCommand):
    help = (
        "Import gold (known-answer) tasks from a CSV or JSONL manifest with columns task (uuid), choice "
        "(product, none, not_a_product, unfit) and product (a candidate's uuid when choice is product). "
        "Idempotent; bad rows are reported with their line numbers while the good ones are imported."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="manifest path (.csv or .jsonl)")

    def handle(self, *args, file, **options):
        run_import(self, gold_import, file)
