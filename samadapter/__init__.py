"""samadapter: SAM-Adapter (frozen SAM encoder + learned adapter prompts) on Ray.

The model is pure PyTorch (``samadapter.modeling``); Ray is imported only by the
training and segmentation modules that need it.
"""

from .modeling import CheckpointError, SamAdapter, build_model, resize_logits

__version__ = "0.1.0"
__all__ = ["CheckpointError", "SamAdapter", "build_model", "resize_logits", "__version__"]
