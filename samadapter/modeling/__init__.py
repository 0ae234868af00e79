"""Pure PyTorch SAM-Adapter model built on segment_anything's modules."""

from .adapter import PromptGenerator, high_pass_filter, low_pass_filter
from .attention import SdpaAttention, set_attention
from .arch import ARCHS, ArchConfig, arch_config
from .build import build_from_adapter, build_from_config, build_model
from .encoder import AdaptedImageEncoder
from .knowledge import DEFAULT_KNOWLEDGE, KNOWLEDGE_SOURCES, normalize_knowledge
from ..ops import resize_logits
from .sam_adapter import PIXEL_MEAN, PIXEL_STD, BatchedMaskDecoder, SamAdapter
from .weights import CheckpointError, load_adapter, load_sam_checkpoint

__all__ = [
    "ARCHS",
    "AdaptedImageEncoder",
    "ArchConfig",
    "BatchedMaskDecoder",
    "CheckpointError",
    "DEFAULT_KNOWLEDGE",
    "KNOWLEDGE_SOURCES",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PromptGenerator",
    "SamAdapter",
    "SdpaAttention",
    "arch_config",
    "build_from_config",
    "build_from_adapter",
    "build_model",
    "high_pass_filter",
    "low_pass_filter",
    "load_adapter",
    "load_sam_checkpoint",
    "normalize_knowledge",
    "resize_logits",
    "set_attention",
]
