"""From crop logits to image-space masks: upsample, gate by the box, paste into the image, threshold, score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mal_core.data.crops import box_pixel_span, clip_to_image
from mal_core.sizes import size_bucket


@dataclass
class PastedMask:
    """A thresholded mask restricted to the in-image part of its expanded box, plus its confidence score."""

    region: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels (x1/y1 exclusive)
    mask: torch.Tensor  # (y1-y0, x1-x0) bool
    score: float

    def full(self, height: int, width: int) -> np.ndarray:
        """The mask on a full (height, width) canvas as a numpy bool array."""
        canvas = np.zeros((height, width), dtype=bool)
        x0, y0, x1, y1 = self.region
        canvas[y0:y1, x0:x1] = self.mask.cpu().numpy()
        return canvas


def box_in_region(region: tuple[int, int, int, int], box: torch.Tensor) -> torch.Tensor:
    """Bool (y1-y0, x1-x0) map of the pixels of ``box`` (x0/y0/x1/y1 image pixels) inside ``region``."""
    cx0, cy0, cx1, cy1 = region
    bx0, bx1 = box_pixel_span(float(box[0]), float(box[2]))
    by0, by1 = box_pixel_span(float(box[1]), float(box[3]))
    inside = torch.zeros((cy1 - cy0, cx1 - cx0), dtype=torch.bool)
    inside[max(by0 - cy0, 0):max(by1 - cy0, 0), max(bx0 - cx0, 0):max(bx1 - cx0, 0)] = True
    return inside


def box_fill(pred: PastedMask, box: torch.Tensor) -> PastedMask:
    """The box itself as a mask on ``pred``'s region (the box-fill baseline, for collapse checks)."""
    return PastedMask(pred.region, box_in_region(pred.region, box).to(pred.mask.device), 1.0)


def thresholds_for(mask_thres: list[float]) -> list[float]:
    """One threshold per size bucket (a single value is broadcast)."""
    return list(mask_thres) * 3 if len(mask_thres) == 1 else list(mask_thres)


def paste_masks(logits: torch.Tensor, box_mask: torch.Tensor, ext_box: torch.Tensor, image_size: torch.Tensor,
                box_area: torch.Tensor, mask_thres: list[float], boxes: torch.Tensor | None = None) -> list[PastedMask]:
    """Logits (B,1,M,M) -> per-instance masks in image coordinates.

    Probabilities are upsampled to the crop side, multiplied by the crop's box mask, resized to the expanded box
    and cut to the image. A pixel is foreground when its probability is strictly above the threshold of the box's
    size bucket and it lies on a pixel of the box (``boxes``, x0/y0/x1/y1 in image pixels) when given.
    The score is the mean probability over the foreground pixels (0 for an empty mask).
    """
    thres = thresholds_for(mask_thres)
    crop = box_mask.shape[-1]
    probs = torch.sigmoid(F.interpolate(logits.float(), size=(crop, crop), mode="bilinear", align_corners=False))
    probs = probs * box_mask.float()
    out: list[PastedMask] = []
    for i in range(probs.shape[0]):
        ex0, ey0, ex1, ey1 = (int(v) for v in ext_box[i])
        h, w = (int(v) for v in image_size[i])
        p = F.interpolate(probs[i : i + 1], size=(ey1 - ey0, ex1 - ex0), mode="bilinear", align_corners=False)[0, 0]
        cx0, cy0, cx1, cy1 = clip_to_image((ex0, ey0, ex1, ey1), h, w)
        p = p[cy0 - ey0 : cy1 - ey0, cx0 - ex0 : cx1 - ex0]
        fg = p > thres[size_bucket(float(box_area[i]))]
        if boxes is not None:
            fg &= box_in_region((cx0, cy0, cx1, cy1), boxes[i]).to(fg.device)
        score = float(p[fg].mean()) if bool(fg.any()) else 0.0
        out.append(PastedMask((cx0, cy0, cx1, cy1), fg, score))
    return out


def region_iou(pred: PastedMask, gt_region: torch.Tensor, gt_area: int) -> float:
    """IoU with a GT mask given as its cut to the same region plus its full-image area."""
    gt = gt_region.to(pred.mask.device).bool()
    inter = int((pred.mask & gt).sum())
    union = int(pred.mask.sum()) + int(gt_area) - inter
    return inter / (union + 1e-6)
