"""The review page: a static HTML file of label thumbnails ordered by ascending quality score, so a person checks
the least reliable masks first. Written by inference as ``<results_dir>/review/index.html`` + ``review/thumbs/``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from mal_core.data.coco import CocoDataset, decode_segmentation
from mal_core.data.images import read_rgb
from mal_core.engine.quality import SCORE_DESCRIPTION
from mal_core.utils.io import atomic_write, atomic_write_text
from mal_core.utils.safe_paths import check_guarded

REVIEW_DIR = "review"
THUMB_SIDE = 160
_MASK_RGB = np.array([255, 40, 40], dtype=np.float32)
_BOX_RGB = (40, 220, 255)


def render_thumbnail(image: np.ndarray, ann: dict[str, Any], side: int = THUMB_SIDE) -> Image.Image:
    """The box with a 25% margin resized to ``side``: outside the mask dimmed, the mask tinted red with a red
    outline, the box outlined in blue."""
    h, w = image.shape[:2]
    x, y, bw, bh = (float(v) for v in ann["bbox"])
    mx, my = 0.25 * bw + 2, 0.25 * bh + 2
    x0, y0 = max(int(x - mx), 0), max(int(y - my), 0)
    x1, y1 = min(int(np.ceil(x + bw + mx)), w), min(int(np.ceil(y + bh + my)), h)
    scale = side / max(x1 - x0, y1 - y0, 1)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    crop = np.asarray(Image.fromarray(image[y0:y1, x0:x1]).resize(size, Image.BILINEAR)).astype(np.float32)
    mask = decode_segmentation(ann["segmentation"], h, w)[y0:y1, x0:x1].astype(np.uint8)
    mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST).astype(bool)
    crop[~mask] *= 0.45
    crop[mask] = 0.7 * crop[mask] + 0.3 * _MASK_RGB
    out = np.ascontiguousarray(crop.clip(0, 255).astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in _MASK_RGB), 1)
    pil = Image.fromarray(out)
    ImageDraw.Draw(pil).rectangle([(x - x0) * scale, (y - y0) * scale, (x + bw - x0) * scale - 1,
                                   (y + bh - y0) * scale - 1], outline=_BOX_RGB)
    return pil


def write_review_page(coco: CocoDataset, labelled: list[dict[str, Any]], out_dir: Path, limit: int,
                      title: str = "Mask review", total: int | None = None) -> Path:
    """Write ``out_dir/index.html`` with the ``limit`` lowest-scored labels first; returns the page path.
    ``total``: how many labels the job made, when ``labelled`` holds only the lowest-scored ones."""
    thumbs = out_dir / "thumbs"
    check_guarded(thumbs)  # never through a link planted in the job folder
    thumbs.mkdir(parents=True, exist_ok=True)
    ranked = sorted((a for a in labelled if "score" in a and not a.get("iscrowd", 0)), key=lambda a: a["score"])
    shown = ranked[:limit]
    images = {img["id"]: img for img in coco.raw["images"]}
    cats = {c["id"]: c.get("name", str(c["id"])) for c in coco.raw["categories"]}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in shown:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_id, anns in by_image.items():  # each image decoded once
        arr = read_rgb(coco.img_dir / images[image_id]["file_name"])
        for ann in anns:
            pil = render_thumbnail(arr, ann)
            atomic_write(thumbs / f"{ann['id']}.png", lambda tmp, pil=pil: pil.save(tmp, format="PNG"))
    cards = []
    for rank, ann in enumerate(shown, 1):
        terms = ", ".join(f"{k} {v:.2f}" for k, v in ann.get("quality", {}).items())
        name = images[ann["image_id"]]["file_name"]
        cards.append(
            f'<figure><img src="thumbs/{ann["id"]}.png" alt="annotation {ann["id"]}" loading="lazy">'
            f"<figcaption><b>#{rank} score {ann['score']:.3f}</b><br>{html.escape(str(cats.get(ann['category_id'])))}"
            f" &middot; ann {ann['id']}<br>{html.escape(name)}<br><small>{html.escape(terms)}</small></figcaption>"
            "</figure>")
    page = (
        "<!DOCTYPE html>\n<!-- written by mal-skill inference -->\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:16px}}"
        "main{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:170px;font-size:12px}"
        "img{width:160px;height:160px;object-fit:contain;background:#222}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(shown)} of {total or len(ranked)} labels, lowest estimated quality "
        "first "
        f"(score in [0, 1]: {html.escape(SCORE_DESCRIPTION)}). "
        "Red tint and outline: predicted mask (outside it is dimmed); blue: the input box. "
        "Fix the first ones, then re-run evaluation.</p>"
        f"<main>{''.join(cards)}</main></body></html>\n")
    page_path = out_dir / "index.html"
    atomic_write_text(page_path, page)
    return page_path
