"""Demo data: real Fashion-MNIST products and synthetic customer photos of them.

Pure Python + numpy + Pillow + torchvision (no Django import), so the demo seeding command, the
benchmarks and the ML tests can all use it.

- `fashion_mnist_locate` / `fashion_mnist_read`: find and parse the Fashion-MNIST IDX files
  (Xiao, Rasul & Vollgraf 2017, https://github.com/zalandoresearch/fashion-mnist).
- `customer_photo_render`: one 28×28 product image → an RGB "customer photo" of that product
  (background texture, tint, crop, rotation, perspective, lighting, blur, sometimes an occluder).
- `non_product_photos`: photos that show no product at all (scikit-image's bundled samples).
- `photo_caption`: an Instagram-style caption that tags a brand but names no product.
- `png_bytes`: deterministic lossless PNG encoding (stable sha256 for the same pixels).

Every random choice is drawn from the `numpy.random.Generator` passed in; no torch or global RNG is
used, so the same generator state gives the same pixels (for the same numpy/torch/Pillow builds).
"""

from __future__ import annotations

import colorsys
import contextlib
import functools
import gzip
import hashlib
import importlib
import io
import logging
import math
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
import zlib
from typing import Literal

import numpy as np
from PIL import Image


class _Lazy:
    """A module (or one of its attributes) imported on first use: reading the dataset and checking
    a load that is already complete need no torch, and importing torch and torchvision cost every
    `make demo` restart 4-5 s of CPU before the web server got the cores (issue 16)."""

    def __init__(self, module: str, attribute: str | None = None):
        self._target = (module, attribute)
        self._value = None

    def __getattr__(self, name):
        if self._value is None:
            module, attribute = self._target
            value = importlib.import_module(module)
            self._value = getattr(value, attribute) if attribute else value
        return getattr(self._value, name)


torch = _Lazy("torch")
F = _Lazy("torchvision.transforms.v2.functional")
InterpolationMode = _Lazy("torchvision.transforms", "InterpolationMode")

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
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

OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# The four files as published at OFFICIAL_URL. `size_bytes`, `md5` and `sha256` are of the .gz file
# as downloaded (md5s as in the upstream README and torchvision.datasets.FashionMNIST); `raw_*` are
# of the decompressed IDX payload, which does not depend on how the file was gzipped.
#
# Debian's dataset-fashion-mnist package ships the same deflate streams with a rewritten gzip header
# (strip-nondeterminism drops the FNAME field and sets MTIME to the package date), so its files are
# len(name) + 1 bytes smaller and have different md5s, but identical `raw_sha256`. Verified by
# re-inserting FNAME and the original MTIME (2017-08-31 10:50:06 UTC for train-*, 10:50:27 UTC for
# t10k-*) into the Debian files: that reproduces all four official md5s byte for byte.
# (t10k-labels is ...a12a480..., as upstream and torchvision publish it; "...a12e480..." is a typo.)
FILES: dict[str, dict] = {
    "train-images-idx3-ubyte.gz": {
        "size_bytes": 26421880,
        "md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "sha256": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "raw_size_bytes": 47040016,
        "raw_sha256": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    },
    "train-labels-idx1-ubyte.gz": {
        "size_bytes": 29515,
        "md5": "25c81989df183df01b3e8a0aad5dffbe",
        "sha256": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "raw_size_bytes": 60008,
        "raw_sha256": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    },
    "t10k-images-idx3-ubyte.gz": {
        "size_bytes": 4422102,
        "md5": "bef4ecab320f06d8554ea6380940ec79",
        "sha256": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "raw_size_bytes": 7840016,
        "raw_sha256": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    },
    "t10k-labels-idx1-ubyte.gz": {
        "size_bytes": 5148,
        "md5": "bb300cfdad3c16e7a12a480ee83cd310",
        "sha256": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "raw_size_bytes": 10008,
        "raw_sha256": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

ENV_VAR = "FASHION_MNIST_DIR"
SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")  # Debian/Ubuntu: dataset-fashion-mnist
DOWNLOAD_TIMEOUT_S = 30.0

_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# IDX magic numbers: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions.
_IDX_MAGIC_IMAGES = 0x00000803
_IDX_MAGIC_LABELS = 0x00000801
_IMAGE_SIDE_PX = 28


class DatasetError(Exception):
    """Fashion-MNIST files are missing, incomplete or corrupt; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------------
# Locating and reading Fashion-MNIST
# ---------------------------------------------------------------------------------------------------


def _default_download_dir() -> pathlib.Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "fitcheck" / "fashion-mnist"


def _missing_files(directory: pathlib.Path) -> list[str]:
    """Names from FILES that are not a non-empty regular file in `directory`."""
    missing = []
    for name in FILES:
        path = directory / name
        try:
            if not path.is_file() or path.stat().st_size == 0:
                missing.append(name)
        except OSError:
            missing.append(name)
    return missing


def _download_file(name: str, directory: pathlib.Path) -> None:
    """Download one file from OFFICIAL_URL into `directory`, verified against FILES[name].

    The file is written to a temporary name and renamed only after size, md5 and sha256 match, so
    an interrupted or corrupt download never leaves a file that a later search would accept.
    """
    expected = FILES[name]
    url = OFFICIAL_URL + name
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    while chunk := response.read(1 << 20):
                        size += len(chunk)
                        if size > expected["size_bytes"]:
                            raise DatasetError(
                                f"{url}: download is larger than the expected {expected['size_bytes']} bytes"
                            )
                        md5.update(chunk)
                        sha256.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                raise DatasetError(f"{url}: download failed: {exc}") from exc
        problems = []
        if size != expected["size_bytes"]:
            problems.append(f"size {size} bytes, expected {expected['size_bytes']}")
        if md5.hexdigest() != expected["md5"]:
            problems.append(f"md5 {md5.hexdigest()}, expected {expected['md5']}")
        if sha256.hexdigest() != expected["sha256"]:
            problems.append(f"sha256 {sha256.hexdigest()}, expected {expected['sha256']}")
        if problems:
            raise DatasetError(f"{url}: downloaded file failed verification: {'; '.join(problems)}")
        os.replace(tmp_name, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def fashion_mnist_locate(
    explicit_dir: str | os.PathLike | None = None,
    *,
    allow_download: bool = True,
    download_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Find a directory holding the four Fashion-MNIST .gz files, downloading them as a last resort.

    Looks, in order, in `explicit_dir`, in `$FASHION_MNIST_DIR`, in SYSTEM_DIR (Debian's
    dataset-fashion-mnist package) and in `download_dir`; the first that has all four files
    (non-empty) wins. Files are found by name; their content is checked when `fashion_mnist_read`
    parses them. A named directory (argument or environment variable) that lacks files is logged as
    a warning and the search goes on.

    Args:
        explicit_dir: a directory to try first, or None.
        allow_download: when nothing is found, download the missing files from OFFICIAL_URL (urllib,
            DOWNLOAD_TIMEOUT_S per request) into `download_dir`, verifying size, md5 and sha256.
        download_dir: where downloads go and are looked for; default
            `$XDG_CACHE_HOME/fitcheck/fashion-mnist` (`~/.cache/...`). Created if needed.

    Returns:
        The directory (absolute pathlib.Path) holding the four files named in FILES.

    Raises:
        DatasetError: nothing found and `allow_download` is False, or a download failed or did not
            verify; the message lists every place looked and what was missing there.

    Side effects: with `allow_download`, may create `download_dir` and write up to ~30 MB into it.
    """
    download_path = pathlib.Path(download_dir) if download_dir is not None else _default_download_dir()
    candidates: list[tuple[str, pathlib.Path]] = []
    if explicit_dir is not None:
        candidates.append(("explicit_dir argument", pathlib.Path(explicit_dir)))
    env_dir = os.environ.get(ENV_VAR)
    if env_dir:
        candidates.append((f"${ENV_VAR}", pathlib.Path(env_dir)))
    candidates.append(("system package dataset-fashion-mnist", SYSTEM_DIR))
    candidates.append(("download directory", download_path))

    looked: list[str] = []
    for label, directory in candidates:
        if directory.is_dir():
            missing = _missing_files(directory)
            if not missing:
                return directory.resolve()
            reason = "missing " + ", ".join(missing)
        else:
            reason = "no such directory"
        looked.append(f"{directory} ({label}): {reason}")
        if label in ("explicit_dir argument", f"${ENV_VAR}"):
            logger.warning(
                "Fashion-MNIST: %s %s has no usable dataset (%s); looking further", label, directory, reason
            )

    where = "; ".join(looked)
    if not allow_download:
        raise DatasetError(f"Fashion-MNIST files not found (downloads disabled). Looked in: {where}")

    try:
        download_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create download directory {download_path}: {exc}. Looked in: {where}"
        ) from exc
    for name in _missing_files(download_path):
        logger.info("Fashion-MNIST: downloading %s%s into %s", OFFICIAL_URL, name, download_path)
        try:
            _download_file(name, download_path)
        except DatasetError as exc:
            raise DatasetError(f"{exc}. Looked in: {where}") from exc
    return download_path.resolve()


def _read_gzip(path: pathlib.Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # EOFError: truncated stream
        raise DatasetError(f"{path}: not a complete gzip file ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc


def _parse_idx(
    data: bytes, path: pathlib.Path, *, magic: int, ndim: int
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Parse an unsigned-byte IDX payload (LeCun et al., MNIST file format) into a flat uint8 array.

    Returns the data (read-only view into `data`) and its dimensions; raises DatasetError on a wrong
    magic number or a payload whose length does not match the header.
    """
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(f"{path}: {len(data)} bytes is shorter than the {header_size}-byte IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(f"{path}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    body = len(data) - header_size
    if body != expected:
        raise DatasetError(
            f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"file has {body} (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size), dims


def fashion_mnist_read(
    directory: str | os.PathLike, split: Literal["train", "test"]
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of Fashion-MNIST from the four .gz IDX files in `directory`.

    Args:
        directory: a directory holding the files named in FILES (see `fashion_mnist_locate`).
        split: "train" (60,000 examples) or "test" (10,000 examples, the t10k files).

    Returns:
        (images, labels): images (N, 28, 28) uint8, 0 = background, object light on black; labels
        (N,) int64 in 0..9, indexes into FASHION_MNIST_CLASSES. Both arrays are writable copies.

    Raises:
        ValueError: `split` is not "train" or "test".
        DatasetError: a file is missing, not valid gzip, truncated, has a wrong IDX magic number or
            image size, the image and label counts differ, or a label is outside 0..9. The message
            names the file.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = pathlib.Path(directory)
    images_path, labels_path = (directory / name for name in _SPLIT_FILES[split])

    flat, dims = _parse_idx(_read_gzip(images_path), images_path, magic=_IDX_MAGIC_IMAGES, ndim=3)
    if dims[1:] != (_IMAGE_SIDE_PX, _IMAGE_SIDE_PX):
        raise DatasetError(f"{images_path}: images are {dims[1]}x{dims[2]} px, expected 28x28")
    images = flat.reshape(dims).copy()

    flat_labels, (label_count,) = _parse_idx(
        _read_gzip(labels_path), labels_path, magic=_IDX_MAGIC_LABELS, ndim=1
    )
    if label_count != dims[0]:
        raise DatasetError(f"{labels_path}: {label_count} labels for {dims[0]} images in {images_path.name}")
    if label_count and int(flat_labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{labels_path}: label {int(flat_labels.max())} is outside 0..9")
    return images, flat_labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# Customer photos of a product
# ---------------------------------------------------------------------------------------------------

_BG_KINDS = ("gradient", "stripes", "wood", "fabric", "wall")
_SKIN_TONES = (
    (0.96, 0.80, 0.69),
    (0.91, 0.70, 0.56),
    (0.78, 0.57, 0.44),
    (0.55, 0.37, 0.26),
    (0.36, 0.24, 0.17),
)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601
_MIN_OBJECT_KEPT = 0.85  # share of the object's pixels that must stay inside the photo

# Layout note: images are planar (3, S, S) float32 in [0, 1] throughout. Interleaved (S, S, 3)
# arrays make numpy broadcast over a length-3 inner loop, which was ~5x slower per operation.


@functools.lru_cache(maxsize=8)
def _unit_grid(size_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ys (S, 1), xs (1, S), r2 (S, S)) float32: pixel centres in [0, 1] and the squared distance
    from the image centre. Read-only, shared between calls."""
    axis = (np.arange(size_px, dtype=np.float32) + 0.5) / size_px
    ys, xs = axis[:, None].copy(), axis[None, :].copy()
    r2 = (ys - 0.5) ** 2 + (xs - 0.5) ** 2
    for array in (ys, xs, r2):
        array.flags.writeable = False
    return ys, xs, r2


@functools.lru_cache(maxsize=64)
def _bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float32 matrix W with W @ x == F.resize(x, BICUBIC) along one axis.

    Obtained by resizing the identity with torchvision, so the weights are exactly the library's;
    applying them as two small matrix products is ~10x faster than upsample_bicubic2d on one core.
    """
    eye = torch.eye(size_in, dtype=torch.float32)[None]
    matrix = F.resize(eye, [size_out, size_in], interpolation=InterpolationMode.BICUBIC, antialias=False)[0]
    out = matrix.numpy().copy()
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=4)
def _blur_matrix_28(size: int) -> np.ndarray:
    """(size, size) float32 operator of F.gaussian_blur(kernel 5, sigma 1.2) along one axis, found
    by blurring the identity (reflect padding included), for the garment's contact shadow."""
    eye = torch.eye(size, dtype=torch.float32)[None]
    out = F.gaussian_blur(eye, [1, 5], [1.2, 1.2])[0].numpy().copy()
    out.flags.writeable = False
    return out


def _value_noise(rng: np.random.Generator, size_px: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth random field (size_px, size_px) float32 in about [0, 1]: a coarse grid of uniform
    values upsampled bicubically ("value noise", cf. Perlin 1985)."""
    coarse = rng.random((cells_y, cells_x), dtype=np.float32)
    return _bicubic_matrix(cells_y, size_px) @ coarse @ _bicubic_matrix(cells_x, size_px).T


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _background(rng: np.random.Generator, size_px: int, avoid_luma: float) -> np.ndarray:
    """A procedural surface to lay a garment on: (3, S, S) float32 RGB, about [0, 1].

    One of: two-colour gradient, soft stripes, wood planks (rings warped by value noise, streaks,
    seams), fabric (fine weave and large wrinkles) or painted wall; all under uneven lighting.
    If the mean luma is within 0.25 of `avoid_luma` (the garment's), the colours are scaled towards
    black or white to put it about 0.3 away, keeping the garment visible.
    """
    ys, xs, _ = _unit_grid(size_px)
    kind = _BG_KINDS[rng.integers(len(_BG_KINDS))]
    theta = rng.uniform(0, math.pi)
    along = xs * math.cos(theta) + ys * math.sin(theta)  # (S, S) coordinate along a random direction
    # Every kind is c0 + dc * t for a scalar field t (S, S); computing t once keeps it to a few passes.
    if kind == "gradient":
        hue = rng.random()
        c0 = _hsv(hue, rng.uniform(0.1, 0.6), rng.uniform(0.45, 0.95))
        c1 = _hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.9))
        lo, hi = float(along.min()), float(along.max())
        t = (along - lo) * (1.0 / max(hi - lo, 1e-6))
    elif kind == "stripes":
        c0 = _hsv(rng.random(), rng.uniform(0.05, 0.7), rng.uniform(0.55, 0.95))
        c1 = _hsv(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.25, 0.85))
        wave = np.sin(2 * math.pi * (rng.uniform(4, 14) * along + rng.random()))
        t = np.clip(0.5 + rng.uniform(1.0, 4.0) * wave, 0, 1)
    elif kind == "wood":
        vertical = bool(rng.integers(2))
        across = xs if vertical else ys  # 1-D coordinate across the grain
        warp = _value_noise(rng, size_px, 4, 4)
        streaks = _value_noise(rng, size_px, *((3, 48) if vertical else (48, 3)))
        rings = np.sin(2 * math.pi * (rng.uniform(3, 9) * across + rng.uniform(1.5, 4) * warp))
        t = 0.3 + 0.3 * rings + 0.4 * streaks
        planks = rng.integers(2, 5)
        seam = np.abs(((across * planks + rng.random()) % 1.0) - 0.5) > 0.485
        t = t + seam * np.float32(0.6)  # seams are dark grooves (t > 1 extrapolates past c1, stays >= 0)
        c0 = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.35, 0.6), rng.uniform(0.6, 0.9))
        c1 = c0 * rng.uniform(0.45, 0.7)
    elif kind == "fabric":
        c1 = _hsv(rng.random(), rng.uniform(0.05, 0.55), rng.uniform(0.45, 0.95))
        c0 = np.zeros(3, dtype=np.float32)
        freq = rng.uniform(35, 70)
        weave = np.sin(2 * math.pi * freq * ys) * np.sin(2 * math.pi * freq * xs)  # outer product
        folds = _value_noise(rng, size_px, 3, 3)
        t = 1.0 + rng.uniform(0.04, 0.1) * weave + rng.uniform(0.15, 0.35) * (folds - 0.5)
    else:  # wall: flat paint lit from one side
        c1 = _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.55, 0.95))
        c0 = np.zeros(3, dtype=np.float32)
        t = 0.8 + 0.35 * along
    light = 0.85 + 0.3 * _value_noise(rng, size_px, 2, 2)  # uneven room lighting
    t_lit = t * light
    dc = c1 - c0
    # Mean luma from the fields' means (no full-size pass), then an affine change of the colours.
    luma = float(_LUMA @ c0) * float(light.mean()) + float(_LUMA @ dc) * float(t_lit.mean())
    offset = np.zeros(3, dtype=np.float32)
    if abs(avoid_luma - luma) < 0.25:
        target = avoid_luma - 0.3 if avoid_luma > 0.5 else avoid_luma + 0.3
        if target < luma:  # darken: scale towards black
            gain = max(target, 0.05) / max(luma, 1e-3)
        else:  # lighten: scale towards white
            gain = (1.0 - min(target, 0.97)) / max(1.0 - luma, 1e-3)
            offset[:] = 1.0 - gain
        c0, dc = c0 * gain, dc * gain
    return offset[:, None, None] + c0[:, None, None] * light + dc[:, None, None] * t_lit


def _alpha_from_intensity(v: np.ndarray) -> np.ndarray:
    """Object coverage in [0, 1] from Fashion-MNIST intensity in [0, 1] (backgrounds are exactly 0);
    the soft ramp keeps the anti-aliased outline."""
    return np.clip((v - 0.02) * (1 / 0.18), 0.0, 1.0)


def _garment_layers(image_28: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Low-resolution layers to warp: (3, H, W) float32 = intensity, texture noise, contact shadow.

    Alpha and colour are derived after upscaling and warping, so outlines are smooth iso-contours
    of the interpolated intensity rather than enlarged 28-px steps.
    """
    v = image_28.astype(np.float32) * (1 / 255)
    h, w = v.shape
    # Contact shadow on the surface below: the silhouette, blurred and offset down/sideways.
    blurred = _blur_matrix_28(h) @ _alpha_from_intensity(v) @ _blur_matrix_28(w).T
    dy, dx = int(rng.integers(0, 3)), int(rng.integers(-1, 2))
    shadow = np.zeros_like(blurred)
    shadow[dy:, max(dx, 0) : w + min(dx, 0)] = blurred[: h - dy, max(-dx, 0) : w - max(dx, 0)]
    shadow *= rng.uniform(0.2, 0.5)
    texture = rng.random(v.shape, dtype=np.float32)  # uneven fabric/lighting on the garment
    return torch.from_numpy(np.stack([v, texture, shadow]))


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(3, 3) projective map taking the four (x, y) points `src` (4, 2) to `dst` (4, 2): the
    standard direct linear solve with h33 = 1 (Hartley & Zisserman 2004, sec. 4.1)."""
    a = np.zeros((8, 8))
    b = dst.reshape(8).astype(np.float64)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst, strict=True)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
    return np.append(np.linalg.solve(a, b), 1.0).reshape(3, 3)


def _crop_quad(alpha_28: np.ndarray, rng: np.random.Generator) -> list[list[float]]:
    """Source quadrilateral (image-pixel coordinates, TL, TR, BR, BL) that will fill the output frame.

    A square 0.9–1.6× the object's larger side, shifted, rotated by up to ±30° (hand-held camera),
    with a keystone and jittered corners (perspective). A draw is kept only if >= 85% of the
    object's pixels land inside the frame; after 10 failed draws an upright square 1.25× the object
    is used. Method: random resized crop (Szegedy et al. 2015) generalised to a homography.
    """
    ys, xs = np.nonzero(alpha_28 > 0.5)
    if ys.size == 0:  # blank image: frame the whole thing
        h, w = alpha_28.shape
        return [[0.0, 0.0], [float(w), 0.0], [float(w), float(h)], [0.0, float(h)]]
    y0, y1, x0, x1 = float(ys.min()), float(ys.max() + 1), float(xs.min()), float(xs.max() + 1)
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    size = max(x1 - x0, y1 - y0)
    points = np.stack([xs + 0.5, ys + 0.5, np.ones(xs.size)])  # homogeneous pixel centres (3, N)
    unit_square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    for _ in range(10):
        side = size * rng.uniform(0.9, 1.6)
        cx = centre_x + rng.uniform(-0.15, 0.15) * side
        cy = centre_y + rng.uniform(-0.15, 0.15) * side
        angle = math.radians(float(np.clip(rng.normal(0, 10), -30, 30)))
        keystone = rng.uniform(-0.12, 0.12)  # camera tilted up/down: top edge shorter or longer
        jitter = rng.uniform(-0.05, 0.05, size=(4, 2)) * side
        half = side / 2
        top = half * (1 - keystone)
        corners = np.array([[-top, -half], [top, -half], [half, half], [-half, half]])
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        quad = corners @ rotation.T + [cx, cy] + jitter
        mapped = _homography(quad, unit_square) @ points
        u, v = mapped[0] / mapped[2], mapped[1] / mapped[2]
        kept = float(np.mean((u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)))
        if kept >= _MIN_OBJECT_KEPT:
            return quad.tolist()
    half = size * 0.625
    return [[centre_x + dx * half, centre_y + dy * half] for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]


def _warp(layers: torch.Tensor, quad: list[list[float]], size_px: int) -> np.ndarray:
    """Sample (C, h, w) float32 `layers` so that the source quadrilateral `quad` (continuous pixel
    coordinates, TL, TR, BR, BL) fills a (size_px, size_px) frame: crop, upscale, rotation and
    perspective in one bilinear resampling. Returns (C, size_px, size_px) float32; outside the
    source is 0.

    Same model as torchvision.transforms.v2.functional.perspective (a homography from four point
    pairs, sampled with grid_sample), but F.perspective keeps the input size, so it would need a
    224-px upscale first, and it builds its grid with two (S², 3) bmm calls: 3–4 ms together at
    224 px on one core, most of the per-photo budget. Here the grid is a few numpy broadcasts and
    the 28-px source is upscaled 2x bicubically first (F.resize) so outlines stay smooth.
    """
    source = F.resize(
        layers, [layers.shape[-2] * 2, layers.shape[-1] * 2], interpolation=InterpolationMode.BICUBIC
    )
    h, w = layers.shape[-2:]
    frame = np.array([[0, 0], [size_px, 0], [size_px, size_px], [0, size_px]], dtype=np.float64)
    # Output pixel centre -> source position, normalised to grid_sample's [-1, 1] (align_corners=False).
    m = _homography(frame, np.asarray(quad, dtype=np.float64))
    m = (np.diag([2.0 / w, 2.0 / h, 1.0]) @ m).tolist()  # Python floats keep the maths in float32
    centres = np.arange(size_px, dtype=np.float32) + 0.5
    u, v = centres[None, :], centres[:, None]
    den = m[2][0] * u + m[2][1] * v + m[2][2]
    grid = np.empty((1, size_px, size_px, 2), dtype=np.float32)
    grid[0, ..., 0] = (m[0][0] * u + m[0][1] * v + m[0][2]) / den - 1.0
    grid[0, ..., 1] = (m[1][0] * u + m[1][1] * v + m[1][2]) / den - 1.0
    out = torch.nn.functional.grid_sample(
        source[None], torch.from_numpy(grid), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out[0].numpy()


def _occluder(
    rng: np.random.Generator, size_px: int, garment_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A thumb, a phone or a tag in front of the lens.

    Returns (alpha (S, S), shade (S, S), colour (3,)) float32, the occluder's RGB being
    colour * shade; or None when no placement within five tries covers 2–20% of the frame and at
    most 25% of the visible garment (`garment_mask` (S, S) bool).
    """
    ys, xs, _ = _unit_grid(size_px)
    garment_px = max(int(garment_mask.sum()), 1)
    scale = 1.0
    for _ in range(5):
        if rng.random() < 0.5:  # thumb: a skin-coloured ellipse coming in from an edge
            edge = rng.integers(4)
            along = rng.uniform(0.15, 0.85)
            cy, cx = [(0.0, along), (along, 1.0), (1.0, along), (along, 0.0)][edge]
            ry, rx = rng.uniform(0.18, 0.32) * scale, rng.uniform(0.1, 0.17) * scale
            if edge in (1, 3):
                ry, rx = rx, ry
            dist = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2
            alpha = np.clip((1.0 - dist) * 2.5, 0, 1)  # soft: out of focus, right at the lens
            colour = np.array(_SKIN_TONES[rng.integers(len(_SKIN_TONES))], dtype=np.float32)
            shade = 1.05 - 0.35 * np.clip(dist, 0, 1)
        else:  # phone / price tag / sheet of paper: a flat rectangle reaching in from an edge
            h, w = rng.uniform(0.12, 0.4) * scale, rng.uniform(0.12, 0.4) * scale
            top, left = rng.uniform(0.0, 1.0 - h), rng.uniform(0.0, 1.0 - w)
            edge = rng.integers(4)
            if edge == 0:
                top = -0.1 * h
            elif edge == 1:
                left = 1.0 - 0.9 * w
            elif edge == 2:
                top = 1.0 - 0.9 * h
            else:
                left = -0.1 * w
            alpha = ((ys >= top) & (ys < top + h)) & ((xs >= left) & (xs < left + w))
            colour = _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.05, 0.95))
            shade = np.broadcast_to(0.9 + 0.2 * (ys - top) / h, alpha.shape)
        covered_mask = alpha > 0.5
        area = float(covered_mask.mean())
        covered = float(np.count_nonzero(covered_mask & garment_mask)) / garment_px
        if 0.02 <= area <= 0.2 and covered <= 0.25:
            return alpha.astype(np.float32), shade.astype(np.float32), colour
        scale *= 0.75
    return None


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (C, H, W) float32, kernel truncated at 2 sigma, edge padding.

    torchvision's F.gaussian_blur does the same with a 2-D depthwise conv2d, which costs 2–5 ms at
    224 px on one CPU core, the whole per-photo budget; shifted adds along each axis cost 0.6–1 ms.
    Matches scipy.ndimage.gaussian_filter(mode="nearest", radius=ceil(2 sigma)) (tested).
    """
    radius = max(1, math.ceil(2 * sigma))
    taps = np.exp(-0.5 * (np.arange(radius + 1, dtype=np.float32) / sigma) ** 2)
    taps /= taps[0] + 2 * taps[1:].sum()
    r = radius
    for axis in (1, 2):
        n = image.shape[axis]
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.moveaxis(np.pad(image, pad, mode="edge"), axis, 0)
        out = padded[r : r + n] * taps[0]
        for j in range(1, r + 1):
            out += (padded[r - j : r - j + n] + padded[r + j : r + j + n]) * taps[j]
        image = np.moveaxis(out, 0, axis)
    return image


def customer_photo_render(
    image_28: np.ndarray, *, rng: np.random.Generator, size_px: int = 224
) -> Image.Image:
    """Render one product image as a photo a customer might have taken of it.

    Pipeline (every parameter drawn from `rng`; no torch or global RNG):
    1. Garment: Fashion-MNIST intensity (background exactly 0) becomes coverage (alpha) and
       shading; the colour is white mixed 10–45% with a random hue, at 60–100% lightness; a blurred,
       offset silhouette becomes its contact shadow. Mirrored in 25% of photos (selfie camera).
    2. Camera geometry: one homography (Hartley & Zisserman 2004) maps a source quadrilateral onto
       the frame: a random resized crop (Szegedy et al. 2015) 0.9–1.6× the object's size that keeps
       >= 85% of its pixels, rotation N(0, 10°) clipped to ±30°, keystone and corner jitter. Sampled
       bilinearly (torch grid_sample) from a 2x bicubic upscale (F.resize) of the 28-px layers.
    3. Background: gradient, stripes, wood planks, fabric or painted wall under uneven light,
       coloured to differ in luma from the garment by >= 0.25. Composited with the "over" operator
       (Porter & Duff 1984), shadow darkening the background.
    4. Occlusion in 30% of photos: a thumb, phone or tag covering <= 25% of the visible garment.
    5. Photometry: F.adjust_brightness (0.75–1.2), F.adjust_contrast (0.75–1.25),
       F.adjust_saturation (0.7–1.3), white balance ±8%, Gaussian blur in 60% of photos (sigma
       0.5–1.6 px at 224 px), vignetting and sensor noise (std 0.4–2.5% of full scale).

    Args:
        image_28: (H, W) uint8, a Fashion-MNIST image (28×28; light object on a 0 background).
        rng: the source of all randomness; advanced by this call.
        size_px: output width and height in pixels, >= 32.

    Returns:
        An RGB PIL image, size_px × size_px. The same `rng` state gives identical pixels (for the
        same numpy/torch builds).

    Raises:
        ValueError: `image_28` is not a 2-D uint8 array, or `size_px` < 32.

    Cost: 3.4–4.9 ms per 224 px photo on one core of the (noisy) AMD EPYC dev VM, timing loop of
    2,000 photos with torch.set_num_threads(1) under taskset -c 0.
    """
    image_28 = np.asarray(image_28)
    if image_28.ndim != 2 or image_28.dtype != np.uint8:
        raise ValueError(
            f"image_28 must be a 2-D uint8 array, got shape {image_28.shape} dtype {image_28.dtype}"
        )
    if size_px < 32:
        raise ValueError(f"size_px must be >= 32, got {size_px}")
    s = int(size_px)

    # 1-2. Garment layers, warped into the frame.
    if rng.random() < 0.25:
        image_28 = image_28[:, ::-1]
    mix = rng.uniform(0.1, 0.45)
    colour = ((1 - mix) + mix * _hsv(rng.random(), 1.0, 1.0)) * rng.uniform(0.6, 1.0)
    layers = _garment_layers(image_28, rng)
    quad = _crop_quad(_alpha_from_intensity(image_28.astype(np.float32) * (1 / 255)), rng)
    intensity, texture, shadow = _warp(layers, quad, s)  # each (S, S)
    np.clip(intensity, 0, 1, out=intensity)
    alpha = _alpha_from_intensity(intensity)
    coverage = (0.3 + 0.7 * intensity * (1 + 0.12 * (texture - 0.5))) * alpha  # shading × alpha
    garment_luma = float(_LUMA @ colour) * float(coverage.sum()) / max(float(alpha.sum()), 1e-6)

    # 3. Background and composite.
    photo = _background(rng, s, garment_luma)
    photo *= (1.0 - np.clip(shadow, 0, 1)) * (1.0 - alpha)
    photo += colour[:, None, None] * coverage

    # 4. Occluder.
    if rng.random() < 0.3:
        occluder = _occluder(rng, s, alpha > 0.5)
        if occluder is not None:
            occ_alpha, occ_shade, occ_colour = occluder
            photo *= 1.0 - occ_alpha
            photo += occ_colour[:, None, None] * (occ_shade * occ_alpha)

    # 5. Photometry.
    img = torch.from_numpy(photo)
    img = F.adjust_brightness(img, float(rng.uniform(0.75, 1.2)))
    img = F.adjust_contrast(img, float(rng.uniform(0.75, 1.25)))
    img = F.adjust_saturation(img, float(rng.uniform(0.7, 1.3)))
    out = img.numpy()
    warmth = rng.uniform(-0.08, 0.08)  # white balance: warm (indoor light) to cool (daylight)
    out *= np.array([1 + warmth, 1.0, 1 - warmth], dtype=np.float32)[:, None, None]
    if rng.random() < 0.6:
        out = _gaussian_blur(out, float(rng.uniform(0.5, 1.6)) * s / 224)
    _, _, r2 = _unit_grid(s)
    out *= 1.0 - rng.uniform(0.0, 0.45) * r2
    # Sensor noise, luma only; uniform with the std of the intended Gaussian (cheaper to draw).
    noise = rng.random((s, s), dtype=np.float32)
    noise -= 0.5
    noise *= rng.uniform(0.004, 0.025) * math.sqrt(12) * 255
    out *= 255
    out += noise + 0.5
    np.clip(out, 0, 255, out=out)
    pixels = np.ascontiguousarray(out, dtype=np.uint8)  # (3, S, S); the blur may leave a strided view
    # Merging planes skips a (3, S, S) -> (S, S, 3) transpose copy (~0.4 ms vs ~0.04 ms).
    planes = [Image.frombuffer("L", (s, s), plane, "raw", "L", 0, 1) for plane in pixels]
    return Image.merge("RGB", planes)


# ---------------------------------------------------------------------------------------------------
# Photos that show no product
# ---------------------------------------------------------------------------------------------------

# Only images bundled inside the scikit-image wheel (no pooch download). skimage.data.camera is left
# out on purpose: it shows a man in a coat, which is a product. astronaut shows a spacesuit, which
# is not a catalog category.
_NON_PRODUCT_SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("coffee", ("Coffee break before the shoot", "Monday fuel ☕", "First flat white of the day")),
    ("chelsea", ("My cat judging my outfit choices 🐱", "Guess who sat on the parcel", "Chelsea says hi")),
    ("rocket", ("Launch day vibes 🚀", "Saw this on our road trip!", "Space nerd weekend")),
    ("astronaut", ("Throwback to the space museum", "Heroes 👩‍🚀", "Dream job, honestly")),
    ("hubble_deep_field", ("Stargazing last night ✨", "Feeling small today", "New wallpaper")),
    ("brick", ("Found the perfect wall for photos... forgot the outfit", "New wall, who dis")),
    ("grass", ("Touching grass 🌱", "Picnic spot secured")),
    ("gravel", ("Path to the beach", "Oops, pocket photo")),
    ("coins", ("Saving up for the sale 💰", "Counting the change")),
    ("moon", ("Moon was huge tonight 🌕", "Night walk")),
    ("colorwheel", ("Calibrating my new phone screen", "Which colour should I pick?")),
    ("clock", ("Running late again ⏰", "Waiting for the delivery like")),
)


@functools.cache
def _skimage_sample(name: str) -> tuple[torch.Tensor, bool] | None:
    """A bundled scikit-image sample as ((3, H, W) uint8 tensor, is_grayscale), or None if it
    cannot be loaded."""
    import skimage.data

    try:
        array = np.asarray(getattr(skimage.data, name)())
    except Exception as exc:  # missing file, pooch needed, changed API: use the other samples
        logger.warning("scikit-image sample %s unavailable: %s", name, exc)
        return None
    if array.dtype != np.uint8:
        return None
    is_gray = array.ndim == 2
    if is_gray:
        array = np.repeat(array[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array[..., :3].transpose(2, 0, 1))), is_gray


def non_product_photos(
    *, rng: np.random.Generator, count: int, size_px: int = 224
) -> list[tuple[str, Image.Image]]:
    """Photos that show no product at all, each with a caption a customer might post with it.

    Random square crops (35–100% of the shorter side), flips and brightness changes of the sample
    images bundled with scikit-image (coffee, cat, rocket, astronaut, Hubble deep field, brick,
    grass, gravel, coins, moon, colour wheel, clock); grayscale ones get a warm or cool filter.
    Sources are used round-robin in a shuffled order, so a small `count` still mixes subjects.

    Args:
        rng: the source of all randomness; advanced by this call.
        count: number of photos, >= 0.
        size_px: output width and height in pixels, >= 32.

    Returns:
        `count` (caption, image) pairs; each image is RGB, size_px × size_px, and no two have the
        same pixels. The same `rng` state gives the same list.

    Raises:
        ValueError: `count` < 0 or `size_px` < 32.
        RuntimeError: none of the scikit-image samples can be loaded, or `count` distinct crops
            could not be drawn (only conceivable for tiny `size_px` and huge `count`).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if size_px < 32:
        raise ValueError(f"size_px must be >= 32, got {size_px}")
    sources = [
        (name, captions) for name, captions in _NON_PRODUCT_SOURCES if _skimage_sample(name) is not None
    ]
    if not sources:
        raise RuntimeError("no scikit-image sample images could be loaded")

    photos: list[tuple[str, Image.Image]] = []
    seen: set[bytes] = set()
    order: list[int] = []
    for _ in range(10 * count + 100):
        if len(photos) == count:
            break
        if not order:
            order = list(rng.permutation(len(sources)))
        name, captions = sources[order.pop()]
        src, is_gray = _skimage_sample(name)
        _, h, w = src.shape
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        img = F.resized_crop(src, top, left, side, side, [size_px, size_px], antialias=True)
        if rng.random() < 0.5:
            img = F.horizontal_flip(img)
        img = F.adjust_brightness(img, float(rng.uniform(0.8, 1.2)))
        pixels = img.permute(1, 2, 0).numpy()
        if is_gray:  # a warm or cool phone filter
            warm = float(rng.uniform(-0.12, 0.12))
            gains = np.array([1 + warm, 1.0, 1 - warm], dtype=np.float32)
            pixels = np.clip(pixels.astype(np.float32) * gains + 0.5, 0, 255).astype(np.uint8)
        pixels = np.ascontiguousarray(pixels)
        digest = hashlib.sha256(pixels.tobytes()).digest()
        if digest in seen:  # same crop drawn twice: draw again
            continue
        seen.add(digest)
        photos.append((captions[rng.integers(len(captions))], Image.fromarray(pixels)))
    if len(photos) < count:
        raise RuntimeError(f"could only draw {len(photos)} distinct photos of {count}")
    return photos


# ---------------------------------------------------------------------------------------------------
# Captions and encoding
# ---------------------------------------------------------------------------------------------------

# Made-up brand handles (not real accounts).
BRAND_HANDLES: tuple[str, ...] = (
    "northwind",
    "lumenandloom",
    "fernwear",
    "atelier.koi",
    "urbanthread",
    "maple.and.moss",
    "saltwater.studio",
    "kestrel.co",
)

_CAPTION_TEMPLATES: tuple[str, ...] = (
    "Loving my new look from @{brand} 🌿 #ootd",
    "Finally arrived! Thanks @{brand} ✨ #haul",
    "Sunday stroll in my latest @{brand} find #weekendvibes",
    "Can't stop wearing this 😍 @{brand} #styleinspo",
    "Outfit check before brunch 🥂 @{brand} #fitcheck",
    "New in from @{brand}, what do we think? #newin",
    "Mirror selfie with my new favourite from @{brand} #ootd",
    "Unboxing day 📦 @{brand} #haul",
    "Obsessed with this one @{brand} 💛 #fashion",
    "Ready for the weekend thanks to @{brand} #lookbook",
)


def photo_caption(rng: np.random.Generator, *, brand: str | None = None) -> str:
    """A one-line Instagram-style caption that tags a brand but names no product.

    Args:
        rng: the source of randomness; advanced by this call.
        brand: the handle to tag, with or without "@"; default a random one from BRAND_HANDLES.

    Returns:
        e.g. "Loving my new look from @northwind 🌿 #ootd". Same `rng` state, same caption.

    Raises:
        ValueError: `brand` is given but empty.
    """
    template = _CAPTION_TEMPLATES[rng.integers(len(_CAPTION_TEMPLATES))]
    if brand is None:
        brand = BRAND_HANDLES[rng.integers(len(BRAND_HANDLES))]
    brand = brand.strip().lstrip("@")
    if not brand:
        raise ValueError("brand must be a non-empty handle")
    return template.format(brand=brand)


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """Encode an image as lossless PNG with no metadata, so equal pixels give equal bytes.

    The image is rebuilt from its raw pixels first, so nothing from `image.info` (ICC profile,
    dpi, text chunks, EXIF) reaches the file; there are no timestamps. Bytes are stable for a given
    Pillow/zlib build (fixed compression level, no optimisation pass). zlib level 1: a 224-px demo
    photo (noisy RGB) took 17.6 ms at level 6 and 4.1 ms at level 1, for files 2% larger; 1,324
    photos are most of the demo setup's time (issue 16).

    Args:
        image: a PIL image (modes 1, L, LA, I;16, RGB, RGBA; P is converted to RGB/RGBA) or a
            uint8 array (H, W), (H, W, 3) or (H, W, 4).

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: an array of another dtype or shape, or an image mode PNG cannot hold losslessly.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(
                f"expected a uint8 (H, W), (H, W, 3) or (H, W, 4) array, got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(np.ascontiguousarray(image))  # uint8: L, RGB or RGBA by shape
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode not in ("1", "L", "LA", "I;16", "RGB", "RGBA"):
        raise ValueError(f"image mode {image.mode} is not supported for lossless PNG")
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=1, optimize=False)
    return buffer.getvalue()
