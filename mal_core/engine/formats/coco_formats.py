"""COCO instance files: ``coco_rle`` (compressed RLE masks) and ``coco_polygon`` (polygons).

Both write ``<folder>/annotations.json``: the labelled file's ``info``/``licenses``/``images``/``categories`` and one
annotation per delivered label with ``id``, ``image_id``, ``category_id``, ``bbox``, ``iscrowd`` 0, ``area`` = the
mask's pixel count (never the box's), ``score`` and, when present, ``quality``/``consistency``/``flags``/
``expected_iou``. A label delivered as a box only has ``segmentation: []``, ``area`` = the box area and
``"box_only": true``. ``coco_polygon`` writes each mask with :func:`mal_core.data.polygons.mask_to_polygons` (one
polygon per part, holes cut in by zero-width bridges, vertices on the pixel edges); an empty mask has no polygon,
so it is left out there (counted in ``empty_masks_left_out``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mal_core.config.experiment import ConvertConfig
from mal_core.data.coco import encode_rle
from mal_core.data.polygons import mask_to_polygons
from mal_core.engine.formats.delivery import Delivery, Label, mask_area
from mal_core.utils.io import atomic_write_text

ANNOTATIONS_FILE = "annotations.json"
_KEPT_KEYS = ("score", "box_score", "quality", "consistency", "flags", "expected_iou")
_TOP_KEYS = ("info", "licenses")


def _annotation(label: Label, segmentation: Any, area: int) -> dict[str, Any]:
    ann = label.ann
    out = {"id": ann["id"], "image_id": ann["image_id"], "category_id": ann["category_id"],
           "bbox": [float(v) for v in ann["bbox"]], "iscrowd": 0, "segmentation": segmentation, "area": area}
    out.update({k: ann[k] for k in _KEPT_KEYS if k in ann})
    return out


def _write(delivery: Delivery, folder: Path, polygons: bool, tolerance: float, top: dict[str, Any]
           ) -> dict[str, Any]:
    annotations, empty = [], 0
    for image, labels in delivery.by_image():
        h, w = int(image["height"]), int(image["width"])
        for label in labels:
            if label.needs_fixing and not label.box_only:
                continue  # goes to the review tool first
            if label.box_only:
                bw, bh = (float(v) for v in label.ann["bbox"][2:])
                annotations.append({**_annotation(label, [], int(round(bw * bh))), "box_only": True})
                continue
            mask = label.mask(h, w)
            if polygons:
                polys = mask_to_polygons(mask, tolerance)
                if not polys:
                    empty += 1
                    continue
                annotations.append(_annotation(label, polys, mask_area(mask)))
            else:
                annotations.append(_annotation(label, encode_rle(mask), mask_area(mask)))
    doc = {**{k: top[k] for k in _TOP_KEYS if k in top}, "images": delivery.images,
           "categories": delivery.categories, "annotations": annotations}
    path = folder / ANNOTATIONS_FILE
    atomic_write_text(path, json.dumps(doc))
    return {"file": str(path), "annotations": len(annotations), "empty_masks_left_out": empty}


def write_coco_rle(delivery: Delivery, folder: Path, opts: ConvertConfig, top: dict[str, Any]) -> dict[str, Any]:
    """COCO with compressed RLE masks (``counts`` a string), ``area`` from the mask."""
    return _write(delivery, folder, False, opts.polygon_tolerance, top)


def write_coco_polygon(delivery: Delivery, folder: Path, opts: ConvertConfig, top: dict[str, Any]
                       ) -> dict[str, Any]:
    """COCO with polygon masks simplified at ``convert.polygon_tolerance`` pixels, ``area`` from the mask."""
    return _write(delivery, folder, True, opts.polygon_tolerance, top)
