"""Training's validation metric: the mask mIoU sums of :mod:`mal_core.engine.metrics` as a torchmetrics ``Metric``,
so that Lightning reduces them across processes (DDP). Labelling jobs use the plain
:class:`~mal_core.engine.metrics.MIoUSums` and never import torchmetrics."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from mal_core.engine.metrics import accumulate, miou_from_sums, new_sums


class MaskMIoU(Metric):
    """Accumulates per-instance IoUs by category and size bucket; ``compute`` returns the mIoU dict."""

    full_state_update = False

    def __init__(self, num_categories: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_categories = int(num_categories)
        iou_sum, count = new_sums(num_categories)
        self.add_state("iou_sum", default=iou_sum, dist_reduce_fx="sum")
        self.add_state("count", default=count, dist_reduce_fx="sum")

    def update(self, ious: torch.Tensor, category_index: torch.Tensor, box_areas: torch.Tensor) -> None:
        """Add instances: IoU values, compact category indices (1..num_categories) and box areas (pixels)."""
        accumulate(self.iou_sum, self.count, ious, category_index, box_areas)

    def compute(self) -> dict[str, float]:
        """The mIoU dict of :func:`~mal_core.engine.metrics.miou_from_sums`."""
        return miou_from_sums(self.iou_sum, self.count)
