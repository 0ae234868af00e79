"""Batch segmentation on a local Ray: mixed buckets, reruns, batching, tar input, evaluation."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from samadapter import build_model
from samadapter import storage
from samadapter.data.prepare import prepare_dataset
from samadapter.data.sources import synthetic_listing
from samadapter.jobs.evaluate import main as evaluate_main
from samadapter.jobs.segment import main as segment_main
from samadapter.segment.layout import output_key
from samadapter.segment.ledger import read_ledger_table
from samadapter.checkpoints import resolve_adapter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64




@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An adapter checkpoint of a tiny model at 64 px (random weights, seeded base)."""
    torch.manual_seed(0)
    model = build_model("tiny", img_size=SIZE)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = str(tmp_path_factory.mktemp("adapter") / "adapter.safetensors")
    model.save_adapter(path)
    return path


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mixed_images():
    """key -> (bytes, (H, W) expected upright size or None for a bad file)."""
    out = {}
    sizes = [(40, 60), (64, 64), (33, 47), (80, 30), (50, 50)]
    for i, (h, w) in enumerate(sizes):
        out[f"photos/jpg_{i}.jpg"] = (_encode(Image.fromarray(_rgb(h, w, i)), "JPEG"), (h, w))
    out["photos/upper.JPEG"] = (_encode(Image.fromarray(_rgb(30, 20, 9)), "JPEG"), (30, 20))
    out["a/b/c.png"] = (_encode(Image.fromarray(_rgb(45, 35, 10)), "PNG"), (45, 35))
    out["gray.png"] = (_encode(Image.fromarray(_rgb(41, 29, 11)[..., 0]), "PNG"), (41, 29))
    out["rgba.png"] = (_encode(Image.fromarray(_rgb(36, 52, 12)).convert("RGBA"), "PNG"), (36, 52))
    out["deep16.png"] = (_encode(Image.fromarray(_rgb(28, 38, 13)[..., 0].astype(np.uint16) * 257), "PNG"), (28, 38))
    out["cmyk.jpg"] = (_encode(Image.fromarray(_rgb(32, 44, 14)).convert("CMYK"), "JPEG"), (32, 44))
    out["pal.gif"] = (_encode(Image.fromarray(_rgb(26, 26, 15)).convert("P"), "GIF"), (26, 26))
    out["pic.webp"] = (_encode(Image.fromarray(_rgb(30, 40, 16)), "WEBP"), (30, 40))
    out["pic.bmp"] = (_encode(Image.fromarray(_rgb(22, 34, 17)), "BMP"), (22, 34))
    out["scan.tif"] = (_encode(Image.fromarray(_rgb(24, 31, 18)), "TIFF"), (24, 31))
    out["scan2.TIFF"] = (_encode(Image.fromarray(_rgb(21, 19, 19)), "TIFF"), (21, 19))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60 x 40, shown rotated: upright 40 wide x 60 high... (H, W) = (60, 40)
    out["rotated.jpg"] = (_encode(Image.fromarray(_rgb(40, 60, 20)), "JPEG", exif=exif.tobytes()), (60, 40))
    out["mono.png"] = (_encode(Image.fromarray(_rgb(20, 20, 21)[..., 0] > 128), "PNG"), (20, 20))
    out["la.png"] = (_encode(Image.fromarray(_rgb(18, 27, 22)[..., 0]).convert("LA"), "PNG"), (18, 27))
    good = _encode(Image.fromarray(_rgb(40, 40, 23)), "JPEG")
    out["bad/corrupt.jpg"] = (good[: len(good) // 3], None)
    out["bad/empty.jpg"] = (b"", None)
    out["bad/notes.jpg"] = (b"just some text, not a picture\n", None)
    return out


def _ledger_rows(output):
    table = read_ledger_table(output)
    return table.to_pylist() if table is not None else []


def _run(*args):
    return segment_main(list(args) + ["--no-progress"])


def test_mixed_bucket_on_s3(s3_server, ray_local, adapter):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    images = mixed_images()
    noext = _encode(Image.fromarray(_rgb(25, 35, 30)), "PNG")
    extra = {"photos/meta.json": b"{}", "_SUCCESS": b"", "labels.txt": b"cat\n", "noext": noext}
    for key, data in list((k, v[0]) for k, v in images.items()) + list(extra.items()):
        s3.put_object(Bucket="test-bucket", Key=f"in/{key}", Body=data)
    s3.put_object(Bucket="test-bucket", Key="in/sub/../escape.jpg", Body=images["photos/jpg_0.jpg"][0])
    inp, out = "s3://test-bucket/in", "s3://test-bucket/out"

    assert _run("--input", inp, "--output", out, "--checkpoint", adapter, "--max-failed-fraction", "0.5", "--save-probs") == 0
    rows = {r["uri"]: r for r in _ledger_rows(out)}
    assert len(rows) == len(images) + len(extra) + 1
    for key, (_, hw) in images.items():
        row = rows[f"{inp}/{key}"]
        assert row["version"]  # the ETag
        if hw is None:
            assert row["status"] != "ok" and row["reason"], row
            continue
        assert row["status"] == "ok", row
        assert (row["height"], row["width"]) == hw
        # keys relative to the bucket root, full names kept: c.jpg and c.png never collide
        assert row["output_key"] == output_key("masks", f"in/{key}") == f"masks/in/{key}.png"
        mask = Image.open(io.BytesIO(storage.read_bytes(f"{out}/{row['output_key']}")))
        assert mask.mode == "1" and (mask.height, mask.width) == hw  # 1 bit per pixel
        assert set(np.unique(np.asarray(mask.convert("L")))) <= {0, 255}
        assert storage.exists(f"{out}/{output_key('probs', 'in/' + key)}")
    assert rows[f"{inp}/sub/../escape.jpg"]["status"] == "unsafe_key"
    assert rows[f"{inp}/bad/empty.jpg"]["status"] == "zero_bytes"
    assert rows[f"{inp}/bad/notes.jpg"]["status"] == "not_an_image"
    assert rows[f"{inp}/bad/corrupt.jpg"]["status"] in ("truncated", "corrupt")
    # sidecars are skipped (not failures); a key without an extension is sniffed
    for key in ("photos/meta.json", "_SUCCESS", "labels.txt"):
        assert rows[f"{inp}/{key}"]["status"] == "skipped", rows[f"{inp}/{key}"]
    assert rows[f"{inp}/noext"]["status"] == "ok" and rows[f"{inp}/noext"]["height"] == 25
    # nothing was written outside the output prefix
    fs, _ = storage.fsspec_filesystem(out)
    everything = fs.find("test-bucket")
    assert not any("escape" in k for k in everything if not k.startswith("test-bucket/in/"))

    # A quiet night: the permanent failures are not retried, nothing is new: exit 0.
    assert _run("--input", inp, "--output", out, "--checkpoint", adapter) == 0
    assert len(_ledger_rows(out)) == len(rows)
    # --retry-failed retries exactly the failed decodes (all fail again: the gate fails)
    assert _run("--input", inp, "--output", out, "--checkpoint", adapter, "--retry-failed") == 1
    runs = {}
    for r in _ledger_rows(out):
        runs[r["uri"]] = runs.get(r["uri"], 0) + 1
    assert {u for u, n in runs.items() if n == 2} == {f"{inp}/bad/{k}" for k in ("corrupt.jpg", "empty.jpg", "notes.jpg")}


def _write_local_images(folder, n, start=0):
    os.makedirs(folder, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(_rgb(30 + i, 40 + 2 * i, 100 + i)).save(os.path.join(folder, f"img_{i:03d}.png"))


def test_rerun_processes_only_new_images_and_force_all(ray_local, adapter, tmp_path):
    from samadapter.segment.run import SegmentConfig, run_segmentation

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    _write_local_images(inp, 6)

    def run(**kw):
        return run_segmentation(SegmentConfig(input=inp, output=out, checkpoint=adapter, **kw), progress=False)

    s = run(batch_size=4)
    assert (s.listed, s.processed, s.ok, s.todo) == (6, 6, 6, 6)
    first = {k: open(os.path.join(out, "masks", k), "rb").read() for k in os.listdir(os.path.join(out, "masks"))}
    assert len(first) == 6
    s = run()
    assert (s.processed, s.todo, s.listed) == (0, 0, 6)
    _write_local_images(inp, 3, start=6)
    s = run()
    assert (s.processed, s.todo, s.listed) == (3, 3, 9)
    # --force: everything again, one image per model call: the same masks as batches of 4.
    s = run(force=True, batch_size=1)
    assert (s.processed, s.todo) == (9, 9)
    for k, data in first.items():
        assert open(os.path.join(out, "masks", k), "rb").read() == data, k
    rows = _ledger_rows(out)
    assert len(rows) == 6 + 3 + 9 and all(r["status"] == "ok" for r in rows)
    assert len({r["fingerprint"] for r in rows}) == 1 and len({r["run_id"] for r in rows}) == 3  # the quiet rerun wrote nothing
    # the CLI says the same: a rerun processes nothing and succeeds
    assert _run("--input", inp, "--output", out, "--checkpoint", adapter) == 0


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_archives(ray_local, adapter, tmp_path):
    inp, out = tmp_path / "shards", str(tmp_path / "out")
    inp.mkdir()
    a = {f"{i:04d}.jpg": _encode(Image.fromarray(_rgb(30, 30 + i, i)), "JPEG") for i in range(3)}
    a["0000.json"] = b"{}"  # WebDataset side file: not an image, ignored
    b = {"dir/x.png": _encode(Image.fromarray(_rgb(20, 25, 7)), "PNG"), "dir/broken.jpg": b"\xff\xd8\xff garbage",
         "../evil.jpg": a["0001.jpg"]}
    (inp / "shard-a.tar").write_bytes(_tar(a))
    (inp / "shard-b.tar").write_bytes(_tar(b))
    assert _run("--input", str(inp), "--output", out, "--checkpoint", adapter, "--max-failed-fraction", "0.5") == 0
    rows = {r["uri"][len(str(inp)) + 1 :]: r for r in _ledger_rows(out)}
    members = {"shard-a.tar/0000.jpg", "shard-a.tar/0001.jpg", "shard-a.tar/0002.jpg", "shard-b.tar/dir/x.png",
               "shard-b.tar/dir/broken.jpg", "shard-b.tar/../evil.jpg"}
    assert set(rows) == members
    for key in ("shard-a.tar/0000.jpg", "shard-a.tar/0001.jpg", "shard-a.tar/0002.jpg", "shard-b.tar/dir/x.png"):
        assert rows[key]["status"] == "ok"
        assert rows[key]["output_key"] == f"masks/{key}.png"
        assert os.path.exists(os.path.join(out, rows[key]["output_key"]))
    assert rows["shard-a.tar/0002.jpg"]["width"] == 32  # read as its byte range of the archive
    assert rows["shard-b.tar/dir/broken.jpg"]["status"] in ("truncated", "corrupt", "not_an_image")
    assert rows["shard-b.tar/../evil.jpg"]["status"] == "unsafe_key"
    # the unsafe member wrote nothing anywhere (inside the output or out of it)
    assert not [p for p in tmp_path.rglob("*evil*") if p.suffix == ".png"]
    # rerun: nothing new, the broken member is not retried
    assert _run("--input", str(inp), "--output", out, "--checkpoint", adapter) == 0
    assert len(_ledger_rows(out)) == len(members)


def test_parquet_input_and_evaluation(ray_local, adapter, tmp_path):
    data = str(tmp_path / "ds")
    prepare_dataset(synthetic_listing(2, 6, size=48, seed=5), data, progress=False)
    out = str(tmp_path / "out")
    assert _run("--input", data, "--split", "test", "--output", out, "--checkpoint", adapter, "--save-probs") == 0
    rows = _ledger_rows(out)
    assert len(rows) == 6 and all(r["status"] == "ok" and (r["height"], r["width"]) == (48, 48) for r in rows)
    # at another input size the outputs are another model's (a fingerprint of their own: redone
    # with --backfill); at the adapter's own size the fingerprint is the first run's (nothing to do)
    again = ["--input", data, "--split", "test", "--output", out, "--checkpoint", adapter, "--backfill"]
    assert _run(*again, "--img-size", "96") == 0
    assert len(_ledger_rows(out)) == 12 and len(os.listdir(os.path.join(out, "ledger"))) == 2
    assert _run(*again, "--img-size", str(SIZE)) == 0
    assert len(_ledger_rows(out)) == 12

    # evaluate the predictions written by the segment job, and the checkpoint directly
    report = str(tmp_path / "report")
    assert evaluate_main(["--dataset", data, "--split", "test", "--predictions", out, "--output", report]) == 0
    assert all(os.path.exists(os.path.join(report, f)) for f in ("metrics.json", "metrics.md", "examples.png"))
    assert evaluate_main(["--dataset", data, "--split", "test", "--checkpoint", adapter, "--output", str(tmp_path / "r2")]) == 0


def test_evaluate_perfect_and_empty_predictions(tmp_path):
    from samadapter.data.reading import iter_records
    from samadapter.evaluate.evaluation import evaluate_predictions

    data = str(tmp_path / "ds")
    prepare_dataset(synthetic_listing(1, 4, size=48, seed=6), data, progress=False)
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    for records in iter_records(data, "test", columns=["image_id", "mask"]):
        for image_id, mask in zip(records["image_id"], records["mask"]):
            for folder, payload in ((perfect, mask), (empty, _encode(Image.new("L", (48, 48)), "PNG"))):
                path = folder / output_key("masks", image_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(payload)
    good = evaluate_predictions(data, "test", str(perfect)).metrics
    assert good["s_measure"] == pytest.approx(1.0) and good["mae"] == 0.0 and good["num_images"] == 4
    bad = evaluate_predictions(data, "test", str(empty)).metrics
    assert bad["s_measure"] < 0.5 and bad["weighted_f"] < 0.05 and bad["mae"] > 0.02


def test_resolve_checkpoint_from_run_folder(tmp_path, adapter):
    run = tmp_path / "run"
    for name, score in (("checkpoint_a", 0.5), ("checkpoint_b", 0.7)):
        (run / name).mkdir(parents=True)
        (run / name / "adapter.safetensors").write_bytes(open(adapter, "rb").read())
        (run / name / "metrics.json").write_text(f'{{"s_measure": {score}}}')
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    assert resolve_adapter(str(run)).endswith("checkpoint_b/adapter.safetensors")
    assert resolve_adapter(str(run / "checkpoint_a")).endswith("checkpoint_a/adapter.safetensors")
    with pytest.raises(FileNotFoundError, match="no adapter checkpoint"):
        resolve_adapter(str(tmp_path))


def test_no_argument_run_uses_the_embedded_default(ray_local, tmp_path, monkeypatch, capsys):
    """`python jobs/segment.py` segments the synthetic test split with ./runs/local-tiny."""
    from samadapter.train.config import DataConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert segment_main(["--no-progress"]) == 2  # nothing trained yet: says what to do
    assert "python jobs/train.py" in capsys.readouterr().err

    prepare_dataset(synthetic_listing(0, 5, size=256, seed=0), DataConfig().dataset_uri(), progress=False)
    ckpt = tmp_path / "runs" / "local-tiny" / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    build_model("tiny").save_adapter(str(ckpt / "adapter.safetensors"))
    (ckpt / "metrics.json").write_text('{"s_measure": 0.5}')
    assert segment_main(["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "overlays:" in out and "masks:" in out
    overlays = tmp_path / "outputs" / "segment-local-tiny" / "overlays"
    assert len(list(overlays.iterdir())) == 5
    im = Image.open(next(overlays.iterdir()))
    assert im.size == (512, 256)  # image | overlay
