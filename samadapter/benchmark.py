"""Benchmarks behind the README's Performance section (``jobs/benchmark.py``).

Every figure is the median of ``repeats`` timed runs after ``warmup`` untimed ones.
Peak memory is measured in a fresh subprocess per configuration: on GPU
``torch.cuda.max_memory_allocated``, on CPU the growth of the process's peak resident
set over the model's own footprint (``ru_maxrss`` minus the resident size after
building the model), so that configurations do not see each other's peaks.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

# Dense peak throughput (TFLOP/s) by device name fragment and dtype, from vendor datasheets.
DEVICE_PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp32": 30.3},
    "A10G": {"bf16": 70.0, "fp32": 35.0},
}


# --------------------------------------------------------------------- machine
def describe_machine() -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def device_peak_tflops(dtype: str) -> Optional[float]:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, peaks in DEVICE_PEAK_TFLOPS.items():
        if key in name:
            return peaks.get(dtype)
    return None


# --------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Dict[str, float]:
    """Median / min / max seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats, "times_s": times}


def time_with_peak_memory(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Dict[str, float]:
    """:func:`time_median` plus ``peak_mem_gib``: on GPU the peak allocated memory, on CPU the
    growth of the process's peak resident set over its size before the first run (in a
    fresh process per configuration, so that configurations do not see each other's peaks)."""
    base = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time_median(fn, device, warmup, repeats)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else max(0, _peak_rss_bytes() - base)
    return {**t, "peak_mem_gib": peak / 2**30}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _run_isolated(target: Callable[..., dict], kwargs: dict) -> dict:
    """Run ``target(**kwargs)`` in a fresh spawned process (clean peak-memory counters)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(target, kwds=kwargs)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------ model mode
def _model_case(arch: str, img_size: int, batch: int, attention: str, dtype: str, warmup: int, repeats: int, threads: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from .modeling import build_model

    torch.set_num_threads(threads)
    device = _device()
    model = build_model(arch, img_size=img_size, attention=attention).eval().to(device)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    bf16 = dtype == "bf16"

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x)

    # FLOPs of the model's math, counted on segment_anything's explicit attention so that
    # both attention paths are credited with the same work.
    from .modeling import set_attention

    set_attention(model, "original")
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    set_attention(model, attention)
    t = time_with_peak_memory(step, device, warmup, repeats)
    ips = batch / t["median_s"]
    tflops = flops / t["median_s"] / 1e12
    peak_dev = device_peak_tflops(dtype)
    return {
        "mode": "model", "arch": arch, "img_size": img_size, "batch": batch, "attention": attention, "dtype": dtype,
        "device": device.type, **t, "images_per_s": ips, "gflop_per_image": flops / batch / 1e9,
        "tflops": tflops, "fraction_of_peak": (tflops / peak_dev) if peak_dev else None,
    }


def bench_model(arch: str, img_size: int, batches: List[int], attentions: List[str], dtypes: List[str],
                warmup: int = 2, repeats: int = 5) -> List[dict]:
    threads = torch.get_num_threads()
    rows = []
    for dtype in dtypes:
        if dtype == "bf16" and not torch.cuda.is_available():
            continue  # bf16 figures only where they mean something (GPU)
        for batch in batches:
            for attention in attentions:
                rows.append(_run_isolated(_model_case, dict(arch=arch, img_size=img_size, batch=batch, attention=attention,
                                                            dtype=dtype, warmup=warmup, repeats=repeats, threads=threads)))
    return rows


# -------------------------------------------------------------- train-step mode
def _train_case(arch: str, img_size: int, batch: int, checkpointing: bool, attention: str, warmup: int, repeats: int, threads: int) -> dict:
    from .modeling import build_model
    from .train.losses import segmentation_loss

    torch.set_num_threads(threads)
    device = _device()
    model = build_model(arch, img_size=img_size, attention=attention).train().to(device)
    model.image_encoder.checkpoint_blocks = checkpointing
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = (torch.rand(batch, 1, img_size, img_size, device=device) > 0.5).float()
    bf16 = device.type == "cuda"

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        segmentation_loss(logits, y).backward()

    t = time_with_peak_memory(step, device, warmup, repeats)
    return {"mode": "train-step", "arch": arch, "img_size": img_size, "batch": batch, "checkpointing": checkpointing,
            "attention": attention, "device": device.type, **t}


def bench_train_step(arch: str, img_size: int, batch: int, attention: str = "auto", warmup: int = 1, repeats: int = 3) -> List[dict]:
    threads = torch.get_num_threads()
    rows = [
        _run_isolated(_train_case, dict(arch=arch, img_size=img_size, batch=batch, checkpointing=ckpt, attention=attention,
                                        warmup=warmup, repeats=repeats, threads=threads))
        for ckpt in (False, True)
    ]
    rows[1]["memory_vs_plain"] = rows[1]["peak_mem_gib"] / rows[0]["peak_mem_gib"] if rows[0]["peak_mem_gib"] else None
    return rows


# ---------------------------------------------------------------- pipeline mode
def _make_images(folder: str, count: int, size: int) -> None:
    from PIL import Image

    from .data.synthetic import make_scene

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
    from .modeling import build_from_adapter
    from .segment.model import infer_logits
    from .segment.run import SegmentConfig
    from .segment.stages import decode_stage, postprocess_stage, read_stage

    device = _device()
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
from samadapter.benchmark import bare_loop
loop_s = bare_loop(**json.loads(sys.argv[1]))
print("BARE " + json.dumps({"total_s": time.perf_counter() - t0, "loop_s": loop_s, "started_at": started_at}))
"""


def bare_loop_process(folder: str, output: str, adapter: str, batch_size: int, attention: str = "auto", threads: int = 1) -> Dict[str, float]:
    """Run :func:`bare_loop` in a fresh Python process. Returns ``total_s`` (imports, model
    load and loop: what the program costs from start to finish), ``loop_s`` (the loop
    alone, model already loaded) and ``started_at`` (its wall clock at the start)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    kwargs = dict(folder=folder, output=output, adapter=adapter, batch_size=batch_size, attention=attention, threads=threads)
    r = subprocess.run([sys.executable, "-c", _BARE_PROGRAM, json.dumps(kwargs)], capture_output=True, text=True, env=env)
    lines = [line for line in r.stdout.splitlines() if line.startswith("BARE ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"bare loop failed (exit {r.returncode}): {r.stderr[-2000:]}")
    return json.loads(lines[-1][5:])


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
    from .segment import layout

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

    from .modeling import build_model
    from .segment.run import SegmentConfig, run_segmentation
    from .checkpoints import ADAPTER_FILE

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
        "batch": batch_size, "max_actors": max_actors, "device": _device().type, "model_threads": threads, "turns": repeats,
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
