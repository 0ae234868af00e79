"""Dataset preparation: COD folder layouts, paired folders, synthetic, local S3 + Ray Data."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from samadapter import storage
from samadapter.data import sources
from samadapter.data.prepare import prepare_dataset
from samadapter.data.reading import decode_records, iter_records, read_split
from samadapter.data.records import DatasetExistsError, read_dataset_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPARE = os.path.join(ROOT, "jobs", "prepare_data.py")


def _write_pair(img_dir, gt_dir, stem, size=(48, 32), mask_size=None, corrupt=False, no_mask=False, seed=0):
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(seed)
    if corrupt:
        open(os.path.join(img_dir, stem + ".jpg"), "wb").write(b"\xff\xd8\xff\xe0 not really a jpeg")
    else:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(os.path.join(img_dir, stem + ".jpg"))
    if not no_mask:
        mw, mh = mask_size or size
        m = np.zeros((mh, mw), np.uint8)
        m[mh // 4 : mh // 2, mw // 4 : mw // 2] = 255
        Image.fromarray(m).save(os.path.join(gt_dir, stem + ".png"))


def _bad_three(img_dir, gt_dir):
    _write_pair(img_dir, gt_dir, "bad-corrupt", corrupt=True)
    _write_pair(img_dir, gt_dir, "bad-nomask", no_mask=True)
    _write_pair(img_dir, gt_dir, "bad-wrongsize", mask_size=(20, 20))


def _check_bad_three(summary):
    by_item = {os.path.splitext(os.path.basename(s["item"]))[0]: s for s in summary["skipped"]}
    assert by_item["bad-corrupt"]["status"] in ("corrupt", "truncated", "not_an_image")
    assert by_item["bad-nomask"]["status"] == "missing_mask"
    assert by_item["bad-wrongsize"]["status"] == "mask_size_mismatch"
    assert all(s["reason"] for s in summary["skipped"])


def test_cod10k_v3_layout(tmp_path):
    root = tmp_path / "COD10K-v3"
    for i in range(3):
        _write_pair(root / "Train" / "Image", root / "Train" / "GT_Object", f"COD10K-CAM-1-Aquatic-1-Fish-{i}", seed=i)
    _write_pair(root / "Train" / "Image", root / "Train" / "GT_Object", "COD10K-NonCAM-1-Aerial-1-Airplane-9")
    for i in range(2):
        _write_pair(root / "Test" / "Image", root / "Test" / "GT_Object", f"COD10K-CAM-2-Test-{i}", seed=10 + i)
    _bad_three(root / "Test" / "Image", root / "Test" / "GT_Object")

    layout, _ = sources.detect_cod_layout(str(tmp_path))  # found one level down too
    assert layout == "cod10k-v3"
    listing = sources.cod_listing(str(root))
    assert "COD10K-v3" in listing.description
    summary = prepare_dataset(listing, str(tmp_path / "out"), progress=False)
    assert summary["written"] == {"train": 3, "test": 2}
    _check_bad_three(summary)
    assert summary["skipped_by_status"]["non_camouflaged"] == 1
    manifest = read_dataset_info(str(tmp_path / "out"))
    assert manifest["splits"] == {"test": 2, "train": 3}


def test_cod_release_layout(tmp_path):
    root = tmp_path / "COD"
    for i in range(2):
        _write_pair(root / "TrainDataset" / "Imgs", root / "TrainDataset" / "GT", f"COD10K-CAM-{i}", seed=i)
        _write_pair(root / "TrainDataset" / "Imgs", root / "TrainDataset" / "GT", f"camourflage_{i:05d}", seed=5 + i)
    for name in ("COD10K", "CAMO", "CHAMELEON", "NC4K"):
        _write_pair(root / "TestDataset" / name / "Imgs", root / "TestDataset" / name / "GT", f"{name}-img", seed=9)
    _bad_three(root / "TestDataset" / "COD10K" / "Imgs", root / "TestDataset" / "COD10K" / "GT")
    listing = sources.cod_listing(str(root))
    assert "COD release" in listing.description
    out = tmp_path / "out"
    summary = prepare_dataset(listing, str(out), progress=False)
    assert summary["written"] == {"train": 4, "test": 1, "test-camo": 1, "test-chameleon": 1, "test-nc4k": 1}
    _check_bad_three(summary)
    rows = next(iter_records(str(out), "train", columns=["image_id", "source"], batch_size=100))
    assert sorted(rows["source"]) == ["camo", "camo", "cod10k", "cod10k"]


def test_not_a_cod_folder_is_a_clear_error(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(ValueError, match="--source paired"):
        sources.cod_listing(str(tmp_path))


def test_paired_rows_keep_original_bytes_and_sizes(tmp_path):
    _write_pair(tmp_path / "im", tmp_path / "gt", "a", size=(48, 32))
    _write_pair(tmp_path / "im", tmp_path / "gt", "b", size=(20, 30), seed=3)
    os.remove(tmp_path / "im" / "b.jpg")  # mask without image
    _write_pair(tmp_path / "im", tmp_path / "gt", "c", size=(25, 17), seed=4)
    listing = sources.paired_listing(str(tmp_path / "im"), str(tmp_path / "gt"), "val")
    summary = prepare_dataset(listing, str(tmp_path / "out"), progress=False)
    assert summary["written"] == {"val": 2}
    assert summary["skipped_by_status"] == {"missing_image": 1}
    table = pq.read_table(str(tmp_path / "out" / "val" / "part-00000.parquet"))
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert rows["a"]["image"] == (tmp_path / "im" / "a.jpg").read_bytes()
    assert (rows["a"]["height"], rows["a"]["width"]) == (32, 48)
    assert (rows["c"]["height"], rows["c"]["width"]) == (17, 25)
    mask = Image.open(io.BytesIO(rows["a"]["mask"]))
    assert mask.mode == "L" and set(np.unique(np.asarray(mask))) == {0, 255}


def test_existing_dataset_needs_overwrite_and_shards_roll_over(tmp_path):
    out = str(tmp_path / "ds")
    listing = sources.synthetic_listing(12, 4, size=64, seed=1)
    prepare_dataset(listing, out, progress=False)
    with pytest.raises(DatasetExistsError, match="--overwrite"):
        prepare_dataset(listing, out, progress=False)
    # tiny shards: several files, and every row still there exactly once
    summary = prepare_dataset(listing, out, overwrite=True, shard_mb=0.02, progress=False)
    assert len(summary["manifest"]["shards"]["train"]) > 1
    ids = []
    for batch in iter_records(out, "train", columns=["image_id"]):
        ids += batch["image_id"]
    assert sorted(ids) == sorted(c.image_id for c in listing.candidates if c.split == "train")


def test_decoded_batches_without_ray(tmp_path):
    out = str(tmp_path / "ds")
    prepare_dataset(sources.synthetic_listing(6, 2, size=96, seed=2), out, progress=False)
    batches = [decode_records(rows, 64) for rows in iter_records(out, "train", batch_size=4)]
    assert [len(b["image_id"]) for b in batches] == [4, 2]
    b = batches[0]
    assert b["images"].shape == (4, 64, 64, 3) and b["images"].dtype == np.uint8 and b["masks"].shape == (4, 64, 64)
    assert b["height"].tolist() == [96] * 4
    with pytest.raises(ValueError, match="no split 'val'"):
        list(iter_records(out, "val", batch_size=4))


def test_prepare_job_cli(tmp_path):
    out = tmp_path / "x"
    cmd = [sys.executable, PREPARE, "--source", "synthetic", "--num-train", "8", "--num-test", "2",
           "--size", "64", "--output", str(out), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "8 rows" in r.stdout
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = subprocess.run([sys.executable, PREPARE, "--source", "paired", "--output", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--images" in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_s3_round_trip_with_ray_data_and_pyarrow(s3_server, ray_local, tmp_path):
    uri = "s3://test-bucket/datasets/synth"
    r = subprocess.run(
        [sys.executable, PREPARE, "--source", "synthetic", "--num-train", "10", "--num-test", "4",
         "--size", "64", "--output", uri, "--no-progress"],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )
    assert r.returncode == 0, r.stderr
    manifest = read_dataset_info(uri)
    assert manifest["splits"] == {"test": 4, "train": 10}

    # the same dataset written locally, for byte-for-byte comparison
    local = str(tmp_path / "local")
    prepare_dataset(sources.synthetic_listing(10, 4, size=64, seed=0), local, progress=False)
    expected = {}
    for batch in iter_records(local, "train"):
        for i, image_id in enumerate(batch["image_id"]):
            expected[image_id] = (batch["image"][i], batch["mask"][i])

    # pyarrow, through the storage helper (endpoint passed explicitly)
    got = {}
    for batch in iter_records(uri, "train"):
        for i, image_id in enumerate(batch["image_id"]):
            got[image_id] = (batch["image"][i], batch["mask"][i])
    assert got == expected

    # Ray Data, with column pruning
    ds = read_split(uri, "train", columns=["image_id", "image"])
    rows = ds.take_all()
    assert len(rows) == 10
    assert set(rows[0]) == {"image_id", "image"}
    assert {r["image_id"]: bytes(r["image"]) for r in rows} == {k: v[0] for k, v in expected.items()}
    # read by Ray Data's V1 Parquet reader (footers once), not V2's list-on-every-pass
    # (ray_compat.read_parquet_footers_once): no ListFiles operator in the executed plan
    stats = ds.stats()
    assert "ReadParquet" in stats and "ListFiles" not in stats

    # the listing in the bucket is exactly the layout
    fs, path = storage.fsspec_filesystem(uri)
    keys = sorted(p[len(path) + 1 :] for p in fs.find(path))
    assert keys == ["_dataset.json", "test/part-00000.parquet", "train/part-00000.parquet"]
    assert json.loads(storage.read_bytes(uri + "/_dataset.json"))["sources"] == {"synthetic": 14}


def test_remote_weights_are_fetched_once_per_machine(s3_server, tmp_path, monkeypatch, caplog):
    """Concurrent callers (workers on one node) share one download of a remote file, and
    say what they wait for."""
    import logging
    import threading

    caplog.set_level(logging.INFO, logger="samadapter.storage")
    uri = "s3://test-bucket/weights/sam_tiny.pth"
    storage.write_bytes(uri, b"w" * 200_000)
    real = storage.fsspec_filesystem
    downloads = []

    class Counting:
        def __init__(self, fs):
            self.fs = fs

        def get_file(self, *a, **k):
            downloads.append(a[0])
            return self.fs.get_file(*a, **k)

    monkeypatch.setattr(storage, "fsspec_filesystem", lambda u, anon=False: (Counting(real(u, anon)[0]), real(u, anon)[1]))
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(storage.local_copy(uri, str(tmp_path)))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(paths) == 6 and len(set(paths)) == 1
    assert len(downloads) == 1
    assert open(paths[0], "rb").read() == b"w" * 200_000
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if m.startswith(f"fetching {uri} into ")]) == 1
    assert len([m for m in said if m.startswith(f"fetched {uri}: 0 MB in ")]) == 1
    # a local path is used in place, never copied
    assert storage.local_copy(paths[0]) == paths[0]
