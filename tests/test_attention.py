"""The fused attention path equals segment_anything's attention."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, Block

from samadapter import build_model
from samadapter.modeling.attention import SdpaAttention, set_attention


def _block(dim, heads, window, input_size, seed):
    torch.manual_seed(seed)
    blk = Block(dim=dim, num_heads=heads, use_rel_pos=True, window_size=window, input_size=input_size)
    with torch.no_grad():  # rel-pos tables are zero-initialised: make them matter
        blk.attn.rel_pos_h.normal_(0, 0.5)
        blk.attn.rel_pos_w.normal_(0, 0.5)
    return blk.eval()


@pytest.mark.parametrize(
    "tokens,window",
    [
        ((8, 8), 4),     # windowed, no padding
        ((10, 10), 4),   # windowed, padded to 12 x 12
        ((14, 14), 14),  # one window
        ((9, 11), 0),    # global attention, not square
        ((16, 16), 0),   # global attention
    ],
)
def test_fast_attention_equals_original(tokens, window):
    size = (window, window) if window else tokens
    blk = _block(64, 4, window, size, seed=sum(tokens) + window)
    fast = copy.deepcopy(blk)
    set_attention(fast, "fast")
    assert isinstance(fast.attn, SdpaAttention) and type(blk.attn) is Attention
    x = torch.randn(2, *tokens, 64)
    with torch.no_grad():
        assert torch.allclose(blk(x), fast(x), atol=1e-4, rtol=1e-4), (blk(x) - fast(x)).abs().max()


def test_fast_attention_gradients_match(monkeypatch):
    monkeypatch.setattr(SdpaAttention, "takes_sams_matmuls", lambda self, x: False)  # SDPA's backward, as on CUDA
    blk = _block(32, 2, 0, (6, 6), seed=3)
    fast = copy.deepcopy(blk)
    set_attention(fast, "fast")
    x = torch.randn(1, 6, 6, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    blk(x).square().sum().backward()
    fast(x2).square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-4)
    assert torch.allclose(blk.attn.rel_pos_h.grad, fast.attn.rel_pos_h.grad, atol=1e-4)


def test_fast_attention_takes_sams_matmuls_for_cpu_autograd(monkeypatch):
    """On CPU, SDPA only where autograd does not record the pass; the same values either way."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    fast = _block(32, 2, 0, (6, 6), seed=5).requires_grad_(False)  # frozen, as the adapter's encoder
    set_attention(fast, "fast")
    x = torch.randn(1, 6, 6, 32)
    with torch.no_grad():
        expected = fast(x)
    y = fast(x)  # grad enabled, nothing to differentiate: the fused kernel
    assert len(calls) == 2 and torch.equal(y, expected)
    xg = x.clone().requires_grad_(True)
    y = fast(xg)  # training: the input needs a gradient (the prompts come before the blocks)
    assert len(calls) == 2 and torch.allclose(y, expected, atol=1e-4)
    y.square().sum().backward()
    assert xg.grad is not None
    fast.attn.rel_pos_h.requires_grad_(True)  # the block's own weights train
    fast(x).sum().backward()
    assert len(calls) == 2 and fast.attn.rel_pos_h.grad is not None


def test_whole_model_same_outputs_and_keys():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.3)
    keys = set(model.state_dict())
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        set_attention(model, "original")
        a = model(x)
        assert set_attention(model, "fast") == "fast"
        b = model(x)
    assert set(model.state_dict()) == keys  # same checkpoint keys
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    with pytest.raises(ValueError, match="choose one of"):
        set_attention(model, "flash")


def test_auto_picks_by_window_size():
    tiny = build_model("tiny")  # 4-token windows
    vit_b = build_model("vit_b", img_size=64)  # SAM's 14-token windows
    assert all(type(b.attn) is Attention for b in tiny.image_encoder.blocks)
    assert all(type(b.attn) is SdpaAttention for b in vit_b.image_encoder.blocks)
    assert all(type(b.attn) is SdpaAttention for b in build_model("tiny", attention="fast").image_encoder.blocks)
