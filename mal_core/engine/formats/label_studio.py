"""``label_studio``: Label Studio tasks with predictions (pre-annotations), and the labelling config they fit.

``<folder>/tasks.json``: one task per image, images holding a label marked needs_fixing first. Each task has
``data.image`` = ``convert.image_url_prefix`` + the COCO ``file_name`` (``data.coco_image_id`` keeps the id) and one
prediction with ``model_version`` (``convert.model_version``, else the labelled file's name), ``score`` (the mean
label score of the image) and one result per label, with its own ``score``: ``brushlabels`` in Label Studio's RLE
(encoded by label-studio-sdk's own ``mask2rle``; ``convert.label_studio_masks: brush``) or ``polygonlabels``
(points in percent of the image, one per part, holes cut in by zero-width bridges; ``polygon``). A box-only label
is a ``rectanglelabels`` result; a needs_fixing label says so in its ``meta.text``.
``<folder>/label_config.xml``: the labelling config to create the project with. Predictions show up only when
their ``from_name``/``to_name`` match the project's config, which is why it is written here with the labels.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from mal_core.config.experiment import ConvertConfig
from mal_core.data.polygons import mask_to_polygons
from mal_core.engine.formats.delivery import Delivery, Label
from mal_core.errors import SpecError
from mal_core.utils.io import atomic_write_text

TASKS_FILE = "tasks.json"
CONFIG_FILE = "label_config.xml"
IMAGE_NAME = "image"
#: The control of each result type in the written labelling config (``from_name``).
CONTROLS = {"brushlabels": ("BrushLabels", "mask"), "polygonlabels": ("PolygonLabels", "polygon"),
            "rectanglelabels": ("RectangleLabels", "box")}


def _brush_rle(mask: np.ndarray) -> list[int]:
    try:
        from label_studio_sdk.converter.brush import mask2rle
    except ImportError:
        raise SpecError("label_studio brush masks need label-studio-sdk (pip install 'mal-skill[label-studio]'); "
                        "or set convert.label_studio_masks=polygon", field="convert.label_studio_masks") from None
    return [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)]


def _result(label: Label, kind: str, value: dict[str, Any], name: str, w: int, h: int) -> dict[str, Any]:
    out = {"id": f"ann{label.ann['id']}", "type": kind, "from_name": CONTROLS[kind][1], "to_name": IMAGE_NAME,
           "original_width": w, "original_height": h, "image_rotation": 0,
           "value": {**value, kind: [name]}}
    if label.score is not None:
        out["score"] = round(label.score, 4)
    if label.needs_fixing:
        out["meta"] = {"text": ["needs fixing (review decision)"]}
    return out


def _results(label: Label, name: str, w: int, h: int, masks: str, tolerance: float) -> list[dict[str, Any]]:
    if label.box_only:
        x, y, bw, bh = (float(v) for v in label.ann["bbox"])
        value = {"x": 100 * x / w, "y": 100 * y / h, "width": 100 * bw / w, "height": 100 * bh / h, "rotation": 0}
        return [_result(label, "rectanglelabels", value, name, w, h)]
    mask = label.mask(h, w)
    if masks == "brush":
        return [_result(label, "brushlabels", {"format": "rle", "rle": _brush_rle(mask)}, name, w, h)]
    out = []
    for n, poly in enumerate(mask_to_polygons(mask, tolerance)):
        pts = np.asarray(poly).reshape(-1, 2) * (100.0 / w, 100.0 / h)
        res = _result(label, "polygonlabels", {"points": pts.round(4).tolist(), "closed": True}, name, w, h)
        res["id"] = f"{res['id']}_{n}" if n else res["id"]
        out.append(res)
    return out


def label_config(names: list[str]) -> str:
    """The Label Studio labelling config for the results this writer makes (one control per result type)."""
    labels = "".join(f'<Label value="{html.escape(n, quote=True)}"/>' for n in names)
    controls = "".join(f'  <{tag} name="{ctl}" toName="{IMAGE_NAME}">{labels}</{tag}>\n'
                       for tag, ctl in CONTROLS.values())
    return f'<View>\n  <Image name="{IMAGE_NAME}" value="$image" zoom="true"/>\n{controls}</View>\n'


def write_label_studio(delivery: Delivery, folder: Path, opts: ConvertConfig, top: dict[str, Any]
                       ) -> dict[str, Any]:
    """Write ``tasks.json`` and ``label_config.xml`` (see the module docstring)."""
    names = delivery.category_names()
    version = opts.model_version or delivery.source.name
    tasks, results = [], 0
    for image in delivery.review_order():
        w, h = int(image["width"]), int(image["height"])
        labels = delivery.labels.get(image["id"], [])
        result = [r for lb in labels for r in _results(lb, names[lb.ann["category_id"]], w, h,
                                                      opts.label_studio_masks, opts.polygon_tolerance)]
        scores = [lb.score for lb in labels if lb.score is not None]
        task: dict[str, Any] = {"data": {IMAGE_NAME: f"{opts.image_url_prefix}{image['file_name']}",
                                         "coco_image_id": image["id"]}}
        if result:
            task["predictions"] = [{"model_version": version, "score": round(float(np.mean(scores)), 4)
                                    if scores else None, "result": result}]
        tasks.append(task)
        results += len(result)
    atomic_write_text(folder / TASKS_FILE, json.dumps(tasks))
    atomic_write_text(folder / CONFIG_FILE, label_config([names[c["id"]] for c in delivery.categories]))
    return {"file": str(folder / TASKS_FILE), "config": str(folder / CONFIG_FILE), "tasks": len(tasks),
            "results": results}
