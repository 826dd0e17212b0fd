"""Training health checks on validation metrics: collapse to box-filled, empty or box-level masks."""

from __future__ import annotations

import math

#: mIoU within this of the box-fill mIoU on the same instances means the masks learned nothing beyond the box.
BOX_LEVEL_MARGIN = 0.02
#: Masks covering more than this fraction of their box, on average, are box-filled.
FILLED_FRACTION = 0.9
#: Masks covering less than this fraction of their box, on average, are (nearly) empty.
EMPTY_FRACTION = 0.05

LR_HINT = ("usually the learning rate: lower train.lr (or raise train.warmup_epochs); a backbone trained from "
           "scratch also needs enough epochs and images")


def collapse_warnings(metrics: dict[str, float]) -> list[str]:
    """Warnings when validation masks collapsed, each with the hint; empty when the metrics look healthy.

    Reads ``mIoU``, ``mIoU_box_fill`` (box fill on the same instances) and ``mask_box_fill`` (mean fraction of its
    box a predicted mask covers); missing or NaN values are skipped.
    """
    out: list[str] = []
    miou, box, fill = (metrics.get(k, math.nan) for k in ("mIoU", "mIoU_box_fill", "mask_box_fill"))
    if fill == fill and fill > FILLED_FRACTION:
        out.append(f"collapse: predicted masks fill {fill:.0%} of their boxes on validation (masks are boxes); "
                   + LR_HINT)
    elif fill == fill and fill < EMPTY_FRACTION:
        out.append(f"collapse: predicted masks cover only {fill:.0%} of their boxes on validation (masks are empty); "
                   + LR_HINT)
    if miou == miou and box == box and miou < box + BOX_LEVEL_MARGIN:
        out.append(f"collapse: validation mIoU {miou:.3f} is at the box-fill level ({box:.3f} on the same "
                   f"instances): the masks add nothing over the boxes; " + LR_HINT)
    return out
