"""The MAL LightningModule: manual-optimisation training with MIL + CRF losses and an EMA teacher, and mIoU
validation through the labelling core (:mod:`mal_core.engine.labelling`)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric

from mal_core.checkpoint_files import CHECKPOINT_FORMAT
from mal_core.config.experiment import ExperimentConfig
from mal_core.config.loader import spec_to_dict
from mal_core.engine.diagnostics import collapse_warnings
from mal_core.engine.labelling import Labeller, TestTimeSettings, gt_scores
from mal_core.engine.optim import build_optimizer
from mal_core.engine.schedule import lr_at, scaled_lr
from mal_core.engine.seeding import seed_rank_streams
from mal_core.engine.val_metric import MaskMIoU
from mal_core.losses.objective import mal_objective
from mal_core.model.build import build_network
from mal_core.utils.io import append_text, drop_history_from_epoch, json_safe

log = logging.getLogger(__name__)


class MALModule(pl.LightningModule):
    """Student/teacher MAL model with its training, validation and prediction steps.

    ``test_mode`` selects the network used at validation/prediction: dict with ``use_teacher``, ``use_mixed``,
    ``use_flip``. ``history_path`` (optional) receives one JSON line per validation. ``network`` is the
    student/teacher pair to run (default: :func:`~mal_core.model.build.build_network` of ``cfg``); evaluate and
    inference pass an onnxruntime stand-in for an exported model.
    """

    def __init__(self, cfg: ExperimentConfig, categories: list[dict[str, Any]], *, test_mode: dict | None = None,
                 history_path: str | Path | None = None, network: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.categories = [dict(c) for c in categories]
        self.model = network if network is not None else build_network(cfg)
        self.automatic_optimization = False
        self.val_metric = MaskMIoU(len(self.categories))
        self.val_box_metric = MaskMIoU(len(self.categories))  # box fill on the same instances (collapse check)
        self.val_fill = MeanMetric()  # fraction of its box each predicted mask covers
        self.test_mode = dict(test_mode or {})
        self.history_path = Path(history_path) if history_path else None
        self.last_metrics: dict[str, float] = {}
        self.warnings: list[str] = []
        self.peak_lr = cfg.train.lr
        self.min_lr = 0.0
        self.schedule_epochs = cfg.train.num_epochs  # the cosine's length; a time budget sets it after the warmup
        self._skipped_batches = 0

    # ----- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        world = self.trainer.world_size if self._trainer is not None else 1
        self.peak_lr = scaled_lr(t.lr, world, t.batch_size)
        self.min_lr = self.peak_lr * t.min_lr_rate
        start = self.peak_lr if t.warmup_epochs == 0 else 0.0
        return build_optimizer(self.model.student, t, start)

    def _set_lr(self, epoch_float: float) -> float:
        t = self.cfg.train
        lr = lr_at(epoch_float, peak=self.peak_lr, floor=self.min_lr, warmup_epochs=t.warmup_epochs,
                   num_epochs=self.schedule_epochs, num_wave=t.num_wave)
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def _iters_per_epoch(self) -> int:
        n = self.trainer.num_training_batches
        return max(int(n), 1) if math.isfinite(n) else 1

    def on_train_start(self) -> None:
        seed_rank_streams(self.cfg.train.seed, self.trainer.global_rank, self.trainer.world_size)
        if self.history_path is not None and self.trainer.is_global_zero:
            drop_history_from_epoch(self.history_path, self.current_epoch)
        # first step of a fresh (or resumed) run: the schedule's value one step into the current epoch
        self._set_lr(self.current_epoch + 1.0 / self._iters_per_epoch())

    def on_train_epoch_start(self) -> None:
        self.model.train()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        t = self.cfg.train
        opt = self.optimizers()
        areas = batch["box_area"]
        logits = self.model.student(batch["image"], areas)
        with torch.no_grad():
            t_logits = self.model.teacher(batch["timage"], areas)
        out = mal_objective(t, logits, t_logits, batch["image"], batch["timage"], batch["box_mask"],
                            self.current_epoch, batch_idx, batch.get("gt_mask"), batch.get("has_mask"))
        loss = out.loss
        if not torch.isfinite(loss):
            self._skipped_batches += 1
            log.warning("non-finite loss at epoch %d step %d; batch skipped", self.current_epoch, batch_idx)
            if self._skipped_batches > 20:
                raise FloatingPointError("training diverged: more than 20 batches with a non-finite loss; "
                                         "lower train.lr or raise train.warmup_epochs")
            return loss.detach()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        lr = self._set_lr(self.current_epoch + (batch_idx + 1) / self._iters_per_epoch())
        self.model.ema_update()
        bs = logits.shape[0]
        for name, value in out.terms.items():
            self.log(f"train/loss_{name}", value.detach(), batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, sync_dist=True,
                 batch_size=bs)
        self.log("lr", lr, prog_bar=False, batch_size=bs)
        return loss.detach()

    # ----- validation ---------------------------------------------------------------------------------------
    @property
    def labeller(self) -> Labeller:
        """The labelling core on this module's network with its test-time settings (built per call: settings
        may change between validations, e.g. when evaluate sets ``test_mode``)."""
        return Labeller(self.model, TestTimeSettings.from_config(self.cfg, self.test_mode))

    def on_validation_epoch_start(self) -> None:
        self.val_metric.reset()
        self.val_box_metric.reset()
        self.val_fill.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "gt_region" not in batch:
            return
        ious, box_ious, fills = zip(*gt_scores(self.labeller.masks(batch), batch), strict=True)
        self.val_metric.update(torch.tensor(ious), batch["category_index"], batch["box_area"])
        self.val_box_metric.update(torch.tensor(box_ious), batch["category_index"], batch["box_area"])
        self.val_fill.update(torch.tensor(fills))

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metric.compute()
        self.val_metric.reset()
        if self.val_box_metric.update_count:
            metrics["mIoU_box_fill"] = self.val_box_metric.compute()["mIoU"]
            metrics["mask_box_fill"] = float(self.val_fill.compute())
        self.last_metrics = {k: float(v) for k, v in metrics.items()}
        self.warnings = collapse_warnings(self.last_metrics) if not self.trainer.sanity_checking else []
        for warning in self.warnings:
            log.warning("epoch %d: %s", self.current_epoch, warning)
        for key, value in metrics.items():
            if key != "num_instances":
                self.log(f"val/{key}", value, prog_bar=key == "mIoU", sync_dist=False)  # already reduced
        if self.history_path is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            record = {"epoch": int(self.current_epoch), "step": int(self.global_step), **self.last_metrics}
            append_text(self.history_path, json.dumps(json_safe(record)) + "\n")  # never through a planted link

    # ----- checkpoints --------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mal"] = {
            "format_version": CHECKPOINT_FORMAT,
            "spec": spec_to_dict(self.cfg),
            "categories": self.categories,
            "metrics": dict(self.last_metrics),
        }
