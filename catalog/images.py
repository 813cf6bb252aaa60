"""Checking, fetching and storing untrusted images (product images and customer photos)."""

import hashlib
import io
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


class ImageRejected(ValueError):
    """An image that fitcheck will not store; the message says why, in words a person can act on."""


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    width_px: int
    height_px: int
    format: str  # Pillow format name, one of ALLOWED_FORMATS

    @property
    def extension(self) -> str:
        return ALLOWED_FORMATS[self.format]


def image_inspect(data: bytes, *, max_pixels: int | None = None, max_bytes: int | None = None) -> ImageInfo:
    """Check that `data` is a whole, decodable image of an allowed format and size.

    The pixel count is checked from the header before any pixel is decoded, so a decompression bomb
    (a small file that claims 20000×20000 px) costs nothing. The image is then fully decoded once
    to catch truncated or corrupt files.

    Args:
        data: the file's bytes.
        max_pixels: largest width×height accepted; default settings.FITCHECK_MAX_IMAGE_PIXELS.
        max_bytes: largest file size accepted; default settings.FITCHECK_MAX_IMAGE_BYTES.

    Returns:
        ImageInfo with the sha256 of `data` (hex), the size in pixels and the format.

    Raises:
        ImageRejected: empty, too large in bytes or pixels, not an image, an unsupported format,
            or corrupt/truncated.
    """
    max_pixels = max_pixels or settings.FITCHECK_MAX_IMAGE_PIXELS
    max_bytes = max_bytes or settings.FITCHECK_MAX_IMAGE_BYTES
    if not data:
        raise ImageRejected("the image file is empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"the image is {_size_text(len(data))}; the limit is {_size_text(max_bytes)}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                fmt = im.format
                if width * height > max_pixels:
                    raise ImageRejected(_too_many_pixels(width, height, max_pixels))
                if fmt not in ALLOWED_FORMATS:
                    raise ImageRejected(f"image format {fmt} is not accepted; use JPEG, PNG or WebP")
                im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow's own bomb check fires inside Image.open, before the size can be read here.
            raise ImageRejected(
                f"the image is too large to decode safely ({exc}); the limit is "
                f"{max_pixels / 1e6:.0f} megapixels"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageRejected("the file is not an image that can be read (JPEG, PNG or WebP expected)") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, ImageRejected):
                raise
            raise ImageRejected(f"the image is corrupt or truncated ({exc})") from exc
    return ImageInfo(sha256=hashlib.sha256(data).hexdigest(), width_px=width, height_px=height, format=fmt)


def _too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    return (
        f"the image is {width}×{height} px ({width * height / 1e6:.0f} megapixels); "
        f"the limit is {max_pixels / 1e6:.0f} megapixels"
    )


def _size_text(size_bytes: int) -> str:
    """A byte count in words: "312 bytes", "48.2 kB", "25.0 MB"."""
    if size_bytes < 1000:
        return f"{size_bytes} bytes"
    if size_bytes < 1_000_000:
        return f"{size_bytes / 1e3:.1f} kB"
    return f"{size_bytes / 1e6:.1f} MB"


def image_read(ref: str, *, base_dir: Path | None = None) -> bytes:
    """Read an image given as an http(s) URL or a file path (relative paths resolve from `base_dir`).

    Reads at most settings.FITCHECK_MAX_IMAGE_BYTES + 1 bytes, and URLs time out after
    settings.FITCHECK_FETCH_TIMEOUT_S seconds.

    Raises:
        ImageRejected: missing file, unreachable URL, HTTP error, unsupported scheme, or too big.
    """
    ref = (ref or "").strip()
    if not ref:
        raise ImageRejected("no image given")
    limit = settings.FITCHECK_MAX_IMAGE_BYTES
    if "://" in ref:
        if not ref.lower().startswith(("http://", "https://")):  # URL schemes are case-insensitive
            raise ImageRejected(f"image URL scheme not supported: {ref.split('://')[0]}")
        try:
            with urllib.request.urlopen(ref, timeout=settings.FITCHECK_FETCH_TIMEOUT_S) as resp:  # noqa: S310
                data = resp.read(limit + 1)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ImageRejected(f"could not download {ref}: {exc}") from exc
    else:
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            with path.open("rb") as fh:
                data = fh.read(limit + 1)
        except OSError as exc:
            raise ImageRejected(f"could not read image file {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ImageRejected(f"the image is larger than the {_size_text(limit)} limit")
    return data


def image_store(data: bytes, info: ImageInfo, *, prefix: str) -> str:
    """Store `data` under a content-addressed name and return that storage name.

    Idempotent: the same bytes always map to `<prefix>/<sha[:2]>/<sha>.<ext>` and are written once.
    A file written for a row whose database transaction later fails stays in storage, unreferenced;
    a retry reuses it.
    """
    name = f"{prefix}/{info.sha256[:2]}/{info.sha256}.{info.extension}"
    if default_storage.exists(name):
        return name
    saved = default_storage.save(name, ContentFile(data))
    if saved != name:  # another process stored the same bytes between exists() and save()
        default_storage.delete(saved)
    return name
