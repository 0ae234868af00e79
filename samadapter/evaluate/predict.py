"""The one inference path over a dataset split: decoded batches (``decode_for_validation``:
uint8 model inputs, the ground truth packed at its original size) -> the model -> a
probability map at the ground truth's size per row.

Training's validation streams the batches from Ray Data (``train/validation.py``);
``jobs/evaluate.py`` reads them with pyarrow in one process (``predict_split``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Optional

import numpy as np
import torch

from ..data.reading import decode_for_validation, iter_records, unpack_ground_truth
from ..ops import resize_logits, to_model_input


@dataclass
class Prediction:
    image_id: str
    # at the ground truth's size: H x W float32 in [0, 1] (one class) or uint8 class indices
    # (several: the argmax of the resized logits); None: not decoded
    prob: Optional[np.ndarray]
    gt: Optional[np.ndarray]  # H x W uint8 in {0, 1}, or class indices
    status: str  # "ok", or why the row could not be decoded (samadapter/data/transforms.py)
    reason: str
    thumb: Optional[np.ndarray] = None  # the image at a thumbnail's height, when the batches carry it


def predict_batches(model, batches: Iterable[Dict[str, np.ndarray]], resize_mode: str, bf16: bool) -> Iterator[Prediction]:
    """A :class:`Prediction` per row of ``decode_for_validation`` batches, in order: the
    model's logits at its input size, resized to the ground truth's original size (the
    padding left out in ``pad`` mode), through a sigmoid (one class) or an argmax over the
    classes (several). The model runs in eval mode under
    ``inference_mode``; its mode is restored."""
    was_training = model.training
    model.eval()
    device = model.pixel_mean.device
    classes = model.num_classes
    try:
        for batch in batches:
            ok = np.asarray(batch["ok"], bool)
            logits = None
            if ok.any():
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(to_model_input(batch["images"][ok], model))
            thumbs = batch.get("thumb")
            k = 0
            for j in range(len(ok)):
                image_id, thumb = str(batch["image_id"][j]), None if thumbs is None else thumbs[j]
                if not ok[j]:
                    yield Prediction(image_id, None, None, str(batch["status"][j]), str(batch["reason"][j]), thumb)
                    continue
                gt = unpack_ground_truth(batch["gt_bits"][j], int(batch["gt_h"][j]), int(batch["gt_w"][j]), classes)
                valid = (int(batch["valid_h"][j]), int(batch["valid_w"][j])) if resize_mode == "pad" else None
                with torch.inference_mode():
                    resized = resize_logits(logits[k : k + 1], gt.shape, valid)[0]
                    if classes > 1:
                        prob = resized.argmax(0).to(torch.uint8).cpu().numpy()
                    else:
                        prob = torch.sigmoid(resized[0]).float().cpu().numpy()
                k += 1
                yield Prediction(image_id, prob, gt, "ok", "", thumb)
    finally:
        model.train(was_training)


def predict_split(model, dataset: str, split: str, *, batch_size: int, resize_mode: str = "squash",
                  bf16: bool = False, thumb_height: int = 0) -> Iterator[Prediction]:
    """:func:`predict_batches` over every row of a split, read with pyarrow (no Ray);
    ``thumb_height`` > 0: each prediction carries a thumbnail of its image."""
    def batches():
        for rows in iter_records(dataset, split, columns=["image_id", "image", "mask"], batch_size=batch_size):
            yield decode_for_validation(rows, model.img_size, resize_mode, thumb_height=thumb_height,
                                        num_classes=model.num_classes)

    yield from predict_batches(model, batches(), resize_mode, bf16)
