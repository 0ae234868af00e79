"""The ledger: one row per input and model, written by the workers, read on the cluster.

Rows are written as whole Parquet files by a Ray Data stage at the end of the pipeline
(``write_ledger_stage``: one ``PutObject`` or one rename per file, never a half-written
file), under ``ledger/fingerprint=<model fingerprint>/`` (``layout.ledger_part``). The
driver receives only a few counts per file. A killed run loses at most the rows of files
not yet written; their inputs are redone by the next run, and masks are rewritten whole.

The ledger is never read into the driver: ``read_ledger`` returns a Ray Dataset (column
projection, and a range filter on ``uri`` that Parquet statistics turn into skipped files
when a night lists one prefix), which ``plan.py`` anti-joins with the night's inputs.

Statuses, and whether a later night tries the input again (same object version):

==================  =====================================================  ===========
status              meaning                                                retried
==================  =====================================================  ===========
ok                  mask written                                           no (1)
skipped             not an image (sidecar extension, or no extension and   no
                    content that is not an image); not a failure
unsafe_key          the key would escape the output prefix                 no (2)
zero_bytes,         the bytes are not a usable image (decode statuses of   no (2)
not_an_image,       ``data.transforms``)
corrupt, truncated,
too_many_pixels
read_error          the object could not be read                           yes
write_error         an output could not be written                         yes
==================  =====================================================  ===========

(1) ``--backfill``: inputs without an ``ok`` row *of this model* are redone; ``--force``:
everything. (2) ``--retry-failed`` retries them. A new object version (ETag, or size and
mtime) is a new input.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from typing import Dict, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..data.transforms import CORRUPT, NOT_AN_IMAGE, OK, TOO_MANY_PIXELS, TRUNCATED, ZERO_BYTES
from . import layout

log = logging.getLogger(__name__)

SKIPPED = "skipped"
UNSAFE_KEY = "unsafe_key"
READ_ERROR = "read_error"
WRITE_ERROR = "write_error"
DECODE_FAILURES = (ZERO_BYTES, NOT_AN_IMAGE, CORRUPT, TRUNCATED, TOO_MANY_PIXELS)
PERMANENT_FAILURES = DECODE_FAILURES + (UNSAFE_KEY,)
RETRIED_FAILURES = (READ_ERROR, WRITE_ERROR)
FAILURES = PERMANENT_FAILURES + RETRIED_FAILURES
STATUSES = (OK, SKIPPED) + FAILURES

# The columns of a ledger file. ``fingerprint`` is not stored in the file: it is the
# partition folder (``fingerprint=<fp>``) and comes back as a column when read.
FILE_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),  # the input's full URI (tar member: <archive>/<member>)
        ("version", pa.string()),  # ETag, or "<size>-<mtime ns>", of the object listed
        ("output_key", pa.string()),  # masks/<relative key>.png ('' when no mask was written)
        ("status", pa.string()),
        ("reason", pa.string()),
        ("checkpoint", pa.string()),  # the adapter file that made the mask
        ("run_id", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("seconds", pa.float64()),  # decode + share of the model call + postprocess
        ("actor", pa.string()),  # <node id[:8]>:<pid> of the model actor
        ("finished_at", pa.timestamp("ms", tz="UTC")),
    ]
)
ROW_COLUMNS = [f.name for f in FILE_SCHEMA if f.name not in ("checkpoint", "run_id", "finished_at")]


def empty_rows() -> Dict[str, list]:
    """Empty column lists of the pipeline's result rows (filled by ``add_row``)."""
    return {name: [] for name in ROW_COLUMNS}


def add_row(cols: Dict[str, list], *, uri: str, version: str, status: str, reason: str = "", output_key: str = "",
            height: int = 0, width: int = 0, seconds: float = 0.0, actor: str = "") -> None:
    """The one row builder: every ledger row of every input kind goes through here."""
    if status not in STATUSES:
        raise AssertionError(f"unknown ledger status {status!r}")
    cols["uri"].append(uri)
    cols["version"].append(version)
    cols["output_key"].append(output_key)
    cols["status"].append(status)
    cols["reason"].append(reason)
    cols["height"].append(int(height))
    cols["width"].append(int(width))
    cols["seconds"].append(float(seconds))
    cols["actor"].append(actor)


def to_numpy(cols: Dict[str, list]) -> Dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=object if FILE_SCHEMA.field(k).type == pa.string() else None) for k, v in cols.items()}


def write_ledger_stage(batch: pa.Table, output: str, fingerprint: str, checkpoint: str, run_id: str) -> pa.Table:
    """Ray Data stage: one batch of result rows -> one ledger file, written whole.

    Returns one row per status with its count and the time the file was written (the
    driver's progress and summary; nothing per input comes back).
    """
    n = batch.num_rows
    if n == 0:
        return pa.table({"status": pa.array([], pa.string()), "count": pa.array([], pa.int64()), "written_at": pa.array([], pa.float64())})
    now = time.time()
    table = batch.select(ROW_COLUMNS)
    table = table.append_column("checkpoint", pa.array([checkpoint] * n, pa.string()))
    table = table.append_column("run_id", pa.array([run_id] * n, pa.string()))
    table = table.append_column("finished_at", pa.array([int(now * 1000)] * n, pa.timestamp("ms", tz="UTC")))
    table = table.select(FILE_SCHEMA.names).cast(FILE_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(layout.ledger_part(output, fingerprint, run_id, uuid.uuid4().hex[:12]), buf.getvalue())
    counts = table.group_by("status").aggregate([("status", "count")])
    return pa.table({
        "status": counts.column("status"),
        "count": counts.column("status_count").cast(pa.int64()),
        "written_at": pa.array([now] * counts.num_rows, pa.float64()),
    })


def read_ledger(output: str, columns, uri_prefix: Optional[str] = None):
    """The ledger under ``output`` as a Ray Dataset (None when there is none yet).

    ``columns`` may include ``fingerprint`` (the partition folder). ``uri_prefix`` keeps
    rows whose URI starts with it, as a range filter pushed down to the Parquet scan.
    """
    import ray.data
    from ray.data.expressions import col, lit

    uri = layout.ledger_dir(output)
    if not storage.exists(uri):
        return None
    fs, path = storage.pyarrow_filesystem(uri)
    ds = ray.data.read_parquet(path, filesystem=fs).select_columns(list(columns))
    if uri_prefix:
        ds = ds.filter(expr=(col("uri") >= lit(uri_prefix)) & (col("uri") < lit(layout.key_upper_bound(uri_prefix))))
    return ds


def read_ledger_table(output: str, columns=None) -> Optional[pa.Table]:
    """Every ledger row as one table, read here (tests and small outputs only)."""
    uri = layout.ledger_dir(output)
    if not storage.exists(uri):
        return None
    fs, path = storage.pyarrow_filesystem(uri)
    import pyarrow.dataset as pads

    dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive",
                           exclude_invalid_files=False, ignore_prefixes=[".", "_"])
    return dataset.to_table(columns=columns)
