"""train.time_budget_s: the epoch count is fitted to the budget after the warmup, the cosine decays over it, a
slower stretch ends the run early at an epoch boundary, and the last epoch is always validated and checkpointed.

The training runs are real (Lightning, the tiny model); only the clock the budget counts on is simulated: every
training batch "takes" a fixed number of seconds and every validation batch another, so the plan is exact."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from mal_core.checkpoint_files import list_checkpoints, read_history
from mal_core.config import parse_spec
from mal_core.engine import time_budget
from mal_core.engine.schedule import lr_at
from mal_core.engine.time_budget import plan_epochs, validations_in
from mal_core.skill.testing import TINY_OVERRIDES, tiny_dataset


def test_validations_count_every_interval_and_the_last_epoch() -> None:
    assert validations_in(0, 10, 5) == 2
    assert validations_in(0, 7, 5) == 2  # epoch 5, and the last (7)
    assert validations_in(5, 7, 5) == 1
    assert validations_in(2, 2, 5) == 0


def test_plan_is_the_most_epochs_that_fit() -> None:
    # 2 done; epochs of 10 s, validations of 4 s every 3 epochs (and the last): 5 epochs -> 3 more + val at 3, 5
    assert plan_epochs(done=2, max_epochs=50, seconds_left=38, epoch_s=10, val_s=4, interval=3) == 5
    assert plan_epochs(done=2, max_epochs=50, seconds_left=37.9, epoch_s=10, val_s=4, interval=3) == 4
    assert plan_epochs(done=2, max_epochs=4, seconds_left=1e9, epoch_s=10, val_s=4, interval=3) == 4
    assert plan_epochs(done=2, max_epochs=50, seconds_left=1, epoch_s=10, val_s=4, interval=3) == 3  # at least one


class FakeClock(pl.Callback):
    """The budget's clock: each training batch advances it by ``batch_s`` (``slow_batch_s`` from epoch
    ``slow_from``), each validation batch by ``val_batch_s``."""

    def __init__(self, batch_s: float, val_batch_s: float, slow_from: int | None = None,
                 slow_batch_s: float = 0.0) -> None:
        self.now = 1000.0
        self.batch_s, self.val_batch_s = batch_s, val_batch_s
        self.slow_from, self.slow_batch_s = slow_from, slow_batch_s
        self.lrs: list[float] = []

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        slow = self.slow_from is not None and trainer.current_epoch >= self.slow_from
        self.now += self.slow_batch_s if slow else self.batch_s
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            self.now += self.val_batch_s


def _train(tmp: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, **spec: Any) -> tuple[Any, Any]:
    from mal_core.engine.train import run_train

    monkeypatch.setattr(time_budget, "budget_clock", clock)
    data = tiny_dataset(tmp / "data")
    sets = {**TINY_OVERRIDES, **data, "results_dir": str(tmp / "run"), "train.checkpoint_interval": 1000, **spec}
    cfg, _ = parse_spec({}, [f"{k}={v}" for k, v in sets.items()])
    return run_train(cfg, callbacks=[clock]), cfg


def test_budget_plans_the_epochs_after_the_warmup_and_validates_the_last(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(batch_s=10.0, val_batch_s=3.0)
    result, cfg = _train(tmp_path, clock, monkeypatch, **{"train.num_epochs": 40, "train.warmup_epochs": 2,
                                                     "train.validation_interval": 4, "train.time_budget_s": 400})
    summary = result.artifacts["time_budget"]
    batches = math.ceil(result.details["num_train_instances"] / 8)
    epoch_s = 10.0 * batches
    # the plan after 2 warmup epochs: the time left (less the 3% reserve) over measured epochs and, with no
    # validation run yet, a validation estimated at (val boxes / train boxes) training epochs
    val_s = result.details["num_val_instances"] / result.details["num_train_instances"] * epoch_s
    want = plan_epochs(done=2, max_epochs=40, seconds_left=400 * 0.97 - 2 * epoch_s, epoch_s=epoch_s, val_s=val_s,
                       interval=4)
    assert 2 < want < 40
    assert summary["planned_epochs"] == want and summary["epochs_run"] == want and not summary["ended_early"]
    history = read_history(Path(result.results_dir))
    assert history[-1]["epoch"] == want - 1  # the last epoch validated, though not a multiple of the interval
    assert [h["epoch"] for h in history[:-1]] == [e - 1 for e in range(4, want, 4)]
    assert list_checkpoints(result.results_dir)[-1][0] == want - 1  # and checkpointed
    # the cosine decays over the planned epochs: the last step reaches the floor, half-way is half-way down
    peak = cfg.train.lr * cfg.train.batch_size  # one device
    floor = peak * cfg.train.min_lr_rate
    assert clock.lrs[-1] == pytest.approx(floor, rel=1e-9)
    mid = (2 + want) / 2
    step = round(mid * batches) - 1  # the step whose end is at epoch `mid`
    assert clock.lrs[step] == pytest.approx(lr_at(mid, peak=peak, floor=floor, warmup_epochs=2, num_epochs=want),
                                            rel=1e-6)
    # the plan travels with the checkpoints: re-running the finished job trains nothing more (not a new budget)
    from mal_core.engine.train import run_train

    again = run_train(cfg, callbacks=[FakeClock(batch_s=10.0, val_batch_s=3.0)])
    assert again.artifacts["resumed_from"] and again.artifacts["time_budget"]["epochs_run"] == 0
    assert read_history(Path(result.results_dir)) == history
    assert again.metrics["mIoU"] == history[-1]["mIoU"]


def test_a_slower_stretch_ends_early_with_a_warning_and_a_validated_checkpoint(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(batch_s=10.0, val_batch_s=1.0, slow_from=3, slow_batch_s=40.0)
    result, _ = _train(tmp_path, clock, monkeypatch, **{"train.num_epochs": 40, "train.warmup_epochs": 1,
                                                     "train.validation_interval": 100, "train.time_budget_s": 500})
    summary = result.artifacts["time_budget"]
    assert summary["ended_early"] and summary["epochs_run"] < summary["planned_epochs"]
    assert any("ended at epoch" in w for w in result.warnings)
    history = read_history(Path(result.results_dir))
    assert [h["epoch"] for h in history] == [summary["epochs_run"] - 1]  # only the final epoch validated
    assert list_checkpoints(result.results_dir)[-1][0] == summary["epochs_run"] - 1


def test_ddp_processes_follow_rank_zeros_plan(tmp_path: Path) -> None:
    """Two CPU processes (gloo) on a real clock: each measures its own epochs, but they must stop at the same
    epoch (a process that planned one epoch more would wait forever in its next collective)."""
    import json
    import os
    import subprocess
    import sys

    from mal_core.skill.testing import last_json_line

    root = Path(__file__).resolve().parents[1]
    spec = {**TINY_OVERRIDES, **tiny_dataset(tmp_path / "data"), "train.num_gpus": 2, "train.num_epochs": 500,
            "train.warmup_epochs": 1, "train.validation_interval": 1000, "train.checkpoint_interval": 1000,
            "train.time_budget_s": 45}
    proc = subprocess.run([sys.executable, str(root / "runners" / "train.py"), "--jobs-root", str(tmp_path / "jobs"),
                           "--job-id", "ddp", "--automl-policy", "off", "--spec-overrides", json.dumps(spec)],
                          cwd=root, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "MAL_PROGRESS_BAR": "0"})
    result = last_json_line(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    history = read_history(tmp_path / "jobs" / "ddp")
    assert len(history) == 1 and 1 < history[0]["epoch"] + 1 < 500  # fitted, stopped together, final validated
    assert list_checkpoints(tmp_path / "jobs" / "ddp")[-1][0] == history[0]["epoch"]
    assert result["status"] == "success"
