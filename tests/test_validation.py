"""Validation as a split dataset: uint8 inputs, the same scores as jobs/evaluate.py, every
row once across workers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from samadapter import build_model
from samadapter.data.prepare import prepare_dataset
from samadapter.data.reading import decode_for_validation, iter_records, unpack_ground_truth
from samadapter.constants import PIXEL_MEAN, PIXEL_STD
from samadapter.data.transforms import decode_sample, prepare_uint8
from samadapter.ops import to_model_input
from samadapter.train.losses import segmentation_loss
from samadapter.train.validation import score_batches

SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Synthetic scenes cropped to 96 x 64 (pad mode pads them: the valid area matters)."""
    from PIL import Image

    from samadapter.data.sources import paired_listing
    from samadapter.data.synthetic import make_scene

    root = tmp_path_factory.mktemp("val")
    listings = []
    for split, start, count in (("train", 0, 4), ("test", 4, 9)):  # 9: an odd split, which an equal split would cut
        (root / split / "im").mkdir(parents=True)
        (root / split / "gt").mkdir(parents=True)
        for i in range(start, start + count):
            image, mask = make_scene(5, i, 96)
            Image.fromarray(image[:, 16:80]).save(root / split / "im" / f"s{i:03d}.png")
            Image.fromarray(mask[:, 16:80].astype(np.uint8) * 255).save(root / split / "gt" / f"s{i:03d}.png")
        listings.append(paired_listing(str(root / split / "im"), str(root / split / "gt"), split))
    listings[0].candidates += listings[1].candidates
    uri = str(root / "data")
    prepare_dataset(listings[0], uri, progress=False)
    return uri


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    path = str(tmp_path_factory.mktemp("ckpt") / "adapter.safetensors")
    build_model("tiny", img_size=SIZE).save_adapter(path)
    return path


def _samples(dataset, n=4):
    rows = next(iter_records(dataset, "train", columns=["image", "mask"], batch_size=n))
    return [decode_sample(i, m, require_mask=True) for i, m in zip(rows["image"], rows["mask"])]


@pytest.mark.parametrize("mode", ["squash", "pad"])
def test_uint8_inputs_give_the_float_paths_loss(dataset, mode):
    """uint8 rows normalised on the device give the loss of float inputs normalised on the host."""
    torch.manual_seed(0)
    model = build_model("tiny", img_size=SIZE)
    samples = _samples(dataset)
    uint8s = [prepare_uint8(d.image, SIZE, mode, d.mask, flip=True) for d in samples]
    mean, std = (np.asarray(v, np.float32).reshape(3, 1, 1) for v in (PIXEL_MEAN, PIXEL_STD))
    x_float = torch.from_numpy(np.stack([(u[0].transpose(2, 0, 1).astype(np.float32) - mean) / std for u in uint8s]))
    y = torch.from_numpy(np.stack([u[1] for u in uint8s]))[:, None].float()
    x_uint8 = to_model_input(np.stack([u[0] for u in uint8s]), model)
    assert x_uint8.dtype == torch.float32 and torch.allclose(x_uint8, x_float, atol=1e-5)
    loss_float = segmentation_loss(model(x_float), y, 1.0, 1.0)
    loss_uint8 = segmentation_loss(model(x_uint8), y, 1.0, 1.0)
    assert abs(loss_float.item() - loss_uint8.item()) < 1e-5


def test_packed_ground_truth_round_trips(dataset):
    rows = next(iter_records(dataset, "test", columns=["image_id", "image", "mask"], batch_size=3))
    out = decode_for_validation({k: np.asarray(v, dtype=object) for k, v in rows.items()}, SIZE, "squash")
    for i, (image, mask) in enumerate(zip(rows["image"], rows["mask"])):
        d = decode_sample(image, mask, require_mask=True)
        gt = unpack_ground_truth(out["gt_bits"][i], int(out["gt_h"][i]), int(out["gt_w"][i]))
        assert out["ok"][i] and np.array_equal(gt, d.mask)
        assert len(out["gt_bits"][i]) == -(-d.mask.size // 8)  # a bit a pixel
    assert out["images"].dtype == np.uint8 and out["images"].shape == (3, SIZE, SIZE, 3)


def test_a_row_that_fails_to_decode_is_kept_and_counted():
    out = decode_for_validation({"image_id": np.asarray(["a"], object), "image": np.asarray([b"not an image"], object),
                                 "mask": np.asarray([b"x"], object)}, SIZE, "squash")
    assert not out["ok"][0] and len(out["image_id"]) == 1


@pytest.mark.parametrize("mode", ["squash", "pad"])
def test_validation_scores_equal_jobs_evaluate(dataset, checkpoint, mode):
    """The training loop's validation (decoded batches as the Ray Data stage makes them,
    scored by score_batches) and jobs/evaluate.py (evaluate_checkpoint: its own reading,
    thumbnails, skipped rows) score a checkpoint the same."""
    from samadapter.evaluate.evaluation import evaluate_checkpoint
    from samadapter.modeling import build_from_adapter

    reference = evaluate_checkpoint(dataset, "test", checkpoint, batch_size=3, resize_mode=mode, keep_examples=False)
    model = build_from_adapter(checkpoint)
    batches = (decode_for_validation({k: np.asarray(v, dtype=object) for k, v in rows.items()}, SIZE, mode)
               for rows in iter_records(dataset, "test", columns=["image_id", "image", "mask"], batch_size=3))
    metrics, bad, rows = score_batches(model, batches, mode, bf16=False)
    got = metrics.results()
    assert rows == 9 and bad == 0 and got["num_images"] == reference.metrics["num_images"] == 9
    for k in ("s_measure", "e_measure", "weighted_f", "mae"):
        assert got[k] == pytest.approx(reference.metrics[k], abs=1e-5), k


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_validation_row_is_read_once_across_two_workers(ray_local, dataset):
    """The DataConfig the trainer uses: the validation split's two streams together hold
    each row exactly once (Ray's default equal split may drop rows)."""
    from samadapter.train.validation import TRAIN, VAL, train_data_config, validation_dataset

    val = validation_dataset(dataset, "test", SIZE, "squash", decode_batch=3)
    train = validation_dataset(dataset, "train", SIZE, "squash")
    splits = train_data_config().configure({TRAIN: train, VAL: val}, 2, None, None)
    seen = [[], []]

    def consume(i):
        for batch in splits[i][VAL].iter_batches(batch_size=2, batch_format="numpy"):
            seen[i] += list(batch["image_id"])

    for _ in range(2):  # two validations: each reads the split once
        seen = [[], []]
        threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        ids = seen[0] + seen[1]
        assert len(ids) == 9 and len(set(ids)) == 9


def test_one_inference_path_keeps_order_failed_rows_and_thumbnails(dataset, checkpoint):
    from samadapter.evaluate.evaluation import THUMB_HEIGHT, evaluate_checkpoint, example_grid
    from samadapter.evaluate.predict import predict_batches, predict_split
    from samadapter.modeling import build_from_adapter

    model = build_from_adapter(checkpoint)
    rows = next(iter_records(dataset, "test", columns=["image_id", "image", "mask"], batch_size=3))
    rows = {k: list(v) for k, v in rows.items()}
    rows["image_id"].insert(1, "broken")
    rows["image"].insert(1, b"not an image")
    rows["mask"].insert(1, b"x")
    batch = decode_for_validation(rows, SIZE, "squash", thumb_height=20)
    model.train()
    got = list(predict_batches(model, [batch], "squash", bf16=False))
    assert [p.image_id for p in got] == rows["image_id"]  # in order, the failed row in its place
    assert got[1].prob is None and got[1].status == "not_an_image" and got[1].thumb is None
    for p in got[:1] + got[2:]:
        assert p.status == "ok" and p.prob.shape == p.gt.shape and p.thumb.shape[0] == 20
        assert p.prob.dtype == np.float32 and 0 <= p.prob.min() and p.prob.max() <= 1
    assert model.training  # run in eval mode, then its mode restored
    split = list(predict_split(model, dataset, "test", batch_size=4, thumb_height=THUMB_HEIGHT))
    assert len(split) == 9 and all(p.thumb.shape[0] == THUMB_HEIGHT for p in split)
    ev = evaluate_checkpoint(dataset, "test", checkpoint, batch_size=4)
    assert len(ev.examples) == 9 and example_grid(ev).shape[1] >= 3 * THUMB_HEIGHT // 2
