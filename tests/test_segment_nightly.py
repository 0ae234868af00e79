"""Nightly semantics of the segment job at bucket scale: keys across nights, key lists and
S3 Inventory, parallel listing, a killed driver, dry runs, new models."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from samadapter import build_model
from samadapter import storage
from samadapter.segment.ledger import read_ledger_table
from samadapter.segment.run import SegmentConfig, run_segmentation


pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(seed, hw=(30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _adapter(path, seed=0):
    torch.manual_seed(seed)
    model = build_model("tiny", img_size=64)
    if seed:
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(torch.randn_like(p) * 0.05)
    model.save_adapter(str(path))
    return str(path)


def _rows(out):
    t = read_ledger_table(out)
    return t.to_pylist() if t is not None else []


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return _adapter(tmp_path_factory.mktemp("a") / "adapter.safetensors")


def test_same_relative_name_on_two_nights(ray_local, adapter, tmp_path):
    """images/<day>/cam0/a.png on two nights: both segmented, neither overwritten."""
    bucket = tmp_path / "bucket"
    for day, seed in (("2026-11-28", 1), ("2026-11-29", 2)):
        (bucket / "images" / day / "cam0").mkdir(parents=True)
        (bucket / "images" / day / "cam0" / "a.png").write_bytes(_png(seed, (30 + seed, 40)))
    out = str(tmp_path / "masks")
    for day in ("2026-11-28", "2026-11-29"):
        s = run_segmentation(SegmentConfig(input=str(bucket / "images" / day), input_root=str(bucket), output=out,
                                           checkpoint=adapter), progress=False)
        assert (s.listed, s.todo, s.ok) == (1, 1, 1)
    rows = {r["output_key"]: r for r in _rows(out)}
    assert set(rows) == {"masks/images/2026-11-28/cam0/a.png.png", "masks/images/2026-11-29/cam0/a.png.png"}
    heights = {Image.open(os.path.join(out, k)).height for k in rows}
    assert heights == {31, 32}  # each night's own image


def test_parallel_listing_equals_a_plain_listing(ray_local, s3_server, tmp_path):
    import boto3

    from samadapter.segment.listing import list_prefix

    s3 = boto3.client("s3", endpoint_url=s3_server)
    # more keys than one page of a plain listing (1,000), over 21 leaf prefixes
    keys = [f"par/d{i % 7}/sub{i % 3}/k{i:04d}.jpg" for i in range(1100)] + ["par/top.png", "par/_SUCCESS"]
    for k in keys:
        s3.put_object(Bucket="test-bucket", Key=k, Body=b"x" * (len(k) % 5))
    local = tmp_path / "local"
    for k in keys[:300]:
        (local / os.path.dirname(k)).mkdir(parents=True, exist_ok=True)
        (local / k).write_bytes(b"y")
    for uri, plain in (("s3://test-bucket/par", sorted(f"s3://{p}" for p in storage.fsspec_filesystem("s3://test-bucket/par")[0].find("test-bucket/par"))),
                       (str(local / "par"), sorted(str(p) for p in (local / "par").rglob("*") if p.is_file()))):
        ds = list_prefix(uri)
        assert ds.count() == len(plain)
        listed = sorted(r["uri"] for r in ds.select_columns(["uri"]).take_all())
        assert listed == plain
        assert all(v for v in ds.select_columns(["version"]).to_pandas()["version"])  # ETag / size-mtime


def test_s3_inventory_input(ray_local, s3_server, adapter, tmp_path):
    """An S3 Inventory report (CSV, gzip, URL-encoded keys; one old version and one delete
    marker that must be ignored) as the night's key list."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="inv-src")
    keys = ["cam 1/a.png", "cam 1/b.png", "cam2/c+d.png", "notes.txt"]
    etags = {}
    for i, k in enumerate(keys):
        body = b"hello" if k.endswith(".txt") else _png(i)
        etags[k] = s3.put_object(Bucket="inv-src", Key=k, Body=body)["ETag"].strip('"')
    from urllib.parse import quote_plus

    lines = [f'"inv-src","{quote_plus(k)}","100","2026-11-29T01:00:00.000Z","{etags[k]}","true","false"' for k in keys]
    lines.append('"inv-src","cam2%2Fold.png","5","2026-11-01T00:00:00.000Z","0ld","false","false"')  # not the latest
    lines.append('"inv-src","cam2%2Fgone.png","0","2026-11-02T00:00:00.000Z","","true","true"')  # delete marker
    data_key = "inventory/inv-src/daily/data/part-1.csv.gz"
    s3.put_object(Bucket="test-bucket", Key=data_key, Body=gzip.compress(("\n".join(lines) + "\n").encode()))
    manifest = {"sourceBucket": "inv-src", "destinationBucket": "arn:aws:s3:::test-bucket", "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag, IsLatest, IsDeleteMarker",
                "files": [{"key": data_key, "size": 1, "MD5checksum": "x"}]}
    s3.put_object(Bucket="test-bucket", Key="inventory/inv-src/daily/2026-11-29T01-00Z/manifest.json", Body=json.dumps(manifest).encode())

    out = "s3://test-bucket/inv-out"
    s = run_segmentation(SegmentConfig(input_list="s3://test-bucket/inventory/inv-src/daily/2026-11-29T01-00Z/manifest.json",
                                       output=out, checkpoint=adapter), progress=False)
    assert (s.listed, s.ok, s.skipped) == (4, 3, 1)
    rows = {r["uri"]: r for r in _rows(out)}
    assert set(rows) == {f"s3://inv-src/{k}" for k in keys}
    assert rows["s3://inv-src/cam2/c+d.png"]["output_key"] == "masks/cam2/c+d.png.png"
    assert rows["s3://inv-src/cam 1/a.png"]["version"] == etags["cam 1/a.png"]
    assert storage.exists(f"{out}/masks/cam 1/b.png.png")


def test_key_list_parquet_needs_a_root_and_a_new_model_does_not_backfill(ray_local, adapter, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(i))
    listing = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"key": [f"{i}.png" for i in range(3)]}), listing)
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="--input-root"):
        run_segmentation(SegmentConfig(input_list=str(listing), output=out, checkpoint=adapter), progress=False)
    cfg = dict(input_list=str(listing), input_root=str(folder), output=out)
    assert run_segmentation(SegmentConfig(checkpoint=adapter, **cfg), progress=False).ok == 3
    # A new checkpoint: nothing to do by default; the dry run says what --backfill would redo.
    new = _adapter(tmp_path / "new.safetensors", seed=3)
    s = run_segmentation(SegmentConfig(checkpoint=new, **cfg), progress=False)
    assert (s.todo, s.processed) == (0, 0)
    plan = run_segmentation(SegmentConfig(checkpoint=new, dry_run=True, **cfg), progress=False).plan
    assert plan["done by other models only (--backfill redoes them)"] == 3 and plan["to do tonight"] == 0
    s = run_segmentation(SegmentConfig(checkpoint=new, backfill=True, **cfg), progress=False)
    assert s.ok == 3
    models = {(r["uri"], r["fingerprint"]) for r in _rows(out)}
    assert len(models) == 6 and len({fp for _, fp in models}) == 2  # the ledger says which model made each mask


def test_dry_run_builds_no_model(ray_local, adapter, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.png").write_bytes(_png(i))
    (folder / "x.json").write_bytes(b"{}")
    out = str(tmp_path / "out")
    # A SAM checkpoint that does not exist: building the model would fail.
    cfg = dict(input=str(folder), output=out, checkpoint=adapter, sam_checkpoint=str(tmp_path / "missing.pth"))
    from ray._private.state import actors

    def model_actors():  # earlier tests of this module's Ray leave theirs (dead) in the table
        return len([a for a in actors().values() if "Segmenter" in a.get("ActorClassName", "")])

    before = model_actors()
    s = run_segmentation(SegmentConfig(dry_run=True, **cfg), progress=False)
    assert s.plan["listed"] == 5 and s.plan["not images (skipped)"] == 1 and s.plan["to do tonight"] == 5
    assert not os.path.exists(out)  # nothing written, no ledger
    assert model_actors() == before  # no model actor was started (a real run's pool shows up here)


def test_killed_driver_then_rerun(ray_address, tmp_path, capsys):
    """The driver is killed mid-run; the ledger was flushed by time (one file would hold
    every row of this small night), so what finished more than a flush (and a block) before
    the kill is recorded; the rerun redoes only what the ledger does not have, and every
    input ends with exactly one ok row. The killed driver is a process of its own on the
    shared Ray; the rerun is jobs/segment.py's main in this process, on the same Ray."""
    from samadapter.jobs.segment import main as segment

    folder = tmp_path / "in"
    folder.mkdir()
    n = 240
    for i in range(n):
        (folder / f"{i:03d}.png").write_bytes(_png(i, (48, 64)))
    torch.manual_seed(0)
    adapter = str(tmp_path / "adapter512.safetensors")
    build_model("tiny", img_size=512).save_adapter(adapter)  # 512 px: slow enough to be killed mid-run
    out = tmp_path / "out"
    # the drivers join the shared Ray, which outlives the killed one
    env = dict(os.environ, RAY_ADDRESS=ray_address, PYTHONPATH=ROOT)
    args = ["--input", str(folder), "--output", str(out), "--checkpoint", adapter, "--batch-size", "1",
            "--ledger-flush-seconds", "1", "--lease-timeout-minutes", "0.05", "--no-progress"]  # lease: taken over after 3 s
    driver = subprocess.Popen([sys.executable, os.path.join(ROOT, "jobs", "segment.py"), *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ledger = out / "ledger"
    deadline = time.monotonic() + 240
    masks = out / "masks"
    while time.monotonic() < deadline and driver.poll() is None:
        if ledger.exists() and len(list(ledger.rglob("*.parquet"))) >= 3:  # three flushes
            break
        time.sleep(0.1)
    assert driver.poll() is None, "the run ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)
    killed_at = time.time()
    driver.wait()
    # masks written 5 s before the kill: their rows reached the driver (a block, ~1 s here)
    # and were flushed (every second)
    settled = [p for p in masks.rglob("*.png") if p.stat().st_mtime < killed_at - 5]
    before, stable = [], 0
    while stable < 3:  # tasks of the dead driver are cancelled; wait until nothing more lands
        time.sleep(1)
        now = _rows(str(out))
        stable = stable + 1 if len(now) == len(before) else 0
        before = now
    assert 0 < len(before) < n
    recorded = {r["output_key"] for r in before}
    assert settled and all(str(p.relative_to(out)) in recorded for p in settled)  # at most a flush (+ a block) lost
    capsys.readouterr()
    assert segment(args + ["--wait-for-lease"]) == 0
    printed = capsys.readouterr().out
    rows = _rows(str(out))
    ok = [r["uri"] for r in rows if r["status"] == "ok"]
    assert sorted(ok) == sorted(str(p) for p in folder.iterdir())  # every input ok exactly once
    assert len({r["run_id"] for r in rows}) == 2
    assert f"to do tonight        {n - len(before)}" in printed, printed  # only the unrecorded work was redone
