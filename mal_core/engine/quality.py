"""Mask quality estimates without ground truth, for ranking labels so a reviewer sees the worst first.

Each term is per instance, in [0, 1]: ``flip``: IoU between the network's mask and its mask of the mirrored crop
(mirrored back); ``teacher``: IoU between the student's and the EMA teacher's masks (both before test-time
refinement); ``margin``: mean |2p - 1| (how decided the probabilities are); ``crf``: IoU between the mask and its
mean-field refinement with the image's colour edges; ``colour``: IoU between the mask and the pixels its own colour
model calls object (:func:`mal_core.engine.colour_model.colour_agreement`: how far the image's colours disagree
with the mask); ``mean_probability``: the mean foreground probability over the final mask's pixels. All are written
with each label (``quality``). The ``score`` is :func:`quality_score`: the product of the :data:`SCORE_TERMS`,
chosen among products of the terms on coco128's train split and the medium and holes synthetic sets, and reported
on coco128 val and the touching and thin families, which took no part in the choice (see BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QUALITY_TERMS = ("flip", "teacher", "margin", "crf", "colour", "mean_probability")
#: The terms whose product is the label's ``score``.
SCORE_TERMS = ("colour", "mean_probability")
#: What the score is, in words (for the review page).
SCORE_DESCRIPTION = ("the mask's agreement with its own colour model (object colours from the mask, background "
                     "colours from around the box) times its mean foreground probability")
#: Mean-field iterations of the refinement the ``crf`` term compares with when no test-time refinement is on.
QUALITY_REFINE_ITERS = 30


def box_at(box_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The box mask (B,1,h,w) as booleans at ``size`` (nearest)."""
    return F.interpolate(box_mask.float(), size=size, mode="nearest") > 0.5


def mask_agreement(a: torch.Tensor, b: torch.Tensor, box_mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """IoU (B,) of the thresholded masks of two logit maps (B,1,M,M) inside the box; 1 when both are empty."""
    box = box_at(box_mask, tuple(a.shape[-2:]))
    ma = (torch.sigmoid(a.float()) > threshold) & box
    mb = (torch.sigmoid(b.float()) > threshold) & box
    inter = (ma & mb).flatten(1).sum(1).float()
    union = (ma | mb).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def confidence_margin(logits: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """Mean |2p - 1| (B,) over the box pixels of a logit map (B,1,M,M)."""
    box = box_at(box_mask, tuple(logits.shape[-2:])).float()
    margin = (2.0 * torch.sigmoid(logits.float()) - 1.0).abs()
    return (margin * box).flatten(1).sum(1) / box.flatten(1).sum(1).clamp(min=1.0)


def quality_score(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The per-instance quality estimate (B,) in [0, 1]: the product of the :data:`SCORE_TERMS`."""
    out = torch.ones_like(next(iter(terms.values())))
    for name in SCORE_TERMS:
        out = out * terms[name]
    return out
