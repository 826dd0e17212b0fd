"""The Lightning callback that writes checkpoint files (``model_epoch_<EEE>_step_<SSSSS>.pth`` +
``mal_model_latest.pth``). Finding and loading them is :mod:`mal_core.engine.checkpoint_io` (no Lightning import)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

from mal_core.checkpoint_files import LATEST_NAME, list_checkpoints
from mal_core.engine.checkpoint_io import find_resume_checkpoint, load_mal_checkpoint
from mal_core.utils.stop import raise_if_stopped, stop_requested

log = logging.getLogger(__name__)
__all__ = ["LATEST_NAME", "MALCheckpoint", "find_resume_checkpoint", "list_checkpoints", "load_mal_checkpoint"]


class MALCheckpoint(ModelCheckpoint):
    """Every-N-epochs (or steps) ``.pth`` checkpoints, all kept, with ``mal_model_latest.pth`` linking the newest.

    The final epoch always writes one too, so a run shorter than the interval (TAO accepts ``num_epochs: 1`` with
    ``checkpoint_interval: 10``) still ends with a checkpoint of its last weights. After SIGTERM/SIGINT (see
    :mod:`mal_core.utils.stop`; the run defers the stop to here) the next batch end saves a checkpoint of the current
    step, which a re-run resumes from, and raises :class:`~mal_core.utils.stop.Interrupted`.
    """

    FILE_EXTENSION = ".pth"
    CHECKPOINT_NAME_LAST = LATEST_NAME

    def __init__(self, dirpath: str | Path, interval: int, unit: str = "epoch") -> None:
        every = {"every_n_epochs": interval} if unit == "epoch" else {"every_n_train_steps": interval}
        super().__init__(dirpath=str(dirpath), filename="model_epoch_{epoch:03d}_step_{step:05d}",
                         auto_insert_metric_name=False, save_top_k=-1, save_last="link",
                         enable_version_counter=False, save_on_train_epoch_end=True, **every)

    def save_now(self, trainer: Any) -> None:
        """A numbered checkpoint of the current step and the latest link, unless this step is saved already."""
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        """The step-interval checkpoint; after SIGTERM/SIGINT, a resumable checkpoint and then the stop."""
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        self._stop_if_requested(trainer)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        """After SIGTERM/SIGINT during a validation: a resumable checkpoint of the last step, then the stop."""
        self._stop_if_requested(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """A stop that surfaced elsewhere (Lightning's own SIGTERM exit at an epoch boundary): save the resumable
        checkpoint here (nothing is written twice for one step)."""
        if stop_requested() is not None and not trainer.sanity_checking:
            self.save_now(trainer)

    def _stop_if_requested(self, trainer: Any) -> None:
        if stop_requested() is None or trainer.sanity_checking:
            return
        self.save_now(trainer)
        log.warning("stop requested: saved a resumable checkpoint at epoch %d step %d in %s",
                    trainer.current_epoch, trainer.global_step, self.dirpath)
        raise_if_stopped()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """The interval checkpoint, then the final epoch's one when the interval did not write it."""
        super().on_train_epoch_end(trainer, pl_module)
        final = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if final:
            self.save_now(trainer)
