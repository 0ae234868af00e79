"""SAM 2's Hiera image encoder with SAM2-Adapter prompts injected before every block.

Hiera (SAM 2's encoder) has four stages: stage k works on a grid of S / (4 * 2^k) tokens of
width ``embed_dim * 2^k``, and the first block of stages 2-4 pools its input down (so its
input still has the previous stage's grid and width). The prompt of block i therefore has the
geometry of block i's *input*, its level l(i):

    P_i = up_l(GELU(tune_i(F_l)))      F_l = sum_j w_j F_j,l

with the task-knowledge sources of ``knowledge.py`` (the same registry as for vit_*) built once
per level at that level's width d_l = width_l / scale_factor and resolution: an image source
(the FFT high-pass, edges, ...) is computed once from the image and patch-embedded per level
with a convolution of stride 4 * 2^l; the ``patch_embedding`` source reads the encoder's patch
embeddings average-pooled to the level's grid. ``tune_i`` is one Linear(d_l -> d_l) per block
and ``up_l`` one Linear(d_l -> width_l) per level (MLP_tune per block, MLP_up per stage, as
SAM2-Adapter does). Levels that no block reads (a stage of one block) get no modules.

The Hiera modules themselves are the ``transformers`` library's (``Sam2HieraDetModel``,
``Sam2VisionNeck``), built from the registry entry (``arch.Sam2ArchConfig``) with the
library's own configuration classes.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Sam2ArchConfig
from .encoder import run_block
from .knowledge import (DEFAULT_KNOWLEDGE, KNOWLEDGE_SOURCES, ImageSource, SourceDims, active_sources, build_source,
                        normalize_knowledge)

PATCH_STRIDE = 4  # Hiera's patch embedding: a 7x7 convolution of stride 4


def hf_config(cfg: Sam2ArchConfig):
    """The ``transformers`` ``Sam2Config`` of a registry entry (SDPA attention; the decoder's
    single mask is always its first token: no stability-based switching at eval)."""
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig,
                              Sam2VisionConfig)

    s = cfg.img_size
    dims = list(cfg.stage_dims)
    hiera = Sam2HieraDetConfig(
        hidden_size=cfg.embed_dim, num_attention_heads=cfg.num_heads, image_size=[s, s],
        blocks_per_stage=list(cfg.stages), embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[cfg.num_heads * 2 ** k for k in range(4)],
        window_size_per_stage=list(cfg.window_spec), global_attention_blocks=list(cfg.global_attn_blocks),
        window_positional_embedding_background_size=list(cfg.window_pos_embed_bkg))
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=dims[::-1],
                              backbone_feature_sizes=[[s // 4] * 2, [s // 8] * 2, [s // 16] * 2],
                              fpn_hidden_size=cfg.out_chans)
    prompt = Sam2PromptEncoderConfig(hidden_size=cfg.out_chans, image_size=s, patch_size=16)
    decoder = Sam2MaskDecoderConfig(hidden_size=cfg.out_chans, mlp_dim=cfg.decoder_mlp_dim,
                                    num_attention_heads=cfg.decoder_num_heads,
                                    iou_head_hidden_dim=cfg.iou_head_hidden_dim,
                                    dynamic_multimask_via_stability=False)
    config = Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    for c in (config, config.vision_config, config.vision_config.backbone_config, config.mask_decoder_config):
        c._attn_implementation = "sdpa"
    return config


def block_levels(stages: Sequence[int]) -> List[int]:
    """The level (grid and width) of every block's input: the first block of stage k > 0
    still reads stage k-1's tokens."""
    return [k - 1 if k > 0 and j == 0 else k for k, n in enumerate(stages) for j in range(n)]


class StagePromptGenerator(nn.Module):
    """One prompt per Hiera block at its input's width and resolution (module docstring)."""

    def __init__(self, stage_dims: Sequence[int], stages: Sequence[int], scale_factor: int,
                 knowledge: Optional[Sequence] = None, learnable_weights: bool = False) -> None:
        super().__init__()
        self.knowledge = normalize_knowledge(DEFAULT_KNOWLEDGE if knowledge is None else knowledge)
        weights = [e["weight"] for e in self.knowledge]
        if not learnable_weights and not any(weights):
            raise ValueError("every knowledge source has weight 0 (all switched off); keep at least one non-zero")
        self.source_names = [e["name"] for e in self.knowledge]
        self.block_levels = block_levels(stages)
        self.level_ids = sorted(set(self.block_levels))
        self.levels = nn.ModuleDict()
        for lvl in self.level_ids:
            dim = stage_dims[lvl] // scale_factor
            dims = SourceDims(embed_dim=stage_dims[0], dim=dim, patch_size=PATCH_STRIDE * 2 ** lvl)
            level = nn.Module()
            for entry in self.knowledge:
                level.add_module(KNOWLEDGE_SOURCES[entry["name"]].ATTRIBUTE, build_source(entry, dims))
            level.up = nn.Linear(dim, stage_dims[lvl])
            self.levels[str(lvl)] = level
        self.tune = nn.ModuleList(
            [nn.Linear(stage_dims[lvl] // scale_factor, stage_dims[lvl] // scale_factor) for lvl in self.block_levels])
        self.act = nn.GELU()
        self.fixed_weights = weights  # (the initial values where the weights are learnable)
        self.source_weights = nn.Parameter(torch.tensor(weights, dtype=torch.float32)) if learnable_weights else None

    def task_features(self, images: torch.Tensor, patch_embeddings: torch.Tensor) -> Dict[int, torch.Tensor]:
        """F_l for every level: B x H_l x W_l x d_l, from B x 3 x S x S normalised images and
        the B x S/4 x S/4 x C patch embeddings."""
        image_features: Dict[str, torch.Tensor] = {}  # each image source's map, computed once
        out = {}
        for lvl in self.level_ids:
            level = self.levels[str(lvl)]
            feats = 0
            for name, weight in active_sources(self.source_names, self.source_weights,
                                               self.fixed_weights, patch_embeddings.dtype):
                source = getattr(level, KNOWLEDGE_SOURCES[name].ATTRIBUTE)
                if isinstance(source, ImageSource):
                    if name not in image_features:
                        image_features[name] = source.image_features(images)
                    x = source._conv_forward(image_features[name], source.weight, source.bias).permute(0, 2, 3, 1)
                else:
                    pooled = patch_embeddings
                    if lvl:
                        pooled = F.avg_pool2d(patch_embeddings.permute(0, 3, 1, 2), 2 ** lvl).permute(0, 2, 3, 1)
                    x = source(images, pooled)
                feats = feats + weight * x
            out[lvl] = feats
        return out

    def prompt(self, features: Dict[int, torch.Tensor], index: int) -> torch.Tensor:
        """P_i = up_l(GELU(tune_i(F_l))), l = block i's level."""
        lvl = self.block_levels[index]
        return self.levels[str(lvl)].up(self.act(self.tune[index](features[lvl])))


class AdaptedHieraEncoder(nn.Module):
    """SAM 2's image encoder (Hiera trunk + FPN neck, the library's modules at ``backbone.*``
    and ``neck.*``) with a :class:`StagePromptGenerator` at ``prompt_generator.*``.

    Forward: patch embedding -> task features -> + position embedding -> for every block i:
    ``x = block_i(x + P_i)`` (the stages' last outputs kept) -> neck -> the three FPN levels the
    decoder reads, high resolution first: B x D x S/4 x S/4, S/8, S/16 (D = out_chans)."""

    def __init__(self, cfg: Sam2ArchConfig, config=None, prompt_device: Optional[str] = None) -> None:
        """``config``: the library's ``Sam2VisionConfig`` of ``cfg`` (made from it if not given)."""
        super().__init__()
        from transformers.models.sam2.modeling_sam2 import Sam2HieraDetModel, Sam2VisionNeck

        config = config or hf_config(cfg).vision_config
        # the prompt generator first: its random init is the seed's first draws, whether or
        # not the base after it draws anything (on `meta` it does not)
        with torch.device(prompt_device) if prompt_device else contextlib.nullcontext():
            self.prompt_generator = StagePromptGenerator(cfg.stage_dims, cfg.stages, cfg.scale_factor,
                                                         cfg.knowledge, cfg.learnable_weights)
        self.backbone = Sam2HieraDetModel(config.backbone_config)
        self.neck = Sam2VisionNeck(config)
        self.num_feature_levels = config.num_feature_levels
        self.img_size = cfg.img_size
        self.checkpoint_blocks = False  # activation checkpointing of the frozen blocks (set by the trainer)

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        backbone = self.backbone
        x = backbone.patch_embed(images)  # B x H x W x C
        features = self.prompt_generator.task_features(images, x)
        x = x + backbone._get_pos_embed(x.shape[1:3])
        stage_outputs = []
        for i, block in enumerate(backbone.blocks):
            x = run_block(block, x + self.prompt_generator.prompt(features, i), self.checkpoint_blocks)
            if i in backbone.stage_ends:
                stage_outputs.append(x)
        fpn, _ = self.neck(stage_outputs)  # low resolution first
        return list(fpn[-self.num_feature_levels:][::-1])

