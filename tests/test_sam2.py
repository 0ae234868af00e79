"""SAM2-Adapter: the library's SAM 2 forward, Meta's checkpoint layout, prompts in every Hiera block."""

from __future__ import annotations

import json
import os

import pytest
import torch

from samadapter.modeling import CheckpointError, build_from_adapter, build_model
from samadapter.modeling.arch import ARCHS, arch_config, is_sam2
from samadapter.modeling.build import build_from_config
from samadapter.modeling.knowledge import KNOWLEDGE_SOURCES
from samadapter.modeling.weights import check_sam_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# key -> shape of Meta's SAM2Base for each released config (facebookresearch/sam2, no tensor data)
OFFICIAL = json.load(open(os.path.join(ROOT, "tests", "data", "sam2_official_keys.json")))


def _zero_prompts(model):
    with torch.no_grad():
        for level in model.image_encoder.prompt_generator.levels.values():
            level.up.weight.zero_()
            level.up.bias.zero_()


def _library_model(cfg, seed=0):
    """The transformers library's own SAM 2 image model at a registry size, every tensor random."""
    from transformers import Sam2Model

    from samadapter.modeling.hiera import hf_config

    torch.manual_seed(seed)
    model = Sam2Model(hf_config(cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():  # (several start at zero)
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_zero_prompts_give_the_library_sam2_logits(tmp_path):
    """The adapter's output scaled to 0: SAM2-Adapter's logits are those of the library's own
    Sam2Model.forward (no prompt, single mask) on the same weights, loaded from the library's
    layout; with the prompts on they are not."""
    from safetensors.torch import save_file

    cfg = arch_config("sam2_tiny")
    library = _library_model(cfg)
    path = str(tmp_path / "sam2_tiny.safetensors")
    save_file({k: v.contiguous() for k, v in library.state_dict().items()}, path)
    ours = build_model("sam2_tiny", sam_checkpoint=path).eval()
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        want = library(pixel_values=x, multimask_output=False).pred_masks[:, 0]
        prompted = ours.low_res_logits(x)
        _zero_prompts(ours)
        got = ours.low_res_logits(x)
    assert got.shape == want.shape == (2, 1, cfg.img_size // 4, cfg.img_size // 4)
    assert (got - want).abs().max() < 1e-5
    assert (prompted - want).abs().max() > 1e-3


@pytest.mark.parametrize("release,arch", [("sam2.1_hiera_t", "sam2_hiera_t"), ("sam2.1_hiera_s", "sam2_hiera_s"),
                                          ("sam2.1_hiera_b+", "sam2_hiera_b+"), ("sam2.1_hiera_l", "sam2_hiera_l")])
def test_every_released_size_maps_strictly_from_meta_layout(release, arch):
    """Meta's key layout of each released size (shapes only, from its own model code): every
    key loaded or listed as video memory, every tensor of the model's base provided, shapes equal."""
    model = build_from_config(arch_config(arch), base_on_meta=True)
    sd = {k: torch.empty(v, device="meta") for k, v in OFFICIAL[release].items()}
    from samadapter.modeling.sam2_weights import _sam2_state

    mapped, prompt_keys, skipped, variant = _sam2_state(model, sd, release)
    assert variant == "2.1"
    # every file key accounted for: 4 point embeddings stacked into one tensor, the positional
    # matrix kept twice by the library, the rest one to one or skipped
    assert len(mapped) + len(skipped) == len(sd) - 4 + 1 + 1
    assert all(k.startswith(("memory_", "obj_ptr", "mask_downsample", "no_mem_pos", "no_obj", "maskmem"))
               for k in skipped)
    assert set(mapped) | prompt_keys == set(model.state_dict())


def test_variant_and_size_are_checked_against_the_arch():
    sd2 = {k: torch.empty(v, device="meta") for k, v in OFFICIAL["sam2_hiera_t"].items()}
    model = build_from_config(arch_config("sam2_hiera_t"), base_on_meta=True)
    from samadapter.modeling.sam2_weights import _sam2_state

    with pytest.raises(CheckpointError, match=r"a SAM 2 checkpoint.*configured for SAM 2\.1.*sam2_version=2"):
        _sam2_state(model, sd2, "sam2_hiera_tiny.pt")
    _sam2_state(build_from_config(arch_config("sam2_hiera_t", sam2_version="2"), base_on_meta=True), sd2, "x")
    large = {k: torch.empty(v, device="meta") for k, v in OFFICIAL["sam2.1_hiera_l"].items()}
    with pytest.raises(CheckpointError, match=r"build it with arch='sam2_hiera_l'"):
        _sam2_state(model, large, "sam2.1_hiera_large.pt")
    no_decoder = {k: v for k, v in OFFICIAL["sam2.1_hiera_t"].items() if not k.startswith("sam_mask_decoder.")}
    with pytest.raises(CheckpointError, match="has no mask decoder"):
        _sam2_state(model, {k: torch.empty(v, device="meta") for k, v in no_decoder.items()}, "x")


def test_a_meta_checkpoint_loads_its_decoder_and_every_base_tensor(tmp_path):
    """A file in Meta's layout (sam2.1_hiera_t, random values) loads strictly: SAM 2's
    ``sam_mask_decoder.*`` tensors are the model's decoder, and every other base tensor is the
    file's under its library name; the size and variant checks pass without loading data."""
    torch.manual_seed(0)
    sd = {k: torch.randn(v) for k, v in OFFICIAL["sam2.1_hiera_t"].items()}
    path = str(tmp_path / "sam2.1_hiera_tiny.pt")
    torch.save({"model": sd}, path)
    check_sam_checkpoint(build_from_config(arch_config("sam2_hiera_t"), base_on_meta=True), path, path)
    model = build_model("sam2_hiera_t", sam_checkpoint=path)
    own = model.state_dict()
    assert torch.equal(own["mask_decoder.transformer.layers.0.self_attn.o_proj.weight"],
                       sd["sam_mask_decoder.transformer.layers.0.self_attn.out_proj.weight"])
    assert torch.equal(own["mask_decoder.output_hypernetworks_mlps.0.proj_out.weight"],
                       sd["sam_mask_decoder.output_hypernetworks_mlps.0.layers.2.weight"])
    assert torch.equal(own["mask_decoder.conv_s0.weight"], sd["sam_mask_decoder.conv_s0.weight"])
    assert torch.equal(own["no_memory_embedding"], sd["no_mem_embed"])
    assert torch.equal(own["prompt_encoder.point_embed.weight"],
                       torch.cat([sd[f"sam_prompt_encoder.point_embeddings.{i}.weight"] for i in range(4)]))
    # every base tensor is one of the file's (random values: a sum identifies a tensor)
    file_sums = {t.sum().item() for k, t in sd.items()} | {sd[f"sam_prompt_encoder.point_embeddings.{i}.weight"].sum().item()
                                                            for i in range(4)}
    file_sums.add(own["prompt_encoder.point_embed.weight"].sum().item())
    for key, tensor in own.items():
        if not key.startswith("image_encoder.prompt_generator."):
            assert tensor.sum().item() in file_sums, key
    # trainable: the prompt generator and the decoder, without its IoU and object-score heads
    trainable = {n for n, _ in model.named_trainable_parameters()}
    assert any(n.startswith("mask_decoder.transformer.") for n in trainable)
    assert not any(n.startswith(("mask_decoder.iou_prediction_head.", "mask_decoder.pred_obj_score_head.",
                                 "image_encoder.backbone.", "image_encoder.neck.", "prompt_encoder."))
                   for n in trainable)


def test_output_shapes_and_the_encoder_levels():
    model = build_model("sam2_tiny", img_size=128).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        out = model(x)
        levels = model.image_encoder(x)
    assert out.shape == (2, 1, 128, 128) and torch.isfinite(out).all()
    assert [tuple(t.shape) for t in levels] == [(2, 64, 32, 32), (2, 64, 16, 16), (2, 64, 8, 8)]
    with pytest.raises(ValueError, match="B x 3 x 128 x 128"):
        model(torch.randn(1, 3, 256, 256))


def test_knowledge_sources_reach_every_hiera_block():
    """Every source (learnable weights) and every block's tune layer gets a gradient, at every
    level that a block reads; the block's prompt has its input's geometry."""
    knowledge = "+".join(KNOWLEDGE_SOURCES)
    model = build_model("sam2_tiny", knowledge=knowledge, learnable_weights=True)
    pg = model.image_encoder.prompt_generator
    model(torch.randn(1, 3, 256, 256)).sum().backward()
    for i, tune in enumerate(pg.tune):
        assert tune.weight.grad is not None and tune.weight.grad.abs().sum() > 0, f"block {i}"
    assert (pg.source_weights.grad.abs() > 0).all()
    for lvl, level in pg.levels.items():
        for name in KNOWLEDGE_SOURCES:
            module = getattr(level, KNOWLEDGE_SOURCES[name].ATTRIBUTE)
            assert module.weight.grad.abs().sum() > 0, (lvl, name)
    # sam2_tiny: stages (1, 1, 2, 1): the inputs of blocks 0..4 are at levels 0, 0, 1, 2, 2
    assert pg.block_levels == [0, 0, 1, 2, 2] and sorted(pg.levels) == ["0", "1", "2"]


def test_adapter_files_rebuild_either_family(tmp_path):
    model = build_model("sam2_tiny").eval()
    with torch.no_grad():
        for p in model.adapter_state_dict().values():
            p.add_(0.01)
    path = str(tmp_path / "sam2.safetensors")
    model.save_adapter(path)
    again = build_from_adapter(path)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.config["name"] == "sam2_tiny" and again.config["family"] == "sam2"
    with pytest.raises(CheckpointError):
        build_model("tiny", adapter_checkpoint=path)


def test_the_registry_holds_both_families():
    assert {"sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l", "sam2_tiny"} <= set(ARCHS)
    assert is_sam2("sam2_hiera_l") and not is_sam2("vit_h")
    with pytest.raises(ValueError, match="num_classes"):
        arch_config("sam2_tiny", num_classes=3)
    with pytest.raises(ValueError, match="unknown architecture overrides"):
        arch_config("sam2_tiny", depth=3)


def test_the_check_against_meta_code_needs_a_checkout(tmp_path, capsys):
    """`jobs/benchmark.py vs-sam2` imports Meta's code only from a checkout the user gives."""
    from samadapter.jobs.benchmark import main

    assert main(["vs-sam2", "--reference", str(tmp_path), "--json", str(tmp_path / "out.json")]) == 2
    assert f"{tmp_path}: no sam2/build_sam.py" in capsys.readouterr().err


def test_the_cold_start_benchmark_writes_a_sam2_checkpoint_that_loads(tmp_path):
    from samadapter.bench.cold_start import write_shaped_checkpoint

    path = str(tmp_path / "sam2_tiny.pth")
    assert write_shaped_checkpoint("sam2_tiny", path) > 0
    model = build_model("sam2_tiny", sam_checkpoint=path)
    assert float(model.mask_decoder.conv_s0.weight.abs().sum()) == 0.0  # the file's zeros, not an init
