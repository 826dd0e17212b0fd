"""Box/mask consistency of a label: does the mask agree with the box it was drawn for?

Computed for every label beside the quality terms, on the pasted region (the expanded box cut to the image), never
on the full image, with OpenCV's connected components (a few tens of microseconds a box):

* ``box_iou``: IoU of the mask's tight box with the input box (both as pixel spans; 0 for an empty mask). A box
  drawn around an object touches it on all four sides, so a good mask's tight box is the box.
* ``parts``: the number of 8-connected foreground components.
* ``fill``: mask pixels / box pixels.
* ``holes``: hole pixels / (mask + hole pixels), where holes are the background pixels (4-connected, the dual of the
  8-connected foreground) that the mask encloses: not connected to the region's border.

``flags`` names what is broken (every threshold is a constant of this module, nowhere else):

* ``empty``: no pixel at all.
* ``partial_box``: the mask's tight box covers its box poorly (``box_iou`` < :data:`PARTIAL_BOX_IOU`), e.g. half an
  object, or a blob in a corner.
* ``fragmented``: more than :data:`MAX_PARTS` parts of at least :data:`MIN_PART_FRACTION` of the mask each (specks
  of a few pixels along a ragged border do not count).
* ``box_filled``: the mask fills at least :data:`BOX_FILLED` of its box: the collapse of a box-supervised model to
  the box itself (real objects rarely fill their box: coco128's ground truth fills 0.60 of it on average).
"""

from __future__ import annotations

import cv2
import numpy as np

#: The flags a label can carry, in the order they are listed.
CONSISTENCY_FLAGS = ("empty", "partial_box", "fragmented", "box_filled")
#: ``partial_box`` below this IoU between the mask's tight box and the input box.
PARTIAL_BOX_IOU = 0.7
#: ``fragmented`` above this many parts that hold at least :data:`MIN_PART_FRACTION` of the mask each.
MAX_PARTS = 2
#: A part smaller than this fraction of the mask does not count towards ``fragmented``.
MIN_PART_FRACTION = 0.05
#: ``box_filled`` at or above this fraction of the box.
BOX_FILLED = 0.97


def consistency_terms(mask: np.ndarray, box: tuple[int, int, int, int]) -> tuple[dict[str, float], list[str]]:
    """The consistency terms and flags of a boolean mask (H, W) and its box ``(x0, y0, x1, y1)`` in the same pixel
    coordinates (x1/y1 exclusive; a part of the box outside the array, where no mask can be, is cut off)."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    h, w = m.shape
    bx0, bx1 = (min(max(int(v), 0), w) for v in (box[0], box[2]))
    by0, by1 = (min(max(int(v), 0), h) for v in (box[1], box[3]))
    box_area = max(bx1 - bx0, 0) * max(by1 - by0, 0)
    area = int(np.count_nonzero(m))
    if area == 0:
        return {"box_iou": 0.0, "parts": 0, "fill": 0.0, "holes": 0.0}, ["empty"]
    num, _labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    x, y, tw, th = cv2.boundingRect(m)
    iw = max(min(x + tw, bx1) - max(x, bx0), 0)
    ih = max(min(y + th, by1) - max(y, by0), 0)
    inter = iw * ih
    box_iou = inter / max(tw * th + box_area - inter, 1)
    background = np.pad(1 - m, 1, constant_values=1)  # a frame of background joins everything open to the border
    _n, bg_labels = cv2.connectedComponents(background, connectivity=4)
    hole_pixels = int(np.count_nonzero(bg_labels)) - int(np.count_nonzero(bg_labels == bg_labels[0, 0]))
    terms = {"box_iou": round(float(box_iou), 4), "parts": int(num - 1), "fill": round(area / max(box_area, 1), 4),
             "holes": round(hole_pixels / (area + hole_pixels), 4)}
    flags = []
    if box_iou < PARTIAL_BOX_IOU:
        flags.append("partial_box")
    if int(np.count_nonzero(sizes >= MIN_PART_FRACTION * area)) > MAX_PARTS:
        flags.append("fragmented")
    if area >= BOX_FILLED * box_area:
        flags.append("box_filled")
    return terms, flags
