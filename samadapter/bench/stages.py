"""`jobs/benchmark.py stages`: CPU per image and bytes between stages of the segment job,
by photo size, with the job's own stage functions (no Ray, no model).

A photo of each size is made from ``--image`` (default: a synthetic scene) by a bicubic
resize, saved as JPEG (quality 90); the model's output is stood in for by smooth
256 x 256 logits made from the scene's mask. Per stage, CPU time (``time.process_time``,
one thread, best of ``repeats``) of:

- read: the object's bytes from a local file (``storage.read_bytes``),
- decode: bytes -> upright RGB, a large JPEG at a reduced DCT scale (``decode_image``),
- model input: -> 1024 x 1024 x 3 uint8 (``resize_for_model``),
- postprocess: low-resolution logits -> mask at the original size -> 1-bit PNG,
- write: the mask PNG written whole (``storage.write_bytes``).

It runs in a fresh process whose native thread pools have one thread
(``SINGLE_THREADED``), as in the job's tasks: Ray sets ``OMP_NUM_THREADS`` to a task's
CPUs (1 for the half-CPU stages). Without that, numpy's OpenBLAS threads, still spinning
after generating the scene, would be charged to the first photo size (``time.process_time``
counts every thread).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from typing import Callable, List, Optional

import numpy as np
from PIL import Image

from .. import storage
from .common import in_child
from ..data.transforms import decode_image, encode_png, low_res_mask, resize_for_model


def _cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best * 1000


def _photo(source: Image.Image, megapixels: float) -> bytes:
    aspect = 4 / 3
    h = int(round((megapixels * 1e6 / aspect) ** 0.5))
    w = int(round(h * aspect))
    buf = io.BytesIO()
    source.resize((w, h), Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def bench_stages(megapixels: List[float], image: Optional[str] = None, img_size: int = 1024,
                 resize_mode: str = "squash", repeats: int = 3) -> List[dict]:
    """One row per photo size, measured in a fresh single-threaded process."""
    # a spawned child reads them before importing numpy
    return in_child(_bench_stages, dict(megapixels=megapixels, image=image, img_size=img_size,
                                        resize_mode=resize_mode, repeats=repeats), env=SINGLE_THREADED)


def _bench_stages(megapixels: List[float], image: Optional[str], img_size: int, resize_mode: str,
                  repeats: int) -> List[dict]:
    from ..data.synthetic import make_scene

    scene, mask = make_scene(1234, 3, 768)
    source = Image.open(image).convert("RGB") if image else Image.fromarray(scene)
    s = img_size // 4
    soft = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((s, s), Image.BILINEAR))
    logits = ((soft - 0.5) * 20).astype(np.float16)  # smooth, like a trained model's
    rows = []
    with tempfile.TemporaryDirectory(prefix="samadapter-stages-") as tmp:
        for mp in megapixels:
            data = _photo(source, mp)
            src = os.path.join(tmp, f"photo-{mp}.jpg")
            with open(src, "wb") as f:
                f.write(data)
            d = decode_image(data, draft_size=(img_size, resize_mode))
            h, w = d.original_size
            model_input = resize_for_model(d.image, img_size, resize_mode)
            png = encode_png(low_res_mask(logits, (h, w), img_size))
            row = {
                "megapixels": round(h * w / 1e6, 2), "height": h, "width": w,
                "cpu_ms_read": _cpu_ms(lambda: storage.read_bytes(src), repeats),
                "cpu_ms_decode": _cpu_ms(lambda: decode_image(data, draft_size=(img_size, resize_mode)), repeats),
                "cpu_ms_model_input": _cpu_ms(lambda: resize_for_model(d.image, img_size, resize_mode), repeats),
                "cpu_ms_postprocess": _cpu_ms(
                    lambda: encode_png(low_res_mask(logits, (h, w), img_size)), repeats),
                "cpu_ms_write": _cpu_ms(lambda: storage.write_bytes(os.path.join(tmp, "out", "m.png"), png), repeats),
                "encoded_bytes_per_image": len(data),
                "model_input_bytes_per_image": model_input.nbytes,
                "model_output_bytes_per_image": logits.nbytes,
                "mask_png_bytes_per_image": len(png),
            }
            row["cpu_ms_total"] = sum(v for k, v in row.items() if k.startswith("cpu_ms_"))
            rows.append(row)
    return rows
