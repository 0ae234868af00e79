"""`jobs/benchmark.py vs-reference`: our encoder's training step against the reference's.

The reference implementation (SAM-Adapter-PyTorch) is not part of this project: the user
gives a checkout of it (``--reference DIR``), and its ``image_encoder.py`` is imported from
there (``models/mmseg/models/sam/image_encoder.py`` in the repository; a path to the file
works too). Its ``from .common import ...`` is served by segment_anything's
``modeling.common`` (the same two classes) when the checkout has no ``common.py`` beside it.

What is timed is one forward + backward pass of the image encoder with the prompt
(adapter) parameters trainable and everything else frozen, as both trainings do: the
encoder is where a training step spends its time (the mask decoder is segment_anything's
in both). Every measurement runs in a fresh process (clean peak-memory counters, no
shared caches), and the implementations take turns for ``rounds`` rounds, so that a
machine whose speed drifts over minutes weighs on all alike.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import statistics
import sys
import types
from typing import Dict, List, Sequence

REFERENCE_FILE = os.path.join("models", "mmseg", "models", "sam", "image_encoder.py")
_PACKAGE = "_samadapter_reference"


def reference_encoder_file(reference: str) -> str:
    """The reference's ``image_encoder.py`` in a checkout (or the file itself)."""
    candidates = [reference] if reference.endswith(".py") else [os.path.join(reference, REFERENCE_FILE),
                                                                  os.path.join(reference, "image_encoder.py")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no reference image encoder at {' or '.join(candidates)}: give a checkout of "
                            f"SAM-Adapter-PyTorch (it has {REFERENCE_FILE}) or the file itself")


def load_reference_encoder_class(reference: str) -> type:
    """``ImageEncoderViT`` of the reference, imported from its file without its repository's
    package ``__init__`` files (they import mmcv)."""
    path = reference_encoder_file(reference)
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [os.path.dirname(os.path.abspath(path))]
    sys.modules[_PACKAGE] = package
    if not os.path.isfile(os.path.join(package.__path__[0], "common.py")):
        from ..modeling.sam_modules import common

        sys.modules[_PACKAGE + ".common"] = common
    spec = importlib.util.spec_from_file_location(_PACKAGE + ".image_encoder", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "ImageEncoderViT"):
        raise ImportError(f"{path} defines no ImageEncoderViT")
    return module.ImageEncoderViT


def _encoder(impl: str, arch: str, img_size: int, reference: str):
    """(encoder, trainable parameter count): the reference's with only its prompt
    parameters trainable, or ours (``impl`` = an attention implementation) as
    ``build_model`` leaves it for training, without activation checkpointing."""
    import torch

    from ..modeling import build_model
    from ..modeling.arch import arch_config

    if impl == "reference":
        cfg = arch_config(arch, img_size=img_size)
        torch.manual_seed(cfg.init_seed)
        encoder = load_reference_encoder_class(reference)(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, out_chans=cfg.out_chans, qkv_bias=True,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=cfg.window_size,
            global_attn_indexes=cfg.global_attn_indexes)
        for name, p in encoder.named_parameters():
            p.requires_grad = "prompt" in name
    else:
        encoder = build_model(arch, img_size=img_size, attention=impl).image_encoder
        encoder.checkpoint_blocks = False
    encoder.train()
    return encoder, sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def _encoder_case(impl: str, arch: str, img_size: int, batch: int, warmup: int, repeats: int, threads: int,
                  reference: str) -> dict:
    import torch

    from .common import current_device, time_with_peak_memory

    torch.set_num_threads(threads)
    device = current_device()
    encoder, trainable = _encoder(impl, arch, img_size, reference)
    encoder = encoder.to(device)
    x = torch.randn(batch, 3, img_size, img_size, device=device, generator=torch.Generator(device).manual_seed(0))

    def step():
        encoder.zero_grad(set_to_none=True)
        encoder(x).float().square().mean().backward()

    return {"impl": impl, "trainable_params": trainable, **time_with_peak_memory(step, device, warmup, repeats)}


def bench_vs_reference(reference: str, arch: str, img_size: int, batch: int, attentions: Sequence[str],
                       rounds: int = 3, warmup: int = 1, repeats: int = 3) -> List[dict]:
    """One row per implementation: median step seconds over every timed step of every
    round, peak memory (the largest round's), and ``vs_reference`` (its median over the
    reference's; below 1 is faster)."""
    import torch

    from .common import current_device, in_child

    reference_encoder_file(reference)  # fail before any work
    threads = torch.get_num_threads()
    impls = ["reference"] + list(attentions)
    steps: Dict[str, List[float]] = {i: [] for i in impls}
    cases: Dict[str, List[dict]] = {i: [] for i in impls}
    for _ in range(rounds):
        for impl in impls:
            case = in_child(_encoder_case, dict(impl=impl, arch=arch, img_size=img_size, batch=batch, warmup=warmup,
                                                     repeats=repeats, threads=threads, reference=reference))
            cases[impl].append(case)
            steps[impl] += case["times_s"]
    ref = statistics.median(steps["reference"])
    rows = []
    for impl in impls:
        median = statistics.median(steps[impl])
        rows.append({"mode": "vs-reference", "arch": arch, "img_size": img_size, "batch": batch, "device": current_device().type,
                     "impl": impl, "trainable_params": cases[impl][0]["trainable_params"], "rounds": rounds,
                     "median_s": median, "min_s": min(steps[impl]), "max_s": max(steps[impl]),
                     "round_medians_s": [c["median_s"] for c in cases[impl]],
                     "peak_mem_gib": max(c["peak_mem_gib"] for c in cases[impl]), "vs_reference": median / ref})
    return rows
