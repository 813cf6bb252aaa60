"""The Fashion-MNIST demo loader (catalog.fashion_mnist) and the load_fashion_mnist command.

Reads the real dataset from Debian's dataset-fashion-mnist package; skipped where it is absent.
"""

import hashlib
import io
from collections import Counter
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from catalog import demo_data
from catalog.demo_data import DatasetError
from catalog.fashion_mnist import MASTER_PATHS, UNINFORMATIVE_NATIVE, fashion_mnist_load
from catalog.models import DemoPhotoTruth, NativeCategory, Photo, Product, ProductImage, Retailer, TaxonomyNode

DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_dataset = pytest.mark.skipif(
    not all((DATASET_DIR / name).is_file() for name in demo_data.FILES),
    reason="Debian package dataset-fashion-mnist is not installed",
)
SMALL = {
    "product_count": 40,
    "photo_in_catalog_count": 6,
    "photo_not_in_catalog_count": 3,
    "photo_non_product_count": 2,
}
Kind = DemoPhotoTruth.Kind


def load(**overrides):
    return fashion_mnist_load(directory=str(DATASET_DIR), allow_download=False, **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def train_split():
    return demo_data.fashion_mnist_read(DATASET_DIR, "train")


def table_counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (Retailer, TaxonomyNode, NativeCategory, Product, ProductImage, Photo, DemoPhotoTruth)
    }


@needs_dataset
@pytest.mark.django_db
def test_load_builds_two_retailers_mapped_onto_one_taxonomy(train_split):
    report = load()

    assert (report.products_created, report.photos_created) == (40, 11)
    assert dict(Retailer.objects.values_list("slug", "name")) == {
        "northwind": "Northwind Apparel",
        "harbor-pine": "Harbor & Pine",
    }
    tshirt = TaxonomyNode.objects.get(path="Clothing › Tops › T-shirt/top")
    assert (tshirt.depth, tshirt.parent.path) == (2, "Clothing › Tops")
    assert set(TaxonomyNode.objects.filter(path__in=MASTER_PATHS).values_list("path", flat=True)) == set(MASTER_PATHS)
    # Harbor & Pine files each class under its own native category; Northwind files tops and shoes
    # coarsely, under inner master nodes.
    tees = NativeCategory.objects.get(retailer__slug="harbor-pine", path="T-Shirts & Tops")
    assert tees.master_node == tshirt
    northwind = dict(NativeCategory.objects.filter(retailer__slug="northwind").values_list("path", "master_node__path"))
    assert (northwind["Tops"], northwind["Shoes"], northwind["Trousers"]) == (
        "Clothing › Tops",
        "Shoes",
        "Clothing › Bottoms › Trouser",
    )
    for slug, distinct in (("northwind", 6), ("harbor-pine", 10)):
        assert NativeCategory.objects.filter(retailer__slug=slug).count() == distinct + len(UNINFORMATIVE_NATIVE)
        assert (
            not NativeCategory.objects.filter(retailer__slug=slug, path__in=UNINFORMATIVE_NATIVE)
            .exclude(master_node=None)
            .exists()
        )

    # 40 products, each with one 28×28 image that is the training image its sku names.
    images, labels = train_split
    products = Product.objects.select_related("retailer", "native_category", "master_category")
    assert products.count() == 40
    for product in products:
        prefix, index = product.sku.split("-")
        index = int(index)
        assert (prefix, product.retailer.slug) == (("NW", "northwind") if index % 2 == 0 else ("HP", "harbor-pine"))
        (image,) = product.images.all()
        assert (image.width_px, image.height_px) == (28, 28)
        assert image.sha256 == hashlib.sha256(demo_data.png_bytes(images[index])).hexdigest()
        if product.native_category.path in UNINFORMATIVE_NATIVE:
            assert product.master_category is None
        else:
            # The product's own leaf, or an ancestor of it where the retailer files coarsely.
            leaf = MASTER_PATHS[labels[index]]
            assert leaf == product.master_category.path or leaf.startswith(product.master_category.path + " › ")
            assert product.native_category.master_node == product.master_category


@needs_dataset
@pytest.mark.django_db
def test_load_queues_photos_with_their_truth_kept_apart():
    load()

    assert Photo.objects.count() == 11
    truths = list(DemoPhotoTruth.objects.select_related("photo", "product"))
    assert Counter(t.kind for t in truths) == {Kind.IN_CATALOG: 6, Kind.NOT_IN_CATALOG: 3, Kind.NOT_A_PRODUCT: 2}
    assert len({t.photo_id for t in truths}) == 11
    for truth in truths:
        assert (truth.photo.width_px, truth.photo.height_px) == (224, 224)
        if truth.kind == Kind.IN_CATALOG:
            assert Product.objects.filter(pk=truth.product_id).exists()
            assert truth.source_label in range(10)
            if truth.product.master_category is not None:
                assert MASTER_PATHS[truth.source_label].startswith(truth.product.master_category.path)
        elif truth.kind == Kind.NOT_IN_CATALOG:
            assert truth.product is None
            assert truth.source_label in range(10)
        else:
            assert (truth.product, truth.source_label) == (None, None)
    # Six in-catalog photos of six different products.
    assert len({t.product_id for t in truths if t.kind == Kind.IN_CATALOG}) == 6
    # The answer lives only in DemoPhotoTruth: a Photo has no relation that leads to it.
    assert not [f for f in Photo._meta.get_fields() if f.related_model in (DemoPhotoTruth, Product)]


@needs_dataset
@pytest.mark.django_db
def test_second_load_creates_nothing_new():
    out = io.StringIO()
    call_command(
        "load_fashion_mnist",
        "--dir",
        str(DATASET_DIR),
        "--no-download",
        "--products",
        "40",
        "--photos",
        "6",
        "--photos-not-in-catalog",
        "3",
        "--photos-non-product",
        "2",
        stdout=out,
        stderr=io.StringIO(),
    )
    assert out.getvalue().strip() == (
        "Fashion-MNIST demo: 40 products (40 new), 11 photos (11 new: 6 of catalog products, "
        "3 not in the catalog, 2 non-products)"
    )
    before = table_counts()
    assert before["Product"] == 40 and before["Photo"] == before["DemoPhotoTruth"] == 11
    truth_before = set(DemoPhotoTruth.objects.values_list("photo__sha256", "kind", "product__sku", "source_label"))

    report = load()

    assert (report.products_created, report.photos_created) == (0, 0)
    assert table_counts() == before
    assert set(DemoPhotoTruth.objects.values_list("photo__sha256", "kind", "product__sku", "source_label")) == (
        truth_before
    )


@needs_dataset
@pytest.mark.django_db
def test_a_complete_load_is_not_rendered_again_and_a_partial_one_is_finished(monkeypatch):
    """Issue 16: every `make demo` restart re-rendered and re-encoded the whole photo queue (and
    every product image) before the web server started."""
    load()
    before = table_counts()
    truth_before = set(DemoPhotoTruth.objects.values_list("photo__sha256", "kind", "product__sku"))

    def no_image_work(*args, **kwargs):
        raise AssertionError("image work on a complete load")

    with monkeypatch.context() as patch:
        patch.setattr(demo_data, "customer_photo_render", no_image_work)
        patch.setattr(demo_data, "png_bytes", no_image_work)
        report = load()
    assert (report.products_created, report.photos_created) == (0, 0)
    assert table_counts() == before

    # An interrupted first load (one photo missing) is finished, with the same photos as before.
    Photo.objects.filter(pk=DemoPhotoTruth.objects.order_by("-pk").values("photo_id")[:1]).delete()
    assert load().photos_created == 1
    assert table_counts() == before
    assert set(DemoPhotoTruth.objects.values_list("photo__sha256", "kind", "product__sku")) == truth_before


@pytest.fixture
def no_dataset_anywhere(tmp_path, monkeypatch):
    """Hide every place fashion_mnist_locate looks: the system package, the env var, the cache."""
    monkeypatch.setattr(demo_data, "SYSTEM_DIR", tmp_path / "no-system-dataset")
    monkeypatch.delenv(demo_data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "missing"


@pytest.mark.django_db
def test_missing_dataset_without_download_raises_dataset_error(no_dataset_anywhere):
    with pytest.raises(DatasetError) as excinfo:
        fashion_mnist_load(directory=str(no_dataset_anywhere), allow_download=False, **SMALL)

    message = str(excinfo.value)
    assert "not found (downloads disabled)" in message
    assert f"{no_dataset_anywhere} (explicit_dir argument): no such directory" in message
    assert table_counts()["Retailer"] == 0


@pytest.mark.django_db
def test_command_reports_missing_dataset_as_command_error(no_dataset_anywhere):
    with pytest.raises(CommandError, match=r"Fashion-MNIST files not found \(downloads disabled\)"):
        call_command(
            "load_fashion_mnist",
            "--dir",
            str(no_dataset_anywhere),
            "--no-download",
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
    assert Retailer.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--products", "2"], "product_count must be between 3 and 60000"),
        (["--products", "10", "--photos", "11"], "photo_in_catalog_count cannot exceed product_count"),
        (["--products", "10", "--photos", "-1"], "photo_in_catalog_count must be >= 0"),
        (["--products", "10", "--photos-non-product", "-2"], "photo_non_product_count must be >= 0"),
    ],
)
def test_command_rejects_bad_counts_before_writing(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("load_fashion_mnist", "--no-download", *args, stdout=io.StringIO(), stderr=io.StringIO())
    assert table_counts() == dict.fromkeys(table_counts(), 0)


def test_demo_titles_name_the_kind_only_sometimes():
    """Titles name the product's own kind, a kind shared by several classes, or none (TITLE_SHARES),
    and the description adds nothing about the kind: the text model must not be an oracle."""
    import numpy as np

    from catalog.fashion_mnist import _NOUNS, _SHARED_NOUNS, TITLE_SHARES, _title

    rng = np.random.default_rng(3)
    draws = 3000
    own = shared = 0
    for n in range(draws):
        label = n % 10
        title, description = _title(label, rng)
        assert description.startswith(title + ".")
        assert demo_data.FASHION_MNIST_CLASSES[label].lower() not in description[len(title) :].lower()
        # Longest nouns first: "crew-neck top" is the tee's own noun, not the shared "top".
        if any(title.endswith(" " + noun) for noun in _NOUNS[label]):
            own += 1
        elif any(title.endswith(" " + noun) for noun in _SHARED_NOUNS[label]):
            shared += 1
    assert abs(own / draws - TITLE_SHARES[0]) < 0.04
    assert abs(shared / draws - TITLE_SHARES[1]) < 0.04
