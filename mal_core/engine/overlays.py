"""PNG overlays of predicted masks (coloured, semi-transparent, with box outlines) for a person to review."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mal_core.data.coco import CocoDataset, decode_segmentation
from mal_core.data.images import read_rgb
from mal_core.utils.io import atomic_write
from mal_core.utils.safe_paths import check_guarded

_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=np.float32)


def render_overlay(image: np.ndarray, annotations: list[dict[str, Any]], alpha: float = 0.5) -> Image.Image:
    """Blend each annotation's mask onto ``image`` in its own colour and outline its box."""
    h, w = image.shape[:2]
    out = image.astype(np.float32).copy()
    for k, ann in enumerate(annotations):
        m = decode_segmentation(ann["segmentation"], h, w)
        out[m] = (1 - alpha) * out[m] + alpha * _PALETTE[k % len(_PALETTE)]
    pil = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for k, ann in enumerate(annotations):
        x, y, bw, bh = ann["bbox"]
        draw.rectangle([x, y, x + bw - 1, y + bh - 1], outline=tuple(int(c) for c in _PALETTE[k % len(_PALETTE)]))
    return pil


def overlay_name(image: dict[str, Any]) -> str:
    """File name of an image's overlay: ``<image id>-<file stem>.png``, unique per image (``a/img.png`` and
    ``b/img.png`` share a stem, never an id)."""
    return f"{image['id']}-{Path(str(image['file_name'])).stem}.png"


def write_overlays(coco: CocoDataset, annotations: list[dict[str, Any]], out_dir: Path, limit: int) -> Path:
    """One :func:`overlay_name` PNG per labelled image (at most ``limit``) in ``out_dir``, each written atomically
    (never through a link in the job folder)."""
    check_guarded(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in annotations:
        by_image[ann["image_id"]].append(ann)
    images = {img["id"]: img for img in coco.raw["images"]}
    for n, (image_id, anns) in enumerate(sorted(by_image.items())):
        if n >= limit:
            break
        info = images[image_id]
        arr = read_rgb(coco.img_dir / info["file_name"])
        pil = render_overlay(arr, anns)
        atomic_write(out_dir / overlay_name(info), lambda tmp, pil=pil: pil.save(tmp, format="PNG"))
    return out_dir
