"""Where the segmentation job's inputs and outputs live: the one definition of its layout.

An input is identified by its full URI (``s3://bucket/images/2026-11-29/cam0/a.jpg``); its
*relative key* is that URI relative to the input root (``--input-root``, default: the
bucket root for object stores, the ``--input`` folder for local paths), here
``images/2026-11-29/cam0/a.jpg``. Outputs mirror the relative key under ``--output``, with
the input's full name kept, so no two inputs ever share an output::

    masks/<relative key>.png        1-bit mask at the original resolution
    probs/<relative key>.png        8-bit probability map (--save-probs)
    overlays/<relative key>.png     image | overlay, side by side (--overlays)
    ledger/fingerprint=<fp>/run-<run id>-<part uuid>.parquet
                                    one row per input and model (see ``ledger.py``)
    ledger/_quarantine/fingerprint=<fp>/...
                                    ledger files that could not be read, moved aside
    ledger/_compaction/<id>/...     a compaction's new files and, once committed, its manifest
                                    (``compaction.py``)
    _lease.json                     the running night's lease (``lease.py``)

``images/2026-11-28/cam0/a.jpg`` and ``images/2026-11-29/cam0/a.jpg`` land at different
masks; so do ``c.jpg`` and ``c.png`` side by side (``masks/c.jpg.png``, ``masks/c.png.png``).
A member of a ``.tar`` archive is ``<archive URI>/<member path>``; a row of a Parquet
dataset is ``<dataset URI>/<split>/<image_id>`` with the relative key ``<image_id>`` (so
``jobs/evaluate.py --predictions`` finds ``masks/<image_id>.png``).
"""

from __future__ import annotations

import posixpath
from typing import Optional

from .. import storage

MASKS, PROBS, OVERLAYS, LEDGER = "masks", "probs", "overlays", "ledger"
QUARANTINE = "_quarantine"
COMPACTION, COMPACTION_MANIFEST = "_compaction", "manifest.json"
OUTPUT_KINDS = (MASKS, PROBS, OVERLAYS)


def output_key(kind: str, relative_key: str) -> str:
    """``masks/<relative key>.png`` (``kind``: masks, probs or overlays)."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r}; one of {OUTPUT_KINDS}")
    return f"{kind}/{relative_key}.png"


def default_input_root(input_uri: str) -> str:
    """The bucket root of an object-store URI (``s3://b/x/y`` -> ``s3://b``), else the folder itself."""
    uri = str(input_uri).rstrip("/")
    if storage.is_local(uri):
        return storage.local_path(uri)
    sch, rest = uri.split("://", 1)
    return f"{sch}://{rest.split('/', 1)[0]}"


def normalize_root(root: str) -> str:
    """A root as it prefixes input URIs (local paths made absolute, no trailing slash)."""
    root = str(root).rstrip("/")
    return storage.local_path(root) if storage.is_local(root) else root


def relative_key(uri: str, root: str) -> Optional[str]:
    """``uri`` relative to ``root`` (both normalised), or None when it is not under it."""
    if uri.startswith(root + "/"):
        return uri[len(root) + 1 :]
    return None


def member_uri(archive_uri: str, member: str) -> str:
    """The URI of a member of a ``.tar`` archive."""
    name = member[2:] if member.startswith("./") else member
    return f"{archive_uri}/{name}"


def dataset_row_uri(dataset_uri: str, split: str, image_id: str) -> str:
    return f"{dataset_uri.rstrip('/')}/{split}/{image_id}"


def ledger_dir(output: str) -> str:
    return storage.join(output, LEDGER)


def ledger_part(output: str, fingerprint: str, run_id: str, part: str) -> str:
    """One ledger file, written whole by one worker."""
    return storage.join(ledger_dir(output), f"fingerprint={fingerprint}", f"run-{run_id}-{part}.parquet")


def lease(output: str) -> str:
    return storage.join(output, "_lease.json")


def ledger_quarantine(output: str, relative: str) -> str:
    """Where an unreadable ledger file (``relative`` to the ledger folder) is moved."""
    return storage.join(ledger_dir(output), QUARANTINE, relative)


def key_upper_bound(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix``
    (for range filters on sorted URIs)."""
    return prefix + "\U0010ffff"


def split_extension(key: str) -> str:
    """The lower-case extension of a key's last segment ('' for none, e.g. ``_SUCCESS``)."""
    base = posixpath.basename(key)
    stem, ext = posixpath.splitext(base)
    return ext.lower() if stem else ""
