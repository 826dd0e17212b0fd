"""Which boxes an action reads from its annotation files, without torch: the DataModule and the runner's preflight
(which checks every annotation file before a job, a trial or a worker starts) use the same rules."""

from __future__ import annotations

from mal_core.config.experiment import ExperimentConfig
from mal_core.data.coco import CocoDataset, load_coco

#: Minimum box side (pixels, exclusive) for training; evaluation and labelling keep every valid box.
TRAIN_MIN_SIDE = 2.0


def load_train_coco(cfg: ExperimentConfig) -> CocoDataset:
    """The training boxes after the size filters (masks never read)."""
    d = cfg.dataset
    return load_coco(d.train_ann_path, d.train_img_dir, min_area=d.min_obj_size, max_area=d.max_obj_size,
                     min_side=TRAIN_MIN_SIDE)


def load_eval_coco(ann_path: str, img_dir: str, load_mask: bool) -> CocoDataset:
    """Every valid box of a validation / labelling file; masks required when scoring."""
    return load_coco(ann_path, img_dir, require_masks=load_mask)
