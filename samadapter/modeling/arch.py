"""The registry of SAM-Adapter architectures: every size of a model, by name.

It imports nothing of the model: ``build.py`` builds from it and ``weights.py`` recognises
checkpoints by it, with no import cycle between them; torch is imported only when an
architecture is checked (its knowledge sources), so a job's ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from ..constants import DEFAULT_KNOWLEDGE

# The adapter, by state-dict key: the prompt generator and the mask decoder (without its
# unused IoU head when training). Defined once, for the model and for weight files.
PROMPT_PREFIX = "image_encoder.prompt_generator."
DECODER_PREFIX = "mask_decoder."
UNUSED_DECODER_PREFIX = "mask_decoder.iou_prediction_head."
ADAPTER_PREFIXES = (PROMPT_PREFIX, DECODER_PREFIX)


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
    # prompt generator: its width d = embed_dim / scale_factor, the task-knowledge
    # sources F = sum_j w_j F_j (knowledge.py; a list or "fft+edges" shorthand) and
    # whether the w_j are trained
    scale_factor: int = 32
    knowledge: Tuple[Dict[str, Any], ...] = DEFAULT_KNOWLEDGE
    learnable_weights: bool = False
    reference_layout: bool = False
    # mask decoder: num_classes = 1 is one foreground mask (the first mask token, as SAM's
    # single-mask output); C >= 2 classes (background included) take the first C mask tokens,
    # SAM's 4 extended to C where C > 4 (classes.py)
    num_classes: int = 1
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
        if self.knowledge is not DEFAULT_KNOWLEDGE:  # the default is canonical already (test_knowledge)
            from .knowledge import normalize_knowledge

            self.knowledge = normalize_knowledge(self.knowledge)
        if self.reference_layout and [e["name"] for e in self.knowledge] != [e["name"] for e in DEFAULT_KNOWLEDGE]:
            raise ValueError("reference_layout imports the reference implementation's model, which has the "
                             "default knowledge sources (fft_highpass + patch_embedding) only")
        if self.num_classes < 1:
            raise ValueError(f"num_classes {self.num_classes} must be >= 1 (1: one foreground mask; C >= 2: classes "
                             "including the background)")
        if self.out_chans % 8:
            raise ValueError(f"out_chans {self.out_chans} must be a multiple of 8 (the decoder upscales to /8)")

    @property
    def num_mask_tokens(self) -> int:
        """The decoder's mask tokens: SAM's 1 + num_multimask_outputs, more when the classes need them."""
        return max(self.num_multimask_outputs + 1, self.num_classes)

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        d["knowledge"] = [dict(e) for e in self.knowledge]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ArchConfig":
        """An ArchConfig from ``to_dict`` output, including that of adapter files written
        before knowledge sources existed (``freq_ratio``, ``handcrafted_weight``,
        ``embedding_weight``)."""
        d = with_legacy_knowledge(dict(d))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown architecture fields {unknown}; known: {sorted(known)}")
        return cls(**d)


# The prompt generator's fields before knowledge sources existed: adapter files of that
# time record them, and ``--set model.overrides.freq_ratio=...`` still means them.
LEGACY_KNOWLEDGE_FIELDS = ("freq_ratio", "handcrafted_weight", "embedding_weight")


def with_legacy_knowledge(fields: Dict[str, Any]) -> Dict[str, Any]:
    """``fields`` with the legacy prompt-generator fields turned into ``knowledge``:
    ``freq_ratio`` and ``handcrafted_weight`` set the ``fft_highpass`` source,
    ``embedding_weight`` the ``patch_embedding`` source (a weight of 0 kept their
    parameters and switched the source off, as it still does)."""
    legacy = {k: fields.pop(k) for k in LEGACY_KNOWLEDGE_FIELDS if k in fields}
    if not legacy:
        return fields
    if "knowledge" in fields:
        raise ValueError(f"give either knowledge or the legacy fields {sorted(legacy)}, not both")
    knowledge = [dict(e) for e in DEFAULT_KNOWLEDGE]
    if "freq_ratio" in legacy:
        knowledge[0]["freq_ratio"] = legacy["freq_ratio"]
    knowledge[0]["weight"] = legacy.get("handcrafted_weight", 1.0)
    knowledge[1]["weight"] = legacy.get("embedding_weight", 1.0)
    fields["knowledge"] = knowledge
    return fields


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
    overrides = with_legacy_knowledge(dict(overrides))
    known = {f.name for f in dataclasses.fields(ArchConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown architecture overrides {unknown}; known fields: {sorted(known - {'name'})}")
    return dataclasses.replace(ARCHS[arch], **overrides)
