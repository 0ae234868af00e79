"""`jobs/benchmark.py model` and `train-step`: the model's images/s, FLOPs and peak memory per
attention path and dtype, and a training step with and without activation checkpointing;
each configuration in a fresh process."""

from __future__ import annotations

from typing import List

import torch

from .common import current_device, device_peak_tflops, in_child, time_with_peak_memory


def _model_case(arch: str, img_size: int, batch: int, attention: str, dtype: str, warmup: int, repeats: int, threads: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from ..modeling import build_model

    torch.set_num_threads(threads)
    device = current_device()
    model = build_model(arch, img_size=img_size, attention=attention).eval().to(device)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    bf16 = dtype == "bf16"

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x)

    # FLOPs of the model's math, counted on segment_anything's explicit attention so that
    # both attention paths are credited with the same work.
    from ..modeling import set_attention

    set_attention(model, "original")
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    set_attention(model, attention)
    t = time_with_peak_memory(step, device, warmup, repeats)
    ips = batch / t["median_s"]
    tflops = flops / t["median_s"] / 1e12
    peak_dev = device_peak_tflops(dtype)
    return {
        "mode": "model", "arch": arch, "img_size": img_size, "batch": batch, "attention": attention, "dtype": dtype,
        "device": device.type, **t, "images_per_s": ips, "seconds_per_image": t["median_s"] / batch,
        "peak_memory_mib": t["peak_mem_gib"] * 1024, "gflop_per_image": flops / batch / 1e9,
        "tflops": tflops, "fraction_of_peak": (tflops / peak_dev) if peak_dev else None,
    }


def bench_model(archs: List[str], img_sizes: List[int], batches: List[int], attentions: List[str], dtypes: List[str],
                warmup: int = 2, repeats: int = 5) -> List[dict]:
    """A row per arch x input size (none given: each arch's own) x dtype x batch x attention
    path, each in a fresh process; ``cost_vs_largest``: seconds per image over those of the
    same arch and settings at its largest input size here."""
    from ..modeling.arch import arch_config

    threads = torch.get_num_threads()
    rows = []
    for arch in archs:
        for img_size in img_sizes or [arch_config(arch).img_size]:
            for dtype in dtypes:
                if dtype == "bf16" and not torch.cuda.is_available():
                    continue  # bf16 figures only where they mean something (GPU)
                for batch in batches:
                    for attention in attentions:
                        rows.append(in_child(_model_case, dict(
                            arch=arch, img_size=img_size, batch=batch, attention=attention, dtype=dtype, warmup=warmup,
                            repeats=repeats, threads=threads)))
    for row in rows:
        same = [r for r in rows if all(r[k] == row[k] for k in ("arch", "batch", "attention", "dtype"))]
        largest = max(same, key=lambda r: r["img_size"])
        row["cost_vs_largest"] = row["seconds_per_image"] / largest["seconds_per_image"]
    return rows


# -------------------------------------------------------------- train-step mode
def _train_case(arch: str, img_size: int, batch: int, checkpointing: bool, attention: str, warmup: int, repeats: int, threads: int) -> dict:
    from ..modeling import build_model
    from ..train.losses import segmentation_loss

    torch.set_num_threads(threads)
    device = current_device()
    model = build_model(arch, img_size=img_size, attention=attention).train().to(device)
    model.image_encoder.checkpoint_blocks = checkpointing
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = (torch.rand(batch, 1, img_size, img_size, device=device) > 0.5).float()
    bf16 = device.type == "cuda"

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        segmentation_loss(logits, y).backward()

    t = time_with_peak_memory(step, device, warmup, repeats)
    return {"mode": "train-step", "arch": arch, "img_size": img_size, "batch": batch, "checkpointing": checkpointing,
            "attention": attention, "device": device.type, **t}


def bench_train_step(arch: str, img_size: int, batch: int, attention: str = "auto", warmup: int = 1, repeats: int = 3) -> List[dict]:
    threads = torch.get_num_threads()
    rows = [
        in_child(_train_case, dict(arch=arch, img_size=img_size, batch=batch, checkpointing=ckpt, attention=attention,
                                        warmup=warmup, repeats=repeats, threads=threads))
        for ckpt in (False, True)
    ]
    rows[1]["memory_vs_plain"] = rows[1]["peak_mem_gib"] / rows[0]["peak_mem_gib"] if rows[0]["peak_mem_gib"] else None
    return rows
