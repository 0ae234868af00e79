"""Registry of SAM-Adapter architectures and ``build_model``."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple

import torch
from segment_anything.modeling import PromptEncoder, TwoWayTransformer
from torch import nn

from .attention import set_attention
from .encoder import AdaptedImageEncoder
from .sam_adapter import BatchedMaskDecoder, SamAdapter

log = logging.getLogger(__name__)


@dataclass
class ArchConfig:
    """Every size of a SAM-Adapter model. The registry entries differ only in these."""

    name: str = "custom"
    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    out_chans: int = 256  # = prompt embedding width of the decoder
    # prompt generator
    scale_factor: int = 32
    freq_ratio: float = 0.25
    handcrafted_weight: float = 1.0
    embedding_weight: float = 1.0
    reference_layout: bool = False
    # mask decoder
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # seed of the random init of everything a SAM checkpoint would provide
    init_seed: int = 0

    def __post_init__(self) -> None:
        self.global_attn_indexes = tuple(int(i) for i in self.global_attn_indexes)
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.scale_factor:
            raise ValueError(
                f"embed_dim {self.embed_dim} must be divisible by scale_factor {self.scale_factor} "
                f"(the prompt width d = embed_dim / scale_factor)"
            )
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} are outside 0..{self.depth - 1} (depth {self.depth})")
        if not 0 <= self.freq_ratio < 1:
            raise ValueError(f"freq_ratio must be in [0, 1), got {self.freq_ratio}")
        if self.out_chans % 8:
            raise ValueError(f"out_chans {self.out_chans} must be a multiple of 8 (the decoder upscales to /8)")

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ArchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown architecture fields {unknown}; known: {sorted(known)}")
        return cls(**d)


ARCHS = {
    "vit_h": ArchConfig(
        name="vit_h", embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
    ),
    "vit_l": ArchConfig(
        name="vit_l", embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
    ),
    "vit_b": ArchConfig(
        name="vit_b", embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)
    ),
    # Debug size: runs everything on CPU. Its decoder is narrowed too so that training
    # on two CPU cores takes minutes.
    "tiny": ArchConfig(
        name="tiny",
        img_size=256,
        embed_dim=64,
        depth=4,
        num_heads=2,
        global_attn_indexes=(1, 3),
        window_size=4,
        scale_factor=8,
        out_chans=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
}


def arch_config(arch: str, **overrides) -> ArchConfig:
    """The registry entry ``arch`` with ``overrides`` applied (any ArchConfig field)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    known = {f.name for f in dataclasses.fields(ArchConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown architecture overrides {unknown}; known fields: {sorted(known - {'name'})}")
    return dataclasses.replace(ARCHS[arch], **overrides)


def build_from_config(cfg: ArchConfig) -> SamAdapter:
    """Construct a randomly initialised SamAdapter (deterministic from ``cfg.init_seed``)."""
    emb = cfg.embedding_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        encoder = AdaptedImageEncoder(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.out_chans,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=cfg.window_size,
            global_attn_indexes=cfg.global_attn_indexes,
            scale_factor=cfg.scale_factor,
            freq_ratio=cfg.freq_ratio,
            handcrafted_weight=cfg.handcrafted_weight,
            embedding_weight=cfg.embedding_weight,
            reference_layout=cfg.reference_layout,
        )
        prompt_encoder = PromptEncoder(
            embed_dim=cfg.out_chans,
            image_embedding_size=(emb, emb),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=16,
        )
        decoder = BatchedMaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.out_chans,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.out_chans,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        )
    return SamAdapter(encoder, prompt_encoder, decoder, config=cfg.to_dict())


def build_model(
    arch: str,
    *,
    sam_checkpoint: Optional[str] = None,
    adapter_checkpoint: Optional[str] = None,
    reference_checkpoint: Optional[str] = None,
    attention: str = "auto",
    **overrides,
) -> SamAdapter:
    """Build a SAM-Adapter model.

    Args:
        arch: ``vit_h``, ``vit_l``, ``vit_b`` or ``tiny``.
        sam_checkpoint: path or fsspec URI of official SAM weights (``sam_vit_*.pth`` key
            layout, or the same keys as ``.safetensors``). Without it (and without a
            reference checkpoint) the base is randomly initialised from ``init_seed``.
        adapter_checkpoint: an adapter checkpoint written by ``save_adapter``; loaded
            after the base weights and checked against them.
        reference_checkpoint: a full state dict saved by the public SAM-Adapter reference
            implementation; switches on ``reference_layout``.
        attention: the encoder's attention path: ``original`` (segment_anything's),
            ``fast`` (``scaled_dot_product_attention``, same weights) or ``auto`` (fast for
            SAM's 14-token windows, original for the tiny debug size; see ``set_attention``).
        **overrides: any :class:`ArchConfig` field (img_size, embed_dim, depth, ...).

    Returns:
        A :class:`SamAdapter` in train mode with the frozen/trainable split applied.
    """
    from . import weights

    if reference_checkpoint is not None:
        if overrides.get("reference_layout") is False:
            raise ValueError("reference_checkpoint needs reference_layout=True (the reference's token layout)")
        overrides["reference_layout"] = True
    cfg = arch_config(arch, **overrides)
    model = build_from_config(cfg)
    set_attention(model, attention, cfg.window_size)
    if sam_checkpoint is not None:
        weights.load_sam_checkpoint(model, sam_checkpoint)
    if reference_checkpoint is not None:
        weights.load_reference_checkpoint(model, reference_checkpoint)
    if sam_checkpoint is None and reference_checkpoint is None:
        level = logging.INFO if arch == "tiny" else logging.WARNING
        log.log(
            level,
            "%s: no SAM checkpoint given; base encoder and decoder are randomly initialised "
            "(seed %d). Results on real images are meaningless without --sam-checkpoint.",
            arch,
            cfg.init_seed,
        )
    if adapter_checkpoint is not None:
        weights.load_adapter(model, adapter_checkpoint)
    return model


def build_from_adapter(adapter_checkpoint: str, sam_checkpoint: Optional[str] = None, attention: str = "auto") -> SamAdapter:
    """The model an adapter file describes (architecture from its metadata), in eval mode:
    what evaluation, the segment job and the benchmark load. Official SAM weights given as
    a URI are fetched once per machine (``storage.local_copy``)."""
    import json

    from ..data import storage
    from . import weights

    _, meta = weights.read_adapter(adapter_checkpoint)
    config = json.loads(meta["config"])
    arch = config.pop("name")
    sam_path = storage.local_copy(sam_checkpoint) if sam_checkpoint else None
    return build_model(arch, sam_checkpoint=sam_path, adapter_checkpoint=adapter_checkpoint, attention=attention,
                       **config).eval()
