"""Unit tests of the SAM-Adapter model: shapes, freezing, filter, batching."""

from __future__ import annotations

import pytest
import torch

from samadapter import build_model, resize_logits
from samadapter.modeling import ARCHS, high_pass_filter
from samadapter.modeling.arch import is_sam2


@pytest.mark.parametrize("arch", [  # SAM 2's: test_sam2.py; vit_h's random init of 640M weights takes seconds: full suite only
    pytest.param(a, marks=[pytest.mark.slow] if a == "vit_h" else []) for a in sorted(ARCHS) if not is_sam2(a)])
def test_output_shapes_every_arch(arch):
    # Small img_size keeps vit_h affordable on CPU; the token grid is 4x4 (window 14 pads).
    size = 256 if arch == "tiny" else 64
    model = build_model(arch, img_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, size, size)
    assert torch.isfinite(out).all()
    emb = model.image_encoder(torch.randn(1, 3, size, size))
    assert emb.shape == (1, ARCHS[arch].out_chans, size // 16, size // 16)


def test_prompt_width_and_injection_points():
    from samadapter.modeling.arch import arch_config
    from samadapter.modeling.build import build_from_config

    model = build_from_config(arch_config("vit_h", img_size=64), base_on_meta=True)  # (the prompt generator is real)
    pg = model.image_encoder.prompt_generator
    assert pg.dim == 40  # 1280 / 32
    assert len(pg.tune) == 32
    assert pg.handcrafted_embed.kernel_size == (16, 16) and pg.handcrafted_embed.stride == (16, 16)


def test_wrong_input_shape_is_a_clear_error():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="B x 3 x 256 x 256"):
        model(torch.randn(1, 3, 128, 128))


def test_unknown_override_and_bad_values():
    with pytest.raises(ValueError, match="unknown architecture overrides"):
        build_model("tiny", embed_dims=32)
    with pytest.raises(ValueError, match="scale_factor"):
        build_model("tiny", scale_factor=7)
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("vit_x")


def test_only_trainable_parameters_get_gradients_and_frozen_stay_identical():
    torch.manual_seed(0)
    model = build_model("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, _ in model.named_trainable_parameters()}
    assert trainable, "nothing to train"
    assert all(n.startswith(("image_encoder.prompt_generator.", "mask_decoder.")) for n in trainable)
    assert not any(n.startswith("mask_decoder.iou_prediction_head.") for n in trainable)
    assert any(n.startswith("image_encoder.prompt_generator.") for n in trainable)
    assert any(n.startswith("mask_decoder.transformer.") for n in trainable)

    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(2, 3, 256, 256)
    target = (torch.rand(2, 1, 256, 256) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    # The first block's prompt reaches the loss through all later frozen blocks.
    assert model.image_encoder.prompt_generator.tune[0].weight.grad.abs().sum() > 0
    opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed, "optimizer step changed nothing"
    assert changed <= trainable
    for k in after:
        if k not in trainable:
            assert torch.equal(after[k], before[k]), k


def test_high_pass_constant_image_is_zero_and_checkerboard_survives():
    const = torch.full((1, 3, 64, 64), 0.7)
    assert high_pass_filter(const, 0.25).abs().max() < 1e-5
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    board = ((yy + xx) % 2).float().expand(1, 3, 64, 64) * 2 - 1
    out = high_pass_filter(board, 0.25)
    # A +-1 checkerboard is the highest frequency: it passes unchanged (in abs value).
    assert torch.allclose(out, board.abs(), atol=1e-5)
    # A smooth ramp (low frequency) is mostly removed.
    ramp = (xx.float() / 63).expand(1, 3, 64, 64)
    assert high_pass_filter(ramp, 0.25).mean() < 0.1 * ramp.mean()


@pytest.mark.parametrize("size,low,high", [(64, 15, 17), (1024, 255, 257)])
def test_high_pass_square_area_matches_freq_ratio(size, low, high):
    # freq_ratio 0.25 zeroes a centred square of side size/2 (512 x 512 at 1024):
    # frequencies |k| < size/4 along both axes are removed, the others are kept.
    x = torch.arange(size, dtype=torch.float64)
    yy, xx = torch.meshgrid(x, x, indexing="ij")

    def wave(k):
        return torch.cos(2 * torch.pi * k * (xx + yy) / size).expand(1, 1, size, size)

    assert high_pass_filter(wave(low), 0.25).abs().max() < 1e-6
    assert torch.allclose(high_pass_filter(wave(high), 0.25), wave(high).abs(), atol=1e-6)
    # freq_ratio 0 removes nothing
    assert high_pass_filter(wave(low), 0.0).allclose(wave(low).abs(), atol=1e-6)


def test_batch_of_two_equals_two_batches_of_one():
    torch.manual_seed(1)
    model = build_model("tiny").eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        both = model(x)
        one = torch.cat([model(x[:1]), model(x[1:])])
    assert torch.allclose(both, one, atol=1e-5), (both - one).abs().max()


def test_decoder_matches_segment_anything_mask_decoder():
    """The batched decoder equals segment_anything's MaskDecoder run image by image."""
    from segment_anything.modeling import MaskDecoder

    torch.manual_seed(2)
    model = build_model("tiny").eval()
    reference = MaskDecoder(
        transformer=model.mask_decoder.transformer,
        transformer_dim=64,
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=64,
    )
    reference.load_state_dict(model.mask_decoder.state_dict())
    emb = torch.randn(3, 64, 16, 16)
    with torch.no_grad():
        ours = model.decode(emb)
        sparse, dense = model.prompt_encoder(points=None, boxes=None, masks=None)
        theirs = torch.cat(
            [
                reference(
                    image_embeddings=emb[i : i + 1],
                    image_pe=model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )[0]
                for i in range(3)
            ]
        )
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_knowledge_source_weights_switch_branches():
    torch.manual_seed(3)
    full = build_model("tiny")
    no_emb = build_model("tiny", embedding_weight=0.0)
    no_emb.load_state_dict(full.state_dict())
    x = torch.randn(1, 3, 256, 256)
    pe = full.image_encoder.patch_embed(x)
    pg_full, pg_noemb = full.image_encoder.prompt_generator, no_emb.image_encoder.prompt_generator
    hf_only = pg_noemb.task_features(x, pe)
    conv = pg_full.handcrafted_embed
    expected = torch.nn.functional.conv2d(high_pass_filter(x, 0.25), conv.weight, conv.bias, stride=16).permute(0, 2, 3, 1)
    assert torch.allclose(hf_only, expected, atol=1e-6)
    with pytest.raises(ValueError, match="switched off"):
        build_model("tiny", embedding_weight=0.0, handcrafted_weight=0.0)


def test_resize_logits_to_original_size():
    logits = torch.randn(2, 1, 256, 256)
    assert resize_logits(logits, (480, 640)).shape == (2, 1, 480, 640)
    assert resize_logits(logits, (31, 7)).shape == (2, 1, 31, 7)
    # padded input: only the valid region is resized
    padded = torch.zeros(1, 1, 256, 256)
    padded[..., :128, :] = 5.0
    out = resize_logits(padded, (100, 200), valid_size=(128, 256))
    assert out.shape == (1, 1, 100, 200) and torch.allclose(out, torch.full_like(out, 5.0))


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(4)
    model = build_model("tiny")
    x = torch.randn(2, 3, 256, 256)

    def grads(flag):
        model.zero_grad(set_to_none=True)
        model.image_encoder.checkpoint_blocks = flag
        model(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_trainable_parameters()}

    plain, ckpt = grads(False), grads(True)
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-5, rtol=1e-4), n
