"""``train_masks``: the training file of the review loop (label -> review -> retrain on the corrections -> relabel).

``<folder>/annotations.json`` is COCO for ``train``: every non-crowd label of the labelled file keeps its box, and
only the masks a person vouched for stay masks: an **accepted** label keeps its predicted mask, a label with a
**corrected** mask (``convert.corrections_path``: a COCO file, e.g. exported from the review tool, matched by
annotation id) takes that mask, and every other label (rejected, needs fixing without a correction, unreviewed,
below the score thresholds) is a box without ``segmentation``. ``mask_source`` says which (``accepted``,
``corrected``). Training with ``train.use_gt_masks`` then adds the mask loss on exactly those instances.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mal_core.config.experiment import ConvertConfig
from mal_core.data.coco import decode_segmentation, encode_rle, segmentation_problem
from mal_core.data.decisions import ACCEPTED, REJECTED
from mal_core.engine.formats.delivery import Delivery
from mal_core.errors import DataError
from mal_core.utils.io import atomic_write_text

ANNOTATIONS_FILE = "annotations.json"
_BOX_KEYS = ("id", "image_id", "category_id", "bbox", "iscrowd", "score")


def read_corrections(path: str, sizes: dict[Any, tuple[int, int]]) -> dict[int, dict[str, Any]]:
    """Annotation id -> corrected segmentation (compressed RLE) from a COCO file; :class:`DataError` naming the
    file and annotation when a mask is not a valid mask of its image."""
    try:
        doc = json.loads(Path(path).read_text())
        anns = doc["annotations"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: cannot read corrected masks as COCO JSON with annotations ({exc})",
                        field="convert.corrections_path") from None
    out = {}
    for ann in anns:
        if not isinstance(ann, dict) or "id" not in ann or not ann.get("segmentation"):
            continue
        size = sizes.get(ann.get("image_id"))
        if size is None:
            raise DataError(f"{path}: annotation {ann.get('id')!r} names image {ann.get('image_id')!r}, not an image "
                            "of the labelled file", field="convert.corrections_path")
        why = segmentation_problem(ann["segmentation"], *size)
        if why:
            raise DataError(f"{path}: annotation {ann['id']!r}: segmentation {why}", field="convert.corrections_path")
        out[int(ann["id"])] = encode_rle(decode_segmentation(ann["segmentation"], *size))
    return out


def write_train_masks(delivery: Delivery, folder: Path, opts: ConvertConfig, top: dict[str, Any]) -> dict[str, Any]:
    """Write the training file (see the module docstring); returns its path and counts."""
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in delivery.images}
    corrections = read_corrections(opts.corrections_path, sizes) if opts.corrections_path else {}
    decisions = delivery.decisions
    annotations, counts = [], {"accepted": 0, "corrected": 0, "boxes_only": 0}
    ids = set()
    for ann in top["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        ids.add(ann["id"])
        out = {k: ann[k] for k in _BOX_KEYS if k in ann}
        decision = decisions.get(ann["id"])
        if ann["id"] in corrections and decision != REJECTED:
            out.update(segmentation=corrections[ann["id"]], mask_source="corrected")
        elif decision == ACCEPTED and ann.get("segmentation"):
            out.update(segmentation=ann["segmentation"], mask_source="accepted")
        if "segmentation" in out:
            h, w = sizes[ann["image_id"]]
            out["area"] = int(decode_segmentation(out["segmentation"], h, w).sum())
            counts[out["mask_source"]] += 1
        else:
            counts["boxes_only"] += 1
        annotations.append(out)
    doc = {"images": delivery.images, "categories": delivery.categories, "annotations": annotations}
    path = folder / ANNOTATIONS_FILE
    atomic_write_text(path, json.dumps(doc))
    return {"file": str(path), "annotations": len(annotations), **counts,
            "corrections_unmatched": len(set(corrections) - ids)}
