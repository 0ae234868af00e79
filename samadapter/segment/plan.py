"""Planning a night on the cluster: the inputs, minus what the ledger says is done.

``plan_night`` builds the input rows (``listing.py``), materialises them in the object
store (never on the driver) and anti-joins them with the ledger's "done" rows on
``(uri, version)``. Two ways, by the ledger's size (its footers' row counts):

- up to ``BROADCAST_ROWS`` rows, the done keys are read in the driver (tens of MiB at
  most) and sent once to every block of the inputs, which drops its done rows in one map
  stage (a broadcast join: a second of scheduling, where a shuffle costs several);
- beyond, Ray Data's ``join(join_type="left_anti")`` hash-partitions both sides on the
  cluster: the driver never holds the ledger.

What counts as done:

- default: an ``ok`` row from *any* model (a new checkpoint does not turn a nightly into a
  backfill of the bucket's history), a ``skipped``/``unsafe_key`` row, or a permanent
  failure (``ledger.PERMANENT_FAILURES``) of the same object version;
- ``--backfill``: only ``ok`` rows of *this* model count, so inputs segmented by older
  models are redone with it;
- ``--retry-failed``: permanent failures are tried again;
- ``--force``: nothing is done.

``counts`` (``--dry-run``) adds the breakdown with semi-joins: done by this model, done
only by other models (what ``--backfill`` would add), known failures.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, Optional

from .. import storage
from ..data.transforms import OK
from . import layout, ledger
from .keylists import read_key_list
from .listing import dataset_rows, detect_format, expand_archives, list_prefix, to_input_rows

log = logging.getLogger(__name__)

KEYS = ("uri", "version")


@dataclass
class Modes:
    force: bool = False
    backfill: bool = False
    retry_failed: bool = False


def input_rows(input_uri: Optional[str], input_list: Optional[str], input_root: Optional[str], input_format: str,
               split: Optional[str]):
    """(Dataset of input rows, URI prefix every input starts with or None, format)."""
    if input_list:
        if input_list.endswith(".json"):
            root = input_root or _inventory_root(input_list)
        elif not input_root:
            raise ValueError("--input-list needs --input-root (the root that output keys are relative to), "
                             "except for an S3 Inventory manifest.json")
        else:
            root = input_root
        root = layout.normalize_root(root)
        rows = read_key_list(input_list, root).map_batches(to_input_rows, fn_kwargs={"root": root}, batch_format="pyarrow")
        return rows, None, "list"
    uri = str(input_uri).rstrip("/")
    fmt = detect_format(uri, input_format)
    if fmt == "parquet":
        from ..data.reading import read_split

        split = split or "test"
        rows = read_split(uri, split, columns=["image_id", "image"]).map_batches(
            dataset_rows, fn_kwargs={"dataset_uri": uri, "split": split}, batch_format="numpy")
        return rows, layout.dataset_row_uri(uri, split, ""), fmt
    root = layout.normalize_root(input_root or layout.default_input_root(uri))
    base = layout.normalize_root(uri)
    if layout.relative_key(base + "/x", root) is None:
        raise ValueError(f"--input {uri} is not under --input-root {root}")
    rows = list_prefix(uri).map_batches(to_input_rows, fn_kwargs={"root": root}, batch_format="pyarrow")
    if fmt == "tar":
        rows = rows.map_batches(expand_archives, batch_size=1, batch_format="numpy")
    return rows, base + "/", fmt


def _inventory_root(manifest_uri: str) -> str:
    import json

    manifest = json.loads(storage.read_bytes(manifest_uri))
    return f"{storage.scheme(manifest_uri) or 's3'}://{manifest['sourceBucket']}"


def _select(batch, keep):
    import pyarrow.compute as pc

    return batch.filter(keep(batch, pc)).select(list(KEYS))


def _done_filter(fingerprint: str, modes: Modes):
    final = [ledger.SKIPPED, ledger.UNSAFE_KEY] + ([] if modes.retry_failed else list(ledger.DECODE_FAILURES) + [ledger.NAME_TOO_LONG])

    def keep(b, pc):
        ok = pc.equal(b.column("status"), OK)
        if modes.backfill:
            ok = pc.and_(ok, pc.equal(b.column("fingerprint"), fingerprint))
        return pc.or_(ok, pc.is_in(b.column("status"), value_set=_arr(final)))

    return keep


def _arr(values):
    import pyarrow as pa

    return pa.array(values, pa.string())


# Ledgers up to this many rows (~100 bytes a key in the driver and in each map task: ~20 MiB)
# are joined by broadcast; larger ones by Ray Data's hash join.
BROADCAST_ROWS = 200_000
_LEDGER_COLUMNS = ["uri", "version", "status", "fingerprint"]


def ledger_rows(output: str, uri_prefix: Optional[str], keep, files):
    """(uri, version) of the ledger rows that ``keep(batch, pc)`` selects: a pyarrow Table
    read here when the ledger has at most ``BROADCAST_ROWS`` rows, else a Ray Dataset; None
    when there is no ledger. ``files``: ``ledger.check_ledger``'s readable files."""
    if files is None or not files.paths:
        return None
    if files.rows <= BROADCAST_ROWS:
        return _select(ledger.read_ledger_here(output, _LEDGER_COLUMNS, uri_prefix, files), keep)
    ds = ledger.read_ledger(output, _LEDGER_COLUMNS, uri_prefix, files)
    return ds.map_batches(_select, fn_kwargs={"keep": keep}, batch_format="pyarrow")


def _partitions(n: int) -> int:
    return max(2, min(256, math.ceil(n / 250_000)))


def _join_block(batch, done, how: str):
    """One block of inputs joined with the broadcast done keys (pyarrow's hash join)."""
    keys = list(KEYS)
    done = done.cast(batch.select(keys).schema) if done.schema != batch.select(keys).schema else done
    return batch.join(done, keys=keys, join_type=how)


def _join(left, right, how: str, n: int):
    import pyarrow as pa

    if isinstance(right, pa.Table):  # small: sent once with the map function (Ray Data puts it in the object store)
        return left.map_batches(_join_block, fn_kwargs={"done": right, "how": how.replace("_", " ")},
                                batch_format="pyarrow", zero_copy_batch=True)
    return left.join(right, join_type=how, on=KEYS, num_partitions=_partitions(n))


def anti_join(left, right, n: int):
    """``left``'s rows with no match in ``right`` (a Table or a Dataset of keys, or None)."""
    return left if right is None else _join(left, right, "left_anti", n)


def semi_count(left, right, n: int) -> int:
    """How many of ``left``'s rows have a match in ``right``."""
    return 0 if right is None else _join(left, right, "left_semi", n).count()


@dataclass
class NightPlan:
    listed_ds: object  # materialised input rows
    todo_ds: object  # materialised input rows to process tonight
    listed: int
    todo: int
    format: str
    uri_prefix: Optional[str]
    ledger_files: Optional[ledger.LedgerFiles] = None  # None: no ledger yet, or --force (not read)

    @property
    def quarantined(self) -> list:
        return self.ledger_files.quarantined if self.ledger_files else []

    def status_counts(self) -> Dict[str, int]:
        """Input rows by their listing status (pending, sniff, skipped, unsafe_key)."""
        counts: Dict[str, int] = {}
        for r in self.listed_ds.map_batches(_status_counts, batch_format="pyarrow").take_all():
            counts[r["status"]] = counts.get(r["status"], 0) + int(r["count"])
        return counts


def _status_counts(batch):
    import pyarrow as pa

    counts = batch.group_by("status").aggregate([("status", "count")])
    return pa.table({"status": counts.column("status"), "count": counts.column("status_count")})


def plan_night(input_uri, input_list, input_root, input_format, split, output: str, fingerprint: str, modes: Modes,
               dry_run: bool = False) -> NightPlan:
    rows, prefix, fmt = input_rows(input_uri, input_list, input_root, input_format, split)
    listed_ds = rows.materialize()
    listed = listed_ds.count()
    files = None if modes.force else ledger.check_ledger(output, quarantine=not dry_run)
    done = None if files is None else ledger_rows(output, prefix, _done_filter(fingerprint, modes), files)
    todo_ds = anti_join(listed_ds, done, listed).materialize() if listed else listed_ds
    return NightPlan(listed_ds, todo_ds, listed, todo_ds.count(), fmt, prefix, files)


def breakdown(plan: NightPlan, output: str, fingerprint: str) -> Dict[str, int]:
    """The dry run's table: how the listed inputs split up against the ledger."""
    import pyarrow as pa

    def ok_of(fp):
        return lambda b, pc: pc.and_(pc.equal(b.column("status"), OK), pc.equal(b.column("fingerprint"), fp)) if fp else pc.equal(b.column("status"), OK)

    n = plan.listed
    files = plan.ledger_files if plan.ledger_files is not None else ledger.check_ledger(output, quarantine=False)
    ok_this = ledger_rows(output, plan.uri_prefix, ok_of(fingerprint), files)
    ok_any = ledger_rows(output, plan.uri_prefix, ok_of(None), files)
    failed = ledger_rows(output, plan.uri_prefix,
                         lambda b, pc: pc.is_in(b.column("status"), value_set=pa.array(list(ledger.PERMANENT_FAILURES), pa.string())),
                         files)
    done_this = semi_count(plan.listed_ds, ok_this, n)
    done_any = semi_count(plan.listed_ds, ok_any, n)
    not_ok = anti_join(plan.listed_ds, ok_any, n)
    known_failures = semi_count(not_ok, failed, n) if failed is not None else 0
    by_status = plan.status_counts()
    return {
        "listed": n,
        "not images (skipped)": by_status.get(ledger.SKIPPED, 0),
        "unsafe keys": by_status.get(ledger.UNSAFE_KEY, 0),
        "done by this model": done_this,
        "done by other models only (--backfill redoes them)": done_any - done_this,
        "known failures (--retry-failed retries them)": known_failures,
        "unreadable ledger files (a run moves them to ledger/_quarantine/ and redoes their inputs)":
            len(files.quarantined) if files else 0,
        "to do tonight": plan.todo,
    }
