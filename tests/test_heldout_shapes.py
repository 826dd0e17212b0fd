"""The held-out shape generator writes valid COCO folders that the benchmark and the loaders read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mal_core.data.heldout_shapes import FAMILIES, generate_family
from mal_core.data.loading import load_eval_coco


@pytest.mark.parametrize("family", FAMILIES)
def test_family_layout_masks_and_boxes(tmp_path, family):
    root = generate_family(tmp_path / family, family, train_images=3, val_images=2, size=96, seed=1)
    for split in ("train", "val"):
        full = json.loads((root / split / "annotations.json").read_text())
        boxes = json.loads((root / split / "annotations_boxes.json").read_text())
        assert full["annotations"] and len(full["images"]) == (3 if split == "train" else 2)
        assert all("segmentation" not in a for a in boxes["annotations"])
        assert [a["bbox"] for a in boxes["annotations"]] == [a["bbox"] for a in full["annotations"]]
        for ann in full["annotations"]:
            m = mask_utils.decode({"size": ann["segmentation"]["size"],
                                   "counts": ann["segmentation"]["counts"].encode()})
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == m.sum() >= 40
        coco = load_eval_coco(str(root / split / "annotations.json"), str(root / split / "images"), load_mask=True)
        assert len(coco.instances) == len(full["annotations"])
    again = generate_family(tmp_path / "again", family, train_images=3, val_images=2, size=96, seed=1)
    assert (again / "val" / "annotations.json").read_text() == (root / "val" / "annotations.json").read_text()


def test_holes_family_has_holes_and_unknown_families_are_refused(tmp_path):
    import cv2

    root = generate_family(tmp_path / "holes", "holes", train_images=6, val_images=0, size=128, seed=0)
    anns = json.loads((root / "train" / "annotations.json").read_text())["annotations"]
    holed = 0
    for ann in anns:
        m = mask_utils.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})
        _, hier = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        holed += hier is not None and bool((hier[0][:, 3] >= 0).any())
    assert holed >= len(anns) // 3
    with pytest.raises(ValueError, match="family must be one of"):
        generate_family(tmp_path / "x", "spirals")
