"""Building the Lightning Trainer: devices, strategy, precision, loggers, callbacks."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from mal_core.errors import SpecError

log = logging.getLogger(__name__)

# Lightning warnings that describe our design, not a problem: the EMA teacher stays in eval mode on purpose, and a
# job folder holds its spec and logs before the first checkpoint is written into it.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
# training without a validation set hands Lightning an empty list of validation loaders, on purpose
warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
# Lightning 2.x flattens loaders with torch's deprecated LeafSpec on torch 2.13 (nothing we call)
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


class _DropProductTips(logging.Filter):
    """Drops Lightning's "💡 Tip" lines (suggestions to install other products) from every job's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropProductTips())

DDP_STRATEGY = "ddp_find_unused_parameters_true"


def device_settings(num_gpus: int, gpu_ids: list[int], num_nodes: int, section: str) -> dict[str, Any]:
    """Accelerator, devices, strategy and node count. Without CUDA, ``num_gpus`` CPU processes run (gloo)."""
    if torch.cuda.is_available():
        ids = list(gpu_ids)
        if len(ids) != num_gpus:
            if ids == [0] and num_gpus > 1:
                ids = list(range(num_gpus))
            else:
                raise SpecError(f"{section}.gpu_ids {gpu_ids} must list {section}.num_gpus={num_gpus} devices",
                                field=f"{section}.gpu_ids")
        available = torch.cuda.device_count()
        if max(ids) >= available:
            raise SpecError(f"{section}.gpu_ids {ids} asks for a device this machine lacks ({available} visible)",
                            field=f"{section}.gpu_ids")
        accelerator, devices = "gpu", ids
    else:
        accelerator, devices = "cpu", num_gpus
    many = num_gpus > 1 or num_nodes > 1
    return {"accelerator": accelerator, "devices": devices, "num_nodes": num_nodes,
            "strategy": DDP_STRATEGY if many else "auto"}


def precision_for(accelerator: str, use_amp: bool) -> str:
    """bf16 autocast on GPUs that support it (fp16 otherwise) when ``use_amp``; fp32 on CPU."""
    if accelerator != "gpu" or not use_amp:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def build_trainer(results_dir: str | Path, devices: dict[str, Any], *, use_amp: bool, callbacks: list | None = None,
                  max_epochs: int = 1, check_val_every_n_epoch: int = 1, deterministic: bool | str = False,
                  benchmark: bool = False, loggers: bool = True, progress: bool | None = None,
                  steps_per_epoch: int | None = None) -> pl.Trainer:
    """A Trainer writing TensorBoard and CSV logs under ``results_dir/lightning_logs`` every 5 steps (every step of
    an epoch shorter than that, given ``steps_per_epoch``)."""
    results_dir = Path(results_dir)
    logger: Any = False
    if loggers:
        logger = [TensorBoardLogger(str(results_dir), name="lightning_logs"),
                  CSVLogger(str(results_dir), name="lightning_logs")]
    if progress is None:
        progress = os.environ.get("MAL_PROGRESS_BAR", "1") != "0"
    return pl.Trainer(
        default_root_dir=str(results_dir),
        precision=precision_for(devices["accelerator"], use_amp),
        max_epochs=max_epochs,
        check_val_every_n_epoch=check_val_every_n_epoch,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=callbacks or [],
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks or []),
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(5, steps_per_epoch or 5)),
        deterministic=deterministic,
        benchmark=benchmark,
        **devices,
    )
