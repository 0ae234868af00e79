"""Sam2Adapter: SAM2-Adapter, prompt-free, on the ``transformers`` library's SAM 2 modules.

The adapted Hiera encoder (``hiera.py``), SAM 2's prompt encoder and mask decoder with its
high-resolution features; no memory attention (images, not video). The same interface as
:class:`SamAdapter` (``low_res_logits``, ``forward``, ``adapter_state_dict``, the base
fingerprint, ``freeze``), so training, validation, the segment job and evaluation run it
unchanged. State-dict keys: ``image_encoder.backbone.*`` / ``image_encoder.neck.*`` (SAM 2's
``vision_encoder.*``), ``prompt_encoder.*``, ``mask_decoder.*``, ``shared_image_embedding.*``,
``no_memory_embedding`` - the library's own names - and ``image_encoder.prompt_generator.*``.
"""

from __future__ import annotations

import contextlib
from typing import List, Optional

import torch
from torch import nn
from transformers.models.sam2.modeling_sam2 import Sam2MaskDecoder, Sam2Model, Sam2PositionalEmbedding, Sam2PromptEncoder

from .arch import UNUSED_SAM2_DECODER_PREFIXES, Sam2ArchConfig
from .hiera import AdaptedHieraEncoder, hf_config
from .sam_adapter import SamAdapter


class Sam2Adapter(SamAdapter):
    """SAM2-Adapter for prompt-free segmentation.

    Decoding is SAM 2's own with no prompt, as its library runs it when given none: one padding
    point of label -1 (``not_a_point_embed``), the dense "no mask" embedding, the
    ``no_memory_embedding`` added to the lowest-resolution features (a single image has no
    memory), the high-resolution features through the decoder's ``conv_s0``/``conv_s1``, and
    the first mask token's mask (single-mask output; no switching by stability score). SAM 2's
    object-score gating (masks replaced where no object is predicted) is a video-tracking
    device and is left out; the object-score head is frozen.

    ``model(images)``: B x 3 x S x S normalised images -> B x 1 x S x S mask logits.
    """

    UNUSED_PREFIXES = UNUSED_SAM2_DECODER_PREFIXES

    def __init__(self, image_encoder: AdaptedHieraEncoder, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 shared_image_embedding: nn.Module, config: Optional[dict] = None) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder, config)
        self.shared_image_embedding = shared_image_embedding
        self.no_memory_embedding = nn.Parameter(torch.zeros(1, 1, prompt_encoder.hidden_size))
        self.freeze()

    def decode(self, features: List[torch.Tensor]) -> torch.Tensor:
        """The encoder's three FPN levels (high resolution first) -> B x 1 x S/4 x S/4 logits."""
        feat_s0, feat_s1, embeddings = features
        b = embeddings.shape[0]
        feat_s0 = self.mask_decoder.conv_s0(feat_s0)
        feat_s1 = self.mask_decoder.conv_s1(feat_s1)
        embeddings = embeddings + self.no_memory_embedding.reshape(1, -1, 1, 1).to(embeddings.dtype)
        points = torch.zeros(b, 1, 1, 2, dtype=embeddings.dtype, device=embeddings.device)
        labels = -torch.ones(b, 1, 1, dtype=torch.int32, device=embeddings.device)
        sparse, dense = self.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                            input_masks=None)
        # the library's image-wide positional encoding (it reads prompt_encoder and
        # shared_image_embedding, which this model has under the same names)
        image_pe = Sam2Model.get_image_wide_positional_embeddings(self).repeat(b, 1, 1, 1)
        masks, _, _, _ = self.mask_decoder(
            image_embeddings=embeddings, image_positional_embeddings=image_pe.to(embeddings.dtype),
            sparse_prompt_embeddings=sparse.to(embeddings.dtype), dense_prompt_embeddings=dense.to(embeddings.dtype),
            multimask_output=False, high_resolution_features=[feat_s0, feat_s1])
        return masks[:, 0]  # B x point batch (1) x 1 x h x w -> B x 1 x h x w


def build_sam2(cfg: Sam2ArchConfig, base_on_meta: bool = False) -> Sam2Adapter:
    """A randomly initialised Sam2Adapter, deterministic from ``cfg.init_seed``: the prompt
    generator is drawn first from the seed, the base after it, so the adapter's init does not
    depend on whether the base is built (``base_on_meta``: laid out on the ``meta`` device
    for a checkpoint's tensors to be assigned)."""
    config = hf_config(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        base = torch.device("meta") if base_on_meta else contextlib.nullcontext()
        with base:
            encoder = AdaptedHieraEncoder(cfg, config.vision_config, prompt_device="cpu" if base_on_meta else None)
            prompt_encoder = Sam2PromptEncoder(config.prompt_encoder_config)
            decoder = Sam2MaskDecoder(config.mask_decoder_config)
            shared = Sam2PositionalEmbedding(config.prompt_encoder_config)
        model = Sam2Adapter(encoder, prompt_encoder, decoder, shared, config=cfg.to_dict())
    if base_on_meta:  # (its own parameter, made on the CPU: the checkpoint's replaces it)
        model.no_memory_embedding = nn.Parameter(torch.empty_like(model.no_memory_embedding, device="meta"))
        model.freeze()
    return model
