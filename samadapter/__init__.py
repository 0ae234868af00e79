"""samadapter: SAM-Adapter (frozen SAM encoder + learned adapter prompts) on Ray.

The model is pure PyTorch (``samadapter.modeling``); Ray is imported only by the
training and segmentation modules that need it. The names below are imported on first
use, so that Ray tasks that only decode images do not pay for importing torch and
segment_anything.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["CheckpointError", "SamAdapter", "build_model", "resize_logits", "__version__"]


def __getattr__(name: str):
    if name in ("CheckpointError", "SamAdapter", "build_model"):
        from . import modeling

        return getattr(modeling, name)
    if name == "resize_logits":
        from .ops import resize_logits

        return resize_logits
    raise AttributeError(f"module 'samadapter' has no attribute {name!r}")
