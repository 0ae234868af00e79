"""Training losses (the recipe's ``optim.loss``; ``auto`` takes the task's default):

- ``bce_iou``: BCE-with-logits + soft IoU (SAM-Adapter's COD loss, 1:1 by default);
- ``balanced_bce``: BCE with each image's positive and negative pixels weighted by the
  other class's share (shadow detection, as the public reference trains shadows);
- ``dice_bce``: BCE + soft Dice (polyp segmentation);
- ``ce_dice``: softmax cross-entropy + soft Dice over the classes (several classes).

All computed in fp32, averaged over the batch: the binary losses on B x 1 x H x W logits and
{0, 1} targets, ``ce_dice`` on B x C x H x W logits and B x H x W class indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - sum(p*g) / (sum(p) + sum(g) - sum(p*g)), per image, averaged over the batch."""
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    inter = (p * g).sum(1)
    union = p.sum(1) + g.sum(1) - inter
    return (1 - inter / (union + eps)).mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p*g) + eps) / (sum(p) + sum(g) + eps), per image, averaged over the batch
    (eps = 1: the usual smoothing, an empty prediction of an empty mask scores 0 loss)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    return (1 - (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)).mean()


def balanced_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image: mean over pixels of w_pos * g * -log p + w_neg * (1 - g) * -log(1 - p),
    with w_pos = N_neg / N and w_neg = N_pos / N (N pixels, N_pos of them positive), so
    both classes weigh the same whatever the shadow's size; averaged over the batch."""
    x = logits.float().flatten(1)
    g = target.float().flatten(1)
    n = g.shape[1]
    pos = g.sum(1, keepdim=True)
    w = torch.where(g > 0.5, (n - pos) / n, pos / n)
    return (F.binary_cross_entropy_with_logits(x, g, weight=w, reduction="none").mean(1)).mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 eps: float = 1.0) -> torch.Tensor:
    """ce_weight * softmax cross-entropy + dice_weight * (1 - mean over images and classes of
    (2 sum(p_c g_c) + eps) / (sum(p_c) + sum(g_c) + eps)), p_c the softmax probability of class
    c and g_c its one-hot target (eps = 1: a class absent from both costs nothing)."""
    x = logits.float()
    t = target.long()
    if t.dim() == 4:  # B x 1 x H x W
        t = t[:, 0]
    ce = F.cross_entropy(x, t)
    p = x.softmax(1).flatten(2)
    g = F.one_hot(t, x.shape[1]).permute(0, 3, 1, 2).float().flatten(2)
    dice = (2 * (p * g).sum(2) + eps) / (p.sum(2) + g.sum(2) + eps)
    return ce_weight * ce + dice_weight * (1 - dice.mean())


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0, iou_weight: float = 1.0,
    loss: str = "bce_iou", dice_weight: float = 1.0,
) -> torch.Tensor:
    """The recipe's loss: ``bce_iou`` = bce_weight * BCE + iou_weight * soft IoU;
    ``balanced_bce``; ``dice_bce`` = bce_weight * BCE + dice_weight * soft Dice;
    ``ce_dice`` = bce_weight * cross-entropy + dice_weight * soft Dice over the classes."""
    if loss == "balanced_bce":
        return balanced_bce_loss(logits, target)
    if loss == "ce_dice":  # bce_weight weighs the cross-entropy term
        return ce_dice_loss(logits, target, bce_weight, dice_weight)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    if loss == "dice_bce":
        return bce_weight * bce + dice_weight * soft_dice_loss(logits, target)
    if loss == "bce_iou":
        return bce_weight * bce + iou_weight * soft_iou_loss(logits, target)
    raise ValueError(f"unknown loss {loss!r}")
