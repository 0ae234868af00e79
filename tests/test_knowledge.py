"""Task-knowledge sources (modeling/knowledge.py): every source, the default list, learnable
weights, adapter files that record their sources, and the recipe/CLI spelling."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from samadapter.modeling import build_model, high_pass_filter, low_pass_filter
from samadapter.modeling.arch import arch_config
from samadapter.modeling.knowledge import (
    DEFAULT_KNOWLEDGE,
    KNOWLEDGE_SOURCES,
    describe_knowledge,
    normalize_knowledge,
    short_name,
)
from samadapter.modeling.weights import CheckpointError, adapter_bytes, load_adapter
from samadapter.train.config import TrainConfig

PG = "image_encoder.prompt_generator."


def _attr(name: str) -> str:
    return KNOWLEDGE_SOURCES[name].ATTRIBUTE


@pytest.mark.parametrize("name", sorted(KNOWLEDGE_SOURCES))
def test_each_source_shapes_gradients_and_checkpoint_keys(name):
    model = build_model("tiny", knowledge=[name])
    pg = model.image_encoder.prompt_generator
    x = torch.randn(2, 3, 256, 256)
    tokens = model.image_encoder.patch_embed(x)
    feats = pg.source(name)(x, tokens)
    assert feats.shape == (2, 16, 16, pg.dim)  # B x H x W x d on the 16 x 16 patch grid
    assert torch.isfinite(feats).all()

    model(x).sum().backward()
    params = dict(pg.source(name).named_parameters())
    assert params, f"{name} has no trainable parameters"
    for pname, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}.{pname}"

    keys = set(model.adapter_state_dict())
    assert any(k.startswith(PG + _attr(name) + ".") for k in keys)
    # only this source's parameters: the others are not in the checkpoint
    for other in KNOWLEDGE_SOURCES:
        if other != name:
            assert not any(k.startswith(PG + _attr(other) + ".") for k in keys), other
    assert "source_weights" not in " ".join(keys)


def test_switching_a_source_off_removes_it_from_the_checkpoint():
    both = set(build_model("tiny", knowledge="fft+edges").adapter_state_dict())
    fft = set(build_model("tiny", knowledge="fft").adapter_state_dict())
    assert {k for k in both - fft} == {PG + "edges_embed.weight", PG + "edges_embed.bias"}


def test_sources_compute_what_they_say():
    # edges: Sobel magnitude; a vertical step edge gives |gx| = 4 * step on the edge columns
    step = torch.zeros(1, 3, 32, 32)
    step[..., 16:] = 1.0
    edges = KNOWLEDGE_SOURCES["edges"]
    from samadapter.modeling.knowledge import SourceDims

    e = edges(SourceDims(64, 8, 16)).image_features(step)
    assert torch.allclose(e[0, :, 5, 15], torch.full((3,), 4.0)) and torch.allclose(e[0, :, 5, 16], torch.full((3,), 4.0))
    assert e[0, :, 5, 3].abs().max() < 1e-5
    # texture: local std of the luminance; a constant image has none, a checkerboard has 0.5
    tex = KNOWLEDGE_SOURCES["texture"](SourceDims(64, 8, 16), scales=[4])
    assert tex.image_features(torch.ones(1, 3, 32, 32)).abs().max() < 1e-5
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float().expand(1, 3, 32, 32)
    assert torch.allclose(tex.image_features(board)[0, 0, 8:24, 8:24], torch.tensor(0.5), atol=1e-5)
    # fft_highpass / fft_lowpass: a constant image is all low frequency, a +-1
    # checkerboard all high (the Nyquist frequency)
    const = torch.full((1, 3, 32, 32), 0.7)
    assert torch.allclose(low_pass_filter(const, 0.25), const, atol=1e-5)
    assert high_pass_filter(const, 0.25).abs().max() < 1e-5
    signed = board * 2 - 1
    assert torch.allclose(high_pass_filter(signed, 0.25), torch.ones_like(signed), atol=1e-5)
    assert low_pass_filter(signed, 0.25).abs().max() < 1e-5


def test_default_knowledge_is_the_paper_model_bit_for_bit():
    default = build_model("tiny").eval()
    explicit = build_model("tiny", knowledge=[dict(e) for e in DEFAULT_KNOWLEDGE]).eval()
    legacy = build_model("tiny", freq_ratio=0.25, handcrafted_weight=1.0, embedding_weight=1.0).eval()
    sd = default.state_dict()
    for other in (explicit, legacy):
        assert list(other.state_dict()) == list(sd)
        assert all(torch.equal(v, sd[k]) for k, v in other.state_dict().items())
    # the random init is drawn in the same order as before sources existed (values
    # recorded from the two-branch generator at init_seed 0)
    pinned = {
        "handcrafted_embed.weight": [-0.02382651, 0.03184557, 0.00654787],
        "embedding_proj.weight": [0.09617153, -0.01186767, -0.10309975],
        "tune.0.weight": [-0.22308415, -0.17193137, -0.19623719],
        "up.weight": [-0.30766347, 0.34064344, 0.20368509],
    }
    for key, values in pinned.items():
        assert torch.allclose(sd[PG + key].flatten()[:3], torch.tensor(values), atol=1e-7), key
    # F = 1 * conv(highpass(x)) + 1 * linear(tokens), written out
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    pg = default.image_encoder.prompt_generator
    with torch.no_grad():
        tokens = default.image_encoder.patch_embed(x)
        hand = F.conv2d(high_pass_filter(x, 0.25), sd[PG + "handcrafted_embed.weight"], sd[PG + "handcrafted_embed.bias"], stride=16)
        expected = 0 + 1.0 * hand.permute(0, 2, 3, 1)
        expected = expected + 1.0 * F.linear(tokens, sd[PG + "embedding_proj.weight"], sd[PG + "embedding_proj.bias"])
        assert torch.equal(pg.task_features(x, tokens), expected)
        assert torch.equal(default(x), explicit(x)) and torch.equal(default(x), legacy(x))


def _legacy_adapter(model) -> bytes:
    """The adapter file as written before knowledge sources existed: the same tensors,
    config with freq_ratio / handcrafted_weight / embedding_weight and no knowledge."""
    data = adapter_bytes(model)
    from samadapter.modeling.weights import read_safetensors_metadata

    meta = read_safetensors_metadata(data)
    cfg = json.loads(meta["config"])
    del cfg["knowledge"], cfg["learnable_weights"]
    cfg.update(freq_ratio=0.25, handcrafted_weight=1.0, embedding_weight=1.0)
    meta["config"] = json.dumps(cfg, sort_keys=True)
    return st_save(st_load(data), metadata=meta)


def test_old_adapter_files_still_load(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    with torch.no_grad():
        for p in model.adapter_state_dict().values():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "old.safetensors"
    path.write_bytes(_legacy_adapter(model))
    loaded = build_model("tiny", adapter_checkpoint=str(path)).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    from samadapter.modeling import build_from_adapter

    assert build_from_adapter(str(path)).config["knowledge"] == [dict(e) for e in DEFAULT_KNOWLEDGE]


def test_adapter_records_sources_and_a_mismatch_is_refused(tmp_path):
    trained = build_model("tiny", knowledge=[{"name": "fft", "weight": 1.0}, {"name": "edges", "weight": 0.5}])
    path = tmp_path / "edges.safetensors"
    path.write_bytes(adapter_bytes(trained))
    from samadapter.modeling import build_from_adapter

    rebuilt = build_from_adapter(str(path))
    assert [e["name"] for e in rebuilt.config["knowledge"]] == ["fft_highpass", "edges"]
    with pytest.raises(CheckpointError) as err:
        load_adapter(build_model("tiny"), str(path))
    msg = str(err.value)
    assert "knowledge sources fft_highpass(w=1, freq_ratio=0.25) + edges(w=0.5)" in msg
    assert "model has fft_highpass(w=1, freq_ratio=0.25) + patch_embedding(w=1)" in msg
    # a different parameter of the same source is a difference too
    with pytest.raises(CheckpointError, match="freq_ratio=0.1"):
        load_adapter(build_model("tiny", knowledge=[{"name": "fft", "freq_ratio": 0.1}, "edges"]), str(path))


def test_learnable_weights_receive_gradients_and_are_saved():
    model = build_model("tiny", knowledge="fft+embedding+texture", learnable_weights=True)
    pg = model.image_encoder.prompt_generator
    assert torch.equal(pg.source_weights.detach(), torch.ones(3))
    model(torch.randn(1, 3, 256, 256)).sum().backward()
    assert pg.source_weights.grad is not None and (pg.source_weights.grad != 0).all()
    assert PG + "source_weights" in model.adapter_state_dict()
    assert "image_encoder.prompt_generator.source_weights" in {n for n, p in model.named_parameters() if p.requires_grad}


def test_zero_weight_keeps_parameters_and_skips_the_source():
    off = build_model("tiny", knowledge=[{"name": "fft"}, {"name": "edges", "weight": 0}])
    on = build_model("tiny", knowledge="fft")
    on.load_state_dict({k: v for k, v in off.state_dict().items() if "edges_embed" not in k})
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(off.eval()(x), on.eval()(x))
    half = build_model("tiny", knowledge=[{"name": "fft"}, {"name": "edges", "weight": 0.5}])
    pg = half.image_encoder.prompt_generator
    tokens = half.image_encoder.patch_embed(x)
    with torch.no_grad():
        expected = pg.source("fft_highpass")(x, tokens) + 0.5 * pg.source("edges")(x, tokens)
        assert torch.allclose(pg.task_features(x, tokens), expected, atol=1e-6)
    with pytest.raises(ValueError, match="weight 0"):
        build_model("tiny", knowledge=[{"name": "fft", "weight": 0}])


def test_knowledge_spelling_and_errors():
    assert normalize_knowledge("fft+embedding") == DEFAULT_KNOWLEDGE
    assert normalize_knowledge(["fft_highpass", {"name": "patch_embedding"}]) == DEFAULT_KNOWLEDGE
    assert normalize_knowledge("texture")[0] == {"name": "texture", "weight": 1.0, "scales": [3, 7, 15]}
    assert short_name(DEFAULT_KNOWLEDGE) == "fft+embedding"
    assert describe_knowledge(normalize_knowledge("edges")) == "edges(w=1)"
    for bad, match in (
        ("fft+colour", "unknown knowledge source 'colour'"),
        ("fft+fft_highpass", "listed twice"),
        ([{"name": "edges", "sigma": 2}], "unknown parameters \\['sigma'\\]"),
        ([{"name": "fft", "freq_ratio": 1.5}], "freq_ratio must be in"),
        ("", "no knowledge source"),
        ([{"weight": 1}], "give a name"),
    ):
        with pytest.raises(ValueError, match=match):
            normalize_knowledge(bad)
    with pytest.raises(ValueError, match="either knowledge or the legacy"):
        arch_config("tiny", knowledge="fft", freq_ratio=0.5)
    with pytest.raises(ValueError, match="reference implementation's model"):
        arch_config("tiny", knowledge="fft+edges", reference_layout=True)


def test_knowledge_from_the_recipe_and_the_command_line():
    cfg = TrainConfig().with_overrides(["model.overrides.knowledge=fft+edges", "model.overrides.learnable_weights=true"])
    arch = arch_config(cfg.model.arch, **cfg.model.overrides)
    assert [e["name"] for e in arch.knowledge] == ["fft_highpass", "edges"] and arch.learnable_weights
    cfg = TrainConfig().with_overrides(["model.overrides.knowledge=[{name: texture, weight: 0.5, scales: [5]}]"])
    assert arch_config("tiny", **cfg.model.overrides).knowledge == ({"name": "texture", "weight": 0.5, "scales": [5]},)
    from samadapter.train.config import ConfigError

    with pytest.raises(ConfigError, match="unknown knowledge source"):
        TrainConfig().with_overrides(["model.overrides.knowledge=fft+nope"])


@pytest.mark.parametrize("freq_ratio", [0.25, 0.0])
def test_the_exported_frequency_band_equals_the_fft(freq_ratio):
    """Under ONNX export the band is computed by matrix products (no complex numbers):
    the same images as the FFT path, high and low pass, on a non-square image."""
    from samadapter.modeling.knowledge import _frequency_band_by_products, high_pass_filter, low_pass_filter

    x = torch.randn(2, 3, 48, 64)
    half = int((48 * 64 * freq_ratio) ** 0.5 // 2)
    assert torch.allclose(_frequency_band_by_products(x, half, False), high_pass_filter(x, freq_ratio), atol=1e-4)
    assert torch.allclose(_frequency_band_by_products(x, half, True), low_pass_filter(x, freq_ratio), atol=1e-4)
