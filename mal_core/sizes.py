"""COCO-style object size buckets by *box* area, shared by the metric, the mask head and the thresholds."""

from __future__ import annotations

SMALL_AREA = 32.0**2
MEDIUM_AREA = 96.0**2
BUCKETS = ("small", "medium", "large")


def size_bucket(box_area: float) -> int:
    """0 = small (<= 32^2), 1 = medium (<= 96^2), 2 = large, by box area in pixels."""
    if box_area <= SMALL_AREA:
        return 0
    if box_area <= MEDIUM_AREA:
        return 1
    return 2
