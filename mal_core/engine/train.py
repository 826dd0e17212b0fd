"""The train action: parse data, build the model, initialise or resume, fit, and report checkpoints + metrics."""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from mal_core.checkpoint_files import HISTORY_FILE, best_checkpoint, read_history
from mal_core.config.actions import ACTIONS
from mal_core.config.checks import clamp_for_action
from mal_core.config.experiment import ExperimentConfig
from mal_core.config.loader import dump_spec
from mal_core.data.datamodule import MALDataModule, load_eval_coco, load_train_coco, uses_masks
from mal_core.engine import time_budget
from mal_core.engine.checkpoints import (
    LATEST_NAME,
    MALCheckpoint,
    find_resume_checkpoint,
    list_checkpoints,
    load_mal_checkpoint,
)
from mal_core.engine.module import MALModule
from mal_core.engine.result import EngineResult
from mal_core.engine.trainer import build_trainer, device_settings
from mal_core.errors import CheckpointError, DataError
from mal_core.model.build import build_network
from mal_core.model.weights import load_pretrained
from mal_core.utils.stop import deferred_stop

log = logging.getLogger(__name__)


def _resume_path(cfg: ExperimentConfig, results_dir: Path) -> Path | None:
    explicit = cfg.train.resume_training_checkpoint_path
    path = Path(explicit) if explicit else find_resume_checkpoint(results_dir)
    if path is None:
        return None
    ckpt = load_mal_checkpoint(path, field="train.resume_training_checkpoint_path")
    old_arch = ckpt["mal"]["spec"]["model"]["arch"]
    if old_arch != cfg.model.arch:
        raise CheckpointError(f"cannot resume {path}: it was trained with model.arch={old_arch!r}, the spec says "
                              f"{cfg.model.arch!r}", field="train.resume_training_checkpoint_path",
                              hint="use a fresh results_dir or the same model.arch")
    return path


def run_train(cfg: ExperimentConfig, explicit_keys: set[str] | None = None,
              callbacks: list[pl.Callback] | None = None) -> EngineResult:
    """Train MAL per ``cfg``; returns the checkpoints, validation metrics, warnings and timing (``explicit_keys``
    is unused: training takes every setting from ``cfg``).

    A warmup not below the epoch count is clamped (see :func:`clamp_for_action`); the final epoch always writes a
    checkpoint, whatever ``train.checkpoint_interval``.
    """
    t0, started = time.time(), time_budget.budget_clock()
    cfg = copy.deepcopy(cfg)
    warnings = clamp_for_action(cfg, "train")
    for warning in warnings:
        log.warning("%s", warning)
    results_dir = Path(ACTIONS["train"].results_dir(cfg))
    train_coco = load_train_coco(cfg)
    if not train_coco.instances and train_coco.num_crowd and not train_coco.num_filtered:
        raise DataError(f"every annotation of {cfg.dataset.train_ann_path} is a crowd region (iscrowd); crowd "
                        "regions are not trained on", field="dataset.train_ann_path")
    if not train_coco.instances:
        raise DataError(f"no training box survives the size filters in {cfg.dataset.train_ann_path} "
                        f"(dataset.min_obj_size={cfg.dataset.min_obj_size})", field="dataset.min_obj_size")
    with_masks = sum(i.has_segmentation for i in train_coco.instances) if uses_masks(cfg, train_coco) else 0
    if with_masks:
        log.info("mixed supervision: %d of %d training instances have a mask (mask loss weight %g)", with_masks,
                 len(train_coco.instances), cfg.train.loss_mask_weight)
    val_coco = None
    if cfg.dataset.val_ann_path:
        val_coco = load_eval_coco(cfg.dataset.val_ann_path, cfg.dataset.val_img_dir, cfg.dataset.load_mask)
    t = cfg.train
    if t.seed >= 0:
        pl.seed_everything(t.seed, workers=True, verbose=False)
    results_dir.mkdir(parents=True, exist_ok=True)
    resume = _resume_path(cfg, results_dir)
    devices = device_settings(t.num_gpus, t.gpu_ids, t.num_nodes, "train")
    module = MALModule(cfg, train_coco.categories, history_path=results_dir / HISTORY_FILE, network=build_network(cfg))
    init_report = None
    if resume is None and t.pretrained_model_path:
        init_report = load_pretrained(module.model.student, t.pretrained_model_path)
        module.model.sync_teacher()
    elif resume is not None:
        log.info("resuming from %s (pretrained_model_path ignored)", resume)
    dump_spec(cfg, results_dir / "train_spec.yaml")
    ckpt_cb = MALCheckpoint(results_dir, t.checkpoint_interval, t.checkpoint_interval_unit)
    budget = None
    if t.time_budget_s > 0:
        n_val = len(val_coco.instances) if val_coco else 0
        budget = time_budget.TimeBudget(
            t.time_budget_s, started, warmup_epochs=t.warmup_epochs, validation_interval=t.validation_interval,
            set_schedule_epochs=lambda n: setattr(module, "schedule_epochs", n),
            val_per_epoch=n_val / max(len(train_coco.instances), 1))
    own_callbacks = [ckpt_cb, budget] if budget else [ckpt_cb]
    trainer = build_trainer(
        results_dir, devices, use_amp=t.use_amp, callbacks=[*own_callbacks, *(callbacks or [])],
        max_epochs=t.num_epochs,
        check_val_every_n_epoch=t.validation_interval, deterministic="warn" if t.cudnn.deterministic else False,
        benchmark=t.cudnn.benchmark, steps_per_epoch=math.ceil(len(train_coco.instances) / t.batch_size),
    )
    dm = MALDataModule(cfg, train=train_coco, val=val_coco, load_mask=cfg.dataset.load_mask)
    with deferred_stop():  # SIGTERM/SIGINT: the checkpoint callback saves a resumable checkpoint, then stops
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
    ckpts = [str(p) for _, _, p in list_checkpoints(results_dir)]
    latest = results_dir / f"{LATEST_NAME}.pth"
    history = results_dir / HISTORY_FILE
    artifacts = {"checkpoints": ckpts,
                 "mask_supervision": {"instances_with_masks": with_masks, "instances": len(train_coco.instances)},
                 "latest_checkpoint": str(latest) if latest.exists() else (ckpts[-1] if ckpts else None),
                 "best_checkpoint": best_checkpoint(results_dir),
                 "validation_history": str(history) if history.exists() else None,
                 "resumed_from": str(resume) if resume else None,
                 "time_budget": budget.summary() if budget else None}
    return EngineResult(
        results_dir=str(results_dir), artifacts=artifacts,
        metrics=_reported_metrics(module.last_metrics, artifacts, results_dir),
        # spec clamps, a time budget that ended the run early, then the collapse checks of the last validation
        warnings=warnings + (budget.state.warnings if budget else []) + module.warnings,
        details={"num_train_instances": len(train_coco.instances),
                 "num_val_instances": len(val_coco.instances) if val_coco else 0,
                 "pretrained": init_report.summary() if init_report else None,
                 "seconds": round(time.time() - t0, 2)},
    )


def _reported_metrics(metrics: dict[str, float], artifacts: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """The run's validation metrics; a resumed run that validated nothing (the job had already reached
    ``train.num_epochs``) reports the last recorded validation instead of ``{}`` and says so in
    ``artifacts["metrics_from"]``."""
    if metrics or not artifacts["resumed_from"]:
        return dict(metrics)
    history = read_history(results_dir)
    if not history:
        return {}
    last = history[-1]
    artifacts["metrics_from"] = (f"{HISTORY_FILE}, epoch {last.get('epoch')}: nothing was left to train "
                                 "(raise train.num_epochs to train further)")
    return {k: v for k, v in last.items() if k not in ("epoch", "step")}
