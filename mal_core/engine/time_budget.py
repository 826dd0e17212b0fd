"""Training bounded by wall-clock time (``train.time_budget_s``): the epoch count is fitted to the budget from the
speed measured in the run itself, so that the recipe gives its quality in the same time on any machine.

The plan is made once the warmup epochs are done: the learning rate's linear warmup does not depend on the run's
length, so measuring during it costs nothing; from then on the cosine decays over the planned count. Validation
time is measured when a validation has run, and estimated until then as one training epoch per training set's
worth of validation boxes (the labelling pipeline costs about a training step per box). Each epoch start checks
the plan against the clock: an epoch that would leave too little time (the whole budget, the reserve included) for
the next one and the final validation becomes the last (a shared CPU, a slower stretch of data), with a warning.
The last epoch always validates (and :class:`~mal_core.engine.checkpoints.MALCheckpoint` always saves it). Under
DDP, rank 0's plan and its early-end decisions are broadcast, so every process runs the same epochs. The plan is
saved with each checkpoint: a resumed run continues it (the budget then counts from the resumed run's start), and
re-running a finished job trains nothing more.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)

#: Share of the budget kept back for what follows the last epoch (its checkpoint, the result).
RESERVE_FRACTION = 0.03


def budget_clock() -> float:
    """The clock a time budget counts on (monotonic seconds)."""
    return time.monotonic()


def validations_in(first: int, last: int, interval: int) -> int:
    """How many validations epochs ``first+1 .. last`` (1-based counts) run: every ``interval``-th, plus the last
    epoch when it is not one of them."""
    if last <= first:
        return 0
    count = last // interval - first // interval
    return count + (0 if last % interval == 0 else 1)


def plan_epochs(*, done: int, max_epochs: int, seconds_left: float, epoch_s: float, val_s: float,
                interval: int) -> int:
    """The most epochs (counting the ``done`` ones, at least ``done + 1``, at most ``max_epochs``) whose remaining
    training epochs of ``epoch_s`` and validations of ``val_s`` fit in ``seconds_left``."""
    best = min(done + 1, max_epochs)
    for total in range(done + 1, max_epochs + 1):
        cost = (total - done) * epoch_s + validations_in(done, total, interval) * val_s
        if cost > seconds_left:
            break
        best = total
    return best


@dataclass
class BudgetState:
    """What the callback has measured (seconds) and decided."""

    epoch_seconds: list[float] = field(default_factory=list)
    val_seconds: list[float] = field(default_factory=list)
    planned: int | None = None  # the epochs the run is to end at (saved in checkpoints)
    first_plan: int | None = None  # the plan made after the warmup (reported)
    ended_early: bool = False
    warnings: list[str] = field(default_factory=list)


class TimeBudget(pl.Callback):
    """Fits the run's epoch count to ``budget_s`` seconds counted from ``started_at`` (:func:`budget_clock`).

    ``set_schedule_epochs`` receives the planned count (the LightningModule's cosine length). ``val_per_epoch`` is
    the validation estimate, in training epochs, until one has been measured.
    """

    def __init__(self, budget_s: float, started_at: float, *, warmup_epochs: float, validation_interval: int,
                 set_schedule_epochs: Callable[[int], None], val_per_epoch: float) -> None:
        self.budget_s = float(budget_s)
        self.started_at = started_at
        self.plan_after = max(1, math.ceil(warmup_epochs))
        self.interval = max(1, int(validation_interval))
        self.set_schedule_epochs = set_schedule_epochs
        self.val_per_epoch = float(val_per_epoch)
        self.state = BudgetState()
        self._epoch_start = 0.0
        self._val_start: float | None = None
        self._val_this_epoch = 0.0
        self._max_epochs = 0

    # ----- measuring ----------------------------------------------------------------------------------------
    def seconds_left(self, reserve: bool = True) -> float:
        """Budget left now, less (``reserve``) the share kept back for the end of the run."""
        kept = self.budget_s * RESERVE_FRACTION if reserve else 0.0
        return self.budget_s - kept - (budget_clock() - self.started_at)

    def epoch_estimate(self) -> float:
        """Seconds of one training epoch: the mean of the epochs after the first (which pays start-up costs), or
        the first alone."""
        seen = self.state.epoch_seconds
        return sum(seen[1:]) / len(seen[1:]) if len(seen) > 1 else seen[0]

    def val_estimate(self) -> float:
        """Seconds of one validation: measured, or ``val_per_epoch`` training epochs until one has run."""
        seen = self.state.val_seconds
        return sum(seen) / len(seen) if seen else self.val_per_epoch * self.epoch_estimate()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._max_epochs = int(trainer.max_epochs or 1)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the plan, so that a resumed run keeps its epoch count and cosine."""
        return {"planned": self.state.planned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resumed run's plan (None when the run stopped before planning)."""
        self.state.planned = state_dict.get("planned")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state.planned is not None:  # resumed after the plan: the same epochs and cosine (a finished run
            self.set_schedule_epochs(self.state.planned)  # trains nothing more)
            trainer.fit_loop.max_epochs = self.state.planned
            log.info("train.time_budget_s: resuming the plan of %d epochs", self.state.planned)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_start = budget_clock()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_start is not None:
            seconds = budget_clock() - self._val_start
            self.state.val_seconds.append(seconds)
            self._val_this_epoch += seconds
            self._val_start = None

    # ----- deciding -----------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = budget_clock()
        self._val_this_epoch = 0.0
        epoch = trainer.current_epoch
        if self.state.planned is not None and epoch + 1 < trainer.max_epochs and self.state.epoch_seconds:
            this_val = self.val_estimate() if (epoch + 1) % self.interval == 0 else 0.0
            need = 2 * self.epoch_estimate() + this_val + self.val_estimate()  # this epoch, the next, final val
            left = self.seconds_left(reserve=False)  # the plan kept the reserve: it absorbs small drifts
            if trainer.strategy.broadcast(left < need, src=0):  # every process stops at the same epoch (DDP)
                message = (f"train.time_budget_s: ended at epoch {epoch + 1} of the planned {self.state.planned} "
                           f"(epochs ran slower than measured: {left:.1f} s left, this epoch and the next with the "
                           f"final validation need {need:.1f} s)")
                log.warning("%s", message)
                self.state.warnings.append(message)
                self.state.ended_early = True
                self.state.planned = epoch + 1  # a re-run of the job continues from here, not to the first plan
                trainer.fit_loop.max_epochs = epoch + 1
        if epoch + 1 >= trainer.max_epochs and (epoch + 1) % trainer.check_val_every_n_epoch != 0:
            trainer.check_val_every_n_epoch = 1  # the last epoch always validates

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state.epoch_seconds.append(budget_clock() - self._epoch_start - self._val_this_epoch)
        done = trainer.current_epoch + 1
        if self.state.planned is not None or done < self.plan_after:
            return
        planned = plan_epochs(done=done, max_epochs=self._max_epochs, seconds_left=self.seconds_left(),
                              epoch_s=self.epoch_estimate(), val_s=self.val_estimate(), interval=self.interval)
        planned = int(trainer.strategy.broadcast(planned, src=0))  # rank 0's plan for every process (DDP)
        self.state.planned = self.state.first_plan = planned
        self.set_schedule_epochs(planned)
        trainer.fit_loop.max_epochs = planned
        log.info("train.time_budget_s %.0f s: %d epochs planned (of at most %d; %.1f s per epoch, %.1f s per "
                 "validation, %.0f s left)", self.budget_s, planned, self._max_epochs, self.epoch_estimate(),
                 self.val_estimate(), self.seconds_left())

    def summary(self) -> dict[str, Any]:
        """What the job reports: the budget, the plan, the epochs run and whether the run ended before its plan."""
        s = self.state
        return {"time_budget_s": self.budget_s, "planned_epochs": s.first_plan, "epochs_run": len(s.epoch_seconds),
                "max_epochs": self._max_epochs, "ended_early": s.ended_early,
                "epoch_seconds": round(self.epoch_estimate(), 2) if s.epoch_seconds else None,
                "validation_seconds": round(self.val_estimate(), 2) if s.epoch_seconds else None}
