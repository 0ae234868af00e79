"""Compacting the ledger: a fingerprint's many small files -> a few large files sorted by uri.

Every night adds files (one per flush per run); a year of nights is thousands of footers
for every plan to read. ``compact`` rewrites one fingerprint's files (read, sort by ``uri``,
write: in the driver up to ``IN_PROCESS_ROWS`` rows, tens of MiB; on the cluster with Ray
Data beyond, where a distributed sort pays for its seconds of scheduling) in steps that a crash may stop anywhere without losing
a row or counting one twice:

1. ``written``: the new files go to ``ledger/_compaction/<id>/fingerprint=<fp>/``, which
   readers do not look at (a crash here leaves only ignored files);
2. ``committed``: the manifest (``_compaction/<id>/manifest.json``: the old files and the
   new ones) is written whole. From here on readers (``ledger.visible_files``) use the new
   files, staged or moved, instead of the old ones;
3. ``moved``: each new file is moved to ``fingerprint=<fp>/compacted-<id>-<name>``
   (compacted files are not compacted again: a compaction reads what the nights since the
   last one wrote, not the year behind it);
4. ``deleted``: the old files are deleted; then the manifest and its folder.

``recover`` finishes a committed compaction (steps 3-4) and removes an uncommitted one;
the segment job runs it, under the output's lease, before it plans a night. Compaction runs
under the same lease (``jobs/segment.py --compact-ledger``, or automatically before a night
when a fingerprint has more than ``--compact-above-files`` files): one writer at a time.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from collections import Counter
from typing import Dict, List

from .. import storage
from . import layout, ledger

log = logging.getLogger(__name__)

STEPS = ("written", "committed", "moved", "deleted")


def _after(step: str) -> None:
    """Called after each step (tests replace it to stop a compaction there)."""


def _rel(base: str, path: str) -> str:
    return path[len(base):].lstrip("/")


COMPACTED = "compacted-"  # the name of a file a compaction wrote: not compacted again
# Up to this many rows (~300 bytes each in the driver: ~60 MiB) a compaction sorts in the
# driver with pyarrow; a Ray Data sort of a few thousand rows costs ~10 s of task scheduling.
IN_PROCESS_ROWS = 200_000


def files_by_fingerprint(output: str, only_small: bool = False) -> Dict[str, List[str]]:
    """The readable ledger files of each fingerprint (filesystem paths); with ``only_small``
    those no compaction wrote (a night's flushes)."""
    files = ledger.check_ledger(output, quarantine=False)
    found: Dict[str, List[str]] = {}
    for path in files.paths if files else []:
        fp = next((part.split("=", 1)[1] for part in path.split("/") if part.startswith("fingerprint=")), None)
        if fp is not None and not (only_small and posixpath.basename(path).startswith(COMPACTED)):
            found.setdefault(fp, []).append(path)
    return found


def compact(output: str, fingerprint: str, rows_per_file: int = 2_000_000) -> int:
    """Rewrite ``fingerprint``'s nightly ledger files (not those of earlier compactions:
    each compaction reads only what the nights since the last one wrote, never the whole
    history) into files of at most ``rows_per_file`` rows sorted by uri; returns the number
    of files replaced."""
    import pyarrow.dataset as pads

    old = files_by_fingerprint(output, only_small=True).get(fingerprint, [])
    if len(old) < 2:
        return 0
    ledger_uri = layout.ledger_dir(output)
    fs, base = storage.pyarrow_filesystem(ledger_uri)
    cid = uuid.uuid4().hex[:12]
    staging = storage.join(ledger_uri, layout.COMPACTION, cid, f"fingerprint={fingerprint}")
    _, staging_path = storage.pyarrow_filesystem(staging)
    dataset = pads.dataset(old, filesystem=fs, format="parquet")  # footers read once
    total = dataset.count_rows()
    files = max(1, -(-total // rows_per_file))
    if total <= IN_PROCESS_ROWS:
        _write_sorted_here(dataset, fs, staging_path, files, local=storage.is_local(staging))
    else:
        _write_sorted_on_the_cluster(old, fs, staging_path, files, local=storage.is_local(staging))
    _after("written")
    new = sorted(p for p in storage.list_files(staging) if p.endswith(".parquet"))
    manifest = {
        "id": cid, "fingerprint": fingerprint,
        "old": [_rel(base, p) for p in old],
        "new": [[_rel(base, p), f"fingerprint={fingerprint}/{COMPACTED}{cid}-{posixpath.basename(p)}"] for p in new],
    }
    storage.write_bytes(storage.join(ledger_uri, layout.COMPACTION, cid, layout.COMPACTION_MANIFEST),
                        json.dumps(manifest).encode())
    _after("committed")
    _finish(output, manifest)
    log.info("compacted %d ledger files of fingerprint %s into %d", len(old), fingerprint, len(new))
    return len(old)


def _write_sorted_here(dataset, fs, staging_path: str, files: int, local: bool) -> None:
    import pyarrow.parquet as pq

    table = dataset.to_table(columns=list(ledger.FILE_SCHEMA.names))
    table = table.sort_by("uri")
    if local:
        fs.create_dir(staging_path, recursive=True)
    per_file = -(-table.num_rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * per_file, per_file), f"{staging_path}/part-{i:05d}.parquet", filesystem=fs)


def _write_sorted_on_the_cluster(old: List[str], fs, staging_path: str, files: int, local: bool) -> None:
    import ray.data

    rows = ray.data.read_parquet(old, filesystem=fs).select_columns(list(ledger.FILE_SCHEMA.names))
    # sorted, then cut into `files` blocks in order (no shuffle): one file each
    # (no folder object on S3: an empty "folder/" key would read as a compaction id "")
    rows.sort("uri").repartition(files, shuffle=False).write_parquet(staging_path, filesystem=fs, try_create_dir=local)


def _finish(output: str, manifest: dict) -> None:
    ledger_uri = layout.ledger_dir(output)
    for staged, final in manifest["new"]:
        if storage.exists(storage.join(ledger_uri, staged)):
            storage.move(storage.join(ledger_uri, staged), storage.join(ledger_uri, final))
    _after("moved")
    for rel in manifest["old"]:
        uri = storage.join(ledger_uri, rel)
        if storage.exists(uri):
            storage.remove_tree(uri)
    _after("deleted")
    storage.remove_tree(storage.join(ledger_uri, layout.COMPACTION, manifest["id"]))


def recover(output: str) -> int:
    """Finish every committed compaction and remove every uncommitted one; returns how many
    were found."""
    root = storage.join(layout.ledger_dir(output), layout.COMPACTION)
    if not storage.exists(root):
        return 0
    manifests = {m["id"]: m for m in ledger.compaction_manifests(output)}
    fs, base = storage.pyarrow_filesystem(root)
    ids = {_rel(base, p).split("/", 1)[0] for p in storage.list_files(root)} - {""}  # "": a folder marker
    for cid in sorted(ids, key=lambda c: c not in manifests):  # committed ones first
        if cid in manifests:
            log.warning("finishing an interrupted ledger compaction (%s)", cid)
            _finish(output, manifests[cid])
        else:
            log.warning("removing an uncommitted ledger compaction (%s): its old files still hold every row", cid)
            storage.remove_tree(storage.join(root, cid))
    return len(ids)


def compact_where_needed(output: str, above_files: int) -> Counter:
    """Compact every fingerprint with more than ``above_files`` nightly files (1: every one
    with two or more); returns files replaced per fingerprint."""
    done: Counter = Counter()
    for fp, files in files_by_fingerprint(output, only_small=True).items():
        if len(files) > above_files:
            done[fp] = compact(output, fp)
    return done
