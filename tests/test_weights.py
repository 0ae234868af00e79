"""Weights: official SAM checkpoints, safe loading, adapter checkpoints, reference import."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from samadapter import CheckpointError, build_model
from samadapter.modeling import weights

from .conftest import official_sam


def _prompt_keys(model):
    return {k for k in model.state_dict() if k.startswith("image_encoder.prompt_generator.")}


def test_official_checkpoint_loads_every_tensor(official_tiny):
    path, sd = official_tiny
    model = build_model("tiny", sam_checkpoint=path)
    own = model.state_dict()
    for key, tensor in sd.items():
        assert torch.equal(own[key], tensor), key
    # Including the prompt encoder's positional matrix and no-mask embedding.
    assert "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in sd
    assert "prompt_encoder.no_mask_embed.weight" in sd
    # Missing keys are exactly the adapter's.
    assert set(own) - set(sd) == _prompt_keys(model)


def test_official_checkpoint_as_safetensors(tmp_path, official_tiny):
    _, sd = official_tiny
    path = tmp_path / "sam_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = build_model("tiny", sam_checkpoint=str(path))
    assert torch.equal(model.state_dict()["image_encoder.neck.0.weight"], sd["image_encoder.neck.0.weight"])


def test_extra_key_is_an_error_naming_it(tmp_path, official_tiny):
    _, sd = official_tiny
    sd = dict(sd, **{"image_encoder.blocks.0.extra.weight": torch.zeros(3)})
    path = tmp_path / "extra.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"unexpected key 'image_encoder\.blocks\.0\.extra\.weight'"):
        build_model("tiny", sam_checkpoint=str(path))


def test_missing_key_is_an_error_naming_it(tmp_path, official_tiny):
    _, sd = official_tiny
    sd = dict(sd)
    del sd["prompt_encoder.no_mask_embed.weight"]
    path = tmp_path / "missing.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing key 'prompt_encoder\.no_mask_embed\.weight'"):
        build_model("tiny", sam_checkpoint=str(path))


def test_wrong_arch_suggests_the_one_that_fits(tmp_path):
    sd = official_sam("vit_b", img_size=64).state_dict()
    path = tmp_path / "vit_b.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"(shape mismatch|missing key).*arch='vit_b'.*img_size=64"):
        build_model("vit_l", img_size=64, sam_checkpoint=str(path))
    build_model("vit_b", img_size=64, sam_checkpoint=str(path))  # and the suggestion works


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"image_encoder.pos_embed": _RunsCode(str(marker))}, f)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        build_model("tiny", sam_checkpoint=str(path))
    assert not marker.exists()
    # plain pickle (not a torch zip) is refused the same way
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(CheckpointError, match="refused to load"):
        build_model("tiny", sam_checkpoint=str(raw))
    assert not marker.exists()


def _train_a_little(model):
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)


def test_adapter_round_trip_identical_logits(tmp_path, official_tiny):
    path, _ = official_tiny
    torch.manual_seed(0)
    model = build_model("tiny", sam_checkpoint=path).eval()
    _train_a_little(model)
    uri = str(tmp_path / "adapter.safetensors")
    model.save_adapter(uri)
    # Only the trained tensors are in the file.
    meta = weights.read_safetensors_metadata(open(uri, "rb").read())
    assert meta["format"] == "samadapter-adapter" and meta["base_fingerprint"] == model.base_fingerprint()
    tensors, _ = weights.read_adapter(uri)
    assert set(tensors) == set(model.adapter_state_dict())
    assert not any(k.startswith(("image_encoder.blocks", "prompt_encoder.")) for k in tensors)

    restored = build_model("tiny", sam_checkpoint=path, adapter_checkpoint=uri).eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


def test_adapter_on_a_different_base_or_arch_is_a_clear_error(tmp_path, official_tiny):
    path, sd = official_tiny
    model = build_model("tiny", sam_checkpoint=path)
    uri = str(tmp_path / "adapter.safetensors")
    model.save_adapter(uri)
    # random base instead of the SAM weights used in training
    with pytest.raises(CheckpointError, match="fingerprint"):
        build_model("tiny", adapter_checkpoint=uri)
    # another SAM checkpoint
    other = tmp_path / "other.pth"
    torch.save(official_sam("tiny", seed=999).state_dict(), other)
    with pytest.raises(CheckpointError, match="fingerprint"):
        build_model("tiny", sam_checkpoint=str(other), adapter_checkpoint=uri)
    # another architecture
    with pytest.raises(CheckpointError, match=r"scale_factor=8 \(model has 4\)"):
        build_model("tiny", scale_factor=4, adapter_checkpoint=uri)
    # an official checkpoint is not an adapter
    with pytest.raises(CheckpointError, match="not a samadapter adapter"):
        weights.load_adapter(model, _as_safetensors(tmp_path, sd))


def _as_safetensors(tmp_path, sd):
    p = str(tmp_path / "plain.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, p)
    return p


def test_vit_h_adapter_file_is_small(tmp_path):
    """Adapter size for vit_h at its real size is ~17 MB (decoder + prompt generator)."""
    from samadapter.modeling.arch import arch_config
    from samadapter.modeling.build import build_from_config

    # img_size does not change adapter tensors; the frozen base (not in the file) on meta
    model = build_from_config(arch_config("vit_h", img_size=64), base_on_meta=True)
    n_bytes = sum(t.numel() * t.element_size() for t in model.adapter_state_dict().values())
    assert 14e6 < n_bytes < 20e6, n_bytes


# ------------------------------------------------------------ reference import
def _reference_state_dict(seed=7):
    """A state dict in the public reference implementation's key layout (tiny sizes)."""
    sam_sd = official_sam("tiny", seed=seed).state_dict()
    cfg = build_model("tiny").config
    d, c = cfg["embed_dim"] // cfg["scale_factor"], cfg["embed_dim"]
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    ref = {}
    for k, v in sam_sd.items():
        if k.startswith("prompt_encoder.pe_layer."):
            ref[k[len("prompt_encoder.") :]] = v
        elif k == "prompt_encoder.no_mask_embed.weight":
            ref["no_mask_embed.weight"] = v
        elif k.startswith("prompt_encoder."):
            continue  # the reference model has no point/box/mask prompt modules
        else:
            ref[k] = v
    pg = "image_encoder.prompt_generator."
    ref[pg + "shared_mlp.weight"], ref[pg + "shared_mlp.bias"] = rnd(c, d), rnd(c)
    ref[pg + "embedding_generator.weight"], ref[pg + "embedding_generator.bias"] = rnd(d, c), rnd(d)
    for i in range(cfg["depth"]):
        ref[pg + f"lightweight_mlp_{i}.0.weight"], ref[pg + f"lightweight_mlp_{i}.0.bias"] = rnd(d, d), rnd(d)
    ref[pg + "prompt_generator.proj.weight"], ref[pg + "prompt_generator.proj.bias"] = rnd(d, 3, 16, 16), rnd(d)
    return ref


def _reference_forward(ref, x):
    """The reference implementation's computation, written out independently.

    segment_anything's ImageEncoderViT and MaskDecoder (run one image at a time) with the
    reference's prompt generator: fft with norm='forward', a binary low-frequency mask,
    the scrambled N,C,HW read of the patch embeddings, and prompts added before blocks.
    """
    from segment_anything.modeling import MaskDecoder
    from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

    sam = official_sam("tiny")
    sam.load_state_dict(
        {
            **{k: v for k, v in ref.items() if k.startswith(("image_encoder.", "mask_decoder.")) and "prompt_generator" not in k},
            **{k: v for k, v in sam.state_dict().items() if k.startswith("prompt_encoder.")},
        }
    )
    enc, dec = sam.image_encoder, sam.mask_decoder
    assert isinstance(dec, MaskDecoder)
    pg = "image_encoder.prompt_generator."
    inp = x
    x = enc.patch_embed(inp)
    n, h, w, c = x.shape
    emb = F.linear(x.reshape(n, c, h * w).permute(0, 2, 1), ref[pg + "embedding_generator.weight"], ref[pg + "embedding_generator.bias"])
    # fft as the reference computes it
    mask = torch.zeros(inp.shape)
    hh, ww = inp.shape[-2:]
    line = int((hh * ww * 0.25) ** 0.5 // 2)
    mask[:, :, hh // 2 - line : hh // 2 + line, ww // 2 - line : ww // 2 + line] = 1
    fft = torch.fft.fftshift(torch.fft.fft2(inp, norm="forward")) * (1 - mask)
    inv = torch.fft.ifft2(torch.fft.ifftshift(fft), norm="forward").real.abs()
    hc = F.conv2d(inv, ref[pg + "prompt_generator.proj.weight"], ref[pg + "prompt_generator.proj.bias"], stride=16)
    hc = hc.view(n, hc.shape[1], h * w).permute(0, 2, 1)
    prompts = []
    for i in range(len(enc.blocks)):
        p = F.gelu(F.linear(hc + emb, ref[pg + f"lightweight_mlp_{i}.0.weight"], ref[pg + f"lightweight_mlp_{i}.0.bias"]))
        prompts.append(F.linear(p, ref[pg + "shared_mlp.weight"], ref[pg + "shared_mlp.bias"]))
    x = x + enc.pos_embed
    for i, blk in enumerate(enc.blocks):
        x = blk(prompts[i].reshape(n, h, w, -1) + x)
    feats = enc.neck(x.permute(0, 3, 1, 2))

    pe = PositionEmbeddingRandom(feats.shape[1] // 2)
    pe.positional_encoding_gaussian_matrix.copy_(ref["pe_layer.positional_encoding_gaussian_matrix"])
    image_pe = pe((h, w)).unsqueeze(0)
    dense = ref["no_mask_embed.weight"].reshape(1, -1, 1, 1).expand(1, -1, h, w)
    sparse = torch.empty((1, 0, feats.shape[1]))
    outs = []
    for b in range(n):
        m, _ = dec(feats[b : b + 1], image_pe, sparse, dense, multimask_output=False)
        outs.append(F.interpolate(m, size=inp.shape[-2:], mode="bilinear", align_corners=False))
    return torch.cat(outs)


def test_reference_checkpoint_reproduces_reference_outputs(tmp_path):
    ref = _reference_state_dict()
    path = tmp_path / "reference.pth"
    torch.save(ref, path)
    model = build_model("tiny", reference_checkpoint=str(path)).eval()
    assert model.image_encoder.prompt_generator.reference_layout
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        ours = model(x)
        theirs = _reference_forward(ref, x)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    # The default (correct) layout gives different outputs from the same weights.
    correct = build_model("tiny")
    correct.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(correct.eval()(x), ours, atol=1e-3)


def test_reference_checkpoint_with_unknown_key_fails(tmp_path):
    ref = _reference_state_dict()
    ref["image_encoder.prompt_generator.something_else.weight"] = torch.zeros(1)
    path = tmp_path / "reference.pth"
    torch.save(ref, path)
    with pytest.raises(CheckpointError, match="something_else"):
        build_model("tiny", reference_checkpoint=str(path))


def test_checkpoint_from_a_uri_scheme(tmp_path, official_tiny):
    path, sd = official_tiny
    model = build_model("tiny", sam_checkpoint="file://" + os.path.abspath(path))
    assert torch.equal(model.state_dict()["image_encoder.pos_embed"], sd["image_encoder.pos_embed"])


def _mapped_from(tensor):
    """The file whose mapping holds ``tensor``'s memory (Linux's /proc/self/maps), if any."""
    ptr = tensor.untyped_storage().data_ptr()
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= ptr < hi:
            return line.split()[-1]
    return None


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_base_on_meta_takes_the_files_tensors_and_the_adapter_init_is_unchanged(tmp_path, official_tiny, suffix):
    """With SAM's weights the base is laid out on `meta` and takes the file's (mapped)
    tensors: the same model as building everything and copying the file in, bit for bit,
    the prompt generator's seeded init included."""
    from samadapter.modeling.build import arch_config, build_from_config

    _, sd = official_tiny
    path = str(tmp_path / f"sam{suffix}")
    save_file({k: v.contiguous() for k, v in sd.items()}, path) if suffix == ".safetensors" else torch.save(sd, path)
    lazy = build_model("tiny", sam_checkpoint=path, knowledge="fft+edges")
    full = build_from_config(arch_config("tiny", knowledge="fft+edges"))  # initialised, then copied into
    weights.load_sam_checkpoint(full, path)
    got, want = lazy.state_dict(), full.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    assert not any(t.is_meta for t in [*lazy.parameters(), *lazy.buffers()])
    assert [n for n, p in lazy.named_parameters() if p.requires_grad] == \
        [n for n, p in full.named_parameters() if p.requires_grad]
    random = build_model("tiny", knowledge="fft+edges")  # no SAM file: everything drawn, as always
    assert all(torch.equal(got[k], random.state_dict()[k]) for k in _prompt_keys(lazy))
    if suffix == ".pth":  # the base's tensors are the file's pages, not copies
        assert _mapped_from(lazy.image_encoder.neck[0].weight) == path
        assert _mapped_from(full.image_encoder.neck[0].weight) != path
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(lazy.eval()(x), full.eval()(x))


def test_base_on_meta_with_a_half_precision_file(tmp_path, official_tiny):
    _, sd = official_tiny
    path = str(tmp_path / "sam_fp16.pth")
    torch.save({k: v.half() for k, v in sd.items()}, path)
    model = build_model("tiny", sam_checkpoint=path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.state_dict()["image_encoder.neck.0.weight"], sd["image_encoder.neck.0.weight"].half().float())
