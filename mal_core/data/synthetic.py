"""Synthetic COCO instance dataset: textured shapes on textured backgrounds, for demos, tests and benchmarks.

Numpy + PIL only (no torch). Each image holds a few objects from four categories with non-contiguous ids
(ellipse=1, polygon=2, ring=5 with a hole, cross=7 with thin arms). Three difficulty levels control object
count, size, texture contrast, palette overlap and occlusion. Three COCO files are written:

* ``train/annotations_boxes.json``: box-only (no ``segmentation`` key), the input of box-supervised training;
* ``train/annotations_gt.json``: the same annotations with masks, for reference and scoring;
* ``val/annotations.json``: validation annotations with masks.

GT masks are the *visible* part of each object (later objects paint over earlier ones at "hard"). Segmentations mix
compressed RLE (most) and polygons (unoccluded, hole-free objects whose mask is defined as the rasterised polygon,
so decoding gives back exactly the painted pixels). ``bbox`` is the tight integer box of the visible mask.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from mal_core.utils.io import atomic_write_json

DIFFICULTIES = ("easy", "medium", "hard")

CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "ellipse", "supercategory": "shape"},
    {"id": 2, "name": "polygon", "supercategory": "shape"},
    {"id": 5, "name": "ring", "supercategory": "shape"},
    {"id": 7, "name": "cross", "supercategory": "shape"},
]
_CAT_IDS = {c["name"]: c["id"] for c in CATEGORIES}

MIN_VISIBLE_FRACTION = 0.4
SMALL_SIDE = 32


@dataclass
class SyntheticDataset:
    """Paths and categories of a generated synthetic dataset."""

    root: Path
    train_img_dir: Path
    train_ann_path: Path
    train_gt_ann_path: Path
    val_img_dir: Path
    val_ann_path: Path
    categories: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class _Knobs:
    min_objects: int
    max_objects: int
    size_range: tuple[float, float]  # half-extent as a fraction of the image side
    small_prob: float  # chance of a small object (box area < 32^2)
    separation: str  # "boxes" (well separated), "masks" (touching allowed), "none" (occlusion)
    object_textures: tuple[str, ...]
    background_textures: tuple[str, ...]
    texture_contrast: float
    min_colour_dist: float
    palette_overlap: float  # chance a background colour is drawn from the object palette
    camouflage: float  # chance an object's second texture colour is a background colour
    category_weights: tuple[float, float, float, float]  # ellipse, polygon, ring, cross
    thin_range: tuple[float, float]  # cross arm thickness as a fraction of the half-extent
    sensor_noise: float
    polygon_prob: float
    inside: bool  # keep whole objects inside the image (no truncation at the border)


_KNOBS: dict[str, _Knobs] = {
    "easy": _Knobs(
        min_objects=1,
        max_objects=2,
        size_range=(0.2, 0.3),
        small_prob=0.0,
        separation="boxes",
        object_textures=("flat",),
        background_textures=("flat", "gradient"),
        texture_contrast=0.15,
        min_colour_dist=150.0,
        palette_overlap=0.0,
        camouflage=0.0,
        category_weights=(0.35, 0.35, 0.15, 0.15),
        thin_range=(0.3, 0.45),
        sensor_noise=2.0,
        polygon_prob=0.35,
        inside=True,
    ),
    "medium": _Knobs(
        min_objects=1,
        max_objects=4,
        size_range=(0.1, 0.27),
        small_prob=0.1,
        separation="masks",
        object_textures=("flat", "noise", "stripes", "dots"),
        background_textures=("noise", "gradient", "stripes", "checker"),
        texture_contrast=0.3,
        min_colour_dist=70.0,
        palette_overlap=0.3,
        camouflage=0.25,
        category_weights=(0.3, 0.3, 0.2, 0.2),
        thin_range=(0.2, 0.35),
        sensor_noise=5.0,
        polygon_prob=0.35,
        inside=False,
    ),
    "hard": _Knobs(
        min_objects=2,
        max_objects=4,
        size_range=(0.1, 0.3),
        small_prob=0.3,
        separation="none",
        object_textures=("noise", "stripes", "dots"),
        background_textures=("noise", "gradient", "stripes", "checker"),
        texture_contrast=0.45,
        min_colour_dist=40.0,
        palette_overlap=0.7,
        camouflage=0.5,
        category_weights=(0.2, 0.25, 0.275, 0.275),
        thin_range=(0.12, 0.25),
        sensor_noise=9.0,
        polygon_prob=0.35,
        inside=False,
    ),
}


@dataclass
class _Object:
    category: str
    full: np.ndarray  # bool (H, W), in-image part of the whole shape
    texture: np.ndarray  # float (H, W, 3)
    polygon: list[list[float]] | None = None  # set when ``full`` is defined as this rasterised polygon
    visible: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float64) * 255.0


def _object_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0))


def _background_colour(rng: np.random.Generator, knobs: _Knobs) -> np.ndarray:
    if rng.random() < knobs.palette_overlap:
        return _object_colour(rng)
    return _hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.15, 0.85))


def _far_colour(
    rng: np.random.Generator, avoid: list[np.ndarray], min_dist: float, draw: Callable[[], np.ndarray], tries: int = 40
) -> np.ndarray:
    """Draw colours until one is at least ``min_dist`` (RGB L2) from all of ``avoid``; else the farthest seen."""
    best, best_d = None, -1.0
    for _ in range(tries):
        c = draw()
        d = min((float(np.linalg.norm(c - a)) for a in avoid), default=math.inf)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


# ---------------------------------------------------------------------------------------------------- textures


def _texture(
    kind: str,
    base: np.ndarray,
    rng: np.random.Generator,
    grid: tuple[np.ndarray, np.ndarray],
    contrast: float,
    second: np.ndarray | None = None,
) -> np.ndarray:
    """A (H, W, 3) float texture around colour ``base`` (``second`` = the other colour for two-tone textures)."""
    yy, xx = grid
    h, w = yy.shape
    if second is None:
        shade = rng.uniform(0.5, 1.0) * contrast
        target = 255.0 if rng.random() < 0.5 else 0.0
        second = base + (target - base) * shade
    if kind == "flat":
        tex = np.broadcast_to(base, (h, w, 3)).astype(np.float64)
        return tex + rng.normal(0.0, 3.0 + 10.0 * contrast, (h, w, 1))
    if kind == "noise":
        sigma = 10.0 + 50.0 * contrast
        return base + rng.normal(0.0, sigma, (h, w, 1)) + rng.normal(0.0, 0.4 * sigma, (h, w, 3))
    if kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)).astype(np.float64)
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        return base * (1.0 - t[..., None]) + second * t[..., None]
    if kind == "stripes":
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(5.0, 14.0)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        sel = (np.floor(t) % 2 == 0)[..., None]
        return np.where(sel, base, second).astype(np.float64)
    if kind == "checker":
        cell = int(rng.integers(6, 16))
        sel = (((yy // cell) + (xx // cell)) % 2 == 0)[..., None]
        return np.where(sel, base, second).astype(np.float64)
    if kind == "dots":
        spacing = rng.uniform(5.0, 10.0)
        radius = spacing * rng.uniform(0.2, 0.35)
        ox, oy = rng.uniform(0, spacing, 2)
        dx = (xx + ox) % spacing - spacing / 2
        dy = (yy + oy) % spacing - spacing / 2
        sel = (dx * dx + dy * dy <= radius * radius)[..., None]
        return np.where(sel, second, base).astype(np.float64)
    raise ValueError(f"unknown texture {kind!r}")


def _background(rng: np.random.Generator, knobs: _Knobs, grid, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    c1 = _background_colour(rng, knobs)
    c2 = _far_colour(rng, [c1], 40.0, lambda: _background_colour(rng, knobs))
    c2 = c1 + (c2 - c1) * (0.4 + knobs.texture_contrast)
    kind = str(rng.choice(knobs.background_textures))
    if kind == "flat":
        tex = _texture("flat", c1, rng, grid, knobs.texture_contrast)
        return tex, [c1]
    if kind == "noise":
        return _texture("noise", c1, rng, grid, knobs.texture_contrast), [c1]
    return _texture(kind, c1, rng, grid, knobs.texture_contrast, second=c2), [c1, c2]


# ------------------------------------------------------------------------------------------------------ shapes


def _poly_mask(points: np.ndarray, size: int) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in points], fill=1)
    return np.asarray(img, dtype=bool)


def _rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.array([cx, cy])


def _ellipse(grid, cx: float, cy: float, a: float, b: float, angle: float) -> np.ndarray:
    yy, xx = grid
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    c, s = math.cos(angle), math.sin(angle)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _shape(
    category: str, rng: np.random.Generator, grid, size: int, cx: float, cy: float, r: float, knobs: _Knobs
) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    if category == "ellipse":
        return _ellipse(grid, cx, cy, r, r * rng.uniform(0.5, 1.0), angle)
    if category == "ring":
        b = r * rng.uniform(0.65, 1.0)
        k = rng.uniform(0.4, 0.6)
        inner_a, inner_b = max(r * k, 2.5), max(b * k, 2.5)
        outer = _ellipse(grid, cx, cy, r, b, angle)
        return outer & ~_ellipse(grid, cx, cy, inner_a, inner_b, angle)
    if category == "polygon":
        if rng.random() < 0.5:  # convex polygon
            n = int(rng.integers(3, 9))
            step = 2 * math.pi / n
            angles = np.arange(n) * step + rng.uniform(-0.3, 0.3, n) * step
            radii = r * rng.uniform(0.8, 1.0, n)
        else:  # star
            n = int(rng.integers(4, 8))
            angles = np.linspace(0, 2 * math.pi, 2 * n, endpoint=False)
            radii = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.35, 0.6))
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        return _poly_mask(_rotate(pts, angle, cx, cy), size)
    if category == "cross":
        t = max(r * rng.uniform(*knobs.thin_range), 1.6)  # half thickness: arms >= ~3 px wide
        if rng.random() < 0.5:  # plus-shaped cross
            pts = np.array(
                [
                    (-t, -r),
                    (t, -r),
                    (t, -t),
                    (r, -t),
                    (r, t),
                    (t, t),
                    (t, r),
                    (-t, r),
                    (-t, t),
                    (-r, t),
                    (-r, -t),
                    (-t, -t),
                ]
            )
        else:  # L-shape
            pts = np.array([(-r, -r), (-r + 2 * t, -r), (-r + 2 * t, r - 2 * t), (r, r - 2 * t), (r, r), (-r, r)])
        return _poly_mask(_rotate(pts.astype(np.float64), angle, cx, cy), size)
    raise ValueError(f"unknown category {category!r}")


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1 - cols[0]), int(rows[-1] + 1 - rows[0])


def _has_hole(mask: np.ndarray) -> bool:
    """True when the mask has a background region not connected to the image border."""
    _, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _polygonise(mask: np.ndarray) -> tuple[list[list[float]], np.ndarray] | None:
    """Single-contour polygon of a hole-free mask and the mask that polygon rasterises to (or None)."""
    if _has_hole(mask):
        return None
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) != 1 or len(contours[0]) < 3:
        return None
    poly = [(contours[0].reshape(-1, 2).astype(np.float64) + 0.5).flatten().tolist()]
    h, w = mask.shape
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, h, w))).astype(bool)
    if decoded.sum() < 0.8 * mask.sum() or _tight_box(decoded) is None:
        return None
    return poly, decoded


# ------------------------------------------------------------------------------------------------------ images


def _place_objects(rng: np.random.Generator, knobs: _Knobs, grid, size: int, max_objects: int) -> list[_Object]:
    hi = max(knobs.min_objects, min(knobs.max_objects, max_objects))
    n = int(rng.integers(min(knobs.min_objects, hi), hi + 1))
    names = [c["name"] for c in CATEGORIES]
    weights = np.asarray(knobs.category_weights) / sum(knobs.category_weights)
    placed: list[_Object] = []
    boxes: list[tuple[int, int, int, int]] = []
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(n):
        for _attempt in range(30):
            category = str(rng.choice(names, p=weights))
            if rng.random() < knobs.small_prob:
                r = rng.uniform(5.0, 12.0)
                if category == "ring":
                    r = max(r, 9.0)
            else:
                r = rng.uniform(*knobs.size_range) * size
            r = max(r, 4.0)
            inset = r + 2.0 if knobs.inside else 0.75 * r
            lo, hi_c = inset, size - inset
            if hi_c <= lo:
                lo, hi_c = 0.0, float(size)
            cx, cy = rng.uniform(lo, hi_c, 2)
            full = _shape(category, rng, grid, size, cx, cy, r, knobs)
            box = _tight_box(full)
            if box is None or box[2] <= 2 or box[3] <= 2:
                continue
            if knobs.separation == "boxes":
                gap = 6
                if any(
                    box[0] - gap < b[0] + b[2]
                    and b[0] < box[0] + box[2] + gap
                    and box[1] - gap < b[1] + b[3]
                    and b[1] < box[1] + box[3] + gap
                    for b in boxes
                ):
                    continue
            elif knobs.separation == "masks" and (full & occupied).any():
                continue
            polygon = None
            if category != "ring" and rng.random() < knobs.polygon_prob:
                res = _polygonise(full)
                if res is not None:
                    polygon, full = res
                    box = _tight_box(full)
            placed.append(_Object(category=category, full=full, texture=np.empty(0), polygon=polygon))
            boxes.append(box)
            occupied |= full
            break
    return placed


def _visible_objects(objects: list[_Object]) -> list[_Object]:
    """Keep objects whose visible part (not covered by later kept objects) is large enough; last painted wins."""
    kept: list[_Object] = []
    covered = np.zeros_like(objects[0].full) if objects else None
    for obj in reversed(objects):
        visible = obj.full & ~covered
        box = _tight_box(visible)
        if box is None or box[2] <= 2 or box[3] <= 2:
            continue
        if visible.sum() < MIN_VISIBLE_FRACTION * obj.full.sum():
            continue
        obj.visible = visible
        kept.append(obj)
        covered = covered | obj.full
    kept.reverse()
    return kept


def _render_image(rng: np.random.Generator, knobs: _Knobs, grid, size: int, max_objects: int):
    for _ in range(20):
        objects = _visible_objects(_place_objects(rng, knobs, grid, size, max_objects))
        if objects:
            break
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError("could not place any object")
    image, bg_colours = _background(rng, knobs, grid, size)
    used: list[np.ndarray] = []
    for obj in objects:
        colour = _far_colour(rng, bg_colours + used, knobs.min_colour_dist, lambda: _object_colour(rng))
        used.append(colour)
        kind = str(rng.choice(knobs.object_textures))
        second = None
        if kind != "flat" and kind != "noise" and rng.random() < knobs.camouflage:
            second = bg_colours[int(rng.integers(len(bg_colours)))]
        tex = _texture(kind, colour, rng, grid, knobs.texture_contrast, second=second)
        image[obj.full] = tex[obj.full]
    image = image + rng.normal(0.0, knobs.sensor_noise, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def _encode(obj: _Object) -> list[list[float]] | dict[str, Any]:
    if obj.polygon is not None and np.array_equal(obj.visible, obj.full):
        return obj.polygon
    rle = mask_utils.encode(np.asfortranarray(obj.visible.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _generate_split(
    split_dir: Path,
    num_images: int,
    size: int,
    knobs: _Knobs,
    seed_seq: np.random.SeedSequence,
    max_objects: int,
    first_ann_id: int,
    description: str,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed_seq)
    img_dir = split_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    grid = np.mgrid[:size, :size]
    grid = (grid[0], grid[1])
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    ann_id = first_ann_id
    for i in range(num_images):
        image, objects = _render_image(rng, knobs, grid, size, max_objects)
        file_name = f"{split_dir.name}_{i:05d}.png"
        Image.fromarray(image).save(img_dir / file_name, compress_level=1)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for obj in objects:
            x, y, w, h = _tight_box(obj.visible)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": _CAT_IDS[obj.category],
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(obj.visible.sum()),
                    "iscrowd": 0,
                    "segmentation": _encode(obj),
                }
            )
            ann_id += 1
    return {
        "info": {"description": description, "version": "1.0", "year": 2024, "contributor": "mal_core.synthetic"},
        "licenses": [{"id": 1, "name": "CC0-1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }


def generate_synthetic_dataset(
    out_dir: str | Path,
    *,
    num_train_images: int = 40,
    num_val_images: int = 12,
    image_size: int = 160,
    difficulty: str = "medium",
    seed: int = 0,
    max_objects: int = 4,
) -> SyntheticDataset:
    """Write a deterministic synthetic COCO instance dataset (train box-only + GT, val GT) under ``out_dir``."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if num_train_images < 0 or num_val_images < 0:
        raise ValueError("image counts must be >= 0")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    knobs = _KNOBS[difficulty]
    root = Path(out_dir)
    train_seq, val_seq = np.random.SeedSequence(seed).spawn(2)
    desc = f"MAL synthetic shapes ({difficulty}, seed {seed})"
    train = _generate_split(
        root / "train", num_train_images, image_size, knobs, train_seq, max_objects, 1, desc + " train"
    )
    val_first_id = len(train["annotations"]) + 1
    val = _generate_split(
        root / "val", num_val_images, image_size, knobs, val_seq, max_objects, val_first_id, desc + " val"
    )
    boxes_only = dict(train)
    boxes_only["annotations"] = [{k: v for k, v in a.items() if k != "segmentation"} for a in train["annotations"]]
    ds = SyntheticDataset(
        root=root,
        train_img_dir=root / "train" / "images",
        train_ann_path=root / "train" / "annotations_boxes.json",
        train_gt_ann_path=root / "train" / "annotations_gt.json",
        val_img_dir=root / "val" / "images",
        val_ann_path=root / "val" / "annotations.json",
        categories=[dict(c) for c in CATEGORIES],
    )
    atomic_write_json(ds.train_gt_ann_path, train, indent=None)
    atomic_write_json(ds.train_ann_path, boxes_only, indent=None)
    atomic_write_json(ds.val_ann_path, val, indent=None)
    return ds
