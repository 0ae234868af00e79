"""Evaluation: the task's metrics at original resolution, a Markdown table, a PNG grid.

Either a checkpoint is run over a dataset split (single process, ``torch.inference_mode``),
or the predictions a segmentation run wrote (``probs/`` if present, else ``masks/``) are
scored against the split's ground truth.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from .. import storage
from ..data.reading import iter_records
from ..data.labels import class_colours
from ..data.transforms import decode_sample, thumbnail
from ..metrics import format_table
from ..progress import progress
from ..segment.layout import output_key
from ..data.records import dataset_task, read_dataset_info
from ..tasks import get_task, resolve_task

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    metrics: Dict[str, float]
    per_image: List[Tuple[str, float]] = field(default_factory=list)  # (image_id, the task's per-image score)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (image_id, reason)
    examples: Dict[str, np.ndarray] = field(default_factory=dict)  # thumbnails: image | gt | prediction
    task: str = "camouflage"


def _rows(dataset: str, split: str, batch_size: int = 16):
    for records in iter_records(dataset, split, columns=["image_id", "image", "mask"], batch_size=batch_size):
        yield from zip(records["image_id"], records["image"], records["mask"])


THUMB_HEIGHT = 160


def _picture(values: np.ndarray, classes: bool) -> np.ndarray:
    """A thumbnail of a mask or probability map (grey), or of class indices (the classes' colours)."""
    if classes:
        return thumbnail(class_colours(int(values.max()) + 1)[values], THUMB_HEIGHT)
    return thumbnail((values * 255).round().astype(np.uint8), THUMB_HEIGHT, "L")


def _score(metrics, per_image, examples, image_id, image_thumb, gt, prob, keep: bool) -> None:
    """``prob``: a probability map, or class indices (several classes; ``gt`` too)."""
    metrics.add(prob, gt)
    score = metrics.scores[-1][metrics.image_key]
    per_image.append((image_id, score if metrics.image_higher_is_better else -score))  # higher is better
    if keep:  # thumbnails only: a test split at full resolution would not fit in memory
        classes = prob.dtype == np.uint8
        examples[image_id] = np.concatenate([image_thumb, _picture(gt, classes), _picture(prob, classes)], axis=1)


def evaluate_checkpoint(
    dataset: str,
    split: str,
    checkpoint: str,
    sam_checkpoint: Optional[str] = None,
    batch_size: int = 4,
    resize_mode: str = "squash",
    keep_examples: bool = True,
    task: Optional[str] = None,
    img_size: Optional[int] = None,
) -> Evaluation:
    """Run a checkpoint over a split and score it at the ground truths' original sizes with
    the metrics of ``task`` (default: the dataset's task, else the one the adapter was trained
    for; ``tasks.resolve_task``); ``img_size``: run the model at another input size than it
    was trained at."""
    import torch

    from .predict import predict_split
    from ..modeling import build_from_adapter
    from ..modeling.weights import read_adapter
    from ..checkpoints import resolve_adapter

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    adapter = resolve_adapter(checkpoint)
    task = resolve_task(task, dataset_task(dataset), read_adapter(adapter)[1].get("task"), dataset, adapter)
    model = build_from_adapter(adapter, sam_checkpoint, img_size=img_size).to(device)
    metrics, per_image, examples, skipped = get_task(task).metrics(), [], {}, []
    predictions = predict_split(model, dataset, split, batch_size=batch_size, resize_mode=resize_mode,
                                bf16=device.type == "cuda", thumb_height=THUMB_HEIGHT if keep_examples else 0)
    total = read_dataset_info(dataset)["splits"].get(split)
    for p in progress(predictions, total, f"evaluate {split}", "img", every=100):
        if p.prob is None:
            skipped.append((p.image_id, f"{p.status}: {p.reason}"))
        else:
            _score(metrics, per_image, examples, p.image_id, p.thumb, p.gt, p.prob, keep_examples)
    return Evaluation(metrics.results(), per_image, skipped, examples, task)


def _read_prediction(predictions: str, image_id: str, classes: bool = False) -> Tuple[Optional[np.ndarray], str]:
    """Probability map in [0, 1] from probs/ (preferred) or masks/ of a segmentation output;
    with ``classes``, the class indices of its indexed masks/."""
    for kind in ("masks",) if classes else ("probs", "masks"):
        try:
            data = storage.read_bytes(storage.join(predictions, output_key(kind, image_id)))
        except FileNotFoundError:
            continue
        if classes:
            return np.asarray(Image.open(io.BytesIO(data)), dtype=np.uint8), ""
        return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0, ""
    return None, "no prediction"


def evaluate_predictions(dataset: str, split: str, predictions: str, keep_examples: bool = True,
                         task: Optional[str] = None) -> Evaluation:
    """Score a segmentation output against a split's ground truth with the metrics of ``task``
    (default: the dataset's task, else camouflage)."""
    info = read_dataset_info(dataset)
    task = resolve_task(task, info.get("task"))
    num_classes = len(info.get("classes") or [None])
    metrics, per_image, examples, skipped = get_task(task).metrics(), [], {}, []
    rows = progress(_rows(dataset, split), info["splits"].get(split), f"score {split}", "img", every=100)
    for image_id, image_bytes, mask_bytes in rows:
        d = decode_sample(image_bytes, mask_bytes, require_mask=True, num_classes=num_classes)
        if not d.ok:
            skipped.append((image_id, f"{d.status}: {d.reason}"))
            continue
        prob, why = _read_prediction(predictions, image_id, num_classes > 1)
        if prob is None:
            skipped.append((image_id, why))
            continue
        if prob.shape != d.mask.shape:
            skipped.append((image_id, f"prediction is {prob.shape[1]}x{prob.shape[0]}, ground truth {d.mask.shape[1]}x{d.mask.shape[0]}"))
            continue
        thumb = thumbnail(d.image, THUMB_HEIGHT) if keep_examples else None
        _score(metrics, per_image, examples, image_id, thumb, d.mask, prob, keep_examples)
    if not len(metrics):
        raise ValueError(f"no image of split {split!r} could be scored ({len(skipped)} skipped, e.g. {skipped[:3]})")
    return Evaluation(metrics.results(), per_image, skipped, examples, task)


def example_grid(ev: Evaluation, count: int = 4) -> Optional[np.ndarray]:
    """Best and worst ``count`` images by the task's per-image score: rows of image | ground
    truth | prediction."""
    if not ev.per_image or not ev.examples:
        return None
    ranked = sorted(ev.per_image, key=lambda t: t[1], reverse=True)
    chosen = ranked[:count] + [r for r in ranked[-count:] if r not in ranked[:count]]
    rows = [ev.examples[image_id] for image_id, _ in chosen]
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(padded, axis=0)


def write_report(ev: Evaluation, output: str, label: str) -> Dict[str, str]:
    """metrics.json, metrics.md and examples.png under ``output``; returns their URIs."""
    uris = {k: storage.join(output, k) for k in ("metrics.json", "metrics.md", "examples.png")}
    payload = {"label": label, "task": ev.task, **ev.metrics,
               "skipped": [{"image_id": i, "reason": r} for i, r in ev.skipped]}
    storage.write_bytes(uris["metrics.json"], json.dumps(payload, indent=2).encode())
    storage.write_bytes(uris["metrics.md"], (format_table({label: ev.metrics}, get_task(ev.task).names) + "\n").encode())
    grid = example_grid(ev)
    if grid is not None:
        buf = io.BytesIO()
        Image.fromarray(grid).save(buf, format="PNG")
        storage.write_bytes(uris["examples.png"], buf.getvalue())
    else:
        uris.pop("examples.png")
    return uris
