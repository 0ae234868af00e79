"""Small tensor operations that need torch but not the model (light to import in Ray tasks)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def resize_logits(
    logits: torch.Tensor,
    original_size: Tuple[int, int],
    valid_size: Optional[Tuple[int, int]] = None,
) -> torch.Tensor:
    """Resize B x 1 x S x S logits back to an original image size.

    Args:
        logits: B x 1 x S x S mask logits from :class:`samadapter.SamAdapter`.
        original_size: (H, W) of the original image.
        valid_size: (h, w) of the region of the S x S input that holds the image when it
            was padded (longest side resized to S); ``None`` when it was squashed to S x S.

    Returns:
        B x 1 x H x W logits (bilinear).
    """
    if valid_size is not None:
        logits = logits[..., : valid_size[0], : valid_size[1]]
    return F.interpolate(logits.float(), size=tuple(original_size), mode="bilinear", align_corners=False)


def to_model_input(images, model) -> torch.Tensor:
    """B x S x S x 3 uint8 (numpy or tensor, as Ray Data stages ship model inputs) ->
    B x 3 x S x S float32 on the model's device, normalised there by ``model.normalize``
    (SAM's pixel mean/std).

    A quarter of float32's bytes cross the object store and the host-to-device copy
    (pinned, non-blocking on CUDA); padding zeros are normalised like the rest. Training,
    validation, evaluation and the segment job all use it.
    """
    import warnings

    import numpy as np

    device = model.pixel_mean.device
    if isinstance(images, torch.Tensor):
        x = images
    else:
        with warnings.catch_warnings():  # rows from Ray's object store are read-only; nothing here writes them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return model.normalize(x)
