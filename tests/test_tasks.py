"""Tasks (samadapter/tasks.py): metrics against hand-computed values, losses, checkpoint
selection in the task's direction, the recipe's task field, the shadow/polyp converters, and
jobs/evaluate.py's columns."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from samadapter.metrics import BERMetrics, OverlapMetrics, format_table
from samadapter.tasks import TASKS, get_task
from samadapter.train.config import ConfigError, TrainConfig
from samadapter.train.losses import balanced_bce_loss, segmentation_loss, soft_dice_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ metrics
def test_ber_pooled_and_per_image_against_hand_counts():
    # image 1: 4 shadow pixels, 3 found; 4 non-shadow, 1 false alarm
    gt1 = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.uint8)
    p1 = np.array([[0.9, 0.8, 0.7, 0.2], [0.6, 0.1, 0.0, 0.4]], np.float32)
    # image 2: 1 shadow pixel, missed; 7 non-shadow, all right (uint8 prediction, 0/255 gt)
    gt2 = np.array([[255, 0, 0, 0], [0, 0, 0, 0]], np.uint8)
    p2 = np.zeros((2, 4), np.uint8)
    m = BERMetrics()
    m.add(p1, gt1)
    m.add(p2, gt2)
    assert m.scores[0] | {} == {**m.scores[0], "tp": 3, "tn": 3, "pos": 4, "neg": 4}
    r = m.results()
    # pooled: TP 3 of 5 shadow pixels, TN 10 of 11 non-shadow pixels
    assert r["shadow_error"] == pytest.approx(100 * (1 - 3 / 5))
    assert r["non_shadow_error"] == pytest.approx(100 * (1 - 10 / 11))
    assert r["ber"] == pytest.approx(50 * ((1 - 3 / 5) + (1 - 10 / 11)))
    # per image: (25 % + 25 %) / 2 = 25 and (100 % + 0 %) / 2 = 50 -> 37.5
    assert r["ber_per_image"] == pytest.approx(37.5)
    assert r["num_images"] == 2


def test_ber_of_perfect_and_inverted_predictions():
    gt = (np.random.default_rng(0).random((16, 16)) > 0.6).astype(np.uint8)
    perfect, inverted = BERMetrics(), BERMetrics()
    perfect.add(gt.astype(np.float32), gt)
    inverted.add(1.0 - gt.astype(np.float32), gt)
    assert perfect.results()["ber"] == 0 and perfect.results()["ber_per_image"] == 0
    assert inverted.results()["ber"] == 100 and inverted.results()["shadow_error"] == 100
    # an image without shadow counts its non-shadow error only
    empty = BERMetrics()
    empty.add(np.array([[0.9, 0.1]]), np.array([[0, 0]]))
    assert empty.results()["ber_per_image"] == 50 and empty.results()["ber"] == 50


def test_dice_and_iou_are_per_image_means():
    gt = np.array([[1, 1, 0, 0]], np.uint8)
    m = OverlapMetrics()
    m.add(np.array([[1.0, 0.0, 1.0, 0.0]]), gt)  # TP 1, FP 1, FN 1: Dice 2/4, IoU 1/3
    m.add(np.array([[0.0, 0.0, 0.0, 0.0]]), np.zeros((1, 4)))  # both empty: 1, 1
    r = m.results()
    assert r["dice"] == pytest.approx((0.5 + 1) / 2) and r["iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert r["mae"] == pytest.approx((0.5 + 0) / 2)
    with pytest.raises(ValueError, match="differ in size"):
        m.add(np.zeros((2, 2)), np.zeros((2, 3)))


def test_task_table_columns():
    table = format_table({"x": {"ber": 1.0, "shadow_error": 2.0, "non_shadow_error": 0.0, "ber_per_image": 1.5,
                                "num_images": 3}}, get_task("shadow").names)
    assert table.splitlines()[0] == "| | BER % | shadow err % | non-shadow err % | BER % (image mean) | images |"


# ------------------------------------------------------------------- losses
def test_balanced_bce_against_a_hand_computed_value():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # 1 positive of 4: w_pos 3/4, w_neg 1/4
    def nll(x, y):
        p = 1 / (1 + math.exp(-x))
        return -math.log(p) if y else -math.log(1 - p)
    expected = (0.75 * nll(2.0, 1) + 0.25 * (nll(-1.0, 0) + nll(0.5, 0) + nll(-3.0, 0))) / 4
    assert balanced_bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert segmentation_loss(logits, target, loss="balanced_bce").item() == pytest.approx(expected, rel=1e-6)


def test_dice_bce_and_bce_iou_against_hand_computed_values():
    logits = torch.tensor([[[[0.0, 1.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    p = [0.5, 1 / (1 + math.exp(-1.0))]
    bce = (-math.log(p[0]) - math.log(1 - p[1])) / 2
    dice = 1 - (2 * p[0] + 1) / (p[0] + p[1] + 1 + 1)
    iou = 1 - p[0] / (p[0] + p[1] + 1 - p[0])
    assert soft_dice_loss(logits, target).item() == pytest.approx(dice, rel=1e-6)
    assert segmentation_loss(logits, target, loss="dice_bce", dice_weight=2.0).item() == pytest.approx(bce + 2 * dice, rel=1e-6)
    assert segmentation_loss(logits, target, loss="bce_iou").item() == pytest.approx(bce + iou, rel=1e-5)


# ------------------------------------------------------------------- config
def test_task_field_of_the_recipe():
    cfg = TrainConfig.from_yaml(os.path.join(ROOT, "configs", "local-tiny-shadow.yaml"))
    assert cfg.task == "shadow" and cfg.loss == "balanced_bce" and "synthetic-shadow-" in cfg.dataset_uri()
    assert TrainConfig().task is None and TrainConfig().task_spec.name == "camouflage" and TrainConfig().loss == "bce_iou"
    polyp = TrainConfig().with_overrides(["task=polyp"])
    assert polyp.loss == "dice_bce" and polyp.with_overrides(["optim.loss=bce_iou"]).loss == "bce_iou"
    assert TrainConfig.from_dict(polyp.to_dict()).task == "polyp"
    with pytest.raises(ConfigError, match="task 'cells'"):
        TrainConfig().with_overrides(["task=cells"])
    with pytest.raises(ConfigError, match="optim.loss 'focal'"):
        TrainConfig().with_overrides(["optim.loss=focal"])
    assert {t.mode for t in TASKS.values()} == {"max", "min"} and get_task("shadow").mode == "min"


def test_training_defaults_to_the_datasets_task(tmp_path, caplog):
    from samadapter.data.prepare import prepare_dataset
    from samadapter.data.sources import synthetic_listing

    data = str(tmp_path / "shadow")
    prepare_dataset(synthetic_listing(2, 1, size=64, seed=1, kind="shadow"), data, progress=False)
    on_data = TrainConfig().with_overrides([f"data.dataset={data}"])
    assert on_data.task is None and on_data.with_task_resolved().task == "shadow"
    assert on_data.with_task_resolved().loss == "balanced_bce"
    with caplog.at_level("WARNING"):
        explicit = on_data.with_overrides(["task=polyp"]).with_task_resolved()
    assert explicit.task == "polyp" and "converted for task 'shadow'; training task 'polyp'" in caplog.text
    # without a dataset: the embedded scenes' kind, else camouflage
    assert TrainConfig().with_overrides(["data.synthetic_kind=polyp"]).with_task_resolved().task == "polyp"
    assert TrainConfig().with_task_resolved().task == "camouflage"
    # a dataset whose source did not say (paired folders, older datasets): camouflage
    assert TrainConfig().with_overrides([f"data.dataset={data}"]).with_task_resolved(None).task == "camouflage"


def test_checkpoint_selection_follows_the_task(tmp_path):
    from samadapter.checkpoints import ADAPTER_FILE, CHECKPOINT_METRICS, best_checkpoint

    def run(name, task, key, scores):
        for i, score in enumerate(scores):
            ckpt = tmp_path / name / f"checkpoint_{i}"
            ckpt.mkdir(parents=True)
            (ckpt / ADAPTER_FILE).write_bytes(b"x")
            (ckpt / CHECKPOINT_METRICS).write_text(json.dumps({"task": task, key: score}))
        return str(tmp_path / name)

    assert best_checkpoint(run("shadow", "shadow", "ber", [9.0, 4.5, 7.0])).endswith("checkpoint_1")  # lower is better
    assert best_checkpoint(run("cod", "camouflage", "s_measure", [0.5, 0.9, 0.7])).endswith("checkpoint_1")
    assert best_checkpoint(run("polyp", "polyp", "dice", [0.8, 0.6, 0.85])).endswith("checkpoint_2")
    legacy = tmp_path / "legacy" / "checkpoint_0"  # records from before tasks: camouflage
    legacy.mkdir(parents=True)
    (legacy / ADAPTER_FILE).write_bytes(b"x")
    (legacy / CHECKPOINT_METRICS).write_text(json.dumps({"s_measure": 0.4}))
    assert best_checkpoint(str(tmp_path / "legacy")).endswith("checkpoint_0")


# --------------------------------------------------------------- converters
def _image(path, fmt, mask=False, size=(24, 20)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(abs(hash(path)) % 2**32)
    if mask:
        a = np.zeros(size[::-1], np.uint8)
        a[4:12, 5:15] = 255
        Image.fromarray(a).save(path, format=fmt)
    else:
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path, format=fmt)


LAYOUTS = {
    "istd": [("train/train_A/{}.png", "train/train_B/{}.png", "PNG", 3), ("test/test_A/{}.png", "test/test_B/{}.png", "PNG", 2)],
    "sbu": [("SBUTrain4KRecoveredSmall/ShadowImages/{}.jpg", "SBUTrain4KRecoveredSmall/ShadowMasks/{}.png", "JPEG", 3),
            ("SBU-Test/ShadowImages/{}.jpg", "SBU-Test/ShadowMasks/{}.png", "JPEG", 2)],
    "kvasir": [("Kvasir-SEG/images/{}.jpg", "Kvasir-SEG/masks/{}.jpg", "JPEG", 20)],
    "cvc": [("CVC-ClinicDB/Original/{}.tif", "CVC-ClinicDB/Ground Truth/{}.tif", "TIFF", 20)],
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_converter_on_its_released_layout(name, tmp_path):
    from samadapter.data.sources import task_listing

    root = tmp_path / name
    expected = {}
    for image_tpl, mask_tpl, fmt, count in LAYOUTS[name]:
        for i in range(count):
            _image(str(root / image_tpl.format(f"img{i}")), fmt)
            _image(str(root / mask_tpl.format(f"img{i}")), "PNG" if mask_tpl.endswith(".png") else fmt, mask=True)
        expected[image_tpl.split("/")[0]] = count
    _image(str(root / LAYOUTS[name][0][1].format("orphan")), "PNG" if LAYOUTS[name][0][1].endswith(".png") else LAYOUTS[name][0][2], mask=True)
    listing = task_listing(name, str(root), test_percent=25)
    splits = {}
    for c in listing.candidates:
        splits[c.split] = splits.get(c.split, 0) + 1
        image, mask = c.load()
        assert Image.open(io.BytesIO(image)).size == (24, 20) and Image.open(io.BytesIO(mask)).size == (24, 20)
    assert [s for _, s, _ in listing.skipped] == ["missing_image"]
    if name in ("istd", "sbu"):
        assert splits == {"train": 3, "test": 2}
    else:  # a stable 25 % by file name
        assert sum(splits.values()) == 20 and 0 < splits["test"] < 12 and set(splits) == {"train", "test"}
        again = task_listing(name, str(root), test_percent=25)
        assert [(c.image_id, c.split) for c in again.candidates] == [(c.image_id, c.split) for c in listing.candidates]


def test_converter_refuses_a_wrong_layout_and_prepares_tiffs(tmp_path):
    from samadapter.data.prepare import prepare_dataset
    from samadapter.data.records import read_dataset_info
    from samadapter.data.sources import task_listing

    _image(str(tmp_path / "wrong" / "pics" / "a.png"), "PNG")
    with pytest.raises(ValueError, match="not a ISTD folder. Expected its released layout: train/train_A"):
        task_listing("istd", str(tmp_path / "wrong"))
    for i in range(4):
        _image(str(tmp_path / "cvc" / "Original" / f"{i}.tif"), "TIFF")
        _image(str(tmp_path / "cvc" / "Ground Truth" / f"{i}.tif"), "TIFF", mask=True)
    out = str(tmp_path / "out")
    prepare_dataset(task_listing("cvc", str(tmp_path / "cvc"), test_percent=50), out, progress=False)
    info = read_dataset_info(out)
    assert sum(info["splits"].values()) == 4 and info["task"] == "polyp"
    env = dict(os.environ, PYTHONPATH=ROOT)
    bad = subprocess.run([sys.executable, "jobs/prepare_data.py", "--source", "sbu", "--input", str(tmp_path / "wrong"),
                          "--output", str(tmp_path / "o2")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a SBU folder" in bad.stderr


# ---------------------------------------------------------------- evaluation
def test_evaluate_prints_the_tasks_columns(tmp_path):
    from samadapter.data.prepare import prepare_dataset
    from samadapter.data.reading import iter_records
    from samadapter.data.sources import synthetic_listing
    from samadapter.segment.layout import output_key

    data = str(tmp_path / "shadow")
    prepare_dataset(synthetic_listing(0, 3, size=64, seed=1, kind="shadow"), data, progress=False)
    preds = tmp_path / "preds"
    for records in iter_records(data, "test", columns=["image_id", "mask"]):
        for image_id, mask in zip(records["image_id"], records["mask"]):
            path = preds / output_key("masks", image_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            inverted = 255 - np.asarray(Image.open(io.BytesIO(mask)).convert("L"))
            Image.fromarray(inverted).save(path)
    env = dict(os.environ, PYTHONPATH=ROOT)
    # no --task: the dataset's (prepare_data recorded "shadow" in its _dataset.json)
    out = subprocess.run([sys.executable, "jobs/evaluate.py", "--dataset", data, "--predictions", str(preds),
                          "--output", str(tmp_path / "report")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "task: shadow" in out.stdout and "| BER % | shadow err % | non-shadow err % |" in out.stdout
    assert "| 100.000 | 100.000 | 100.000 |" in out.stdout  # every pixel inverted
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["task"] == "shadow" and report["ber"] == 100


def test_a_converted_istd_folder_evaluates_with_ber_without_task(tmp_path, caplog):
    """An adapter saved without a task (or for another) on a converted ISTD dataset: the
    dataset's task decides, and a disagreement is one warning naming both."""
    from samadapter.data.prepare import prepare_dataset
    from samadapter.data.sources import task_listing
    from samadapter.evaluate.evaluation import evaluate_checkpoint
    from samadapter.modeling import build_model
    from samadapter.modeling.weights import save_adapter

    for image_tpl, mask_tpl, fmt, count in LAYOUTS["istd"]:
        for i in range(count):
            name = f"{image_tpl.split('/')[0]}{i}"  # (an image id is unique across splits)
            _image(str(tmp_path / "istd" / image_tpl.format(name)), fmt)
            _image(str(tmp_path / "istd" / mask_tpl.format(name)), "PNG", mask=True)
    data = str(tmp_path / "data")
    prepare_dataset(task_listing("istd", str(tmp_path / "istd")), data, progress=False)
    model = build_model("tiny")
    save_adapter(model, str(tmp_path / "plain.safetensors"))
    save_adapter(model, str(tmp_path / "cod.safetensors"), {"task": "camouflage"})
    ev = evaluate_checkpoint(data, "test", str(tmp_path / "plain.safetensors"), keep_examples=False)
    assert ev.task == "shadow" and "ber" in ev.metrics and ev.metrics["num_images"] == 2
    with caplog.at_level("WARNING"):
        ev = evaluate_checkpoint(data, "test", str(tmp_path / "cod.safetensors"), keep_examples=False)
    assert ev.task == "shadow" and "ber" in ev.metrics
    assert "converted for task 'shadow' but" in caplog.text and "trained for 'camouflage'" in caplog.text
    ev = evaluate_checkpoint(data, "test", str(tmp_path / "cod.safetensors"), keep_examples=False, task="polyp")
    assert ev.task == "polyp" and "dice" in ev.metrics
