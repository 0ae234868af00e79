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
# SAM 2's decoder also has an object-score head, unused by a single prompt-free mask
UNUSED_SAM2_DECODER_PREFIXES = (UNUSED_DECODER_PREFIX, "mask_decoder.pred_obj_score_head.")


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


@dataclass
class Sam2ArchConfig:
    """Every size of a SAM2-Adapter model: SAM 2's Hiera image encoder (frozen), prompts into
    every Hiera block at its stage's width and resolution (``hiera.py``), SAM 2's mask decoder
    with its high-resolution features. The fields are those of SAM 2's released configs
    (``sam2.1_hiera_*.yaml``); ``family`` tells the registry's two kinds apart."""

    name: str = "sam2_custom"
    family: str = "sam2"
    sam2_version: str = "2.1"  # the released weights meant: "2" or "2.1" (checked against the file)
    img_size: int = 1024
    embed_dim: int = 96  # stage 1's width; doubled at every later stage
    num_heads: int = 1  # stage 1's heads; doubled at every later stage
    stages: Tuple[int, ...] = (1, 2, 7, 2)
    global_attn_blocks: Tuple[int, ...] = (5, 7, 9)
    window_spec: Tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg: Tuple[int, ...] = (7, 7)
    out_chans: int = 256  # the FPN's and the decoder's width
    # prompt generator: width d_k = stage width / scale_factor per stage; sources as for vit_*
    scale_factor: int = 8
    knowledge: Tuple[Dict[str, Any], ...] = DEFAULT_KNOWLEDGE
    learnable_weights: bool = False
    num_classes: int = 1
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    init_seed: int = 0

    def __post_init__(self) -> None:
        for f in ("stages", "global_attn_blocks", "window_spec", "window_pos_embed_bkg"):
            setattr(self, f, tuple(int(i) for i in getattr(self, f)))
        if self.family != "sam2":
            raise ValueError(f"family {self.family!r}: a SAM 2 architecture has family 'sam2'")
        self.sam2_version = str(self.sam2_version)
        if self.sam2_version not in ("2", "2.1"):
            raise ValueError(f"sam2_version {self.sam2_version!r}: choose 2 or 2.1")
        if len(self.stages) != 4 or len(self.window_spec) != 4:
            raise ValueError("stages and window_spec have one entry per Hiera stage (4)")
        if self.img_size % 32:
            raise ValueError(f"img_size {self.img_size} must be a multiple of 32 (Hiera's last stage is 1/32)")
        bad = [i for i in self.global_attn_blocks if not 0 <= i < sum(self.stages)]
        if bad:
            raise ValueError(f"global_attn_blocks {bad} are outside 0..{sum(self.stages) - 1}")
        if self.embed_dim % self.scale_factor:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by scale_factor {self.scale_factor}")
        if self.knowledge is not DEFAULT_KNOWLEDGE:
            from .knowledge import normalize_knowledge

            self.knowledge = normalize_knowledge(self.knowledge)
        if self.num_classes != 1:
            raise ValueError(f"num_classes {self.num_classes}: SAM 2 architectures segment one foreground mask "
                             "(num_classes 1); several classes are built for the vit_* family")

    @property
    def stage_dims(self) -> Tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** k for k in range(4))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for f in ("stages", "global_attn_blocks", "window_spec", "window_pos_embed_bkg"):
            d[f] = list(d[f])
        d["knowledge"] = [dict(e) for e in self.knowledge]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Sam2ArchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown architecture fields {unknown}; known: {sorted(known)}")
        return cls(**d)


def _sam2(name: str, **fields) -> Sam2ArchConfig:
    return Sam2ArchConfig(name=name, **fields)


# SAM 2 and 2.1 (Meta's configs sam2{,.1}_hiera_{t,s,b+,l}.yaml): the image encoder and decoder
# have the same shapes in both; the variant is told by the checkpoint (sam2_weights.py)
ARCHS.update({
    "sam2_hiera_t": _sam2("sam2_hiera_t", stages=(1, 2, 7, 2), global_attn_blocks=(5, 7, 9)),
    "sam2_hiera_s": _sam2("sam2_hiera_s", stages=(1, 2, 11, 2), global_attn_blocks=(7, 10, 13)),
    "sam2_hiera_b+": _sam2("sam2_hiera_b+", embed_dim=112, num_heads=2, stages=(2, 3, 16, 3),
                           global_attn_blocks=(12, 16, 20), window_pos_embed_bkg=(14, 14)),
    "sam2_hiera_l": _sam2("sam2_hiera_l", embed_dim=144, num_heads=2, stages=(2, 6, 36, 4),
                          global_attn_blocks=(23, 33, 43), window_spec=(8, 4, 16, 8)),
    # Debug size: random, runs on CPU in the tests and the embedded default.
    "sam2_tiny": _sam2("sam2_tiny", img_size=256, embed_dim=16, stages=(1, 1, 2, 1), global_attn_blocks=(3,),
                       window_spec=(8, 4, 4, 2), window_pos_embed_bkg=(4, 4), out_chans=64, scale_factor=4,
                       decoder_mlp_dim=256, decoder_num_heads=4, iou_head_hidden_dim=64),
})


def is_sam2(arch: str) -> bool:
    """Whether a registry name is of the SAM 2 family."""
    return isinstance(ARCHS.get(arch), Sam2ArchConfig)


def config_from_dict(d: dict):
    """The architecture config (either family) that ``to_dict`` wrote, by its ``name``."""
    cls = Sam2ArchConfig if d.get("family") == "sam2" else ArchConfig
    return cls.from_dict(d)


def arch_config(arch: str, **overrides):
    """The registry entry ``arch`` with ``overrides`` applied (any field of its config class)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if is_sam2(arch):
        known = {f.name for f in dataclasses.fields(Sam2ArchConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown architecture overrides {unknown} for {arch}; known fields: "
                             f"{sorted(known - {'name', 'family'})}")
        return dataclasses.replace(ARCHS[arch], **overrides)
    overrides = with_legacy_knowledge(dict(overrides))
    known = {f.name for f in dataclasses.fields(ArchConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown architecture overrides {unknown}; known fields: {sorted(known - {'name'})}")
    return dataclasses.replace(ARCHS[arch], **overrides)
