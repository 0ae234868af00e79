"""SAM's ViT image encoder with SAM-Adapter prompts injected before every block."""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import torch
from .sam_modules import ImageEncoderViT
from torch.utils.checkpoint import checkpoint

from .adapter import PromptGenerator


class AdaptedImageEncoder(ImageEncoderViT):
    """``segment_anything.modeling.ImageEncoderViT`` plus a :class:`PromptGenerator`.

    The patch embedding, position embedding, blocks and neck are SAM's own modules (and
    keep SAM's checkpoint key names); the prompt generator lives at
    ``prompt_generator.*``. Forward: patch embedding -> prompts -> + absolute position
    embedding -> for every block i: ``x = block_i(x + P_i)`` -> neck.

    Args:
        scale_factor, knowledge, learnable_weights, reference_layout: see
            :class:`PromptGenerator`.
        prompt_device: build the prompt generator on this device (the rest follows the
            caller's default device).
        **vit_kwargs: passed to ``ImageEncoderViT`` (img_size, patch_size, embed_dim,
            depth, num_heads, global_attn_indexes, window_size, ...).
    """

    def __init__(
        self,
        *,
        scale_factor: int,
        knowledge: Optional[Sequence] = None,
        learnable_weights: bool = False,
        reference_layout: bool = False,
        prompt_device: Optional[str] = None,
        **vit_kwargs,
    ) -> None:
        super().__init__(**vit_kwargs)
        # prompt_device: where the prompt generator is built when the ViT is built elsewhere
        # (on `meta`, to take a checkpoint's tensors)
        with torch.device(prompt_device) if prompt_device else contextlib.nullcontext():
            self.prompt_generator = PromptGenerator(
                embed_dim=vit_kwargs["embed_dim"],
                depth=len(self.blocks),
                patch_size=vit_kwargs["patch_size"],
                scale_factor=scale_factor,
                knowledge=knowledge,
                learnable_weights=learnable_weights,
                reference_layout=reference_layout,
            )
        # Activation checkpointing of the frozen blocks; gradients still flow through
        # them to the prompts of earlier blocks. Set by the trainer.
        self.checkpoint_blocks = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S normalized images -> B x out_chans x S/16 x S/16 embeddings."""
        x = self.patch_embed(images)  # B x H x W x C, a permuted view of the conv's output
        features = self.prompt_generator.task_features(images, x)
        # The trunk in row-major order: adding to the permuted view would keep its layout
        # through every block, and each layer norm would copy its input, forward and backward.
        x = x.contiguous()
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for i, block in enumerate(self.blocks):
            x = run_block(block, x + self.prompt_generator.prompt(features, i), self.checkpoint_blocks)
        return self.neck(x.permute(0, 3, 1, 2).contiguous())  # NCHW, the layout the neck always had

    @property
    def embedding_size(self) -> Tuple[int, int]:
        """(H, W) of the token grid."""
        size = self.img_size // self.patch_embed.proj.kernel_size[0]
        return (size, size)


def run_block(block: torch.nn.Module, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """``block(x)``, under activation checkpointing when asked and gradients are on (the
    frozen blocks' activations recomputed in backward; gradients still reach earlier prompts)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)
