"""Which boxes (and, for pretraining, which image files) an action reads, without torch: the DataModule and the
runner's preflight (which checks every input before a job, a trial or a worker starts) use the same rules."""

from __future__ import annotations

from pathlib import Path

from mal_core.config.experiment import ExperimentConfig
from mal_core.data.coco import CocoDataset, load_coco
from mal_core.errors import DataError

#: Minimum box side (pixels, exclusive) for training; evaluation and labelling keep every valid box.
TRAIN_MIN_SIDE = 2.0


def load_train_coco(cfg: ExperimentConfig) -> CocoDataset:
    """The training boxes after the size filters; their masks are checked when training learns from them
    (``train.use_gt_masks``)."""
    d = cfg.dataset
    return load_coco(d.train_ann_path, d.train_img_dir, min_area=d.min_obj_size, max_area=d.max_obj_size,
                     min_side=TRAIN_MIN_SIDE, check_masks=cfg.train.use_gt_masks)


def load_eval_coco(ann_path: str, img_dir: str, load_mask: bool) -> CocoDataset:
    """Every valid box of a validation / labelling file; masks required when scoring."""
    return load_coco(ann_path, img_dir, require_masks=load_mask)


#: File endings read as images when a folder of images is given (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(img_dir: str | Path, field: str = "pretrain.img_dir") -> list[Path]:
    """Every image file under ``img_dir`` (recursively, sorted); :class:`DataError` naming ``field`` when the folder
    is missing or holds none."""
    root = Path(img_dir)
    if not root.is_dir():
        raise DataError(f"{field} {str(root)!r} is not a folder", field=field)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{field} {str(root)!r} holds no image files (looked for {', '.join(IMAGE_SUFFIXES)})",
                        field=field)
    return files


def load_pretrain_boxes(cfg: ExperimentConfig) -> CocoDataset | None:
    """The boxes of ``pretrain.ann_path`` (with the training size filters), or None when no file is given."""
    p, d = cfg.pretrain, cfg.dataset
    if not p.ann_path:
        return None
    return load_coco(p.ann_path, p.img_dir, min_area=d.min_obj_size, max_area=d.max_obj_size, min_side=TRAIN_MIN_SIDE)
