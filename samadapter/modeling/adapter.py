"""The SAM-Adapter prompt generator (Chen et al., 2023).

Task knowledge F = w_hc * F_hc + w_emb * F_emb is built from two sources:

- handcrafted: the high-frequency component of the (normalized) input image,
  embedded by a patch-embedding convolution (3 -> d, kernel = stride = patch);
- embedding: a Linear(embed_dim -> d) of the encoder's patch embeddings.

For every encoder block i the prompt is P_i = up(GELU(tune_i(F))), with one
``tune_i`` Linear(d -> d) per block and a single shared ``up`` Linear(d -> embed_dim).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn


def high_pass_filter(images: torch.Tensor, freq_ratio: float) -> torch.Tensor:
    """Keep the high spatial frequencies of ``images``.

    The 2-D spectrum is centre-shifted and a centred square of low frequencies whose
    area is ``freq_ratio`` of the spectrum is zeroed (for 1024x1024 and 0.25 that is a
    512x512 square); the inverse transform's real part is returned in absolute value.

    Args:
        images: B x C x H x W float tensor.
        freq_ratio: fraction of the spectrum's area removed, in [0, 1).

    Returns:
        B x C x H x W tensor, non-negative, same dtype as the input (computed in fp32).
    """
    dtype = images.dtype
    x = images.float()
    h, w = x.shape[-2:]
    half = int((h * w * freq_ratio) ** 0.5 // 2)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    if half > 0:
        keep = torch.ones((h, w), dtype=x.dtype, device=x.device)
        keep[h // 2 - half : h // 2 + half, w // 2 - half : w // 2 + half] = 0
        spectrum = spectrum * keep
    out = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real.abs()
    return out.to(dtype)


class PromptGenerator(nn.Module):
    """Builds one prompt per encoder block from handcrafted and embedding features.

    Args:
        embed_dim: encoder token width (C).
        depth: number of encoder blocks (one prompt each).
        patch_size: encoder patch size; the handcrafted branch uses the same grid.
        scale_factor: d = embed_dim // scale_factor is the prompt generator's width.
        freq_ratio: area fraction of low frequencies removed by the high-pass filter.
        handcrafted_weight: w for the handcrafted source (0 switches it off).
        embedding_weight: w for the embedding source (0 switches it off).
        reference_layout: read the B x H x W x C patch embeddings as if they were
            N x C x (H*W) before the embedding Linear, as the public reference
            implementation does (tokens and channels scrambled). Only for importing
            checkpoints trained with that implementation; never the default.
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        patch_size: int,
        scale_factor: int,
        freq_ratio: float = 0.25,
        handcrafted_weight: float = 1.0,
        embedding_weight: float = 1.0,
        reference_layout: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % scale_factor != 0:
            raise ValueError(
                f"embed_dim {embed_dim} is not divisible by scale_factor {scale_factor}; "
                "choose a scale_factor that divides embed_dim"
            )
        if handcrafted_weight == 0 and embedding_weight == 0:
            raise ValueError(
                "both knowledge sources are switched off (handcrafted_weight = "
                "embedding_weight = 0); keep at least one non-zero"
            )
        self.embed_dim = embed_dim
        self.dim = embed_dim // scale_factor
        self.depth = depth
        self.freq_ratio = freq_ratio
        self.handcrafted_weight = float(handcrafted_weight)
        self.embedding_weight = float(embedding_weight)
        self.reference_layout = reference_layout

        self.handcrafted_embed = nn.Conv2d(3, self.dim, kernel_size=patch_size, stride=patch_size)
        self.embedding_proj = nn.Linear(embed_dim, self.dim)
        self.tune = nn.ModuleList([nn.Linear(self.dim, self.dim) for _ in range(depth)])
        self.act = nn.GELU()
        self.up = nn.Linear(self.dim, embed_dim)

    def task_features(self, images: torch.Tensor, patch_embeddings: torch.Tensor) -> torch.Tensor:
        """Task knowledge F.

        Args:
            images: B x 3 x S x S normalized input images.
            patch_embeddings: B x H x W x C patch embeddings (before position embedding).

        Returns:
            B x H x W x d.
        """
        b, h, w, c = patch_embeddings.shape
        feats = 0
        if self.handcrafted_weight != 0:
            hf = self.handcrafted_embed(high_pass_filter(images, self.freq_ratio))  # B d H W
            feats = feats + self.handcrafted_weight * hf.permute(0, 2, 3, 1)
        if self.embedding_weight != 0:
            if self.reference_layout:
                # The reference reads BHWC memory as N x C x HW and transposes it.
                tokens = patch_embeddings.reshape(b, c, h * w).permute(0, 2, 1).reshape(b, h, w, c)
            else:
                tokens = patch_embeddings
            feats = feats + self.embedding_weight * self.embedding_proj(tokens)
        return feats

    def prompt(self, features: torch.Tensor, index: int) -> torch.Tensor:
        """P_i = up(GELU(tune_i(F))): B x H x W x d -> B x H x W x embed_dim."""
        return self.up(self.act(self.tune[index](features)))

    def forward(self, images: torch.Tensor, patch_embeddings: torch.Tensor) -> List[torch.Tensor]:
        """All prompts, one B x H x W x embed_dim tensor per block."""
        feats = self.task_features(images, patch_embeddings)
        return [self.prompt(feats, i) for i in range(self.depth)]
