"""Training: typed config, losses, the per-worker loop and the Ray Train driver.

Ray is imported only inside the loop and the driver functions.
"""

from .config import ConfigError, DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from .losses import segmentation_loss, soft_iou_loss

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "segmentation_loss",
    "soft_iou_loss",
]
