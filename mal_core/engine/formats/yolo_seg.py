"""``yolo_seg``: an Ultralytics YOLO segmentation dataset.

Layout of ``<folder>``: ``images/<file_name>`` (links to, or copies of, the images: Ultralytics finds an image's
label file by replacing ``images`` with ``labels`` in its path, so the images must sit beside the labels),
``labels/<file_name stem>.txt`` (one line per label: the class index then the polygon's x y pairs normalised to
[0, 1] by the image width and height; an image without labels gets an empty file) and ``dataset.yaml`` (``path``,
``train``/``val`` = ``images``, ``names`` = class index -> category name, in the order of the COCO categories).

Each mask is one polygon (:func:`mal_core.data.polygons.mask_to_single_polygon` with ``centres=True``: parts joined
and holes cut in by zero-width bridges, vertices through the border pixels' centres, which Ultralytics'
``polygon2mask`` turns back into the same pixels). Empty masks and box-only labels have no polygon and are left out
(counted); so are labels marked needs_fixing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from mal_core.config.experiment import ConvertConfig
from mal_core.data.polygons import mask_to_single_polygon
from mal_core.engine.formats.delivery import Delivery, image_relpath
from mal_core.errors import SpecError
from mal_core.utils.io import atomic_write_text
from mal_core.utils.safe_paths import check_guarded

DATASET_FILE = "dataset.yaml"


def write_yolo_seg(delivery: Delivery, folder: Path, opts: ConvertConfig, top: dict[str, Any]) -> dict[str, Any]:
    """Write the dataset (see the module docstring); returns its files and counts."""
    if delivery.img_dir is None:
        raise SpecError("yolo_seg needs the images: set convert.img_dir (or pass --parent-job-id of the inference "
                        "job)", field="convert.img_dir")
    index = {c["id"]: i for i, c in enumerate(delivery.categories)}
    names = delivery.category_names()
    lines_written = left_out = 0
    for image, labels in delivery.by_image():
        rel = image_relpath(image, str(delivery.source))
        h, w = int(image["height"]), int(image["width"])
        lines = []
        for label in labels:
            if label.box_only or label.needs_fixing:
                left_out += 1
                continue
            poly = mask_to_single_polygon(label.mask(h, w), opts.polygon_tolerance, centres=True)
            if not poly:
                left_out += 1
                continue
            coords = " ".join(f"{v / (w if k % 2 == 0 else h):.6f}" for k, v in enumerate(poly))
            lines.append(f"{index[label.ann['category_id']]} {coords}")
        label_path = folder / "labels" / rel.with_suffix(".txt")
        check_guarded(label_path.parent)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(label_path, "".join(f"{line}\n" for line in lines))
        lines_written += len(lines)
        _place_image(delivery.img_dir / rel, folder / "images" / rel, opts.yolo_images)
    dataset = {"path": str(folder.resolve()), "train": "images", "val": "images",
               "names": {index[c["id"]]: names[c["id"]] for c in delivery.categories}}
    atomic_write_text(folder / DATASET_FILE, yaml.safe_dump(dataset, sort_keys=False))
    return {"file": str(folder / DATASET_FILE), "annotations": lines_written, "left_out": left_out,
            "images": len(delivery.images)}


def _place_image(src: Path, dst: Path, how: str) -> None:
    """Link (absolute target) or copy one image into the dataset; the source must exist."""
    if not src.is_file():
        raise SpecError(f"image {src} of the labelled file does not exist; expected it under convert.img_dir",
                        field="convert.img_dir")
    check_guarded(dst.parent)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if how == "copy":
        shutil.copyfile(src, dst, follow_symlinks=True)
    else:
        os.symlink(src.resolve(), dst)
