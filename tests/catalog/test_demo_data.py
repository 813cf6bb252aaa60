"""Unit tests for catalog.demo_data: Fashion-MNIST files, rendering, captions and PNG encoding.

Plain pytest (no database). No test touches the network: urllib.request.urlopen is replaced in
every test, and tests that need a download serve the bytes themselves.
"""

import gzip
import hashlib
import io
import logging
import math
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from catalog import demo_data
from catalog.demo_data import (
    FASHION_MNIST_CLASSES,
    FILES,
    OFFICIAL_URL,
    DatasetError,
    customer_photo_render,
    fashion_mnist_locate,
    fashion_mnist_read,
    non_product_photos,
    photo_caption,
    png_bytes,
)

SYSTEM_DIR = demo_data.SYSTEM_DIR  # captured before any test monkeypatches it
HAS_SYSTEM_DATASET = all((SYSTEM_DIR / name).is_file() for name in FILES)
needs_dataset = pytest.mark.skipif(
    not HAS_SYSTEM_DATASET, reason=f"Fashion-MNIST not installed at {SYSTEM_DIR} (apt: dataset-fashion-mnist)"
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that would open a URL; tests that download install their own fake."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"test tried to open {url}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def isolated_locations(tmp_path, monkeypatch):
    """No $FASHION_MNIST_DIR, no system dataset, downloads into tmp: only what the test creates exists."""
    monkeypatch.delenv(demo_data.ENV_VAR, raising=False)
    monkeypatch.setattr(demo_data, "SYSTEM_DIR", tmp_path / "no-system-dataset")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def idx_bytes(array: np.ndarray, *, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian uint32 dims, then the data."""
    if magic is None:
        magic = 0x0800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_split(directory, images, labels, *, split="test", image_magic=None, label_magic=None):
    images_name, labels_name = demo_data._SPLIT_FILES[split]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / images_name).write_bytes(gzip.compress(idx_bytes(images, magic=image_magic)))
    (directory / labels_name).write_bytes(gzip.compress(idx_bytes(labels, magic=label_magic)))
    return directory / images_name, directory / labels_name


def small_split(n=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    return images, labels


def make_dataset_dir(directory):
    """A directory with all four file names present (tiny valid content)."""
    images, labels = small_split()
    write_split(directory, images, labels, split="test")
    write_split(directory, images, labels, split="train")
    return directory


def official_gzip_from_debian(name: str, data: bytes) -> bytes:
    """Undo Debian's strip-nondeterminism on one file: put back FNAME and the upstream MTIME."""
    assert data[:4] == b"\x1f\x8b\x08\x00", "expected a gzip header without FNAME"
    mtime = 1504176606 if name.startswith("train") else 1504176627  # 2017-08-31 10:50:06 / :27 UTC
    original = name.removesuffix(".gz").encode() + b"\0"
    return b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + data[8:10] + original + data[10:]


class FakeResponse(io.BytesIO):
    pass


# --- constants --------------------------------------------------------------------------------------


def test_class_names_are_the_ten_fashion_mnist_labels_in_order():
    assert FASHION_MNIST_CLASSES == (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )


def test_files_carry_the_official_md5s():
    assert {name: info["md5"] for name, info in FILES.items()} == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    # Raw IDX size = 16-byte (images) / 8-byte (labels) header + the data.
    assert FILES["train-images-idx3-ubyte.gz"]["raw_size_bytes"] == 16 + 60000 * 28 * 28
    assert FILES["t10k-images-idx3-ubyte.gz"]["raw_size_bytes"] == 16 + 10000 * 28 * 28
    assert FILES["train-labels-idx1-ubyte.gz"]["raw_size_bytes"] == 8 + 60000
    assert FILES["t10k-labels-idx1-ubyte.gz"]["raw_size_bytes"] == 8 + 10000


# --- reading ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_test_split():
    if not HAS_SYSTEM_DATASET:
        pytest.skip(f"Fashion-MNIST not installed at {SYSTEM_DIR}")
    return fashion_mnist_read(SYSTEM_DIR, "test")


@needs_dataset
def test_read_real_train_split():
    images, labels = fashion_mnist_read(SYSTEM_DIR, "train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == [6000] * 10  # the published class balance
    assert images.flags.writeable


def test_read_real_test_split(real_test_split):
    images, labels = real_test_split
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    # Light object on a black background: corners are background, the centre mostly object.
    assert np.median(images[:, 0, 0]) == 0 and np.median(images[:, 14, 14]) > 50


@needs_dataset
def test_debian_files_are_the_official_files_with_a_rewritten_gzip_header():
    for name, expected in FILES.items():
        data = (SYSTEM_DIR / name).read_bytes()
        raw = gzip.decompress(data)
        assert len(raw) == expected["raw_size_bytes"]
        assert hashlib.sha256(raw).hexdigest() == expected["raw_sha256"]
        official = official_gzip_from_debian(name, data)
        assert len(official) == expected["size_bytes"]
        assert hashlib.md5(official).hexdigest() == expected["md5"]
        assert hashlib.sha256(official).hexdigest() == expected["sha256"]


def test_read_round_trips_a_small_valid_split(tmp_path):
    images, labels = small_split(n=7)
    write_split(tmp_path, images, labels)
    got_images, got_labels = fashion_mnist_read(tmp_path, "test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels.astype(np.int64))
    assert got_labels.dtype == np.int64


def test_truncated_gzip_raises_dataset_error_naming_the_file(tmp_path):
    images_path, _ = write_split(tmp_path, *small_split())
    data = images_path.read_bytes()
    images_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz") as info:
        fashion_mnist_read(tmp_path, "test")
    assert "gzip" in str(info.value)


def test_truncated_idx_payload_raises_dataset_error(tmp_path):
    images, labels = small_split(n=4)
    _, labels_path = write_split(tmp_path, images, labels)
    labels_path.write_bytes(gzip.compress(idx_bytes(labels)[:-1]))  # valid gzip, one label short
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz.*truncated"):
        fashion_mnist_read(tmp_path, "test")


def test_wrong_magic_number_raises_dataset_error_naming_the_file(tmp_path):
    images, labels = small_split()
    write_split(tmp_path, images, labels, image_magic=0x00000804)
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz: wrong IDX magic number 0x00000804"):
        fashion_mnist_read(tmp_path, "test")

    write_split(tmp_path, images, labels, label_magic=0x00000803)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz: wrong IDX magic number"):
        fashion_mnist_read(tmp_path, "test")


def test_not_gzip_at_all_raises_dataset_error(tmp_path):
    images, labels = small_split()
    images_path, _ = write_split(tmp_path, images, labels)
    images_path.write_bytes(idx_bytes(images))  # uncompressed
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        fashion_mnist_read(tmp_path, "test")


def test_wrong_image_size_label_count_and_label_range_raise(tmp_path):
    images, labels = small_split(n=3)
    write_split(tmp_path, np.zeros((3, 32, 32), np.uint8), labels)
    with pytest.raises(DatasetError, match="32x32"):
        fashion_mnist_read(tmp_path, "test")

    write_split(tmp_path, images, labels[:2])
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz: 2 labels for 3 images"):
        fashion_mnist_read(tmp_path, "test")

    write_split(tmp_path, images, np.array([0, 10, 1], np.uint8))
    with pytest.raises(DatasetError, match="label 10 is outside"):
        fashion_mnist_read(tmp_path, "test")


def test_missing_file_and_bad_split(tmp_path):
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: file not found"):
        fashion_mnist_read(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        fashion_mnist_read(tmp_path, "validation")


# --- locating -----------------------------------------------------------------------------------------


def test_locate_prefers_explicit_dir_over_environment(isolated_locations, monkeypatch):
    explicit = make_dataset_dir(isolated_locations / "explicit")
    from_env = make_dataset_dir(isolated_locations / "env")
    monkeypatch.setenv(demo_data.ENV_VAR, str(from_env))
    assert fashion_mnist_locate(explicit, allow_download=False) == explicit.resolve()
    assert fashion_mnist_locate(allow_download=False) == from_env.resolve()


def test_locate_uses_environment_before_system_dir(isolated_locations, monkeypatch):
    system = make_dataset_dir(isolated_locations / "system")
    from_env = make_dataset_dir(isolated_locations / "env")
    monkeypatch.setattr(demo_data, "SYSTEM_DIR", system)
    monkeypatch.setenv(demo_data.ENV_VAR, str(from_env))
    assert fashion_mnist_locate(allow_download=False) == from_env.resolve()
    monkeypatch.delenv(demo_data.ENV_VAR)
    assert fashion_mnist_locate(allow_download=False) == system.resolve()


def test_locate_warns_and_falls_through_when_explicit_dir_is_incomplete(isolated_locations, caplog):
    incomplete = isolated_locations / "incomplete"
    incomplete.mkdir()
    (incomplete / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    download_dir = make_dataset_dir(isolated_locations / "downloads")
    with caplog.at_level(logging.WARNING, logger="catalog.demo_data"):
        found = fashion_mnist_locate(incomplete, allow_download=False, download_dir=download_dir)
    assert found == download_dir.resolve()
    assert "t10k-labels-idx1-ubyte.gz" in caplog.text and str(incomplete) in caplog.text


def test_locate_without_download_lists_every_place_it_looked(isolated_locations, monkeypatch):
    explicit = isolated_locations / "explicit"
    env_dir = isolated_locations / "env"
    env_dir.mkdir()
    monkeypatch.setenv(demo_data.ENV_VAR, str(env_dir))
    download_dir = isolated_locations / "downloads"
    with pytest.raises(DatasetError) as info:
        fashion_mnist_locate(explicit, allow_download=False, download_dir=download_dir)
    message = str(info.value)
    for place in (explicit, env_dir, demo_data.SYSTEM_DIR, download_dir):
        assert str(place) in message
    assert "no such directory" in message and "missing train-images-idx3-ubyte.gz" in message
    assert not download_dir.exists()  # nothing created when downloads are off


def test_locate_downloads_verifies_and_reuses(isolated_locations, monkeypatch):
    source = make_dataset_dir(isolated_locations / "served")
    served = {name: (source / name).read_bytes() for name in FILES}
    fake_files = {
        name: {
            "size_bytes": len(data),
            "md5": hashlib.md5(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for name, data in served.items()
    }
    monkeypatch.setattr(demo_data, "FILES", fake_files)
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append((url, timeout))
        return FakeResponse(served[url.removeprefix(OFFICIAL_URL)])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    download_dir = isolated_locations / "downloads"
    found = fashion_mnist_locate(download_dir=download_dir)
    assert found == download_dir.resolve()
    assert sorted(calls) == sorted((OFFICIAL_URL + name, 30.0) for name in FILES)
    assert sorted(p.name for p in download_dir.iterdir()) == sorted(FILES)
    images, _ = fashion_mnist_read(found, "test")
    assert images.shape == (5, 28, 28)
    # A second call finds the verified files and downloads nothing.
    assert fashion_mnist_locate(download_dir=download_dir) == found
    assert len(calls) == len(FILES)


@needs_dataset
def test_download_verification_accepts_the_official_bytes(isolated_locations, monkeypatch):
    served = {name: official_gzip_from_debian(name, (SYSTEM_DIR / name).read_bytes()) for name in FILES}
    monkeypatch.setattr(
        urllib.request,
        "urlopen",
        lambda url, timeout=None: FakeResponse(served[url.removeprefix(OFFICIAL_URL)]),
    )
    found = fashion_mnist_locate(download_dir=isolated_locations / "downloads")
    images, labels = fashion_mnist_read(found, "test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)


def test_download_that_fails_verification_leaves_no_file(isolated_locations, monkeypatch):
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(b"<html>moved</html>")
    )
    download_dir = isolated_locations / "downloads"
    with pytest.raises(DatasetError) as info:
        fashion_mnist_locate(download_dir=download_dir)
    message = str(info.value)
    assert "failed verification" in message and "md5" in message and "size 18 bytes" in message
    assert OFFICIAL_URL in message and "Looked in:" in message
    assert list(download_dir.iterdir()) == []


def test_download_network_error_is_a_dataset_error(isolated_locations, monkeypatch):
    def unreachable(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(DatasetError, match="download failed: .*Name or service not known"):
        fashion_mnist_locate(download_dir=isolated_locations / "downloads")


# --- customer photos ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def product_images():
    """A few product images: real ones when installed, else a synthetic T-shirt-like silhouette."""
    if HAS_SYSTEM_DATASET:
        images, labels = fashion_mnist_read(SYSTEM_DIR, "test")
        return [images[np.flatnonzero(labels == c)[0]] for c in range(10)]
    shirt = np.zeros((28, 28), np.uint8)
    shirt[4:24, 8:20] = 180
    shirt[4:10, 3:25] = 200
    return [shirt]


def test_render_is_deterministic_for_a_seed_and_varies_across_seeds(product_images):
    image = product_images[0]
    first = np.asarray(customer_photo_render(image, rng=np.random.default_rng(7)))
    again = np.asarray(customer_photo_render(image, rng=np.random.default_rng(7)))
    other = np.asarray(customer_photo_render(image, rng=np.random.default_rng(8)))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 5


def test_render_size_and_mode(product_images):
    rng = np.random.default_rng(0)
    for image in product_images:
        for size_px in (224, 96):
            photo = customer_photo_render(image, rng=rng, size_px=size_px)
            assert photo.mode == "RGB" and photo.size == (size_px, size_px)
            pixels = np.asarray(photo)
            assert pixels.std() > 5  # not a flat or blank frame


def test_render_leaves_torch_and_numpy_global_rng_alone(product_images):
    torch.manual_seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(123)
    np.random.seed(123)
    customer_photo_render(product_images[0], rng=np.random.default_rng(1))
    assert torch.equal(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])


def test_render_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="2-D uint8"):
        customer_photo_render(np.zeros((28, 28), np.float32), rng=rng)
    with pytest.raises(ValueError, match="2-D uint8"):
        customer_photo_render(np.zeros((28, 28, 3), np.uint8), rng=rng)
    with pytest.raises(ValueError, match="size_px"):
        customer_photo_render(np.zeros((28, 28), np.uint8), rng=rng, size_px=16)


def test_render_of_blank_image_is_still_a_photo():
    photo = customer_photo_render(np.zeros((28, 28), np.uint8), rng=np.random.default_rng(3))
    assert photo.size == (224, 224)


def _inside_convex_quad(points: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """(N,) bool: points (N, 2) inside the convex quadrilateral quad (4, 2), either winding."""
    signs = []
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        signs.append((b[0] - a[0]) * (points[:, 1] - a[1]) - (b[1] - a[1]) * (points[:, 0] - a[0]))
    signs = np.stack(signs)
    return np.all(signs >= 0, axis=0) | np.all(signs <= 0, axis=0)


def test_crop_keeps_at_least_85_percent_of_the_object(product_images):
    # The homography maps the quad onto the frame, so "inside the photo" == "inside the quad".
    rng = np.random.default_rng(0)
    for image in product_images:
        alpha = demo_data._alpha_from_intensity(image.astype(np.float32) / 255)
        ys, xs = np.nonzero(alpha > 0.5)
        centres = np.stack([xs + 0.5, ys + 0.5], axis=1)
        for _ in range(30):
            quad = np.array(demo_data._crop_quad(alpha, rng))
            assert _inside_convex_quad(centres, quad).mean() >= 0.85


def test_homography_maps_the_four_points():
    src = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], float)
    dst = np.array([[1, 1], [5, 1], [5, 5], [1, 5]], float)
    np.testing.assert_allclose(demo_data._homography(src, dst), [[2, 0, 1], [0, 2, 1], [0, 0, 1]], atol=1e-12)


def test_bicubic_matrix_reproduces_torchvision_resize():
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    grid = torch.rand(1, 5, 7)
    expected = F.resize(grid, [40, 56], interpolation=InterpolationMode.BICUBIC, antialias=False)[0]
    got = demo_data._bicubic_matrix(5, 40) @ grid[0].numpy() @ demo_data._bicubic_matrix(7, 56).T
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_gaussian_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    image = np.random.default_rng(0).random((3, 40, 50), dtype=np.float32)
    for sigma in (0.5, 1.0, 1.6):
        radius = math.ceil(2 * sigma)  # our truncation; scipy takes it explicitly
        expected = ndimage.gaussian_filter(
            image, (0, sigma, sigma), mode="nearest", radius=(0, radius, radius)
        )
        np.testing.assert_allclose(demo_data._gaussian_blur(image, sigma), expected, atol=1e-5)


def test_occluder_covers_at_most_a_quarter_of_the_garment():
    size_px = 128
    ys, xs = np.mgrid[:size_px, :size_px]
    garment = (ys - 64) ** 2 + (xs - 64) ** 2 < 40**2
    rng = np.random.default_rng(0)
    placed = 0
    for _ in range(100):
        occluder = demo_data._occluder(rng, size_px, garment)
        if occluder is None:
            continue
        placed += 1
        alpha, shade, colour = occluder
        assert alpha.shape == shade.shape == (size_px, size_px) and colour.shape == (3,)
        covered = alpha > 0.5
        assert covered.mean() <= 0.2
        assert (covered & garment).sum() <= 0.25 * garment.sum()
    assert placed > 50


# --- non-product photos, captions -----------------------------------------------------------------------


def test_non_product_photos_are_distinct_and_deterministic():
    count = 15  # more than there are source images, so crops of one source must differ
    photos = non_product_photos(rng=np.random.default_rng(5), count=count, size_px=64)
    assert len(photos) == count
    digests = set()
    for caption, image in photos:
        assert isinstance(caption, str) and caption.strip()
        assert image.mode == "RGB" and image.size == (64, 64)
        digests.add(hashlib.sha256(image.tobytes()).hexdigest())
    assert len(digests) == count
    again = non_product_photos(rng=np.random.default_rng(5), count=count, size_px=64)
    assert [c for c, _ in again] == [c for c, _ in photos]
    assert [im.tobytes() for _, im in again] == [im.tobytes() for _, im in photos]
    assert non_product_photos(rng=np.random.default_rng(5), count=0) == []
    with pytest.raises(ValueError):
        non_product_photos(rng=np.random.default_rng(5), count=-1)


def test_photo_caption_tags_a_brand_and_names_no_product():
    product_words = ("t-shirt", "top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker")
    product_words += ("bag", "boot")
    for seed in range(200):
        caption = photo_caption(np.random.default_rng(seed))
        assert caption == photo_caption(np.random.default_rng(seed))
        assert "\n" not in caption
        assert any(f"@{handle}" in caption for handle in demo_data.BRAND_HANDLES)
        words = caption.lower().replace("#", " ").replace("@", " ").split()
        assert not any(word.strip("!?,.") in product_words for word in words), caption
    tagged = photo_caption(np.random.default_rng(0), brand="@acme")
    assert "@acme" in tagged and "@@" not in tagged
    with pytest.raises(ValueError):
        photo_caption(np.random.default_rng(0), brand="@")


# --- PNG encoding -----------------------------------------------------------------------------------------


def test_png_bytes_are_stable_lossless_and_free_of_metadata():
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    plain = Image.fromarray(pixels)
    # The same pixels, loaded from a PNG that carries a text chunk, dpi and a timestamp-like comment.
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made at 2024-05-01T12:00:00")
    buffer = io.BytesIO()
    plain.save(buffer, format="PNG", pnginfo=info, dpi=(300, 300))
    decorated = Image.open(io.BytesIO(buffer.getvalue()))
    assert decorated.info.get("Comment")

    encoded = png_bytes(plain)
    assert png_bytes(decorated) == encoded
    assert png_bytes(pixels) == encoded
    assert png_bytes(Image.fromarray(pixels.copy())) == encoded
    for chunk in (b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs", b"iCCP", b"eXIf"):
        assert chunk not in encoded
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encoded))), pixels)


def test_png_bytes_of_a_rendered_photo_round_trip():
    photo = customer_photo_render(np.full((28, 28), 200, np.uint8), rng=np.random.default_rng(0), size_px=64)
    decoded = Image.open(io.BytesIO(png_bytes(photo)))
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(photo))


def test_png_bytes_rejects_unsupported_arrays():
    with pytest.raises(ValueError):
        png_bytes(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        png_bytes(np.zeros((4, 4, 2), np.uint8))


def test_math_helpers_do_not_leak_float64():
    # The renderer's speed depends on staying in float32; a float64 slip doubles the memory traffic.
    ys, xs, r2 = demo_data._unit_grid(32)
    assert ys.dtype == xs.dtype == r2.dtype == np.float32
    for seed in range(30):  # covers every background kind
        background = demo_data._background(np.random.default_rng(seed), 32, avoid_luma=0.5)
        assert background.dtype == np.float32 and background.shape == (3, 32, 32)
        assert math.isfinite(float(background.sum()))
