"""Masks as polygons that other tools rasterize back to the same pixels.

A polygon's vertices are in COCO's continuous pixel coordinates (pixel ``(x, y)`` covers ``[x, x + 1) x
[y, y + 1)``), traced on the pixel *edges* of the mask, not through the centres of its border pixels, so a square
of n x n pixels becomes a polygon of area n², not (n - 1)²: the contours are found on the mask upsampled
:data:`UPSAMPLE` times and mapped back, so vertices sit within ``0.5 / UPSAMPLE`` pixel of the true edges.

How the shapes COCO polygons cannot say directly are written:

- **Several parts**: one polygon per connected part (8-connectivity), largest first. A single-polygon format
  (YOLO-seg, one Label Studio polygon) joins the parts into one ring with zero-width bridges.
- **Holes**: each hole is cut into its part's outline by a zero-width bridge from the hole's vertex nearest to the
  outline ("keyhole"): the bridge is walked once each way, so scan-line (even-odd) rasterizers, pycocotools' and
  OpenCV's ``fillPoly``, leave the hole empty.
- **Simplification**: Douglas-Peucker with ``tolerance`` pixels (``cv2.approxPolyDP``) on each contour before the
  bridges are cut; a contour that simplifies below 3 vertices keeps its unsimplified vertices.
"""

from __future__ import annotations

import cv2
import numpy as np

#: The mask is upsampled this many times before tracing (vertex error <= 0.5 / UPSAMPLE px).
UPSAMPLE = 4


def _contours(mask: np.ndarray, tolerance: float, centres: bool = False
              ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(outline, holes) of each connected part, vertices (N, 2) float in image coordinates, largest part first.

    Traced on the *closed* union of the pixel squares sampled every ``1 / UPSAMPLE`` px: sample ``k`` is at
    ``k / UPSAMPLE`` and is set when that point lies in (or on the edge of) a mask pixel, so the border samples
    OpenCV traces lie exactly on the pixel edges, for outlines and holes alike. ``centres``: traced through the
    centres of the mask's border pixels instead (``x + 0.5``), what a rasterizer that truncates vertices to integers
    and fills inclusively (OpenCV's ``fillPoly``, used by Ultralytics) turns back into the same pixels."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    x0, y0 = int(xs.min()), int(ys.min())
    crop = np.ascontiguousarray(mask[y0:int(ys.max()) + 1, x0:int(xs.max()) + 1], dtype=np.uint8)
    scale = 1 if centres else UPSAMPLE
    up = np.kron(crop, np.ones((scale, scale), np.uint8))
    closed = np.zeros((up.shape[0] + 3, up.shape[1] + 3), np.uint8)  # 1 sample of padding round the closed grid
    closed[1:-2, 1:-2] = up
    if not centres:
        closed[2:-1, 1:-2] |= up  # each square also holds its right and bottom edges
        closed[1:-1, 2:-1] |= closed[1:-1, 1:-2].copy()
    found, hierarchy = cv2.findContours(closed, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    origin = np.array([x0, y0], np.float64) + (0.5 if centres else 0.0)

    def to_image(contour: np.ndarray) -> np.ndarray:
        pts = contour
        if tolerance > 0:
            simple = cv2.approxPolyDP(contour, tolerance * scale, True)
            if len(simple) >= 3:
                pts = simple
        return origin + (pts.reshape(-1, 2).astype(np.float64) - 1) / scale

    parts = []
    for i, h in enumerate(hierarchy):
        if h[3] != -1:  # a hole: handled with its part
            continue
        holes, child = [], h[2]
        while child != -1:
            holes.append(to_image(found[child]))
            child = hierarchy[child][0]
        parts.append((cv2.contourArea(found[i]), to_image(found[i]), holes))
    parts.sort(key=lambda p: -p[0])
    return [(outline, holes) for _area, outline, holes in parts]


def _keyhole(outline: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One ring: ``outline`` with each hole spliced in through a zero-width bridge at their nearest vertices."""
    ring = outline
    for hole in holes:
        d = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        ring = np.concatenate([ring[:i + 1], hole[j:], hole[:j + 1], ring[i:]])
    return ring


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.5) -> list[list[float]]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` of a boolean mask (H, W): one per part, holes keyholed in;
    ``[]`` for an empty mask. Coordinates rounded to 0.01 px."""
    return [_flat(_keyhole(outline, holes)) for outline, holes in _contours(mask, tolerance)]


def mask_to_single_polygon(mask: np.ndarray, tolerance: float = 0.5, centres: bool = False) -> list[float]:
    """One polygon for the whole mask (parts joined by zero-width bridges, holes keyholed); ``[]`` when empty.
    ``centres``: through the border pixels' centres (see :func:`_contours`)."""
    rings = [_keyhole(outline, holes) for outline, holes in _contours(mask, tolerance, centres)]
    if not rings:
        return []
    ring = _keyhole(rings[0], rings[1:])
    if len(ring) < 3:  # a 1- or 2-pixel mask traced through centres: repeat vertices so it stays a polygon
        ring = np.concatenate([ring] * 3)[:3]
    return _flat(ring)


def _flat(ring: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in ring.reshape(-1)]
