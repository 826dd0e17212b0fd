"""Classical mask-from-box baselines (box fill, inscribed ellipse, GrabCut) and their mIoU on a COCO file.

Box pixel convention, used by all three: a box ``[x, y, w, h]`` covers pixel columns ``floor(x) .. ceil(x + w) - 1``
and rows ``floor(y) .. ceil(y + h) - 1``, clipped to the image. Every function returns a full-image bool mask (H, W).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mal_core.data.coco import decode_segmentation
from mal_core.data.images import read_rgb
from mal_core.engine.metrics import MIoUSums, instance_iou

GRABCUT_MIN_SIDE = 4
_GRABCUT_PAD = 8
_GRABCUT_MIN_BACKGROUND = 64  # pad when fewer pixels than this lie outside the rect


def box_pixel_range(bbox_xywh: Sequence[float]) -> tuple[int, int, int, int]:
    """Unclipped pixel range ``(x0, y0, x1, y1)`` (end-exclusive) covered by an ``[x, y, w, h]`` box."""
    x, y, w, h = (float(v) for v in bbox_xywh[:4])
    return int(math.floor(x)), int(math.floor(y)), int(math.ceil(x + w)), int(math.ceil(y + h))


def _clipped_range(height: int, width: int, bbox_xywh: Sequence[float]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box_pixel_range(bbox_xywh)
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def box_fill_mask(height: int, width: int, bbox_xywh: Sequence[float]) -> np.ndarray:
    """The box itself as a mask: every pixel the box covers (clipped to the image)."""
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = _clipped_range(height, width, bbox_xywh)
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = True
    return mask


def inscribed_ellipse_mask(height: int, width: int, bbox_xywh: Sequence[float]) -> np.ndarray:
    """Axis-aligned ellipse centred in the box's pixel range and touching its four sides (clipped to the image)."""
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box_pixel_range(bbox_xywh)
    cx0, cy0, cx1, cy1 = _clipped_range(height, width, bbox_xywh)
    if cx1 <= cx0 or cy1 <= cy0:
        return mask
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    a, b = (x1 - x0) / 2.0, (y1 - y0) / 2.0
    xs = (np.arange(cx0, cx1) + 0.5 - cx) / a
    ys = (np.arange(cy0, cy1) + 0.5 - cy) / b
    mask[cy0:cy1, cx0:cx1] = ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0
    return mask


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.size and float(img.max()) <= 1.0:
            img = img * 255.0
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img


def grabcut_mask(image_rgb: np.ndarray, bbox_xywh: Sequence[float], iterations: int = 5, margin: int = 0) -> np.ndarray:
    """GrabCut initialised with the box as rect (grown by ``margin`` px); foreground inside the box, else box fill.

    Pixels outside the rect seed the background model. A rect touching the image border is fine as long as enough
    pixels remain outside it; when (almost) none do (a box covering the whole image), the image is padded by border
    reflection and the rect shifted, so the padding supplies background samples. Boxes with a side under 4 px,
    a failing ``cv2.grabCut`` or an empty result fall back to :func:`box_fill_mask`.
    """
    img = _as_rgb_uint8(image_rgb)
    height, width = img.shape[:2]
    fallback = box_fill_mask(height, width, bbox_xywh)
    x0, y0, x1, y1 = _clipped_range(height, width, bbox_xywh)
    if x1 - x0 < GRABCUT_MIN_SIDE or y1 - y0 < GRABCUT_MIN_SIDE:
        return fallback
    rx0, ry0 = max(x0 - margin, 0), max(y0 - margin, 0)
    rx1, ry1 = min(x1 + margin, width), min(y1 + margin, height)
    bgr = np.ascontiguousarray(img[..., ::-1])
    # grabCut marks everything outside the rect as background; with (almost) nothing outside it has no background
    # samples, so pad the image by border reflection to give it some.
    pad = _GRABCUT_PAD if height * width - (rx1 - rx0) * (ry1 - ry0) < _GRABCUT_MIN_BACKGROUND else 0
    if pad:
        bgr = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    gc_mask = np.zeros(bgr.shape[:2], dtype=np.uint8)
    rect = (rx0 + pad, ry0 + pad, rx1 - rx0, ry1 - ry0)
    bgd_model = np.zeros((1, 65), dtype=np.float64)
    fgd_model = np.zeros((1, 65), dtype=np.float64)
    try:
        cv2.setRNGSeed(0)
        cv2.grabCut(bgr, gc_mask, rect, bgd_model, fgd_model, int(iterations), cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return fallback
    fg = (gc_mask == cv2.GC_FGD) | (gc_mask == cv2.GC_PR_FGD)
    out = fg[pad : pad + height, pad : pad + width] & fallback
    if not out.any():
        return fallback
    return out


def _box_fill(image_rgb: np.ndarray, bbox_xywh: Sequence[float]) -> np.ndarray:
    return box_fill_mask(image_rgb.shape[0], image_rgb.shape[1], bbox_xywh)


def _ellipse(image_rgb: np.ndarray, bbox_xywh: Sequence[float]) -> np.ndarray:
    return inscribed_ellipse_mask(image_rgb.shape[0], image_rgb.shape[1], bbox_xywh)


def _grabcut(image_rgb: np.ndarray, bbox_xywh: Sequence[float]) -> np.ndarray:
    return grabcut_mask(image_rgb, bbox_xywh)


BASELINES: dict[str, Callable[[np.ndarray, Sequence[float]], np.ndarray]] = {
    "box_fill": _box_fill,
    "ellipse": _ellipse,
    "grabcut": _grabcut,
}


def score_baselines(
    ann_path: str | Path,
    img_dir: str | Path,
    methods: Sequence[str] = ("box_fill", "ellipse", "grabcut"),
) -> dict[str, dict[str, float]]:
    """Mask mIoU (:class:`MIoUSums`) of each baseline on a COCO file with GT masks, plus its wall time ``seconds``."""
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
    with open(ann_path) as fh:
        coco = json.load(fh)
    cat_index = {c["id"]: i + 1 for i, c in enumerate(coco["categories"])}
    by_image: dict[Any, list[dict]] = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0) or "segmentation" not in ann:
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    metrics = {m: MIoUSums(len(coco["categories"])) for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for info in coco["images"]:
        anns = by_image.get(info["id"])
        if not anns:
            continue
        image = read_rgb(Path(img_dir) / info["file_name"])
        height, width = image.shape[:2]
        gts = [decode_segmentation(a["segmentation"], height, width) for a in anns]
        cats = [cat_index[a["category_id"]] for a in anns]
        areas = [float(a["bbox"][2]) * float(a["bbox"][3]) for a in anns]
        for method in methods:
            fn = BASELINES[method]
            start = time.perf_counter()
            preds = [fn(image, a["bbox"]) for a in anns]
            seconds[method] += time.perf_counter() - start
            ious = [instance_iou(p, g) for p, g in zip(preds, gts, strict=True)]
            metrics[method].update(ious, cats, areas)
    results: dict[str, dict[str, float]] = {}
    for method in methods:
        res = metrics[method].compute()
        res["seconds"] = seconds[method]
        results[method] = res
    return results
