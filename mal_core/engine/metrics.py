"""Mask mIoU as MAL defines it: the class-averaged mean of per-instance IoU, plus small/medium/large by box area.

For each instance, IoU = |P & G| / (|P | G| + 1e-6) between the full-image binary prediction and GT mask. Per category
c the IoUs are summed and counted; mIoU = mean over categories with at least one instance of sum[c] / cnt[c].
The size buckets use the *box* area: small <= 32^2 < medium <= 96^2 < large. States are sums, so torchmetrics
reduces them across processes.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from mal_core.sizes import BUCKETS, MEDIUM_AREA, SMALL_AREA, size_bucket

__all__ = ["BUCKETS", "MaskMIoU", "instance_iou", "size_bucket"]


def instance_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two same-shape binary masks, with the 1e-6 guard of the reference metric."""
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    inter = np.logical_and(pred, gt).sum()
    union = np.logical_or(pred, gt).sum()
    return float(inter / (union + 1e-6))


class MaskMIoU(Metric):
    """Accumulates per-instance IoUs by category and size bucket; ``compute`` returns the mIoU dict."""

    full_state_update = False

    def __init__(self, num_categories: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_categories = int(num_categories)
        shape = (4, self.num_categories + 1)  # row 0 = all, rows 1..3 = small/medium/large
        self.add_state("iou_sum", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ious: torch.Tensor, category_index: torch.Tensor, box_areas: torch.Tensor) -> None:
        """Add instances: IoU values, compact category indices (1..num_categories) and box areas (pixels)."""
        ious = torch.as_tensor(ious, dtype=torch.float64, device=self.iou_sum.device).flatten()
        cats = torch.as_tensor(category_index, dtype=torch.long, device=self.iou_sum.device).flatten()
        areas = torch.as_tensor(box_areas, dtype=torch.float64, device=self.iou_sum.device).flatten()
        if not (ious.numel() == cats.numel() == areas.numel()):
            raise ValueError("ious, category_index and box_areas must have the same length")
        if cats.numel() and (cats.min() < 0 or cats.max() > self.num_categories):
            raise ValueError(f"category index out of range 0..{self.num_categories}")
        bucket = torch.where(areas <= SMALL_AREA, 1, torch.where(areas <= MEDIUM_AREA, 2, 3))
        ones = torch.ones_like(ious)
        self.iou_sum[0].index_add_(0, cats, ious)
        self.count[0].index_add_(0, cats, ones)
        flat = bucket * (self.num_categories + 1) + cats
        self.iou_sum.view(-1).index_add_(0, flat, ious)
        self.count.view(-1).index_add_(0, flat, ones)

    def add_sums(self, iou_sum: torch.Tensor, count: torch.Tensor) -> None:
        """Add the state of another accumulation (e.g. one shard's, read back from its file) to this one."""
        self.merge_state({"iou_sum": iou_sum.to(self.iou_sum).view_as(self.iou_sum),
                          "count": count.to(self.count).view_as(self.count)})
        self._update_count += 1  # torchmetrics counts update() calls only; this is one too

    def compute(self) -> dict[str, float]:
        """``mIoU``, ``mIoU_small``, ``mIoU_medium``, ``mIoU_large`` (NaN where no instance), ``mIoU_instance`` (plain
        mean over instances, not class-averaged) and ``num_instances``."""
        out: dict[str, float] = {}
        names = ("mIoU",) + tuple(f"mIoU_{b}" for b in BUCKETS)
        for row, name in enumerate(names):
            cnt = self.count[row]
            present = cnt > 0
            if present.any():
                per_cat = self.iou_sum[row][present] / (cnt[present] + 1e-6)
                out[name] = float(per_cat.mean())
            else:
                out[name] = float("nan")
        total = float(self.count[0].sum())
        out["mIoU_instance"] = float(self.iou_sum[0].sum()) / total if total else float("nan")
        out["num_instances"] = total
        return out
