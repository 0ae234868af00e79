"""ONNX export (jobs/export.py, samadapter/export.py): one graph from uint8 images to the
decoder's low-resolution logits, checked in onnxruntime against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samadapter.data.transforms import low_res_mask
from samadapter.export import random_images
from samadapter.jobs.export import main
from samadapter.modeling import build_from_adapter, build_model
from samadapter.ops import to_model_input

ort = pytest.importorskip("onnxruntime")


def _adapter(tmp_path, arch="tiny", **overrides):
    torch.manual_seed(0)
    model = build_model(arch, **overrides).eval()
    with torch.no_grad():  # a trained-looking adapter: not the init
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    uri = str(tmp_path / "adapter.safetensors")
    model.save_adapter(uri)
    return uri


def test_export_of_tiny_runs_in_onnxruntime_like_pytorch(tmp_path, capsys):
    adapter, path = _adapter(tmp_path), str(tmp_path / "out" / "tiny.onnx")
    assert main(["--checkpoint", adapter, "--output", path]) == 0
    out = capsys.readouterr().out
    assert "max abs difference" in out and "ok; output (3, 1, 64, 64)" in out
    # the graph itself: uint8 images of any batch -> the model's low-res logits, and the
    # segment job's postprocessing gives the same mask from either
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(uint8)"]
    model = build_from_adapter(adapter)
    for batch in (1, 3):
        images = random_images(batch, 256, seed=batch)
        (got,) = session.run(["logits"], {"images": images})
        with torch.no_grad():  # the segment job's path: to_model_input (normalised) -> low_res_logits
            want = model.low_res_logits(to_model_input(images, model)).numpy()
        assert got.shape == (batch, 1, 64, 64) and np.abs(got - want).max() < 1e-3
        assert np.array_equal(low_res_mask(got[0, 0], (300, 200), 256), low_res_mask(want[0, 0], (300, 200), 256))


def test_export_at_another_size_and_a_failed_check(tmp_path, capsys):
    adapter = _adapter(tmp_path, knowledge="fft+edges")
    path = str(tmp_path / "tiny-384.onnx")
    assert main(["--checkpoint", adapter, "--output", path, "--img-size", "384"]) == 0
    assert "input 384" in capsys.readouterr().out
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.run(["logits"], {"images": random_images(2, 384)})[0].shape == (2, 1, 96, 96)
    # a tolerance no float computation meets: the check fails with status 1, the file is kept
    assert main(["--checkpoint", adapter, "--output", path, "--tolerance", "1e-12"]) == 1
    assert "FAILED (above 1e-12)" in capsys.readouterr().out


def test_export_errors_name_the_file(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope.safetensors"), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    assert main(["--checkpoint", "x", "--output", "s3://bucket/m.onnx"]) == 2
    assert "a local path" in capsys.readouterr().err


def test_export_of_a_three_class_adapter(tmp_path, capsys):
    adapter, path = _adapter(tmp_path, num_classes=3), str(tmp_path / "classes.onnx")
    assert main(["--checkpoint", adapter, "--output", path]) == 0
    assert "ok; output (3, 3, 64, 64)" in capsys.readouterr().out


def test_export_of_a_sam2_adapter(tmp_path, capsys):
    """SAM2-Adapter exports the same way: one graph, checked in onnxruntime."""
    adapter, path = _adapter(tmp_path, "sam2_tiny"), str(tmp_path / "sam2.onnx")
    assert main(["--checkpoint", adapter, "--output", path]) == 0
    out = capsys.readouterr().out
    assert "(sam2_tiny, input 256)" in out and "ok; output (3, 1, 64, 64)" in out
