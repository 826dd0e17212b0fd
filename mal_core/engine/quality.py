"""Mask quality estimates without ground truth, for ranking labels so a reviewer sees the worst first.

Each term is computed on the mask-resolution probabilities inside the box, per instance, in [0, 1]:
``flip``: IoU between the mask and the mask predicted on the mirrored crop (mirrored back); ``teacher``: IoU between
the student's and the EMA teacher's masks; ``margin``: mean |2p - 1| (how decided the probabilities are); ``crf``:
IoU between the network's mask and its mean-field refinement with the image's colour edges (how far the image
disagrees with the mask); ``mean_probability``: the mean foreground probability over the final mask's pixels.
The ``score`` written with each label is :func:`quality_score` of the terms: their product, so a mask scores high
only when every signal agrees (chosen on the medium synthetic set and coco128 val, see BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QUALITY_TERMS = ("flip", "teacher", "margin", "crf", "mean_probability")
#: Mean-field iterations of the refinement the ``crf`` term compares with when no test-time refinement is on.
QUALITY_REFINE_ITERS = 30


def _box_at(box_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(box_mask.float(), size=size, mode="nearest") > 0.5


def mask_agreement(a: torch.Tensor, b: torch.Tensor, box_mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """IoU (B,) of the thresholded masks of two logit maps (B,1,M,M) inside the box; 1 when both are empty."""
    box = _box_at(box_mask, tuple(a.shape[-2:]))
    ma = (torch.sigmoid(a.float()) > threshold) & box
    mb = (torch.sigmoid(b.float()) > threshold) & box
    inter = (ma & mb).flatten(1).sum(1).float()
    union = (ma | mb).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def confidence_margin(logits: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """Mean |2p - 1| (B,) over the box pixels of a logit map (B,1,M,M)."""
    box = _box_at(box_mask, tuple(logits.shape[-2:])).float()
    margin = (2.0 * torch.sigmoid(logits.float()) - 1.0).abs()
    return (margin * box).flatten(1).sum(1) / box.flatten(1).sum(1).clamp(min=1.0)


def quality_score(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The per-instance quality estimate (B,) in [0, 1]: the product of the :data:`QUALITY_TERMS`."""
    out = torch.ones_like(next(iter(terms.values())))
    for name in QUALITY_TERMS:
        out = out * terms[name]
    return out
