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
from .sam_modules import Attention, get_rel_pos
from torch import nn

from ..constants import ATTENTION_IMPLS


class SdpaAttention(Attention):
    """SAM's multi-head attention with relative positions, through ``scaled_dot_product_attention``.

    On CPU a pass that autograd records (training: the adapter's prompts reach every block)
    takes segment_anything's explicit matmuls instead: there the relative-position bias needs
    a gradient, for which CPU has no fused kernel, and SDPA's unfused path materialises the
    bias and a masked softmax besides the scores, which made it the slower of the two on CPU
    (``jobs/benchmark.py train-step --attention`` measures either). Without autograd the fused kernel is the faster.
    CUDA keeps SDPA for both: its memory-efficient kernel computes the bias's gradient
    without the score matrix.
    """

    def takes_sams_matmuls(self, x: torch.Tensor) -> bool:
        """Whether this pass runs segment_anything's own attention (CPU, recorded by autograd)."""
        return (self.use_rel_pos and x.device.type == "cpu" and torch.is_grad_enabled()
                and (x.requires_grad or self.qkv.weight.requires_grad or self.rel_pos_h.requires_grad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x H x W x C -> B x H x W x C."""
        if self.takes_sams_matmuls(x):
            return super().forward(x)
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


# Windows at least this wide (SAM's real encoders use 14) make the fused path pay off.
AUTO_FAST_MIN_WINDOW = 14


def set_attention(module: nn.Module, impl: str = "auto", window_size: int = AUTO_FAST_MIN_WINDOW) -> str:
    """Switch every SAM ``Attention`` inside ``module`` to ``original`` or ``fast``.

    ``auto`` picks ``fast`` for windows of 14 tokens and more (SAM's real encoders) and
    ``original`` for smaller ones (the tiny test model), where the fused kernel's overhead
    dominates; ``jobs/benchmark.py model --attention original fast`` measures both (figures
    in the README's performance section). Returns the implementation in use.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention {impl!r}: choose one of {ATTENTION_IMPLS}")
    if impl == "auto":
        chosen = "fast" if window_size >= AUTO_FAST_MIN_WINDOW else "original"
    else:
        chosen = impl
    cls: Union[type, type] = SdpaAttention if chosen == "fast" else Attention
    for m in module.modules():
        if isinstance(m, Attention):
            m.__class__ = cls
    return chosen
