"""Another input size from the same weights (samadapter/modeling/resize.py): SAM's checkpoints
made at one size load onto a model of another with their position tables resampled, and an
adapter trained at one size runs at another."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from segment_anything.modeling.image_encoder import get_rel_pos

from .conftest import official_sam
from samadapter.modeling import build_from_adapter, build_model
from samadapter.modeling.build import check_checkpoints
from samadapter.modeling.weights import CheckpointError

GLOBAL = "image_encoder.blocks.{}.attn.rel_pos_{}"


def _tables_match_sams_own_resampling(model, sd, n, global_blocks, window_blocks):
    pos = model.image_encoder.pos_embed.detach()
    assert pos.shape[1:3] == (n, n)
    want = F.interpolate(sd["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=(n, n), mode="bicubic",
                         align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(pos, want, atol=1e-6)
    state = model.state_dict()
    for i in global_blocks:
        for axis in "hw":
            table, original = state[GLOBAL.format(i, axis)], sd[GLOBAL.format(i, axis)]
            assert table.shape[0] == 2 * n - 1
            # what segment_anything's own attention makes of the file's table at run time
            assert torch.allclose(get_rel_pos(n, n, table), get_rel_pos(n, n, original), atol=1e-6)
    for i in window_blocks:  # 14-token (tiny: 4-token) windows: the same tables at every input size
        assert torch.equal(state[GLOBAL.format(i, "h")], sd[GLOBAL.format(i, "h")])


def test_tiny_at_another_size_from_its_checkpoint(official_tiny):
    path, sd = official_tiny  # made at 256: a 16 x 16 grid
    model = build_model("tiny", sam_checkpoint=path, img_size=384).eval()
    _tables_match_sams_own_resampling(model, sd, 24, global_blocks=(1, 3), window_blocks=(0, 2))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 384, 384)).shape == (2, 1, 384, 384)
    # the same size is the file's tensors exactly
    same = build_model("tiny", sam_checkpoint=path)
    for key in ("image_encoder.pos_embed", GLOBAL.format(1, "h")):
        assert torch.equal(same.state_dict()[key], sd[key])
    assert same.base_fingerprint() == model.base_fingerprint()  # the base is the file's at any size


def test_vit_b_at_512_from_a_1024_checkpoint(tmp_path):
    sd = official_sam("vit_b").state_dict()
    path = str(tmp_path / "sam_vit_b.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    model = build_model("vit_b", sam_checkpoint=path, img_size=512).eval()
    _tables_match_sams_own_resampling(model, sd, 32, global_blocks=(2, 5, 8, 11), window_blocks=(0, 1, 3))
    with torch.no_grad():
        assert model.low_res_logits(torch.randn(1, 3, 512, 512)).shape == (1, 1, 128, 128)
    native = build_model("vit_b", sam_checkpoint=path).state_dict()  # 1024 -> 1024: the file's tensors
    for key in ("image_encoder.pos_embed", GLOBAL.format(2, "h"), GLOBAL.format(11, "w")):
        assert torch.equal(native[key], sd[key])


def test_an_adapter_trained_at_one_size_runs_at_another(tmp_path, official_tiny, caplog):
    path, _ = official_tiny
    trained = build_model("tiny", sam_checkpoint=path)
    uri = str(tmp_path / "adapter.safetensors")
    trained.save_adapter(uri)
    assert check_checkpoints(uri, path, img_size=384)["img_size"] == 384  # the tables' shapes checked on meta
    with caplog.at_level(logging.WARNING):
        model = build_from_adapter(uri, path, img_size=384)
    assert model.img_size == 384 and "adapter trained at input size 256, running at 384" in caplog.text
    for key, tensor in trained.adapter_state_dict().items():
        assert torch.equal(model.adapter_state_dict()[key], tensor)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1, 384, 384)
    # another base at that size is still refused
    other = tmp_path / "other.pth"
    torch.save(official_sam("tiny", seed=999).state_dict(), other)
    with pytest.raises(CheckpointError, match="fingerprint"):
        build_from_adapter(uri, str(other), img_size=384)
    # a random base: its (zero) tables at any size are the same base
    random_uri = str(tmp_path / "random.safetensors")
    build_model("tiny").save_adapter(random_uri)
    assert build_from_adapter(random_uri, img_size=384).img_size == 384
    with pytest.raises(CheckpointError, match="cannot run at input size 380"):
        check_checkpoints(uri, img_size=380)
