"""Benchmarks: model throughput, training-step memory, and the segment pipeline's overhead.

    python jobs/benchmark.py model --arch vit_b --img-size 1024 --batch-sizes 1 --attention original fast
    python jobs/benchmark.py train-step --arch vit_b --img-size 1024 --batch-size 1
    python jobs/benchmark.py vs-reference --reference ~/src/SAM-Adapter-PyTorch --arch vit_b --img-size 1024
    python jobs/benchmark.py pipeline --arch tiny --images 64 --batch-size 4
    python jobs/benchmark.py stages --megapixels 1.2,4.3,12
    python jobs/benchmark.py plan --keys 250000,1000000,4000000
    python jobs/benchmark.py plan --keys 200000 --history-nights 365
    python jobs/benchmark.py train-epoch --workers 2 --train-rows 32 --val-rows 16
    python jobs/benchmark.py cold-start --arch vit_h

Each figure is the median of --repeats timed runs after --warmup runs; every
configuration of `model` and `train-step` runs in a fresh process so its peak memory is
its own. `pipeline` divides the segment job's images/s (Ray Data on a started Ray, end to end:
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
processes take turns. `cold-start` gives the seconds from nothing to a model ready (SAM's
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

from samadapter.cli import doc_parser


def parse_args(argv=None) -> argparse.Namespace:
    p = doc_parser("benchmark.py", __doc__)
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--arch", default="tiny", help="vit_h, vit_l, vit_b or tiny (default tiny)")
    common.add_argument("--img-size", type=int, default=None, help="input size (default: the arch's)")
    common.add_argument("--warmup", type=int, default=None, help="untimed runs first")
    common.add_argument("--repeats", type=int, default=None, help="timed runs (the median is reported)")
    common.add_argument("--json", default=None, help="write the results here (default benchmark-<mode>.json)")

    m = sub.add_parser("model", parents=[common], help="encoder + decoder images/s, peak memory, TFLOP/s")
    m.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    m.add_argument("--attention", nargs="+", default=["original", "fast"], choices=["original", "fast"])
    m.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"], help="bf16 runs on GPU only")

    t = sub.add_parser("train-step", parents=[common], help="one training step with and without activation checkpointing")
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--attention", default="auto", choices=["auto", "original", "fast"])

    r = sub.add_parser("vs-reference", parents=[common],
                       help="encoder forward+backward seconds of ours against the reference implementation's (SAM-Adapter-PyTorch)")
    r.add_argument("--reference", required=True,
                   help="a checkout of SAM-Adapter-PyTorch (or its models/mmseg/models/sam/image_encoder.py)")
    r.add_argument("--batch-size", type=int, default=1)
    r.add_argument("--attention", nargs="+", default=["original", "fast"], choices=["original", "fast"])
    r.add_argument("--rounds", type=int, default=3, help="rounds in which every implementation runs once (default 3)")

    q = sub.add_parser("pipeline", parents=[common], help="segment job images/s divided by a bare single-process loop")
    q.add_argument("--images", type=int, default=64)
    q.add_argument("--scene-size", type=int, default=320, help="side of the synthetic test images")
    q.add_argument("--batch-size", type=int, default=4)
    q.add_argument("--max-actors", type=int, default=1)

    g = sub.add_parser("stages", parents=[common], help="CPU ms per image and bytes between stages of the segment job, by photo size")
    g.add_argument("--megapixels", default="1.2,4.3,12", help="comma-separated photo sizes (default 1.2,4.3,12)")
    g.add_argument("--image", default=None, help="a photo to make the test photos from (default: a synthetic scene)")
    g.add_argument("--resize-mode", default="squash", choices=["squash", "pad"])

    e = sub.add_parser("train-epoch", parents=[common],
                       help="seconds per training epoch split into train and validation; validation rows read across workers")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--train-rows", type=int, default=32)
    e.add_argument("--val-rows", type=int, default=16)
    e.add_argument("--epochs", type=int, default=2)
    e.add_argument("--batch-size", type=int, default=4)

    n = sub.add_parser("plan", parents=[common], help="driver peak RSS and seconds of planning a night (the --dry-run code) by key count")
    n.add_argument("--keys", default="250000,1000000,4000000", help="comma-separated key counts (default 250000,1000000,4000000)")
    n.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    n.add_argument("--history-nights", type=int, default=0,
                   help="instead: the plan over a ledger of this many nights' files, before and after --compact-ledger "
                        "(keys: the first of --keys)")
    n.add_argument("--files-per-night", type=int, default=8, help="ledger files a night leaves (default 8)")

    c = sub.add_parser("cold-start", parents=[common],
                       help="seconds to a model ready from SAM's weights, beside reading the checkpoint alone")
    c.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    return p.parse_args(argv)


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
    args = parse_args(argv)
    from samadapter.bench.common import describe_machine
    from samadapter.modeling.arch import arch_config

    img_size = args.img_size or arch_config(args.arch).img_size
    machine = describe_machine()
    if args.mode == "model":
        from samadapter.bench.model import bench_model

        rows = bench_model(args.arch, img_size, args.batch_sizes, args.attention, args.dtypes,
                             warmup=args.warmup if args.warmup is not None else 2, repeats=args.repeats or 5)
        cols = ["arch", "img_size", "batch", "attention", "dtype", "device", "images_per_s", "median_s",
                "gflop_per_image", "tflops", "fraction_of_peak", "peak_mem_gib"]
    elif args.mode == "train-step":
        from samadapter.bench.model import bench_train_step

        rows = bench_train_step(args.arch, img_size, args.batch_size, args.attention,
                                  warmup=args.warmup if args.warmup is not None else 1, repeats=args.repeats or 3)
        cols = ["arch", "img_size", "batch", "checkpointing", "device", "median_s", "peak_mem_gib", "memory_vs_plain"]
    elif args.mode == "vs-reference":
        from samadapter.cli import guarded
        from samadapter.bench.reference import bench_vs_reference

        rows, status = guarded(lambda: bench_vs_reference(
            args.reference, args.arch, img_size, args.batch_size, args.attention, rounds=args.rounds,
            warmup=args.warmup if args.warmup is not None else 1, repeats=args.repeats or 3), (FileNotFoundError, ImportError))
        if status is not None:
            return status
        cols = ["arch", "img_size", "batch", "device", "impl", "trainable_params", "median_s", "min_s", "max_s",
                "peak_mem_gib", "vs_reference"]
    elif args.mode == "stages":
        import torch

        from samadapter.bench.stages import bench_stages

        torch.set_num_threads(1)
        rows = bench_stages([float(m) for m in args.megapixels.split(",")], image=args.image,
                            img_size=args.img_size or 1024, resize_mode=args.resize_mode, repeats=args.repeats or 3)
        cols = ["megapixels", "cpu_ms_read", "cpu_ms_decode", "cpu_ms_model_input", "cpu_ms_postprocess", "cpu_ms_write",
                "cpu_ms_total", "encoded_bytes_per_image", "model_input_bytes_per_image", "model_output_bytes_per_image",
                "mask_png_bytes_per_image"]
    elif args.mode == "train-epoch":
        from samadapter.bench.train_epoch import bench_train_epoch

        rows = bench_train_epoch(args.arch, args.img_size or 128, args.workers, args.train_rows, args.val_rows,
                                 args.epochs, args.batch_size)
        cols = ["epoch", "workers", "train_rows", "val_rows", "val_rows_read", "train_seconds", "val_seconds",
                "train_images_per_s", "s_measure"]
    elif args.mode == "cold-start":
        from samadapter.bench.cold_start import bench_cold_start

        rows = bench_cold_start(args.arch, args.img_size, repeats=args.repeats or 3, threads=args.threads)
        cols = ["arch", "checkpoint_mib", "read_seconds", "build_seconds", "full_build_seconds", "build_vs_read",
                "full_build_vs_read", "read_peak_rss_mib", "build_peak_rss_mib", "full_build_peak_rss_mib"]
    elif args.mode == "plan" and args.history_nights:
        from samadapter.bench.plan import bench_history

        rows = bench_history(int(args.keys.split(",")[0]), args.history_nights, args.files_per_night, cpus=args.cpus)
        cols = ["history_nights", "ledger_files", "compacted", "seconds", "driver_peak_rss_mib", "to_do"]
    elif args.mode == "plan":
        from samadapter.bench.plan import bench_plan

        rows = bench_plan([int(k) for k in args.keys.split(",")], cpus=args.cpus)
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
    out = args.json or f"benchmark-{args.mode}.json"
    with open(out, "w") as f:
        json.dump({"machine": machine, "mode": args.mode, "argv": sys.argv[1:] if argv is None else argv, "results": rows}, f, indent=2)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
