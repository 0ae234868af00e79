"""Decoding and transforms shared by training, evaluation and segmentation.

Decoding never raises for bad input: it returns a status and a reason so that callers
can skip a sample and report it. Statuses:

``ok``, ``zero_bytes``, ``not_an_image``, ``corrupt``, ``truncated``,
``too_many_pixels``, ``missing_mask``, ``mask_size_mismatch``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..constants import PIXEL_MEAN, PIXEL_STD

DEFAULT_MAX_PIXELS = 100_000_000

OK = "ok"
ZERO_BYTES = "zero_bytes"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
TOO_MANY_PIXELS = "too_many_pixels"
MISSING_MASK = "missing_mask"
MASK_SIZE_MISMATCH = "mask_size_mismatch"
STATUSES = (OK, ZERO_BYTES, NOT_AN_IMAGE, CORRUPT, TRUNCATED, TOO_MANY_PIXELS, MISSING_MASK, MASK_SIZE_MISMATCH)

RESIZE_MODES = ("squash", "pad")

# Never decode partial data silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_MEAN = np.asarray(PIXEL_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(PIXEL_STD, dtype=np.float32).reshape(3, 1, 1)


@dataclass
class Decoded:
    """Result of decoding one sample. ``image``: H x W x 3 uint8 RGB; ``mask``: H x W
    uint8 in {0, 1}; both ``None`` unless ``status == 'ok'``."""

    status: str
    reason: str = ""
    image: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None

    @property
    def ok(self) -> bool:
        return self.status == OK


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth single-channel arrays (I;16, I, F) to uint8."""
    if mode.startswith("I;16"):
        return (arr.astype(np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)
    arr = arr.astype(np.float32)
    if mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
        arr = arr * 255.0
    elif arr.size and np.nanmax(arr) > 255:
        arr = arr / 257.0
    return np.nan_to_num(arr).round().clip(0, 255).astype(np.uint8)


def _open(data: Optional[bytes], max_pixels: int) -> Tuple[Optional[Image.Image], str, str]:
    if data is None:
        return None, MISSING_MASK, "no data"
    if len(data) == 0:
        return None, ZERO_BYTES, "the file is empty (0 bytes)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            return None, TOO_MANY_PIXELS, str(exc)
        except UnidentifiedImageError:
            return None, NOT_AN_IMAGE, "not a recognised image format"
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-row status
            return None, CORRUPT, f"{type(exc).__name__}: {exc}"
        w, h = im.size
        if w * h > max_pixels:
            return None, TOO_MANY_PIXELS, f"{w}x{h} = {w * h} pixels > limit {max_pixels}"
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
        except Image.DecompressionBombError as exc:
            return None, TOO_MANY_PIXELS, str(exc)
        except OSError as exc:
            msg = str(exc)
            status = TRUNCATED if "truncated" in msg.lower() or "broken data stream" in msg.lower() else CORRUPT
            return None, status, f"{type(exc).__name__}: {msg}"
        except Exception as exc:  # noqa: BLE001
            return None, CORRUPT, f"{type(exc).__name__}: {exc}"
    return im, OK, ""


def image_to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1, ...) -> H x W x 3 uint8 RGB."""
    if im.mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if im.mode.startswith("I") or im.mode == "F":
        gray = _to_uint8(np.asarray(im), im.mode)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        # Alpha is dropped (colour kept), as for a photo with an alpha channel.
        return np.asarray(im.convert("RGBA").convert("RGB"), dtype=np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def mask_to_binary(im: Image.Image) -> np.ndarray:
    """A mask image of any mode -> H x W uint8 in {0, 1} (foreground where > 127)."""
    if im.mode.startswith("I") or im.mode == "F":
        gray = _to_uint8(np.asarray(im), im.mode)
    elif im.mode == "1":
        gray = np.asarray(im, dtype=np.uint8) * 255
    else:
        gray = np.asarray(im.convert("L"), dtype=np.uint8)
    return (gray > 127).astype(np.uint8)


def decode_image(data: Optional[bytes], max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Encoded bytes -> upright RGB array, or a status saying why not."""
    im, status, reason = _open(data, max_pixels)
    if im is None:
        if status == MISSING_MASK:
            status, reason = ZERO_BYTES, "no image data"
        return Decoded(status, reason)
    try:
        return Decoded(OK, image=image_to_rgb(im))
    except Exception as exc:  # noqa: BLE001
        return Decoded(CORRUPT, f"{type(exc).__name__}: {exc}")


def decode_sample(
    image_bytes: Optional[bytes],
    mask_bytes: Optional[bytes] = None,
    *,
    require_mask: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Decoded:
    """Decode an image and (optionally) its mask; never raises for bad data."""
    result = decode_image(image_bytes, max_pixels)
    if not result.ok:
        return result
    if mask_bytes is None or len(mask_bytes) == 0:
        if require_mask:
            return Decoded(MISSING_MASK, "the image has no mask")
        return result
    im, status, reason = _open(mask_bytes, max_pixels)
    if im is None:
        return Decoded(status, "mask: " + reason)
    mask = mask_to_binary(im)
    if mask.shape != result.image.shape[:2]:
        return Decoded(
            MASK_SIZE_MISMATCH,
            f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {result.image.shape[1]}x{result.image.shape[0]}",
        )
    result.mask = mask
    return result


def encode_mask_png(mask: np.ndarray) -> bytes:
    """H x W {0,1} (or bool) mask -> single-channel PNG with values 0/255."""
    buf = io.BytesIO()
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ resizing
def resized_size(height: int, width: int, size: int, mode: str = "squash") -> Tuple[int, int]:
    """(h, w) the image occupies inside the size x size model input."""
    if mode == "squash":
        return size, size
    if mode == "pad":
        scale = size / max(height, width)
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    raise ValueError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")


def resize_image(image: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """H x W x 3 uint8 -> size x size x 3 uint8 (squashed, or longest side = size and
    zero-padded at the bottom/right)."""
    h, w = image.shape[:2]
    rh, rw = resized_size(h, w, size, mode)
    out = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
    if (rh, rw) == (size, size):
        return out
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:rh, :rw] = out
    return canvas


def resize_mask(mask: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """H x W {0,1} -> size x size {0,1} (bilinear then > 0.5; padding is background)."""
    h, w = mask.shape
    rh, rw = resized_size(h, w, size, mode)
    soft = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((rw, rh), Image.BILINEAR))
    out = np.zeros((size, size), dtype=np.uint8)
    out[:rh, :rw] = soft > 127
    return out


def _bilinear_taps(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis, as ``F.interpolate(mode="bilinear",
    align_corners=False)`` computes them: half-pixel centres, negative positions clamped
    to 0, no antialiasing."""
    scale = np.float32(n_in / n_out)  # float32 throughout, like torch's kernel for float32 input
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0.astype(np.float32)


def resize_logits_numpy(
    logits: np.ndarray, original_size: Tuple[int, int], valid_size: Optional[Tuple[int, int]] = None
) -> np.ndarray:
    """S x S logits -> H x W float32 logits, without torch.

    The same function as :func:`samadapter.resize_logits` (bilinear, ``align_corners=False``,
    within float rounding; ``tests/test_transforms.py`` compares them), for Ray tasks that
    should not pay torch's import: the segment job's post-processing.
    """
    x = np.asarray(logits, dtype=np.float32)
    if valid_size is not None:
        x = x[: valid_size[0], : valid_size[1]]
    h, w = int(original_size[0]), int(original_size[1])
    r0, r1, rl = _bilinear_taps(x.shape[0], h)
    c0, c1, cl = _bilinear_taps(x.shape[1], w)
    rows = x[r0] * (1.0 - rl)[:, None] + x[r1] * rl[:, None]  # h x w_in
    return rows[:, c0] * (1.0 - cl)[None, :] + rows[:, c1] * cl[None, :]


def normalize(image: np.ndarray) -> np.ndarray:
    """size x size x 3 uint8 -> 3 x size x size float32 with SAM's pixel mean/std.

    Padding (zeros) is normalized too; callers that pad pass ``valid_size`` to
    :func:`samadapter.resize_logits` so the padding never reaches an output.
    """
    chw = image.transpose(2, 0, 1).astype(np.float32)
    return (chw - _MEAN) / _STD


def hflip(image: np.ndarray, mask: Optional[np.ndarray] = None):
    """Horizontal flip of an H x W x C image and its H x W mask together."""
    image = np.ascontiguousarray(image[:, ::-1])
    if mask is None:
        return image
    return image, np.ascontiguousarray(mask[:, ::-1])


def prepare_input(
    image: np.ndarray,
    size: int,
    mode: str = "squash",
    mask: Optional[np.ndarray] = None,
    flip: bool = False,
):
    """One decoded sample -> model input (and target).

    Returns:
        (3 x size x size float32 input, size x size uint8 target or None, (h, w) valid size)
    """
    if flip:
        if mask is None:
            image = hflip(image)
        else:
            image, mask = hflip(image, mask)
    x = normalize(resize_image(image, size, mode))
    y = None if mask is None else resize_mask(mask, size, mode)
    return x, y, resized_size(image.shape[0], image.shape[1], size, mode)
