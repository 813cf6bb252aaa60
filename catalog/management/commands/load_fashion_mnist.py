from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from catalog.demo_data import DatasetError
from catalog.fashion_mnist import fashion_mnist_load


class Command(BaseCommand):
    help = (
        "Load the Fashion-MNIST demo: two retailers, N real catalog products, and a queue of generated "
        "customer photos (views of catalog products, products not in the catalog, non-products). Reads "
        "--dir, $FASHION_MNIST_DIR, /usr/share/datasets/fashion-mnist, or downloads (verified). Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dir", default=None, help="directory holding the four .gz IDX files")
        parser.add_argument("--products", type=int, default=10_000)
        parser.add_argument("--photos", type=int, default=1_000, help="photos of catalog products")
        parser.add_argument("--photos-not-in-catalog", type=int, default=300)
        parser.add_argument("--photos-non-product", type=int, default=24)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-download", action="store_true", help="never download the dataset")

    # call_command(..., products_loaded=callable): run once the catalog is in the database (demo_setup
    # starts embedding the products then, beside the photos).
    stealth_options = ("products_loaded",)

    def handle(self, *args, **options):
        bars: dict[str, tqdm] = {}

        def progress(stage, done, total):
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", disable=None, file=self.stderr._out)
            bar.update(done - bar.n)

        try:
            report = fashion_mnist_load(
                directory=options["dir"],
                product_count=options["products"],
                photo_in_catalog_count=options["photos"],
                photo_not_in_catalog_count=options["photos_not_in_catalog"],
                photo_non_product_count=options["photos_non_product"],
                seed=options["seed"],
                allow_download=not options["no_download"],
                progress=progress,
                products_loaded=options.get("products_loaded"),
            )
        except (DatasetError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            for bar in bars.values():
                bar.close()
        self.stdout.write(
            f"Fashion-MNIST demo: {report.product_count} products ({report.products_created} new), "
            f"{report.photo_in_catalog_count + report.photo_not_in_catalog_count + report.photo_non_product_count} "
            f"photos ({report.photos_created} new: {report.photo_in_catalog_count} of catalog products, "
            f"{report.photo_not_in_catalog_count} not in the catalog, {report.photo_non_product_count} non-products)"
        )
