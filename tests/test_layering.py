"""Who imports whom: the layers the package's layout promises (a fresh interpreter each)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(module: str) -> set:
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    return set(out.split())


def test_the_run_layout_is_torch_free():
    # drivers (segment, evaluate, sweeps) resolve adapters before anything heavy is imported
    loaded = _loaded_after("samadapter.checkpoints")
    assert not {m.split(".")[0] for m in loaded} & {"torch", "ray", "segment_anything"}


@pytest.mark.parametrize("module", ["samadapter.segment.run", "samadapter.evaluate.evaluation"])
def test_segmentation_and_evaluation_do_not_import_training(module):
    assert not [m for m in _loaded_after(module) if m.startswith("samadapter.train")]
