"""`jobs/benchmark.py pipeline`: the segment job's images/s over a local image set divided by
that of a bare single-process loop doing the same work with the job's stage functions."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Dict

import numpy as np
import torch

from .common import current_device, program


def _make_images(folder: str, count: int, size: int) -> None:
    from PIL import Image

    from ..data.synthetic import make_scene

    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image, _ = make_scene(1234, i, size)
        Image.fromarray(image).save(os.path.join(folder, f"img_{i:05d}.jpg"), quality=92)


def bare_loop(folder: str, output: str, adapter: str, batch_size: int, attention: str = "auto", threads: int = 1) -> float:
    """Seconds for one process to do what the segment job does, with the job's own stage
    functions and defaults but no Ray: read, decode, resize, model, resize back,
    threshold, PNG-encode and write every image.

    ``threads``: torch threads, the same as a model actor gets (Ray gives an actor of
    ``num_cpus=n`` n threads), so the ratio measures the pipeline, not thread counts.
    """
    torch.set_num_threads(threads)
    from ..modeling import build_from_adapter
    from ..segment.model import infer_logits
    from ..segment.run import SegmentConfig
    from ..segment.stages import decode_stage, postprocess_stage, read_stage

    device = current_device()
    model = build_from_adapter(adapter, None, attention).to(device)
    names = sorted(os.listdir(folder))
    t0 = time.perf_counter()
    for start in range(0, len(names), batch_size):
        keys = names[start : start + batch_size]
        n = len(keys)
        batch = read_stage({
            "uri": np.asarray([os.path.join(folder, k) for k in keys], dtype=object), "rel": np.asarray(keys, dtype=object),
            "version": np.asarray([""] * n, dtype=object), "offset": np.full(n, -1, np.int64), "length": np.full(n, -1, np.int64),
            "status": np.asarray(["pending"] * n, dtype=object), "reason": np.asarray([""] * n, dtype=object)})
        batch = decode_stage(batch, img_size=model.img_size, resize_mode=SegmentConfig.resize_mode,
                             max_pixels=SegmentConfig.max_pixels, keep_bytes=False)
        batch["logits"] = infer_logits(model, model.low_res_logits, batch.pop("image"), device, bf16=device.type == "cuda")
        batch["actor"] = np.asarray([""] * n, dtype=object)
        postprocess_stage(batch, output=output, threshold=SegmentConfig.threshold,
                          resize_mode=SegmentConfig.resize_mode, save_probs=False, overlays=False,
                          img_size=model.img_size)
    return time.perf_counter() - t0


# The bare loop as its own program: a fresh interpreter, timed from before ``import torch``
# (so imports and model loading count, as they do for the job's actors) to the last write.
_BARE_PROGRAM = """
import json, sys, time
t0, started_at = time.perf_counter(), time.time()
from samadapter.bench.pipeline import bare_loop
loop_s = bare_loop(**json.loads(sys.argv[1]))
print("BARE " + json.dumps({"total_s": time.perf_counter() - t0, "loop_s": loop_s, "started_at": started_at}))
"""


def bare_loop_process(folder: str, output: str, adapter: str, batch_size: int, attention: str = "auto", threads: int = 1) -> Dict[str, float]:
    """Run :func:`bare_loop` in a fresh Python process. Returns ``total_s`` (imports, model
    load and loop: what the program costs from start to finish), ``loop_s`` (the loop
    alone, model already loaded) and ``started_at`` (its wall clock at the start)."""
    kwargs = dict(folder=folder, output=output, adapter=adapter, batch_size=batch_size, attention=attention, threads=threads)
    return program(_BARE_PROGRAM, kwargs, "BARE")


def mask_times(output: str, started_at: float) -> Dict[str, float]:
    """When a run's masks were written, from their files' modification times (the same
    measure for the loop and the job):

    - ``first_mask_s``: seconds after ``started_at`` until the first mask (start-up; for
      the job also its planning and its first block of rows through every stage);
    - ``masks_per_s``: the slope of masks written against time (least squares over every
      mask): the run's rate once it is up. The job writes its masks in bursts of a block
      (a block goes through the model whole), so a rate from the first mask, or from any
      one mask, to the last depends on where that mask falls in its burst; the slope of
      the staircase does not.
    """
    from ..segment import layout

    times = np.sort(np.array([os.stat(os.path.join(root, name)).st_mtime
                              for root, _, files in os.walk(os.path.join(output, layout.MASKS))
                              for name in files if name.endswith(".png")], dtype=np.float64))
    if not len(times):
        raise RuntimeError(f"no masks under {output}")
    rate = float(np.polyfit(times - times[0], np.arange(len(times)), 1)[0]) if times[-1] > times[0] else 0.0
    return {"first_mask_s": float(times[0] - started_at), "masks_per_s": rate}


def bench_pipeline(arch: str, img_size: int, images: int, scene_size: int, batch_size: int,
                   warmup: int = 1, repeats: int = 3, max_actors: int = 1) -> dict:
    """Segment job images/s over a local image set divided by the bare loop's.

    Loop and job take turns (loop, job, loop, job, ...; the first ``warmup`` turns are not
    counted), so that a machine that slows down or speeds up over minutes (a shared VM
    does) weighs on both alike. Figures are medians over the counted turns:

    - ``ratio``: both from start to finish. The loop runs as its own program (imports and
      model load included); the job runs on an already started Ray (as on a cluster),
      planning, its actors' process start, imports and model load included.
      ``ratio_each``: every turn's.
    - ``ratio_vs_warm_loop``: the job end to end against the loop alone, whose model is
      already loaded: charges the job for start-up work the loop is excused from.
    - where the time goes, from the masks' file times (:func:`mask_times`), the same
      measure for both: ``bare_first_mask_s`` / ``pipeline_first_mask_s`` (start-up until
      the first mask; the job's includes ``pipeline_planning_s``) and ``bare_masks_per_s``
      / ``pipeline_masks_per_s`` (slope of masks against time); ``steady_ratio`` is
      the job's rate over the loop's once both are up.
    """
    import ray

    from ..modeling import build_model
    from ..segment.run import SegmentConfig, run_segmentation
    from ..checkpoints import ADAPTER_FILE

    with tempfile.TemporaryDirectory(prefix="samadapter-bench-") as tmp:
        folder = os.path.join(tmp, "images")
        _make_images(folder, images, scene_size)
        adapter = os.path.join(tmp, ADAPTER_FILE)
        build_model(arch, img_size=img_size).save_adapter(adapter)

        threads = int(SegmentConfig.cpus_per_actor)
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        bare, piped = [], []
        for i in range(warmup + repeats):
            out = os.path.join(tmp, f"bare{i}")
            b = bare_loop_process(folder, out, adapter, batch_size, threads=threads)
            bare.append({**b, **mask_times(out, b["started_at"])})
            out = os.path.join(tmp, f"out{i}")
            cfg = SegmentConfig(input=folder, output=out, checkpoint=adapter, ledger_rows_per_file=64,
                                batch_size=batch_size, max_actors=max_actors)
            summary = run_segmentation(cfg, progress=False)
            if summary.ok != images:
                raise RuntimeError(f"pipeline segmented {summary.ok} of {images} images")
            piped.append({"total_s": summary.seconds, "planning_s": summary.planning_s, **mask_times(out, summary.started_at)})
        bare, piped = bare[warmup:], piped[warmup:]

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    bare_ips, warm_ips, pipe_ips = images / med(bare, "total_s"), images / med(bare, "loop_s"), images / med(piped, "total_s")
    each = [b["total_s"] / p["total_s"] for b, p in zip(bare, piped)]
    return {
        "mode": "pipeline", "arch": arch, "img_size": img_size, "images": images, "scene_size": scene_size,
        "batch": batch_size, "max_actors": max_actors, "device": current_device().type, "model_threads": threads, "turns": repeats,
        "bare_images_per_s": bare_ips, "pipeline_images_per_s": pipe_ips, "ratio": pipe_ips / bare_ips,
        "ratio_min": min(each), "ratio_max": max(each),
        "bare_startup_s": med(bare, "total_s") - med(bare, "loop_s"), "warm_loop_images_per_s": warm_ips,
        "ratio_vs_warm_loop": pipe_ips / warm_ips,
        "bare_first_mask_s": med(bare, "first_mask_s"), "pipeline_planning_s": med(piped, "planning_s"),
        "pipeline_first_mask_s": med(piped, "first_mask_s"),
        "bare_masks_per_s": med(bare, "masks_per_s"), "pipeline_masks_per_s": med(piped, "masks_per_s"),
        "steady_ratio": med(piped, "masks_per_s") / med(bare, "masks_per_s"),
        # each turn: the spread the medians hide
        "ratio_each": each, "bare_s": [b["total_s"] for b in bare], "bare_loop_s": [b["loop_s"] for b in bare],
        "pipeline_s": [p["total_s"] for p in piped],
        "bare_first_mask_each_s": [b["first_mask_s"] for b in bare], "pipeline_first_mask_each_s": [p["first_mask_s"] for p in piped],
    }
