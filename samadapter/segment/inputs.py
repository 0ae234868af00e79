"""What the segmentation job reads: image prefixes, .tar archives, Parquet datasets.

Listing is one recursive listing of the prefix (paginated by the object store), never a
stat per object. Keys are relative to the input prefix; output keys mirror them.
"""

from __future__ import annotations

import io
import logging
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from ..data import storage
from ..data.records import MANIFEST_NAME
from ..data.sources import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

INPUT_FORMATS = ("auto", "images", "tar", "parquet")


@dataclass
class InputListing:
    format: str  # images | tar | parquet
    root: str  # the input URI
    keys: List[str]  # relative keys (images, archives) - empty for parquet
    split: Optional[str] = None


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS) and not posixpath.basename(key).startswith(".")


def unsafe_key_reason(key: str) -> Optional[str]:
    """Why a key may not be used to build an output path (None when it is safe)."""
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


def list_input(uri: str, fmt: str = "auto", split: Optional[str] = None) -> InputListing:
    """Detect the input format and list it.

    Args:
        uri: a prefix of images, a prefix of ``.tar`` archives, or a Parquet dataset.
        fmt: ``auto`` (Parquet if ``_dataset.json`` exists, else tar if the prefix holds
            ``.tar`` files and no images, else images), or one of the formats.
        split: the split of a Parquet dataset (default ``test``).
    """
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; choose one of {INPUT_FORMATS}")
    root = str(uri).rstrip("/")
    if fmt in ("auto", "parquet") and storage.exists(storage.join(root, MANIFEST_NAME)):
        return InputListing("parquet", root, [], split or "test")
    if fmt == "parquet":
        raise ValueError(f"{uri} is not a samadapter dataset (no {MANIFEST_NAME})")
    fs, path = storage.fsspec_filesystem(root)
    if not fs.exists(path):
        raise FileNotFoundError(f"input {uri} does not exist")
    base = path.rstrip("/")
    keys = sorted(p[len(base) + 1 :] for p in fs.find(base) if p.startswith(base + "/"))
    images = [k for k in keys if is_image_key(k)]
    tars = [k for k in keys if k.lower().endswith(".tar")]
    if fmt == "tar" or (fmt == "auto" and tars and not images):
        return InputListing("tar", root, tars)
    # Image prefix: keep every non-tar file so that misnamed or broken files get a
    # manifest row instead of vanishing; extensions decide nothing about validity.
    others = [k for k in keys if not k.lower().endswith(".tar") and not posixpath.basename(k).startswith(".")]
    return InputListing("images", root, others)


def read_objects(root: str, keys: List[str]) -> List[Tuple[Optional[bytes], str]]:
    """(bytes, error) per key, fetched concurrently where the filesystem can (s3fs)."""
    fs, path = storage.fsspec_filesystem(root)
    full = [f"{path.rstrip('/')}/{k}" for k in keys]
    try:
        got = fs.cat(full, on_error="return")
    except Exception as exc:  # noqa: BLE001 - fall back to one by one
        log.warning("batched read failed (%s); reading one by one", exc)
        got = {}
        for p in full:
            try:
                got[p] = fs.cat_file(p)
            except Exception as e:  # noqa: BLE001
                got[p] = e
    if not isinstance(got, dict):  # a single path returns bytes
        got = {full[0]: got}
    out = []
    for p in full:
        v = got.get(p)
        if isinstance(v, (bytes, bytearray)):
            out.append((bytes(v), ""))
        else:
            out.append((None, f"{type(v).__name__}: {v}" if v is not None else "not found"))
    return out


def tar_members(root: str, archive_key: str) -> Iterator[Tuple[str, Optional[bytes], str]]:
    """(key, bytes, error) of every image member of an archive.

    The key is ``<archive stem>/<member path>``; an unreadable archive yields one row with
    its error, a member that cannot be extracted yields its error.
    """
    stem = posixpath.splitext(archive_key)[0]
    try:
        data = storage.read_bytes(storage.join(root, archive_key))
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except Exception as exc:  # noqa: BLE001
        yield stem, None, f"unreadable archive: {type(exc).__name__}: {exc}"
        return
    with tar:
        try:
            members = tar.getmembers()
        except Exception as exc:  # noqa: BLE001
            yield stem, None, f"unreadable archive: {type(exc).__name__}: {exc}"
            return
        for m in members:
            if not m.isfile() or posixpath.basename(m.name).startswith("."):
                continue
            if not is_image_key(m.name):
                continue  # WebDataset shards carry .json/.cls/.txt side files
            name = m.name[2:] if m.name.startswith("./") else m.name
            key = f"{stem}/{name}"  # unsafe member names ('..', '/abs') are refused downstream
            try:
                f = tar.extractfile(m)
                yield key, (f.read() if f is not None else None), ("" if f is not None else "not a file")
            except Exception as exc:  # noqa: BLE001
                yield key, None, f"{type(exc).__name__}: {exc}"
