"""Multiple-instance (box projection) loss: every row and column crossing the box is a positive bag, every row and
column of the expanded margin a negative one. The bag score is the max prediction along it; Dice compares the
row and column projections of the prediction with those of the box mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mal_core.losses.dice import dice_loss


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B,C,H,W) to ``size`` (no-op when equal)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def mil_loss(probs: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample MIL loss. probs (B,1,H,W) in [0,1]; box_mask (B,1,S,S) 1 inside the box -> (B,)."""
    m = resize_to(box_mask.float(), tuple(probs.shape[-2:]))
    p = probs.float()
    rows = dice_loss(p.amax(dim=-1), m.amax(dim=-1))  # max over columns: one score per row
    cols = dice_loss(p.amax(dim=-2), m.amax(dim=-2))  # max over rows: one score per column
    return rows + cols
