"""ONNX export: one graph from uint8 images to the mask decoder's low-resolution logits.

The graph's input is the project's input contract, what the segment job's decode stage
makes of every image (``data.transforms.resize_for_model``): ``images``, B x S x S x 3 uint8
RGB, S the model's input size, the batch dynamic. SAM's pixel normalisation is inside the
graph. Its output ``logits`` is B x C x S/4 x S/4 float32 (C = 1: the foreground's logit),
exactly what ``SamAdapter.low_res_logits`` returns, so the segment job's postprocessing
applies unchanged: ``data.transforms.low_res_mask(logits[b, 0], (H, W), S)`` gives the mask
at the image's original size (``low_res_probs`` its probabilities).

torch's TorchScript-based exporter writes the graph (it needs the ``onnx`` package); the
check runs it in onnxruntime against PyTorch on random images. The input size is fixed in
the graph (the encoder's windows and position tables are laid out for it): export once per
size (``--img-size``). The FFT of the task-knowledge
sources has no ONNX operator for real inputs that every runtime implements: under export it
is computed as the same linear map by matrix products (``knowledge._frequency_band``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterable, Tuple

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

INPUT, OUTPUT = "images", "logits"
DEFAULT_OPSET = 17
TOLERANCE = 1e-3  # the largest |ONNX - PyTorch| of a logit the check accepts


class ImagesToLogits(nn.Module):
    """B x S x S x 3 uint8 images -> B x C x S/4 x S/4 logits: the model behind the graph."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        return self.model.low_res_logits(self.model.normalize(x))


def random_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def export_onnx(model, path: str, opset: int = DEFAULT_OPSET) -> None:
    """Write ``model`` (a SamAdapter, eval mode, on the CPU) as an ONNX graph at local ``path``."""
    wrapper = ImagesToLogits(model.eval()).eval()
    example = torch.from_numpy(random_images(2, model.img_size))
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns where segment_anything computes with sizes; they are the fixed input size's
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper, (example,), path, input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False,
        )


def check_onnx(path: str, model, batch_sizes: Iterable[int] = (1, 3), seed: int = 0) -> Tuple[float, Tuple[int, ...]]:
    """(the largest |ONNX - PyTorch| of a logit over random images at each batch size, the
    ONNX output's shape at the last): the graph run in onnxruntime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    wrapper, worst, shape = ImagesToLogits(model.eval()).eval(), 0.0, ()
    for i, batch in enumerate(batch_sizes):
        images = random_images(batch, model.img_size, seed + i)
        (got,) = session.run([OUTPUT], {INPUT: images})
        with torch.no_grad():
            want = wrapper(torch.from_numpy(images)).numpy()
        if got.shape != want.shape:
            raise RuntimeError(f"{path}: the ONNX graph gives {got.shape} for batch {batch}, PyTorch {want.shape}")
        worst, shape = max(worst, float(np.abs(got - want).max())), got.shape
    return worst, tuple(shape)
