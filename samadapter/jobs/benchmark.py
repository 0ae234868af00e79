"""Benchmarks: model throughput, training-step memory, and the segment pipeline's overhead.

    python jobs/benchmark.py model --arch vit_b --img-size 512,1024 --batch-sizes 1 --attention original fast
    python jobs/benchmark.py train-step --arch vit_b --img-size 1024 --batch-size 1
    python jobs/benchmark.py vs-reference --reference ~/src/SAM-Adapter-PyTorch --arch vit_b --img-size 1024
    python jobs/benchmark.py vs-sam2 --reference ~/src/sam2 --arch sam2_hiera_t
    python jobs/benchmark.py pipeline --arch tiny --images 64 --batch-size 4
    python jobs/benchmark.py stages --megapixels 1.2,4.3,12
    python jobs/benchmark.py plan --keys 250000,1000000,4000000
    python jobs/benchmark.py plan --keys 200000 --history-nights 365
    python jobs/benchmark.py train-epoch --workers 2 --train-rows 32 --val-rows 16
    python jobs/benchmark.py cold-start --arch vit_h

Each figure is the median of --repeats timed runs after --warmup runs; every
configuration of `model` and `train-step` runs in a fresh process so its peak memory is
its own; `model` takes several archs and input sizes and gives each row's seconds per image
over those of the same arch at its largest size (`cost_vs_largest`). `pipeline` divides the segment job's images/s (Ray Data on a started Ray, end to end:
the actors' start-up and model loading included) by that of a bare single-process
program doing the same work with the job's stage functions but no Ray (import, load the
model, then read, decode, resize, model, resize back, threshold, PNG, write) on the same images with the same model, batch size
and torch threads (those of one model actor): `ratio`. Loop and job take turns; the
ratio of their median times is reported with the lowest and highest turn's. Where the
time goes, the same measure for both (the masks' file times): start-up until the first
mask (the job's includes its planning), and masks/s as the slope of masks written
against time; `steady_ratio` is the job's masks/s over the loop's. `plan` runs the segment job's
--dry-run on generated key lists against a ledger of as many rows, one fresh process per
size: seconds and the driver's peak RSS. `stages` gives CPU ms per image of each CPU stage
of the segment job and the bytes between stages, by photo size (one core). `vs-reference`
times the image encoder's training pass (forward + backward, adapter parameters trainable)
of ours against the reference implementation's, imported from a checkout you give; fresh
processes take turns. `vs-sam2` runs SAM2-Adapter with its prompts at zero against Meta's SAM 2
code (a checkout you give) on the same random weights saved as a Meta checkpoint: the largest
difference of the features and logits, and seconds per image of each. `cold-start` gives the seconds from nothing to a model ready (SAM's
weights given, every weight read once) beside the seconds of reading the checkpoint file
alone and of the old way (initialise everything, then copy the file in); the checkpoint, of
the arch's shapes, is made on the fly.

Prints a table with the machine's description and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from dataclasses import dataclass
from typing import List, Optional

from samadapter import config as settings
from samadapter.cli import doc_parser
from samadapter.config import ConfigError, option


@dataclass(kw_only=True)
class Common:
    """What every mode takes."""

    arch: str = option("tiny", "vit_h, vit_l, vit_b, tiny; sam2_hiera_t/s/b+/l, sam2_tiny")
    img_size: Optional[int] = option(None, "input size (default: the arch's)")
    warmup: Optional[int] = option(None, "untimed runs first (default: the mode's)")
    repeats: Optional[int] = option(None, "timed runs; the median is reported (default: the mode's)")
    json: Optional[str] = option(None, "write the results here (default benchmark-<mode>.json)", metavar="FILE")


@dataclass(kw_only=True)
class ModelBench(Common):
    """Encoder + decoder images/s, seconds and peak memory per image, TFLOP/s; several archs
    and input sizes side by side (--arch vit_b --img-size 512,1024)."""

    arch: List[str] = option(help="archs, side by side (vit_h, vit_l, vit_b, tiny; sam2_hiera_t/s/b+/l, sam2_tiny)",
                             factory=lambda: ["tiny"])
    img_size: List[int] = option(help="input sizes, side by side (default: each arch's own; SAM's 1024 weights also "
                                      "run at 512 and 768)", factory=list)
    batch_sizes: List[int] = option(help="batch sizes", factory=lambda: [1])
    attention: List[str] = option(help="attention paths", factory=lambda: ["original", "fast"],
                                  choices=("original", "fast"))
    dtypes: List[str] = option(help="bf16 runs on GPU only", factory=lambda: ["fp32", "bf16"], choices=("fp32", "bf16"))


@dataclass(kw_only=True)
class TrainStepBench(Common):
    """One training step with and without activation checkpointing."""

    batch_size: int = option(1, "images per step")
    attention: str = option("auto", "attention path", choices=("auto", "original", "fast"))


@dataclass(kw_only=True)
class ReferenceBench(Common):
    """Encoder forward+backward seconds of ours against the reference implementation's."""

    reference: str = option(help="a checkout of SAM-Adapter-PyTorch (or its models/mmseg/models/sam/image_encoder.py)")
    batch_size: int = option(1, "images per step")
    attention: List[str] = option(help="our attention paths", factory=lambda: ["original", "fast"],
                                  choices=("original", "fast"))
    rounds: int = option(3, "rounds in which every implementation runs once")


@dataclass(kw_only=True)
class Sam2ReferenceBench(Common):
    """SAM2-Adapter with zero prompts against Meta's SAM 2 code on the same weights: differences and seconds."""

    arch: str = option("sam2_hiera_t", "a released SAM 2 size", choices=("sam2_hiera_t", "sam2_hiera_s",
                                                                          "sam2_hiera_b+", "sam2_hiera_l"))
    reference: str = option(help="a checkout of facebookresearch/sam2 (pip install hydra-core iopath)")
    sam2_version: str = option("2.1", "the release's config", choices=("2", "2.1"))
    batch_size: int = option(1, "images per call")


@dataclass(kw_only=True)
class PipelineBench(Common):
    """The segment job's images/s divided by a bare single-process loop's."""

    images: int = option(64, "synthetic test images")
    scene_size: int = option(320, "side of the synthetic test images")
    batch_size: int = option(4, "images per model call")
    max_actors: int = option(1, "model actors of the job")


@dataclass(kw_only=True)
class StagesBench(Common):
    """CPU ms per image and bytes between stages of the segment job, by photo size."""

    megapixels: List[float] = option(help="photo sizes", factory=lambda: [1.2, 4.3, 12.0])
    image: Optional[str] = option(None, "a photo to make the test photos from (default: a synthetic scene)")
    resize_mode: str = option("squash", "how photos are fitted to the model input", choices=("squash", "pad"))


@dataclass(kw_only=True)
class TrainEpochBench(Common):
    """Seconds per training epoch split into train and validation."""

    workers: int = option(2, "training workers")
    train_rows: int = option(32, "training images")
    val_rows: int = option(16, "validation images")
    epochs: int = option(2, "epochs")
    batch_size: int = option(4, "images per step per worker")


@dataclass(kw_only=True)
class PlanBench(Common):
    """Driver peak RSS and seconds of planning a night (the --dry-run code) by key count."""

    keys: List[int] = option(help="key counts", factory=lambda: [250000, 1000000, 4000000])
    cpus: int = option(2, "CPUs of the local Ray")
    history_nights: int = option(0, "instead: the plan over a ledger of this many nights' files, before and after "
                                    "--compact-ledger (keys: the first of --keys)")
    files_per_night: int = option(8, "ledger files a night leaves")


@dataclass(kw_only=True)
class ColdStartBench(Common):
    """Seconds to a model ready from SAM's weights, beside reading the checkpoint alone."""

    threads: Optional[int] = option(None, "torch threads (default: every core)")


MODES = {"model": ModelBench, "train-step": TrainStepBench, "vs-reference": ReferenceBench, "vs-sam2": Sam2ReferenceBench,
         "pipeline": PipelineBench,
         "stages": StagesBench, "train-epoch": TrainEpochBench, "plan": PlanBench, "cold-start": ColdStartBench}


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("benchmark.py", __doc__)
    sub = p.add_subparsers(dest="mode", required=True)
    for mode, cls in MODES.items():
        settings.add_arguments(sub.add_parser(mode, help=cls.__doc__.strip().rstrip(".")), cls, config_flag=None)
    return p


def parse_args(argv=None):
    """(mode, its settings)."""
    args = build_parser().parse_args(argv)
    return args.mode, settings.build(MODES[args.mode], args)


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    try:
        mode, args = parse_args(argv)
    except ConfigError as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return 2
    from samadapter.bench.common import describe_machine
    from samadapter.modeling.arch import arch_config

    machine = describe_machine()
    img_size = None if mode == "model" else args.img_size or arch_config(args.arch).img_size  # model: lists of both
    if mode == "model":
        from samadapter.bench.model import bench_model

        rows = bench_model(args.arch, args.img_size, args.batch_sizes, args.attention, args.dtypes,
                           warmup=args.warmup if args.warmup is not None else 2, repeats=args.repeats or 5)
        cols = ["arch", "img_size", "batch", "attention", "dtype", "device", "images_per_s", "seconds_per_image",
                "cost_vs_largest", "gflop_per_image", "tflops", "fraction_of_peak", "peak_memory_mib"]
    elif mode == "train-step":
        from samadapter.bench.model import bench_train_step

        rows = bench_train_step(args.arch, img_size, args.batch_size, args.attention,
                                  warmup=args.warmup if args.warmup is not None else 1, repeats=args.repeats or 3)
        cols = ["arch", "img_size", "batch", "checkpointing", "device", "median_s", "peak_mem_gib", "memory_vs_plain"]
    elif mode == "vs-reference":
        from samadapter.cli import guarded
        from samadapter.bench.reference import bench_vs_reference
        from samadapter.modeling.arch import is_sam2

        if is_sam2(args.arch):
            print(f"error: vs-reference compares SAM-Adapter's ViT archs; for {args.arch} use vs-sam2", file=sys.stderr)
            return 2

        rows, status = guarded(lambda: bench_vs_reference(
            args.reference, args.arch, img_size, args.batch_size, args.attention, rounds=args.rounds,
            warmup=args.warmup if args.warmup is not None else 1, repeats=args.repeats or 3), (FileNotFoundError, ImportError))
        if status is not None:
            return status
        cols = ["arch", "img_size", "batch", "device", "impl", "trainable_params", "median_s", "min_s", "max_s",
                "peak_mem_gib", "vs_reference"]
    elif mode == "vs-sam2":
        from samadapter.cli import guarded
        from samadapter.bench.sam2_reference import bench_vs_sam2

        rows, status = guarded(lambda: bench_vs_sam2(args.reference, args.arch, args.batch_size, args.sam2_version,
                                                     repeats=args.repeats or 3), (FileNotFoundError, ImportError))
        if status is not None:
            return status
        cols = ["arch", "sam2_version", "img_size", "batch", "impl", "seconds_per_image", "max_abs_diff_features",
                "max_abs_diff_logits", "logit_scale"]
    elif mode == "stages":
        import torch

        from samadapter.bench.stages import bench_stages

        torch.set_num_threads(1)
        rows = bench_stages(args.megapixels, image=args.image,
                            img_size=args.img_size or 1024, resize_mode=args.resize_mode, repeats=args.repeats or 3)
        cols = ["megapixels", "cpu_ms_read", "cpu_ms_decode", "cpu_ms_model_input", "cpu_ms_postprocess", "cpu_ms_write",
                "cpu_ms_total", "encoded_bytes_per_image", "model_input_bytes_per_image", "model_output_bytes_per_image",
                "mask_png_bytes_per_image"]
    elif mode == "train-epoch":
        from samadapter.bench.train_epoch import bench_train_epoch

        rows = bench_train_epoch(args.arch, args.img_size or 128, args.workers, args.train_rows, args.val_rows,
                                 args.epochs, args.batch_size)
        cols = ["epoch", "workers", "train_rows", "val_rows", "val_rows_read", "train_seconds", "val_seconds",
                "train_images_per_s", "s_measure"]
    elif mode == "cold-start":
        from samadapter.bench.cold_start import bench_cold_start

        rows = bench_cold_start(args.arch, args.img_size, repeats=args.repeats or 3, threads=args.threads)
        cols = ["arch", "checkpoint_mib", "read_seconds", "build_seconds", "full_build_seconds", "build_vs_read",
                "full_build_vs_read", "read_peak_rss_mib", "build_peak_rss_mib", "full_build_peak_rss_mib"]
    elif mode == "plan" and args.history_nights:
        from samadapter.bench.plan import bench_history

        rows = bench_history(args.keys[0], args.history_nights, args.files_per_night, cpus=args.cpus)
        cols = ["history_nights", "ledger_files", "compacted", "keys", "seconds", "driver_peak_rss_mib", "to_do", "done"]
    elif mode == "plan":
        from samadapter.bench.plan import bench_plan

        rows = bench_plan(args.keys, cpus=args.cpus)
        cols = ["keys", "seconds", "driver_peak_rss_mib", "to_do", "done"]
    else:
        from samadapter.bench.pipeline import bench_pipeline

        rows = [bench_pipeline(args.arch, img_size, args.images, args.scene_size, args.batch_size,
                                 warmup=args.warmup if args.warmup is not None else 1, repeats=args.repeats or 3,
                                 max_actors=args.max_actors)]
        cols = ["arch", "images", "batch", "model_threads", "turns", "bare_images_per_s", "pipeline_images_per_s", "ratio",
                "ratio_min", "ratio_max", "bare_first_mask_s", "pipeline_planning_s", "pipeline_first_mask_s",
                "bare_masks_per_s", "pipeline_masks_per_s", "steady_ratio"]
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if v is not None))
    print(_table(rows, cols))
    out = args.json or f"benchmark-{mode}.json"
    with open(out, "w") as f:
        json.dump({"machine": machine, "mode": mode, "argv": sys.argv[1:] if argv is None else argv, "results": rows}, f, indent=2)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
