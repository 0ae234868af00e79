"""`jobs/benchmark.py cold-start`: seconds from nothing to a model ready to run, against the
seconds it takes to read the SAM checkpoint file alone.

A checkpoint of the arch's shapes in SAM's key layout is written to a temporary folder
(its values do not matter for timing). Then, in fresh processes taking turns, with the
file in the page cache for all of them:

- ``read``: ``torch.load`` of the file, every tensor read into memory;
- ``build``: ``build_model(arch, sam_checkpoint=file)`` (the base laid out on ``meta``,
  replaying its random draws so that the adapter's seeded init is what a full build gives,
  then given the file's memory-mapped tensors), then every weight touched once (what a
  first forward or a ``.to("cuda")`` pays), as ``read`` touches what it loaded;
- ``full_build``: the way every start worked before: the whole model initialised at random,
  then the file read and copied into it.

Each figure is the median over ``repeats`` turns; the peak RSS is each process's own.
"""

from __future__ import annotations

import os
import tempfile
import time
from statistics import median
from typing import Dict, List, Optional

from .common import _peak_rss_bytes, in_child


def write_shaped_checkpoint(arch: str, path: str, **overrides) -> int:
    """A checkpoint of ``arch``'s shapes (zeros) at ``path`` in SAM's key layout (SAM 2: the
    transformers library's); returns its size in bytes."""
    import torch

    from ..modeling.arch import PROMPT_PREFIX, is_sam2
    from ..modeling.build import arch_config, build_from_config

    with torch.device("meta"):
        model = build_from_config(arch_config(arch, **overrides))
    shapes = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(PROMPT_PREFIX)}
    if is_sam2(arch):  # the library's names for the image encoder
        from ..modeling.sam2_weights import library_key

        shapes = {library_key(k): v for k, v in shapes.items()}
    torch.save({k: torch.zeros(s) for k, s in shapes.items()}, path)
    return os.path.getsize(path)


def _case(kind: str, arch: str, path: str, overrides: dict, threads: int) -> Dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    from ..modeling import build_model
    from ..modeling import weights
    from ..modeling.build import arch_config, build_from_config

    start = time.perf_counter()
    if kind == "read":
        state = torch.load(path, map_location="cpu", weights_only=True)
        sum(float(t.sum()) for t in state.values())  # every tensor read
    else:
        if kind == "build":
            model = build_model(arch, sam_checkpoint=path, **overrides)
        else:
            model = build_from_config(arch_config(arch, **overrides))
            weights.load_sam_checkpoint(model, path)
        sum(float(t.sum()) for t in model.state_dict().values())  # every weight read, as above
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": _peak_rss_bytes() / 2**20}


def bench_cold_start(arch: str, img_size: Optional[int] = None, repeats: int = 3, threads: Optional[int] = None) -> List[dict]:
    overrides = {"img_size": img_size} if img_size else {}
    threads = threads or os.cpu_count() or 1
    kinds = ("read", "build", "full_build")
    with tempfile.TemporaryDirectory(prefix="samadapter-cold-start-") as tmp:
        path = os.path.join(tmp, f"sam_{arch}.pth")
        size = write_shaped_checkpoint(arch, path, **overrides)
        runs: Dict[str, List[dict]] = {k: [] for k in kinds}
        for turn in range(repeats):
            for kind in kinds[turn % 3:] + kinds[:turn % 3]:  # each kind goes first in some turn
                runs[kind].append(in_child(_case, {"kind": kind, "arch": arch, "path": path,
                                                        "overrides": overrides, "threads": threads}))
    row = {"arch": arch, "img_size": img_size, "checkpoint_mib": size / 2**20, "repeats": repeats}
    for kind in kinds:
        row[f"{kind}_seconds"] = median(r["seconds"] for r in runs[kind])
        row[f"{kind}_peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs[kind])
    row["build_vs_read"] = row["build_seconds"] / row["read_seconds"]
    row["full_build_vs_read"] = row["full_build_seconds"] / row["read_seconds"]
    return [row]
