"""SAM 2 weights: Meta's released checkpoints (``sam2_hiera_*.pt``, ``sam2.1_hiera_*.pt``) and
the same weights in the ``transformers`` library's layout (``model.safetensors`` of its SAM 2
models), loaded strictly onto a :class:`Sam2Adapter`.

Every key of the file is either loaded or listed here as not needed for images (the video
memory: memory attention and encoder, object pointers, temporal encodings). SAM 2's mask decoder
is ``sam_mask_decoder.*`` in Meta's files: it is loaded like every other tensor, and a file
without it is an error, never a decoder silently left at its random init. The file's variant
(SAM 2 or 2.1: 2.1 added ``no_obj_embed_spatial``) and size are checked against the arch.
"""

from __future__ import annotations

import logging
import re
from typing import Dict, Optional, Tuple

import torch

from .arch import ARCHS, PROMPT_PREFIX, Sam2ArchConfig
from .weights import CheckpointError, _check_keys, _load_exact, _mapped_state_dict, load_state_dict

log = logging.getLogger(__name__)

# Meta's name -> this model's (the library's) name, applied in order, first match wins per rule
# group: the prefix of each part, then the renamed submodules inside it.
_META_PREFIXES = [
    ("image_encoder.trunk.", "image_encoder.backbone."),
    ("image_encoder.neck.", "image_encoder.neck."),
    ("sam_mask_decoder.", "mask_decoder."),
    ("sam_prompt_encoder.", "prompt_encoder."),
]
_META_RENAMES = [
    # Hiera
    (r"^(image_encoder\.backbone\.)patch_embed\.proj\.", r"\1patch_embed.projection."),
    (r"^(image_encoder\.backbone\.blocks\.\d+\.)norm(\d)\.", r"\1layer_norm\2."),
    (r"^(image_encoder\.backbone\.blocks\.\d+\.mlp\.)layers\.0\.", r"\1proj_in."),
    (r"^(image_encoder\.backbone\.blocks\.\d+\.mlp\.)layers\.1\.", r"\1proj_out."),
    (r"^(image_encoder\.neck\.convs\.\d+\.)conv\.", r"\1"),
    # mask decoder: the two-way transformer
    (r"^(mask_decoder\.transformer\..*)\.out_proj\.", r"\1.o_proj."),
    (r"^(mask_decoder\.transformer\.layers\.\d+\.)norm(\d)\.", r"\1layer_norm\2."),
    (r"^(mask_decoder\.transformer\.)norm_final_attn\.", r"\1layer_norm_final_attn."),
    (r"^(mask_decoder\.transformer\.layers\.\d+\.mlp\.)layers\.0\.", r"\1proj_in."),
    (r"^(mask_decoder\.transformer\.layers\.\d+\.mlp\.)layers\.1\.", r"\1proj_out."),
    # mask decoder: upscaling and the 3-layer heads (first, middle, last layer)
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.)layers\.0\.",
     r"\1proj_in."),
    (r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.)layers\.1\.",
     r"\1layers.0."),
    (r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.)layers\.2\.",
     r"\1proj_out."),
    # prompt encoder
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
]
_META_PE = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_META_POINTS = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")
# the video memory: not needed for single images (both variants; 2.1 adds the last two)
_META_NOT_NEEDED = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
                    "obj_ptr_proj.", "mask_downsample.", "obj_ptr_tpos_proj.", "no_obj_embed_spatial")
_HF_NOT_NEEDED = ("memory_", "mask_downsample", "object_pointer_proj", "temporal_positional_encoding_projection_layer",
                  "no_memory_positional_encoding", "no_object_pointer", "occlusion_spatial_embedding_parameter")
# the image encoder's prefix: the library's, and this model's (where the prompt generator joins it)
LIBRARY_ENCODER, OWN_ENCODER = "vision_encoder.", "image_encoder."


def library_key(key: str) -> str:
    """This model's state-dict key under the library's name (the inverse of ``to_model_keys``
    for a library-layout file)."""
    return LIBRARY_ENCODER + key[len(OWN_ENCODER):] if key.startswith(OWN_ENCODER) else key


# what only a SAM 2.1 file has, in either layout
_V21_KEYS = ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter")


def layout_of(keys) -> str:
    """``meta`` (Meta's ``.pt`` files), ``transformers`` (the library's), or ``unknown``."""
    keys = set(keys)
    if any(k.startswith("image_encoder.trunk.") for k in keys):
        return "meta"
    if any(k.startswith("vision_encoder.backbone.") for k in keys):
        return "transformers"
    return "unknown"


def variant_of(keys) -> Optional[str]:
    """``"2.1"`` or ``"2"`` from the memory tensors a released file carries; None when it has
    none (an image-only export does not tell)."""
    keys = set(keys)
    if any(k in keys for k in _V21_KEYS):
        return "2.1"
    if any(k.startswith(("memory_attention.", "memory_encoder.")) for k in keys):
        return "2"
    return None


def to_model_keys(sd: Dict[str, torch.Tensor], uri: str) -> Tuple[Dict[str, torch.Tensor], list]:
    """(the file's tensors under this model's names, the keys not needed for images)."""
    layout = layout_of(sd)
    if layout == "unknown":
        raise CheckpointError(f"{uri}: not a SAM 2 checkpoint (no 'image_encoder.trunk.*' as in Meta's files, no "
                              "'vision_encoder.backbone.*' as in the transformers library's)")
    out, skipped = {}, []
    for key, tensor in sd.items():
        if layout == "transformers":
            if key.startswith(_HF_NOT_NEEDED):
                skipped.append(key)
            else:
                out[OWN_ENCODER + key[len(LIBRARY_ENCODER):] if key.startswith(LIBRARY_ENCODER) else key] = tensor
            continue
        if key.startswith(_META_NOT_NEEDED):
            skipped.append(key)
        elif key == _META_PE:  # the library keeps the random Fourier matrix twice
            out["prompt_encoder.shared_embedding.positional_embedding"] = tensor
            out["shared_image_embedding.positional_embedding"] = tensor
        elif key == "no_mem_embed":
            out["no_memory_embedding"] = tensor
        elif _META_POINTS.match(key):
            continue  # stacked below
        else:
            new = key
            for old, repl in _META_PREFIXES:
                if new.startswith(old):
                    new = repl + new[len(old):]
                    break
            for pattern, repl in _META_RENAMES:
                new = re.sub(pattern, repl, new)
            out[new] = tensor
    points = sorted((int(m.group(1)), t) for k, t in sd.items() if (m := _META_POINTS.match(k)))
    if points:
        out["prompt_encoder.point_embed.weight"] = torch.cat([t for _, t in points], 0)
    return out, skipped


def _size_hint(sd: Dict[str, torch.Tensor]) -> str:
    """Which registry size a Meta- or library-layout file fits, from its trunk's shapes."""
    proj = sd.get("image_encoder.backbone.patch_embed.projection.weight")
    if proj is None:
        return ""
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.backbone\.blocks\.(\d+)\.", k))})
    starts = [i for i in blocks if f"image_encoder.backbone.blocks.{i}.proj.weight" in sd]  # stage 2-4 starts
    stages = tuple(b - a for a, b in zip([0] + starts, starts + [len(blocks)]))
    fits = [n for n, a in ARCHS.items() if isinstance(a, Sam2ArchConfig) and a.embed_dim == proj.shape[0]
            and a.stages == stages]
    desc = f"the file has embed_dim {proj.shape[0]} and stages {list(stages)}"
    return f"; {desc}: build it with arch={fits[0]!r}" if fits else f"; {desc}, which matches no registered arch"


def _sam2_state(model, sd: Dict[str, torch.Tensor], uri: str):
    cfg = model.config
    variant = variant_of(sd)
    if variant is not None and variant != cfg.get("sam2_version"):
        raise CheckpointError(
            f"{uri}: a SAM {variant} checkpoint, but arch {cfg.get('name')} is configured for SAM "
            f"{cfg.get('sam2_version')}; set model.overrides.sam2_version={variant} (--set) if these are the weights "
            "you mean")
    mapped, skipped = to_model_keys(sd, uri)
    stray = sorted(k for k in mapped if k.startswith(PROMPT_PREFIX))
    if stray:
        raise CheckpointError(f"{uri}: holds prompt-generator tensors ({stray[0]!r}); an adapter file goes to "
                              "adapter_checkpoint=")
    prompt_keys = {k for k in model.state_dict() if k.startswith(PROMPT_PREFIX)}
    if not any(k.startswith("mask_decoder.") for k in mapped):
        raise CheckpointError(f"{uri}: has no mask decoder ('sam_mask_decoder.*' in Meta's layout); SAM2-Adapter "
                              "fine-tunes SAM 2's decoder from its released weights, never from a random init")
    try:
        _check_keys(model, mapped, uri, allowed_missing=prompt_keys)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{_size_hint(mapped)}") from None
    return mapped, prompt_keys, skipped, variant


def load_sam2_checkpoint(model, uri: str, assign: bool = False) -> None:
    """Load SAM 2 / 2.1 weights (Meta's ``.pt`` or the library's layout, ``.safetensors`` or
    ``torch.save``) onto a :class:`Sam2Adapter`, strictly (module docstring); ``assign``: the
    base lives on ``meta`` and takes the file's tensors (memory-mapped where the file allows)."""
    raw = _mapped_state_dict(uri) if assign else load_state_dict(uri)
    mapped, prompt_keys, skipped, variant = _sam2_state(model, raw, uri)
    _load_exact(model, mapped, prompt_keys, uri, assign=assign)
    log.info("%s: SAM %s weights, %d tensors loaded, %d of the video memory not needed", uri,
             variant or "2 (variant not recorded in the file)", len(mapped), len(skipped))

