"""Pure PyTorch SAM-Adapter model built on segment_anything's modules.

The names below are imported on first use (PEP 562), so that ``samadapter.modeling.arch``
(the registry, torch-free) can be imported without torch.
"""

import importlib

_EXPORTS = {
    "PromptGenerator": "adapter", "high_pass_filter": "adapter", "low_pass_filter": "adapter",
    "SdpaAttention": "attention", "set_attention": "attention",
    "ARCHS": "arch", "ArchConfig": "arch", "arch_config": "arch",
    "build_from_adapter": "build", "build_from_config": "build", "build_model": "build",
    "AdaptedImageEncoder": "encoder",
    "DEFAULT_KNOWLEDGE": "knowledge", "KNOWLEDGE_SOURCES": "knowledge", "normalize_knowledge": "knowledge",
    "PIXEL_MEAN": "sam_adapter", "PIXEL_STD": "sam_adapter", "BatchedMaskDecoder": "sam_adapter",
    "SamAdapter": "sam_adapter",
    "CheckpointError": "weights", "load_adapter": "weights", "load_sam_checkpoint": "weights",
    "resize_logits": "..ops",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _EXPORTS[name]
    value = getattr(importlib.import_module(module if module.startswith("..") else "." + module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
