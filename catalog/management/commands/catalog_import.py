from django.core.management.base import BaseCommand

from catalog.services import catalog_import

from ._importing import run_import


class Command(BaseCommand):
    help = (
        "Import or update products from a CSV or JSONL manifest with columns retailer, sku, title, image "
        "(path or URL; several separated by |), and optionally description, native_category_path, "
        "master_category_path, is_active. Idempotent: re-running updates in place."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="manifest path (.csv or .jsonl)")

    def handle(self, *args, file, **options):
        run_import(self, catalog_import, file)
