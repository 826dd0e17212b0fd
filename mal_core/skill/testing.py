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


def last_json_line(stdout: str) -> dict[str, Any]:
    """The JSON object on the last non-empty stdout line."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise AssertionError("no stdout")
    return json.loads(lines[-1])
