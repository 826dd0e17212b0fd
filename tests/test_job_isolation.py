"""Issue 12, "nothing lost, nothing overwritten": job folders are the unit of isolation.

Label dump paths and results folders stay inside the job folder, one run at a time holds a job (``job.lock``), a
re-run moves the earlier attempt's outputs to ``previous_attempts/<n>/`` (also after kill -9), a fresh job never
resumes someone else's checkpoints, and re-running a finished train job keeps its metrics.

Most tests replace the engine by a fake that writes the same files in milliseconds; one test trains for real.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import mal_core.skill.runner as runner
from mal_core.config.resolved import ResolvedSpec
from mal_core.engine.result import EngineResult
from mal_core.errors import CheckpointError
from mal_core.skill.jobs import LOCK_FILE, Job, read_job
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, minimal_coco, tiny_dataset
from mal_core.utils.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]

# ----- helpers -----------------------------------------------------------------------------------------------------


def _results(tree: dict[str, Any], action: str) -> Path:
    return Path(tree[action].get("results_dir") or tree["results_dir"])


def fake_engine(miou: float = 0.5, fail: BaseException | None = None):
    """A stand-in for :func:`runner.run_direct` writing what the engine writes (metrics.json, the label JSON, a
    checkpoint); raises ``fail`` after writing a partial output when given."""

    def run(action: str, spec: ResolvedSpec, report: Any = None) -> EngineResult:
        tree = spec.tree
        out = _results(tree, action)
        out.mkdir(parents=True, exist_ok=True)
        (out / "lightning_logs").mkdir(exist_ok=True)
        if fail is not None:
            raise fail
        if action == "evaluate":
            path = atomic_write_json(out / "metrics.json", {"mIoU": miou})
            return EngineResult(str(out), {"metrics_json": str(path), "checkpoint": tree["evaluate"]["checkpoint"]},
                                {"mIoU": miou})
        if action == "inference":
            path = atomic_write_json(out / tree["inference"]["label_dump_path"], {"labelled_with": miou})
            return EngineResult(str(out), {"label_dump": str(path), "checkpoint": tree["inference"]["checkpoint"]})
        ckpt = out / "model_epoch_000_step_00001.pth"
        ckpt.write_bytes(b"weights")
        return EngineResult(str(out), {"checkpoints": [str(ckpt)]}, {"mIoU": miou})

    return run


def _run(capsys: pytest.CaptureFixture[str], action: str, argv: list[str]) -> tuple[int, dict]:
    rc = runner.main(action, argv)
    return rc, last_json_line(capsys.readouterr().out)


def _inputs(tmp_path: Path) -> dict[str, str]:
    """Real (tiny) input files for every action, plus a checkpoint file the fake engine never reads."""
    data = minimal_coco(tmp_path / "inputs")
    ckpt = tmp_path / "inputs" / "model.pth"
    ckpt.write_bytes(b"not read by the fake engine")
    return {**data, "ckpt": str(ckpt)}


def _argv(action: str, d: dict[str, str], jobs: Path, job_id: str, *extra: str) -> list[str]:
    sets = {"train": [f"dataset.train_ann_path={d['ann']}", f"dataset.train_img_dir={d['img']}"],
            "evaluate": [f"dataset.val_ann_path={d['ann']}", f"dataset.val_img_dir={d['img']}",
                         f"evaluate.checkpoint={d['ckpt']}"],
            "inference": [f"inference.ann_path={d['ann']}", f"inference.img_dir={d['img']}",
                          f"inference.checkpoint={d['ckpt']}"]}[action]
    argv = ["--jobs-root", str(jobs), "--job-id", job_id, *[x for s in sets for x in ("--set", s)], *extra]
    return [*argv, "--automl-policy", "off"] if action == "train" else argv


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----- 1. inference.label_dump_path stays inside the results folder ------------------------------------------------


@pytest.mark.parametrize(("value", "expect"), [
    ("../../x.json", "outside the results folder"),
    ("../sibling/x.json", "outside the results folder"),
    ("sub/../../x.json", "outside the results folder"),
    ("{outside}/labels.json", "outside the results folder"),
    ("{ann}", "outside the results folder"),
    (".", "outside the results folder"),
    ("link_out/x.json", "outside the results folder"),
    ("job.json", "job's own 'job.json'"),
    ("spec.yaml", "job's own 'spec.yaml'"),
    ("job.lock", "job's own 'job.lock'"),
    ("logs/inference.json", "job's own 'logs'"),
    ("previous_attempts/1/inference.json", "job's own 'previous_attempts'"),
    ("overlays/x.json", "overlays folder"),
    ("existing_dir", "existing folder"),
])
def test_label_dump_path_outside_or_onto_job_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch, value: str,
                                                              expect: str) -> None:
    monkeypatch.setattr(runner, "run_direct", fake_engine())
    d = _inputs(tmp_path)
    jobs = tmp_path / "jobs"
    job = jobs / "i1"
    (job / "existing_dir").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", job / "link_out")
    before_inputs = _snapshot(tmp_path / "inputs")
    before_job = _snapshot(job)
    value = value.format(outside=tmp_path / "outside", ann=d["ann"])
    rc, out = _run(capsys, "inference", _argv("inference", d, jobs, "i1", "--set",
                                              f"inference.label_dump_path={value}"))
    assert rc == 2 and out["status"] == "failure", out
    assert out["error"]["field"] == "inference.label_dump_path" and expect in out["error"]["message"], out["error"]
    assert value in out["error"]["message"]
    # nothing ran: inputs, the job folder and the folder outside are exactly as before
    assert _snapshot(tmp_path / "inputs") == before_inputs and _snapshot(job) == before_job
    assert not list((tmp_path / "outside").iterdir()) and not (tmp_path / "x.json").exists()
    assert not (jobs / "sibling").exists() and read_job(job) is None


@pytest.mark.parametrize(("extra", "where"), [
    ([], "inference.json"),
    (["--set", "inference.label_dump_path=labels/val_mal.json"], "labels/val_mal.json"),
    (["--set", "inference.results_dir=out"], "out/inference.json"),
    (["--set", "inference.results_dir=out", "--set", "inference.label_dump_path=mal.json"], "out/mal.json"),
])
def test_label_dump_path_inside_the_job_is_written_there(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch, extra: list[str],
                                                         where: str) -> None:
    monkeypatch.setattr(runner, "run_direct", fake_engine())
    d = _inputs(tmp_path)
    before = _snapshot(tmp_path / "inputs")
    rc, out = _run(capsys, "inference", _argv("inference", d, tmp_path / "jobs", "i1", *extra))
    assert rc == 0, out["error"]
    assert out["artifacts"]["label_dump"] == str(tmp_path / "jobs" / "i1" / where)
    assert (tmp_path / "jobs" / "i1" / where).is_file() and _snapshot(tmp_path / "inputs") == before


def test_an_input_inside_the_job_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # relabelling the job's own earlier output in place would lose it (a re-run moves the job's files aside)
    monkeypatch.setattr(runner, "run_direct", fake_engine())
    d = _inputs(tmp_path)
    jobs = tmp_path / "jobs"
    assert _run(capsys, "inference", _argv("inference", d, jobs, "i1"))[0] == 0
    own = jobs / "i1" / "inference.json"
    before = _snapshot(jobs / "i1")
    rc, out = _run(capsys, "inference", _argv("inference", d, jobs, "i1", "--set", f"inference.ann_path={own}"))
    assert rc == 2 and out["error"]["field"] == "inference.ann_path" and "inside this job's own folder" in \
        out["error"]["message"]
    assert _snapshot(jobs / "i1") == before  # the refused run touched nothing


# ----- 4 / 10. results folders: inside the job, never a shared recipe folder, never an existing file --------------


@pytest.mark.parametrize(("action", "key", "value", "expect"), [
    ("train", "results_dir", "{file}", "is an existing file"),
    ("evaluate", "results_dir", "{file}", "is an existing file"),
    ("inference", "results_dir", "{file}", "is an existing file"),
    ("train", "results_dir", "{outside}", "outside the job folder"),
    ("train", "results_dir", "../escape", "outside the job folder"),
    ("train", "train.results_dir", "../../x", "outside the job folder"),
    ("train", "train.results_dir", "{outside}", "outside the job folder"),
    ("evaluate", "evaluate.results_dir", "{outside}", "outside the job folder"),
    ("inference", "inference.results_dir", "../i2", "outside the job folder"),
    ("train", "train.results_dir", "spec.yaml", "is an existing file"),
])
def test_bad_results_dir_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch, action: str, key: str, value: str,
                                           expect: str) -> None:
    monkeypatch.setattr(runner, "run_direct", fake_engine())
    d = _inputs(tmp_path)
    jobs = tmp_path / "jobs"
    (jobs / "j1").mkdir(parents=True)
    (jobs / "j1" / "spec.yaml").write_text("a file where a folder is asked for\n")
    (tmp_path / "plain_file").write_text("keep me\n")
    value = value.format(file=tmp_path / "plain_file", outside=tmp_path / "outside")
    rc, out = _run(capsys, action, _argv(action, d, jobs, "j1", "--set", f"{key}={value}"))
    assert rc == 2 and out["error"]["field"] == key and expect in out["error"]["message"], out["error"]
    assert (tmp_path / "plain_file").read_text() == "keep me\n" and not (tmp_path / "outside").exists()
    assert sorted(p.name for p in (jobs / "j1").iterdir()) == ["spec.yaml"]  # no job record, no lock left
    assert not (jobs / "escape").exists() and not (jobs / "i2").exists() and not (tmp_path / "x").exists()


def test_job_folder_or_jobs_root_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "run_direct", fake_engine())
    d = _inputs(tmp_path)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "t1").write_text("not a folder\n")
    rc, out = _run(capsys, "train", _argv("train", d, jobs, "t1"))
    assert rc == 2 and out["error"]["field"] == "results_dir" and "existing file" in out["error"]["message"]
    assert str(jobs / "t1") in out["error"]["message"] and (jobs / "t1").read_text() == "not a folder\n"
    (tmp_path / "root_file").write_text("x")
    rc, out = _run(capsys, "train", _argv("train", d, tmp_path / "root_file", "t1"))
    assert rc == 2 and out["error"]["field"] == "jobs_root" and (tmp_path / "root_file").read_text() == "x"


def test_results_dir_given_on_the_command_line_goes_inside_the_job(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "run_direct", fake_engine())
    monkeypatch.chdir(tmp_path)
    d = _inputs(tmp_path)
    rc, out = _run(capsys, "evaluate", _argv("evaluate", d, tmp_path / "jobs", "e1", "--set", "results_dir=run_a"))
    assert rc == 0, out["error"]
    assert out["artifacts"]["metrics_json"] == str(tmp_path / "jobs" / "e1" / "run_a" / "metrics.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "jobs"]  # nothing in the cwd-like tmp root


def test_demo_out_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mal_core.cli import main as cli_main

    target = tmp_path / "demo_output"
    target.write_text("not a folder\n")
    assert cli_main(["demo", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "existing file" in err and str(target) in err and "Traceback" not in err
    assert target.read_text() == "not a folder\n" and sorted(p.name for p in tmp_path.iterdir()) == ["demo_output"]


def test_example_recipes_carry_no_shared_results_dir() -> None:
    for recipe in sorted((ROOT / "examples").glob("*.yaml")):
        spec = yaml.safe_load(recipe.read_text())
        assert not spec.get("results_dir"), f"{recipe.name} smuggles results_dir={spec.get('results_dir')!r}"
        assert not (spec.get("train") or {}).get("results_dir"), recipe.name


def test_a_fresh_job_never_resumes_another_jobs_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # another run left checkpoints in ./demo_output/train; a recipe still naming that folder must not make a new
    # job resume them: the job writes (and resumes) only in its own folder
    monkeypatch.chdir(tmp_path)
    shared = tmp_path / "demo_output" / "train"
    shared.mkdir(parents=True)
    (shared / "model_epoch_049_step_00500.pth").write_bytes(b"someone else's")
    os.symlink(shared / "model_epoch_049_step_00500.pth", shared / "mal_model_latest.pth")
    recipe = yaml.safe_load((ROOT / "examples" / "cpu_tiny.yaml").read_text())
    recipe["results_dir"] = "demo_output/train"  # an old copy of the recipe
    (tmp_path / "old_recipe.yaml").write_text(yaml.safe_dump(recipe))
    d = _inputs(tmp_path)
    seen: dict[str, Any] = {}

    def engine(action: str, spec: ResolvedSpec, report: Any = None) -> EngineResult:
        seen.update(spec.tree)
        return fake_engine()(action, spec)

    monkeypatch.setattr(runner, "run_direct", engine)
    rc, out = _run(capsys, "train", _argv("train", d, tmp_path / "jobs", "fresh", "-e", "old_recipe.yaml"))
    assert rc == 0, out["error"]
    job = tmp_path / "jobs" / "fresh"
    assert seen["results_dir"] == str(job) and seen["train"]["resume_training_checkpoint_path"] is None
    assert out["results_dir"] == str(job) and (job / "model_epoch_000_step_00001.pth").is_file()
    assert sorted(p.name for p in shared.iterdir()) == ["mal_model_latest.pth", "model_epoch_049_step_00500.pth"]
    rec = read_job(job)
    assert rec["mappings"]["results_dir"]["applied"] and not rec["mappings"][
        "train.resume_training_checkpoint_path"]["applied"]
    # a second attempt of the same job resumes its own checkpoint, and only that
    rc, out = _run(capsys, "train", _argv("train", d, tmp_path / "jobs", "fresh", "-e", "old_recipe.yaml"))
    assert rc == 0 and seen["train"]["resume_training_checkpoint_path"] == str(job / "model_epoch_000_step_00001.pth")


# ----- 2. one run at a time per job id -------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from mal_core.skill.jobs import Job
job = Job.create(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("action", ["train", "evaluate", "inference"])
def test_a_second_run_on_a_running_job_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    monkeypatch.setattr(runner, "run_direct", fake_engine())
    d = _inputs(tmp_path)
    jobs = tmp_path / "jobs"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(jobs), action, "j1"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = _snapshot(jobs / "j1")
        rc, out = _run(capsys, action, _argv(action, d, jobs, "j1"))
        assert rc == 2 and out["error"]["field"] == "job_id", out["error"]
        msg = out["error"]["message"]
        assert "already running" in msg and f"pid {holder.pid}" in msg and socket.gethostname() in msg
        assert _snapshot(jobs / "j1") == before  # the refused run wrote nothing: same record, same lock
        lock = json.loads((jobs / "j1" / LOCK_FILE).read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
    finally:
        holder.kill()
        holder.wait()
    # the holder died (kill -9): its lock is stale and the next run takes it over
    rc, out = _run(capsys, action, _argv(action, d, jobs, "j1"))
    assert rc == 0, out["error"]
    assert not (jobs / "j1" / LOCK_FILE).exists()  # released at the end of the run


SLOW = """
import sys, time
from pathlib import Path
import mal_core.skill.runner as runner
from mal_core.engine.result import EngineResult
from mal_core.utils.io import atomic_write_json

def slow(action, spec, report=None):
    out = Path(spec.tree[action].get("results_dir") or spec.tree["results_dir"])
    atomic_write_json(out / "partial.json", {"half": True})
    time.sleep(float(sys.argv[1]))
    path = atomic_write_json(out / "metrics.json", {"mIoU": 0.9})
    return EngineResult(str(out), {"metrics_json": str(path)}, {"mIoU": 0.9})

runner.run_direct = slow
sys.exit(runner.main(sys.argv[2], sys.argv[3:]))
"""


def _wait_running(job_dir: Path, timeout: float = 30.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        rec = read_job(job_dir) if (job_dir / "job.json").is_file() else None
        if rec and rec["status"] == "running" and (job_dir / "partial.json").is_file():
            return
        time.sleep(0.05)
    raise AssertionError(f"{job_dir} never reached running")


def test_two_concurrent_runs_of_one_job_id_one_is_refused(tmp_path: Path) -> None:
    d = _inputs(tmp_path)
    jobs = tmp_path / "jobs"
    argv = _argv("evaluate", d, jobs, "e1")
    first = subprocess.Popen([sys.executable, "-c", SLOW, "3", "evaluate", *argv], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _wait_running(jobs / "e1")
    second = subprocess.run([sys.executable, "-c", SLOW, "0", "evaluate", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    out1, _ = first.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 2, (out1, second.stdout)
    err = last_json_line(second.stdout)["error"]
    assert err["field"] == "job_id" and f"pid {first.pid}" in err["message"]
    assert "Traceback" not in second.stderr
    rec = read_job(jobs / "e1")
    assert rec["status"] == "success" and rec["attempts"] == 1 and rec["metrics"] == {"mIoU": 0.9}
    assert not (jobs / "e1" / "previous_attempts").exists() and not (jobs / "e1" / LOCK_FILE).exists()


@pytest.mark.parametrize("content", ["dead_pid", "garbage", "empty", "own_pid"])
def test_stale_lock_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    monkeypatch.setattr(runner, "run_direct", fake_engine())
    d = _inputs(tmp_path)
    job = tmp_path / "jobs" / "t1"
    job.mkdir(parents=True)
    text = {"dead_pid": json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}), "garbage": "{not json",
            "empty": "", "own_pid": json.dumps({"pid": os.getpid(), "host": socket.gethostname()})}[content]
    (job / LOCK_FILE).write_text(text)
    rc, out = _run(capsys, "train", _argv("train", d, tmp_path / "jobs", "t1"))
    assert rc == 0, out["error"]
    assert not (job / LOCK_FILE).exists() and read_job(job)["status"] == "success"


def test_lock_of_another_host_is_not_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "run_direct", fake_engine())
    d = _inputs(tmp_path)
    job = tmp_path / "jobs" / "t1"
    job.mkdir(parents=True)
    lock = json.dumps({"pid": 4242, "host": "other-node-17", "action": "train", "started": "earlier"})
    (job / LOCK_FILE).write_text(lock)
    rc, out = _run(capsys, "train", _argv("train", d, tmp_path / "jobs", "t1"))
    assert rc == 2 and out["error"]["field"] == "job_id" and "other-node-17" in out["error"]["message"]
    assert str(job / LOCK_FILE) in out["error"]["hint"]  # how to recover, when that run is known to be dead
    assert (job / LOCK_FILE).read_text() == lock and read_job(job) is None


def test_lock_is_released_after_a_failed_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "run_direct", fake_engine(fail=RuntimeError("boom")))
    d = _inputs(tmp_path)
    rc, out = _run(capsys, "evaluate", _argv("evaluate", d, tmp_path / "jobs", "e1"))
    assert rc == 1 and "boom" in out["error"]["message"]
    assert not (tmp_path / "jobs" / "e1" / LOCK_FILE).exists()
    job = Job.create(tmp_path / "jobs", "evaluate", "e1")  # free again
    job.close()


# ----- 3. a re-run never leaves earlier outputs that look like its own ----------------------------------------------

LATE_FAILURES = {
    "bad_checkpoint": (CheckpointError("'model.pth' is not a MAL checkpoint", field="evaluate.checkpoint"), 2),
    "runtime_error": (RuntimeError("worker crashed"), 1),
}


@pytest.mark.parametrize("action", ["evaluate", "inference"])
@pytest.mark.parametrize("failure", sorted(LATE_FAILURES))
def test_failed_rerun_moves_the_earlier_attempt_aside(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, action: str,
                                                      failure: str) -> None:
    d = _inputs(tmp_path)
    jobs = tmp_path / "jobs"
    job = jobs / "j1"
    output = "metrics.json" if action == "evaluate" else "inference.json"
    monkeypatch.setattr(runner, "run_direct", fake_engine(miou=0.61))
    rc, first = _run(capsys, action, _argv(action, d, jobs, "j1"))
    assert rc == 0 and (job / output).is_file()
    first_output = (job / output).read_bytes()
    exc, code = LATE_FAILURES[failure]
    monkeypatch.setattr(runner, "run_direct", fake_engine(fail=exc))
    rc, out = _run(capsys, action, _argv(action, d, jobs, "j1"))
    assert rc == code and out["status"] == "failure" and out["artifacts"] == {} and out["metrics"] == {}
    rec = read_job(job)
    assert rec["status"] == "failure" and rec["attempts"] == 2
    assert rec["artifacts"] == {} and rec["metrics"] == {}  # nothing listed from the earlier attempt
    assert not (job / output).exists()  # no stale output at the top of the folder
    # ... and nothing lost: the earlier attempt is kept, marked as such, with its record
    prev = job / "previous_attempts" / "1"
    assert (prev / output).read_bytes() == first_output and (prev / "spec.yaml").is_file()
    assert (prev / "logs" / f"{action}.log").is_file()
    [entry] = rec["previous_attempts"]
    assert entry["attempt"] == 1 and entry["status"] == "success" and entry["folder"] == str(prev)
    key = "metrics_json" if action == "evaluate" else "label_dump"
    assert entry["artifacts"][key] == str(prev / output) and Path(entry["artifacts"][key]).is_file()
    if action == "evaluate":
        assert entry["metrics"] == {"mIoU": 0.61} == first["metrics"]
    assert rec["transitions"][-3]["note"].startswith("re-run; attempt 1 ended success")
    # the failed attempt's own files stay at the top (they are its own), the job is free again
    assert (job / "lightning_logs").is_dir() and (job / "spec.yaml").is_file() and not (job / LOCK_FILE).exists()


@pytest.mark.parametrize("action", ["evaluate", "inference"])
def test_rerun_with_bad_input_is_recorded_as_a_refused_attempt(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    # bad input is caught before anything runs; the record's latest attempt is the refused one (issue 18), and the
    # earlier attempt's outputs stay listed as that attempt's (moved aside as on any re-run)
    monkeypatch.setattr(runner, "run_direct", fake_engine(miou=0.7))
    d = _inputs(tmp_path)
    jobs = tmp_path / "jobs"
    assert _run(capsys, action, _argv(action, d, jobs, "j1"))[0] == 0
    before = _snapshot(jobs / "j1")
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    key = "dataset.val_ann_path" if action == "evaluate" else "inference.ann_path"
    rc, out = _run(capsys, action, _argv(action, d, jobs, "j1", "--set", f"{key}={bad}"))
    assert rc == 2 and str(bad) in out["error"]["message"] and "not valid JSON" in out["error"]["message"]
    assert out["artifacts"] == {} and out["metrics"] == {}
    rec = read_job(jobs / "j1")
    assert rec["status"] == "failure" and rec["attempts"] == 2 and str(bad) in rec["error"]["message"]
    assert rec["artifacts"] == {} and rec["metrics"] == {}
    assert rec["previous_attempts"][-1]["status"] == "success" and rec["previous_attempts"][-1]["artifacts"]
    moved = _snapshot(jobs / "j1" / "previous_attempts" / "1")
    assert {k: v for k, v in before.items() if k not in ("job.json",)} == moved


def test_kill_9_of_a_rerun_leaves_no_stale_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    d = _inputs(tmp_path)
    jobs = tmp_path / "jobs"
    job = jobs / "e1"
    argv = _argv("evaluate", d, jobs, "e1")
    monkeypatch.setattr(runner, "run_direct", fake_engine(miou=0.42))
    assert _run(capsys, "evaluate", argv)[0] == 0
    proc = subprocess.Popen([sys.executable, "-c", SLOW, "60", "evaluate", *argv], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_running(job)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rec = read_job(job)
    assert rec["status"] == "running" and rec["attempts"] == 2  # the record says the attempt never ended
    assert rec["artifacts"] == {} and rec["metrics"] == {} and not (job / "metrics.json").exists()
    assert json.loads((job / "previous_attempts" / "1" / "metrics.json").read_text()) == {"mIoU": 0.42}
    assert json.loads((job / LOCK_FILE).read_text())["pid"] == proc.pid  # stale: its process is gone
    # the next attempt takes the stale lock over and files the killed attempt as interrupted
    rc, out = _run(capsys, "evaluate", argv)
    assert rc == 0 and out["metrics"] == {"mIoU": 0.42}
    rec = read_job(job)
    assert [(e["attempt"], e["status"]) for e in rec["previous_attempts"]] == [(1, "success"), (2, "interrupted")]
    assert (job / "previous_attempts" / "2" / "partial.json").is_file()  # the killed attempt's partial output
    assert not (job / "partial.json").exists() and not (job / LOCK_FILE).exists()
    assert rec["status"] == "success" and rec["attempts"] == 3


# ----- 10. re-running a finished train job keeps its metrics (real engine, one epoch) ------------------------------


def test_rerun_of_a_finished_train_job_keeps_its_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAL_PROGRESS_BAR", "0")
    jobs = tmp_path / "jobs"
    over = {**TINY_OVERRIDES, **tiny_dataset(tmp_path / "data"), "train.num_epochs": 1}
    argv = ["--jobs-root", str(jobs), "--job-id", "t1", "--automl-policy", "off", "--spec-overrides",
            json.dumps(over)]
    rc, first = _run(capsys, "train", argv)
    assert rc == 0, first["error"]
    assert 0.0 <= first["metrics"]["mIoU"] <= 1.0
    ckpts = _snapshot(jobs / "t1")
    ckpts = {k: v for k, v in ckpts.items() if k.endswith(".pth")}
    rc, again = _run(capsys, "train", argv)
    assert rc == 0, again["error"]
    assert again["metrics"] == first["metrics"]  # not {}: nothing was left to train, the last validation stands
    assert "nothing was left to train" in again["artifacts"]["metrics_from"]
    assert again["artifacts"]["resumed_from"] and again["artifacts"]["best_checkpoint"] == \
        first["artifacts"]["best_checkpoint"]
    assert {k: v for k, v in _snapshot(jobs / "t1").items() if k.endswith(".pth")} == ckpts  # checkpoints kept
    rec = read_job(jobs / "t1")
    assert rec["metrics"] == first["metrics"] and rec["attempts"] == 2
    assert rec["previous_attempts"][0]["metrics"] == first["metrics"]
    assert not (jobs / "t1" / "previous_attempts").exists()  # a train job's files stay in place to resume
