"""The evaluate action: score a checkpoint's masks on the validation set and write ``metrics.json``."""

from __future__ import annotations

import time
from pathlib import Path

from mal_core.config.actions import ACTIONS
from mal_core.config.experiment import ExperimentConfig
from mal_core.data.datamodule import MALDataModule, load_eval_coco
from mal_core.engine.restore import restore_module
from mal_core.engine.result import EngineResult
from mal_core.engine.trainer import build_trainer, device_settings
from mal_core.errors import DataError
from mal_core.utils.io import atomic_write_json

METRICS_FILE = "metrics.json"


def run_evaluate(cfg: ExperimentConfig, explicit_keys: set[str] | None = None) -> EngineResult:
    """Evaluate ``evaluate.checkpoint`` on ``dataset.val_*``; returns and writes mIoU (+ size buckets)."""
    t0 = time.time()
    e = cfg.evaluate
    if not cfg.dataset.load_mask:
        raise DataError("evaluate needs ground-truth masks: set dataset.load_mask to true", field="dataset.load_mask")
    results_dir = Path(ACTIONS["evaluate"].results_dir(cfg))
    coco = load_eval_coco(cfg.dataset.val_ann_path, cfg.dataset.val_img_dir, load_mask=True)
    test_mode = {"use_teacher": e.use_teacher_test, "use_mixed": e.use_mixed_model_test, "use_flip": e.use_flip_test}
    module, merged = restore_module(cfg, e.checkpoint, "evaluate.checkpoint", explicit_keys or set(),
                                    coco.categories, test_mode)
    devices = device_settings(e.num_gpus, e.gpu_ids, e.num_nodes, "evaluate")
    results_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(results_dir, devices, use_amp=merged.postprocess.use_amp, loggers=False)
    dm = MALDataModule(merged, val=coco, load_mask=True, batch_size=e.batch_size, gt_crop=e.comp_clustering)
    trainer.validate(module, datamodule=dm, verbose=False)
    metrics = dict(module.last_metrics)
    if e.comp_clustering:
        from mal_core.engine.clustering import clustering_score

        metrics["cluster_score"] = clustering_score(module, dm.val_dataloader())
    if trainer.is_global_zero:
        atomic_write_json(results_dir / METRICS_FILE, {"checkpoint": str(e.checkpoint), **metrics})
    return EngineResult(results_dir=str(results_dir), metrics=metrics,
                        artifacts={"metrics_json": str(results_dir / METRICS_FILE), "checkpoint": str(e.checkpoint)},
                        details={"num_instances": len(coco.instances), "seconds": round(time.time() - t0, 2)})
