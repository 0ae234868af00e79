"""A fused attention path for SAM's encoder blocks.

segment_anything's ``Attention`` materialises ``softmax(q k^T * scale + rel_pos)`` with
explicit matmuls. :class:`SdpaAttention` computes the same function with
``torch.nn.functional.scaled_dot_product_attention``, passing SAM's decomposed relative
position bias as the additive attention mask. It is a drop-in replacement: same
parameters and checkpoint keys (it subclasses ``Attention``), so switching is a change of
the blocks' attention class, not of the weights.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

ATTENTION_IMPLS = ("original", "fast", "auto")


class SdpaAttention(Attention):
    """SAM's multi-head attention with relative positions, through ``scaled_dot_product_attention``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x H x W x C -> B x H x W x C."""
        b, h, w, _ = x.shape
        n = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, n, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B x heads x HW x d
        bias = None
        if self.use_rel_pos:
            rh = get_rel_pos(h, h, self.rel_pos_h)  # H x H x d
            rw = get_rel_pos(w, w, self.rel_pos_w)  # W x W x d
            r_q = q.reshape(b, n, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh.to(q.dtype))
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw.to(q.dtype))
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # default scale = d ** -0.5
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def set_attention(module: nn.Module, impl: str = "auto") -> str:
    """Switch every SAM ``Attention`` inside ``module`` to ``original`` or ``fast``.

    ``auto`` picks ``fast`` (see ``jobs/benchmark.py model`` for the measurements behind
    the choice). Returns the implementation in use.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention {impl!r}: choose one of {ATTENTION_IMPLS}")
    chosen = "fast" if impl == "auto" else impl
    cls: Union[type, type] = SdpaAttention if chosen == "fast" else Attention
    for m in module.modules():
        if isinstance(m, Attention):
            m.__class__ = cls
    return chosen
