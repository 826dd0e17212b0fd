"""Soft Dice loss as MAL uses it: 1 - 2*sum(p*t) / ((sum p^2 + 1e-3) + (sum t^2 + 1e-3)), per sample."""

from __future__ import annotations

import torch

DICE_EPS = 1e-3


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice loss of (B, ...) tensors, flattened after the batch dimension -> (B,)."""
    p = pred.flatten(1).float()
    t = target.flatten(1).float()
    inter = (p * t).sum(1)
    denom = (p.pow(2).sum(1) + DICE_EPS) + (t.pow(2).sum(1) + DICE_EPS)
    return 1.0 - 2.0 * inter / denom
