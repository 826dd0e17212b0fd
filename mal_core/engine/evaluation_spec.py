"""What evaluate labels, as an inference spec (torch-free: the runner computes an evaluate job's resume key from it
before the job opens, without importing the engine)."""

from __future__ import annotations

import copy

from mal_core.config.experiment import ExperimentConfig
from mal_core.engine.shards import resume_key


def labelling_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with its inference section set to label the validation set as evaluate asks: the checkpoint, the
    test-time network choice, batch size, shard size and devices of ``evaluate``, GT masks loaded, no review
    page, in this process."""
    out = copy.deepcopy(cfg)
    e, inf = cfg.evaluate, out.inference
    inf.checkpoint, inf.ann_path, inf.img_dir = e.checkpoint, cfg.dataset.val_ann_path, cfg.dataset.val_img_dir
    inf.use_flip_test, inf.use_teacher_test, inf.use_mixed_model_test = (e.use_flip_test, e.use_teacher_test,
                                                                         e.use_mixed_model_test)
    inf.batch_size, inf.num_gpus, inf.gpu_ids, inf.num_nodes = e.batch_size, e.num_gpus, list(e.gpu_ids), e.num_nodes
    inf.load_mask, inf.review_page, inf.save_overlays, inf.output_uri = True, False, False, ""
    inf.num_workers, inf.shard_size = 0, e.shard_size
    return out


def evaluate_resume_key(cfg: ExperimentConfig) -> str:
    """The resume key of an evaluate job (the inference key of its :func:`labelling_config`)."""
    return resume_key(labelling_config(cfg))
