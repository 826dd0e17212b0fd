"""``cvat``: "CVAT for images 1.1" XML, CVAT's own annotation format, with masks.

Why this and not COCO: CVAT's COCO import turns RLE into masks only for crowd annotations and polygons lose pixels at
the edges, while its own XML holds a mask exactly (``<mask rle left top width height>``: run lengths over the
mask's tight box, row by row, starting with a background run) and carries per-shape attributes, which is where the
label ``score`` and a reviewer's ``needs_fixing`` go (both declared on every label in ``<meta>``). Images holding a
label marked needs_fixing come first. A box-only label is a ``<box>``; an empty mask has no pixels to draw and is
left out (counted). Datumaro, CVAT's dataset framework, reads the file back in the tests.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from mal_core.config.experiment import ConvertConfig
from mal_core.engine.formats.delivery import Delivery, Label
from mal_core.utils.io import atomic_write

ANNOTATIONS_FILE = "annotations.xml"
_ATTRIBUTES = (("score", "number", "0", "0;1;0.0001"), ("needs_fixing", "checkbox", "false", "false"))


def mask_rle(mask: np.ndarray) -> tuple[str, tuple[int, int, int, int]] | None:
    """CVAT's mask RLE of a (H, W) bool mask and its tight box (left, top, width, height); None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    left, top = int(xs.min()), int(ys.min())
    crop = mask[top:int(ys.max()) + 1, left:int(xs.max()) + 1].reshape(-1).astype(np.int8)
    changes = np.flatnonzero(np.diff(crop)) + 1
    bounds = np.concatenate([[0], changes, [crop.size]])
    runs = np.diff(bounds).tolist()
    if crop[0]:
        runs.insert(0, 0)
    box = (left, top, int(xs.max()) - left + 1, int(ys.max()) - top + 1)
    return ",".join(str(r) for r in runs), box


def _meta(root: ET.Element, delivery: Delivery) -> None:
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = delivery.source.stem
    ET.SubElement(task, "size").text = str(len(delivery.images))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name in delivery.category_names().values():
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "any"
        attributes = ET.SubElement(label, "attributes")
        for attr, kind, default, values in _ATTRIBUTES:
            a = ET.SubElement(attributes, "attribute")
            for tag, text in (("name", attr), ("mutable", "False"), ("input_type", kind),
                              ("default_value", default), ("values", values)):
                ET.SubElement(a, tag).text = text


def _shape(parent: ET.Element, label: Label, name: str, h: int, w: int) -> bool:
    common = {"label": name, "source": "auto", "occluded": "0", "z_order": "0"}
    if label.box_only:
        x, y, bw, bh = (float(v) for v in label.ann["bbox"])
        el = ET.SubElement(parent, "box", {**common, "xtl": f"{x:.2f}", "ytl": f"{y:.2f}",
                                           "xbr": f"{x + bw:.2f}", "ybr": f"{y + bh:.2f}"})
    else:
        found = mask_rle(label.mask(h, w))
        if found is None:
            return False
        rle, (left, top, mw, mh) = found
        el = ET.SubElement(parent, "mask", {**common, "rle": rle, "left": str(left), "top": str(top),
                                            "width": str(mw), "height": str(mh)})
    ET.SubElement(el, "attribute", {"name": "score"}).text = f"{label.score or 0.0:.4f}"
    ET.SubElement(el, "attribute", {"name": "needs_fixing"}).text = "true" if label.needs_fixing else "false"
    return True


def write_cvat(delivery: Delivery, folder: Path, opts: ConvertConfig, top: dict[str, Any]) -> dict[str, Any]:
    """Write ``annotations.xml`` (see the module docstring)."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    _meta(root, delivery)
    names = delivery.category_names()
    shapes = empty = 0
    for n, image in enumerate(delivery.review_order()):
        w, h = int(image["width"]), int(image["height"])
        el = ET.SubElement(root, "image", {"id": str(n), "name": str(image["file_name"]), "width": str(w),
                                           "height": str(h)})
        for label in delivery.labels.get(image["id"], []):
            if _shape(el, label, names[label.ann["category_id"]], h, w):
                shapes += 1
            else:
                empty += 1
    ET.indent(root)
    path = folder / ANNOTATIONS_FILE
    atomic_write(path, lambda tmp: ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True))
    return {"file": str(path), "shapes": shapes, "empty_masks_left_out": empty, "images": len(delivery.images)}
