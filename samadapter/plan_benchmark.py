"""`jobs/benchmark.py plan`: the driver's cost of planning a night, by the number of keys.

For each size N, a fresh process (its own peak RSS) generates a key list of N URIs
(Parquet) and a ledger of N rows (half of them tonight's keys, half an older night's),
starts a local Ray, and runs the segment job's ``--dry-run`` on them (listing, the
anti-join that gives tonight's work, and the dry run's semi-joins), through
``run_segmentation``. Reported: keys, seconds, driver peak RSS (MiB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List

import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_FILE = 250_000


def _uris(start: int, stop: int, day: str, older_from: int = -1) -> pa.Array:
    """Key URIs ``start..stop`` of night ``day`` (keys from ``older_from`` on: of an older night)."""
    return pa.array([f"/bench/images/{'d1' if 0 <= older_from <= k else day}/cam{k % 97:02d}/img{k:08d}.jpg"
                     for k in range(start, stop)], pa.string())


def make_inputs(folder: str, keys: int, fingerprint: str = "0123456789abcdef") -> Dict[str, str]:
    """A key list of ``keys`` URIs and a ledger of as many rows (half overlapping)."""
    from .segment import layout
    from .segment.ledger import FILE_SCHEMA

    key_dir = os.path.join(folder, "keys")
    os.makedirs(key_dir, exist_ok=True)
    for p, start in enumerate(range(0, keys, ROWS_PER_FILE)):
        stop = min(keys, start + ROWS_PER_FILE)
        pq.write_table(pa.table({"uri": _uris(start, stop, "d2")}), os.path.join(key_dir, f"part-{p:05d}.parquet"))
    out = os.path.join(folder, "out")
    ledger_dir = os.path.join(layout.ledger_dir(out), f"fingerprint={fingerprint}")
    os.makedirs(ledger_dir, exist_ok=True)
    half = keys // 2
    for p, start in enumerate(range(0, keys, ROWS_PER_FILE)):
        stop = min(keys, start + ROWS_PER_FILE)
        n = stop - start
        # rows [0, half): tonight's first half of keys, done; rows [half, keys): an older night
        uris = _uris(start, stop, "d2", older_from=half)
        cols = {f.name: pa.nulls(n, f.type) for f in FILE_SCHEMA}
        cols.update(uri=uris, version=pa.array([""] * n), status=pa.array(["ok"] * n), run_id=pa.array(["bench"] * n))
        pq.write_table(pa.table(cols, schema=FILE_SCHEMA), os.path.join(ledger_dir, f"run-bench-{p:05d}.parquet"))
    return {"key_list": key_dir, "output": out}


_CHILD = """
import json, resource, sys, time
args = json.loads(sys.argv[1])
import ray
ray.init(num_cpus=args["cpus"], include_dashboard=False, log_to_driver=False)
from samadapter.segment.run import SegmentConfig, run_segmentation
t0 = time.perf_counter()
s = run_segmentation(SegmentConfig(input_list=args["key_list"], input_root="/bench", output=args["output"],
                                   checkpoint=args["adapter"], dry_run=True), progress=False)
seconds = time.perf_counter() - t0
print("PLAN " + json.dumps({"keys": args["keys"], "seconds": seconds, "plan": s.plan,
                            "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_plan(sizes: List[int], cpus: int = 2) -> List[dict]:
    from .modeling import build_model
    from .train.runs import ADAPTER_FILE

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    rows = []
    with tempfile.TemporaryDirectory(prefix="samadapter-plan-") as tmp:
        adapter = os.path.join(tmp, ADAPTER_FILE)
        build_model("tiny", img_size=64).save_adapter(adapter)
        for n in sizes:
            folder = os.path.join(tmp, f"n{n}")
            paths = make_inputs(folder, n)
            args = dict(paths, keys=n, adapter=adapter, cpus=cpus)
            r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True, env=env)
            lines = [line for line in r.stdout.splitlines() if line.startswith("PLAN ")]
            if r.returncode != 0 or not lines:
                raise RuntimeError(f"plan benchmark failed at {n} keys (exit {r.returncode}): {r.stderr[-3000:]}")
            row = json.loads(lines[-1][5:])
            plan = row.pop("plan")
            row["to_do"] = plan["to do tonight"]
            row["done"] = plan["done by this model"] + plan["done by other models only (--backfill redoes them)"]
            rows.append(row)
    return rows
