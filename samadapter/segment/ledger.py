"""The ledger: one row per input and model, written by the workers, read on the cluster.

The pipeline's result rows (~200 bytes an input) stream to the driver, whose
``LedgerWriter`` writes them as whole Parquet files (one ``PutObject`` or one rename per
file, never a half-written file) under ``ledger/fingerprint=<model fingerprint>/``
(``layout.ledger_part``), by rows or by time. A killed run loses at most the rows of the
last ``--ledger-flush-seconds``; their inputs are redone by the next run, and masks are
rewritten whole. One writer per run: nothing in the ledger needs a lock.

A ledger file that cannot be read (truncated, not Parquet) is moved aside to
``ledger/_quarantine/`` by ``check_ledger`` (never deleted), named in one warning line, and
its inputs are simply not done: the night redoes them.

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
unsafe_key          the key would escape the output prefix (or, locally,   no (2)
                    a link out of the input root)
name_too_long       the output's name cannot exist on the target (S3: a    no (2)
                    key over 1,024 bytes; locally: the OS's name limits)
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
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..data.transforms import CORRUPT, NOT_AN_IMAGE, OK, TOO_MANY_PIXELS, TRUNCATED, ZERO_BYTES
from . import layout

log = logging.getLogger(__name__)

SKIPPED = "skipped"
UNSAFE_KEY = "unsafe_key"
NAME_TOO_LONG = "name_too_long"
READ_ERROR = "read_error"
WRITE_ERROR = "write_error"
DECODE_FAILURES = (ZERO_BYTES, NOT_AN_IMAGE, CORRUPT, TRUNCATED, TOO_MANY_PIXELS)
PERMANENT_FAILURES = DECODE_FAILURES + (UNSAFE_KEY, NAME_TOO_LONG)
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


def write_ledger_file(table: pa.Table, output: str, fingerprint: str, checkpoint: str, run_id: str) -> str:
    """Result rows (``ROW_COLUMNS``) -> one ledger file, written whole; returns its URI."""
    n = table.num_rows
    now = time.time()
    table = table.select(ROW_COLUMNS)
    table = table.append_column("checkpoint", pa.array([checkpoint] * n, pa.string()))
    table = table.append_column("run_id", pa.array([run_id] * n, pa.string()))
    table = table.append_column("finished_at", pa.array([int(now * 1000)] * n, pa.timestamp("ms", tz="UTC")))
    table = table.select(FILE_SCHEMA.names).cast(FILE_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    uri = layout.ledger_part(output, fingerprint, run_id, uuid.uuid4().hex[:12])
    storage.write_bytes(uri, buf.getvalue())
    return uri


class LedgerWriter:
    """The night's result rows, as they reach the driver, -> ledger files: one when
    ``rows_per_file`` rows are waiting, or when the oldest waiting row is ``flush_seconds``
    old (a background thread looks every second), and at ``close``. A killed driver loses
    at most ``flush_seconds`` of rows (their inputs are redone by the next run); the
    driver holds at most one file's rows."""

    def __init__(self, output: str, fingerprint: str, checkpoint: str, run_id: str, rows_per_file: int,
                 flush_seconds: float):
        import threading

        self.args = (output, fingerprint, checkpoint, run_id)
        self.rows_per_file, self.flush_seconds = rows_per_file, flush_seconds
        self.pending: list = []
        self.pending_rows = 0
        self.oldest: Optional[float] = None
        self.counts: Counter = Counter()
        self.files = 0
        self.first_file_at: Optional[float] = None
        self.error: Optional[BaseException] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="ledger-flush", daemon=True)
        self._thread.start()

    def add(self, table: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        if table.num_rows == 0:
            return
        with self._lock:
            self.pending.append(table.select(ROW_COLUMNS))
            self.pending_rows += table.num_rows
            self.oldest = self.oldest or time.monotonic()
            for status, n in Counter(table.column("status").to_pylist()).items():
                self.counts[status] += n
            if self.pending_rows >= self.rows_per_file:
                self._flush_locked(whole_files_only=True)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self, whole_files_only: bool = False) -> None:
        """Write the waiting rows; with ``whole_files_only``, only full files (the rest waits)."""
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        keep = table.num_rows % self.rows_per_file if whole_files_only else 0
        for start in range(0, table.num_rows - keep, self.rows_per_file):
            write_ledger_file(table.slice(start, min(self.rows_per_file, table.num_rows - keep - start)), *self.args)
            self.files += 1
        self.first_file_at = self.first_file_at or time.time()
        rest = table.slice(table.num_rows - keep) if keep else None
        self.pending, self.pending_rows = ([rest], keep) if rest is not None else ([], 0)
        self.oldest = self.oldest if rest is not None else None

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, self.flush_seconds)):
            try:
                with self._lock:
                    if self.oldest is not None and time.monotonic() - self.oldest >= self.flush_seconds:
                        self._flush_locked()
            except Exception as exc:  # noqa: BLE001 - surfaced by the next add() or close()
                self.error = exc
                return

    def close(self) -> None:
        """Write what is waiting and stop the flush thread (also on the way out of a failed run)."""
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------ reading
@dataclass
class LedgerFiles:
    """The ledger files a night may read, after the unreadable ones were moved aside."""

    paths: List[str]  # filesystem paths of readable ledger files
    quarantined: List[Tuple[str, int, str]] = field(default_factory=list)  # (moved from, size, error)
    rows: int = 0  # rows in the readable files (from their footers)


def _is_ledger_file(path: str, base: str) -> bool:
    rel = path[len(base):].lstrip("/")
    return rel.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in rel.split("/"))


def _read_footer(fs, path: str) -> Tuple[Optional[str], int]:
    """(why a ledger file cannot be read (its footer and schema) or None, its rows)."""
    try:
        with fs.open_input_file(path) as f:
            footer = pq.ParquetFile(f)
            schema, rows = footer.schema_arrow, footer.metadata.num_rows
    except FileNotFoundError:
        return None, 0  # gone since it was listed (a compaction): not a bad file
    except Exception as exc:  # noqa: BLE001 - whatever makes it unreadable
        return f"{type(exc).__name__}: {exc}", 0
    missing = [c for c in ("uri", "version", "status") if c not in schema.names]
    return (f"not a ledger file: no column {', '.join(missing)}" if missing else None), rows


def check_ledger(output: str, quarantine: bool = True, threads: int = 16) -> Optional[LedgerFiles]:
    """The ledger's files, each footer read (in parallel: two range reads a file), the
    unreadable ones moved to ``ledger/_quarantine/`` (never deleted; with ``quarantine``
    False, as in a dry run, only named) with one warning line each; None when there is no
    ledger yet."""
    from concurrent.futures import ThreadPoolExecutor

    uri = layout.ledger_dir(output)
    if not storage.exists(uri):
        return None
    fs, base = storage.pyarrow_filesystem(uri)
    listed = storage.list_files(uri)
    paths = visible_files([p for p in listed if _is_ledger_file(p, base)], set(listed), base, compaction_manifests(output))
    with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        footers = list(pool.map(lambda p: _read_footer(fs, p), paths))
    good, quarantined, rows = [], [], 0
    for path, (error, n) in zip(paths, footers):
        if error is None:
            good.append(path)
            rows += n
            continue
        src = _uri_of(uri, base, path)
        dst = layout.ledger_quarantine(output, path[len(base):].lstrip("/"))
        size = storage.size(src)
        if quarantine:
            storage.move(src, dst)
        log.warning("ledger file %s (%d bytes) cannot be read (%s): %s %s; its inputs are redone", src, size, error,
                    "moved to" if quarantine else "a run would move it to", dst)
        quarantined.append((src, size, error))
    return LedgerFiles(good, quarantined, rows)


def compaction_manifests(output: str) -> List[dict]:
    """The manifests of compactions that committed and did not finish (``compaction.py``)."""
    import json

    root = storage.join(layout.ledger_dir(output), layout.COMPACTION)
    found = []
    for path in storage.list_files(root):
        if path.endswith("/" + layout.COMPACTION_MANIFEST):
            found.append(json.loads(storage.read_bytes(_uri_of(root, storage.pyarrow_filesystem(root)[1], path))))
    return found


def visible_files(paths: List[str], listed: set, base: str, manifests: List[dict]) -> List[str]:
    """The ledger files a reader uses: a committed compaction's new files (moved into place,
    or still staged) instead of the old files it replaces, whichever of its steps a crash
    stopped it at. Every row is read once."""
    for m in manifests:
        replaced = {f"{base}/{rel}" for rel in m["old"]}
        paths = [p for p in paths if p not in replaced]
        for staged_rel, final_rel in m["new"]:
            final, staged = f"{base}/{final_rel}", f"{base}/{staged_rel}"
            if final not in paths and final not in listed and staged in listed:
                paths.append(staged)
    return paths


def _uri_of(dir_uri: str, base: str, path: str) -> str:
    return storage.join(dir_uri, path[len(base):].lstrip("/"))


def read_ledger(output: str, columns, uri_prefix: Optional[str] = None, files: Optional[LedgerFiles] = None):
    """The ledger under ``output`` as a Ray Dataset (None when there is none yet).

    ``files``: the readable files (``check_ledger``; checked here when not given).
    ``columns`` may include ``fingerprint`` (the partition folder). ``uri_prefix`` keeps
    rows whose URI starts with it, as a range filter pushed down to the Parquet scan.
    """
    import ray.data
    from ray.data.expressions import col, lit

    files = files if files is not None else check_ledger(output)
    if files is None or not files.paths:
        return None
    fs, _ = storage.pyarrow_filesystem(layout.ledger_dir(output))
    ds = ray.data.read_parquet(files.paths, filesystem=fs).select_columns(list(columns))
    if uri_prefix:
        ds = ds.filter(expr=(col("uri") >= lit(uri_prefix)) & (col("uri") < lit(layout.key_upper_bound(uri_prefix))))
    return ds


def read_ledger_here(output: str, columns, uri_prefix: Optional[str] = None,
                     files: Optional[LedgerFiles] = None) -> Optional[pa.Table]:
    """``read_ledger``'s rows as one table read in this process (small ledgers only: a plan
    that broadcasts its done keys, tests)."""
    import pyarrow.dataset as pads

    files = files if files is not None else check_ledger(output, quarantine=False)
    if files is None or not files.paths:
        return None
    fs, base = storage.pyarrow_filesystem(layout.ledger_dir(output))
    dataset = pads.dataset(files.paths, filesystem=fs, format="parquet", partition_base_dir=base,
                           partitioning=pads.HivePartitioning.discover(infer_dictionary=False))
    where = None
    if uri_prefix:
        uri = pads.field("uri")
        where = (uri >= uri_prefix) & (uri < layout.key_upper_bound(uri_prefix))
    return dataset.to_table(columns=list(columns) if columns else None, filter=where)


def read_ledger_table(output: str, columns=None) -> Optional[pa.Table]:
    """Every ledger row as one table, read here (tests and small outputs only), from the
    files a night would read."""
    return read_ledger_here(output, columns)
