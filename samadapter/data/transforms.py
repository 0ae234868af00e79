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

DEFAULT_MAX_PIXELS = 100_000_000

OK = "ok"
ZERO_BYTES = "zero_bytes"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
TOO_MANY_PIXELS = "too_many_pixels"
MISSING_MASK = "missing_mask"
MASK_SIZE_MISMATCH = "mask_size_mismatch"
BAD_LABELS = "bad_labels"  # a class mask that is not single-channel, or has values >= the class count
STATUSES = (OK, ZERO_BYTES, NOT_AN_IMAGE, CORRUPT, TRUNCATED, TOO_MANY_PIXELS, MISSING_MASK, MASK_SIZE_MISMATCH,
            BAD_LABELS)

RESIZE_MODES = ("squash", "pad")

# Never decode partial data silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False



@dataclass
class Decoded:
    """Result of decoding one sample. ``image``: H x W x 3 uint8 RGB; ``mask``: H x W
    uint8 in {0, 1} (one class) or class indices < C (C classes); both ``None`` unless
    ``status == 'ok'``."""

    status: str
    reason: str = ""
    image: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    # (H, W) of the upright image as stored; differs from ``image.shape[:2]`` when a large
    # JPEG was decoded at a reduced size (``decode_image(..., draft_size=)``).
    original_size: Optional[Tuple[int, int]] = None

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


_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _draft(im: Image.Image, size: int, mode: str) -> Tuple[int, int]:
    """Let a JPEG decode at a reduced scale (DCT domain: 1/2, 1/4, 1/8) that still covers
    what the ``size`` model input needs; returns the upright (H, W) as stored."""
    w, h = im.size
    orientation = im.getexif().get(0x0112, 1)
    uh, uw = (w, h) if orientation in _TRANSPOSED else (h, w)
    if im.format == "JPEG":
        rh, rw = resized_size(uh, uw, size, mode)
        need_w, need_h = (rh, rw) if orientation in _TRANSPOSED else (rw, rh)
        im.draft(im.mode, (max(1, need_w), max(1, need_h)))
    return uh, uw


def _open(data: Optional[bytes], max_pixels: int, draft_size: Optional[Tuple[int, str]] = None):
    """(image, status, reason, upright (H, W) as stored)."""
    if data is None:
        return None, MISSING_MASK, "no data", None
    if len(data) == 0:
        return None, ZERO_BYTES, "the file is empty (0 bytes)", None
    # ``max_pixels`` is the only pixel limit: Pillow's own (2 x MAX_IMAGE_PIXELS, ~179 MP by
    # default, raised at open) follows it, in whichever process decodes.
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            return None, TOO_MANY_PIXELS, str(exc), None
        except UnidentifiedImageError:
            return None, NOT_AN_IMAGE, "not a recognised image format", None
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-row status
            return None, CORRUPT, f"{type(exc).__name__}: {exc}", None
        w, h = im.size
        if w * h > max_pixels:
            return None, TOO_MANY_PIXELS, f"{w}x{h} = {w * h} pixels > limit {max_pixels}", None
        try:
            hw = _draft(im, *draft_size) if draft_size else None
            im.load()
            im = ImageOps.exif_transpose(im)
        except Image.DecompressionBombError as exc:
            return None, TOO_MANY_PIXELS, str(exc), None
        except OSError as exc:
            msg = str(exc)
            status = TRUNCATED if "truncated" in msg.lower() or "broken data stream" in msg.lower() else CORRUPT
            return None, status, f"{type(exc).__name__}: {msg}", None
        except Exception as exc:  # noqa: BLE001
            return None, CORRUPT, f"{type(exc).__name__}: {exc}", None
    return im, OK, "", (hw or (im.height, im.width))


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


def decode_image(data: Optional[bytes], max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft_size: Optional[Tuple[int, str]] = None) -> Decoded:
    """Encoded bytes -> upright RGB array, or a status saying why not.

    ``draft_size=(size, resize mode)``: the image is only needed as a ``size`` model input,
    so a JPEG much larger than that is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
    (Pillow's ``draft``), never below what the input needs; ``original_size`` keeps the
    full upright size from the header. Other formats decode in full.
    """
    im, status, reason, hw = _open(data, max_pixels, draft_size)
    if im is None:
        if status == MISSING_MASK:
            status, reason = ZERO_BYTES, "no image data"
        return Decoded(status, reason)
    try:
        return Decoded(OK, image=image_to_rgb(im), original_size=hw)
    except Exception as exc:  # noqa: BLE001
        return Decoded(CORRUPT, f"{type(exc).__name__}: {exc}")


def decode_sample(
    image_bytes: Optional[bytes],
    mask_bytes: Optional[bytes] = None,
    *,
    require_mask: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_classes: int = 1,
) -> Decoded:
    """Decode an image and (optionally) its mask: binary (``num_classes`` 1, foreground where
    > 127) or class indices (``mask_to_labels``); never raises for bad data."""
    result = decode_image(image_bytes, max_pixels)
    if not result.ok:
        return result
    if mask_bytes is None or len(mask_bytes) == 0:
        if require_mask:
            return Decoded(MISSING_MASK, "the image has no mask")
        return result
    im, status, reason, _ = _open(mask_bytes, max_pixels)
    if im is None:
        return Decoded(status, "mask: " + reason)
    if num_classes > 1:
        from .labels import mask_to_labels

        mask, why = mask_to_labels(im, num_classes)
        if mask is None:
            return Decoded(BAD_LABELS, "mask: " + why)
    else:
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


def resize_for_model(image: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """``resize_image`` for the segment job's decode stage: the same bilinear model input
    from OpenCV's resize (about 6x less CPU than Pillow's on one core; no antialiasing,
    which after a draft decode only ever downscales by less than 2x).
    ``tests/test_transforms.py`` holds it to PSNR >= 35 dB against ``resize_image``."""
    import cv2

    cv2.setNumThreads(1)  # a half-CPU Ray task
    h, w = image.shape[:2]
    rh, rw = resized_size(h, w, size, mode)
    out = cv2.resize(np.ascontiguousarray(image), (rw, rh), interpolation=cv2.INTER_LINEAR)
    if (rh, rw) == (size, size):
        return out
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:rh, :rw] = out
    return canvas


def resize_mask(mask: np.ndarray, size: int, mode: str = "squash", num_classes: int = 1) -> np.ndarray:
    """H x W {0,1} -> size x size {0,1} (bilinear then > 0.5; padding is background); class
    indices (``num_classes`` > 1) by nearest neighbour."""
    h, w = mask.shape
    rh, rw = resized_size(h, w, size, mode)
    if num_classes > 1:
        out = np.zeros((size, size), dtype=np.uint8)
        out[:rh, :rw] = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((rw, rh), Image.NEAREST))
        return out
    soft = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((rw, rh), Image.BILINEAR))
    out = np.zeros((size, size), dtype=np.uint8)
    out[:rh, :rw] = soft > 127
    return out


# Logits become uint8 before the resize: 128 is the threshold, 1/LOGIT_STEPS of a logit
# unit a step; logits further than 127/LOGIT_STEPS = 16 from the threshold saturate, which
# moves no crossing of the threshold by more than that rounding near the mask's edge.
LOGIT_STEPS = 8.0


def _low_res_box(s: int, input_size: int, valid_size: Optional[Tuple[int, int]]) -> Tuple[float, float, float, float]:
    vh, vw = (input_size, input_size) if valid_size is None else valid_size
    return (0.0, 0.0, vw * s / input_size, vh * s / input_size)


def low_res_mask(logits: np.ndarray, original_size: Tuple[int, int], input_size: int, threshold_logit: float = 0.0,
                 valid_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """s x s low-resolution logits of an ``input_size`` model input -> H x W mask (Pillow
    mode "1"), made in C without full-size float arrays.

    SAM's own post-processing upsamples the decoder's logits to the input size, crops the
    valid (unpadded) area, resizes that to the original size and thresholds. This does one
    bilinear resize of the logits quantised to uint8 around the threshold (the valid area,
    in low-resolution coordinates, is the resize's source box) and thresholds with a
    lookup table. ``tests/test_transforms.py`` checks its masks against the two-step path.
    """
    x = np.asarray(logits, dtype=np.float32)
    q = np.clip(np.rint(128.0 + (x - threshold_logit) * LOGIT_STEPS), 0, 255).astype(np.uint8)
    h, w = int(original_size[0]), int(original_size[1])
    im = Image.fromarray(q).resize((w, h), Image.BILINEAR, box=_low_res_box(x.shape[-1], input_size, valid_size))
    return im.point([0] * 129 + [255] * 127, "1")


def low_res_probs(logits: np.ndarray, original_size: Tuple[int, int], input_size: int,
                  valid_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """8-bit probability map (Pillow mode "L") at the original size: the sigmoid of the
    low-resolution logits, resized like ``low_res_mask``."""
    x = np.asarray(logits, dtype=np.float32)
    p = np.rint(255.0 / (1.0 + np.exp(-x))).astype(np.uint8)
    h, w = int(original_size[0]), int(original_size[1])
    return Image.fromarray(p).resize((w, h), Image.BILINEAR, box=_low_res_box(x.shape[-1], input_size, valid_size))


def encode_png(image: Image.Image) -> bytes:
    """A Pillow image -> PNG bytes (a mode "1" mask: 1 bit per pixel; read as "L" it is 0/255)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def thumbnail(image: np.ndarray, height: int, mode: str = "RGB") -> np.ndarray:
    """An H x W (x C) uint8 array scaled to ``height`` (aspect kept) as an RGB array."""
    width = max(1, int(round(image.shape[1] * height / image.shape[0])))
    return np.asarray(Image.fromarray(image).convert(mode).resize((width, height), Image.BILINEAR).convert("RGB"))


def hflip(image: np.ndarray, mask: Optional[np.ndarray] = None):
    """Horizontal flip of an H x W x C image and its H x W mask together."""
    image = np.ascontiguousarray(image[:, ::-1])
    if mask is None:
        return image
    return image, np.ascontiguousarray(mask[:, ::-1])


def prepare_uint8(
    image: np.ndarray,
    size: int,
    mode: str = "squash",
    mask: Optional[np.ndarray] = None,
    flip: bool = False,
    num_classes: int = 1,
):
    """One decoded sample -> uint8 model input (and target), as Ray Data stages ship them:
    normalisation happens on the device (``samadapter.ops.to_model_input``).

    Returns:
        (size x size x 3 uint8 input, size x size uint8 target or None, (h, w) valid size)
    """
    if flip:
        if mask is None:
            image = hflip(image)
        else:
            image, mask = hflip(image, mask)
    x = resize_image(image, size, mode)
    y = None if mask is None else resize_mask(mask, size, mode, num_classes)
    return x, y, resized_size(image.shape[0], image.shape[1], size, mode)


