"""What every benchmark shares: the machine's description, timing (medians after warm-up),
peak memory, and the child-process runner.

Every figure is the median of ``repeats`` timed runs after ``warmup`` untimed ones.
Peak memory is measured in a fresh process per configuration: on GPU
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
import time
from typing import Callable, Dict, Optional

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


def current_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- child processes
def in_child(target: Callable[..., dict], kwargs: dict, env: Optional[Dict[str, str]] = None) -> dict:
    """``target(**kwargs)`` in a fresh spawned process (its own peak-memory counters, its
    own thread pools); ``env``: variables the child starts with (read before its imports)."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with mp.get_context("spawn").Pool(1) as pool:
            return pool.apply(target, kwds=kwargs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def program(code: str, args: dict, tag: str) -> dict:
    """Run ``code`` as a program in a fresh interpreter (timed from before its imports, as a
    job's process is) with ``args`` as JSON in ``sys.argv[1]``; returns the JSON it printed
    on its last line starting with ``tag``."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env)
    lines = [line for line in r.stdout.splitlines() if line.startswith(tag + " ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark program failed ({tag}, exit {r.returncode}): {r.stderr[-3000:]}")
    return json.loads(lines[-1][len(tag) + 1:])
