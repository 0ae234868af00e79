"""Several classes (model.overrides.num_classes, task multiclass): the decoder's first C mask
tokens, the loss and metrics by hand, index masks through the data path and the segment job's
postprocessing. The training run that learns them is in test_submit.py's slow tier."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from samadapter.data.labels import encode_label_png, low_res_labels
from samadapter.data.transforms import BAD_LABELS, decode_sample, resize_mask
from samadapter.metrics import MulticlassMetrics
from samadapter.modeling import build_model
from samadapter.modeling.weights import CheckpointError
from samadapter.train.losses import ce_dice_loss, segmentation_loss

from .conftest import official_sam


def test_c_classes_are_the_first_c_mask_tokens_and_one_class_is_todays_model():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 256, 256)
    one, three = build_model("tiny").eval(), build_model("tiny", num_classes=3).eval()
    with torch.no_grad():
        a, b = one(x), three(x)
        decoder_masks, _ = one.mask_decoder.predict_masks(
            one.image_encoder(x), one.prompt_encoder.get_dense_pe(),
            *(t.expand(2, *t.shape[1:]) for t in one.prompt_encoder(points=None, boxes=None, masks=None)))
    assert a.shape == (2, 1, 256, 256) and b.shape == (2, 3, 256, 256)
    # the same weights: class logits are the tokens' masks, in order (equal to float rounding:
    # one token's matmuls and three's are blocked differently, e.g. with one torch thread)
    torch.testing.assert_close(a, b[:, :1], rtol=0, atol=1e-6)
    assert torch.equal(one.low_res_logits(x), decoder_masks[:, :1].detach())  # SAM's single-mask output
    with pytest.raises(ValueError, match="num_classes 0"):
        build_model("tiny", num_classes=0)


def test_more_classes_than_sams_tokens_start_as_copies(tmp_path):
    path = str(tmp_path / "sam.pth")
    torch.save(official_sam("tiny").state_dict(), path)
    model = build_model("tiny", sam_checkpoint=path, num_classes=6).eval()
    tokens = model.mask_decoder.mask_tokens.weight
    assert tokens.shape[0] == 6 and torch.equal(tokens[4], tokens[0]) and torch.equal(tokens[5], tokens[1])
    with torch.no_grad():
        logits = model.low_res_logits(torch.randn(1, 3, 256, 256))
    assert logits.shape == (1, 6, 64, 64) and torch.allclose(logits[:, 4], logits[:, 0], atol=1e-5)


def test_an_adapter_records_its_classes(tmp_path):
    uri = str(tmp_path / "adapter.safetensors")
    build_model("tiny", num_classes=3).save_adapter(uri)
    assert build_model("tiny", num_classes=3, adapter_checkpoint=uri).num_classes == 3
    with pytest.raises(CheckpointError, match=r"num_classes=3 \(model has 1\)"):
        build_model("tiny", adapter_checkpoint=uri)


def test_the_loss_by_hand():
    # one image of 2 pixels, 2 classes: logits (pixel 0: [0, 1], pixel 1: [2, 0]), targets [1, 0]
    logits = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]]]])
    target = torch.tensor([[[1, 0]]])
    p0 = [1 / (1 + math.e), math.e / (1 + math.e)]          # softmax of pixel 0: classes 0, 1
    p1 = [math.e ** 2 / (1 + math.e ** 2), 1 / (1 + math.e ** 2)]
    ce = (-math.log(p0[1]) - math.log(p1[0])) / 2
    dice0 = (2 * p1[0] + 1) / (p0[0] + p1[0] + 1 + 1)        # class 0 is pixel 1's
    dice1 = (2 * p0[1] + 1) / (p0[1] + p1[1] + 1 + 1)        # class 1 is pixel 0's
    want = ce + (1 - (dice0 + dice1) / 2)
    assert ce_dice_loss(logits, target).item() == pytest.approx(want, rel=1e-6)
    assert segmentation_loss(logits, target[:, None].float(), loss="ce_dice", bce_weight=2.0).item() == \
        pytest.approx(2 * ce + 1 - (dice0 + dice1) / 2, rel=1e-6)


def test_metrics_pool_the_counts_over_the_split():
    m = MulticlassMetrics(3)
    m.add(np.array([[0, 1], [1, 2]]), np.array([[0, 1], [2, 2]]))  # class 2: 1 of 2 found, class 1: 1 false
    m.add(np.array([[0, 0]]), np.array([[0, 0]]))
    r = m.results()
    # pooled: class 0 inter 3 union 3; class 1 inter 1 union 2; class 2 inter 1 union 2
    assert r["iou_0"] == 1.0 and r["iou_1"] == 0.5 and r["iou_2"] == 0.5
    assert r["miou"] == pytest.approx(2 / 3) and r["pixel_accuracy"] == pytest.approx(5 / 6)
    assert m.scores[0]["miou"] == pytest.approx((1 + 0.5 + 0.5) / 3) and r["num_images"] == 2
    m.add(np.zeros((1, 1)), np.zeros((1, 1)))  # classes absent from a whole split are left out of the mean
    assert "iou_3" not in m.results()


def test_index_masks_through_the_data_path():
    labels = np.array([[0, 1, 1, 2], [0, 0, 2, 2], [1, 1, 0, 0]], np.uint8)
    image = Image.fromarray(np.zeros((3, 4, 3), np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    png = encode_label_png(labels)
    assert Image.open(io.BytesIO(png)).mode == "P"
    decoded = decode_sample(buf.getvalue(), png, require_mask=True, num_classes=3)
    assert decoded.ok and np.array_equal(decoded.mask, labels)
    too_few = decode_sample(buf.getvalue(), png, require_mask=True, num_classes=2)
    assert too_few.status == BAD_LABELS and "class 2 in the mask, but there are 2 classes" in too_few.reason
    rgb = io.BytesIO()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(rgb, format="PNG")
    assert decode_sample(buf.getvalue(), rgb.getvalue(), num_classes=3).status == BAD_LABELS
    # nearest neighbour: no class is invented between two others
    assert set(np.unique(resize_mask(labels, 16, "squash", num_classes=3))) == {0, 1, 2}
    assert set(np.unique(resize_mask(labels, 16, "pad", num_classes=3))) == {0, 1, 2}


def test_the_segment_jobs_class_masks_follow_the_logits():
    """The postprocessing of C-class logits: an indexed PNG at the original size, each pixel the
    class whose resized logit is highest (as the two-step torch path: upsample, then argmax)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 16, 16)).astype(np.float32)
    im = low_res_labels(logits, (50, 70), 64)
    assert im.mode == "P" and im.size == (70, 50)
    got = np.asarray(im)
    want = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=(50, 70), mode="bilinear",
                                           align_corners=False)[0].argmax(0).numpy()
    assert got.max() < 3 and (got == want).mean() > 0.97


def test_prepare_data_converts_an_indexed_folder(tmp_path, capsys):
    from samadapter.data.records import read_dataset_info
    from samadapter.jobs.prepare_data import main

    (tmp_path / "imgs").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / f"a{i}.jpg")
        labels = np.zeros((10, 12), np.uint8)
        labels[2:5, 3:9] = i  # a{2} has class 2
        (tmp_path / "labels" / f"a{i}.png").write_bytes(encode_label_png(labels))
    (tmp_path / "classes.txt").write_text("background\nroad\n")
    args = ["--source", "indexed", "--images", str(tmp_path / "imgs"), "--masks", str(tmp_path / "labels"),
            "--split", "train", "--no-progress"]
    assert main(args + ["--output", str(tmp_path / "out"), "--classes", str(tmp_path / "classes.txt")]) == 0
    info = read_dataset_info(str(tmp_path / "out"))
    assert info["task"] == "multiclass" and info["classes"] == ["background", "road"] and info["splits"] == {"train": 2}
    assert "bad_labels" in capsys.readouterr().out  # a2's class 2 is past the list
    assert main(args + ["--output", str(tmp_path / "o2")]) == 2  # no --classes
    assert "--classes FILE" in capsys.readouterr().err
