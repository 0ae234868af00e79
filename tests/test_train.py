"""Training on a local Ray: S3 storage, resume, worker failure, DDP replicas in sync."""

from __future__ import annotations

import json

import pytest
import torch

from samadapter import build_model
from samadapter import storage
from samadapter.data.prepare import prepare_dataset
from samadapter.data.sources import synthetic_listing
from samadapter.train.config import TrainConfig
from samadapter.train.loop import INJECT_FAILURE
from samadapter.checkpoints import read_metrics_lines

from .conftest import RAY_WORKER_ENV

# the "train" group: under -n 2, Train runs one after another in one process, not side by side
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420), pytest.mark.xdist_group("train")]

# conftest's RAY_WORKER_ENV, in every worker of the shared Ray: rank 1 of the run named "faulty"
# raises once, in its second epoch
assert RAY_WORKER_ENV == {INJECT_FAILURE: "faulty:1:1"}

SIZE = 128  # model input and scene size for tests (tokens 8 x 8)


def _config(dataset, storage_uri, name, **changes):
    sets = [
        f"data.dataset={dataset}",
        f"run.storage={storage_uri}",
        f"run.name={name}",
        f"model.overrides.img_size={SIZE}",
        "optim.epochs=2",
        "optim.batch_size=4",
        "run.workers=2",
        "run.cpus_per_worker=0.5",
        "run.log_every=5",
    ] + [f"{k}={v}" for k, v in changes.items()]
    return TrainConfig().with_overrides(sets)


@pytest.fixture(scope="module")
def s3_dataset(s3_server):
    uri = "s3://test-bucket/datasets/train-synth"
    prepare_dataset(synthetic_listing(32, 8, size=SIZE, seed=3), uri, progress=False)
    return uri


def _phases(lines, phase):
    return [r for r in lines if r.get("phase") == phase]


def test_a_run_on_s3_survives_a_worker_failure_is_tracked_in_mlflow_and_resumes(s3_server, ray_local, s3_dataset,
                                                                                mlflow_server, tmp_path):
    """Two workers, runs in the bucket, a tracking server: rank 1 fails once in epoch 2 (after
    its first step) and the group restarts from epoch 1's checkpoint; each validation is logged
    once; checkpoints, metrics, config and curves land in the bucket; ``--resume`` with one
    more epoch continues the same run and the same MLflow run. (One test for what were four:
    each Ray Train run costs ~15 s of actor start-ups on 2 cores.)"""
    import yaml
    from mlflow.tracking import MlflowClient

    from samadapter.bench.train_epoch import epoch_rows
    from samadapter.modeling import build_from_adapter
    from samadapter.train.driver import run_training

    runs = "s3://test-bucket/runs"
    tracked = {"optim.lr": 2e-3, "run.max_failures": 2, "run.tracking_uri": mlflow_server, "run.log_every": 2}
    cfg = _config(s3_dataset, runs, "faulty", **tracked)  # RAY_WORKER_ENV: rank 1 of "faulty" fails in epoch 2
    outcome = run_training(cfg, progress=False)
    assert not outcome.resumed
    vals = outcome.validations
    assert [v["epoch"] for v in vals] == [1, 2]
    assert vals[1]["train_loss"] < vals[0]["train_loss"]  # loss decreases
    assert all(v["replicas_in_sync"] for v in vals)
    assert all(v["num_images"] == 8 for v in vals)  # the whole validation split, gathered
    assert all(v["val_rows_read"] == 8 for v in vals) and outcome.before["val_rows_read"] == 8  # each row once, not 2 x 8
    assert all(v["train_seconds"] > 0 and v["val_seconds"] > 0 for v in vals)

    # Worker 1 raised in the second epoch; the group restarted from the checkpoint of epoch 1
    # instead of from scratch.
    lines = read_metrics_lines(outcome.run_uri)
    assert [r["epoch"] for r in _phases(lines, "resumed")] == [1]
    assert [r["epoch"] for r in _phases(lines, "validation")] == [1, 2]
    assert len(_phases(lines, "before training")) == 1
    # `jobs/benchmark.py train-epoch` reads its rows from these lines: each validation read
    # the split's 8 rows once in all, not workers x rows
    rows = epoch_rows(lines, workers=2, train_rows=32, val_rows=8)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(r["val_rows_read"] == r["val_rows"] == 8 for r in rows)
    assert rows[0]["train_seconds"] is None and all(r["train_seconds"] > 0 and r["val_seconds"] > 0 for r in rows[1:])

    # Checkpoint, metrics, config and curves land in the bucket.
    assert outcome.best_checkpoint.startswith("s3://test-bucket/runs/faulty/checkpoint_")
    fs, _ = storage.fsspec_filesystem(runs)
    keys = [k.split("/faulty/", 1)[1] for k in fs.find("test-bucket/runs/faulty")]
    assert {"metrics.jsonl", "config.yaml", "curves.png"} <= set(keys)
    assert any(k.endswith("/adapter.safetensors") for k in keys)
    assert any(k.endswith("/train_state.pt") for k in keys)
    written = TrainConfig.from_dict(yaml.safe_load(storage.read_bytes(storage.join(outcome.run_uri, "config.yaml"))))
    assert written.data.dataset == s3_dataset and written.run.storage == runs
    assert written.optim == cfg.optim and written.model == cfg.model
    best = json.loads(storage.read_bytes(storage.join(outcome.best_checkpoint, "metrics.json")))
    top = max(_phases(lines, "validation"), key=lambda r: r["s_measure"])
    assert (best["epoch"], best["s_measure"]) == (top["epoch"], top["s_measure"])
    # The adapter loads onto the same (random, seeded) base from the bucket.
    model = build_model("tiny", img_size=SIZE, adapter_checkpoint=outcome.best_adapter)
    assert model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 1, SIZE, SIZE)

    # Against the tracking server: params, a metric point per validation (the restart logged
    # into the same MLflow run, each validation once), the loss per logged step, the best
    # adapter as an artifact that loads.
    client = MlflowClient(mlflow_server)
    run = client.get_run(outcome.tracking_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "faulty"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr) and run.data.params["model.arch"] == "tiny"
    assert run.data.params["model.overrides.img_size"] == str(SIZE) and run.data.params["task"] == "camouflage"
    assert run.data.tags["task"] == "camouflage" and run.data.tags["knowledge"].startswith("fft_highpass")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "s_measure")] == [0, 1, 2]
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 2
    adapter = client.download_artifacts(run.info.run_id, "best/adapter.safetensors", str(tmp_path / "download"))
    assert build_from_adapter(adapter).img_size == SIZE
    curves = storage.read_bytes(storage.join(outcome.run_uri, "curves.png"))
    assert curves.startswith(b"\x89PNG")

    # Resume: same name, one more epoch -> starts at the saved epoch 2, in the same MLflow run.
    resumed = run_training(_config(s3_dataset, runs, "faulty", **tracked, **{"optim.epochs": 3}), resume=True,
                           progress=False)
    assert resumed.resumed and resumed.tracking_run_id == outcome.tracking_run_id
    lines = read_metrics_lines(resumed.run_uri)
    assert [r["epoch"] for r in _phases(lines, "resumed")] == [1, 2]
    assert [r["epoch"] for r in _phases(lines, "validation")] == [1, 2, 3]
    assert len(_phases(lines, "before training")) == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "s_measure")] == [0, 1, 2, 3]
    assert storage.read_bytes(storage.join(resumed.run_uri, "curves.png")) != curves  # redrawn


def test_sam2_tiny_learns_and_the_segment_job_runs_its_adapter(ray_local, tmp_path):
    """SAM2-Adapter through the same jobs: configs/local-sam2-tiny.yaml (a random SAM 2 base)
    gains >= 0.2 S-alpha over its value before training in a short run, and the segment job
    runs the run's adapter unchanged, a mask per image at its own size."""
    from PIL import Image

    from samadapter.jobs.segment import main as segment
    from samadapter.train.driver import run_training

    data = str(tmp_path / "scenes")
    prepare_dataset(synthetic_listing(128, 8, size=112, seed=1), data, progress=False)
    cfg = TrainConfig.from_yaml("configs/local-sam2-tiny.yaml").with_overrides([
        f"data.dataset={data}", f"run.storage={tmp_path}", "run.name=sam2", f"model.overrides={{img_size: {SIZE}}}",
        "optim.epochs=3", "optim.batch_size=2", "run.log_every=50"])  # 32 steps an epoch
    outcome = run_training(cfg, progress=False)
    best = max(r["s_measure"] for r in outcome.validations)
    assert best - outcome.before["s_measure"] >= 0.2, (outcome.before, outcome.validations)
    # tracked by default in a local MLflow store beside the runs (no server), its
    # artifacts beside the store, not in ./mlruns
    assert outcome.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert list((tmp_path / "mlartifacts").rglob("adapter.safetensors"))
    out = str(tmp_path / "masks")
    assert segment(["--input", data, "--split", "test", "--output", out, "--checkpoint", outcome.run_uri,
                    "--no-progress"]) == 0
    masks = sorted((tmp_path / "masks" / "masks").rglob("*.png"))
    assert len(masks) == 8 and all(Image.open(p).size == (112, 112) for p in masks)
