"""Export a trained adapter with its SAM base as one ONNX graph, checked in onnxruntime.

    python jobs/export.py --checkpoint runs/local-tiny --output model.onnx
    python jobs/export.py --checkpoint s3://bucket/runs/cod10k-vit-h --sam-checkpoint s3://bucket/sam_vit_h_4b8939.pth \\
        --img-size 512 --output cod10k-vit-h-512.onnx

The graph: "images", B x S x S x 3 uint8 RGB (every image resized to the model's input S as
the segment job does; the batch is dynamic) -> "logits", B x C x S/4 x S/4 float32, the mask
decoder's low-resolution logits (C = 1: the foreground). SAM's pixel normalisation is in the
graph. After writing it, the job runs it in onnxruntime on random images at batch 1 and 3
and prints the largest difference from PyTorch; above --tolerance it exits 1 (the file is
kept for inspection). Turn logits into masks at the original size with the segment job's
postprocessing, samadapter.data.transforms.low_res_mask (docs/segmentation.md).

Needs the export extra: pip install -e ".[export]" (onnx and onnxruntime). Exit statuses:
0 exported and checked; 1 the check failed; 2 bad arguments or checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

from samadapter import config as settings
from samadapter.cli import doc_parser, guarded
from samadapter.config import ConfigError, option

FORMATS = ("onnx",)


@dataclass
class ExportConfig:
    """What to export, and where."""

    checkpoint: str = option(help="adapter .safetensors, checkpoint folder or training run folder (its best)")
    output: str = option(help="the graph file to write (local path)")
    sam_checkpoint: Optional[str] = option(None, "the official SAM weights the adapter was trained on (path or URI)")
    format: str = option("onnx", "what to write", choices=FORMATS)
    img_size: Optional[int] = option(None, "the graph's input side S (default: the adapter's; SAM's 1024 weights "
                                           "also at 512 or 768)")
    opset: int = option(17, "ONNX opset")
    tolerance: float = option(1e-3, "largest |ONNX - PyTorch| logit difference the check accepts")
    attention: str = option("original", "encoder attention path traced into the graph (original: segment_anything's "
                                        "einsum attention, which every ONNX runtime runs)",
                            choices=("original", "fast"))

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format {self.format!r}: choose one of {list(FORMATS)}")
        if "://" in self.output and not self.output.startswith("file://"):
            raise ConfigError(f"--output {self.output}: a local path (copy the file to object storage after the check)")
        if self.tolerance <= 0:
            raise ConfigError("--tolerance must be > 0")


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("export.py", __doc__)
    settings.add_arguments(p, ExportConfig)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = settings.build(ExportConfig, build_parser().parse_args(argv))
    except ConfigError as exc:
        print(f"export.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        import onnxruntime  # noqa: F401 - checked before the model is built
    except ImportError:
        print('export.py: error: the check needs onnxruntime: pip install -e ".[export]"', file=sys.stderr)
        return 2
    from samadapter.checkpoints import resolve_adapter
    from samadapter.export import check_onnx, export_onnx
    from samadapter.modeling import build_from_adapter
    from samadapter.modeling.build import check_checkpoints
    from samadapter.modeling.weights import CheckpointError

    def load():
        adapter = resolve_adapter(cfg.checkpoint)
        check_checkpoints(adapter, cfg.sam_checkpoint, cfg.img_size)
        return adapter, build_from_adapter(adapter, cfg.sam_checkpoint, cfg.attention, cfg.img_size)

    loaded, status = guarded(load, (FileNotFoundError, CheckpointError, ValueError))
    if status is not None:
        return status
    adapter, model = loaded
    path = cfg.output[len("file://"):] if cfg.output.startswith("file://") else cfg.output
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t0 = time.perf_counter()
    export_onnx(model, path, cfg.opset)
    print(f"exported {adapter} ({model.config['name']}, input {model.img_size}) to {path}: "
          f"{os.path.getsize(path) / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s")
    diff, shape = check_onnx(path, model)
    verdict = "ok" if diff <= cfg.tolerance else f"FAILED (above {cfg.tolerance:g})"
    print(f"onnxruntime vs PyTorch, batch 1 and 3: max abs difference {diff:.2e} {verdict}; output {shape}")
    return 0 if diff <= cfg.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
