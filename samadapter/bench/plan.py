"""`jobs/benchmark.py plan`: the driver's cost of planning a night, by the number of keys.

For each size N, a fresh process (its own peak RSS) generates a key list of N URIs
(Parquet) and a ledger of N rows (half of them tonight's keys, half an older night's),
starts a local Ray (or joins the one ``RAY_ADDRESS`` names), and runs the segment job's
``--dry-run`` on them (listing, the anti-join that gives tonight's work, and the dry run's
semi-joins), through ``run_segmentation``. Reported: keys, seconds, driver peak RSS (MiB).

With ``history_nights`` (``--history-nights 365``) the ledger is a year of nights instead:
its rows spread over ``history_nights x files_per_night`` files, as a year of flushes of
one fingerprint leaves them; the plan is timed before and after ``--compact-ledger``.
Reported: history_nights, ledger_files, seconds, driver_peak_rss_mib, compacted.
"""

from __future__ import annotations

import os
import tempfile
from typing import Dict, List

import pyarrow as pa
import pyarrow.parquet as pq

from .common import program

ROWS_PER_FILE = 250_000


def _uris(start: int, stop: int, day: str, older_from: int = -1) -> pa.Array:
    """Key URIs ``start..stop`` of night ``day`` (keys from ``older_from`` on: of an older night)."""
    return pa.array([f"/bench/images/{'d1' if 0 <= older_from <= k else day}/cam{k % 97:02d}/img{k:08d}.jpg"
                     for k in range(start, stop)], pa.string())


def make_inputs(folder: str, keys: int, fingerprint: str = "0123456789abcdef", ledger_files: int = 0) -> Dict[str, str]:
    """A key list of ``keys`` URIs and a ledger of as many rows (half overlapping), in
    ``ledger_files`` files (default: one per ``ROWS_PER_FILE`` rows)."""
    from ..segment import layout
    from ..segment.ledger import FILE_SCHEMA

    key_dir = os.path.join(folder, "keys")
    os.makedirs(key_dir, exist_ok=True)
    for p, start in enumerate(range(0, keys, ROWS_PER_FILE)):
        stop = min(keys, start + ROWS_PER_FILE)
        pq.write_table(pa.table({"uri": _uris(start, stop, "d2")}), os.path.join(key_dir, f"part-{p:05d}.parquet"))
    out = os.path.join(folder, "out")
    ledger_dir = os.path.join(layout.ledger_dir(out), f"fingerprint={fingerprint}")
    os.makedirs(ledger_dir, exist_ok=True)
    half = keys // 2
    per_file = -(-keys // ledger_files) if ledger_files else ROWS_PER_FILE
    for p, start in enumerate(range(0, keys, per_file)):
        stop = min(keys, start + per_file)
        n = stop - start
        # rows [0, half): tonight's first half of keys, done; rows [half, keys): an older night
        uris = _uris(start, stop, "d2", older_from=half)
        cols = {f.name: pa.nulls(n, f.type) for f in FILE_SCHEMA}
        cols.update(uri=uris, version=pa.array([""] * n), status=pa.array(["ok"] * n), run_id=pa.array(["bench"] * n))
        pq.write_table(pa.table(cols, schema=FILE_SCHEMA), os.path.join(ledger_dir, f"run-bench-{p:05d}.parquet"))
    return {"key_list": key_dir, "output": out}


_CHILD = """
import json, os, resource, sys, time
args = json.loads(sys.argv[1])
import ray
if os.environ.get("RAY_ADDRESS"):  # a running cluster's (the driver's cost is the same)
    ray.init(log_to_driver=False)
else:
    ray.init(num_cpus=args["cpus"], include_dashboard=False, log_to_driver=False)
from samadapter.segment.run import SegmentConfig, run_segmentation
t0 = time.perf_counter()
s = run_segmentation(SegmentConfig(input_list=args["key_list"], input_root="/bench", output=args["output"],
                                   checkpoint=args["adapter"], dry_run=True), progress=False)
seconds = time.perf_counter() - t0
print("PLAN " + json.dumps({"keys": args["keys"], "seconds": seconds, "plan": s.plan,
                            "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _ledger_file_count(output: str) -> int:
    from ..segment import compaction

    return sum(len(files) for files in compaction.files_by_fingerprint(output).values())


def bench_history(keys: int, nights: int, files_per_night: int = 8, cpus: int = 2) -> List[dict]:
    """The plan of a night over a year of ledger files, before and after compaction."""
    from ..modeling import build_model
    from ..checkpoints import ADAPTER_FILE

    rows = []
    with tempfile.TemporaryDirectory(prefix="samadapter-plan-") as tmp:
        adapter = os.path.join(tmp, ADAPTER_FILE)
        build_model("tiny", img_size=64).save_adapter(adapter)
        paths = make_inputs(os.path.join(tmp, "history"), keys, ledger_files=nights * files_per_night)
        args = dict(paths, keys=keys, adapter=adapter, cpus=cpus)
        for compacted in (False, True):
            if compacted:  # what --compact-ledger does (no Ray in it)
                from ..segment.run import compact_ledger

                compact_ledger(paths["output"])
            files = _ledger_file_count(paths["output"])
            rows.append({"history_nights": nights, "ledger_files": files, "compacted": compacted, **_plan(args)})
    return rows


def _plan(args: dict) -> dict:
    """The dry run in a fresh process: seconds, driver peak RSS, to do and done."""
    row = program(_CHILD, args, "PLAN")
    plan = row.pop("plan")
    row["to_do"] = plan["to do tonight"]
    row["done"] = plan["done by this model"] + plan["done by other models only (--backfill redoes them)"]
    return row


def bench_plan(sizes: List[int], cpus: int = 2) -> List[dict]:
    from ..modeling import build_model
    from ..checkpoints import ADAPTER_FILE

    rows = []
    with tempfile.TemporaryDirectory(prefix="samadapter-plan-") as tmp:
        adapter = os.path.join(tmp, ADAPTER_FILE)
        build_model("tiny", img_size=64).save_adapter(adapter)
        for n in sizes:
            folder = os.path.join(tmp, f"n{n}")
            paths = make_inputs(folder, n)
            rows.append(_plan(dict(paths, keys=n, adapter=adapter, cpus=cpus)))
    return rows
