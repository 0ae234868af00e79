"""Training loss of SAM-Adapter: BCE-with-logits + soft IoU, 1:1 by default."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - sum(p*g) / (sum(p) + sum(g) - sum(p*g)), per image, averaged over the batch.

    Args:
        logits: B x 1 x H x W.
        target: B x 1 x H x W in {0, 1}.
    """
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    inter = (p * g).sum(1)
    union = p.sum(1) + g.sum(1) - inter
    return (1 - inter / (union + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0, iou_weight: float = 1.0
) -> torch.Tensor:
    """bce_weight * BCE-with-logits + iou_weight * soft IoU (computed in fp32)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return bce_weight * bce + iou_weight * soft_iou_loss(logits, target)
