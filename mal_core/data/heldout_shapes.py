"""Held-out synthetic families for the generalization benchmark and the demo: a second generator, unrelated to
``mal_core.data.synthetic``, drawn independently so that no recipe decision is made on what it draws.

Drawn with OpenCV primitives on photographic-like backgrounds (smoothed multi-scale noise with a colour gradient),
objects filled with their own noise texture. Families:

* ``thin``: thin and concave objects: stars with long thin arms, L / U / C shapes, thick curved strokes.
* ``holes``: objects with holes: rings, frames, discs with several holes, annuli of polygons.
* ``touching``: objects that touch or overlap others of the same colour (pairs and chains of one colour).

Writes the folder layout ``bench/quality.py --data`` reads: ``{train,val}/images/*.png``,
``{train,val}/annotations.json`` (compressed RLE masks of the visible part) and ``annotations_boxes.json``
(the same without ``segmentation``).

Usage: python -m mal_core.data.heldout_shapes --family thin --out bench_output/data/thin
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from mal_core.utils.io import atomic_write_json

FAMILIES = ("thin", "holes", "touching")
CATEGORIES = [{"id": 11, "name": "star"}, {"id": 12, "name": "bent"}, {"id": 13, "name": "stroke"},
              {"id": 21, "name": "ring"}, {"id": 22, "name": "frame"}, {"id": 23, "name": "holed_disc"},
              {"id": 31, "name": "blob"}, {"id": 32, "name": "block"}]


def _noise(rng: np.random.Generator, size: int, scales: tuple[int, ...]) -> np.ndarray:
    """Sum of upsampled random grids at several scales, in [0, 1] (H, W)."""
    out = np.zeros((size, size), np.float32)
    for s in scales:
        g = rng.random((max(2, size // s), max(2, size // s))).astype(np.float32)
        out += cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def _colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(60, 255), rng.integers(60, 255)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    a, b = _colour(rng), _colour(rng)
    t = np.linspace(0, 1, size, dtype=np.float32)
    ramp = t[None, :] if rng.random() < 0.5 else t[:, None]
    ramp = np.broadcast_to(ramp, (size, size))
    base = a[None, None] * (1 - ramp[..., None]) + b[None, None] * ramp[..., None]
    tex = _noise(rng, size, (4, 16, 48))[..., None]
    return base * (0.6 + 0.8 * tex)


def _textured_fill(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    tex = _noise(rng, size, (3, 12))[..., None]
    return colour[None, None] * (0.75 + 0.5 * tex)


def _star(rng, size, cx, cy, r) -> np.ndarray:
    n = int(rng.integers(3, 7))
    inner = r * rng.uniform(0.12, 0.25)
    phase = rng.uniform(0, 2 * math.pi)
    pts = []
    for k in range(2 * n):
        rad = r if k % 2 == 0 else inner
        a = phase + k * math.pi / n
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [np.round(np.array(pts)).astype(np.int32)], 1)
    return m


def _bent(rng, size, cx, cy, r) -> np.ndarray:
    """L, U or C shape: thick strokes along two or three sides of a box, or an open arc."""
    m = np.zeros((size, size), np.uint8)
    t = max(2, int(r * rng.uniform(0.2, 0.35)))
    x0, y0, x1, y1 = int(cx - r), int(cy - r), int(cx + r), int(cy + r)
    kind = rng.integers(0, 3)
    if kind == 0:  # L
        cv2.rectangle(m, (x0, y0), (x0 + t, y1), 1, -1)
        cv2.rectangle(m, (x0, y1 - t), (x1, y1), 1, -1)
    elif kind == 1:  # U
        cv2.rectangle(m, (x0, y0), (x0 + t, y1), 1, -1)
        cv2.rectangle(m, (x1 - t, y0), (x1, y1), 1, -1)
        cv2.rectangle(m, (x0, y1 - t), (x1, y1), 1, -1)
    else:  # C arc
        start = rng.uniform(0, 360)
        cv2.ellipse(m, (int(cx), int(cy)), (int(r), int(r * rng.uniform(0.6, 1.0))), rng.uniform(0, 180),
                    start, start + rng.uniform(200, 290), 1, t)
    return m if rng.random() < 0.5 else np.ascontiguousarray(_mirror_about(m, cx))


def _mirror_about(m: np.ndarray, cx: float) -> np.ndarray:
    """Mirror a mask left-right about column ``cx`` (pixels mirrored off the image are dropped)."""
    out = np.zeros_like(m)
    ys, xs = np.nonzero(m)
    xs2 = np.round(2 * cx - xs).astype(int)
    ok = (xs2 >= 0) & (xs2 < m.shape[1])
    out[ys[ok], xs2[ok]] = 1
    return out


def _stroke(rng, size, cx, cy, r) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    n = 5
    xs = cx + np.linspace(-r, r, n)
    ys = cy + rng.uniform(-r, r, n)
    if rng.random() < 0.5:
        xs, ys = cx + (ys - cy), cy + (xs - cx)
    pts = np.stack([xs, ys], 1).round().astype(np.int32)
    cv2.polylines(m, [pts], False, 1, max(2, int(r * rng.uniform(0.12, 0.25))))
    return m


def _ring(rng, size, cx, cy, r) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    ax = (int(r), int(r * rng.uniform(0.6, 1.0)))
    ang = rng.uniform(0, 180)
    cv2.ellipse(m, (int(cx), int(cy)), ax, ang, 0, 360, 1, -1)
    f = rng.uniform(0.4, 0.7)
    cv2.ellipse(m, (int(cx), int(cy)), (max(1, int(ax[0] * f)), max(1, int(ax[1] * f))), ang, 0, 360, 0, -1)
    return m


def _frame(rng, size, cx, cy, r) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    box = ((cx, cy), (2 * r, 2 * r * rng.uniform(0.6, 1.0)), rng.uniform(0, 90))
    cv2.fillPoly(m, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    inner = ((cx, cy), (box[1][0] * rng.uniform(0.45, 0.7), box[1][1] * rng.uniform(0.45, 0.7)), box[2])
    cv2.fillPoly(m, [np.round(cv2.boxPoints(inner)).astype(np.int32)], 0)
    return m


def _holed_disc(rng, size, cx, cy, r) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, (int(cx), int(cy)), int(r), 1, -1)
    for _ in range(int(rng.integers(2, 5))):
        a, d = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.6) * r
        cv2.circle(m, (int(cx + d * math.cos(a)), int(cy + d * math.sin(a))), max(2, int(r * rng.uniform(0.12, 0.25))),
                   0, -1)
    return m


def _blob(rng, size, cx, cy, r) -> np.ndarray:
    n = 12
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = r * rng.uniform(0.55, 1.0, n)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).round().astype(np.int32)
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [pts], 1)
    return m


def _block(rng, size, cx, cy, r) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    box = ((cx, cy), (2 * r * rng.uniform(0.5, 1.0), 2 * r * rng.uniform(0.5, 1.0)), rng.uniform(0, 90))
    cv2.fillPoly(m, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    return m


_DRAW = {"star": _star, "bent": _bent, "stroke": _stroke, "ring": _ring, "frame": _frame,
         "holed_disc": _holed_disc, "blob": _blob, "block": _block}
_FAMILY_SHAPES = {"thin": ("star", "bent", "stroke"), "holes": ("ring", "frame", "holed_disc"),
                  "touching": ("blob", "block", "ring")}
_CAT_ID = {c["name"]: c["id"] for c in CATEGORIES}


def _render(rng: np.random.Generator, family: str, size: int) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    img = _background(rng, size)
    objects: list[tuple[str, np.ndarray]] = []
    n = int(rng.integers(2, 5))
    shared = _colour(rng)
    centres: list[tuple[float, float, float]] = []
    for k in range(n):
        name = _FAMILY_SHAPES[family][int(rng.integers(0, 3))]
        r = rng.uniform(0.12, 0.28) * size
        if family == "touching" and centres and rng.random() < 0.8:
            px, py, pr = centres[-1]  # touch the previous object: centre at about the sum of the radii
            a = rng.uniform(0, 2 * math.pi)
            d = (pr + r) * rng.uniform(0.7, 0.95)
            cx, cy = px + d * math.cos(a), py + d * math.sin(a)
        else:
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        m = _DRAW[name](rng, size, cx, cy, r).astype(bool)
        if m.sum() < 40:
            continue
        colour = shared if family == "touching" and k % 3 != 2 else _colour(rng)
        fill = _textured_fill(rng, size, colour)
        img[m] = fill[m]
        for _, prev in objects:  # later objects occlude earlier ones
            prev &= ~m
        objects.append((name, m))
        centres.append((cx, cy, r))
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img += rng.normal(0, 4.0, img.shape).astype(np.float32)
    objects = [(nm, m) for nm, m in objects if m.sum() >= 40]
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _split(root: Path, name: str, family: str, count: int, size: int, rng: np.random.Generator,
           first_ann: int) -> int:
    img_dir = root / name / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    ann_id = first_ann
    for i in range(count):
        img, objects = _render(rng, family, size)
        file_name = f"{family}_{name}_{i:04d}.png"
        cv2.imwrite(str(img_dir / file_name), img[..., ::-1])
        images.append({"id": i + 1, "file_name": file_name, "height": size, "width": size})
        for cat, m in objects:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            anns.append({"id": ann_id, "image_id": i + 1, "category_id": _CAT_ID[cat], "bbox": [x, y, w, h],
                         "area": float(m.sum()), "iscrowd": 0,
                         "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}})
            ann_id += 1
    used = {a["category_id"] for a in anns}
    coco: dict[str, Any] = {"images": images, "annotations": anns,
                            "categories": [c for c in CATEGORIES if c["id"] in used],
                            "info": {"description": f"held-out synthetic family {family!r} ({name})"}}
    atomic_write_json(root / name / "annotations.json", coco, indent=None)
    boxes = dict(coco, annotations=[{k: v for k, v in a.items() if k != "segmentation"} for a in anns])
    atomic_write_json(root / name / "annotations_boxes.json", boxes, indent=None)
    return ann_id


def generate_family(out: str | Path, family: str, *, train_images: int = 200, val_images: int = 40,
                    size: int = 160, seed: int = 0) -> Path:
    """Write one held-out family under ``out`` (train/ and val/); returns ``out``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    root = Path(out)
    rng = np.random.default_rng([seed, FAMILIES.index(family), 7919])
    nxt = _split(root, "train", family, train_images, size, rng, 1)
    _split(root, "val", family, val_images, size, rng, nxt)
    return root


def main(argv: list[str] | None = None) -> int:
    """Command line: write one family."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=FAMILIES, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-images", type=int, default=200)
    ap.add_argument("--val-images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(generate_family(args.out, args.family, train_images=args.train_images, val_images=args.val_images,
                          seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
