"""Mask mIoU as MAL defines it: the class-averaged mean of per-instance IoU, plus small/medium/large by box area.

For each instance, IoU = |P & G| / (|P | G| + 1e-6) between the full-image binary prediction and GT mask. Per category
c the IoUs are summed and counted; mIoU = mean over categories with at least one instance of sum[c] / cnt[c].
The size buckets use the *box* area: small <= 32^2 < medium <= 96^2 < large. States are sums, so torchmetrics
reduces them across processes. :class:`MIoUSums` is the plain-torch accumulator (labelling jobs, baselines: no
torchmetrics import, which costs seconds at start-up); training's validation wraps the same sums in a torchmetrics
``Metric`` (:class:`mal_core.engine.val_metric.MaskMIoU`) for the reduction across processes.
"""

from __future__ import annotations

import numpy as np
import torch

from mal_core.sizes import BUCKETS, MEDIUM_AREA, SMALL_AREA, size_bucket

__all__ = ["BUCKETS", "MIoUSums", "accumulate", "instance_iou", "miou_from_sums", "size_bucket"]


def instance_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two same-shape binary masks, with the 1e-6 guard of the reference metric."""
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    inter = np.logical_and(pred, gt).sum()
    union = np.logical_or(pred, gt).sum()
    return float(inter / (union + 1e-6))


def new_sums(num_categories: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed (iou_sum, count) states: (4, num_categories + 1) float64, row 0 = all, rows 1..3 = small/medium/large."""
    shape = (4, int(num_categories) + 1)
    return torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)


def accumulate(iou_sum: torch.Tensor, count: torch.Tensor, ious: torch.Tensor, category_index: torch.Tensor,
               box_areas: torch.Tensor) -> None:
    """Add instances (IoU values, compact category indices 1..num_categories, box areas in pixels) to the sums, in
    place."""
    num_categories = iou_sum.shape[1] - 1
    ious = torch.as_tensor(ious, dtype=torch.float64, device=iou_sum.device).flatten()
    cats = torch.as_tensor(category_index, dtype=torch.long, device=iou_sum.device).flatten()
    areas = torch.as_tensor(box_areas, dtype=torch.float64, device=iou_sum.device).flatten()
    if not (ious.numel() == cats.numel() == areas.numel()):
        raise ValueError("ious, category_index and box_areas must have the same length")
    if cats.numel() and (cats.min() < 0 or cats.max() > num_categories):
        raise ValueError(f"category index out of range 0..{num_categories}")
    bucket = torch.where(areas <= SMALL_AREA, 1, torch.where(areas <= MEDIUM_AREA, 2, 3))
    ones = torch.ones_like(ious)
    iou_sum[0].index_add_(0, cats, ious)
    count[0].index_add_(0, cats, ones)
    flat = bucket * (num_categories + 1) + cats
    iou_sum.view(-1).index_add_(0, flat, ious)
    count.view(-1).index_add_(0, flat, ones)


def miou_from_sums(iou_sum: torch.Tensor, count: torch.Tensor) -> dict[str, float]:
    """``mIoU``, ``mIoU_small``, ``mIoU_medium``, ``mIoU_large`` (NaN where no instance), ``mIoU_instance`` (plain
    mean over instances, not class-averaged) and ``num_instances`` of the sums."""
    out: dict[str, float] = {}
    names = ("mIoU",) + tuple(f"mIoU_{b}" for b in BUCKETS)
    for row, name in enumerate(names):
        cnt = count[row]
        present = cnt > 0
        if present.any():
            per_cat = iou_sum[row][present] / (cnt[present] + 1e-6)
            out[name] = float(per_cat.mean())
        else:
            out[name] = float("nan")
    total = float(count[0].sum())
    out["mIoU_instance"] = float(iou_sum[0].sum()) / total if total else float("nan")
    out["num_instances"] = total
    return out


class MIoUSums:
    """Accumulates per-instance IoUs by category and size bucket in plain tensors; ``compute`` returns the mIoU
    dict."""

    def __init__(self, num_categories: int) -> None:
        self.num_categories = int(num_categories)
        self.iou_sum, self.count = new_sums(num_categories)

    def update(self, ious: torch.Tensor, category_index: torch.Tensor, box_areas: torch.Tensor) -> None:
        """Add instances (see :func:`accumulate`)."""
        accumulate(self.iou_sum, self.count, ious, category_index, box_areas)

    def add_sums(self, iou_sum: torch.Tensor, count: torch.Tensor) -> None:
        """Add the state of another accumulation (e.g. one shard's, read back from its file)."""
        self.iou_sum += iou_sum.to(self.iou_sum).view_as(self.iou_sum)
        self.count += count.to(self.count).view_as(self.count)

    def state(self) -> dict[str, list[float]]:
        """The sums as JSON lists (what a shard file stores)."""
        return {"iou_sum": self.iou_sum.flatten().tolist(), "count": self.count.flatten().tolist()}

    def compute(self) -> dict[str, float]:
        """The mIoU dict of :func:`miou_from_sums`."""
        return miou_from_sums(self.iou_sum, self.count)
