"""Tests for the classical mask-from-box baselines and their scoring."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mal_core.baselines import (
    BASELINES,
    box_fill_mask,
    decode_segmentation,
    grabcut_mask,
    inscribed_ellipse_mask,
    score_baselines,
)
from mal_core.data.synthetic import generate_synthetic_dataset
from mal_core.engine.metrics import instance_iou


def _disc_image(size: int = 120, cx: float = 60.0, cy: float = 60.0, r: float = 30.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = (40, 60, 170)
    img[disc] = (220, 60, 40)
    img += rng.normal(0, 3, img.shape)
    rows, cols = np.flatnonzero(disc.any(1)), np.flatnonzero(disc.any(0))
    bbox = [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]
    return np.clip(img, 0, 255).astype(np.uint8), disc, bbox


def test_box_fill_pixel_convention():
    m = box_fill_mask(20, 30, [2.5, 3.2, 4.1, 5.0])  # cols 2..6, rows 3..8
    expected = np.zeros((20, 30), dtype=bool)
    expected[3:9, 2:7] = True
    assert m.dtype == bool and m.shape == (20, 30)
    assert np.array_equal(m, expected)
    # integer box covers exactly w x h pixels
    assert box_fill_mask(20, 30, [4, 5, 10, 6]).sum() == 60
    # clipped to the image; fully outside -> empty
    clipped = box_fill_mask(10, 10, [-3, 7, 6, 8])
    assert np.array_equal(np.argwhere(clipped.any(0)).ravel(), np.arange(0, 3))
    assert np.array_equal(np.argwhere(clipped.any(1)).ravel(), np.arange(7, 10))
    assert not box_fill_mask(10, 10, [12, 12, 3, 3]).any()


def test_ellipse_area_and_extent():
    bbox = [10, 20, 100, 60]
    m = inscribed_ellipse_mask(120, 140, bbox)
    box = box_fill_mask(120, 140, bbox)
    assert not (m & ~box).any(), "ellipse must lie inside the box"
    assert m.sum() == pytest.approx(math.pi / 4 * 100 * 60, rel=0.02)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    assert (cols[0], cols[-1], rows[0], rows[-1]) == (10, 109, 20, 79), "ellipse touches the four sides"
    assert np.array_equal(m[20:80, 10:110], m[20:80, 10:110][::-1, ::-1]), "centred in the box"
    # fractional box uses the same pixel range as box fill
    frac = inscribed_ellipse_mask(50, 50, [2.5, 3.2, 20.1, 30.0])
    assert not (frac & ~box_fill_mask(50, 50, [2.5, 3.2, 20.1, 30.0])).any()
    assert frac[:, 2].any() and frac[:, 22].any() and frac[3].any() and frac[33].any()


def test_grabcut_recovers_flat_disc():
    img, disc, bbox = _disc_image()
    gc = grabcut_mask(img, bbox)
    assert gc.dtype == bool and gc.shape == disc.shape
    assert not (gc & ~box_fill_mask(120, 120, bbox)).any()
    assert instance_iou(gc, disc) > 0.9
    assert instance_iou(box_fill_mask(120, 120, bbox), disc) == pytest.approx(math.pi / 4, abs=0.03)
    assert np.array_equal(gc, grabcut_mask(img, bbox)), "deterministic"


def test_grabcut_box_touching_border():
    img, disc, bbox = _disc_image(size=100, cx=22.0, cy=24.0, r=28.0)  # disc cut by the left and top borders
    assert bbox[0] == 0 and bbox[1] == 0
    assert instance_iou(grabcut_mask(img, bbox), disc) > 0.9


def test_grabcut_small_box_falls_back_to_box_fill():
    img, _, _ = _disc_image()
    bbox = [10, 10, 3, 12]
    assert np.array_equal(grabcut_mask(img, bbox), box_fill_mask(120, 120, bbox))


def test_baselines_registry():
    img, disc, bbox = _disc_image()
    assert list(BASELINES) == ["box_fill", "ellipse", "grabcut"]
    assert np.array_equal(BASELINES["box_fill"](img, bbox), box_fill_mask(120, 120, bbox))
    assert np.array_equal(BASELINES["ellipse"](img, bbox), inscribed_ellipse_mask(120, 120, bbox))
    # the inscribed circle of a disc's box is the disc
    assert instance_iou(BASELINES["ellipse"](img, bbox), disc) > 0.95


def test_decode_segmentation_formats():
    h, w = 30, 40
    m = np.zeros((h, w), dtype=np.uint8)
    m[5:15, 10:30] = 1
    m[20:25, 2:6] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    as_str = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    assert np.array_equal(decode_segmentation(as_str, h, w), m.astype(bool))
    assert np.array_equal(decode_segmentation(rle, h, w), m.astype(bool))
    # uncompressed RLE: column-major run lengths starting with zeros
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    assert np.array_equal(decode_segmentation({"size": [h, w], "counts": counts}, h, w), m.astype(bool))
    # two-part polygon: both parts are ORed
    polys = [[10, 5, 30, 5, 30, 15, 10, 15], [2, 20, 6, 20, 6, 25, 2, 25]]
    dec = decode_segmentation(polys, h, w)
    assert dec[10, 20] and dec[22, 4] and not dec[0, 0]
    assert instance_iou(dec, m) > 0.95


def _write_coco(tmp_path, img: np.ndarray, anns: list[dict], categories: list[dict]):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.fromarray(img).save(img_dir / "a.png")
    h, w = img.shape[:2]
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "height": h, "width": w}],
        "annotations": anns,
        "categories": categories,
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    return path, img_dir


def test_score_baselines_exact_on_box_masks(tmp_path):
    img = np.full((60, 80, 3), 128, dtype=np.uint8)
    anns = []
    for i, (bbox, cat) in enumerate([([5, 5, 20, 10], 9), ([30, 15, 40, 40], 4)]):
        x, y, w, h = bbox
        seg = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        anns.append(
            {
                "id": i + 1,
                "image_id": 7,
                "category_id": cat,
                "bbox": bbox,
                "area": w * h,
                "iscrowd": 0,
                "segmentation": seg,
            }
        )
    cats = [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]
    path, img_dir = _write_coco(tmp_path, img, anns, cats)
    res = score_baselines(path, img_dir, methods=("ellipse", "box_fill"))
    assert list(res) == ["ellipse", "box_fill"]
    assert res["box_fill"]["mIoU"] == pytest.approx(1.0, abs=1e-4)
    assert res["box_fill"]["num_instances"] == 2
    assert res["box_fill"]["mIoU_small"] == pytest.approx(1.0, abs=1e-4)  # 20x10 box
    assert res["box_fill"]["mIoU_medium"] == pytest.approx(1.0, abs=1e-4)  # 40x40 box
    assert math.isnan(res["box_fill"]["mIoU_large"])
    assert res["ellipse"]["mIoU"] == pytest.approx(math.pi / 4, abs=0.03)
    assert res["ellipse"]["seconds"] >= 0.0
    with pytest.raises(ValueError):
        score_baselines(path, img_dir, methods=("box_fill", "nope"))


def test_score_baselines_on_easy_synthetic(tmp_path):
    ds = generate_synthetic_dataset(tmp_path, num_train_images=1, num_val_images=8, difficulty="easy", seed=5)
    res = score_baselines(ds.val_ann_path, ds.val_img_dir)
    assert list(res) == ["box_fill", "ellipse", "grabcut"]
    n = len(json.loads(ds.val_ann_path.read_text())["annotations"])
    for metrics in res.values():
        assert {"mIoU", "mIoU_small", "mIoU_medium", "mIoU_large", "num_instances", "seconds"} <= set(metrics)
        assert metrics["num_instances"] == n
    assert res["box_fill"]["mIoU"] < res["ellipse"]["mIoU"] < res["grabcut"]["mIoU"]
    assert res["grabcut"]["mIoU"] > 0.85


def test_grabcut_box_covering_whole_image():
    img, disc, _ = _disc_image(size=80, cx=40.0, cy=40.0, r=25.0)
    gc = grabcut_mask(img, [0, 0, 80, 80])  # no pixel outside the rect: padding supplies background samples
    assert instance_iou(gc, disc) > 0.9
