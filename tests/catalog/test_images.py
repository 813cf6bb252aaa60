"""Checking, reading and storing untrusted images: catalog.images."""

import hashlib
import io
import struct
import zlib
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from catalog.images import ImageRejected, image_inspect, image_read, image_store
from tests.factories import png


def jpeg(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit grayscale PNG of any size, written without holding its pixels.

    20000×20000 is 50 MB of filtered scanlines that deflate to ~200 kB: a decompression bomb.
    """
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(1)
    rows_per_block = 1000
    idat = []
    for start in range(0, height, rows_per_block):
        idat.append(compressor.compress(row * min(rows_per_block, height - start)))
    idat.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(idat))
        + _png_chunk(b"IEND", b"")
    )


# -- image_inspect ------------------------------------------------------------------------------------


def test_inspect_accepts_png_and_reports_size_and_sha256():
    data = png(seed=3, size=28)
    info = image_inspect(data)
    assert (info.width_px, info.height_px, info.format) == (28, 28, "PNG")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.extension == "png"


def test_inspect_accepts_jpeg():
    data = jpeg((40, 30))
    info = image_inspect(data)
    assert (info.width_px, info.height_px, info.format, info.extension) == (40, 30, "JPEG", "jpg")
    assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_inspect_rejects_empty_bytes():
    with pytest.raises(ImageRejected, match="empty"):
        image_inspect(b"")


def test_inspect_rejects_random_bytes_as_not_an_image():
    data = bytes(range(256)) * 8
    with pytest.raises(ImageRejected, match="not an image"):
        image_inspect(data)


def test_inspect_rejects_png_cut_in_half_as_corrupt():
    data = png(seed=1, size=64, mode="RGB")
    with pytest.raises(ImageRejected, match="corrupt or truncated"):
        image_inspect(data[: len(data) // 2])


def test_inspect_rejects_truncated_jpeg_as_corrupt():
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, format="JPEG")
    data = buffer.getvalue()
    with pytest.raises(ImageRejected, match="corrupt or truncated"):
        image_inspect(data[: len(data) // 2])


def test_inspect_rejects_20000px_decompression_bomb_before_decoding():
    bomb = bilevel_png(20_000, 20_000)
    assert len(bomb) < 1_000_000  # a small file that claims 400 megapixels
    with pytest.raises(ImageRejected) as excinfo:
        image_inspect(bomb)
    message = str(excinfo.value)
    assert "too large" in message
    assert "megapixels" in message


def test_inspect_rejects_image_over_max_pixels_naming_size_and_limit():
    # 8000×8000 is under Pillow's own bomb limit, so fitcheck's limit is what rejects it.
    with pytest.raises(ImageRejected) as excinfo:
        image_inspect(bilevel_png(8_000, 8_000), max_pixels=40_000_000)
    message = str(excinfo.value)
    assert "8000×8000" in message
    assert "64 megapixels" in message
    assert "limit is 40 megapixels" in message


def test_inspect_max_pixels_defaults_to_setting(settings):
    settings.FITCHECK_MAX_IMAGE_PIXELS = 28 * 28 - 1
    with pytest.raises(ImageRejected, match="megapixels"):
        image_inspect(png(seed=0, size=28))
    settings.FITCHECK_MAX_IMAGE_PIXELS = 28 * 28
    assert image_inspect(png(seed=0, size=28)).width_px == 28


def test_inspect_rejects_file_over_max_bytes_in_readable_units():
    data = png(seed=2, size=28)
    assert len(data) > 500
    with pytest.raises(ImageRejected) as excinfo:
        image_inspect(data, max_bytes=500)
    assert str(excinfo.value) == f"the image is {len(data)} bytes; the limit is 500 bytes"


def test_inspect_max_bytes_defaults_to_setting(settings):
    data = png(seed=2, size=28)
    settings.FITCHECK_MAX_IMAGE_BYTES = len(data) - 1
    with pytest.raises(ImageRejected, match="the limit is"):
        image_inspect(data)


def test_inspect_rejects_unsupported_formats():
    ico = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(ico, format="ICO")
    ppm = b"P5 2 2 255\n" + bytes([0, 64, 128, 255])
    for data, name in ((ico.getvalue(), "ICO"), (ppm, "PPM")):
        with pytest.raises(ImageRejected, match=rf"image format {name} is not accepted"):
            image_inspect(data)


# -- image_read -----------------------------------------------------------------------------------


def test_read_absolute_and_relative_paths(tmp_path):
    data = png(seed=4)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(data)
    assert image_read(str(tmp_path / "img" / "a.png")) == data
    assert image_read("img/a.png", base_dir=tmp_path) == data
    assert image_read("  img/a.png  ", base_dir=tmp_path) == data


def test_read_missing_file_names_the_reference_only(tmp_path):
    """The manifest's own reference, never the resolved path or the OS error (no oracle for what
    exists on the server; tests/catalog/test_import_safety.py)."""
    with pytest.raises(ImageRejected) as excinfo:
        image_read("nope.png", base_dir=tmp_path)
    message = str(excinfo.value)
    assert message == "could not read image file nope.png: it does not exist or is outside FITCHECK_IMPORT_ROOTS"


def test_read_rejects_empty_reference():
    with pytest.raises(ImageRejected, match="no image given"):
        image_read("   ")


def test_read_rejects_file_over_the_byte_limit(tmp_path, settings):
    settings.FITCHECK_MAX_IMAGE_BYTES = 100
    (tmp_path / "big.png").write_bytes(png(seed=5))
    with pytest.raises(ImageRejected, match="larger than the 100 bytes limit"):
        image_read("big.png", base_dir=tmp_path)


@pytest.mark.parametrize("ref", ["ftp://example.com/a.png", "file:///etc/passwd", "FTP://example.com/a.png"])
def test_read_rejects_unsupported_url_schemes(ref):
    with pytest.raises(ImageRejected, match="scheme not supported"):
        image_read(ref)


def test_read_unreachable_url_is_rejected(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # Port 9 (discard) is closed on loopback: the connection is refused at once.
    with pytest.raises(ImageRejected, match=r"could not download http://127\.0\.0\.1:9/x\.png"):
        image_read("http://127.0.0.1:9/x.png")


def test_read_scheme_check_is_case_insensitive(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # An upper-case scheme is still http: it is fetched (and fails to connect), not refused.
    with pytest.raises(ImageRejected, match="could not download"):
        image_read("HTTP://127.0.0.1:9/x.png")


# -- image_store ----------------------------------------------------------------------------------


def test_store_is_content_addressed_and_idempotent(settings):
    data = png(seed=6)
    info = image_inspect(data)
    first = image_store(data, info, prefix="products")
    second = image_store(data, info, prefix="products")
    assert first == second == f"products/{info.sha256[:2]}/{info.sha256}.png"
    folder = Path(settings.MEDIA_ROOT) / "products" / info.sha256[:2]
    assert [p.name for p in folder.iterdir()] == [f"{info.sha256}.png"]
    with default_storage.open(first) as fh:
        assert fh.read() == data


def test_store_keeps_different_images_apart():
    a, b = png(seed=7), png(seed=8)
    name_a = image_store(a, image_inspect(a), prefix="photos")
    name_b = image_store(b, image_inspect(b), prefix="photos")
    assert name_a != name_b
    assert name_a.startswith("photos/") and name_b.startswith("photos/")
    with default_storage.open(name_b) as fh:
        assert fh.read() == b
