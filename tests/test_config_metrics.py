"""Config recipes and overrides, losses, COD metrics, the lr schedule."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from samadapter.metrics import CODMetrics, image_scores
from samadapter.train.config import ConfigError, TrainConfig
from samadapter.train.losses import segmentation_loss, soft_iou_loss
from samadapter.train.loop import lr_factor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_every_recipe_parses(path):
    cfg = TrainConfig.from_yaml(path)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_no_argument_train_job_uses_the_local_tiny_recipe():
    from samadapter.jobs import train as job

    cfg = job.build_config(job.parse_args([]))
    assert cfg == TrainConfig.from_yaml(os.path.join(ROOT, "configs", "local-tiny.yaml"))
    assert cfg.model.arch == "tiny" and cfg.data.dataset is None and cfg.run.workers == 2


def test_paper_recipe_values():
    cfg = TrainConfig.from_yaml(os.path.join(ROOT, "configs", "cod10k-vit-h.yaml"))
    assert (cfg.model.arch, cfg.model.img_size) == ("vit_h", 1024)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.epochs) == (2e-4, 1e-7, 20)
    assert cfg.optim.schedule == "cosine" and cfg.data.hflip and cfg.data.resize_mode == "squash"
    # the paper's global batch of 8 (2 per GPU x 4 GPUs), here on every GPU of one 8-GPU node
    assert cfg.run.workers * cfg.optim.batch_size == 8 and cfg.run.gpus_per_worker == 1
    assert cfg.run.workers == 8
    assert (cfg.optim.bce_weight, cfg.optim.iou_weight) == (1.0, 1.0)


def test_training_placement_comes_from_the_recipe():
    """The paper recipe's workers go to A100 nodes only, packed; the local default asks for
    no accelerator (it runs on CPUs as before)."""
    from samadapter.train.driver import scaling_config

    sc = scaling_config(TrainConfig.from_yaml(os.path.join(ROOT, "configs", "cod10k-vit-h.yaml")).run)
    assert sc.accelerator_type == "A100" and sc.placement_strategy == "PACK"
    assert sc.total_resources["GPU"] == 8 and sc.total_resources["accelerator_type:A100"] > 0  # every GPU of one p4d
    local = scaling_config(TrainConfig.from_yaml(os.path.join(ROOT, "configs", "local-tiny.yaml")).run)
    assert local.accelerator_type is None and not local.use_gpu
    assert not any(k.startswith("accelerator_type") for k in local.total_resources)
    with pytest.raises(ConfigError, match="needs GPUs"):
        TrainConfig().with_overrides(["run.accelerator_type=A100"])
    with pytest.raises(ConfigError, match="placement_strategy"):
        TrainConfig().with_overrides(["run.placement_strategy=RANDOM"])


def test_overrides_parse_types_and_name_the_fix():
    cfg = TrainConfig().with_overrides(["optim.lr=1e-4", "run.workers=3", "model.overrides.img_size=128", "data.hflip=false"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.run.workers == 3 and cfg.model.img_size == 128 and cfg.data.hflip is False
    with pytest.raises(ConfigError, match="optim has no key 'learning_rate'"):
        TrainConfig().with_overrides(["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        TrainConfig().with_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match="model.overrides.*unknown architecture overrides"):
        TrainConfig().with_overrides(["model.overrides.img_sz=3"])
    with pytest.raises(ConfigError, match="run.workers must be >= 1"):
        TrainConfig().with_overrides(["run.workers=0"])
    with pytest.raises(ConfigError, match="is not an int"):
        TrainConfig().with_overrides(["run.workers=two"])
    with pytest.raises(ConfigError, match=r"unknown keys \['optimizer'\] in the config; known: \['data', 'model'"):
        TrainConfig.from_dict({"optimizer": {}})


def test_a_run_config_written_by_an_earlier_version_still_loads():
    # run.fail_at_epoch / run.fail_rank were a test hook in the schema (now an env var the
    # worker reads); the config.yaml of an earlier run still has them
    old = TrainConfig().to_dict()
    old["run"].update(fail_at_epoch=None, fail_rank=1)
    assert TrainConfig.from_dict(old) == TrainConfig()
    with pytest.raises(ConfigError, match=r"unknown keys \[.fail_rank.\] in optim"):
        TrainConfig.from_dict({"optim": {"fail_rank": 1}})  # retired from run only


def test_cosine_schedule_endpoints():
    assert lr_factor(0.0, 2e-4, 1e-7, "cosine") == pytest.approx(1.0)
    assert lr_factor(1.0, 2e-4, 1e-7, "cosine") * 2e-4 == pytest.approx(1e-7)
    assert lr_factor(0.5, 2e-4, 0.0, "cosine") == pytest.approx(0.5)
    assert lr_factor(0.7, 2e-4, 0.0, "constant") == 1.0


def test_losses():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 50
    assert soft_iou_loss(perfect, target) < 1e-6
    assert segmentation_loss(perfect, target) < 1e-6
    assert soft_iou_loss(-perfect, target) > 0.99
    # BCE + IoU at 1:1
    logits = torch.randn(2, 1, 8, 8)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert segmentation_loss(logits, target) == pytest.approx((bce + soft_iou_loss(logits, target)).item(), rel=1e-6)


def _gt(h=48, w=64):
    gt = np.zeros((h, w), np.uint8)
    gt[10:30, 20:50] = 1
    return gt


def test_metrics_perfect_and_empty_predictions():
    gt = _gt()
    perfect = image_scores(gt.astype(np.float32), gt)
    assert perfect["s"] == pytest.approx(1.0) and perfect["mae"] == 0.0 and perfect["wf"] == pytest.approx(1.0)
    empty = image_scores(np.zeros_like(gt, dtype=np.float32), gt)
    assert empty["s"] < 0.5 and empty["mae"] == pytest.approx(gt.mean()) and empty["wf"] < 0.01


def test_bool_and_255_ground_truth_agree():
    # pysodmetrics reads gt > 128: a bool or 0/1 gt must be converted, not passed through.
    gt = _gt()
    pred = np.random.default_rng(0).random(gt.shape).astype(np.float32)
    a = image_scores(pred, gt.astype(bool))
    b = image_scores(pred, gt * 255)
    c = image_scores((pred * 255).round().astype(np.uint8), gt)
    assert a["s"] == b["s"] == c["s"] and a["mae"] == b["mae"]


def test_merged_shares_equal_one_pass():
    """Workers' per-image scores merged (as validation gathers them) equal one pass over
    all images, also for unequal shares, where averaging the shares' results would not."""
    import pickle

    rng = np.random.default_rng(1)
    preds = [rng.random((32, 40)).astype(np.float32) ** (i + 1) for i in range(5)]
    gts = [(rng.random((32, 40)) > 0.3 + 0.1 * i).astype(np.uint8) for i in range(5)]
    whole = CODMetrics()
    for p, g in zip(preds, gts):
        whole.add(p, g)
    a, b = CODMetrics(), CODMetrics()
    for i, (p, g) in enumerate(zip(preds, gts)):
        (a if i == 0 else b).add(p, g)  # shares of 1 and 4 images
    merged = CODMetrics()
    for share in (a, b):
        merged.extend(pickle.loads(pickle.dumps(share.scores)))  # as all_gather_object ships them
    assert merged.results() == pytest.approx(whole.results())
    naive = {k: (a.results()[k] + b.results()[k]) / 2 for k in ("s_measure", "mae")}
    assert naive["mae"] != pytest.approx(whole.results()["mae"])
    with pytest.raises(ValueError, match="differ in size"):
        image_scores(preds[0], gts[0][:10])


def test_a_recipe_that_cannot_be_read_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"--config nope.yaml: no such file; the recipes in configs/: .*local-tiny.yaml"):
        TrainConfig.from_yaml("nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [\n")
    with pytest.raises(ConfigError, match=f"--config {bad}: "):
        TrainConfig.from_yaml(str(bad))
    bad.write_text("optim:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=f"{bad}: unknown keys \\[.learning_rate.\\] in optim"):
        TrainConfig.from_yaml(str(bad))


def test_resume_without_a_run_is_an_error_before_ray_starts(tmp_path):
    from samadapter.train.driver import run_training

    cfg = TrainConfig().with_overrides([f"run.storage={tmp_path}", "run.name=nothing"])
    with pytest.raises(ConfigError, match="no run 'nothing'"):  # the fast tier refuses ray.init (conftest)
        run_training(cfg, resume=True, progress=False)


def test_the_train_epoch_benchmark_trains_what_it_says(monkeypatch):
    """`jobs/benchmark.py train-epoch` builds its dataset and run as asked and turns the run's
    metrics lines into its rows (the rows of a real run: tests/test_train.py)."""
    import ray

    from samadapter.bench.train_epoch import bench_train_epoch
    from samadapter.checkpoints import append_metrics_line
    from samadapter.data.records import read_dataset_info
    from samadapter.train import driver

    seen = {}

    def fake_run(cfg, progress):  # records its config and writes the lines a 1-epoch run writes
        seen["cfg"], seen["splits"] = cfg, read_dataset_info(cfg.data.dataset)["splits"]
        uri = os.path.join(cfg.run.storage, cfg.run.name)
        append_metrics_line(uri, {"epoch": 0, "phase": "before training", "val_rows_read": 6, "val_seconds": 0.5,
                                  "s_measure": 0.4})
        append_metrics_line(uri, {"epoch": 1, "phase": "resumed"})
        append_metrics_line(uri, {"epoch": 1, "phase": "validation", "val_rows_read": 6, "val_seconds": 0.4,
                                  "train_seconds": 2.0, "images_per_s": 8.0, "s_measure": 0.5})
        return type("Outcome", (), {"run_uri": uri})

    monkeypatch.setattr(driver, "run_training", fake_run)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    rows = bench_train_epoch("tiny", 64, workers=2, train_rows=16, val_rows=6, epochs=1, batch_size=4)
    cfg = seen["cfg"]
    assert (cfg.run.workers, cfg.optim.epochs, cfg.optim.batch_size, cfg.run.val_every) == (2, 1, 4, 1)
    assert cfg.model.arch == "tiny" and cfg.model.overrides["img_size"] == 64
    assert {k: int(v) for k, v in seen["splits"].items()} == {cfg.data.train_split: 16, cfg.data.val_split: 6}
    assert [(r["epoch"], r["val_rows_read"], r["train_seconds"]) for r in rows] == [(0, 6, None), (1, 6, 2.0)]
    assert all((r["workers"], r["train_rows"], r["val_rows"]) == (2, 16, 6) for r in rows)


def test_metrics_lines_of_work_a_restart_threw_away_are_not_read(tmp_path):
    """A group that went back to epoch 1's checkpoint redid epoch 2: the summary and the
    curves read the redone epoch, not the abandoned one; the file keeps every line."""
    import json

    from samadapter.checkpoints import METRICS_FILE, append_metrics_line, read_metrics_lines

    run = str(tmp_path / "run")
    os.makedirs(run)
    written = [{"phase": "before training", "epoch": 0}, {"phase": "step", "epoch": 1, "global_step": 5},
               {"phase": "validation", "epoch": 1, "s_measure": 0.5}, {"phase": "step", "epoch": 2, "global_step": 10},
               {"phase": "validation", "epoch": 2, "s_measure": 0.6},  # its checkpoint not registered before the loss
               {"phase": "resumed", "epoch": 1}, {"phase": "step", "epoch": 2, "global_step": 10},
               {"phase": "validation", "epoch": 2, "s_measure": 0.7},
               {"phase": "resumed", "epoch": 2}, {"phase": "validation", "epoch": 3, "s_measure": 0.8}]  # --resume
    append_metrics_line(run, *written)
    lines = read_metrics_lines(run)
    assert [(r["phase"], r["epoch"], r.get("s_measure")) for r in lines if r["phase"] in ("validation", "resumed")] == [
        ("validation", 1, 0.5), ("resumed", 1, None), ("validation", 2, 0.7), ("resumed", 2, None), ("validation", 3, 0.8)]
    assert [r["global_step"] for r in lines if r["phase"] == "step"] == [5, 10]
    assert len(open(os.path.join(run, METRICS_FILE)).read().splitlines()) == len(written)  # nothing lost
    # a group that started again from nothing (no checkpoint yet): only the new start counts
    restarted = str(tmp_path / "restarted")
    os.makedirs(restarted)
    append_metrics_line(restarted, {"phase": "before training", "epoch": 0, "s_measure": 0.3},
                        {"phase": "validation", "epoch": 1, "s_measure": 0.4},
                        {"phase": "before training", "epoch": 0, "s_measure": 0.31},
                        {"phase": "validation", "epoch": 1, "s_measure": 0.45})
    assert [(r["phase"], r["s_measure"]) for r in read_metrics_lines(restarted)] == [("before training", 0.31),
                                                                                     ("validation", 0.45)]
    assert json.loads(open(os.path.join(restarted, METRICS_FILE)).readline())["s_measure"] == 0.3
