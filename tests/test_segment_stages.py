"""The segment job's CPU stages against a real S3 endpoint (moto on loopback): whole-object
writes and failed writes as ledger rows."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
from PIL import Image

from samadapter import storage
from samadapter.segment import stages


def test_a_large_object_is_one_put_object(s3_server):
    import boto3

    import s3fs

    # over the block size at which s3fs's writer switches to a multipart upload (5 MiB in
    # older releases, 50 MiB now): an overlay of a 12 MP photo is about 70 MB
    data = os.urandom(max(6 << 20, s3fs.S3FileSystem.default_block_size) + 123)
    storage.write_bytes("s3://test-bucket/big/overlay.png", data)
    head = boto3.client("s3", endpoint_url=s3_server).head_object(Bucket="test-bucket", Key="big/overlay.png")
    # a multipart upload's ETag is "<md5 of md5s>-<parts>"; one PutObject's is the body's MD5
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert storage.read_bytes("s3://test-bucket/big/overlay.png") == data


def _batch(tmp_path, n=2):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    batch = {"uri": np.asarray(paths, dtype=object), "rel": np.asarray([os.path.basename(p) for p in paths], dtype=object),
             "version": np.asarray([""] * n, dtype=object), "offset": np.full(n, -1), "length": np.full(n, -1),
             "status": np.asarray(["pending"] * n, dtype=object), "reason": np.asarray([""] * n, dtype=object)}
    batch = stages.decode_stage(stages.read_stage(batch), img_size=32, resize_mode="squash", max_pixels=10**7, keep_bytes=True)
    batch.pop("image")
    batch["logits"] = np.full((n, 8, 8), 3.0, np.float16)
    batch["actor"] = np.asarray(["a"] * n, dtype=object)
    return batch


def test_masks_on_s3_and_a_failed_write_is_a_write_error_row(s3_server, tmp_path):
    batch = _batch(tmp_path)
    rows = stages.postprocess_stage(dict(batch), output="s3://test-bucket/st", threshold=0.5, resize_mode="squash",
                                    save_probs=True, overlays=True, img_size=32)
    assert list(rows["status"]) == ["ok", "ok"]
    mask = Image.open(io.BytesIO(storage.read_bytes("s3://test-bucket/st/masks/0.png.png")))
    assert mask.mode == "1" and mask.size == (40, 30) and np.asarray(mask).all()
    assert Image.open(io.BytesIO(storage.read_bytes("s3://test-bucket/st/probs/0.png.png"))).mode == "L"  # 8-bit
    # a bucket that does not exist: the write fails after botocore's retries -> a row, not a crash
    rows = stages.postprocess_stage(dict(batch), output="s3://no-such-bucket/st", threshold=0.5, resize_mode="squash",
                                    save_probs=False, overlays=False, img_size=32)
    assert list(rows["status"]) == ["write_error", "write_error"]
    assert all("NoSuchBucket" in r for r in rows["reason"]) and list(rows["output_key"]) == ["", ""]


def test_other_fsspec_stores_are_listed_a_directory_at_a_time():
    """A store that is neither S3 nor local (here fsspec's memory store) is listed through
    fsspec: recursively every file, one level deep files plus sub-prefixes."""
    import fsspec

    from samadapter.segment.listing import _entries

    fs = fsspec.filesystem("memory")
    for key in ("lst/a.jpg", "lst/sub/b.jpg", "lst/sub/deep/c.png"):
        fs.pipe(f"/{key}", b"xyz")
    try:
        assert sorted(e.uri for e in _entries("memory://lst", True) if not e.is_dir) == [
            "memory:///lst/a.jpg", "memory:///lst/sub/b.jpg", "memory:///lst/sub/deep/c.png"]
        assert sorted((e.uri, e.is_dir) for e in _entries("memory://lst", False)) == [
            ("memory:///lst/a.jpg", False), ("memory:///lst/sub", True)]
        assert all(e.version for e in _entries("memory://lst", True) if not e.is_dir)  # a version for every file
    finally:
        fs.rm("/lst", recursive=True)


def test_the_broadcast_join_of_a_block_against_the_done_keys():
    """The small-ledger plan: each block of inputs joined with the done (uri, version)
    keys in its map task; the keys' string types need not match the block's."""
    import pyarrow as pa

    from samadapter.segment.plan import _join_block

    block = pa.table({"uri": ["a", "b", "c", "d"], "version": ["1", "1", "2", ""], "rel": ["a", "b", "c", "d"]})
    done = pa.table({"uri": pa.array(["a", "b", "c", "c", "x"], pa.large_string()),
                     "version": pa.array(["1", "2", "2", "2", "1"], pa.large_string())})
    anti = _join_block(block, done, "left anti")
    assert sorted(anti.column("uri").to_pylist()) == ["b", "d"]  # b: another version is done; d: never done
    assert anti.column_names == block.column_names  # the block's columns, none of the keys' table
    semi = _join_block(block, done, "left semi")
    assert sorted(semi.column("uri").to_pylist()) == ["a", "c"]  # c once, though done twice
    assert _join_block(block.slice(0, 0), done, "left anti").num_rows == 0
