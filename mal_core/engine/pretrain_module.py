"""LightningModule of MAE pretraining: receives its ViT-MAE network; a step is the network's own masked-patch loss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from transformers import ViTMAEForPreTraining

from mal_core.config.experiment import PretrainConfig
from mal_core.engine.optim import build_mae_optimizer
from mal_core.engine.schedule import lr_at
from mal_core.engine.seeding import seed_rank_streams
from mal_core.utils.io import append_text, drop_history_from_epoch

#: Record stored in every pretrain checkpoint (``checkpoint["mal_pretrain"]``): what the weights are.
PRETRAIN_RECORD = "mal_pretrain"

class MAEPretrainModule(pl.LightningModule):
    """Masked-autoencoder pretraining of ``network`` with linear warmup + cosine decay of the learning rate (per
    step) and the epoch's mean loss appended to ``history_path`` (one JSON line per epoch)."""

    def __init__(self, network: ViTMAEForPreTraining, cfg: PretrainConfig, *, arch: str, crop_size: int,
                 history_path: str | Path | None = None) -> None:
        super().__init__()
        self.mae = network
        self.cfg = cfg
        self.arch, self.crop_size = arch, int(crop_size)
        self.history_path = Path(history_path) if history_path else None
        self.peak_lr = cfg.lr
        self.last_loss: float | None = None
        self._epoch_losses: list[float] = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        world = self.trainer.world_size if self._trainer is not None else 1
        self.peak_lr = self.cfg.lr * world  # linear scaling with the number of devices
        start = self.peak_lr if self.cfg.warmup_epochs == 0 else 0.0
        return build_mae_optimizer(self.mae, self.cfg, start)

    def _steps_per_epoch(self) -> int:
        n = self.trainer.num_training_batches
        return max(int(n), 1) if math.isfinite(n) else 1

    def _set_lr(self, epoch_float: float) -> float:
        c = self.cfg
        lr = lr_at(epoch_float, peak=self.peak_lr, floor=0.0, warmup_epochs=c.warmup_epochs, num_epochs=c.num_epochs)
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = lr
        return lr

    def on_train_start(self) -> None:
        seed_rank_streams(self.cfg.seed, self.trainer.global_rank, self.trainer.world_size)
        if self.history_path is not None and self.trainer.is_global_zero:
            drop_history_from_epoch(self.history_path, self.current_epoch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        lr = self._set_lr(self.current_epoch + batch_idx / self._steps_per_epoch())
        images = batch["image"]
        loss = self.mae(pixel_values=images).loss
        self._epoch_losses.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        self.log("lr", lr, on_step=True, on_epoch=False, batch_size=images.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        if not self._epoch_losses:
            return
        self.last_loss = sum(self._epoch_losses) / len(self._epoch_losses)
        self._epoch_losses = []
        if self.history_path is not None and self.trainer.is_global_zero:
            append_text(self.history_path, json.dumps({"epoch": self.current_epoch, "step": self.global_step,
                                                       "loss": round(self.last_loss, 6)}) + "\n")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[PRETRAIN_RECORD] = {"arch": self.arch, "crop_size": self.crop_size,
                                       "mae_config": self.mae.config.to_dict(), "loss": self.last_loss}
