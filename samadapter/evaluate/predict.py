"""Predictions over a dataset split at the original ground-truth sizes, for ``jobs/evaluate.py``
(validation during training scores through ``train/validation.score_batches``)."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from ..data.reading import iter_records
from ..data.transforms import Decoded, decode_sample, prepare_uint8
from ..ops import resize_logits, to_model_input


def predict_split(
    model,
    dataset: str,
    split: str,
    *,
    batch_size: int,
    resize_mode: str = "squash",
    bf16: bool = False,
    select: Callable[[int], bool] = lambda index: True,
) -> Iterator[Tuple[str, Union[Decoded, np.ndarray], Optional[np.ndarray]]]:
    """Run ``model`` over the rows of a split that ``select(row_index)`` keeps.

    Yields ``(image_id, decoded, probability map at the original size)`` per good row and
    ``(image_id, decoded, None)`` for a row that failed to decode (``decoded.status`` says
    why). The model runs in eval mode under ``inference_mode``; its mode is restored.
    """
    device = next(model.parameters()).device
    size = model.img_size
    was_training = model.training
    model.eval()
    pending = []

    def flush():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(to_model_input(np.stack([p[2] for p in pending]), model))
        for i, (image_id, decoded, _, valid) in enumerate(pending):
            full = resize_logits(logits[i : i + 1], decoded.mask.shape, valid if resize_mode == "pad" else None)
            yield image_id, decoded, torch.sigmoid(full)[0, 0].float().cpu().numpy()
        pending.clear()

    try:
        index = 0
        for records in iter_records(dataset, split, columns=["image_id", "image", "mask"], batch_size=32):
            for image_id, image, mask in zip(records["image_id"], records["image"], records["mask"]):
                keep = select(index)
                index += 1
                if not keep:
                    continue
                decoded = decode_sample(image, mask, require_mask=True)
                if not decoded.ok:
                    yield image_id, decoded, None
                    continue
                x, _, valid = prepare_uint8(decoded.image, size, resize_mode)
                pending.append((image_id, decoded, x, valid))
                if len(pending) >= batch_size:
                    yield from flush()
        if pending:
            yield from flush()
    finally:
        model.train(was_training)
