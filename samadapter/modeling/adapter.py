"""The SAM-Adapter prompt generator (Chen et al., 2023).

Task knowledge F = sum_j w_j F_j comes from the sources of ``knowledge.py`` (by default
the paper's two: the image's high frequencies and the encoder's patch embeddings).
For every encoder block i the prompt is P_i = up(GELU(tune_i(F))), with one
``tune_i`` Linear(d -> d) per block and a single shared ``up`` Linear(d -> embed_dim).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .knowledge import (DEFAULT_KNOWLEDGE, KNOWLEDGE_SOURCES, SourceDims, active_sources, build_source,
                        high_pass_filter, low_pass_filter, normalize_knowledge)

__all__ = ["PromptGenerator", "high_pass_filter", "low_pass_filter"]


class PromptGenerator(nn.Module):
    """Builds one prompt per encoder block from the configured knowledge sources.

    Args:
        embed_dim: encoder token width (C).
        depth: number of encoder blocks (one prompt each).
        patch_size: encoder patch size; image sources embed on the same grid.
        scale_factor: d = embed_dim // scale_factor is the prompt generator's width.
        knowledge: the sources and their weights w_j (see ``knowledge.normalize_knowledge``);
            default the paper's ``fft_highpass`` (freq_ratio 0.25) + ``patch_embedding``.
            A source of weight 0 keeps its parameters and is not computed.
        learnable_weights: the w_j are a trained parameter (``source_weights``, initialised
            to the given weights) instead of constants.
        reference_layout: the ``patch_embedding`` source reads the patch embeddings as the
            public reference implementation does (only for importing its checkpoints).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        patch_size: int,
        scale_factor: int,
        knowledge: Optional[Sequence] = None,
        learnable_weights: bool = False,
        reference_layout: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % scale_factor != 0:
            raise ValueError(
                f"embed_dim {embed_dim} is not divisible by scale_factor {scale_factor}; "
                "choose a scale_factor that divides embed_dim"
            )
        self.knowledge = normalize_knowledge(DEFAULT_KNOWLEDGE if knowledge is None else knowledge)
        weights = [e["weight"] for e in self.knowledge]
        if not learnable_weights and not any(weights):
            raise ValueError("every knowledge source has weight 0 (all switched off); keep at least one non-zero")
        self.embed_dim = embed_dim
        self.dim = embed_dim // scale_factor
        self.depth = depth
        self.reference_layout = reference_layout
        self.learnable_weights = learnable_weights

        # Sources first, in the listed order, then the tune/up layers: with the default
        # list the random init is drawn in the same order as it always was.
        dims = SourceDims(embed_dim, self.dim, patch_size, reference_layout)
        self.source_names = [e["name"] for e in self.knowledge]
        for entry in self.knowledge:
            self.add_module(KNOWLEDGE_SOURCES[entry["name"]].ATTRIBUTE, build_source(entry, dims))
        self.tune = nn.ModuleList([nn.Linear(self.dim, self.dim) for _ in range(depth)])
        self.act = nn.GELU()
        self.up = nn.Linear(self.dim, embed_dim)
        self.fixed_weights = weights  # (the initial values where the weights are learnable)
        self.source_weights = nn.Parameter(torch.tensor(weights, dtype=torch.float32)) if learnable_weights else None

    def source(self, name: str) -> nn.Module:
        """The module of knowledge source ``name``."""
        return getattr(self, KNOWLEDGE_SOURCES[name].ATTRIBUTE)

    def task_features(self, images: torch.Tensor, patch_embeddings: torch.Tensor) -> torch.Tensor:
        """Task knowledge F = sum_j w_j F_j.

        Args:
            images: B x 3 x S x S normalized input images.
            patch_embeddings: B x H x W x C patch embeddings (before position embedding).

        Returns:
            B x H x W x d.
        """
        feats = 0
        for name, weight in active_sources(self.source_names, self.source_weights, self.fixed_weights,
                                           patch_embeddings.dtype):
            feats = feats + weight * self.source(name)(images, patch_embeddings)
        return feats

    def prompt(self, features: torch.Tensor, index: int) -> torch.Tensor:
        """P_i = up(GELU(tune_i(F))): B x H x W x d -> B x H x W x embed_dim."""
        return self.up(self.act(self.tune[index](features)))

    def forward(self, images: torch.Tensor, patch_embeddings: torch.Tensor) -> List[torch.Tensor]:
        """All prompts, one B x H x W x embed_dim tensor per block."""
        feats = self.task_features(images, patch_embeddings)
        return [self.prompt(feats, i) for i in range(self.depth)]
