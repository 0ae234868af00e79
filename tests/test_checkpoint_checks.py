"""Checkpoints are opened and checked on the driver before any Ray work."""

from __future__ import annotations

import os

import torch

from samadapter.jobs.segment import main

from .conftest import tiny_adapter_and_images


def test_a_pickle_as_either_checkpoint_is_one_line_before_ray(tmp_path, capsys):
    """Checked on the driver before any Ray work: no code in the file runs, one line names
    it, status 2 (this test starts no Ray: a Ray start would take seconds and print)."""
    adapter, folder = tiny_adapter_and_images(tmp_path, 1, seed=8)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    for flag, value in (("--sam-checkpoint", str(tmp_path / "evil.pth")), ("--checkpoint", str(tmp_path / "evil.pth"))):
        args = ["--input", str(folder), "--output", str(tmp_path / "out"), "--checkpoint", adapter, flag, value]
        assert main(args) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "evil.pth" in errors[0], errors
    assert not marker.exists()  # and Ray was not started: the fast tier refuses ray.init (conftest)
