"""Decoding and transforms: bad input gets a status, every mode converts, geometry is right."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image

from samadapter.data import transforms as T
from samadapter.data.synthetic import make_scene


def _tiny_model():
    from samadapter import build_model

    return build_model("tiny")  # its normalize(): SAM's pixel statistics


def _encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


GOOD_JPEG = _encode(Image.fromarray(_rgb()), "JPEG", quality=90)
GOOD_MASK = _encode(Image.fromarray((np.arange(40 * 60).reshape(40, 60) % 7 == 0).astype(np.uint8) * 255))


@pytest.mark.parametrize(
    "data,status",
    [
        (b"", T.ZERO_BYTES),
        (b"this is a text file, not an image\n", T.NOT_AN_IMAGE),
        (GOOD_JPEG[: len(GOOD_JPEG) // 2], T.TRUNCATED),
        (GOOD_JPEG[:200] + b"\x00" * 50 + GOOD_JPEG[250:], None),  # corrupt body: some status, never raises
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, None),
    ],
)
def test_bad_images_get_a_status_not_an_exception(data, status):
    out = T.decode_image(data)
    if status is None:
        assert out.status in T.STATUSES
    else:
        assert out.status == status, out
    if not out.ok:
        assert out.reason and out.image is None


def test_png_header_with_garbage_is_corrupt():
    data = _encode(Image.fromarray(_rgb()))
    broken = data[:60] + bytes(b ^ 0xFF for b in data[60:200]) + data[200:]
    out = T.decode_image(broken)
    assert out.status in (T.CORRUPT, T.TRUNCATED)


def test_too_many_pixels():
    data = _encode(Image.fromarray(np.zeros((100, 100, 3), np.uint8)))
    assert T.decode_image(data, max_pixels=9_999).status == T.TOO_MANY_PIXELS
    assert T.decode_image(data, max_pixels=10_000).ok


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (the pixel data is a 1 x 1 image's: Pillow's
    size checks read only the header)."""
    import struct
    import zlib

    data = bytearray(_encode(Image.fromarray(np.zeros((1, 1), np.uint8))))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_max_pixels_is_the_only_pixel_limit():
    """Above Pillow's own bomb limit (~179 MP) the user's --max-pixels decides, not Pillow."""
    header = _png_claiming(14_000, 14_000)  # 196 MP
    out = T.decode_image(header, max_pixels=300_000_000)
    assert out.status != T.TOO_MANY_PIXELS, out.reason  # opened; its data is then too short
    out = T.decode_image(header, max_pixels=100_000_000)
    assert out.status == T.TOO_MANY_PIXELS and "> limit 100000000" in out.reason


def test_mask_problems():
    assert T.decode_sample(GOOD_JPEG, None, require_mask=True).status == T.MISSING_MASK
    assert T.decode_sample(GOOD_JPEG, b"", require_mask=True).status == T.MISSING_MASK
    assert T.decode_sample(GOOD_JPEG, None, require_mask=False).ok
    wrong = _encode(Image.new("L", (61, 40)))
    out = T.decode_sample(GOOD_JPEG, wrong)
    assert out.status == T.MASK_SIZE_MISMATCH and "61x40" in out.reason
    assert T.decode_sample(GOOD_JPEG, b"garbage").status == T.NOT_AN_IMAGE
    ok = T.decode_sample(GOOD_JPEG, GOOD_MASK)
    assert ok.ok and ok.mask.shape == (40, 60) and set(np.unique(ok.mask)) <= {0, 1}


def _mode_images():
    rgb = _rgb(20, 30)
    gray = rgb[..., 0]
    yield "RGB", Image.fromarray(rgb), "PNG"
    yield "L", Image.fromarray(gray), "PNG"
    yield "LA", Image.fromarray(gray).convert("LA"), "PNG"
    yield "P", Image.fromarray(rgb).convert("P"), "PNG"
    yield "RGBA", Image.fromarray(rgb).convert("RGBA"), "PNG"
    yield "CMYK", Image.fromarray(rgb).convert("CMYK"), "JPEG"
    yield "I;16", Image.fromarray((gray.astype(np.uint16) * 257)), "PNG"
    yield "1", Image.fromarray(gray > 128), "PNG"
    yield "I", Image.fromarray(gray.astype(np.int32) * 257), "TIFF"
    yield "F", Image.fromarray(gray.astype(np.float32) / 255.0), "TIFF"


@pytest.mark.parametrize("mode,im,fmt", list(_mode_images()), ids=[m for m, _, _ in _mode_images()])
def test_every_mode_converts_to_rgb(mode, im, fmt):
    out = T.decode_image(_encode(im, fmt))
    assert out.ok, out
    assert out.image.dtype == np.uint8 and out.image.shape == (20, 30, 3)
    if mode in ("L", "I;16", "I", "F"):
        # high bit depths are scaled, not clipped: grey levels survive
        ref = np.asarray(im.convert("L")) if mode == "L" else _rgb(20, 30)[..., 0]
        assert np.abs(out.image[..., 0].astype(int) - ref.astype(int)).max() <= 1


def test_exif_rotated_image_comes_out_upright():
    # An upright 40 x 60 image with a bright top row, stored rotated with EXIF orientation 6
    # (viewer must rotate 90 degrees clockwise).
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:5] = 255
    stored = np.rot90(upright, k=1)  # 60 x 40, rotated counter-clockwise
    im = Image.fromarray(np.ascontiguousarray(stored))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = T.decode_image(_encode(im, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.ok and out.image.shape == (40, 60, 3)
    assert out.image[:5].mean() > 200 and out.image[10:].mean() < 30


def test_masks_binarized_at_127():
    m = np.array([[0, 127, 128, 255]], np.uint8)
    out = T.mask_to_binary(Image.fromarray(m))
    assert out.tolist() == [[0, 0, 1, 1]]


def test_flip_keeps_image_and_mask_aligned():
    image, mask = make_scene(0, 3, 64)
    fi, fm = T.hflip(image, mask)
    assert np.array_equal(fi[:, ::-1], image) and np.array_equal(fm[:, ::-1], mask)
    # alignment: the mean colour inside the mask is the same before and after
    assert np.allclose(image[mask == 1].mean(0), fi[fm == 1].mean(0))
    x, y, _ = T.prepare_uint8(image, 64, "squash", mask, flip=True)
    x0, y0, _ = T.prepare_uint8(image, 64, "squash", mask, flip=False)
    assert np.array_equal(y, y0[:, ::-1]) and np.array_equal(x, x0[:, ::-1])


@pytest.mark.parametrize("mode", T.RESIZE_MODES)
def test_resize_and_back_to_original_size(mode):
    import torch

    from samadapter import resize_logits

    from samadapter.constants import PIXEL_MEAN, PIXEL_STD
    from samadapter.ops import to_model_input

    image = _rgb(37, 91)
    x8, _, valid = T.prepare_uint8(image, 64, mode)
    assert x8.shape == (64, 64, 3) and x8.dtype == np.uint8
    x = to_model_input(x8[None], _tiny_model())[0].numpy()
    logits = torch.zeros(1, 1, 64, 64)
    back = resize_logits(logits, (37, 91), valid if mode == "pad" else None)
    assert tuple(back.shape[-2:]) == (37, 91)
    if mode == "pad":
        assert valid == (26, 64)
        # padding normalizes to -mean/std, the image area keeps its content
        assert np.allclose(x[:, 40:, :], (0 - np.asarray(PIXEL_MEAN).reshape(3, 1, 1)) / np.asarray(PIXEL_STD).reshape(3, 1, 1), atol=1e-5)


def _smooth_low_res(s: int, seed: int) -> np.ndarray:
    """Low-resolution logits shaped like a trained model's: smooth blobs, steep edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    field = np.zeros((s, s), np.float32)
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.25)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return (field - 0.5) * 24.0


@pytest.mark.parametrize("mode", ["squash", "pad"])
@pytest.mark.parametrize("hw", [(960, 1280), (1800, 2400), (3000, 4000), (333, 517), (200, 150)])
def test_low_res_masks_equal_the_two_step_path(mode, hw):
    """One Pillow resize from the decoder's 256 x 256 logits gives the masks of SAM's own
    path (upsample to 1024 with torch, crop the valid area, resize to the original size)."""
    import torch
    import torch.nn.functional as F

    from samadapter import resize_logits

    size, s = 1024, 256
    valid = T.resized_size(*hw, size, mode) if mode == "pad" else None
    for seed in range(3):
        low = _smooth_low_res(s, seed)
        up = F.interpolate(torch.from_numpy(low)[None, None], size=(size, size), mode="bilinear", align_corners=False)
        ref = resize_logits(up, hw, valid)[0, 0].numpy() > 0
        got = np.asarray(T.low_res_mask(low.astype(np.float16), hw, size, 0.0, valid), dtype=bool)
        assert got.shape == ref.shape == hw
        iou = (got & ref).sum() / max(1, (got | ref).sum())
        # Both are bilinear; they differ only where a pixel's logit is within rounding of
        # the threshold, i.e. along the mask's edge: IoU >= 0.995 keeps that to a thin band.
        assert iou >= 0.995, iou
        assert not np.array_equal(got, np.asarray(T.low_res_mask(low[::-1], hw, size, 0.0, valid), dtype=bool))


def test_binary_png_reads_back_as_the_same_mask():
    mask = _smooth_low_res(97, 1)[:, :61] > 0
    data = T.encode_png(Image.fromarray(mask))
    im = Image.open(io.BytesIO(data))
    assert im.mode == "1" and im.size == (61, 97)
    assert np.array_equal(np.asarray(im.convert("L")) == 255, mask)
    assert set(np.unique(np.asarray(im.convert("L")))) == {0, 255}
    assert len(data) < len(T.encode_mask_png(mask))


def test_model_inputs_are_normalised_with_sams_constants():
    from samadapter.ops import to_model_input

    image = np.full((1, 4, 4, 3), [123.675, 116.28, 103.53], dtype=np.float32).astype(np.uint8)
    x = to_model_input(image, _tiny_model())
    assert x.shape == (1, 3, 4, 4) and x.dtype.is_floating_point and x.abs().max() < 0.02


def test_synthetic_scenes_are_deterministic_and_camouflaged():
    a_img, a_mask = make_scene(5, 7, 128)
    b_img, b_mask = make_scene(5, 7, 128)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(make_scene(5, 8, 128)[0], a_img)
    # Colour statistics inside and outside the object are close (camouflage) ...
    stats = []
    for i in range(20):
        img, mask = make_scene(1, i, 128)
        assert 0.02 < mask.mean() < 0.6
        inside, outside = img[mask == 1].astype(float), img[mask == 0].astype(float)
        stats.append(np.abs(inside.mean(0) - outside.mean(0)).max() / (outside.std(0).max() + 1e-6))
    assert np.median(stats) < 0.5


def test_segment_cpu_stages_run_without_torch(tmp_path):
    """Read, decode and postprocess run in short-lived Ray workers: none imports torch."""
    import subprocess
    import sys

    Image.fromarray(_rgb(30, 50)).save(tmp_path / "a.png")
    program = f"""
import sys
import numpy as np
from samadapter.segment import stages as P
root = {str(tmp_path)!r}
batch = {{"uri": np.asarray([root + "/a.png", root + "/missing.png"], dtype=object), "rel": np.asarray(["a.png", "missing.png"], dtype=object),
          "version": np.asarray(["", ""], dtype=object), "offset": np.asarray([-1, -1]), "length": np.asarray([-1, -1]),
          "status": np.asarray(["pending", "pending"], dtype=object), "reason": np.asarray(["", ""], dtype=object)}}
batch = P.read_stage(batch)
batch = P.decode_stage(batch, img_size=32, resize_mode="pad", max_pixels=10**7, keep_bytes=True)
batch.pop("image")
batch["logits"] = np.where(np.arange(8)[None, None, :] < 4, 5.0, -5.0).repeat(2, 0).repeat(8, 1).astype(np.float16)
batch["actor"] = np.asarray(["x", ""], dtype=object)
rows = P.postprocess_stage(batch, output={str(tmp_path / "out")!r}, threshold=0.5,
                           resize_mode="pad", save_probs=True, overlays=True, img_size=32)
print(list(rows["status"]), "torch" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["['ok',", "'read_error']", "False"]
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png.png"))
    # the left half of the padded input's logits is positive: the left part of the image
    assert mask.shape == (30, 50) and mask[:, :20].all() and not mask[:, 30:].any()


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@functools.lru_cache(maxsize=1)
def _large_photo_files():
    """({case: (file bytes, upright size)}, PNG bytes) of one 3000 x 2250 scene, encoded once
    for both resize modes."""
    scene, _ = make_scene(1234, 0, 512)
    big = Image.fromarray(scene).resize((3000, 2250), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: upright 2250 wide x 3000 high
    cases = {
        "baseline": (_jpeg(big), (2250, 3000)),
        "progressive": (_jpeg(big, progressive=True), (2250, 3000)),
        "grayscale": (_jpeg(big.convert("L")), (2250, 3000)),
        "cmyk": (_jpeg(big.convert("CMYK")), (2250, 3000)),
        "exif-rotated": (_jpeg(big, exif=exif.tobytes()), (3000, 2250)),
    }
    png = io.BytesIO()
    big.save(png, format="PNG")
    return cases, png.getvalue()


@pytest.mark.parametrize("mode", ["squash", "pad"])
def test_draft_decode_gives_the_model_input_of_a_full_decode(mode):
    """Large JPEGs decode at a reduced DCT scale: same model input (PSNR >= 35 dB), the
    original size from the header, EXIF orientation applied; other formats in full."""
    cases, png = _large_photo_files()
    for name, (data, hw) in cases.items():
        full = T.decode_image(data)
        drafted = T.decode_image(data, draft_size=(1024, mode))
        assert full.ok and drafted.ok, name
        assert full.original_size == drafted.original_size == hw == full.image.shape[:2], name
        assert drafted.image.shape[0] * drafted.image.shape[1] < full.image.shape[0] * full.image.shape[1] / 3, name
        # never below what the model input needs
        need = T.resized_size(*hw, 1024, mode)
        assert drafted.image.shape[0] >= need[0] and drafted.image.shape[1] >= need[1], name
        # the segment job's model input (draft decode, OpenCV resize) against today's (full
        # decode, Pillow resize)
        psnr = _psnr(T.resize_image(full.image, 1024, mode), T.resize_for_model(drafted.image, 1024, mode))
        assert psnr >= 35, (name, psnr)
    d = T.decode_image(png, draft_size=(1024, mode))
    assert d.image.shape[:2] == d.original_size == (2250, 3000)  # PNG: decoded in full
