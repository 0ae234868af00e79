"""Another input size from the same weights: SAM's 1024-pixel checkpoints on a 512 or 768 model.

Two kinds of tensors in SAM's image encoder depend on the input size; everything else (the
blocks' weights, the prompt encoder, the mask decoder, the adapter) does not:

- ``image_encoder.pos_embed``, 1 x n x n x C for n = img_size / 16: resampled bicubically
  over its n x n grid (as SAM 2's and timm's ViTs resample absolute position embeddings);
- the relative-position tables ``rel_pos_h`` / ``rel_pos_w`` of the *global* attention
  blocks, (2n - 1) x head_dim: resampled linearly along their length, which is what
  segment_anything's own ``get_rel_pos`` does at run time when a table's length differs.
  The window blocks' tables are (2 * 14 - 1) x head_dim at every input size and stay as
  they are.

The resampling happens when the checkpoint is loaded (``weights.load_sam_checkpoint``). The
model keeps the file's own tables for its base fingerprint (``SamAdapter.base_fingerprint``),
so that an adapter trained at one size loads at another (``weights.load_adapter`` warns).
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

POS_EMBED = "image_encoder.pos_embed"
_REL_POS = re.compile(r"^image_encoder\.blocks\.(\d+)\.attn\.rel_pos_[hw]$")


def resample_pos_embed(table: torch.Tensor, n: int) -> torch.Tensor:
    """1 x m x m x C absolute position embedding -> 1 x n x n x C (bicubic, computed in fp32)."""
    x = F.interpolate(table.float().permute(0, 3, 1, 2), size=(n, n), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(table.dtype).contiguous()


def resample_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """L x D relative-position table -> length x D (linear, as ``get_rel_pos`` resamples)."""
    x = F.interpolate(table.float().t().unsqueeze(0), size=length, mode="linear", align_corners=False)
    return x[0].t().to(table.dtype).contiguous()


def resize_position_tables(sd: Dict[str, torch.Tensor], shapes: Dict[str, Tuple[int, ...]]
                           ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(``sd`` with its position tables resampled to ``shapes``, the file's originals of the
    tables it resampled). Only tables that differ in their grid or length are touched: a
    different width (another arch) is left for the shape check to report."""
    out, originals = dict(sd), {}
    for key, t in sd.items():
        want = tuple(shapes.get(key, t.shape))
        if want == tuple(t.shape):
            continue
        if key == POS_EMBED and t.dim() == 4 and t.shape[0] == 1 and t.shape[3] == want[3] and want[1] == want[2]:
            out[key] = resample_pos_embed(t, want[1])
        elif _REL_POS.match(key) and t.dim() == 2 and t.shape[1] == want[1]:
            out[key] = resample_rel_pos(t, want[0])
        else:
            continue
        originals[key] = t
    return out, originals


def native_zero_tables(cfg, native_img_size: int) -> Dict[str, torch.Tensor]:
    """The position tables a randomly initialised base of ``cfg``'s sizes would have at
    ``native_img_size`` (segment_anything starts them at zero; no memory: expanded zeros),
    for the fingerprint of a random base built at another size."""
    n, head_dim = native_img_size // cfg.patch_size, cfg.embed_dim // cfg.num_heads
    tables = {POS_EMBED: torch.zeros(1).expand(1, n, n, cfg.embed_dim)}
    for i in cfg.global_attn_indexes:
        for axis in "hw":
            tables[f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"] = torch.zeros(1).expand(2 * n - 1, head_dim)
    return tables


def describe(originals: Dict[str, torch.Tensor], shapes: Dict[str, Tuple[int, ...]], patch_size: int) -> str:
    """One line for the log: which tables were resampled, from which input size to which."""
    if POS_EMBED in originals:
        was, now = originals[POS_EMBED].shape[1] * patch_size, shapes[POS_EMBED][1] * patch_size
        sizes = f"from the checkpoint's {was}-pixel input to {now}"
    else:
        sizes = "to the model's input size"
    return f"resampled {len(originals)} position tables {sizes}"
