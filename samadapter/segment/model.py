"""The model side of the segmentation job: which adapter, its fingerprint, the GPU actor."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Dict, Optional

import numpy as np

from ..data import storage

log = logging.getLogger(__name__)


def resolve_checkpoint(uri: str) -> str:
    """An adapter file from an adapter path, a checkpoint folder or a training run folder.

    For a run folder the checkpoint with the best ``s_measure`` (its ``metrics.json``) is taken.
    """
    uri = str(uri).rstrip("/")
    if uri.endswith(".safetensors"):
        if not storage.exists(uri):
            raise FileNotFoundError(f"checkpoint {uri} does not exist")
        return uri
    adapter = storage.join(uri, "adapter.safetensors")
    if storage.exists(adapter):
        return adapter
    fs, path = storage.fsspec_filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"checkpoint {uri} does not exist")
    best, best_score = None, -1.0
    for entry in fs.ls(path, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] != "directory" or not name.startswith("checkpoint_"):
            continue
        ckpt = storage.join(uri, name)
        try:
            metrics = json.loads(storage.read_bytes(storage.join(ckpt, "metrics.json")))
        except FileNotFoundError:
            continue
        score = float(metrics.get("s_measure", -1.0))
        if score > best_score and storage.exists(storage.join(ckpt, "adapter.safetensors")):
            best, best_score = ckpt, score
    if best is None:
        raise FileNotFoundError(
            f"{uri}: no adapter checkpoint found (expected an adapter .safetensors file, a checkpoint "
            "folder with adapter.safetensors, or a training run folder with checkpoint_* folders)"
        )
    log.info("using the best checkpoint of the run (S-measure %.3f): %s", best_score, best)
    return storage.join(best, "adapter.safetensors")


def model_fingerprint(adapter_bytes: bytes, threshold: float, resize_mode: str) -> str:
    """Identifies the outputs: adapter (which names its base weights) + output settings."""
    h = hashlib.sha256(adapter_bytes)
    h.update(json.dumps({"threshold": threshold, "resize_mode": resize_mode}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def adapter_arch(adapter_bytes: bytes) -> Dict:
    """The architecture config stored in an adapter file's metadata (``name``, ``img_size``, ...)."""
    from ..modeling.weights import read_safetensors_metadata

    return json.loads(read_safetensors_metadata(adapter_bytes)["config"])


def load_adapter_model(adapter_uri: str, sam_checkpoint: Optional[str], attention: str = "auto"):
    """The model an adapter checkpoint describes (arch from its metadata), in eval mode.

    Official SAM weights are fetched once per machine (``storage.local_copy``).
    """
    from ..modeling import build_model
    from ..modeling.weights import read_adapter

    _, meta = read_adapter(adapter_uri)
    config = json.loads(meta["config"])
    arch = config.pop("name")
    sam_path = storage.local_copy(sam_checkpoint) if sam_checkpoint else None
    return build_model(arch, sam_checkpoint=sam_path, adapter_checkpoint=adapter_uri, attention=attention, **config).eval()


def infer_logits(model, forward, images: np.ndarray, device, bf16: bool) -> np.ndarray:
    """B x S x S x 3 uint8 model inputs -> B x S/4 x S/4 float16 low-resolution logits
    (clamped to float16's range; 128 KiB an image at S = 1024): pinned host memory and a
    non-blocking copy on GPU, ``inference_mode``, bf16 autocast when asked. ``forward`` is
    ``model.low_res_logits`` or its ``torch.compile`` wrapper."""
    import torch

    from ..ops import to_model_input

    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = forward(to_model_input(images, model))
    return out[:, 0].float().clamp(-60000, 60000).cpu().numpy().astype(np.float16)


class Segmenter:
    """Ray Data callable class: one frozen encoder + adapter per actor, built in ``__init__``.

    An actor that was given GPUs but sees no CUDA device runs on the CPU only for the tiny
    debug model (Ray's simulated clusters have logical GPUs); a real model raises instead,
    so that a broken GPU node never segments a night on its CPU.
    """

    def __init__(self, adapter_uri: str, arch: str, sam_checkpoint: Optional[str], bf16: Optional[bool],
                 attention: str = "auto", compile: bool = False, device: str = "auto"):
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
        self.model = load_adapter_model(adapter_uri, sam_checkpoint, attention).to(self.device)
        self.forward = torch.compile(self.model.low_res_logits) if compile else self.model.low_res_logits
        self.bf16 = (self.device.type == "cuda") if bf16 is None else bool(bf16)
        self.actor = f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"
        log.info("segmenter %s ready on %s (bf16=%s)", self.actor, self.device, self.bf16)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        t0 = time.perf_counter()
        ok = np.asarray([s == "ok" for s in batch["status"]], dtype=bool)
        size = self.model.img_size // 4  # the mask decoder's resolution
        logits = np.zeros((len(ok), size, size), dtype=np.float16)
        if ok.any():
            logits[ok] = infer_logits(self.model, self.forward, batch["image"][ok], self.device, self.bf16)
        share = (time.perf_counter() - t0) / max(1, int(ok.sum()))
        result = {k: v for k, v in batch.items() if k != "image"}
        result["logits"] = logits
        result["seconds"] = batch["seconds"] + np.where(ok, share, 0.0)
        result["actor"] = np.asarray([self.actor] * len(ok), dtype=object)
        return result
