"""Catalog writes: taxonomy, category mapping, and the idempotent catalog and photo importers."""

import csv
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.text import slugify

from .images import ImageInfo, ImageRejected, image_inspect, image_read, image_store
from .models import NativeCategory, Photo, Product, ProductImage, Retailer, TaxonomyNode

logger = logging.getLogger(__name__)

TAXONOMY_SEPARATOR = " › "
CATALOG_REQUIRED_COLUMNS = ("retailer", "sku", "title", "image")
PHOTO_REQUIRED_COLUMNS = ("source", "image")
MAX_IMAGES_PER_PRODUCT = 20
MAX_IMAGE_REF_LENGTH = ProductImage._meta.get_field("source_url").max_length


class ManifestError(ValueError):
    """The manifest as a whole is unusable (unknown format, missing columns); nothing was imported."""


class RowInvalid(ValueError):
    """One manifest row is unusable; the message says why. Other rows are unaffected."""


@dataclass
class RowError:
    line: int
    reason: str

    def __str__(self):
        return f"line {self.line}: {self.reason}"


@dataclass
class ImportReport:
    created_count: int = 0
    updated_count: int = 0
    unchanged_count: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return self.created_count + self.updated_count + self.unchanged_count + len(self.errors)

    def count(self, outcome: str) -> None:
        setattr(self, f"{outcome}_count", getattr(self, f"{outcome}_count") + 1)


# -- taxonomy ---------------------------------------------------------------------------------------


def taxonomy_path_ensure(*, path: str) -> TaxonomyNode:
    """Return the master taxonomy node for `path` ("Clothing › Tops › T-shirt/top"), creating any
    missing ancestors. Both " › " and " > " separate levels. Idempotent.

    Raises:
        ValueError: an empty path or an empty level.
    """
    names = [part.strip() for part in path.replace(" > ", TAXONOMY_SEPARATOR).split(TAXONOMY_SEPARATOR.strip())]
    if not names or any(not name for name in names):
        raise ValueError(f"invalid taxonomy path: {path!r}")
    parent = None
    for depth, name in enumerate(names):
        node_path = TAXONOMY_SEPARATOR.join(names[: depth + 1])
        parent, _ = TaxonomyNode.objects.get_or_create(
            path=node_path, defaults={"parent": parent, "name": name, "depth": depth}
        )
    return parent


def native_category_map(*, native_category: NativeCategory, master_node: TaxonomyNode | None) -> int:
    """Map a retailer's native category onto a master node and re-file its products under it.

    Returns the number of products updated. Runs in one transaction.
    """
    with transaction.atomic():
        NativeCategory.objects.filter(pk=native_category.pk).update(master_node=master_node)
        native_category.master_node = master_node
        return Product.objects.filter(native_category=native_category).update(
            master_category=master_node, updated_at=timezone.now()
        )


# -- manifests ---------------------------------------------------------------------------------------


def manifest_rows(path: Path, *, required: Iterable[str]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row) from a CSV (with a header) or JSONL manifest.

    The format follows the suffix: `.csv`, `.jsonl`/`.ndjson`. Line numbers are 1-based lines of
    the file, the header being line 1 of a CSV; a CSV record whose quoted field spans several lines
    is numbered by its first line. A CSV record that cannot be parsed or has more fields than the
    header, and a JSONL line that is not a JSON object, are yielded as `{"__error__": reason}` so
    the caller reports it and goes on.

    Raises:
        ManifestError: unknown suffix, unreadable file, or a CSV header missing required columns.
    """
    required = tuple(required)
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path.name} is not UTF-8 text ({exc})") from exc
    if suffix == ".csv":
        # csv.reader rather than DictReader: DictReader skips blank lines internally, which hides
        # where a record starts, and a csv.Error from it would end the whole import.
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = [name.strip() for name in next(reader, [])]
        except csv.Error as exc:
            raise ManifestError(f"{path.name}: the header line is not valid CSV ({exc})") from exc
        missing = [name for name in required if name not in header]
        if missing:
            raise ManifestError(
                f"{path.name} is missing required column(s): {', '.join(missing)}; "
                f"found: {', '.join(header) or 'no header'}"
            )
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield start, {"__error__": f"not valid CSV ({exc})"}
                continue
            if not values:  # a blank line
                continue
            if len(values) > len(header):
                yield start, {"__error__": f"{len(values) - len(header)} more field(s) than the header has columns"}
                continue
            values += [""] * (len(header) - len(values))
            yield start, {name: value.strip() for name, value in zip(header, values, strict=True)}
    elif suffix in (".jsonl", ".ndjson"):
        # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters that
        # splitlines() treats as line breaks; a trailing "\r" is JSON whitespace.
        for line_no, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, {"__error__": f"not valid JSON ({exc.msg} at column {exc.colno})"}
                continue
            if not isinstance(row, dict):
                yield line_no, {"__error__": "not a JSON object"}
                continue
            yield line_no, {k: v.strip() if isinstance(v, str) else v for k, v in row.items()}
    else:
        raise ManifestError(f"{path.name}: unknown manifest format {suffix or '(no suffix)'}; use .csv or .jsonl")


def _row_require(row: dict, columns: Iterable[str]) -> None:
    if "__error__" in row:
        raise RowInvalid(row["__error__"])
    missing = [name for name in columns if row.get(name) in (None, "")]
    if missing:
        raise RowInvalid(f"missing value for {', '.join(missing)}")


def _row_text(row: dict, name: str, *, max_length: int) -> str:
    value = row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise RowInvalid(f"{name} must be text")
    value = str(value).strip()
    if len(value) > max_length:
        raise RowInvalid(f"{name} is longer than {max_length} characters")
    return value


def _row_bool(row: dict, name: str, default: bool) -> bool:
    value = row.get(name)
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y"):
        return True
    if text in ("0", "false", "no", "n"):
        return False
    raise RowInvalid(f"{name} must be true or false, not {value!r}")


def _image_refs(row: dict) -> list[str]:
    value = row.get("image")
    refs = value if isinstance(value, list) else str(value).split("|")
    refs = [str(ref).strip() for ref in refs if str(ref).strip()]
    if not refs:
        raise RowInvalid("missing value for image")
    if len(refs) > MAX_IMAGES_PER_PRODUCT:
        raise RowInvalid(f"more than {MAX_IMAGES_PER_PRODUCT} images")
    for ref in refs:
        if len(ref) > MAX_IMAGE_REF_LENGTH:  # ProductImage.source_url holds at most this
            raise RowInvalid(f"image reference longer than {MAX_IMAGE_REF_LENGTH} characters")
    return refs


def _images_load(refs: list[str], *, base_dir: Path, prefix: str) -> list[tuple[str, ImageInfo, str]]:
    """Read, check and store each image; returns (storage name, ImageInfo, ref) in order, each
    distinct image once (a product holds an image once). Raises RowInvalid."""
    stored, seen = [], set()
    for ref in refs:
        try:
            data = image_read(ref, base_dir=base_dir)
            info = image_inspect(data)
        except ImageRejected as exc:
            raise RowInvalid(f"image {ref}: {exc}") from exc
        if info.sha256 in seen:
            continue
        seen.add(info.sha256)
        stored.append((image_store(data, info, prefix=prefix), info, ref))
    return stored


def _import_rows(
    rows: Iterable[tuple[int, dict]],
    import_row: Callable[[dict], str],
    *,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    report = ImportReport()
    for line, row in rows:
        try:
            report.count(import_row(row))
        except RowInvalid as exc:
            report.errors.append(RowError(line, str(exc)))
        if progress:
            progress(1)
    return report


# -- catalog import ----------------------------------------------------------------------------------


def catalog_row_import(*, row: dict, base_dir: Path) -> str:
    """Upsert one product from a manifest row, keyed on (retailer, sku).

    Images are read and checked before the database is touched; the product, its category and
    its images are then written in one transaction, so a failing row leaves nothing half-written.
    Images are deduplicated by sha256; the row's image list replaces the product's images.

    Returns:
        "created", "updated" or "unchanged". Idempotent: the same row again gives "unchanged".

    Raises:
        RowInvalid: a missing or malformed field, or an image that cannot be read or is rejected.
    """
    _row_require(row, CATALOG_REQUIRED_COLUMNS)
    retailer_name = _row_text(row, "retailer", max_length=200)
    retailer_slug = slugify(retailer_name)[:80]
    if not retailer_slug:
        raise RowInvalid(f"retailer {retailer_name!r} has no letters or digits")
    sku = _row_text(row, "sku", max_length=120)
    title = _row_text(row, "title", max_length=300)
    description = _row_text(row, "description", max_length=20_000)
    native_path = _row_text(row, "native_category_path", max_length=500)
    master_path = _row_text(row, "master_category_path", max_length=500)
    is_active = _row_bool(row, "is_active", True)
    images = _images_load(_image_refs(row), base_dir=base_dir, prefix="products")

    with transaction.atomic():
        retailer, _ = Retailer.objects.get_or_create(slug=retailer_slug, defaults={"name": retailer_name})
        native = None
        if native_path:
            native, _ = NativeCategory.objects.get_or_create(retailer=retailer, path=native_path)
        if master_path:
            try:
                master = taxonomy_path_ensure(path=master_path)
            except ValueError as exc:
                raise RowInvalid(str(exc)) from exc
            if native is not None and native.master_node_id is None:
                native.master_node = master
                native.save(update_fields=["master_node"])
        else:
            master = native.master_node if native is not None else None
        fields = {
            "title": title,
            "description": description,
            "native_category": native,
            "master_category": master,
            "is_active": is_active,
        }
        product = Product.objects.select_for_update().filter(retailer=retailer, sku=sku).first()
        if product is None:
            try:
                with transaction.atomic():
                    product = Product.objects.create(retailer=retailer, sku=sku, **fields)
                outcome = "created"
            except IntegrityError:  # created concurrently by another import of the same row
                product = Product.objects.select_for_update().get(retailer=retailer, sku=sku)
                outcome = None
        else:
            outcome = None
        if outcome is None:
            changed = [name for name, value in fields.items() if getattr(product, name) != value]
            for name in changed:
                setattr(product, name, fields[name])
            if changed:
                product.save(update_fields=[*changed, "updated_at"])
            outcome = "updated" if changed else "unchanged"

        wanted = {info.sha256 for _, info, _ in images}
        deleted, _ = product.images.exclude(sha256__in=wanted).delete()
        existing = {image.sha256: image for image in product.images.all()}
        images_changed = bool(deleted)
        for position, (name, info, ref) in enumerate(images):
            current = existing.get(info.sha256)
            if current is None:
                ProductImage.objects.create(
                    product=product, image=name, sha256=info.sha256, width_px=info.width_px,
                    height_px=info.height_px, position=position, source_url=ref if "://" in ref else "",
                )
                images_changed = True
            elif current.position != position:
                current.position = position
                current.save(update_fields=["position"])
                images_changed = True
        if images_changed and outcome == "unchanged":
            outcome = "updated"
    return outcome


def catalog_import(
    *, path: Path, progress: Callable[[int], None] | None = None
) -> ImportReport:
    """Import a catalog manifest (CSV or JSONL) row by row; see `catalog_row_import`.

    Columns: retailer, sku, title, image (path relative to the manifest, or http(s) URL; several
    separated by "|"), and optionally description, native_category_path, master_category_path,
    is_active. Image files are read only inside settings.FITCHECK_IMPORT_ROOTS and URLs only from
    public addresses (catalog.images.image_read). Bad rows are reported in the returned ImportReport
    with their line number; good rows are imported regardless.

    Raises:
        ManifestError: the manifest as a whole is unusable; nothing was imported.
    """
    rows = manifest_rows(path, required=CATALOG_REQUIRED_COLUMNS)
    base_dir = path.resolve().parent
    return _import_rows(rows, lambda row: catalog_row_import(row=row, base_dir=base_dir), progress=progress)


# -- photo import ------------------------------------------------------------------------------------


def _row_datetime(row: dict, name: str) -> datetime | None:
    value = row.get(name)
    if value in (None, ""):
        return None
    try:
        parsed = parse_datetime(str(value))
    except ValueError:
        parsed = None
    if parsed is None:
        raise RowInvalid(f"{name} is not an ISO 8601 date-time: {value!r}")
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, timezone.get_default_timezone())
    return parsed


def photo_row_import(*, row: dict, base_dir: Path) -> str:
    """Upsert one customer photo, keyed on the sha256 of its image bytes.

    Returns "created", "updated" (source, caption or posted_at changed) or "unchanged".

    Raises:
        RowInvalid: a missing or malformed field, or an image that cannot be read or is rejected.
    """
    _row_require(row, PHOTO_REQUIRED_COLUMNS)
    fields = {
        "source": _row_text(row, "source", max_length=200),
        "caption": _row_text(row, "caption", max_length=5_000),
        "posted_at": _row_datetime(row, "posted_at"),
    }
    ((name, info, _ref),) = _images_load(_image_refs(row)[:1], base_dir=base_dir, prefix="photos")
    return photo_upsert(image_name=name, info=info, **fields)


def photo_upsert(*, image_name: str, info, source: str, caption: str, posted_at: datetime | None) -> str:
    """Create or update the Photo whose image has `info.sha256`. Returns "created"/"updated"/"unchanged"."""
    fields = {"source": source, "caption": caption, "posted_at": posted_at}
    with transaction.atomic():
        photo = Photo.objects.select_for_update().filter(sha256=info.sha256).first()
        if photo is None:
            try:
                with transaction.atomic():
                    Photo.objects.create(
                        sha256=info.sha256, image=image_name, width_px=info.width_px, height_px=info.height_px,
                        **fields,
                    )
                return "created"
            except IntegrityError:
                photo = Photo.objects.select_for_update().get(sha256=info.sha256)
        changed = [name for name, value in fields.items() if getattr(photo, name) != value]
        for name in changed:
            setattr(photo, name, fields[name])
        if changed:
            photo.save(update_fields=changed)
        return "updated" if changed else "unchanged"


def photos_import(*, path: Path, progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import customer photos from a CSV or JSONL manifest with columns source, image, and optionally
    caption and posted_at (ISO 8601). Images come from the same places as `catalog_import`'s.
    Idempotent; bad rows are reported, good rows imported.

    Raises:
        ManifestError: the manifest as a whole is unusable; nothing was imported.
    """
    rows = manifest_rows(path, required=PHOTO_REQUIRED_COLUMNS)
    base_dir = path.resolve().parent
    return _import_rows(rows, lambda row: photo_row_import(row=row, base_dir=base_dir), progress=progress)
