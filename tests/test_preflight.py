"""Issue 12 preflight: the spec, data sources and annotation files are checked once, before a job folder is opened
and before any Ray trial or data-loader worker starts, on every route (AutoML and direct train, evaluate,
inference). Bad input exits 2 in seconds naming the file or key, and leaves nothing on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mal_core.skill.runner as runner
from mal_core.config.resolved import ResolvedSpec
from mal_core.engine.result import EngineResult
from mal_core.skill.testing import last_json_line, minimal_coco

ROOT = Path(__file__).resolve().parents[1]

ROUTES = {  # route name -> (action, extra argv, annotation key, image-folder key)
    "train-automl": ("train", [], "dataset.train_ann_path", "dataset.train_img_dir"),
    "train-direct": ("train", ["--automl-policy", "off"], "dataset.train_ann_path", "dataset.train_img_dir"),
    "evaluate": ("evaluate", [], "dataset.val_ann_path", "dataset.val_img_dir"),
    "inference": ("inference", [], "inference.ann_path", "inference.img_dir"),
}


def _rewrite(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    data = json.loads(path.read_text())
    out = change(data)
    path.write_text(json.dumps(data if out is None else out))


def _set(obj: dict[str, Any], key: str, value: Any) -> None:
    obj[key] = value


# defect name -> (how to plant it in the annotation file / image folder, text the message must hold)
BAD_DATA: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "malformed_json": (lambda ann, img: ann.write_text('{"images": [{"id": 1,'), "not valid JSON"),
    "missing_file": (lambda ann, img: ann.unlink(), "{ann}"),
    "top_level_list": (lambda ann, img: ann.write_text("[]"), "top level must be a JSON object"),
    "missing_image": (lambda ann, img: (img / "img0.png").unlink(), "img0.png"),
    "unknown_category": (lambda ann, img: _rewrite(ann, lambda d: _set(d["annotations"][0], "category_id", 7)),
                         "unknown category_id 7"),
    "zero_size_box": (lambda ann, img: _rewrite(ann, lambda d: _set(d["annotations"][0], "bbox", [5, 5, 0, 10])),
                      "zero or negative size"),
    "no_annotations_key": (lambda ann, img: _rewrite(ann, lambda d: d.pop("annotations")), "annotations"),
}


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Nothing past the preflight may run: the direct engine and the AutoML driver record that they were reached."""
    reached: list[str] = []

    def direct(action: str, *_a: object) -> None:
        reached.append(f"run_direct({action})")
        raise AssertionError("the engine started despite bad input")

    def automl(*_a: object) -> None:
        reached.append("run_automl")
        raise AssertionError("AutoML started despite bad input")

    monkeypatch.setattr(runner, "run_direct", direct)
    monkeypatch.setattr(runner, "_run_automl", automl)
    return reached


def _inputs(tmp_path: Path) -> dict[str, str]:
    d = minimal_coco(tmp_path / "inputs")
    ckpt = tmp_path / "inputs" / "model.pth"
    ckpt.write_bytes(b"never read: the run stops before")
    return {**d, "ckpt": str(ckpt)}


def _argv(route: str, d: dict[str, str], jobs: Path, *extra: str) -> tuple[str, list[str]]:
    action, flags, ann_key, img_key = ROUTES[route]
    sets = [f"{ann_key}={d['ann']}", f"{img_key}={d['img']}"]
    if action != "train":
        sets.append(f"{action}.checkpoint={d['ckpt']}")
    argv = ["--jobs-root", str(jobs), "--job-id", "j1", *flags, *[x for s in sets for x in ("--set", s)], *extra]
    return action, argv


def _check_refused(capsys: pytest.CaptureFixture[str], route: str, argv: list[str], action: str,
                   jobs: Path, reached: list[str]) -> dict[str, Any]:
    rc = runner.main(action, argv)
    out = last_json_line(capsys.readouterr().out)
    assert rc == 2 and out["status"] == "failure", out
    if action == "train":
        assert out["route"] == route.split("-")[1]
    assert reached == []  # neither the engine nor AutoML was reached
    assert not (jobs / "j1").exists()  # no job folder, so no trial folder, no lock, no record
    return out["error"]


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("defect", sorted(BAD_DATA))
def test_bad_annotation_data_exits_2_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          no_engine: list[str], route: str, defect: str) -> None:
    d = _inputs(tmp_path)
    plant, expect = BAD_DATA[defect]
    plant(Path(d["ann"]), Path(d["img"]))
    action, argv = _argv(route, d, tmp_path / "jobs")
    err = _check_refused(capsys, route, argv, action, tmp_path / "jobs", no_engine)
    assert expect.format(ann=d["ann"]) in err["message"], err
    if defect != "missing_image":
        assert d["ann"] in err["message"]  # the message names the file


@pytest.mark.parametrize(("route", "extra", "field", "expect"), [
    ("evaluate", ["--set", "evaluate.checkpoint={missing}"], "evaluate.checkpoint", "does not exist"),
    ("inference", ["--set", "inference.checkpoint={missing}"], "inference.checkpoint", "does not exist"),
    ("evaluate", ["--set", "evaluate.checkpoint={folder}"], "evaluate.checkpoint", "is a folder"),
    ("inference", ["--set", "inference.checkpoint={folder}"], "inference.checkpoint", "is a folder"),
    ("evaluate", ["--set", "dataset.load_mask=false"], "dataset.load_mask", "ground-truth masks"),
    ("train-automl", ["--set", "dataset.min_obj_size=1e6"], "dataset.min_obj_size", "no training box"),
    ("train-direct", ["--set", "dataset.min_obj_size=1e6"], "dataset.min_obj_size", "no training box"),
    ("train-automl", ["--set", "train.pretrained_model_path={missing}"], "train.pretrained_model_path",
     "does not exist"),
    ("train-direct", ["--set", "train.resume_training_checkpoint_path={missing}"],
     "train.resume_training_checkpoint_path", "does not exist"),
    ("train-automl", ["--set", "dataset.val_ann_path={boxes_only}", "--set", "dataset.val_img_dir={img}"],
     "{boxes_only}:segmentation", "no segmentation"),
    ("train-direct", ["--set", "dataset.val_ann_path={missing}", "--set", "dataset.val_img_dir={img}"],
     None, "{missing}"),
])
def test_bad_checkpoint_paths_and_settings_exit_2_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_engine: list[str], route: str, extra: list[str],
        field: str | None, expect: str) -> None:
    d = _inputs(tmp_path)
    boxes_only = minimal_coco(tmp_path / "boxes_only", masks=False)["ann"]
    names = {"missing": str(tmp_path / "nope.pth"), "folder": str(tmp_path / "inputs"), "boxes_only": boxes_only,
             "img": d["img"]}
    action, argv = _argv(route, d, tmp_path / "jobs", *[x.format(**names) for x in extra])
    err = _check_refused(capsys, route, argv, action, tmp_path / "jobs", no_engine)
    if field is not None:
        assert err["field"] == field.format(**names), err
    assert expect.format(**names) in err["message"], err


def test_preflight_failure_on_a_rerun_records_the_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def engine(action: str, spec: ResolvedSpec, report: Any = None) -> EngineResult:
        ckpt = Path(spec.tree["results_dir"]) / "model_epoch_000_step_00001.pth"
        ckpt.write_bytes(b"weights")
        return EngineResult(spec.tree["results_dir"], {"checkpoints": [str(ckpt)]}, {"mIoU": 0.5})

    def snapshot() -> dict[str, bytes]:
        job = tmp_path / "jobs" / "j1"
        return {str(p.relative_to(job)): p.read_bytes() for p in sorted(job.rglob("*")) if p.is_file()}

    monkeypatch.setattr(runner, "run_direct", engine)
    d = _inputs(tmp_path)
    action, argv = _argv("train-direct", d, tmp_path / "jobs")
    assert runner.main(action, argv) == 0
    capsys.readouterr()
    before = snapshot()
    Path(d["ann"]).write_text("{")
    assert runner.main(action, argv) == 2
    err = last_json_line(capsys.readouterr().out)["error"]
    assert "not valid JSON" in err["message"] and d["ann"] in err["message"]
    after = snapshot()  # same checkpoint, no lock left; the record's latest attempt is the refused one (issue 18)
    assert {k: v for k, v in after.items() if k != "job.json"} == {k: v for k, v in before.items() if k != "job.json"}
    record = json.loads(after["job.json"])
    assert record["status"] == "failure" and d["ann"] in record["error"]["message"]
    assert record["previous_attempts"][-1]["status"] == "success" and record["previous_attempts"][-1]["metrics"]


AUTOML_SCRIPT = """
import sys
from mal_core.skill.runner import main
rc = main("train", sys.argv[1:])
print("RAY_IMPORTED", "ray" in sys.modules, file=sys.stderr)
sys.exit(rc)
"""


def test_malformed_annotation_on_the_automl_route_exits_2_fast_without_ray(tmp_path: Path) -> None:
    # the default policy (auto -> AutoML) used to start Ray and fail every trial one by one (61 s, exit 1)
    d = _inputs(tmp_path)
    Path(d["ann"]).write_text('{"images": [], "annotations": [')
    jobs = tmp_path / "jobs"
    settings = {"automl_max_recommendations": 10, "automl_algorithm": "random"}
    argv = ["--jobs-root", str(jobs), "--job-id", "hpo1", "--set", f"dataset.train_ann_path={d['ann']}",
            "--set", f"dataset.train_img_dir={d['img']}", "--automl-settings", json.dumps(settings)]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", AUTOML_SCRIPT, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    elapsed = time.time() - t0
    out = last_json_line(proc.stdout)
    assert proc.returncode == 2 and out["route"] == "automl" and out["automl_policy"] == "auto", out
    assert d["ann"] in out["error"]["message"] and "not valid JSON" in out["error"]["message"]
    assert "RAY_IMPORTED False" in proc.stderr and "Traceback" not in proc.stderr
    assert not (jobs / "hpo1").exists() and not list(jobs.rglob("trials"))  # no job, no trial folder
    assert elapsed < 20.0, f"bad input took {elapsed:.1f}s to report"
