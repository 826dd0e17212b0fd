"""SIGTERM / SIGINT end a run promptly with 128 + signal, the JSON line and job.json saying ``interrupted``; train
saves a resumable checkpoint first and a re-run resumes from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mal_core.skill.jobs import read_job
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp: Path, data: dict[str, str], epochs: int) -> subprocess.Popen:
    spec = {**TINY_OVERRIDES, **data, "train.num_epochs": epochs, "train.checkpoint_interval": 1000}
    return subprocess.Popen([sys.executable, str(ROOT / "runners" / "train.py"), "--jobs-root", str(tmp / "jobs"),
                             "--job-id", "t1", "--automl-policy", "off", "--spec-overrides", json.dumps(spec)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "MAL_PROGRESS_BAR": "0"})


def test_sigint_and_sigterm_become_interrupted_with_128_plus_the_signal() -> None:
    from mal_core.utils.stop import Interrupted, catch_stop_signals, deferred_stop, restore_signals, stop_requested

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = catch_stop_signals()
        try:
            with pytest.raises(Interrupted) as err:
                os.kill(os.getpid(), signum)
                time.sleep(1)  # the handler runs at the next bytecode
            assert err.value.exit_code == 128 + signum
            assert signal.Signals(signum).name in err.value.to_dict()["message"]
        finally:
            restore_signals(previous)
    previous = catch_stop_signals()
    try:
        with deferred_stop():  # inside training: recorded only, the checkpoint callback raises it
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            assert stop_requested() == signal.SIGTERM
    finally:
        restore_signals(previous)
    assert stop_requested() is None and signal.getsignal(signal.SIGTERM) == previous[signal.SIGTERM]


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_during_training_saves_a_checkpoint_and_a_rerun_resumes(tmp_path: Path, signum: int) -> None:
    data = tiny_dataset(tmp_path / "data")
    proc = _train(tmp_path, data, 40)
    history = tmp_path / "jobs" / "t1" / "validation_history.jsonl"
    t0 = time.time()
    while not (history.is_file() and history.read_text().strip()):
        assert proc.poll() is None and time.time() - t0 < 180, "training ended or never validated"
        time.sleep(0.05)
    proc.send_signal(signum)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum
    res = last_json_line(stdout)
    assert res["status"] == "interrupted" and signal.Signals(signum).name in res["error"]["message"]
    rec = read_job(tmp_path / "jobs" / "t1")
    assert rec["status"] == "interrupted" and rec["error"]["code"] == "interrupted"
    # checkpoint_interval is 1000 epochs: the only numbered checkpoint is the one the stop wrote
    saved = sorted((tmp_path / "jobs" / "t1").glob("model_epoch_*.pth"))
    assert len(saved) == 1
    assert (tmp_path / "jobs" / "t1" / "mal_model_latest.pth").resolve() == saved[0].resolve()
    proc = _train(tmp_path, data, 2)
    stdout, _ = proc.communicate(timeout=300)
    res = last_json_line(stdout)
    assert proc.returncode == 0, res["error"]
    assert res["artifacts"]["resumed_from"] == str(saved[0].resolve())
    assert read_job(tmp_path / "jobs" / "t1")["previous_attempts"][-1]["status"] == "interrupted"


def test_a_stop_surfacing_outside_the_batch_hooks_still_saves_a_checkpoint(tmp_path: Path) -> None:
    """Lightning raises its own SIGTERM exit at an epoch boundary, where no batch hook of ours runs: the checkpoint
    callback's exception hook saves the resumable checkpoint there, and only when a stop was requested."""
    from types import SimpleNamespace

    from mal_core.engine.checkpoints import MALCheckpoint
    from mal_core.utils import stop

    saved: list[int] = []
    cb = MALCheckpoint(tmp_path, 1000)
    cb.save_now = lambda trainer: saved.append(trainer.global_step)  # type: ignore[method-assign]
    trainer = SimpleNamespace(sanity_checking=False, global_step=7)
    cb.on_exception(trainer, None, RuntimeError("not a stop"))
    assert saved == []
    previous = stop.catch_stop_signals()
    try:
        with stop.deferred_stop():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            cb.on_exception(trainer, None, SystemExit())
    finally:
        stop.restore_signals(previous)
    assert saved == [7]
