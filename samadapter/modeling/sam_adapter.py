"""SamAdapter: adapted encoder + SAM's prompt encoder + SAM's mask decoder, prompt-free."""

from __future__ import annotations

import hashlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from .sam_modules import MaskDecoder, PromptEncoder
from torch import nn

from ..constants import PIXEL_MEAN, PIXEL_STD
from .arch import ADAPTER_PREFIXES, DECODER_PREFIX, PROMPT_PREFIX, UNUSED_DECODER_PREFIX
from .encoder import AdaptedImageEncoder



class BatchedMaskDecoder(MaskDecoder):
    """SAM's ``MaskDecoder`` (same submodules and checkpoint keys) for one prompt set per image.

    segment_anything's ``predict_masks`` repeats each image embedding once per prompt in
    the batch (``repeat_interleave``), which assumes a single image. Here the batch
    dimension of the image embeddings and of the prompts is the same: image b is
    decoded with prompt set b, so a batch of B images costs one decoder pass.
    """

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """B x C x h x w embeddings -> (B x num_mask_tokens x 4h x 4w masks, B x n IoU)."""
        b, c, h, w = image_embeddings.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1)
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        _, uc, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)
        return masks, self.iou_prediction_head(iou_token_out)


class SamAdapter(nn.Module):
    """SAM-Adapter for prompt-free segmentation.

    Args:
        image_encoder: the adapted ViT encoder (frozen except its prompt generator).
        prompt_encoder: SAM's prompt encoder; supplies the dense "no mask" embedding and
            the image positional encoding (frozen).
        mask_decoder: SAM's mask decoder (trainable, IoU head frozen).
        config: the architecture config the model was built from (a dict of plain values).

    ``model(images)``: B x 3 x S x S images normalized with SAM's pixel mean/std ->
    B x C x S x S mask logits (C = ``num_classes``: 1, one foreground mask; C >= 2, a logit
    per class, the background class 0).
    """

    def __init__(
        self,
        image_encoder: AdaptedImageEncoder,
        prompt_encoder: PromptEncoder,
        mask_decoder: BatchedMaskDecoder,
        config: Optional[dict] = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.config = dict(config or {})
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
        self._base_fingerprint: Optional[str] = None
        # position tables as the base's weights were made (another input size: resize.py),
        # which the fingerprint hashes in place of the resampled ones
        self._native_tables: Dict[str, torch.Tensor] = {}
        self.freeze()

    # ----------------------------------------------------------------- parameters
    # the decoder's parts a prompt-free single mask never reads: frozen
    UNUSED_PREFIXES: Tuple[str, ...] = (UNUSED_DECODER_PREFIX,)

    @classmethod
    def is_trainable_name(cls, name: str) -> bool:
        """Whether a parameter (by state-dict name) is trained: prompt generator + decoder
        without its unused heads."""
        if name.startswith(PROMPT_PREFIX):
            return True
        return name.startswith(DECODER_PREFIX) and not name.startswith(cls.UNUSED_PREFIXES)

    def freeze(self) -> None:
        """Freeze everything but the prompt generator and the mask decoder (minus IoU head)."""
        for name, param in self.named_parameters():
            param.requires_grad_(self.is_trainable_name(name))

    def trainable_parameters(self) -> List[nn.Parameter]:
        """The parameters the optimizer updates."""
        return [p for p in self.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def adapter_state_dict(self) -> dict:
        """The tensors an adapter checkpoint holds: prompt generator + whole mask decoder."""
        return {
            k: v.detach()
            for k, v in self.state_dict().items()
            if k.startswith(ADAPTER_PREFIXES)
        }

    def base_fingerprint(self) -> str:
        """SHA-256 (hex, 16 chars) of the frozen base weights, in key order.

        Identifies the SAM weights an adapter was trained on, whatever the input size they
        run at: position tables resampled to another size count as the file's own. Cached:
        the base weights are frozen and never change after loading.
        """
        if self._base_fingerprint is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.state_dict().items()):
                if key.startswith(ADAPTER_PREFIXES):
                    continue
                tensor = self._native_tables.get(key, tensor)
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._base_fingerprint = digest.hexdigest()[:16]
        return self._base_fingerprint

    def set_native_tables(self, tables: Dict[str, torch.Tensor]) -> None:
        """The base's position tables at the input size its weights were made for, where
        this model's are resampled (``resize.py``); the fingerprint is computed anew."""
        self._native_tables = dict(tables)
        self._base_fingerprint = None

    def save_adapter(self, uri: str) -> None:
        """Write the trained tensors (safetensors) with config and base fingerprint."""
        from .weights import save_adapter

        save_adapter(self, uri)

    # -------------------------------------------------------------------- forward
    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W RGB in 0..255 -> normalized with SAM's pixel mean/std."""
        return (images - self.pixel_mean) / self.pixel_std

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", 1))

    def decode(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """B x D x h x w image embeddings -> B x C x 4h x 4w low-resolution logits: the
        first C mask tokens' masks (C = 1: SAM's single-mask output)."""
        b = image_embeddings.shape[0]
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        sparse = sparse.expand(b, -1, -1)
        dense = dense.expand(b, -1, -1, -1)
        image_pe = self.prompt_encoder.get_dense_pe()
        masks, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe.to(image_embeddings.dtype),
            sparse_prompt_embeddings=sparse.to(image_embeddings.dtype),
            dense_prompt_embeddings=dense.to(image_embeddings.dtype),
        )
        return masks[:, : self.num_classes]  # C = 1: multimask_output=False, the first mask token

    def low_res_logits(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S normalized images -> B x C x S/4 x S/4 mask logits (the decoder's own
        resolution: 256 x 256 for a 1024 input); ``forward`` upsamples them to S x S."""
        s = self.img_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (s, s):
            raise ValueError(
                f"expected images of shape B x 3 x {s} x {s} (normalized), got {tuple(images.shape)}; "
                "resize with samadapter.data.transforms first"
            )
        return self.decode(self.image_encoder(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S normalized images -> B x C x S x S mask logits."""
        s = self.img_size
        return F.interpolate(self.low_res_logits(images), size=(s, s), mode="bilinear", align_corners=False)

