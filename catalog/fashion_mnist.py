"""Load the Fashion-MNIST demo catalog and its customer-photo queue into the database.

Real product images (Fashion-MNIST, Xiao et al. 2017; 70,000 Zalando product images, MIT), two demo
retailers whose native categories differ, and generated customer photos: views of catalog products,
products not in the catalog (from the test split), and photos of no product at all. The true answer
of each photo goes to DemoPhotoTruth only.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from django.db import transaction

from . import demo_data
from .images import image_inspect, image_store
from .models import DemoPhotoTruth, NativeCategory, Photo, Product, ProductImage, Retailer
from .services import photo_upsert, taxonomy_path_ensure

logger = logging.getLogger(__name__)

# Master taxonomy path of each Fashion-MNIST class (label order).
MASTER_PATHS = (
    "Clothing › Tops › T-shirt/top",
    "Clothing › Bottoms › Trouser",
    "Clothing › Tops › Pullover",
    "Clothing › Dresses › Dress",
    "Clothing › Outerwear › Coat",
    "Shoes › Sandal",
    "Clothing › Tops › Shirt",
    "Shoes › Sneaker",
    "Bags › Bag",
    "Shoes › Ankle boot",
)
RETAILERS = (
    {
        # Files tops and shoes coarsely: its "Tops" and "Shoes" map to inner master nodes, so the
        # category campaign has to find the leaf (and the catalog tells it only the branch).
        "slug": "northwind",
        "name": "Northwind Apparel",
        "sku_prefix": "NW",
        "native": ("Tops", "Trousers", "Tops", "Dresses", "Coats & Jackets", "Shoes", "Tops", "Shoes", "Bags", "Shoes"),
    },
    {
        "slug": "harbor-pine",
        "name": "Harbor & Pine",
        "sku_prefix": "HP",
        "native": (
            "T-Shirts & Tops",
            "Pants",
            "Knitwear > Pullovers",
            "Dresses > Day Dresses",
            "Outerwear",
            "Shoes > Sandals",
            "Tops > Shirts & Blouses",
            "Shoes > Sneakers",
            "Accessories > Bags",
            "Shoes > Ankle Boots",
        ),
    },
)


def native_master_path(retailer: dict, native_path: str) -> str:
    """The master taxonomy path a demo native category maps to: the deepest node shared by the
    Fashion-MNIST classes the retailer files under it ("Shoes" for sandals, sneakers and boots).

    Raises:
        KeyError: the retailer has no such native category.
    """
    paths = [MASTER_PATHS[label] for label, path in enumerate(retailer["native"]) if path == native_path]
    if not paths:
        raise KeyError(native_path)
    parts = [path.split(" › ") for path in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return " › ".join(common)


# Native categories that say nothing about the product; mapped to no master node.
UNINFORMATIVE_NATIVE = ("New In", "Summer Sale", "Last Chance")
UNINFORMATIVE_SHARE = 0.12

# Titles are as specific as real catalogs' are, i.e. not always: a title names the product's own
# kind (TITLE_SHARES[0]), a word shared by several kinds (a "top", "shoes"), or nothing at all (a
# collection name). The description repeats the title and says nothing more about the kind, so the
# text model knows the class only as well as a shopper reading the page would.
_NOUNS = (
    ("tee", "T-shirt", "crew-neck top", "vest top"),
    ("trousers", "chinos", "straight-leg pants", "joggers"),
    ("pullover", "jumper", "knit sweater", "crew-neck sweater"),
    ("dress", "day dress", "shift dress", "midi dress"),
    ("coat", "parka", "jacket", "overcoat"),
    ("sandals", "slides", "strappy sandals", "flat sandals"),
    ("shirt", "blouse", "button-down shirt", "oxford shirt"),
    ("sneakers", "trainers", "running shoes", "low-top sneakers"),
    ("bag", "tote bag", "shoulder bag", "crossbody bag"),
    ("ankle boots", "chelsea boots", "lace-up boots", "heeled ankle boots"),
)
# Words that fit several classes: tops (T-shirt, pullover, shirt), layers (pullover, coat, shirt),
# shoes (sandal, sneaker, ankle boot), and one for anything.
_SHARED_NOUNS = (
    ("top", "essential top", "layering piece"),
    ("bottoms", "piece"),
    ("top", "layer", "knit"),
    ("piece", "summer piece"),
    ("layer", "outer layer", "piece"),
    ("shoes", "summer shoes", "footwear"),
    ("top", "layer", "layering piece"),
    ("shoes", "footwear", "everyday shoes"),
    ("accessory", "piece"),
    ("shoes", "footwear", "winter shoes"),
)
_COLLECTIONS = (
    "The Harper",
    "The Marlow",
    "Essential No. 7",
    "Studio Edit",
    "Weekend Edit",
    "Core Piece",
    "The Ellis",
    "Archive Edit",
)
TITLE_SHARES = (0.45, 0.30, 0.25)  # own noun, shared noun, no noun
_ADJECTIVES = (
    "Classic",
    "Relaxed",
    "Everyday",
    "Essential",
    "Soft",
    "Structured",
    "Organic cotton",
    "Light",
    "Recycled",
    "Slim",
    "Oversized",
    "Textured",
    "Washed",
    "Premium",
    "Easy",
)
POSTED_BASE = datetime(2026, 10, 1, tzinfo=UTC)


@dataclass
class LoadReport:
    product_count: int
    photo_in_catalog_count: int
    photo_not_in_catalog_count: int
    photo_non_product_count: int
    products_created: int
    photos_created: int


def _title(label: int, rng: np.random.Generator) -> tuple[str, str]:
    """A demo product's (title, description) for Fashion-MNIST class `label`; see TITLE_SHARES."""
    adjective = _ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]
    kind = rng.choice(3, p=TITLE_SHARES)
    if kind == 0:
        title = f"{adjective} {_NOUNS[label][int(rng.integers(len(_NOUNS[label])))]}"
    elif kind == 1:
        title = f"{adjective} {_SHARED_NOUNS[label][int(rng.integers(len(_SHARED_NOUNS[label])))]}"
    else:
        title = f"{_COLLECTIONS[int(rng.integers(len(_COLLECTIONS)))]}, {adjective.lower()}"
    description = f"{title}. From our core range; true to size."
    return title, description


def fashion_mnist_load(
    *,
    directory: str | None = None,
    product_count: int = 10_000,
    photo_in_catalog_count: int = 1_000,
    photo_not_in_catalog_count: int = 300,
    photo_non_product_count: int = 24,
    seed: int = 0,
    allow_download: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    products_loaded: Callable[[], None] | None = None,
) -> LoadReport:
    """Create the demo catalog and photo queue from Fashion-MNIST. Idempotent for the same arguments:
    products upsert on (retailer, sku), images and photos dedupe by sha256, truth rows by photo.

    Args:
        directory: where the IDX files are; default $FASHION_MNIST_DIR, the Debian package path, or a
            verified download (see catalog.demo_data.fashion_mnist_locate).
        product_count: catalog products drawn from the 60,000 training images, split across 2 retailers.
        photo_in_catalog_count: generated customer photos of catalog products.
        photo_not_in_catalog_count: generated photos of products from the test split (not in the catalog).
        photo_non_product_count: photos of no product (scikit-image's bundled sample photos).
        seed: the random seed; the same seed gives the same rows and bytes.
        progress: called as progress(stage, done, total).
        products_loaded: called once the catalog is in the database, before the photos are
            generated (the demo starts embedding the products then, beside the photos).

    A load already complete costs no image work: products that exist with an image are not encoded
    again, and when the photo queue is complete (every catalog photo's product has its photo, and
    the not-in-catalog and non-product counts are there) the photos are not generated again. The
    random draws that decide rows are replayed, so the same seed gives the same rows either way.
    Photos are rendered with torch on 1 thread: its small per-photo operations were ~30x slower
    with 2 threads on a busy 2-core machine (156 ms against 5 ms per photo).

    Raises:
        catalog.demo_data.DatasetError: the dataset cannot be found, read or verified.
        ValueError: a count out of range.
    """
    if not 3 <= product_count <= 60_000:
        raise ValueError("product_count must be between 3 and 60000")
    for name, count in (
        ("photo_in_catalog_count", photo_in_catalog_count),
        ("photo_not_in_catalog_count", photo_not_in_catalog_count),
        ("photo_non_product_count", photo_non_product_count),
    ):
        if count < 0:
            raise ValueError(f"{name} must be >= 0, got {count}")
    if photo_in_catalog_count > product_count:
        raise ValueError("photo_in_catalog_count cannot exceed product_count")
    if photo_not_in_catalog_count > 10_000:
        raise ValueError("photo_not_in_catalog_count cannot exceed the 10,000 test images")
    progress = progress or (lambda stage, done, total: None)
    root = demo_data.fashion_mnist_locate(directory, allow_download=allow_download)
    train_x, train_y = demo_data.fashion_mnist_read(root, "train")
    test_x, test_y = demo_data.fashion_mnist_read(root, "test")
    rng = np.random.default_rng(seed)

    for path in MASTER_PATHS:
        taxonomy_path_ensure(path=path)
    retailers, natives = [], []
    for spec in RETAILERS:
        retailer, _ = Retailer.objects.get_or_create(slug=spec["slug"], defaults={"name": spec["name"]})
        retailers.append(retailer)
        per_label = []
        for path in spec["native"]:
            native, _ = NativeCategory.objects.get_or_create(
                retailer=retailer,
                path=path,
                defaults={"master_node": taxonomy_path_ensure(path=native_master_path(spec, path))},
            )
            per_label.append(native)
        uninformative = [
            NativeCategory.objects.get_or_create(retailer=retailer, path=path)[0] for path in UNINFORMATIVE_NATIVE
        ]
        natives.append((per_label, uninformative))

    indices = np.sort(rng.choice(len(train_x), size=product_count, replace=False))
    products_created = 0
    product_by_index: dict[int, int] = {}
    batch = 1000
    for start in range(0, product_count, batch):
        chunk = indices[start : start + batch]
        existing = {
            (retailer_id, sku): pk
            for pk, retailer_id, sku in Product.objects.filter(
                retailer__in=retailers,
                sku__in=[f"{RETAILERS[int(i) % 2]['sku_prefix']}-{int(i):05d}" for i in chunk],
                images__isnull=False,
            ).values_list("pk", "retailer_id", "sku")
        }
        rows, images = [], {}
        for index in chunk:
            index = int(index)
            label = int(train_y[index])
            which = index % 2
            retailer = retailers[which]
            per_label, uninformative = natives[which]
            if rng.random() < UNINFORMATIVE_SHARE:
                native = uninformative[int(rng.integers(len(uninformative)))]
                master = None
            else:
                native = per_label[label]
                master = native.master_node
            title, description = _title(label, rng)  # drawn for every product: the rng stays in step
            sku = f"{RETAILERS[which]['sku_prefix']}-{index:05d}"
            if (retailer.pk, sku) in existing:
                product_by_index[index] = existing[(retailer.pk, sku)]
                continue
            rows.append(
                Product(
                    retailer=retailer,
                    sku=sku,
                    title=title,
                    description=description,
                    native_category=native,
                    master_category=master,
                )
            )
            data = demo_data.png_bytes(train_x[index])
            info = image_inspect(data)
            images[(retailer.pk, sku)] = (index, image_store(data, info, prefix="products"), info)
        if not rows:
            progress("products", min(start + batch, product_count), product_count)
            continue
        with transaction.atomic():
            before = Product.objects.count()
            Product.objects.bulk_create(rows, ignore_conflicts=True)
            products_created += Product.objects.count() - before
            keys = Product.objects.filter(retailer__in=retailers, sku__in=[r.sku for r in rows]).values_list(
                "pk", "retailer_id", "sku"
            )
            image_rows = []
            for pk, retailer_id, sku in keys:
                index, name, info = images[(retailer_id, sku)]
                product_by_index[index] = pk
                image_rows.append(
                    ProductImage(
                        product_id=pk,
                        image=name,
                        sha256=info.sha256,
                        width_px=info.width_px,
                        height_px=info.height_px,
                        position=0,
                    )
                )
            ProductImage.objects.bulk_create(image_rows, ignore_conflicts=True)
        progress("products", min(start + batch, product_count), product_count)

    # The photo queue, in a shuffled order so the three kinds are mixed.
    in_catalog = rng.choice(indices, size=photo_in_catalog_count, replace=False)
    not_in_catalog = rng.choice(len(test_x), size=photo_not_in_catalog_count, replace=False)
    plan = [("in", int(i)) for i in in_catalog] + [("out", int(i)) for i in not_in_catalog]
    plan += [("none", i) for i in range(photo_non_product_count)]
    order = rng.permutation(len(plan))
    if products_loaded is not None:
        products_loaded()
    photos_created = 0
    total = len(plan)
    if _photo_queue_complete(
        in_catalog_products={product_by_index[int(i)] for i in in_catalog},
        not_in_catalog_count=photo_not_in_catalog_count,
        non_product_count=photo_non_product_count,
    ):
        progress("photos", total, total)
        return LoadReport(
            product_count=product_count,
            photo_in_catalog_count=photo_in_catalog_count,
            photo_not_in_catalog_count=photo_not_in_catalog_count,
            photo_non_product_count=photo_non_product_count,
            products_created=products_created,
            photos_created=0,
        )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        photos_created = _photos_generate(
            plan, order, train_x, train_y, test_x, test_y, product_by_index, rng, photo_non_product_count, progress
        )
    finally:
        torch.set_num_threads(threads)
    return LoadReport(
        product_count=product_count,
        photo_in_catalog_count=photo_in_catalog_count,
        photo_not_in_catalog_count=photo_not_in_catalog_count,
        photo_non_product_count=photo_non_product_count,
        products_created=products_created,
        photos_created=photos_created,
    )


def _photo_queue_complete(*, in_catalog_products: set[int], not_in_catalog_count: int, non_product_count: int) -> bool:
    """Whether an earlier load with these draws left the whole photo queue: a truth row for a photo
    of each drawn catalog product, and at least the asked-for not-in-catalog and non-product photos."""
    truths = DemoPhotoTruth.objects
    return (
        truths.filter(kind=DemoPhotoTruth.Kind.IN_CATALOG, product_id__in=in_catalog_products)
        .values("product_id")
        .distinct()
        .count()
        == len(in_catalog_products)
        and truths.filter(kind=DemoPhotoTruth.Kind.NOT_IN_CATALOG).count() >= not_in_catalog_count
        and truths.filter(kind=DemoPhotoTruth.Kind.NOT_A_PRODUCT).count() >= non_product_count
    )


PHOTO_BATCH = 50  # photos per transaction: a commit per photo cost ~15 ms each on SQLite


def _photos_generate(
    plan, order, train_x, train_y, test_x, test_y, product_by_index, rng, photo_non_product_count, progress
) -> int:
    """Render and store the photo queue in `order` (each batch of PHOTO_BATCH one transaction; photos
    dedupe by sha256). Returns how many photos were created."""
    non_products = (
        demo_data.non_product_photos(rng=rng, count=photo_non_product_count) if photo_non_product_count else []
    )
    photos_created = 0
    total = len(plan)
    pending = []
    for done, position in enumerate(order, start=1):
        kind, index = plan[position]
        if kind == "in":
            image = demo_data.customer_photo_render(train_x[index], rng=rng)
            caption = demo_data.photo_caption(rng, brand=RETAILERS[index % 2]["slug"])
            truth = {
                "kind": DemoPhotoTruth.Kind.IN_CATALOG,
                "product_id": product_by_index[index],
                "source_label": int(train_y[index]),
            }
        elif kind == "out":
            image = demo_data.customer_photo_render(test_x[index], rng=rng)
            caption = demo_data.photo_caption(rng)
            truth = {"kind": DemoPhotoTruth.Kind.NOT_IN_CATALOG, "product_id": None, "source_label": int(test_y[index])}
        else:
            caption, image = non_products[index]
            truth = {"kind": DemoPhotoTruth.Kind.NOT_A_PRODUCT, "product_id": None, "source_label": None}
        data = demo_data.png_bytes(image)
        info = image_inspect(data)
        name = image_store(data, info, prefix="photos")
        posted_at = POSTED_BASE + timedelta(minutes=int(rng.integers(0, 60 * 24 * 45)))
        source = f"instagram:@customer{int(rng.integers(1000, 9999))}"
        pending.append((name, info, source, caption, posted_at, truth))
        if len(pending) == PHOTO_BATCH or done == total:
            with transaction.atomic():
                for name, info, source, caption, posted_at, truth in pending:
                    outcome = photo_upsert(
                        image_name=name, info=info, source=source, caption=caption, posted_at=posted_at
                    )
                    photo = Photo.objects.get(sha256=info.sha256)
                    DemoPhotoTruth.objects.update_or_create(photo=photo, defaults=truth)
                    photos_created += outcome == "created"
            pending.clear()
            progress("photos", done, total)
    return photos_created


def demo_truth_for(photo_ids) -> dict[int, tuple[str, int | None]]:
    """The true answer of generated demo photos, {photo id: (DemoPhotoTruth.Kind value, product id or
    None)}, for the demo loader's gold sample and for benches. Photos without a truth row are left out.
    """
    return {
        photo_id: (kind, product_id)
        for photo_id, kind, product_id in DemoPhotoTruth.objects.filter(photo_id__in=list(photo_ids)).values_list(
            "photo_id", "kind", "product_id"
        )
    }
