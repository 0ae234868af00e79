"""`jobs/benchmark.py vs-sam2`: SAM2-Adapter with its prompts at zero against Meta's own SAM 2.

Meta's code is neither part of this project nor a dependency: the user gives a checkout of
facebookresearch/sam2 (``--reference DIR``, the folder holding its ``sam2`` package) with the
packages it needs to build a model (``pip install hydra-core iopath``), and its ``sam2`` package is
imported from there. Meta's ``SAM2Base`` is built from the release's config (``sam2.1_hiera_*.yaml``
or ``sam2_hiera_*.yaml``) with random weights, every tensor perturbed so that none is left at a
trivial zero, and saved as a Meta checkpoint (``{"model": state_dict}``); this project loads that
file with ``build_model(arch, sam_checkpoint=...)`` (``sam2_weights.py``'s key map), sets MLP_up
of every level to zero, and both run the same images prompt-free, as SAM 2 runs with no prompt
(a padding point of label -1, the no-memory embedding, the high-resolution features; Meta's
decoder with its stability switch off). The rows give the largest difference of the 1/16
features and of the logits, and each implementation's seconds per image.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import List

import torch

from .common import time_median

RELEASES = {"sam2_hiera_t": "t", "sam2_hiera_s": "s", "sam2_hiera_b+": "b+", "sam2_hiera_l": "l"}


def _meta_model(reference: str, arch: str, version: str):
    if arch not in RELEASES:
        raise ValueError(f"vs-sam2 compares Meta's released sizes: {sorted(RELEASES)}, not {arch!r}")
    if not os.path.isfile(os.path.join(reference, "sam2", "build_sam.py")):
        raise FileNotFoundError(f"{reference}: no sam2/build_sam.py; give a checkout of facebookresearch/sam2")
    sys.path.insert(0, os.path.abspath(reference))
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    initialize_config_module("sam2", version_base="1.2")
    name = f"configs/sam2.1/sam2.1_hiera_{RELEASES[arch]}.yaml" if version == "2.1" else \
        f"configs/sam2/sam2_hiera_{RELEASES[arch]}.yaml"
    cfg = compose(config_name=name)
    OmegaConf.resolve(cfg)
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.sam_mask_decoder.dynamic_multimask_via_stability = False
    return model


def _meta_forward(meta, x):
    """Meta's prompt-free single-mask path: (1/16 features, low-resolution logits)."""
    b = x.shape[0]
    out = meta.forward_image(x)
    _, feats, _, sizes = meta._prepare_backbone_features(out)
    feats[-1] = feats[-1] + meta.no_mem_embed
    feats = [f.permute(1, 2, 0).view(b, -1, *s) for f, s in zip(feats, sizes)]
    points = torch.zeros(b, 1, 2)
    labels = -torch.ones(b, 1, dtype=torch.int32)
    sparse, dense = meta.sam_prompt_encoder(points=(points, labels), boxes=None, masks=None)
    logits = meta.sam_mask_decoder(
        image_embeddings=feats[-1], image_pe=meta.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=False, repeat_image=False, high_res_features=feats[:-1])[0]
    return out["backbone_fpn"][2], logits


def bench_vs_sam2(reference: str, arch: str, batch: int = 1, version: str = "2.1", repeats: int = 3) -> List[dict]:
    from ..modeling import build_model

    meta = _meta_model(reference, arch, version)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"sam{version}_hiera_{RELEASES[arch]}.pt")
        torch.save({"model": meta.state_dict()}, path)
        ours = build_model(arch, sam_checkpoint=path, sam2_version=version).eval()
    with torch.no_grad():
        for level in ours.image_encoder.prompt_generator.levels.values():
            level.up.weight.zero_()
            level.up.bias.zero_()
    img_size = ours.img_size
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        meta_feats, meta_logits = _meta_forward(meta, x)
        our_feats = ours.image_encoder(x)[2]
        our_logits = ours.low_res_logits(x)
        feature_diff = float((our_feats - meta_feats).abs().max())
        logit_diff = float((our_logits - meta_logits).abs().max())
        cpu = torch.device("cpu")
        meta_s = time_median(lambda: _meta_forward(meta, x), cpu, 0, repeats)["median_s"]
        our_s = time_median(lambda: ours.low_res_logits(x), cpu, 0, repeats)["median_s"]
    common = {"arch": arch, "sam2_version": version, "img_size": img_size, "batch": batch,
              "max_abs_diff_features": feature_diff, "max_abs_diff_logits": logit_diff,
              "logit_scale": float(meta_logits.abs().max())}
    return [{**common, "impl": "meta", "seconds_per_image": meta_s / batch},
            {**common, "impl": "samadapter (zero prompts)", "seconds_per_image": our_s / batch}]
