"""The MAL training objective in one place: MIL + CRF (+ optional pairwise colour) terms with their warm-ups and
weights. The LightningModule and the throughput benchmark both call :func:`mal_objective`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mal_core.config.experiment import TrainConfig
from mal_core.engine.schedule import warmup_weight
from mal_core.losses.crf import crf_loss
from mal_core.losses.dice import dice_loss
from mal_core.losses.mil import mil_loss
from mal_core.losses.pairwise import normalised_to_lab, pairwise_loss


@dataclass
class ObjectiveOutput:
    """The weighted total and each unweighted term (batch means), for logging."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def mask_loss(logits: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """Per-instance (B,) BCE + Dice of logits (B,1,M,M) against given masks on the crop (B,1,S,S), brought to the
    logits' size by area averaging (soft targets at the edges)."""
    target = F.interpolate(gt_mask.float(), size=tuple(logits.shape[-2:]), mode="area")
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").flatten(1).mean(1)
    return bce + dice_loss(torch.sigmoid(logits.float()), target)


def mal_objective(t: TrainConfig, logits: torch.Tensor, teacher_logits: torch.Tensor, image: torch.Tensor,
                  teacher_image: torch.Tensor, box_mask: torch.Tensor, epoch: int, step: int,
                  gt_mask: torch.Tensor | None = None, has_mask: torch.Tensor | None = None) -> ObjectiveOutput:
    """Weighted MIL + CRF (+ pairwise) loss of a batch, plus the mask loss of the instances with a given mask.

    logits/teacher_logits (B,1,M,M); image = the student's augmented crop, teacher_image = the un-augmented crop
    (B,3,S,S); box_mask (B,1,S,S); ``epoch``/``step`` drive the linear warm-ups of epoch 0. ``gt_mask`` (B,1,S,S)
    and ``has_mask`` (B,) bool: the given masks on the crops (mixed supervision); the mask term is
    ``train.loss_mask_weight`` x its mean over the instances with a mask, and absent when none has one.
    """
    probs = torch.sigmoid(logits.float())
    t_probs = torch.sigmoid(teacher_logits.float())
    terms = {"mil": mil_loss(probs, box_mask).mean(),
             "crf": crf_loss(image, probs, t_probs, box_mask, size_ratio=t.crf_size_ratio,
                             kernel_size=t.crf_kernel_size, zeta=t.crf_zeta, num_iter=t.crf_num_iter,
                             low=t.crf_value_low_thres, high=t.crf_value_high_thres).mean()}
    loss = (t.loss_mil_weight * warmup_weight(epoch, step, t.loss_mil_step) * terms["mil"]
            + t.loss_crf_weight * warmup_weight(epoch, step, t.loss_crf_step) * terms["crf"])
    if t.loss_pairwise_weight > 0:
        lab = normalised_to_lab(teacher_image, tuple(logits.shape[-2:]))
        terms["pairwise"] = pairwise_loss(logits, lab, box_mask, dilation=t.pairwise_dilation,
                                          threshold=t.pairwise_color_thresh).mean()
        loss = loss + t.loss_pairwise_weight * warmup_weight(epoch, step, t.loss_pairwise_step) * terms["pairwise"]
    if gt_mask is not None and has_mask is not None and bool(has_mask.any()):
        terms["mask"] = mask_loss(logits[has_mask], gt_mask[has_mask]).mean()
        loss = loss + t.loss_mask_weight * terms["mask"]
    return ObjectiveOutput(loss, terms)
