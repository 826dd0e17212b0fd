"""Tests for the synthetic COCO dataset generator."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mal_core.data.synthetic import (
    DIFFICULTIES,
    SyntheticDataset,
    _Object,
    _visible_objects,
    generate_synthetic_dataset,
)


def _decode(seg, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
    return mask_utils.decode(seg).astype(bool)


def _load(path: Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _has_hole(mask: np.ndarray) -> bool:
    _, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, SyntheticDataset]:
    out = {}
    for difficulty in DIFFICULTIES:
        root = tmp_path_factory.mktemp(f"syn_{difficulty}")
        out[difficulty] = generate_synthetic_dataset(
            root, num_train_images=16, num_val_images=8, difficulty=difficulty, seed=3
        )
    return out


def _gt_files(ds: SyntheticDataset) -> list[tuple[dict, Path]]:
    return [(_load(ds.train_gt_ann_path), ds.train_img_dir), (_load(ds.val_ann_path), ds.val_img_dir)]


def test_layout_and_keys(datasets):
    ds = datasets["medium"]
    assert ds.train_img_dir == ds.root / "train" / "images"
    assert ds.val_img_dir == ds.root / "val" / "images"
    assert ds.train_ann_path == ds.root / "train" / "annotations_boxes.json"
    assert ds.train_gt_ann_path == ds.root / "train" / "annotations_gt.json"
    assert ds.val_ann_path == ds.root / "val" / "annotations.json"
    assert len(list(ds.train_img_dir.glob("*.png"))) == 16
    assert len(list(ds.val_img_dir.glob("*.png"))) == 8
    assert not list(ds.root.rglob("*.tmp"))
    for coco, img_dir in _gt_files(ds):
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(coco)
        for img in coco["images"]:
            assert {"id", "file_name", "height", "width"} <= set(img)
            with Image.open(img_dir / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (160, 160)
                assert im.mode == "RGB"
    ids = [c["id"] for c in ds.categories]
    assert ids == sorted(ids) and ids != list(range(1, len(ids) + 1)), "category ids must be non-contiguous"
    assert {c["name"] for c in ds.categories} >= {"ellipse", "polygon", "ring", "cross"}


def test_deterministic_for_seed(tmp_path):
    kwargs = {"num_train_images": 4, "num_val_images": 3, "difficulty": "hard", "seed": 11}
    a = generate_synthetic_dataset(tmp_path / "a", **kwargs)
    b = generate_synthetic_dataset(tmp_path / "b", **kwargs)
    c = generate_synthetic_dataset(tmp_path / "c", **{**kwargs, "seed": 12})
    for name in ("train/annotations_boxes.json", "train/annotations_gt.json", "val/annotations.json"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes()
    for rel in sorted(p.relative_to(a.root) for p in a.root.rglob("*.png")):
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes()
    assert (a.root / "val/annotations.json").read_bytes() != (c.root / "val/annotations.json").read_bytes()
    # train and val use different sub-seeds: their first images differ
    assert (a.train_img_dir / "train_00000.png").read_bytes() != (a.val_img_dir / "val_00000.png").read_bytes()


def test_box_only_file_matches_gt_without_segmentation(datasets):
    for ds in datasets.values():
        boxes = _load(ds.train_ann_path)
        gt = _load(ds.train_gt_ann_path)
        assert boxes["annotations"], "no annotations generated"
        assert all("segmentation" not in a for a in boxes["annotations"])
        assert all("segmentation" in a for a in gt["annotations"])
        stripped = [{k: v for k, v in a.items() if k != "segmentation"} for a in gt["annotations"]]
        assert boxes["annotations"] == stripped
        assert boxes["images"] == gt["images"] and boxes["categories"] == gt["categories"]


def test_bbox_is_tight_box_of_visible_mask(datasets):
    for ds in datasets.values():
        all_ids = []
        for coco, _ in _gt_files(ds):
            images = {im["id"]: im for im in coco["images"]}
            cat_ids = {c["id"] for c in coco["categories"]}
            for ann in coco["annotations"]:
                all_ids.append(ann["id"])
                im = images[ann["image_id"]]
                h, w = im["height"], im["width"]
                assert ann["category_id"] in cat_ids and ann["iscrowd"] == 0
                m = _decode(ann["segmentation"], h, w)
                rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
                x, y, bw, bh = ann["bbox"]
                assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
                assert bw > 2 and bh > 2
                assert [x, y, bw, bh] == [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
                assert ann["area"] == m.sum()
        assert len(all_ids) == len(set(all_ids)), "annotation ids must be unique"


def test_segmentation_encodings_mixed(datasets):
    kinds = {"poly": 0, "rle": 0}
    for ds in datasets.values():
        for coco, _ in _gt_files(ds):
            for ann in coco["annotations"]:
                seg = ann["segmentation"]
                if isinstance(seg, list):
                    kinds["poly"] += 1
                    assert all(len(p) >= 6 for p in seg)
                    assert not _has_hole(_decode(seg, 160, 160))
                else:
                    kinds["rle"] += 1
                    assert isinstance(seg["counts"], str) and seg["size"] == [160, 160]
    assert kinds["poly"] > 0 and kinds["rle"] > kinds["poly"]


def test_ring_masks_have_holes(datasets):
    rings = 0
    for difficulty in ("easy", "medium"):  # no occlusion there, so every ring is whole
        ds = datasets[difficulty]
        ring_id = next(c["id"] for c in ds.categories if c["name"] == "ring")
        for coco, _ in _gt_files(ds):
            for ann in coco["annotations"]:
                if ann["category_id"] == ring_id:
                    rings += 1
                    assert _has_hole(_decode(ann["segmentation"], 160, 160))
    assert rings > 0


def test_masks_of_one_image_never_overlap_and_match_pixels(datasets):
    ds = datasets["hard"]
    for coco, _ in _gt_files(ds):
        by_image: dict[int, list[np.ndarray]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(_decode(ann["segmentation"], 160, 160))
        assert max(len(v) for v in by_image.values()) >= 2
        for masks in by_image.values():
            total = np.sum(masks, axis=0)
            assert total.max() <= 1, "GT masks must be visible parts only (no overlap)"


def test_visible_objects_occlusion_rule():
    h = w = 40
    yy, xx = np.mgrid[:h, :w]

    def obj(x0, y0, x1, y1):
        return _Object("polygon", (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1), np.empty(0))

    half = obj(0, 0, 20, 20)  # will be 50% covered -> kept with its visible half
    buried = obj(22, 22, 32, 32)  # 80% covered -> dropped
    top1 = obj(10, 0, 20, 20)
    top2 = obj(22, 22, 40, 30)
    kept = _visible_objects([half, buried, top1, top2])
    assert kept == [half, top1, top2]
    assert np.array_equal(half.visible, half.full & ~top1.full)
    assert half.visible.sum() == 200
    assert np.array_equal(top2.visible, top2.full)


def test_hard_has_small_objects(datasets):
    coco = _load(datasets["hard"].train_gt_ann_path)
    areas = [a["bbox"][2] * a["bbox"][3] for a in coco["annotations"]]
    assert min(areas) < 32**2


def test_easy_has_one_or_two_large_objects(datasets):
    easy = _load(datasets["easy"].train_gt_ann_path)
    per_image: dict[int, int] = {}
    for a in easy["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert set(per_image) == {im["id"] for im in easy["images"]}
    assert set(per_image.values()) <= {1, 2}
    assert all(a["bbox"][2] * a["bbox"][3] > 32**2 for a in easy["annotations"])


def test_easy_objects_well_separated(datasets):
    for coco, _ in _gt_files(datasets["easy"]):
        by_image: dict[int, list[list[float]]] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a["bbox"])
        for boxes in by_image.values():
            if len(boxes) == 2:
                (ax, ay, aw, ah), (bx, by, bw, bh) = boxes
                assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, difficulty="extreme")
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, max_objects=0)


def test_generation_speed(tmp_path):
    start = time.perf_counter()
    generate_synthetic_dataset(tmp_path, num_train_images=40, num_val_images=12, image_size=160)
    assert time.perf_counter() - start < 5.0
