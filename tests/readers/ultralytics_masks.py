"""Read a yolo_seg dataset with Ultralytics' own YOLO dataset loader; save each label's mask (its polygon2mask).

Run by tests/test_convert.py in the readers environment: ``python ultralytics_masks.py DATASET_YAML OUT_NPZ``.
Keys of the npz: ``<image stem>__<label index>__<class>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import polygon2mask


def main(dataset_yaml: str, out: str) -> None:
    """Load the dataset's labels as Ultralytics' training does and rasterize each polygon as it does."""
    cfg = yaml.safe_load(Path(dataset_yaml).read_text())
    data = {"names": cfg["names"], "nc": len(cfg["names"]), "channels": 3}
    dataset = YOLODataset(img_path=str(Path(cfg["path"]) / cfg["train"]), data=data, task="segment",
                          augment=False, imgsz=64, cache=False)
    masks = {}
    for label in dataset.labels:
        h, w = label["shape"]
        stem = Path(label["im_file"]).stem
        for n, (cls, seg) in enumerate(zip(label["cls"].reshape(-1), label["segments"], strict=True)):
            pixels = (seg * np.array([w, h])).reshape(-1)
            masks[f"{stem}__{n}__{int(cls)}"] = polygon2mask((h, w), [pixels], color=1, downsample_ratio=1)
    np.savez(out, **masks)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
