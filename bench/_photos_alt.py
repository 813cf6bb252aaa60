"""A second, independent "customer photo" generator for Fashion-MNIST products.

The demo's photo generator (in the catalog app) and the matching model's training augmentations
(torchvision v2) are the two pipelines a matcher could learn to undo instead of learning the
product. This module was written without reading either: it shares no code, no parameters and no
image models with them, so a matcher scored on its photos is scored on a different imaging
process. It uses numpy, Pillow and scipy.ndimage only.

A photo is built in this order (every choice drawn from the caller's rng):

1. Framing: the item's bounding box fills 35-90% of the frame, off-centre, about one photo in
   five cut by the frame edge; it is turned in the image plane and tilted in 3D (the item's plane
   is rotated about two axes and projected by a pinhole camera, giving a perspective homography).
2. Scene: one of wooden floor boards, ceramic tiles (both seen in perspective), a room corner
   (two walls, skirting, floor), a duvet with folds, a clothes rail with the item on a hanger, or
   a table top with its edge and the dark room beyond. Each is drawn analytically, not from noise
   textures.
3. Fabric: the grayscale image is read as a shape (mask = soft threshold of intensity) and a
   shading map (folds, seams, prints); the garment gets a real fabric colour and a weave (plain,
   heather, denim twill, stripes, gingham, dots or a blotchy print) and keeps a minimum luminance
   contrast with the scene behind it. It casts a soft shadow away from the light.
4. Occlusion (about 45% of photos, covering at most 30% of the item): a bag strap crossing the
   frame, a price tag with barcode and string, or the edge of another garment entering from a side.
5. Light and camera: a directional falloff or a spot of light, vignetting, white balance and
   exposure shifts, barrel lens distortion, motion blur along a line (camera shake), sensor
   noise (shot noise plus blotchy chroma noise) and JPEG compression at quality 40-85.

Public functions: photo_alt (one photo) and photos_alt_for (a batch, reproducible by seed).
Run as a script to write a contact sheet and measure speed:

    .venv/bin/python bench/_photos_alt.py --out /tmp/alt_sheet.png
"""

import argparse
import functools
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ITEM_UNITS = 28  # the Fashion-MNIST grid: placements are expressed in these units
_MASK_LOW, _MASK_HIGH = 10 / 255, 45 / 255  # soft threshold of "this pixel is the item"

# Fabric colours (sRGB in [0, 1]) common in catalogues: darks, neutrals, denim, and some colours.
_FABRIC_COLOURS = np.array(
    [
        (0.07, 0.07, 0.08), (0.22, 0.22, 0.24), (0.50, 0.50, 0.52), (0.92, 0.92, 0.90),
        (0.93, 0.89, 0.80), (0.80, 0.70, 0.55), (0.70, 0.50, 0.30), (0.40, 0.26, 0.16),
        (0.11, 0.15, 0.32), (0.25, 0.36, 0.55), (0.55, 0.70, 0.85), (0.35, 0.38, 0.20),
        (0.10, 0.30, 0.18), (0.45, 0.08, 0.14), (0.78, 0.12, 0.12), (0.93, 0.62, 0.70),
        (0.85, 0.66, 0.15), (0.68, 0.60, 0.80), (0.95, 0.45, 0.20), (0.20, 0.55, 0.55),
    ],
    dtype=np.float32,
)
_WOODS = np.array(
    [(0.72, 0.55, 0.36), (0.45, 0.30, 0.19), (0.62, 0.60, 0.56), (0.85, 0.78, 0.66), (0.58, 0.38, 0.22)],
    dtype=np.float32,
)
_WALLS = np.array(
    [(0.92, 0.91, 0.88), (0.85, 0.84, 0.80), (0.78, 0.82, 0.84), (0.86, 0.80, 0.70), (0.70, 0.72, 0.66),
     (0.95, 0.93, 0.90), (0.60, 0.62, 0.66)],
    dtype=np.float32,
)


@dataclass(frozen=True)
class Placement:
    """Where the item lands in a photo.

    coeffs: Pillow PERSPECTIVE coefficients mapping photo pixels to item units (0-28).
    lens_k: barrel distortion strength (0 for none), applied to the whole frame afterwards.
    size_px: the photo's side.
    """

    coeffs: tuple[float, ...]
    lens_k: float
    size_px: int


def _check_image(image: object, name: str, ndim: int) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.ndim != ndim or image.shape[-2:] != (ITEM_UNITS, ITEM_UNITS):
        want = "(28, 28)" if ndim == 2 else "(N, 28, 28)"
        raise ValueError(f"{name} must have shape {want}, got {image.shape}")


def _check_size(size_px: object) -> int:
    if isinstance(size_px, bool) or not isinstance(size_px, int | np.integer) or not 32 <= size_px <= 1024:
        raise ValueError(f"size_px must be an int in [32, 1024], got {size_px!r}")
    return int(size_px)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise: a cells x cells grid of N(0, 1) values, bicubically upsampled to (h, w) float32."""
    grid = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-0.5, 0.5] of a size x size frame: (y, x), each (size, size),
    read-only (cached)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    y.flags.writeable = x.flags.writeable = False
    return y, x


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking 4 points src (4, 2) to dst (4, 2), with H[2, 2] = 1 (DLT)."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst, strict=True)):
        a[2 * i] = (x, y, 1, 0, 0, 0, -u * x, -u * y)
        a[2 * i + 1] = (0, 0, 0, x, y, 1, -v * x, -v * y)
        b[2 * i], b[2 * i + 1] = u, v
    return np.append(np.linalg.solve(a, b), 1.0).reshape(3, 3)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _bbox(image: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(image > 30)
    if len(ys) == 0:
        raise ValueError("image is blank: no pixel brighter than 30, so there is no item to photograph")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# ---------------------------------------------------------------------------------------------
# 1. Framing


def _placement(rng: np.random.Generator, image: np.ndarray, size: int, *, hanging: bool) -> Placement:
    """Draw where the item goes: scale, off-centre position, in-plane turn, 3D tilt, lens."""
    x0, y0, x1, y1 = _bbox(image)
    long_side = max(x1 - x0, y1 - y0)
    fill = rng.uniform(0.35, 0.9)  # the bbox's long side as a share of the frame
    scale = fill * size / long_side  # photo px per item unit
    turn = np.deg2rad(np.clip(rng.normal(0, 4 if hanging else 14), -35, 35))
    pitch, yaw = np.deg2rad(rng.normal(0, 8 if hanging else 16, size=2).clip(-30, 30))
    focal = size * rng.uniform(0.9, 1.8)

    corners = np.array([(0, 0), (ITEM_UNITS, 0), (ITEM_UNITS, ITEM_UNITS), (0, ITEM_UNITS)], dtype=float)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    flat = (corners - centre) @ rot.T * scale  # photo px, around the item's centre
    # The item's plane turned in 3D, then seen by a pinhole camera at distance `focal`.
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    pts = np.c_[flat, np.zeros(4)] @ (ry @ rx).T
    projected = pts[:, :2] * (focal / (focal + pts[:, 2:3]))

    # Where the bbox centre goes. Usually the whole bbox stays in the frame; sometimes it is cut.
    box = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=float)
    half = np.abs((box - centre) @ rot.T * scale).max(axis=0)
    # How far the centre may move from the middle: the bbox stays 2% inside the frame, or, when
    # cut, up to 30% of it (along one axis) is outside.
    cut = rng.random() < 0.2
    slack = np.maximum(size / 2 - half * (0.4 if cut else 1.0) - (0 if cut else size * 0.02), size * 0.04)
    offset = rng.uniform(-slack, slack)
    if hanging:  # the top of a hanging item sits at least a fifth down the frame, under the rail
        offset[1] = max(offset[1], half[1] + size * 0.2 - size / 2)
    photo_corners = projected + size / 2 + offset
    to_item = _homography(photo_corners, corners)
    lens_k = float(rng.uniform(0.03, 0.2)) if rng.random() < 0.6 else 0.0
    return Placement(tuple(float(v) for v in to_item.ravel()[:8]), lens_k, size)


def _warp(texture: Image.Image, placement: Placement) -> np.ndarray:
    """Project a texture of the 28-unit item square into the photo frame (float32, channels last)."""
    factor = texture.width / ITEM_UNITS
    a, b, c, d, e, f, g, h = placement.coeffs
    coeffs = (a * factor, b * factor, c * factor, d * factor, e * factor, f * factor, g, h)
    out = texture.transform((placement.size_px,) * 2, Image.PERSPECTIVE, coeffs, Image.BILINEAR)
    arr = np.asarray(out, dtype=np.float32) / 255.0
    return arr if arr.ndim == 3 else arr[..., None]


def _item_alpha_texture(image: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """The item's shading map in [0, 1] and its soft mask, both (res, res) float32."""
    up = np.asarray(Image.fromarray(image).resize((res, res), Image.BICUBIC), dtype=np.float32) / 255.0
    alpha = _smoothstep(up, _MASK_LOW, _MASK_HIGH)
    # Upsampling blurs the item's edge into a dark ramp; shading by it would outline every item in
    # black. Near the edge, take the brightest value a unit inwards instead.
    inner = ndimage.maximum_filter(up, size=max(3, round(1.5 * res / ITEM_UNITS)))
    shading = np.where(alpha < 0.999, np.maximum(up, 0.85 * inner), up)
    return np.clip(shading / max(float(up.max()), 1e-3), 0, 1), alpha


def _texture_res(placement: Placement) -> int:
    # About as many texture pixels as the largest on-screen item has (3-4 photo px per unit).
    return int(np.clip(placement.size_px, 40, 256))


def item_mask_in_photo(image: np.ndarray, placement: Placement) -> np.ndarray:
    """The soft mask of `image` (28, 28) uint8 as placed by `placement`: (size, size) float32 in [0, 1].

    The same warp and lens that photo_alt applies to its own item; tests use it to project other
    items to the same place.
    """
    _check_image(image, "image", 2)
    _, alpha = _item_alpha_texture(image, _texture_res(placement))
    warped = _warp(Image.fromarray((alpha * 255).astype(np.uint8)), placement)
    return _lens(warped, placement.lens_k)[..., 0]


# ---------------------------------------------------------------------------------------------
# 2. Scenes. Each returns (size, size, 3) float32 sRGB and whether items there hang or lie.


def _floor_uv(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates on a ground plane seen at an angle: a homography (x, y) -> (x, y) / (1 + t y)."""
    y, x = _grid(size)
    w = 1.0 + rng.uniform(0.0, 1.3) * (y if rng.random() < 0.8 else x)
    u, v = x / w, y / w
    a = rng.uniform(0, np.pi)
    return u * math.cos(a) - v * math.sin(a), u * math.sin(a) + v * math.cos(a)


def _scene_wood(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _floor_uv(rng, size)
    per = rng.uniform(3, 7)  # planks per frame width
    pv = v * per + rng.uniform(0, 1)
    plank = np.floor(pv).astype(np.int64)
    across = pv - plank
    tones = rng.normal(0, 0.07, 97).astype(np.float32)
    stagger = rng.uniform(0, 1, 97).astype(np.float32)
    length = rng.uniform(0.8, 2.5)  # plank length in frame widths
    pu = u / length + stagger[plank % 97]
    along = pu - np.floor(pu)
    grain = 0.05 * np.sin(2 * np.pi * (across * rng.uniform(2, 5) + 2.5 * np.sin(u * 9 + plank)) + plank)
    grain += 0.03 * _smooth_noise(rng, size, size, size // 3)
    seam = np.maximum(1 - _smoothstep(np.minimum(across, 1 - across), 0, 0.05),
                      1 - _smoothstep(np.minimum(along, 1 - along), 0, 0.01))
    shade = (1 + tones[(plank + 97) % 97] + grain) * (1 - 0.45 * seam)
    return _WOODS[rng.integers(len(_WOODS))] * shade[..., None]


def _scene_tiles(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _floor_uv(rng, size)
    kind = rng.choice(3, p=[0.5, 0.3, 0.2])  # plain glazed, terracotta, black-and-white check
    per = rng.uniform(1.5, 5) if kind < 2 else rng.uniform(1.2, 2.5)  # a busy check in big tiles only
    gu, gv = u * per + rng.uniform(0, 1), v * per + rng.uniform(0, 1)
    iu, iv = np.floor(gu).astype(np.int64), np.floor(gv).astype(np.int64)
    fu, fv = gu - iu, gv - iv
    edge = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv))
    grout = 1 - _smoothstep(edge, 0.015, 0.035)
    tone = rng.normal(0, 0.03, (16, 16)).astype(np.float32)[iu % 16, iv % 16]
    if kind == 0:
        colour = np.broadcast_to(_WALLS[rng.integers(len(_WALLS))], (size, size, 3))
    elif kind == 1:
        colour = np.broadcast_to(np.array((0.70, 0.40, 0.28), np.float32) * rng.uniform(0.85, 1.1), (size, size, 3))
    else:
        dark = ((iu + iv) % 2 == 0)[..., None]
        colour = np.where(dark, np.float32(0.2), np.float32(0.85)) * np.ones(3, np.float32)
    y, x = _grid(size)
    gloss = 0.12 * np.exp(-((x - rng.uniform(-0.4, 0.4)) ** 2 + (y - rng.uniform(-0.4, 0.4)) ** 2) / 0.04)
    grout_colour = np.float32(rng.uniform(0.45, 0.8))
    out = colour * (1 + tone)[..., None] * (1 - grout[..., None]) + grout_colour * grout[..., None]
    return out + gloss[..., None]


def _scene_corner(rng: np.random.Generator, size: int) -> np.ndarray:
    """A room corner: two walls lit differently, a skirting board, the floor in front, vanishing lines."""
    y, x = _grid(size)
    corner_x = rng.uniform(-0.3, 0.3)
    floor_y = rng.uniform(0.1, 0.45)
    slope_l, slope_r = rng.uniform(0.1, 0.6, size=2).tolist()
    boundary = floor_y + np.where(x < corner_x, slope_l, slope_r) * np.abs(x - corner_x)
    wall = _WALLS[rng.integers(len(_WALLS))]
    left, right = rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)
    wall_shade = np.where(x < corner_x, left, right) * (1 - 0.15 * (y + 0.5))
    wall_rgb = wall * wall_shade[..., None]
    skirting = (y > boundary - 0.04) & (y <= boundary)
    floor_rgb = _WOODS[rng.integers(len(_WOODS))] * (0.8 + 0.05 * _smooth_noise(rng, size, size, 12))[..., None]
    out = np.where((y > boundary)[..., None], floor_rgb, wall_rgb)
    out = np.where(skirting[..., None], np.float32(0.9) * wall_shade[..., None], out)
    # The corner line itself: a soft shadow where the walls meet.
    out *= (1 - 0.2 * np.exp(-((x - corner_x) / 0.015) ** 2) * (y < boundary))[..., None]
    return out


def _scene_duvet(rng: np.random.Generator, size: int) -> np.ndarray:
    """A bed cover: a light fabric with a few large soft folds and sharper creases."""
    y, x = _grid(size)
    fold = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(2, 5)):
        a = rng.uniform(0, np.pi)
        f = rng.uniform(1.0, 3.5)
        phase = 2 * np.pi * f * (x * math.cos(a) + y * math.sin(a)) + 0.8 * _smooth_noise(rng, size, size, 4)
        fold += rng.uniform(0.3, 1.0) * (np.abs(np.sin(phase)) - 0.6)
    colour = np.array(rng.choice([(0.93, 0.93, 0.92), (0.85, 0.86, 0.88), (0.88, 0.84, 0.80),
                                  (0.75, 0.80, 0.86), (0.55, 0.58, 0.62), (0.86, 0.78, 0.80)]), np.float32)
    weave = 0.02 * rng.standard_normal((size, size)).astype(np.float32)
    return colour * (1 + 0.09 * fold + weave)[..., None]


def _scene_rail(rng: np.random.Generator, size: int, hook: tuple[float, float], shoulders: float) -> np.ndarray:
    """A wall with a clothes rail; the item hangs from a hanger whose hook is at `hook` (px)."""
    y, x = _grid(size)
    wall = _WALLS[rng.integers(len(_WALLS))] * (1.0 - 0.25 * (y + 0.5) * rng.uniform(0, 1))[..., None]
    img = Image.fromarray((np.clip(wall, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    hx, hy = hook
    rail_y = hy - size * rng.uniform(0.06, 0.1)
    metal = tuple(int(v) for v in rng.choice([(190, 190, 195), (40, 40, 42), (150, 110, 70)]))
    thick = max(2, round(size * 0.035))
    draw.line([(0, rail_y), (size, rail_y + rng.uniform(-0.05, 0.05) * size)], fill=metal, width=thick)
    draw.line([(0, rail_y - thick / 3), (size, rail_y - thick / 3)], fill=(235, 235, 235), width=1)
    wire = tuple(int(v) for v in rng.choice([(60, 60, 60), (200, 200, 205), (120, 80, 45)]))
    r = size * 0.03
    draw.arc([hx - r, rail_y - r, hx + r, rail_y + r], 180, 360 + 60, fill=wire, width=max(1, size // 64))
    draw.line([(hx + r * 0.4, rail_y + r * 0.8), (hx, hy)], fill=wire, width=max(1, size // 64))
    for side in (-1, 1):
        draw.line([(hx, hy), (hx + side * shoulders, hy + size * 0.06)], fill=wire, width=max(2, size // 40))
    return np.asarray(img, dtype=np.float32) / 255.0


def _scene_table(rng: np.random.Generator, size: int) -> np.ndarray:
    """A table top seen from above, its edge across one side and the darker room beyond it."""
    y, x = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    dist = x * math.cos(a) + y * math.sin(a)
    edge_at = rng.uniform(0.3, 0.5)
    top = np.array(rng.choice([(0.95, 0.95, 0.94), (0.40, 0.40, 0.42), (0.15, 0.15, 0.16),
                               (0.70, 0.55, 0.38), (0.80, 0.76, 0.70)]), np.float32)
    top_rgb = top * (1 + 0.03 * _smooth_noise(rng, size, size, 6))[..., None]
    beyond = np.float32(rng.uniform(0.08, 0.3)) * (1 + 0.3 * _smooth_noise(rng, size, size, 3))[..., None]
    beyond = beyond * np.array((1.0, 0.95, 0.9), np.float32)
    lip = np.exp(-((dist - edge_at) / 0.008) ** 2)[..., None]  # the lit edge of the table
    out = np.where((dist < edge_at)[..., None], top_rgb, beyond)
    return out + 0.25 * lip


# ---------------------------------------------------------------------------------------------
# 3. Fabric


def _fabric(rng: np.random.Generator, res: int, base: np.ndarray) -> np.ndarray:
    """A fabric of colour `base` (3,) on a res x res square of the item: (res, res, 3) float32."""
    y, x = _grid(res)
    y, x = (y + 0.5) * ITEM_UNITS, (x + 0.5) * ITEM_UNITS  # item units
    kind = rng.choice(["plain", "heather", "denim", "stripes", "gingham", "dots", "print"],
                      p=[0.3, 0.14, 0.12, 0.14, 0.1, 0.08, 0.12])
    second = _FABRIC_COLOURS[rng.integers(len(_FABRIC_COLOURS))]
    shade = np.ones((res, res), np.float32)
    mix = np.zeros((res, res), np.float32)  # share of the second colour
    if kind == "heather":
        shade += 0.12 * rng.standard_normal((res, res)).astype(np.float32)
    elif kind == "denim":
        base = np.array((0.18, 0.27, 0.45), np.float32) * rng.uniform(0.7, 1.5)
        shade += 0.1 * np.sin(2 * np.pi * (x + y) / rng.uniform(0.6, 1.2)) + 0.06 * rng.standard_normal((res, res))
    elif kind in ("stripes", "gingham"):
        a = float(rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)]))
        period = rng.uniform(1.5, 5)
        mix = _smoothstep(np.sin(2 * np.pi * (x * math.cos(a) + y * math.sin(a)) / period), -0.2, 0.2)
        if kind == "gingham":
            other = _smoothstep(np.sin(2 * np.pi * (-x * math.sin(a) + y * math.cos(a)) / period), -0.2, 0.2)
            mix = 0.5 * (mix + other)
            second = np.float32(0.95) * np.ones(3, np.float32)
    elif kind == "dots":
        period = rng.uniform(2, 4)
        fx, fy = (x / period) % 1 - 0.5, (y / period) % 1 - 0.5
        mix = 1 - _smoothstep(np.hypot(fx, fy), 0.18, 0.25)
    elif kind == "print":
        mix = _smoothstep(_smooth_noise(rng, res, res, rng.integers(5, 12)), 0.4, 0.7)
    return (base * (1 - mix)[..., None] + second * mix[..., None]) * shade[..., None]


def _garment_colour(rng: np.random.Generator, behind: float) -> np.ndarray:
    """A fabric colour whose luminance differs from `behind` (the scene under the item) by >= 0.18."""
    for _ in range(6):
        colour = _FABRIC_COLOURS[rng.integers(len(_FABRIC_COLOURS))] * rng.uniform(0.85, 1.1)
        if abs(float(_luma(colour)) * 0.8 - behind) >= 0.18:
            return colour
    return np.full(3, 0.08 if behind > 0.5 else 0.9, np.float32)  # give up: black or white


# ---------------------------------------------------------------------------------------------
# 4. Occluders. Each returns (rgb (size, size, 3), alpha (size, size)) float32, or None.


def _draw_mask(size: int, draw_fn) -> np.ndarray:
    """Draw on a 2x mask and shrink it, for anti-aliased edges."""
    big = Image.new("L", (size * 2, size * 2), 0)
    draw_fn(ImageDraw.Draw(big), 2.0)
    return np.asarray(big.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _bezier(p: np.ndarray, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return ((1 - t) ** 3) * p[0] + 3 * ((1 - t) ** 2) * t * p[1] + 3 * (1 - t) * t * t * p[2] + t ** 3 * p[3]


def _edge_point(rng: np.random.Generator, size: int, side: int) -> np.ndarray:
    s = rng.uniform(0.1, 0.9) * size
    return np.array([(s, -4), (size + 4, s), (s, size + 4), (-4, s)][side], dtype=float)


def _occluder_strap(rng: np.random.Generator, size: int, centre: np.ndarray):
    """A bag strap: a thick leather band on a cubic Bezier from one frame edge to another."""
    side = rng.integers(4)
    p0, p3 = _edge_point(rng, size, side), _edge_point(rng, size, (side + rng.integers(1, 4)) % 4)
    bend = centre + rng.normal(0, size * 0.2, size=(2, 2))
    pts = _bezier(np.array([p0, bend[0], bend[1], p3]))
    width = size * rng.uniform(0.05, 0.09)

    def draw(d, k):
        d.line([tuple(q * k) for q in pts], fill=255, width=int(width * k), joint="curve")

    alpha = _draw_mask(size, draw)
    # Rounded profile: brighter along the middle of the band, darker at its edges.
    profile = ndimage.uniform_filter(alpha, size=max(3, int(width * 0.6)))
    leather = np.array(rng.choice([(0.10, 0.08, 0.07), (0.42, 0.25, 0.13), (0.70, 0.52, 0.33),
                                   (0.15, 0.16, 0.22)]), np.float32)
    rgb = leather * (0.55 + 0.6 * profile)[..., None]
    return rgb, alpha


def _occluder_tag(rng: np.random.Generator, size: int, item_alpha: np.ndarray):
    """A swing price tag on a string, hanging over the item's outline, with a barcode."""
    ys, xs = np.nonzero((item_alpha > 0.3) & (item_alpha < 0.7))
    if len(ys) == 0:
        return None
    i = rng.integers(len(ys))
    anchor = np.array([xs[i], ys[i]], dtype=float)
    w, h = size * rng.uniform(0.1, 0.16), size * rng.uniform(0.17, 0.26)
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    at = anchor + rot @ np.array([0, size * 0.08])
    corners = np.array([(-w / 2, 0), (w / 2, 0), (w / 2, h), (-w / 2, h)]) @ rot.T + at
    hole = at + rot @ np.array([0, h * 0.15])
    paper = np.array(rng.choice([(0.96, 0.95, 0.92), (0.85, 0.75, 0.55), (0.12, 0.12, 0.12)]), np.float32)
    ink = 1.0 - paper  # dark on light tags, white on the black tag

    def draw_tag(d, k):
        d.polygon([tuple(q * k) for q in corners], fill=255)
        d.line([tuple(anchor * k), tuple(hole * k)], fill=255, width=max(1, int(k)))

    def draw_ink(d, k):
        r = w * 0.12 * k
        d.ellipse([hole[0] * k - r, hole[1] * k - r, hole[0] * k + r, hole[1] * k + r], fill=255)
        pos = -0.35
        while pos < 0.35:  # barcode bars across the lower part of the tag
            bar = rng.uniform(0.02, 0.07)
            top, bottom = at + rot @ np.array([pos * w, 0.55 * h]), at + rot @ np.array([pos * w, 0.85 * h])
            d.line([tuple(top * k), tuple(bottom * k)], fill=255, width=max(1, int(bar * w * k)))
            pos += bar + rng.uniform(0.03, 0.08)

    alpha = _draw_mask(size, draw_tag)
    marks = _draw_mask(size, draw_ink) * alpha
    rgb = paper * (1 - marks)[..., None] + ink * marks[..., None]
    return rgb, alpha


def _occluder_garment(rng: np.random.Generator, size: int):
    """The edge of another garment entering the frame from one side, with a soft wavy hem."""
    side = rng.integers(4)
    depth = size * rng.uniform(0.12, 0.3)
    n = 9
    along = np.linspace(-0.1, 1.1, n) * size
    inner = depth * (1 + 0.35 * rng.standard_normal(n)).clip(0.4, 1.6)
    hem = _bezier(np.array([[along[0], inner[0]], [along[3], inner[3] * 1.3],
                            [along[6], inner[6] * 0.7], [along[-1], inner[-1]]]), 30)
    outline = [(along[0], -10.0), *map(tuple, hem), (along[-1], -10.0)]
    if side == 1:
        outline = [(size - d, s) for s, d in outline]
    elif side == 2:
        outline = [(s, size - d) for s, d in outline]
    elif side == 3:
        outline = [(d, s) for s, d in outline]

    def draw(d, k):
        d.polygon([(px * k, py * k) for px, py in outline], fill=255)

    alpha = _draw_mask(size, draw)
    base = _FABRIC_COLOURS[rng.integers(len(_FABRIC_COLOURS))]
    fabric = np.asarray(Image.fromarray((np.clip(_fabric(rng, 64, base), 0, 1) * 255).astype(np.uint8))
                        .resize((size, size), Image.BILINEAR), np.float32) / 255.0
    # Darker towards the hem, where the cloth curls away from the light.
    fold = ndimage.uniform_filter(alpha, size=max(3, size // 8))
    return fabric * (0.55 + 0.5 * fold)[..., None], alpha


# ---------------------------------------------------------------------------------------------
# 5. Light and camera


def _lighting(rng: np.random.Generator, img: np.ndarray, light_dir: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    y, x = _grid(size)
    if rng.random() < 0.6:  # a window to one side: a linear falloff across the frame
        gain = 1 + rng.uniform(0.1, 0.5) * (x * light_dir[0] + y * light_dir[1])
    else:  # a lamp: a bright spot fading with distance
        cx, cy = rng.uniform(-0.4, 0.4, size=2).tolist()
        gain = 0.7 + 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / rng.uniform(0.08, 0.4))
    gain *= 1 - rng.uniform(0.0, 0.6) * (x ** 2 + y ** 2)  # vignetting
    temp = rng.normal(0, 0.08)  # + warm (tungsten), - cool (shade)
    tint = rng.normal(0, 0.03)  # + magenta, - green
    balance = np.array([1 + temp, 1 - tint, 1 - temp], np.float32)
    exposure = rng.uniform(0.8, 1.2)
    out = np.clip(img * gain[..., None] * balance * exposure, 0, 1)
    return out ** np.float32(rng.uniform(0.85, 1.15))


def _lens(img: np.ndarray, k: float) -> np.ndarray:
    """Barrel distortion: the output at radius r samples the input at r (1 + k r^2) / (1 + k)."""
    if k == 0:
        return img
    size = img.shape[0]
    y, x = _grid(size)
    r2 = (x ** 2 + y ** 2) / 0.5  # 1 at the corners
    factor = (1 + k * r2) / (1 + k)
    sy = np.clip((y * factor + 0.5) * size - 0.5, 0, size - 1)
    sx = np.clip((x * factor + 0.5) * size - 0.5, 0, size - 1)
    iy, ix = np.minimum(sy.astype(np.intp), size - 2), np.minimum(sx.astype(np.intp), size - 2)
    fy, fx = (sy - iy)[..., None], (sx - ix)[..., None]  # bilinear weights
    top = img[iy, ix] * (1 - fx) + img[iy, ix + 1] * fx
    bottom = img[iy + 1, ix] * (1 - fx) + img[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _motion_blur(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Camera shake: the image averaged along a short straight path (a line kernel of 2-7 px)."""
    length = rng.uniform(2, 7) * img.shape[0] / 96
    a = rng.uniform(0, np.pi)
    half = int(np.ceil(length / 2)) + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
    for t in np.linspace(-length / 2, length / 2, 4 * half + 1):
        px, py = half + t * math.cos(a), half + t * math.sin(a)
        ix, iy = int(px), int(py)
        fx, fy = px - ix, py - iy
        kernel[iy, ix] += (1 - fx) * (1 - fy)
        kernel[iy, ix + 1] += fx * (1 - fy)
        kernel[iy + 1, ix] += (1 - fx) * fy
        kernel[iy + 1, ix + 1] += fx * fy
    kernel /= kernel.sum()
    return np.stack([ndimage.convolve(img[..., c], kernel, mode="nearest") for c in range(3)], axis=-1)


def _sensor(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    shot = np.float32(rng.uniform(0.005, 0.04))
    noisy = img + shot * np.sqrt(img + np.float32(0.01)) * rng.standard_normal(img.shape, dtype=np.float32)
    chroma = np.float32(rng.uniform(0.0, 0.025))
    cells = max(4, size // 4)
    low = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8), mode="RGB")
    blotch = (np.asarray(low.resize((size, size), Image.BILINEAR), dtype=np.float32) - 127.5) / 74.0  # ~unit std
    return np.clip(noisy + chroma * blotch, 0, 1)


def _jpeg(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(40, 86)))
    buf.seek(0)
    with Image.open(buf) as reloaded:
        return reloaded.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Putting it together


def _over(dst: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return dst * (1 - a) + rgb * a


def _shadow(dst: np.ndarray, alpha: np.ndarray, shift: np.ndarray, blur: float, strength: float) -> np.ndarray:
    """Darken `dst` under `alpha` moved by `shift` (x, y px, rounded: it is blurred anyway)."""
    dx, dy = (int(round(v)) for v in shift)
    moved = np.zeros_like(alpha)
    h, w = alpha.shape
    moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        alpha[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    cast = ndimage.gaussian_filter(moved, blur, truncate=2.5)
    return dst * (1 - np.float32(strength) * cast)[..., None]


def photo_alt_with_placement(
    image: np.ndarray, rng: np.random.Generator, *, size_px: int = 96
) -> tuple[Image.Image, Placement]:
    """photo_alt, also returning where the item was put (for item_mask_in_photo). Same arguments."""
    _check_image(image, "image", 2)
    size = _check_size(size_px)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")

    x0, y0, x1, y1 = _bbox(image)
    may_hang = (y1 - y0) >= 0.8 * (x1 - x0)  # tops, dresses, coats, trousers; not shoes or most bags
    scene = rng.choice(["wood", "tiles", "corner", "duvet", "rail", "table"],
                       p=[0.2, 0.14, 0.16, 0.2, 0.14, 0.16] if may_hang else [0.23, 0.17, 0.19, 0.22, 0, 0.19])
    hanging = scene in ("rail", "corner")
    placement = _placement(rng, image, size, hanging=scene == "rail")
    res = _texture_res(placement)
    shading, alpha_tex = _item_alpha_texture(image, res)
    alpha = _warp(Image.fromarray((alpha_tex * 255).astype(np.uint8)), placement)[..., 0]

    if scene == "rail":
        inv = np.linalg.inv(np.append(placement.coeffs, 1.0).reshape(3, 3))  # item units -> photo px
        top = inv @ np.array([(x0 + x1) / 2, y0 + 1, 1.0])
        left, right = inv @ np.array([x0 + 2, y0 + 3, 1.0]), inv @ np.array([x1 - 2, y0 + 3, 1.0])
        shoulders = 0.4 * abs(right[0] / right[2] - left[0] / left[2])
        background = _scene_rail(rng, size, (top[0] / top[2], top[1] / top[2]), shoulders)
    else:
        background = {"wood": _scene_wood, "tiles": _scene_tiles, "corner": _scene_corner,
                      "duvet": _scene_duvet, "table": _scene_table}[scene](rng, size)
    background = np.clip(background, 0, 1).astype(np.float32)

    weight = alpha.sum()
    behind = float((_luma(background) * alpha).sum() / weight) if weight > 1 else float(_luma(background).mean())
    colour = _garment_colour(rng, behind)
    lo, hi = rng.uniform(0.3, 0.55), rng.uniform(1.0, 1.15)
    fabric = _fabric(rng, res, colour) * (lo + (hi - lo) * shading ** rng.uniform(0.7, 1.3))[..., None]
    garment = _warp(Image.fromarray((np.clip(fabric, 0, 1) * 255).astype(np.uint8)), placement)

    angle = rng.uniform(0, 2 * np.pi)
    light_dir = np.array([np.cos(angle), np.sin(angle)])
    away = -light_dir * size * (rng.uniform(0.04, 0.08) if hanging else rng.uniform(0.01, 0.035))
    img = _shadow(background, alpha, away, size * (0.04 if hanging else 0.02), rng.uniform(0.3, 0.6))
    img = _over(img, garment, alpha)

    if rng.random() < 0.45:
        centre = np.array(ndimage.center_of_mass(alpha))[::-1] if weight > 1 else np.full(2, size / 2)
        for _ in range(3):  # an occluder hiding more than 30% of the item is redrawn, then dropped
            kind = rng.choice(["strap", "tag", "garment"])
            if kind == "strap":
                occ = _occluder_strap(rng, size, centre)
            elif kind == "tag":
                occ = _occluder_tag(rng, size, alpha)
            else:
                occ = _occluder_garment(rng, size)
            if occ is not None and (occ[1] * alpha).sum() <= 0.3 * weight:
                img = _shadow(img, occ[1], -light_dir * size * 0.025, size * 0.015, 0.4)
                img = _over(img, *occ)
                break

    img = _lighting(rng, img, light_dir)
    img = _lens(img, placement.lens_k)
    if rng.random() < 0.4:
        img = _motion_blur(rng, img)
    img = _sensor(rng, img)
    photo = Image.fromarray((img * 255 + 0.5).astype(np.uint8), mode="RGB")
    return _jpeg(rng, photo), placement


def photo_alt(image: np.ndarray, rng: np.random.Generator, *, size_px: int = 96) -> Image.Image:
    """One phone-like photo of a Fashion-MNIST item, from a generator independent of the demo's.

    Args:
        image: (28, 28) uint8, the item bright on black (Fashion-MNIST convention).
        rng: the only source of randomness; the same generator state gives the same photo.
        size_px: the photo's side in pixels, 32-1024.

    Returns:
        An RGB PIL image of size (size_px, size_px): the item as a coloured fabric in a scene
        (floor, tiles, room corner, duvet, clothes rail or table), tilted, lit, maybe partly hidden,
        blurred by camera shake and JPEG-compressed. The module docstring lists the models.

    Raises:
        ValueError: `image` is not a (28, 28) uint8 array, or is blank; `size_px` is out of range;
            `rng` is not a numpy Generator.
    """
    return photo_alt_with_placement(image, rng, size_px=size_px)[0]


def photos_alt_for(images: np.ndarray, *, seed: int, size_px: int = 96) -> list[Image.Image]:
    """One photo_alt per image, reproducible by `seed`.

    Photo i uses its own generator, child i of numpy's SeedSequence(seed), so it does not depend on
    how many images come before or after it.

    Args:
        images: (N, 28, 28) uint8.
        seed: a non-negative int.
        size_px: as in photo_alt.

    Returns:
        N RGB PIL images of size (size_px, size_px).

    Raises:
        ValueError: `images` is not an (N, 28, 28) uint8 array, or any photo_alt error.
    """
    _check_image(images, "images", 3)
    children = np.random.SeedSequence(seed).spawn(len(images))
    return [
        photo_alt(img, np.random.default_rng(child), size_px=size_px)
        for img, child in zip(images, children, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Contact sheet


def _contact_sheet(images: np.ndarray, photos: list[Image.Image], columns: int) -> Image.Image:
    """Pairs (source item, photo) in a grid, the source scaled to the photo's size, 4 px gaps."""
    size = photos[0].width
    rows = -(-len(photos) // columns)
    cell = 2 * size + 4
    sheet = Image.new("RGB", (columns * (cell + 8), rows * (size + 8)), (255, 255, 255))
    for i, (src, photo) in enumerate(zip(images, photos, strict=True)):
        x, y = (i % columns) * (cell + 8) + 4, (i // columns) * (size + 8) + 4
        sheet.paste(Image.fromarray(src).resize((size, size), Image.NEAREST).convert("RGB"), (x, y))
        sheet.paste(photo, (x + size + 4, y))
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="contact sheet PNG to write")
    parser.add_argument("--count", type=int, default=64, help="photos on the sheet (default 64)")
    parser.add_argument("--columns", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size-px", type=int, default=96)
    parser.add_argument("--speed-count", type=int, default=1000, help="photos timed for the speed figure")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from catalog.demo_data import fashion_mnist_locate, fashion_mnist_read

    images, _ = fashion_mnist_read(fashion_mnist_locate(None, allow_download=False), "train")
    pick = np.random.default_rng(args.seed).permutation(len(images))
    sample = images[pick[: args.count]]
    photos = photos_alt_for(sample, seed=args.seed, size_px=args.size_px)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _contact_sheet(sample, photos, args.columns).save(args.out)
    print(f"wrote {args.out} ({len(photos)} pairs: source item, photo)")

    # CPU time of this process as well as wall time: on a busy machine the wall figure undersells.
    timed = images[pick[-args.speed_count:]]
    start, start_cpu = time.perf_counter(), time.process_time()
    photos_alt_for(timed, seed=args.seed + 1, size_px=args.size_px)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"speed at {args.size_px} px, {len(timed)} photos: {len(timed) / elapsed:.0f} photos/s by wall clock "
          f"({elapsed:.2f} s), {len(timed) / cpu:.0f} photos per CPU-second ({cpu:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
