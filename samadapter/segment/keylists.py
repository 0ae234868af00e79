"""A night's inputs from a key list instead of a listing: Parquet or CSV files with a
``uri`` column (or ``key``, relative to ``--input-root``) and optionally
``version``/``etag``/``size``, or an S3 Inventory report's ``manifest.json`` (CSV/gzip or
Parquet data files; only current versions). Both end as ``uri``/``version`` rows that
``listing.to_input_rows`` turns into input rows; the keys never reach the driver.
"""

from __future__ import annotations

import json
from typing import Optional
from urllib.parse import unquote_plus

import pyarrow as pa

from .. import storage
from .listing import _table


def read_key_list(uri: str, input_root: Optional[str]):
    """A key list (Parquet/CSV) or an S3 Inventory ``manifest.json`` -> Dataset of ``uri``/``version``."""
    import ray.data

    if uri.endswith(".json"):
        return _read_inventory(uri)
    fs, path = storage.pyarrow_filesystem(uri)
    kind = "csv" if any(uri.lower().endswith(e) for e in (".csv", ".csv.gz")) else "parquet"
    ds = ray.data.read_csv(path, filesystem=fs) if kind == "csv" else ray.data.read_parquet(path, filesystem=fs)
    names = ds.columns()
    if "uri" not in names and "key" not in names:
        raise ValueError(f"key list {uri}: needs a 'uri' column (full URIs) or a 'key' column (relative to --input-root); has {names}")
    if "uri" not in names and not input_root:
        raise ValueError(f"key list {uri} has keys relative to a root: pass --input-root")
    root = (input_root or "").rstrip("/")
    return ds.map_batches(_normalize_key_list, fn_kwargs={"root": root}, batch_format="pyarrow")


def _normalize_key_list(batch: pa.Table, root: str) -> pa.Table:
    names = batch.column_names
    uris = batch.column("uri").to_pylist() if "uri" in names else [f"{root}/{k}" for k in batch.column("key").to_pylist()]
    if "version" in names:
        versions = [str(v) if v is not None else "" for v in batch.column("version").to_pylist()]
    elif "etag" in names:
        versions = [str(v).strip('"') if v is not None else "" for v in batch.column("etag").to_pylist()]
    elif "size" in names:
        versions = [str(v) for v in batch.column("size").to_pylist()]
    else:
        versions = [""] * len(uris)
    return pa.table({"uri": pa.array(uris, pa.string()), "version": pa.array(versions, pa.string())})


_INVENTORY_FIELDS = {"bucket": "Bucket", "key": "Key", "size": "Size", "last_modified_date": "LastModifiedDate",
                     "e_tag": "ETag", "is_latest": "IsLatest", "is_delete_marker": "IsDeleteMarker"}


def _read_inventory(manifest_uri: str):
    import pyarrow.csv as pacsv
    import ray.data

    manifest = json.loads(storage.read_bytes(manifest_uri))
    fmt = str(manifest.get("fileFormat", "")).lower()
    dest = str(manifest.get("destinationBucket", "")).rsplit(":", 1)[-1]
    if not dest or "files" not in manifest:
        raise ValueError(f"{manifest_uri} is not an S3 Inventory manifest (no destinationBucket/files)")
    sch = storage.scheme(manifest_uri) or "s3"
    files = [f"{sch}://{dest}/{f['key']}" for f in manifest["files"]]
    if not files:
        import ray.data as rd

        return rd.from_arrow(_table([]))
    fs, _ = storage.pyarrow_filesystem(files[0])
    paths = [f.split("://", 1)[1] for f in files]
    if fmt == "csv":
        columns = [c.strip() for c in manifest["fileSchema"].split(",")]
        ds = ray.data.read_csv(paths, filesystem=fs, read_options=pacsv.ReadOptions(column_names=columns),
                               convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}),
                               arrow_open_stream_args={"compression": "gzip"})
        url_encoded = True
    elif fmt == "parquet":
        ds = ray.data.read_parquet(paths, filesystem=fs)
        url_encoded = False
    else:
        raise ValueError(f"S3 Inventory format {manifest.get('fileFormat')!r} is not supported: configure the "
                         "inventory as CSV or Parquet")
    return ds.map_batches(_normalize_inventory, fn_kwargs={"scheme": sch, "url_encoded": url_encoded}, batch_format="pyarrow")


def _normalize_inventory(batch: pa.Table, scheme: str, url_encoded: bool) -> pa.Table:
    cols = {}
    for name in batch.column_names:  # Parquet uses snake_case, CSV the fileSchema's names
        canon = _INVENTORY_FIELDS.get(name, name)
        cols[canon] = batch.column(name).to_pylist()
    n = batch.num_rows
    keep = [True] * n
    if "IsLatest" in cols:
        keep = [k and str(v).lower() != "false" for k, v in zip(keep, cols["IsLatest"])]
    if "IsDeleteMarker" in cols:
        keep = [k and str(v).lower() != "true" for k, v in zip(keep, cols["IsDeleteMarker"])]
    uris, versions = [], []
    for i in range(n):
        if not keep[i]:
            continue
        key = cols["Key"][i]
        key = unquote_plus(key) if url_encoded else key
        if key.endswith("/"):
            continue  # folder placeholder objects
        uris.append(f"{scheme}://{cols['Bucket'][i]}/{key}")
        etag = cols.get("ETag", [None] * n)[i]
        versions.append(str(etag).strip('"') if etag else f"{cols.get('Size', [''] * n)[i]}-{cols.get('LastModifiedDate', [''] * n)[i]}")
    return _table(list(zip(uris, versions)))
