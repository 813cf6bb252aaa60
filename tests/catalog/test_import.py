"""The catalog and photo importers (catalog.services) and their management commands."""

import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from catalog.models import NativeCategory, Photo, Product, ProductImage, Retailer, TaxonomyNode
from catalog.services import (
    ManifestError,
    catalog_import,
    native_category_map,
    photos_import,
    taxonomy_path_ensure,
)
from tests.factories import png

pytestmark = pytest.mark.django_db

HEADER = "retailer,sku,title,description,native_category_path,master_category_path,image"


@pytest.fixture
def manifest_dir(tmp_path) -> Path:
    """A folder holding manifests and their images img/0.png … img/9.png (distinct 28×28 PNGs)."""
    folder = tmp_path / "manifest"
    (folder / "img").mkdir(parents=True)
    for seed in range(10):
        (folder / "img" / f"{seed}.png").write_bytes(png(seed))
    return folder


def write(folder: Path, name: str, *lines: str) -> Path:
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stored_files(media_root, prefix: str) -> list[Path]:
    return sorted(p for p in (Path(media_root) / prefix).rglob("*") if p.is_file())


def run_command(name: str, path: Path) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(name, str(path), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# -- catalog_import: creating, re-running, updating -----------------------------------------------------


def test_import_creates_retailer_products_categories_and_images(manifest_dir, settings):
    path = write(
        manifest_dir, "catalog.csv", HEADER,
        "Northwind Apparel,NW-1,Classic tee,Soft cotton,Women > Tees,,img/0.png",
        "Northwind Apparel,NW-2,Slim chinos,,Women > Trousers,,img/1.png|img/2.png",
    )
    report = catalog_import(path=path)

    assert (report.created_count, report.updated_count, report.unchanged_count, report.errors) == (2, 0, 0, [])
    retailer = Retailer.objects.get()
    assert (retailer.slug, retailer.name) == ("northwind-apparel", "Northwind Apparel")
    tee = Product.objects.get(retailer=retailer, sku="NW-1")
    assert (tee.title, tee.description, tee.is_active) == ("Classic tee", "Soft cotton", True)
    assert tee.native_category.path == "Women > Tees"
    assert tee.master_category is None
    assert set(NativeCategory.objects.values_list("path", flat=True)) == {"Women > Tees", "Women > Trousers"}

    image = tee.images.get()
    data = (manifest_dir / "img" / "0.png").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assert (image.sha256, image.width_px, image.height_px, image.position) == (sha, 28, 28, 0)
    assert image.image.name == f"products/{sha[:2]}/{sha}.png"
    assert image.source_url == ""
    with image.image.open("rb") as fh:
        assert fh.read() == data

    chinos = Product.objects.get(sku="NW-2")
    assert [(i.position, i.sha256) for i in chinos.images.all()] == [
        (0, hashlib.sha256(png(1)).hexdigest()),
        (1, hashlib.sha256(png(2)).hexdigest()),
    ]
    assert len(stored_files(settings.MEDIA_ROOT, "products")) == 3


def test_reimport_is_unchanged_and_writes_nothing(manifest_dir, settings):
    path = write(
        manifest_dir, "catalog.csv", HEADER,
        "Northwind,NW-1,Classic tee,,Tees,Clothing › Tops › T-shirt/top,img/0.png",
        "Northwind,NW-2,Slim chinos,,Trousers,,img/1.png|img/2.png",
    )
    catalog_import(path=path)
    before = {
        "products": list(Product.objects.order_by("pk").values_list("pk", "updated_at")),
        "images": list(ProductImage.objects.order_by("pk").values_list("pk", "position")),
        "natives": NativeCategory.objects.count(),
        "nodes": TaxonomyNode.objects.count(),
        "retailers": Retailer.objects.count(),
        "files": stored_files(settings.MEDIA_ROOT, "products"),
    }

    report = catalog_import(path=path)

    assert (report.created_count, report.updated_count, report.unchanged_count, report.errors) == (0, 0, 2, [])
    after = {
        "products": list(Product.objects.order_by("pk").values_list("pk", "updated_at")),
        "images": list(ProductImage.objects.order_by("pk").values_list("pk", "position")),
        "natives": NativeCategory.objects.count(),
        "nodes": TaxonomyNode.objects.count(),
        "retailers": Retailer.objects.count(),
        "files": stored_files(settings.MEDIA_ROOT, "products"),
    }
    assert after == before


def test_changed_title_is_updated_and_other_rows_unchanged(manifest_dir):
    chinos = "Northwind,NW-2,Chinos,,,,img/1.png"
    write(manifest_dir, "v1.csv", HEADER, "Northwind,NW-1,Classic tee,,,,img/0.png", chinos)
    catalog_import(path=manifest_dir / "v1.csv")
    write(manifest_dir, "v2.csv", HEADER, "Northwind,NW-1,Classic crew tee,,,,img/0.png", chinos)

    report = catalog_import(path=manifest_dir / "v2.csv")

    assert (report.created_count, report.updated_count, report.unchanged_count) == (0, 1, 1)
    assert Product.objects.get(sku="NW-1").title == "Classic crew tee"
    assert Product.objects.count() == 2


def test_changed_image_list_replaces_the_products_images(manifest_dir):
    write(manifest_dir, "v1.csv", HEADER, "Northwind,NW-1,Tee,,,,img/0.png|img/1.png")
    catalog_import(path=manifest_dir / "v1.csv")
    write(manifest_dir, "v2.csv", HEADER, "Northwind,NW-1,Tee,,,,img/2.png|img/0.png")

    report = catalog_import(path=manifest_dir / "v2.csv")

    assert report.updated_count == 1
    product = Product.objects.get()
    sha = {seed: hashlib.sha256(png(seed)).hexdigest() for seed in range(3)}
    assert [(i.position, i.sha256) for i in product.images.all()] == [(0, sha[2]), (1, sha[0])]


def test_same_image_shared_by_products_is_stored_once(manifest_dir, settings):
    (manifest_dir / "img" / "copy-of-0.png").write_bytes(png(0))  # same bytes, another name
    path = write(
        manifest_dir, "catalog.csv", HEADER,
        "Northwind,NW-1,Tee,,,,img/0.png",
        "Harbor & Pine,HP-1,Tee,,,,img/0.png",
        "Harbor & Pine,HP-2,Tee again,,,,img/copy-of-0.png",
    )
    report = catalog_import(path=path)

    assert report.created_count == 3
    assert ProductImage.objects.count() == 3
    assert ProductImage.objects.values("sha256").distinct().count() == 1
    assert ProductImage.objects.values("image").distinct().count() == 1
    assert len(stored_files(settings.MEDIA_ROOT, "products")) == 1


def test_same_image_twice_in_one_row_is_kept_once(manifest_dir):
    (manifest_dir / "img" / "copy-of-0.png").write_bytes(png(0))
    path = write(manifest_dir, "catalog.csv", HEADER, "Northwind,NW-1,Tee,,,,img/0.png|img/1.png|img/copy-of-0.png")

    report = catalog_import(path=path)

    assert (report.created_count, report.errors) == (1, [])
    assert Product.objects.get().images.count() == 2
    assert catalog_import(path=path).unchanged_count == 1


def test_jsonl_rows_with_image_lists_import(manifest_dir):
    rows = [
        {"retailer": "Northwind", "sku": 101, "title": "Tee", "image": ["img/0.png", "img/1.png"],
         "description": "Line\u2028separator and paragraph\u2029separator inside a string"},
        {"retailer": "Northwind", "sku": "102", "title": "Chinos", "image": "img/2.png", "is_active": False},
    ]
    path = manifest_dir / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")

    report = catalog_import(path=path)

    assert (report.created_count, report.errors) == (2, [])
    tee = Product.objects.get(sku="101")
    assert tee.description == rows[0]["description"]
    assert tee.images.count() == 2
    assert Product.objects.get(sku="102").is_active is False


# -- whole-manifest errors ---------------------------------------------------------------------------------


def test_manifest_missing_a_required_column_imports_nothing(manifest_dir):
    path = write(manifest_dir, "catalog.csv", "retailer,title,image", "Northwind,Tee,img/0.png")

    with pytest.raises(ManifestError, match="missing required column.*: sku"):
        catalog_import(path=path)

    assert Product.objects.count() == 0
    assert Retailer.objects.count() == 0


def test_command_reports_missing_column_as_command_error(manifest_dir):
    path = write(manifest_dir, "catalog.csv", "retailer,sku,image", "Northwind,NW-1,img/0.png")

    with pytest.raises(CommandError, match="missing required column.*title"):
        run_command("catalog_import", path)

    assert Product.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("catalog.xlsx", "retailer,sku,title,image\n", "unknown manifest format .xlsx"),
        ("catalog.csv", b"retailer,sku,title,image\n\xff\xfe,1,2,3\n", "is not UTF-8"),
        ("catalog.csv", "", "missing required column"),
    ],
)
def test_unusable_manifests_raise_manifest_error(manifest_dir, name, content, message):
    path = manifest_dir / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ManifestError, match=message):
        catalog_import(path=path)


def test_command_on_missing_manifest_file(tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        run_command("catalog_import", tmp_path / "nope.csv")


# -- bad rows --------------------------------------------------------------------------------------------------


def test_bad_rows_reported_by_line_and_good_rows_imported(manifest_dir):
    (manifest_dir / "img" / "corrupt.png").write_bytes(png(9)[:200])
    path = write(
        manifest_dir, "catalog.csv", HEADER,
        "Northwind,NW-1,Tee,,Tees,,img/0.png",                             # 2: good
        "Ghost Shop,GS-1,Ghost tee,,Ghosts,,img/corrupt.png",              # 3: corrupt image
        "Northwind,,No sku,,Tees,,img/1.png",                              # 4: no sku
        "Northwind,NW-3,Lost,,Tees,,img/missing.png",                      # 5: unknown image path
        'Northwind,NW-4,Long text,"first line',                            # 6: a record over 2 lines
        'second line",Tees,,img/2.png',
        'Northwind,NW-7,Long text,"first line',                            # 8: over 3 lines, bad image
        "",
        'third line",Tees,,img/nope.png',
        "Northwind,NW-5,Extra,,Tees,,img/3.png,surplus",                   # 11: too many fields
        "",                                                                # 12: blank, skipped
        "Rollback Co,RB-1,Tee,,Odd,Clothing ›  › Tops,img/4.png",          # 13: bad master path
        "Northwind,NW-6,Tee 6,,Tees,,img/5.png",                           # 14: good
    )

    report = catalog_import(path=path)

    # A record is numbered by its first line, where a person editing the file would look.
    assert [(e.line, e.reason.split(":")[0]) for e in report.errors] == [
        (3, "image img/corrupt.png"),
        (4, "missing value for sku"),
        (5, "image img/missing.png"),
        (8, "image img/nope.png"),
        (11, "1 more field(s) than the header has columns"),
        (13, "invalid taxonomy path"),
    ]
    reasons = {e.line: e.reason for e in report.errors}
    assert "corrupt or truncated" in reasons[3]
    assert "could not read image file" in reasons[5] and "missing.png" in reasons[5]
    assert str(report.errors[0]) == f"line 3: {reasons[3]}"
    assert report.created_count == 3
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["NW-1", "NW-4", "NW-6"]
    assert Product.objects.get(sku="NW-4").description == "first line\nsecond line"
    assert ProductImage.objects.count() == 3
    # A failed row leaves nothing behind: not its retailer, native category or taxonomy nodes.
    assert list(Retailer.objects.values_list("slug", flat=True)) == ["northwind"]
    assert list(NativeCategory.objects.values_list("path", flat=True)) == ["Tees"]
    assert TaxonomyNode.objects.count() == 0


def test_invalid_values_are_row_errors(manifest_dir):
    path = write(
        manifest_dir, "catalog.csv", "retailer,sku,title,image,is_active",
        "Northwind,NW-1,Tee,img/0.png,maybe",
        "!!!,NW-2,Tee,img/1.png,",
        f"Northwind,NW-3,{'x' * 301},img/2.png,",
        f"Northwind,NW-4,Tee,http://127.0.0.1:9/{'a' * 1000}.png,",
        "Northwind,NW-5,Tee,ftp://example.com/a.png,yes",
    )
    report = catalog_import(path=path)

    assert [str(e) for e in report.errors] == [
        "line 2: is_active must be true or false, not 'maybe'",
        "line 3: retailer '!!!' has no letters or digits",
        "line 4: title is longer than 300 characters",
        "line 5: image reference longer than 1000 characters",
        "line 6: image ftp://example.com/a.png: image URL scheme not supported: ftp",
    ]
    assert Product.objects.count() == 0


def test_unparseable_csv_record_is_a_row_error(manifest_dir):
    path = write(
        manifest_dir, "catalog.csv", "retailer,sku,title,description,image",
        f'Northwind,NW-1,Tee,"{"x" * 140_000}",img/0.png',  # over the csv module's field limit
        "Northwind,NW-2,Chinos,,img/1.png",
    )
    report = catalog_import(path=path)

    assert [(e.line, e.reason.startswith("not valid CSV")) for e in report.errors] == [(2, True)]
    assert list(Product.objects.values_list("sku", flat=True)) == ["NW-2"]


def test_jsonl_bad_lines_reported_by_line(manifest_dir):
    path = write(
        manifest_dir, "catalog.jsonl",
        json.dumps({"retailer": "Northwind", "sku": "NW-1", "title": "Tee", "image": "img/0.png"}),
        '{"retailer": "Northwind", "sku": ',
        "",
        "[1, 2, 3]",
        json.dumps({"retailer": "Northwind", "sku": "NW-2", "image": "img/1.png"}),
        json.dumps({"retailer": "Northwind", "sku": "NW-3", "title": {"en": "Tee"}, "image": "img/2.png"}),
        json.dumps({"retailer": "Northwind", "sku": "NW-4", "title": "Shirt", "image": "img/3.png"}),
    )
    report = catalog_import(path=path)

    assert [(e.line, e.reason.split(" (")[0]) for e in report.errors] == [
        (2, "not valid JSON"),
        (4, "not a JSON object"),
        (5, "missing value for title"),
        (6, "title must be text"),
    ]
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["NW-1", "NW-4"]


# -- categories and the master taxonomy ----------------------------------------------------------------


def test_master_category_path_maps_product_and_native_category(manifest_dir):
    path = write(
        manifest_dir, "catalog.csv", HEADER,
        "Northwind,NW-1,Tee,,Tees,Clothing › Tops › T-shirt/top,img/0.png",
        "Northwind,NW-2,Another tee,,Tees,,img/1.png",                      # inherits the native's mapping
        "Harbor & Pine,HP-1,Tee,,T-Shirts & Tops,Clothing > Tops > T-shirt/top,img/2.png",
    )
    report = catalog_import(path=path)

    assert report.created_count == 3
    node = TaxonomyNode.objects.get(path="Clothing › Tops › T-shirt/top")
    assert (node.name, node.depth, node.parent.path, node.parent.parent.path) == (
        "T-shirt/top", 2, "Clothing › Tops", "Clothing",
    )
    assert TaxonomyNode.objects.count() == 3
    assert set(Product.objects.values_list("master_category", flat=True)) == {node.pk}
    assert set(NativeCategory.objects.values_list("path", "master_node")) == {
        ("Tees", node.pk), ("T-Shirts & Tops", node.pk),
    }


def test_native_category_map_refiles_its_products(manifest_dir):
    path = write(
        manifest_dir, "catalog.csv", HEADER,
        "Northwind,NW-1,Tee,,New In,,img/0.png",
        "Northwind,NW-2,Tee,,New In,,img/1.png",
        "Northwind,NW-3,Chinos,,Trousers,,img/2.png",
        "Harbor & Pine,HP-1,Tee,,New In,,img/3.png",
    )
    catalog_import(path=path)
    native = NativeCategory.objects.get(retailer__slug="northwind", path="New In")
    node = taxonomy_path_ensure(path="Clothing › Tops › T-shirt/top")

    assert native_category_map(native_category=native, master_node=node) == 2

    native.refresh_from_db()
    assert native.master_node == node
    assert dict(Product.objects.values_list("sku", "master_category")) == {
        "NW-1": node.pk, "NW-2": node.pk, "NW-3": None, "HP-1": None,
    }
    # A later import of the same rows keeps the mapping: the row names no master path.
    assert catalog_import(path=path).unchanged_count == 4
    assert native_category_map(native_category=native, master_node=None) == 2
    assert Product.objects.filter(master_category__isnull=False).count() == 0


def test_taxonomy_path_ensure_is_idempotent_and_rejects_empty_levels(db):
    first = taxonomy_path_ensure(path="Shoes > Sneaker")
    assert taxonomy_path_ensure(path="Shoes › Sneaker") == first
    assert TaxonomyNode.objects.count() == 2
    for bad in ("", "Shoes ›  › Sneaker", " › "):
        with pytest.raises(ValueError, match="invalid taxonomy path"):
            taxonomy_path_ensure(path=bad)


def test_admin_mapping_change_saves_other_fields_and_refiles(manifest_dir, as_role, client):
    catalog_import(path=write(manifest_dir, "catalog.csv", HEADER, "Northwind,NW-1,Tee,,New In,,img/0.png"))
    native = NativeCategory.objects.get()
    node = taxonomy_path_ensure(path="Clothing › Tops")
    as_role("admin")

    response = client.post(
        f"/admin/catalog/nativecategory/{native.pk}/change/",
        {"retailer": native.retailer_id, "path": "Women > Tops", "master_node": node.pk},
    )

    assert response.status_code == 302
    native.refresh_from_db()
    assert (native.path, native.master_node) == ("Women > Tops", node)
    assert Product.objects.get().master_category == node


def test_admin_adds_taxonomy_node_with_its_path(as_role, client):
    parent = taxonomy_path_ensure(path="Clothing › Tops")
    as_role("admin")

    response = client.post("/admin/catalog/taxonomynode/add/", {"parent": parent.pk, "name": "Knitwear"})
    assert response.status_code == 302
    node = TaxonomyNode.objects.get(name="Knitwear")
    assert (node.path, node.depth, node.parent) == ("Clothing › Tops › Knitwear", 2, parent)

    response = client.post("/admin/catalog/taxonomynode/add/", {"parent": "", "name": "Clothing"})
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    response = client.post("/admin/catalog/taxonomynode/add/", {"parent": "", "name": "Bags › Totes"})
    assert response.status_code == 200
    assert TaxonomyNode.objects.count() == 3

    # A node's name cannot be edited in place: that would leave its path and its children's stale.
    client.post(f"/admin/catalog/taxonomynode/{parent.pk}/change/", {"parent": "", "name": "Upper"})
    parent.refresh_from_db()
    assert (parent.name, parent.path) == ("Tops", "Clothing › Tops")


# -- the catalog_import command --------------------------------------------------------------------------


def test_command_prints_summary(manifest_dir):
    path = write(
        manifest_dir, "catalog.csv", HEADER, "Northwind,NW-1,Tee,,,,img/0.png", "Northwind,NW-2,Tee,,,,img/1.png"
    )

    out, err = run_command("catalog_import", path)
    assert out.strip() == "catalog.csv: 2 created, 0 updated, 0 unchanged, 0 failed"

    out, err = run_command("catalog_import", path)
    assert out.strip() == "catalog.csv: 0 created, 0 updated, 2 unchanged, 0 failed"
    assert Product.objects.count() == 2


def test_command_fails_after_importing_good_rows(manifest_dir):
    path = write(
        manifest_dir, "catalog.csv", HEADER,
        "Northwind,NW-1,Tee,,,,img/0.png",
        "Northwind,NW-2,Tee,,,,img/missing.png",
        "Northwind,NW-3,Tee,,,,img/2.png",
    )
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError, match=r"1 row\(s\) failed; the other rows were imported"):
        call_command("catalog_import", str(path), stdout=out, stderr=err)

    assert out.getvalue().strip() == "catalog.csv: 2 created, 0 updated, 0 unchanged, 1 failed"
    assert "catalog.csv: line 3: image img/missing.png: could not read image file" in err.getvalue()
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["NW-1", "NW-3"]


# -- photos_import ----------------------------------------------------------------------------------------------

PHOTO_HEADER = "source,caption,posted_at,image"


def test_photos_import_creates_photos_keyed_by_sha256(manifest_dir, settings):
    path = write(
        manifest_dir, "photos.csv", PHOTO_HEADER,
        "instagram:@ana,Loving my new tee,2026-10-01T09:30:00+02:00,img/0.png",
        "instagram:@bo,,2026-10-02 08:00,img/1.png",
        "instagram:@cy,No date,,img/2.png",
    )
    report = photos_import(path=path)

    assert (report.created_count, report.errors) == (3, [])
    sha = hashlib.sha256(png(0)).hexdigest()
    ana = Photo.objects.get(sha256=sha)
    assert (ana.source, ana.caption, ana.width_px, ana.height_px) == ("instagram:@ana", "Loving my new tee", 28, 28)
    assert ana.posted_at == datetime(2026, 10, 1, 7, 30, tzinfo=UTC)
    assert ana.image.name == f"photos/{sha[:2]}/{sha}.png"
    naive = Photo.objects.get(source="instagram:@bo").posted_at
    assert naive == datetime(2026, 10, 2, 8, 0, tzinfo=ZoneInfo(settings.TIME_ZONE))
    assert Photo.objects.get(source="instagram:@cy").posted_at is None
    assert len(stored_files(settings.MEDIA_ROOT, "photos")) == 3


def test_photos_import_is_idempotent_and_updates_in_place(manifest_dir, settings):
    v1 = write(manifest_dir, "v1.csv", PHOTO_HEADER, "ig:@ana,Hi,,img/0.png", "ig:@bo,Yo,,img/1.png")
    photos_import(path=v1)
    pks = list(Photo.objects.order_by("pk").values_list("pk", flat=True))

    again = photos_import(path=v1)
    assert (again.created_count, again.updated_count, again.unchanged_count) == (0, 0, 2)

    v2 = write(manifest_dir, "v2.csv", PHOTO_HEADER, "ig:@ana,Hi there,,img/0.png", "ig:@bo,Yo,,img/1.png")
    changed = photos_import(path=v2)
    assert (changed.created_count, changed.updated_count, changed.unchanged_count) == (0, 1, 1)
    assert list(Photo.objects.order_by("pk").values_list("pk", flat=True)) == pks
    assert Photo.objects.get(source="ig:@ana").caption == "Hi there"
    assert len(stored_files(settings.MEDIA_ROOT, "photos")) == 2


def test_photos_import_bad_rows_reported_by_line(manifest_dir):
    (manifest_dir / "img" / "corrupt.png").write_bytes(png(9)[:150])
    path = write(
        manifest_dir, "photos.csv", PHOTO_HEADER,
        "ig:@ana,,2026-10-01T09:30:00Z,img/0.png",
        "ig:@bo,,yesterday,img/1.png",
        "ig:@cy,,2026-13-45T25:00:00,img/2.png",
        "ig:@di,,,img/corrupt.png",
        ",,,img/3.png",
        "ig:@ed,,,img/4.png",
    )
    report = photos_import(path=path)

    assert [str(e).split(":")[0] for e in report.errors] == ["line 3", "line 4", "line 5", "line 6"]
    reasons = [e.reason for e in report.errors]
    assert reasons[0] == "posted_at is not an ISO 8601 date-time: 'yesterday'"
    assert reasons[1].startswith("posted_at is not an ISO 8601 date-time")
    assert "corrupt or truncated" in reasons[2]
    assert reasons[3] == "missing value for source"
    assert sorted(Photo.objects.values_list("source", flat=True)) == ["ig:@ana", "ig:@ed"]


def test_photos_import_command(manifest_dir):
    path = write(manifest_dir, "photos.jsonl", json.dumps({"source": "ig:@ana", "image": "img/0.png"}), "{oops")

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="1 row"):
        call_command("photos_import", str(path), stdout=out, stderr=err)

    assert out.getvalue().strip() == "photos.jsonl: 1 created, 0 updated, 0 unchanged, 1 failed"
    assert "photos.jsonl: line 2: not valid JSON" in err.getvalue()
    assert Photo.objects.count() == 1
