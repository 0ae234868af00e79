"""A night's inputs as a Ray Dataset: listed by parallel tasks, or read from a key list.

Nothing here brings the list of keys to the driver; the driver sees at most the data
files named by a key list or an inventory manifest. The per-key Python work (relative keys,
classification, key-list normalisation, and ``fs.find`` for stores other than S3 and local
folders) runs in Ray tasks, one block of at most ``LIST_BLOCK_ROWS`` keys at a time.

Every source ends in the same *input rows* (``INPUT_COLUMNS``):

- ``uri``: the input's full URI (a ``.tar`` member: ``<archive URI>/<member>``),
- ``rel``: its key relative to the input root (outputs mirror it, ``layout.py``),
- ``version``: the object's ETag, or ``<size>-<mtime ns>`` (a tar member: its archive's),
- ``offset``, ``length``: the byte range to read (``-1``: the whole object),
- ``status``: ``pending`` (an image by its extension), ``sniff`` (no extension: decoded if
  its content is an image, else ``skipped``), or already final: ``skipped`` (a sidecar
  such as ``.json``/``.txt``/``.xml``, a hidden file), ``unsafe_key``,
- ``reason``: why, for final statuses.

Sources:

- a prefix (``list_prefix``): the prefix is listed one level deep by one Ray task (its
  direct files and its sub-prefixes stay in the object store as two tables),
  then each sub-prefix is listed recursively by its own task with the store's paginated
  listing (S3 ``ListObjectsV2``, 1,000 keys a request; ``os.scandir`` locally, where a
  symbolic link is followed only inside the input folder), yielding blocks of
  ``LIST_BLOCK_ROWS`` keys;
- a key list (``keylists.read_key_list``): Parquet or CSV files with a ``uri`` column (or ``key``,
  relative to ``--input-root``) and optionally ``version``/``etag`` and ``size``;
- an S3 Inventory report (``keylists.read_key_list`` on its ``manifest.json``): the CSV (gzip) or
  Parquet data files it names, using the fields ``Bucket``, ``Key`` (URL-encoded in CSV),
  ``Size``, ``ETag`` (the version; ``LastModifiedDate`` with the size when ETag is not in
  the report), and ``IsLatest``/``IsDeleteMarker`` when present (only current versions);
- ``.tar`` archives (``expand_archives``): one row per image member, with its byte range;
- a Parquet dataset of ``jobs/prepare_data.py`` (``dataset_rows``): the image bytes travel
  in a ``data`` column.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tarfile
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import pyarrow as pa

from .. import storage
from ..data.sources import IMAGE_EXTENSIONS
from . import layout
from .ledger import SKIPPED, UNSAFE_KEY

log = logging.getLogger(__name__)

PENDING = "pending"
SNIFF = "sniff"
INPUT_COLUMNS = ("uri", "rel", "version", "offset", "length", "status", "reason")
LIST_BLOCK_ROWS = 20_000
INPUT_FORMATS = ("auto", "images", "tar", "parquet")


# ------------------------------------------------------------------ classification
def unsafe_key_reason(key: str) -> Optional[str]:
    """Why a relative key may not be used to build an output path (None when it is safe)."""
    if not key:
        return "empty key"
    if key.startswith("/") or key.startswith("\\") or (len(key) > 1 and key[1] == ":"):
        return "absolute path"
    parts = key.replace("\\", "/").split("/")
    if any(p == ".." for p in parts):
        return "'..' in the key would escape the output prefix"
    if any(p == "" for p in parts):
        return "empty path segment (absolute member path or '//')"
    if any(ord(c) < 32 for c in key):
        return "control character in the key"
    return None


def is_image_key(key: str) -> bool:
    return layout.split_extension(key) in IMAGE_EXTENSIONS and not posixpath.basename(key).startswith(".")


def classify(rel: Optional[str]) -> Tuple[str, str]:
    """(status, reason) of an input from its relative key alone."""
    if rel is None:
        return UNSAFE_KEY, "not under the input root (--input-root)"
    why = unsafe_key_reason(rel)
    if why:
        return UNSAFE_KEY, why
    if posixpath.basename(rel).startswith("."):
        return SKIPPED, "hidden file"
    ext = layout.split_extension(rel)
    if ext in IMAGE_EXTENSIONS:
        return PENDING, ""
    if ext == "":
        return SNIFF, ""
    return SKIPPED, f"not an image (extension {ext})"


def to_input_rows(batch: pa.Table, root: str) -> Dict[str, np.ndarray]:
    """Listed ``uri``/``version`` rows -> input rows (relative key, byte range, status)."""
    uris = batch.column("uri").to_pylist()
    versions = batch.column("version").to_pylist() if "version" in batch.column_names else [""] * len(uris)
    unsafe = batch.column("unsafe").to_pylist() if "unsafe" in batch.column_names else [""] * len(uris)
    rels, status, reason = [], [], []
    for uri, why in zip(uris, unsafe):
        rel = layout.relative_key(uri, root)
        s, r = (UNSAFE_KEY, why) if why else classify(rel)
        rels.append(rel or "")
        status.append(s)
        reason.append(r)
    n = len(uris)
    return {
        "uri": np.asarray(uris, dtype=object), "rel": np.asarray(rels, dtype=object),
        "version": np.asarray([v or "" for v in versions], dtype=object),
        "offset": np.full(n, -1, np.int64), "length": np.full(n, -1, np.int64),
        "status": np.asarray(status, dtype=object), "reason": np.asarray(reason, dtype=object),
    }


# ------------------------------------------------------------------ prefix listing
class Entry(NamedTuple):
    uri: str
    version: str
    is_dir: bool
    unsafe: str = ""  # why the entry may not be read (a link out of the input root), else ""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _local_entries(path: str, recursive: bool, root: Optional[str]) -> Iterator[Entry]:
    """Local files under ``path``. A symbolic link is followed only when its target is
    inside ``root`` (the listing's input folder): a file link outside is an unsafe entry
    (never read), a linked directory inside is listed under the link's name (unless that
    would loop: a target on the way down to it), one outside is one unsafe entry."""
    root_real = os.path.realpath(root or path)
    stack = [(path, (os.path.realpath(path),))]  # a folder, and the real folders on the way down to it
    while stack:
        folder, chain = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                target = os.path.realpath(e.path) if e.is_symlink() else None
                if target is not None and not _inside(target, root_real):
                    kind = "directory" if os.path.isdir(target) else "file"
                    yield Entry(e.path, "", False, f"a link to a {kind} outside the input folder ({target})")
                    continue
                if e.is_dir():
                    real = target or os.path.realpath(e.path)
                    if real in chain:
                        log.warning("%s links back to %s: not listed again", e.path, real)
                        continue
                    if recursive:
                        stack.append((e.path, chain + (real,)))
                    else:
                        yield Entry(e.path, "", True)
                elif e.is_file():
                    st = e.stat()
                    yield Entry(e.path, f"{st.st_size}-{st.st_mtime_ns}", False)
                elif target is not None:  # a broken link: a row whose read fails (read_error)
                    yield Entry(e.path, "", False)


def _entries(uri: str, recursive: bool, root: Optional[str] = None) -> Iterator[Entry]:
    """Entries under a prefix, page by page. With ``recursive=False`` sub-prefixes come as
    directories; with ``recursive=True`` only files come. ``root``: the input folder that
    local links may not leave (default: ``uri`` itself)."""
    base = uri.rstrip("/")
    if storage.scheme(base) in ("s3", "s3a"):
        bucket, _, key = base.split("://", 1)[1].partition("/")
        prefix = key + "/" if key else ""
        kwargs = {"Bucket": bucket, "Prefix": prefix}
        if not recursive:
            kwargs["Delimiter"] = "/"
        sch = storage.scheme(base)
        for page in storage.s3_client().get_paginator("list_objects_v2").paginate(**kwargs):
            for p in page.get("CommonPrefixes", []):
                yield Entry(f"{sch}://{bucket}/{p['Prefix'].rstrip('/')}", "", True)
            for o in page.get("Contents", []):
                if not o["Key"].endswith("/"):
                    yield Entry(f"{sch}://{bucket}/{o['Key']}", o.get("ETag", "").strip('"'), False)
        return
    if storage.is_local(base):
        root = storage.local_path(root.rstrip("/")) if root else None
        yield from _local_entries(storage.local_path(base), recursive, root)
        return
    fs, path = storage.fsspec_filesystem(base)  # any other fsspec store: its own listing, a directory at a time
    sch = base.split("://", 1)[0]
    if recursive:
        infos = (info for _, _, files in fs.walk(path, detail=True) for info in files.values())
    else:
        infos = iter(fs.ls(path, detail=True))
    for info in infos:
        full = f"{sch}://{info['name'].rstrip('/')}"
        yield Entry(full, str(info.get("ETag", info.get("etag", ""))).strip('"') or f"{info.get('size')}-{info.get('mtime', '')}",
                    info["type"] == "directory")


def _table(rows: List[Entry]) -> pa.Table:
    return pa.table({"uri": pa.array([r[0] for r in rows], pa.string()), "version": pa.array([r[1] for r in rows], pa.string()),
                     "unsafe": pa.array([r[3] if len(r) > 3 else "" for r in rows], pa.string())})


def _top_level(uri: str):
    """One Ray task: (table of the sub-prefixes of ``uri``, table of the files directly under it)."""
    dirs, files = [], []
    for entry in _entries(uri, recursive=False, root=uri):
        if entry.is_dir:
            dirs.append(entry.uri)
        else:
            files.append(entry)
    return pa.table({"prefix": pa.array(sorted(dirs), pa.string())}), _table(files)


def _list_recursive(batch: Dict[str, np.ndarray], root: str) -> Iterator[pa.Table]:
    """Ray Data stage: one sub-prefix -> blocks of its files (paginated)."""
    for prefix in batch["prefix"]:
        rows = []
        for entry in _entries(str(prefix), recursive=True, root=root):
            rows.append(entry)
            if len(rows) >= LIST_BLOCK_ROWS:
                yield _table(rows)
                rows = []
        if rows:
            yield _table(rows)


def list_prefix(uri: str):
    """Every object under a prefix as a Dataset of ``uri``/``version``, listed in parallel.

    Neither the sub-prefixes nor the files come to the driver: both tables of the top-level
    task stay in the object store; the sub-prefixes are re-blocked one per block so that
    each is listed by a task of its own.
    """
    import ray
    import ray.data

    if storage.is_local(uri) and not os.path.isdir(storage.local_path(uri)):
        raise FileNotFoundError(f"input {uri} does not exist (or is not a folder)")
    dirs_ref, files_ref = ray.remote(_top_level).options(num_returns=2, num_cpus=0.25).remote(uri)
    sub = ray.data.from_arrow_refs([dirs_ref]).repartition(target_num_rows_per_block=1)
    sub = sub.map_batches(_list_recursive, fn_kwargs={"root": uri}, batch_size=1, batch_format="numpy", num_cpus=0.25)
    return ray.data.from_arrow_refs([files_ref]).union(sub)


# ---------------------------------------------------------------------- tar archives
def expand_archives(batch: Dict[str, np.ndarray]) -> Iterator[Dict[str, np.ndarray]]:
    """Ray Data stage: input rows of ``.tar`` archives -> input rows of their image members
    (other objects under a prefix of archives are not inputs).

    Only the headers are read here; each member's bytes are read later as a byte range of
    the archive (``offset``/``length``). WebDataset side files (``.json``, ``.cls``, ...)
    are not inputs. An archive that cannot be read is one ``read_error`` row.
    """
    from .ledger import READ_ERROR

    for i in range(len(batch["uri"])):
        uri, rel, version = str(batch["uri"][i]), str(batch["rel"][i]), str(batch["version"][i])
        if not uri.lower().endswith(".tar"):
            continue
        out = {c: [] for c in INPUT_COLUMNS}

        def add(u, r, off, length, status, reason=""):
            for c, v in zip(INPUT_COLUMNS, (u, r, version, off, length, status, reason)):
                out[c].append(v)

        if batch["status"][i] == UNSAFE_KEY:
            add(uri, rel, -1, -1, UNSAFE_KEY, str(batch["reason"][i]))
        else:
            try:
                fs, path = storage.fsspec_filesystem(uri)
                with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                    for m in tar:
                        if not m.isfile() or not is_image_key(m.name):
                            continue
                        name = m.name[2:] if m.name.startswith("./") else m.name
                        why = unsafe_key_reason(name)
                        add(layout.member_uri(uri, name), f"{rel}/{name}", m.offset_data, m.size,
                            UNSAFE_KEY if why else PENDING, why or "")
            except Exception as exc:  # noqa: BLE001 - an unreadable archive is a row
                add(uri, rel, -1, -1, READ_ERROR, f"unreadable archive: {type(exc).__name__}: {exc}")
        yield {c: np.asarray(v, dtype=np.int64 if c in ("offset", "length") else object) for c, v in out.items()}


# -------------------------------------------------------------------- Parquet datasets
def dataset_rows(batch: Dict[str, np.ndarray], dataset_uri: str, split: str) -> Dict[str, np.ndarray]:
    """Ray Data stage: rows of a prepared dataset -> input rows carrying their bytes (``data``)."""
    ids = [str(i) for i in batch["image_id"]]
    n = len(ids)
    reason = [unsafe_key_reason(i) or "" for i in ids]
    status = [UNSAFE_KEY if r else PENDING for r in reason]
    return {
        "uri": np.asarray([layout.dataset_row_uri(dataset_uri, split, i) for i in ids], dtype=object),
        "rel": np.asarray(ids, dtype=object), "version": np.asarray([""] * n, dtype=object),
        "offset": np.full(n, -1, np.int64), "length": np.full(n, -1, np.int64),
        "status": np.asarray(status, dtype=object), "reason": np.asarray(reason, dtype=object),
        "data": batch["image"],
    }


def detect_format(uri: str, fmt: str) -> str:
    """``auto``: ``parquet`` for a prepared dataset, ``tar`` when the prefix's first listed
    objects are archives and no images, else ``images``."""
    from ..data.records import DATASET_INFO_FILE

    if fmt not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; choose one of {INPUT_FORMATS}")
    if fmt in ("auto", "parquet") and storage.exists(storage.join(uri, DATASET_INFO_FILE)):
        return "parquet"
    if fmt == "parquet":
        raise ValueError(f"{uri} is not a samadapter dataset (no {DATASET_INFO_FILE})")
    if fmt != "auto":
        return fmt
    fs, path = storage.fsspec_filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"input {uri} does not exist")
    seen = []
    for entry in _entries(uri, recursive=True):
        seen.append(entry.uri.lower())
        if len(seen) >= 1000:
            break  # a sample: the first page
    tars = any(s.endswith(".tar") for s in seen)
    images = any(layout.split_extension(s) in IMAGE_EXTENSIONS for s in seen)
    return "tar" if tars and not images else "images"

