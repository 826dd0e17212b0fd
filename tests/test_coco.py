"""COCO parsing: segmentation formats, RLE round trip, filters and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mal_core.data.coco import decode_segmentation, encode_rle, load_coco
from mal_core.errors import DataError


def _write(tmp_path, anns, categories=None, images=None):
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    Image.new("RGB", (40, 30)).save(img_dir / "a.png")
    data = {"images": images or [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
            "annotations": anns, "categories": categories or [{"id": 3, "name": "x"}, {"id": 9, "name": "y"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, img_dir


def test_rle_round_trip_and_formats():
    rng = np.random.default_rng(0)
    mask = rng.random((30, 40)) > 0.6
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [30, 40]
    assert np.array_equal(decode_segmentation(rle, 30, 40), mask)
    # uncompressed RLE (list counts), column-major run lengths
    fortran = np.asfortranarray(mask.astype(np.uint8)).flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in fortran:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    assert np.array_equal(decode_segmentation({"size": [30, 40], "counts": counts}, 30, 40), mask)
    # polygons: a rectangle and a second part, OR-ed
    poly = [[2, 2, 10, 2, 10, 8, 2, 8], [20, 10, 30, 10, 30, 20, 20, 20]]
    m = decode_segmentation(poly, 30, 40)
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, 30, 40))).astype(bool)
    assert np.array_equal(m, expected) and m[5, 5] and m[15, 25] and not m[15, 5]


def test_filters_clip_and_category_mapping(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 9, "bbox": [-5, 2, 20, 10]},  # clipped to x=0,w=15
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]},  # tiny: filtered by area 4
    ]
    path, img_dir = _write(tmp_path, anns)
    coco = load_coco(path, img_dir, min_area=10)
    assert [i.ann_id for i in coco.instances] == [1]
    inst = coco.instances[0]
    assert inst.bbox == (0.0, 2.0, 15.0, 10.0) and inst.category_index == 2 and coco.num_filtered == 1


@pytest.mark.parametrize(
    ("ann", "message"),
    [
        ({"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 0, 5]}, "zero or negative size"),
        ({"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, -2]}, "zero or negative size"),
        ({"id": 1, "image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5]}, "unknown category_id 4"),
        ({"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5]}, "unknown image_id 7"),
        ({"id": 1, "image_id": 1, "category_id": 3, "bbox": [100, 1, 5, 5]}, "outside its 40x30 image"),
        ({"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5]}, "bbox must be"),
    ],
)
def test_bad_annotations_name_the_annotation(tmp_path, ann, message):
    path, img_dir = _write(tmp_path, [ann])
    with pytest.raises(DataError, match=message) as err:
        load_coco(path, img_dir)
    assert "annotation id 1" in str(err.value) and str(path) in str(err.value)


def test_missing_image_and_malformed_json(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 30, "width": 40},
              {"id": 2, "file_name": "missing.png", "height": 30, "width": 40}]
    path, img_dir = _write(tmp_path, [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]}],
                           images=images)
    with pytest.raises(DataError, match="missing.png"):
        load_coco(path, img_dir)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(DataError, match=r"not valid JSON.*line 1"):
        load_coco(bad, img_dir)
    with pytest.raises(DataError, match="does not exist"):
        load_coco(tmp_path / "nope.json", img_dir)


def test_masks_required_for_scoring(tmp_path):
    path, img_dir = _write(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(DataError, match="load_mask"):
        load_coco(path, img_dir, require_masks=True)
    assert len(load_coco(path, img_dir).instances) == 1  # box-only is fine without masks
