"""The model side of the segmentation job: which adapter, its fingerprint, the GPU actor."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Dict, Optional

import numpy as np


log = logging.getLogger(__name__)


def model_fingerprint(adapter_bytes: bytes, threshold: float, resize_mode: str, img_size: Optional[int] = None) -> str:
    """Identifies the outputs: adapter (which names its base weights) + output settings
    (``img_size``: an input size other than the adapter's own; None keeps the fingerprints
    of runs at the trained size as they were)."""
    h = hashlib.sha256(adapter_bytes)
    settings = {"threshold": threshold, "resize_mode": resize_mode}
    if img_size:
        settings["img_size"] = int(img_size)
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def infer_logits(model, forward, images: np.ndarray, device, bf16: bool) -> np.ndarray:
    """B x S x S x 3 uint8 model inputs -> B x S/4 x S/4 float16 low-resolution logits
    (B x C x S/4 x S/4 for a model of C >= 2 classes)
    (clamped to float16's range; 128 KiB an image at S = 1024): pinned host memory and a
    non-blocking copy on GPU, ``inference_mode``, bf16 autocast when asked. ``forward`` is
    ``model.low_res_logits`` or its ``torch.compile`` wrapper."""
    import torch

    from ..ops import to_model_input

    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = forward(to_model_input(images, model))
    out = out[:, 0] if out.shape[1] == 1 else out  # one class: B x s x s; several: B x C x s x s
    return out.float().clamp(-60000, 60000).cpu().numpy().astype(np.float16)


class Segmenter:
    """Ray Data callable class: one frozen encoder + adapter per actor, built in ``__init__``.

    An actor that was given GPUs but sees no CUDA device runs on the CPU only for the tiny
    debug model (Ray's simulated clusters have logical GPUs); a real model raises instead,
    so that a broken GPU node never segments a night on its CPU.
    """

    def __init__(self, adapter_uri: str, arch: str, sam_checkpoint: Optional[str], bf16: Optional[bool],
                 attention: str = "auto", compile: bool = False, device: str = "auto", img_size: Optional[int] = None):
        import ray
        import torch

        gpu_ids = ray.get_gpu_ids()
        if device == "cpu" or not torch.cuda.is_available():
            if gpu_ids and arch != "tiny" and device != "cpu":
                raise RuntimeError(
                    f"this actor was given GPU(s) {gpu_ids} but torch sees no CUDA device on node "
                    f"{ray.get_runtime_context().get_node_id()[:8]}: refusing to run {arch} on its CPU. Check the "
                    "node's NVIDIA driver and the torch build; pass --device cpu to run on CPUs on purpose."
                )
            self.device = torch.device("cpu")
        else:
            self.device = torch.device("cuda")
        from ..modeling import build_from_adapter

        self.model = build_from_adapter(adapter_uri, sam_checkpoint, attention, img_size).to(self.device)
        self.forward = torch.compile(self.model.low_res_logits) if compile else self.model.low_res_logits
        self.bf16 = (self.device.type == "cuda") if bf16 is None else bool(bf16)
        self.actor = f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"
        log.info("segmenter %s ready on %s (bf16=%s)", self.actor, self.device, self.bf16)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        t0 = time.perf_counter()
        ok = np.asarray([s == "ok" for s in batch["status"]], dtype=bool)
        size = self.model.img_size // 4  # the mask decoder's resolution
        classes = self.model.num_classes
        logits = np.zeros((len(ok), *((classes,) if classes > 1 else ()), size, size), dtype=np.float16)
        if ok.any():
            logits[ok] = infer_logits(self.model, self.forward, batch["image"][ok], self.device, self.bf16)
        share = (time.perf_counter() - t0) / max(1, int(ok.sum()))
        result = {k: v for k, v in batch.items() if k != "image"}
        result["logits"] = logits
        result["seconds"] = batch["seconds"] + np.where(ok, share, 0.0)
        result["actor"] = np.asarray([self.actor] * len(ok), dtype=object)
        return result
