"""Box-crop geometry: margin sampling, box expansion, wrap-around cropping and box masks in crop coordinates.

A box (x0, y0, x1, y1) with centre c and per-side margins (mL, mT, mR, mB) expands to
x0' = cx - (cx - x0)(1 + mL), y0' = cy - (cy - y0)(1 + mT), x1' = cx + (x1 - cx)(1 + mR) + 1,
y1' = cy + (y1 - cy)(1 + mB) + 1, then floor / ceil to integers. Parts of the expanded box outside the image are
filled by wrapping around from the opposite side (real pixels for the CRF rather than a flat pad).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]
IntBox = tuple[int, int, int, int]


def train_margins(u: Sequence[float], low: float, high: float) -> tuple[float, float, float, float]:
    """Training margins from six uniforms in [0,1): four margins ~ U(low, high) gated by (g1, g2, 1-g1, 1-g2).

    The gates split one random expansion between left/right and one between top/bottom.
    """
    m = [low + (high - low) * u[i] for i in range(4)]
    g1, g2 = u[4], u[5]
    return m[0] * g1, m[1] * g2, m[2] * (1.0 - g1), m[3] * (1.0 - g2)


def eval_margins(test_margin_rate: Sequence[float]) -> tuple[float, float, float, float]:
    """Deterministic test margins: test_margin_rate[0] / 2 on every side."""
    m = float(test_margin_rate[0]) * 0.5
    return m, m, m, m


def expand_box(box: Box, margins: Sequence[float]) -> IntBox:
    """Expanded integer box (x0, y0, x1, y1), x1/y1 exclusive, never empty."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    ml, mt, mr, mb = margins
    ex0 = math.floor(cx - (cx - x0) * (1.0 + ml))
    ey0 = math.floor(cy - (cy - y0) * (1.0 + mt))
    ex1 = math.ceil(cx + (x1 - cx) * (1.0 + mr) + 1.0)
    ey1 = math.ceil(cy + (y1 - cy) * (1.0 + mb) + 1.0)
    return ex0, ey0, max(ex1, ex0 + 1), max(ey1, ey0 + 1)


def crop_wrap(image: np.ndarray, ext: IntBox) -> np.ndarray:
    """Crop ``ext`` from an (H, W[, C]) array; out-of-image rows/columns wrap around (modulo indexing)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = ext
    if 0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h:
        return image[y0:y1, x0:x1]
    rows = np.arange(y0, y1) % h
    cols = np.arange(x0, x1) % w
    return image[rows[:, None], cols[None, :]]


def box_pixel_span(lo: float, hi: float) -> tuple[int, int]:
    """Pixel indices covered by [lo, hi): floor(lo) .. ceil(hi) (exclusive end)."""
    return math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)


def box_mask_in_crop(box: Box, ext: IntBox, size: int) -> np.ndarray:
    """(size, size) float32 mask that is 1 on the pixels of ``box`` after mapping ``ext`` onto the square crop."""
    x0, y0, x1, y1 = box
    ex0, ey0, ex1, ey1 = ext
    sx, sy = size / (ex1 - ex0), size / (ey1 - ey0)
    c0, c1 = box_pixel_span((x0 - ex0) * sx, (x1 - ex0) * sx)
    r0, r1 = box_pixel_span((y0 - ey0) * sy, (y1 - ey0) * sy)
    mask = np.zeros((size, size), dtype=np.float32)
    mask[max(r0, 0):min(r1, size), max(c0, 0):min(c1, size)] = 1.0
    return mask


def clip_to_image(ext: IntBox, height: int, width: int) -> IntBox:
    """The part of ``ext`` inside the image (x0, y0, x1, y1), possibly empty."""
    x0, y0, x1, y1 = ext
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
