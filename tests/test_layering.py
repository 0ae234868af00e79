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


def test_building_a_model_does_not_import_torchvision_and_segment_anything_stays_whole():
    # segment_anything's package __init__ (its predictor -> torchvision -> torch._dynamo, seconds
    # of CPU at every actor and worker start) runs only when something asks the package for it
    code = ("import sys; from samadapter import build_model; build_model('tiny', img_size=64); "
            "print('torchvision' in sys.modules, 'torch._dynamo' in sys.modules); "
            "from segment_anything import SamPredictor, sam_model_registry; import segment_anything.modeling as m; "
            "print(SamPredictor.__module__, sorted(sam_model_registry)[0], m.ImageEncoderViT.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split("\n")[:2] == ["False False", "segment_anything.predictor default segment_anything.modeling.image_encoder"]
