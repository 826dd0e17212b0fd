"""Job records, parent checkpoint resolution, spec_params mappings, dry-run plans and input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mal_core.config.skill_info import load_skill_info
from mal_core.engine.result import EngineResult
from mal_core.skill.jobs import Job, JobError, read_job
from mal_core.skill.mappings import apply_mappings
from mal_core.skill.parents import ParentError, resolve_parent
from mal_core.skill.runner import main
from mal_core.skill.testing import last_json_line, minimal_coco

ROOT = Path(__file__).resolve().parents[1]
INFO = load_skill_info(ROOT / "references" / "skill_info.yaml")


def _fake_train_job(jobs: Path, job_id: str, mious: list[float], **record: object) -> Path:
    d = jobs / job_id
    d.mkdir(parents=True)
    lines = []
    for i, m in enumerate(mious):
        (d / f"model_epoch_{i:03d}_step_{(i + 1) * 10:05d}.pth").write_bytes(b"x")
        lines.append(json.dumps({"epoch": i, "step": (i + 1) * 10, "mIoU": m}))
    (d / "validation_history.jsonl").write_text("\n".join(lines) + "\n")
    (d / "model_epoch_099_step_99999.ckpt").write_bytes(b"x")
    (d / "lightning_logs").mkdir()
    (d / "lightning_logs" / "model_epoch_098_step_99998.pth").write_bytes(b"x")
    os.symlink(d / f"model_epoch_{len(mious) - 1:03d}_step_{len(mious) * 10:05d}.pth", d / "mal_model_latest.pth")
    (d / "train_spec.yaml").write_text(yaml.safe_dump({"model": {"arch": "vit-mae-nano/8"},
                                                       "dataset": {"crop_size": 64}}))
    (d / "job.json").write_text(json.dumps({"job_id": job_id, "action": "train", "status": "success", **record}))
    return d


def test_job_lifecycle(tmp_path: Path) -> None:
    job = Job.create(tmp_path, "train", "j1")
    assert read_job(job.dir)["status"] == "pending"
    job.transition("running")
    job.finish(False, error={"code": "x", "message": "boom", "field": None, "hint": None})
    rec = read_job(job.dir)
    assert rec["status"] == "failure" and rec["error"]["message"] == "boom"
    assert [t["state"] for t in rec["transitions"]] == ["pending", "running", "failure"]
    assert not list(job.dir.glob(".job.json.*"))  # atomic writes leave no temp file
    with pytest.raises(JobError, match="already running"):  # the attempt still holds the job
        Job.create(tmp_path, "train", "j1")
    job.close()
    again = Job.create(tmp_path, "train", "j1")
    assert again.record["attempts"] == 2 and again.state == "pending"
    again.close()
    with pytest.raises(JobError):
        Job.create(tmp_path, "evaluate", "j1")
    with pytest.raises(JobError):
        Job.create(tmp_path, "train", "../evil")


def test_parent_best_latest_epoch(tmp_path: Path) -> None:
    d = _fake_train_job(tmp_path, "t1", [0.2, 0.7, 0.5])
    best = resolve_parent(tmp_path, "t1")
    assert Path(best.path).name == "model_epoch_001_step_00020.pth" and best.metric == pytest.approx(0.7)
    latest = resolve_parent(tmp_path, "t1", "latest")
    assert Path(latest.path).name == "model_epoch_002_step_00030.pth"
    assert Path(resolve_parent(tmp_path, "t1", "epoch:0").path).name == "model_epoch_000_step_00010.pth"
    with pytest.raises(ParentError, match="epoch 7"):
        resolve_parent(tmp_path, "t1", "epoch:7")
    assert Path(resolve_parent(tmp_path, "t1", "mal_model_latest.pth").path) == (d / "mal_model_latest.pth").resolve()


def test_parent_never_picks_leftovers(tmp_path: Path) -> None:
    d = tmp_path / "t2"
    d.mkdir()
    (d / "model_epoch_000_step_00001.ckpt").write_bytes(b"x")
    (d / "lightning_logs").mkdir()
    (d / "lightning_logs" / "model_epoch_000_step_00001.pth").write_bytes(b"x")
    (d / "job.json").write_text(json.dumps({"job_id": "t2", "action": "train", "status": "success"}))
    with pytest.raises(ParentError, match="no model_epoch"):
        resolve_parent(tmp_path, "t2")
    with pytest.raises(ParentError, match="does not exist"):
        resolve_parent(tmp_path, "nope")


def test_automl_parent_resolves_to_best_trial(tmp_path: Path) -> None:
    trial = _fake_train_job(tmp_path / "a1" / "trials", "tr2", [0.1, 0.9])
    (tmp_path / "a1" / "job.json").write_text(json.dumps({
        "job_id": "a1", "action": "train", "route": "automl", "status": "success",
        "automl": {"best_trial": {"trial_id": "tr2", "results_dir": str(trial)}}}))
    got = resolve_parent(tmp_path, "a1")
    assert got.trial_id == "tr2" and Path(got.path) == trial / "model_epoch_001_step_00020.pth"


def test_mappings_explicit_wins(tmp_path: Path) -> None:
    _fake_train_job(tmp_path, "t1", [0.3])
    parent = resolve_parent(tmp_path, "t1")
    tree = {"results_dir": "", "inference": {"checkpoint": "", "label_dump_path": "x.json"}}
    rep = apply_mappings(INFO, "inference", tree, {"inference.label_dump_path"}, tmp_path / "i1", parent)
    assert tree["results_dir"] == str(tmp_path / "i1") and tree["inference"]["checkpoint"] == parent.path
    assert tree["inference"]["label_dump_path"] == "x.json" and not rep["inference.label_dump_path"]["applied"]
    tree2 = {"results_dir": "", "inference": {"checkpoint": "", "label_dump_path": "instances_val2017_mal.json"}}
    apply_mappings(INFO, "inference", tree2, set(), tmp_path / "i2", parent)
    assert tree2["inference"]["label_dump_path"] == str(tmp_path / "i2" / "inference.json")


def _data(tmp_path: Path) -> dict[str, str]:
    return minimal_coco(tmp_path / "data")


def _run(capsys: pytest.CaptureFixture[str], action: str, argv: list[str]) -> tuple[int, dict]:
    rc = main(action, argv)
    return rc, last_json_line(capsys.readouterr().out)


def test_dry_run_train_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _data(tmp_path)
    over = {"dataset.train_img_dir": d["img"], "dataset.train_ann_path": d["ann"], "epochs": 4}
    rc, out = _run(capsys, "train", ["--jobs-root", str(tmp_path / "jobs"), "--job-id", "p1", "--dry-run",
                                     "--spec-overrides", json.dumps(over), "--lr", "2e-6",
                                     "--automl-settings", '{"automl_algorithm": "asha"}'])
    assert rc == 0 and out["status"] == "planned" and out["route"] == "automl" and out["automl_policy"] == "auto"
    plan = out["plan"]
    assert plan["spec"]["train"]["num_epochs"] == 4 and plan["spec"]["train"]["lr"] == 2e-6
    assert plan["spec"]["results_dir"] == str(tmp_path / "jobs" / "p1") and plan["schema_valid"]
    assert plan["mappings"]["results_dir"]["applied"]
    assert {s["key"] for s in plan["data_sources"]} == {"dataset.train_img_dir", "dataset.train_ann_path"}
    space = {r["key"]: r for r in plan["automl"]["search_space"]}
    assert space["train.lr"]["log"] and space["train.warmup_epochs"]["high"] == 3
    assert plan["automl"]["settings"]["automl_algorithm"] == "asha"
    assert out["spec_path"] == str(tmp_path / "jobs" / "p1" / "spec.yaml")
    assert not (tmp_path / "jobs").exists()  # a dry run writes nothing


def test_dry_run_evaluate_by_parent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "jobs"
    _fake_train_job(jobs, "t1", [0.4, 0.6])
    d = _data(tmp_path)
    base = ["--jobs-root", str(jobs), "--parent-job-id", "t1", "--dry-run",
            "--set", f"dataset.val_img_dir={d['img']}", "--set", f"dataset.val_ann_path={d['ann']}"]
    rc, out = _run(capsys, "evaluate", base)
    assert rc == 0 and out["route"] == "direct"
    assert out["plan"]["spec"]["evaluate"]["checkpoint"].endswith("model_epoch_001_step_00020.pth")
    assert out["plan"]["parent"]["method"] == "best"
    rc, out = _run(capsys, "evaluate", [*base, "--set", "model.arch=vit-mae-large/16"])
    assert rc == 2 and out["error"]["field"] == "model.arch" and "conflicts" in out["error"]["message"]


def test_no_checkpoint_parent_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "t0").mkdir(parents=True)
    (jobs / "t0" / "job.json").write_text(json.dumps({"job_id": "t0", "action": "train", "status": "failure"}))
    d = _data(tmp_path)
    rc, out = _run(capsys, "inference", ["--jobs-root", str(jobs), "--parent-job-id", "t0", "--set",
                                         f"inference.img_dir={d['img']}", "--set", f"inference.ann_path={d['ann']}"])
    assert rc == 2 and out["error"]["code"] == "invalid_parent" and out["job_id"] is not None
    assert not (jobs / out["job_id"]).exists()


def test_missing_parent_and_missing_data_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _data(tmp_path)
    rc, out = _run(capsys, "evaluate", ["--jobs-root", str(tmp_path), "--set", f"dataset.val_img_dir={d['img']}",
                                        "--set", f"dataset.val_ann_path={d['ann']}"])
    assert rc == 2 and out["error"]["field"] == "evaluate.checkpoint" and "--parent-job-id" in out["error"]["message"]
    rc, out = _run(capsys, "train", ["--jobs-root", str(tmp_path), "--automl-policy", "off",
                                     "--set", f"dataset.train_img_dir={d['img']}"])
    assert rc == 2 and out["error"]["field"] == "dataset.train_ann_path" and "missing data source" in \
        out["error"]["message"]


@pytest.mark.parametrize(("argv", "field"), [
    (["--set", "train.lrr=1"], "train.lrr"),
    (["--spec-overrides", '{"train.num_epochs": "five"}'], "train.num_epochs"),
    (["--spec-overrides", '{"train.lr": 1.0}'], "train.lr"),
    (["--spec-overrides", "[1]"], "spec_overrides"),
    (["--automl-settings", '{"automl_algorithm": "grid"}'], "automl_settings.automl_algorithm"),
    (["--automl-settings", '{"automl_range_override": {"train.lr": {"min": 1e-9}}}'],
     "automl_settings.automl_range_override.train.lr"),
    (["--automl-settings", '{"automl_hyperparameters": ["train.nope"]}'], "automl_settings.automl_hyperparameters"),
    (["--automl-settings", '{"max_trials": 3}'], "automl_settings.max_trials"),
    (["--bogus-flag"], "argv"),
])
def test_bad_input_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                     field: str) -> None:
    d = _data(tmp_path)
    rc, out = _run(capsys, "train", ["--jobs-root", str(tmp_path / "jobs"), "--set",
                                     f"dataset.train_img_dir={d['img']}", "--set",
                                     f"dataset.train_ann_path={d['ann']}", *argv])
    assert rc == 2 and out["status"] == "failure" and out["error"]["field"] == field, out["error"]
    assert not (tmp_path / "jobs").exists()


def test_dry_run_imports_no_torch(tmp_path: Path) -> None:
    # a dry run stays fast because it never imports torch or Ray; its wall time is not asserted (a loaded 2-core
    # machine made that flaky), the imports are
    d = _data(tmp_path)
    code = ("import sys, time; t=time.time(); from mal_core.skill.runner import main; "
            f"rc = main('train', ['--dry-run', '--jobs-root', {str(tmp_path)!r}, '--set', "
            f"'dataset.train_img_dir={d['img']}', '--set', 'dataset.train_ann_path={d['ann']}']); "
            "assert rc == 0; assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert last_json_line(proc.stdout)["status"] == "planned"


def test_runtime_failure_and_oom_leave_a_terminal_job(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import mal_core.skill.runner as runner

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "run_direct", boom)
    d = _data(tmp_path)
    rc, out = _run(capsys, "train", ["--jobs-root", str(tmp_path), "--job-id", "oom", "--automl-policy", "off",
                                     "--set", f"dataset.train_img_dir={d['img']}",
                                     "--set", f"dataset.train_ann_path={d['ann']}"])
    assert rc == 1 and out["error"]["code"] == "cuda_oom" and "512 -> 384 -> 256" in out["error"]["hint"]
    rec = read_job(tmp_path / "oom")
    assert rec["status"] == "failure" and rec["error"]["code"] == "cuda_oom"
    assert (tmp_path / "oom" / "spec.yaml").is_file()


def test_engine_warnings_reach_the_result_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import mal_core.engine.train as train_engine

    collapse = "collapse: predicted masks fill 97% of their boxes on validation (masks are boxes); lower train.lr"

    def fake_train(cfg: object, explicit_keys: object = None) -> EngineResult:
        return EngineResult(str(tmp_path / "w"), {"checkpoints": [], "latest_checkpoint": None}, {"mIoU": 0.5},
                            warnings=[collapse])

    monkeypatch.setattr(train_engine, "run_train", fake_train)
    d = _data(tmp_path)
    rc, out = _run(capsys, "train", ["--jobs-root", str(tmp_path), "--job-id", "w", "--automl-policy", "off",
                                     "--set", f"dataset.train_img_dir={d['img']}",
                                     "--set", f"dataset.train_ann_path={d['ann']}"])
    assert rc == 0 and out["status"] == "success"
    assert collapse in out["warnings"]
    assert "engine_warnings" not in out["artifacts"]
    assert read_job(tmp_path / "w")["warnings"] == out["warnings"]  # the job record keeps them too
