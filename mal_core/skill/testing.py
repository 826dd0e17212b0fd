"""Helpers for tests and examples: a tiny synthetic dataset and spec overrides that train in seconds on CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Overrides for a model that trains in a few seconds on CPU.
TINY_OVERRIDES: dict[str, Any] = {
    "model.arch": "vit-mae-nano/8",
    "dataset.crop_size": 64,
    "model.mask_head_hidden_channel": 16,
    "model.mask_head_out_channel": 16,
    "train.batch_size": 8,
    "train.num_epochs": 2,
    "train.warmup_epochs": 0,
    "train.crf_num_iter": 3,
    "train.use_amp": False,
    "train.checkpoint_interval": 1,
    "train.validation_interval": 1,
    "dataset.num_workers_per_gpu": 0,
    "dataset.min_obj_size": 16,
}


def tiny_dataset(out_dir: str | Path, seed: int = 0) -> dict[str, str]:
    """Generate ~6 train / 3 val images of size 96; returns the four data-source values."""
    from mal_core.data.synthetic import generate_synthetic_dataset

    ds = generate_synthetic_dataset(out_dir, num_train_images=6, num_val_images=3, image_size=96, seed=seed)
    return {"dataset.train_img_dir": str(ds.train_img_dir), "dataset.train_ann_path": str(ds.train_ann_path),
            "dataset.val_img_dir": str(ds.val_img_dir), "dataset.val_ann_path": str(ds.val_ann_path)}


def minimal_coco(folder: str | Path, *, masks: bool = True, image_size: int = 96) -> dict[str, str]:
    """A valid one-image COCO file (one 64x64 box, with a polygon mask when ``masks``) and its image folder, written
    in milliseconds; returns ``{"ann": ..., "img": ...}``. For tests that stop before any model runs."""
    from PIL import Image

    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (image_size, image_size), (90, 120, 150)).save(root / "images" / "img0.png")
    ann: dict[str, Any] = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [16, 16, 64, 64], "area": 4096.0,
                           "iscrowd": 0}
    if masks:
        ann["segmentation"] = [[16, 16, 80, 16, 80, 80, 16, 80]]
    coco = {"images": [{"id": 1, "file_name": "img0.png", "height": image_size, "width": image_size}],
            "annotations": [ann], "categories": [{"id": 1, "name": "shape"}]}
    (root / "ann.json").write_text(json.dumps(coco))
    return {"ann": str(root / "ann.json"), "img": str(root / "images")}


def last_json_line(stdout: str) -> dict[str, Any]:
    """The JSON object on the last non-empty stdout line."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise AssertionError("no stdout")
    return json.loads(lines[-1])
