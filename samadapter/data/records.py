"""The dataset layout: one row per sample in Parquet shards under a dataset URI.

::

    <uri>/_dataset.json                 counts per split, schema version, sources, task
    <uri>/<split>/part-00000.parquet    image_id, image, mask, height, width, split, source

``image`` holds the original encoded bytes (never re-encoded); ``mask`` is a
single-channel PNG (0/255); ``height``/``width`` are the upright (EXIF-applied) size.
``_dataset.json`` is written last: a dataset without it is incomplete. Its ``task`` (when the
source says: COD10K camouflage, ISTD/SBU shadow, Kvasir/CVC polyp, synthetic scenes their
kind) is what training and evaluation default to.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATASET_INFO_FILE = "_dataset.json"
DEFAULT_SHARD_MB = 128.0

SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("mask", pa.binary(), nullable=True),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)
COLUMNS = tuple(SCHEMA.names)


class DatasetExistsError(FileExistsError):
    """Writing into a URI that already holds a dataset without ``overwrite``."""


@dataclass
class Sample:
    image_id: str
    image: bytes
    mask: Optional[bytes]
    height: int
    width: int
    split: str
    source: str


def split_uri(dataset_uri: str, split: str) -> str:
    return storage.join(dataset_uri, split)


def read_dataset_info(dataset_uri: str) -> dict:
    """The dataset's ``_dataset.json``; a clear error when it is not a dataset."""
    uri = storage.join(dataset_uri, DATASET_INFO_FILE)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{dataset_uri} is not a complete samadapter dataset (no {DATASET_INFO_FILE}); "
            "create one with jobs/prepare_data.py"
        ) from None
    manifest = json.loads(data)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{dataset_uri}: schema version {manifest.get('schema_version')} is not {SCHEMA_VERSION}; "
            "re-create it with this version's jobs/prepare_data.py"
        )
    return manifest


def dataset_task(dataset_uri: str) -> Optional[str]:
    """The task a dataset was converted for (``_dataset.json``'s ``task``), or None when its
    source did not say (paired folders without ``--task``, datasets written before tasks)."""
    return read_dataset_info(dataset_uri).get("task")


class DatasetWriter:
    """Writes samples as Parquet shards of about ``shard_mb`` MB per split.

    Usage::

        with DatasetWriter(uri, overwrite=False) as w:
            w.add(sample)
        # _dataset.json is written on a clean exit only

    Raises:
        DatasetExistsError: the URI already has files and ``overwrite`` is False.
    """

    def __init__(self, uri: str, *, shard_mb: float = DEFAULT_SHARD_MB, overwrite: bool = False, rows_per_group: int = 64):
        if shard_mb <= 0:
            raise ValueError(f"shard_mb must be positive, got {shard_mb}")
        self.uri = str(uri).rstrip("/")
        self.shard_bytes = int(shard_mb * 1024 * 1024)
        self.rows_per_group = rows_per_group
        existing = storage.list_files(self.uri)
        if existing:
            if not overwrite:
                complete = any(p.endswith(DATASET_INFO_FILE) for p in existing)
                raise DatasetExistsError(
                    f"{self.uri} already holds {'a dataset' if complete else f'{len(existing)} files (an incomplete dataset?)'}; "
                    "pass --overwrite to replace it, or choose another --output"
                )
            log.warning("overwriting %s (%d existing files)", self.uri, len(existing))
            storage.remove_tree(self.uri)
        self.pa_fs, self.root = storage.pyarrow_filesystem(self.uri)
        self.counts: Dict[str, int] = {}
        self.shards: Dict[str, List[str]] = {}
        self.sources: Dict[str, int] = {}
        self._pending: Dict[str, List[Sample]] = {}
        self._pending_bytes: Dict[str, int] = {}
        self._writers: Dict[str, pq.ParquetWriter] = {}
        self._sink: Dict[str, object] = {}
        self._written: Dict[str, int] = {}
        self.extra: dict = {}

    # -------------------------------------------------------------- writing
    def add(self, sample: Sample) -> None:
        split = sample.split
        pending = self._pending.setdefault(split, [])
        pending.append(sample)
        self._pending_bytes[split] = self._pending_bytes.get(split, 0) + len(sample.image) + len(sample.mask or b"")
        self.counts[split] = self.counts.get(split, 0) + 1
        self.sources[sample.source] = self.sources.get(sample.source, 0) + 1
        # A row group ends at rows_per_group rows or where the shard would be full.
        room = self.shard_bytes - self._written.get(split, 0)
        if len(pending) >= self.rows_per_group or self._pending_bytes[split] >= room:
            self._flush(split)

    def _open_shard(self, split: str) -> None:
        index = len(self.shards.setdefault(split, []))
        rel = f"{split}/part-{index:05d}.parquet"
        path = f"{self.root}/{rel}"
        if storage.is_local(self.uri):  # object stores need no folders (and get no marker objects)
            self.pa_fs.create_dir(f"{self.root}/{split}", recursive=True)
        sink = self.pa_fs.open_output_stream(path)
        self._sink[split] = sink
        self._writers[split] = pq.ParquetWriter(sink, SCHEMA, compression="none")
        self._written[split] = 0
        self.shards[split].append(rel)

    def _close_shard(self, split: str) -> None:
        writer = self._writers.pop(split, None)
        if writer is not None:
            writer.close()
            self._sink.pop(split).close()
            self._written[split] = 0

    def _flush(self, split: str) -> None:
        rows = self._pending.get(split) or []
        if not rows:
            return
        if split not in self._writers:
            self._open_shard(split)
        table = pa.Table.from_pylist([r.__dict__ for r in rows], schema=SCHEMA)
        self._writers[split].write_table(table)
        self._written[split] += table.nbytes
        self._pending[split] = []
        self._pending_bytes[split] = 0
        if self._written[split] >= self.shard_bytes:
            self._close_shard(split)

    def close(self) -> dict:
        """Flush, close shards and write ``_dataset.json``; returns the manifest."""
        for split in list(self._pending):
            self._flush(split)
        for split in list(self._writers):
            self._close_shard(split)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "splits": dict(sorted(self.counts.items())),
            "shards": {k: v for k, v in sorted(self.shards.items())},
            "sources": dict(sorted(self.sources.items())),
            "columns": list(COLUMNS),
            **self.extra,
        }
        storage.write_bytes(storage.join(self.uri, DATASET_INFO_FILE), json.dumps(manifest, indent=2).encode())
        return manifest

    def abort(self) -> None:
        for split in list(self._writers):
            try:
                self._close_shard(split)
            except Exception:  # noqa: BLE001 - best effort on the failure path
                pass

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.manifest = self.close()
        else:
            self.abort()
