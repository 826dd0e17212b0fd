"""The evaluate action: score a checkpoint's masks on the validation set and write ``metrics.json``.

It labels the validation boxes on the same path as inference (:func:`~mal_core.engine.inference.label_dataset`:
the labelling core, shard by shard, resumable, metrics summed per shard), so a re-run after a kill scores only the
unfinished shards and memory does not grow with the validation set. It fits the score calibration on the validation
labels (:mod:`mal_core.engine.calibration`) and writes it as ``calibration.json``: copied beside the checkpoint,
inference without GT gives every label an ``expected_iou``. ``evaluate.comp_clustering`` adds the feature
clustering score (a pass of the backbone over the GT crops).
"""

from __future__ import annotations

import time
from pathlib import Path

from mal_core.config.actions import ACTIONS
from mal_core.config.experiment import ExperimentConfig
from mal_core.engine.calibration import CALIBRATION_FILE, job_calibration
from mal_core.engine.evaluation_spec import labelling_config
from mal_core.engine.inference import ProgressReport, calibration_settings, label_dataset
from mal_core.engine.result import EngineResult
from mal_core.errors import DataError
from mal_core.utils.io import atomic_write_json

METRICS_FILE = "metrics.json"


def run_evaluate(cfg: ExperimentConfig, explicit_keys: set[str] | None = None,
                 report: ProgressReport | None = None) -> EngineResult:
    """Evaluate ``evaluate.checkpoint`` on ``dataset.val_*``; returns and writes mIoU (+ size buckets, instance mean,
    the box-fill baseline and the mean box fill of the masks)."""
    t0 = time.time()
    e = cfg.evaluate
    if not cfg.dataset.load_mask:
        raise DataError("evaluate needs ground-truth masks: set dataset.load_mask to true", field="dataset.load_mask")
    results_dir = Path(ACTIONS["evaluate"].results_dir(cfg))
    labelling = labelling_config(cfg)
    done = label_dataset(labelling, explicit_keys or set(), results_dir, report, checkpoint_field="evaluate.checkpoint")
    metrics: dict[str, float] = done.summary.validation_metrics()
    calibration, label_summary = job_calibration(done.summary.stats, done.base.categories, e.checkpoint,
                                                  results_dir, calibration_settings(labelling))
    if e.comp_clustering:
        metrics["cluster_score"] = _cluster_score(cfg, explicit_keys or set(), done.base.categories)
    atomic_write_json(results_dir / METRICS_FILE, {"checkpoint": str(e.checkpoint), **metrics})
    return EngineResult(results_dir=str(results_dir), metrics=metrics,
                        artifacts={"metrics_json": str(results_dir / METRICS_FILE), "checkpoint": str(e.checkpoint),
                                   "shards": str(done.folder), "labelling": done.totals,
                                   "label_summary": label_summary,
                                   **({"calibration": str(results_dir / CALIBRATION_FILE)} if calibration else {})},
                        details={"num_instances": done.summary.num_labelled, "seconds": round(time.time() - t0, 2)})


def _cluster_score(cfg: ExperimentConfig, explicit_keys: set[str], categories: list) -> float:
    """The feature clustering score of the student's backbone on the validation crops' GT masks."""
    from mal_core.data.datamodule import MALDataModule, load_eval_coco
    from mal_core.engine.clustering import clustering_score
    from mal_core.engine.restore import restore_module

    e = cfg.evaluate
    coco = load_eval_coco(cfg.dataset.val_ann_path, cfg.dataset.val_img_dir, load_mask=True)
    module, merged = restore_module(cfg, e.checkpoint, "evaluate.checkpoint", explicit_keys, categories, {})
    dm = MALDataModule(merged, val=coco, load_mask=True, batch_size=e.batch_size, gt_crop=True)
    return clustering_score(module, dm.val_dataloader())
