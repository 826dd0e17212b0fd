"""Issue 18 §2, "job folders that cannot be turned against their owner": a symbolic link planted in a job folder
(before a run, or while it runs) is never followed: the run exits 2 naming the link, and every file outside the job
folder is byte-identical afterwards. Overlays of images that share a file name get names of their own.

The runs use the fake engine of ``test_job_isolation`` (no model), so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import mal_core.skill.runner as runner
from mal_core.engine.result import EngineResult
from mal_core.skill.jobs import Job
from mal_core.skill.testing import last_json_line
from mal_core.utils.io import append_text, atomic_write_json
from mal_core.utils.safe_paths import LinkInJobFolder
from tests.test_job_isolation import _argv, _inputs, fake_engine
from tests.test_unattended_safety import _assert_exit2, _snapshot


def _run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, action: str,
         job_id: str, engine: Any = None) -> tuple[int, dict[str, Any], str]:
    monkeypatch.setattr(runner, "run_direct", engine or fake_engine())
    d = _inputs(tmp_path / "in") if not (tmp_path / "in").exists() else {
        "ann": str(tmp_path / "in" / "inputs" / "ann.json"), "img": str(tmp_path / "in" / "inputs" / "images"),
        "ckpt": str(tmp_path / "in" / "inputs" / "model.pth")}
    rc = runner.main(action, _argv(action, d, tmp_path / "jobs", job_id))
    captured = capsys.readouterr()
    return rc, last_json_line(captured.out), captured.err


def _victims(tmp_path: Path) -> tuple[Path, Path]:
    """The user's folder and file that planted links point at."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "precious.txt").write_text("the user's file\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("another file of the user\n")
    return folder, victim


# name in the job folder -> what the link points at ("dir": the user's folder, "file": the user's file)
_PLANTS = [
    ("evaluate", "logs", "dir"),
    ("evaluate", "logs/evaluate.log", "file"),
    ("evaluate", "spec.yaml", "file"),
    ("evaluate", "previous_attempts", "dir"),
    ("evaluate", "metrics.json", "file"),
    ("inference", "review", "dir"),
    ("inference", "overlays", "dir"),
    ("inference", "shards", "dir"),
    ("inference", "instances_val2017_mal.json", "file"),
    ("train", "validation_history.jsonl", "file"),
    ("train", "pretrain_history.jsonl", "file"),
    ("train", "deep/sub/notes", "dir"),
]


@pytest.mark.parametrize(("action", "name", "kind"), _PLANTS)
def test_link_planted_before_a_rerun_is_refused_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, action: str, name: str,
                                                          kind: str) -> None:
    rc, _out, _err = _run(capsys, monkeypatch, tmp_path, action, "j1")
    assert rc == 0
    folder, victim = _victims(tmp_path)
    link = tmp_path / "jobs" / "j1" / name
    if link.is_dir() and not link.is_symlink():
        for p in sorted(link.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        link.rmdir()
    elif link.exists():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(folder if kind == "dir" else victim, link)
    before_user, before_job = _snapshot(folder), victim.read_bytes()
    before_jobs = _snapshot(tmp_path / "jobs")
    rc, out, err = _run(capsys, monkeypatch, tmp_path, action, "j1")
    _assert_exit2(rc, out, err, str(link), "symbolic link")
    assert out["error"]["code"] == "link_in_job_folder"
    assert _snapshot(folder) == before_user and victim.read_bytes() == before_job
    assert _snapshot(tmp_path / "jobs") == before_jobs  # nothing moved or written, no lock left


def _planting_engine(tmp_path: Path, plant: str) -> Any:
    """A fake inference engine that plants a link in its results folder while it runs, then writes there the way
    labelling does (shard files, the review page, a history line, overlays)."""

    def run(action: str, spec: Any, report: Any = None) -> EngineResult:
        out = Path(spec.tree["inference"].get("results_dir") or spec.tree["results_dir"])
        if plant == "shards":
            os.symlink(tmp_path / "user", out / "shards")
            atomic_write_json(out / "shards" / "header.json", {"images": []})
        elif plant == "review":
            os.symlink(tmp_path / "user", out / "review")
            atomic_write_json(out / "review" / "index.html", {})
        elif plant == "history":
            os.symlink(tmp_path / "victim.txt", out / "validation_history.jsonl")
            append_text(out / "validation_history.jsonl", "{}\n")
        elif plant == "overlays":
            from mal_core.data.coco import load_coco
            from mal_core.engine.overlays import write_overlays

            os.symlink(tmp_path / "user", out / "overlays")
            coco = load_coco(spec.tree["inference"]["ann_path"], spec.tree["inference"]["img_dir"])
            ann = {**coco.raw["annotations"][0], "segmentation": [[16, 16, 80, 16, 80, 80, 16, 80]]}
            write_overlays(coco, [ann], out / "overlays", limit=5)
        return EngineResult(str(out), {})

    return run


@pytest.mark.parametrize("plant", ["shards", "review", "history", "overlays"])
def test_link_planted_while_the_job_runs_is_never_written_through(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch, plant: str) -> None:
    folder, victim = _victims(tmp_path)
    before_user, before_victim = _snapshot(folder), victim.read_bytes()
    rc, out, err = _run(capsys, monkeypatch, tmp_path, "inference", "i1", _planting_engine(tmp_path, plant))
    name = {"history": "validation_history.jsonl"}.get(plant, plant)
    _assert_exit2(rc, out, err, str(tmp_path / "jobs" / "i1" / name), "symbolic link")
    assert _snapshot(folder) == before_user and victim.read_bytes() == before_victim
    record = json.loads((tmp_path / "jobs" / "i1" / "job.json").read_text())
    assert record["status"] == "failure" and record["error"]["code"] == "link_in_job_folder"


@pytest.mark.parametrize("plant", ["log_file", "logs_folder"])
def test_job_log_is_never_opened_through_a_link(tmp_path: Path, plant: str) -> None:
    folder, victim = _victims(tmp_path)
    job = Job.create(tmp_path / "jobs", "evaluate", "e1")
    try:
        logs = job.dir / "logs"
        if plant == "log_file":
            os.symlink(victim, logs / "evaluate.log")
        else:
            logs.rmdir()
            os.symlink(folder, logs)
        with pytest.raises(LinkInJobFolder, match="symbolic link"):
            job.log_handler()
    finally:
        job.close()
    assert victim.read_text() == "another file of the user\n" and _snapshot(folder) == {
        "precious.txt": b"the user's file\n"}


def test_own_latest_checkpoint_link_is_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rc, _out, _err = _run(capsys, monkeypatch, tmp_path, "train", "t1")
    assert rc == 0
    job = tmp_path / "jobs" / "t1"
    os.symlink("model_epoch_000_step_00001.pth", job / "mal_model_latest.pth")  # what Lightning writes
    rc, out, _err = _run(capsys, monkeypatch, tmp_path, "train", "t1")
    assert rc == 0, out
    (job / "mal_model_latest.pth").unlink()  # the same name pointing outside the folder is refused
    _folder, victim = _victims(tmp_path)
    os.symlink(victim, job / "mal_model_latest.pth")
    rc, out, err = _run(capsys, monkeypatch, tmp_path, "train", "t1")
    _assert_exit2(rc, out, err, str(job / "mal_model_latest.pth"))


def _two_images_one_name(root: Path) -> Any:
    from mal_core.data.coco import load_coco

    for sub, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        (root / "images" / sub).mkdir(parents=True)
        Image.new("RGB", (64, 64), colour).save(root / "images" / sub / "img.png")
    poly = [[8, 8, 40, 8, 40, 40, 8, 40]]
    coco = {"images": [{"id": 1, "file_name": "a/img.png", "height": 64, "width": 64},
                       {"id": 2, "file_name": "b/img.png", "height": 64, "width": 64}],
            "annotations": [{"id": k, "image_id": k, "category_id": 1, "bbox": [8, 8, 32, 32], "area": 1024.0,
                             "iscrowd": 0, "segmentation": poly} for k in (1, 2)],
            "categories": [{"id": 1, "name": "shape"}]}
    (root / "ann.json").write_text(json.dumps(coco))
    return load_coco(root / "ann.json", root / "images")


@pytest.mark.parametrize("limit", [2, 5])
def test_overlays_of_images_with_one_file_name_are_not_overwritten(tmp_path: Path, limit: int) -> None:
    from mal_core.engine.overlays import write_overlays

    coco = _two_images_one_name(tmp_path)
    out = write_overlays(coco, coco.raw["annotations"], tmp_path / "overlays", limit=limit)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["1-img.png", "2-img.png"]
    red = Image.open(out / "1-img.png").convert("RGB").getpixel((60, 60))
    blue = Image.open(out / "2-img.png").convert("RGB").getpixel((60, 60))
    assert red[0] > red[2] and blue[2] > blue[0]  # each overlay shows its own image
