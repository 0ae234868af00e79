"""Synthetic scenes: the embedded default datasets and the data of the tests.

Four kinds (``SCENES``): ``camouflage`` (below), ``shadow`` (a textured surface darkened
under soft-edged cast shadows), ``polyp`` (pinkish mucosa with one or two raised, redder,
glossy blobs) and ``multiclass`` (warm and cool objects on a surface: three classes).

Each scene is a textured background with one or more objects drawn from the *same*
colour palette and the same intensity distribution as the background, so that global
colour says nothing about where the object is. The object differs only in its texture
(a finer warped stripe pattern, i.e. more texture edges, at another orientation), which a
model that sees texture edges (the adapter's high-frequency branch) can learn. Object outlines are
random smooth blobs with soft (blurred) edges; the mask is the exact binary shape.

Everything is deterministic from (seed, index).
"""

from __future__ import annotations

import io
from typing import Tuple

import numpy as np
from PIL import Image, ImageFilter


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (bilinear upsampling of a coarse grid)."""
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(np.float32)
    im = Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(im), -1.5, 1.5)


def _texture(rng: np.random.Generator, h: int, w: int, period: float, angle: float) -> np.ndarray:
    """Warped oriented stripes in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = _smooth_noise(rng, h, w, cells=4) * period * 0.6
    phase = rng.uniform(0, 2 * np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle) + warp
    t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + phase)
    t += rng.normal(0, 0.08, size=(h, w)).astype(np.float32)  # fine grain
    return np.clip(t, 0, 1)


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random smooth star-shaped blob, as a boolean mask."""
    size = min(h, w)
    radius = rng.uniform(0.12, 0.28) * size
    cy = rng.uniform(radius, h - radius)
    cx = rng.uniform(radius, w - radius)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0, 0.25 / (k - 1)) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    aspect = rng.uniform(0.6, 1.0)
    rot = rng.uniform(0, np.pi)
    # Elongate along a random direction.
    along = (xx - cx) * np.cos(rot) + (yy - cy) * np.sin(rot)
    across = -(xx - cx) * np.sin(rot) + (yy - cy) * np.cos(rot)
    dist = np.hypot(along * aspect, across)
    return dist < radius * r * aspect ** 0.5


def make_scene(seed: int, index: int, size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """One scene.

    Args:
        seed: dataset seed.
        index: scene index within the dataset.
        size: image side (pixels).

    Returns:
        (size x size x 3 uint8 RGB image, size x size uint8 {0, 1} mask)
    """
    rng = np.random.default_rng([seed, index])
    h = w = size
    # A palette of two natural-ish colours shared by background and object.
    base = rng.uniform(40, 200, size=3)
    c1 = np.clip(base + rng.normal(0, 25, size=3), 0, 255)
    c2 = np.clip(base + rng.normal(0, 45, size=3), 0, 255)
    period_bg = rng.uniform(8.0, 14.0) * size / 256
    angle_bg = rng.uniform(0, np.pi)
    t = _texture(rng, h, w, period_bg, angle_bg)

    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        shape = _blob(rng, h, w)
        # Same palette and intensity statistics; a finer grain (more texture edges) at
        # another orientation.
        angle = angle_bg + rng.choice([-1, 1]) * rng.uniform(np.pi / 4, np.pi / 2)
        period = rng.uniform(2.5, 4.0) * size / 256
        t_obj = _texture(rng, h, w, period, angle)
        alpha = Image.fromarray((shape * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius=float(rng.uniform(0.8, 2.0)))
        )
        a = np.asarray(alpha, dtype=np.float32) / 255.0
        t = t * (1 - a) + t_obj * a
        mask |= shape

    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    # Global illumination gradient and sensor noise, identical over object and background.
    light = 1.0 + 0.15 * _smooth_noise(rng, h, w, cells=2)
    img = img * light[..., None] + rng.normal(0, 4.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def make_shadow_scene(seed: int, index: int, size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """A textured surface under one or two cast shadows: the shadowed area keeps the
    surface's texture and colour, darkened (to 35-60 %) and slightly blue-shifted, with a
    soft penumbra; the mask is where the shadow is at least half dark."""
    rng = np.random.default_rng([seed, index, 1])
    h = w = size
    base = rng.uniform(90, 220, size=3)
    c2 = np.clip(base + rng.normal(0, 35, size=3), 0, 255)
    t = _texture(rng, h, w, rng.uniform(6.0, 16.0) * size / 256, rng.uniform(0, np.pi))
    img = base[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    img = img * (1.0 + 0.1 * _smooth_noise(rng, h, w, cells=3))[..., None]
    dark = np.zeros((h, w), dtype=np.float32)
    for _ in range(int(rng.integers(1, 3))):
        shape = Image.fromarray((_blob(rng, h, w) * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius=float(rng.uniform(1.5, 5.0)) * size / 256))
        dark = np.maximum(dark, np.asarray(shape, dtype=np.float32) / 255.0)
    depth = rng.uniform(0.4, 0.65)
    tint = np.array([0.95, 1.0, 1.12], dtype=np.float32)
    img = img * (1 - depth * dark[..., None]) * (1 + (tint - 1) * dark[..., None])
    img += rng.normal(0, 3.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), (dark >= 0.5).astype(np.uint8)


def make_polyp_scene(seed: int, index: int, size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """Pinkish mucosa with vessels and a vignette (as an endoscope sees it) and one or two
    polyps: raised blobs, redder and shaded like a dome, with a specular highlight."""
    rng = np.random.default_rng([seed, index, 2])
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / size
    mucosa = np.array([rng.uniform(170, 215), rng.uniform(95, 130), rng.uniform(85, 115)], dtype=np.float32)
    img = mucosa[None, None, :] * (1 + 0.12 * _smooth_noise(rng, h, w, cells=5))[..., None]
    vessels = np.abs(_smooth_noise(rng, h, w, cells=8)) < 0.06
    img[vessels] *= np.array([0.8, 0.6, 0.6], dtype=np.float32)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        shape = _blob(rng, h, w)
        soft = np.asarray(Image.fromarray((shape * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius=2.0 * size / 256)), dtype=np.float32) / 255.0
        dome = np.asarray(Image.fromarray((shape * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius=12.0 * size / 256)), dtype=np.float32) / 255.0
        colour = np.array([1.05, 0.8, 0.8], dtype=np.float32) * (0.85 + 0.3 * dome[..., None])
        img = img * (1 - soft[..., None]) + img * colour * soft[..., None]
        ys, xs = np.nonzero(shape)
        hy, hx = ys.mean() / size - 0.03, xs.mean() / size - 0.03
        img += (90 * np.exp(-((yy - hy) ** 2 + (xx - hx) ** 2) / 0.0008) * soft)[..., None]
        mask |= shape
    vignette = 1 - 0.5 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.5
    img = img * vignette[..., None] + rng.normal(0, 3.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def make_multiclass_scene(seed: int, index: int, size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """A textured surface with two to four objects of two classes: class 1 warm (reddish) and
    class 2 cool (bluish) blobs, each with the surface's texture under its tint; the mask
    holds class indices (0 the background; a later object covers an earlier one)."""
    rng = np.random.default_rng([seed, index, 3])
    h = w = size
    base = rng.uniform(90, 170, size=3)
    t = _texture(rng, h, w, rng.uniform(6.0, 14.0) * size / 256, rng.uniform(0, np.pi))
    img = base[None, None, :] * (0.8 + 0.4 * t[..., None])
    labels = np.zeros((h, w), dtype=np.uint8)
    tints = {1: np.array([1.45, 0.8, 0.7], dtype=np.float32), 2: np.array([0.7, 0.85, 1.45], dtype=np.float32)}
    for k in range(int(rng.integers(2, 5))):
        cls = 1 + (k + int(rng.integers(0, 2))) % 2
        shape = _blob(rng, h, w)
        soft = np.asarray(Image.fromarray((shape * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius=1.5 * size / 256)), dtype=np.float32)[..., None] / 255.0
        img = img * (1 - soft) + img * tints[cls] * soft
        labels[shape] = cls
    img += rng.normal(0, 4.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels


SCENES = {"camouflage": make_scene, "shadow": make_shadow_scene, "polyp": make_polyp_scene,
          "multiclass": make_multiclass_scene}
# The class names of the kinds whose masks hold class indices (the others are one foreground mask).
SCENE_CLASSES = {"multiclass": ("background", "warm object", "cool object")}


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
