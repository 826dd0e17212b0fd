"""The pretrain action through the runner: pretrain -> HF folder -> train from it (by parent job and by path), resume
after kill -9, and bad input that exits 2 naming the field."""

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
from mal_core.skill.runner import main
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_TINY = {"model.arch": "vit-mae-nano/8", "dataset.crop_size": 64, "pretrain.batch_size": 4,
                 "pretrain.num_epochs": 2, "pretrain.warmup_epochs": 0, "pretrain.decoder_hidden_size": 32,
                 "pretrain.decoder_num_layers": 1, "pretrain.decoder_num_heads": 4, "pretrain.num_workers": 0,
                 "pretrain.checkpoint_interval": 1, "pretrain.num_vis_images": 2, "pretrain.use_amp": False}


def _run(capsys: pytest.CaptureFixture[str], action: str, argv: list[str]) -> tuple[int, dict]:
    rc = main(action, argv)
    return rc, last_json_line(capsys.readouterr().out)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("MAL_PROGRESS_BAR", "0")
    monkeypatch.setenv("MAL_JOBS_ROOT", str(tmp_path / "jobs"))
    return tiny_dataset(tmp_path / "data")


def test_pretrain_then_train_from_it_by_parent_and_by_path(tmp_path: Path, env: dict[str, str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "jobs"
    spec = {**PRETRAIN_TINY, "pretrain.img_dir": env["dataset.train_img_dir"],
            "pretrain.ann_path": env["dataset.train_ann_path"]}
    rc, pre = _run(capsys, "pretrain", ["--job-id", "p1", "--spec-overrides", json.dumps(spec)])
    assert rc == 0, pre["error"]
    assert pre["route"] == "direct" and pre["status"] == "success"
    folder = Path(pre["artifacts"]["pretrained_model"])
    assert folder == jobs / "p1" / "pretrained_model" and (folder / "model.safetensors").is_file()
    assert Path(pre["artifacts"]["reconstruction_png"]).is_file() and pre["metrics"]["loss"] > 0
    assert read_job(jobs / "p1")["preflight"] == {"images": 6, "boxes": read_job(jobs / "p1")["preflight"]["boxes"]}

    rc, train = _run(capsys, "train", ["--automl-policy", "off", "--job-id", "t1", "--parent-job-id", "p1",
                                       "--spec-overrides", json.dumps({**TINY_OVERRIDES, **env})])
    assert rc == 0, train["error"]
    rec = read_job(jobs / "t1")
    assert rec["parent"]["method"] == "pretrain" and rec["parent"]["path"] == str(folder)
    spec_t1 = (jobs / "t1" / "spec.yaml").read_text()
    assert f"pretrained_model_path: {folder}" in spec_t1
    log = (jobs / "t1" / "logs" / "train.log").read_text()
    assert "from Hugging Face ViT-MAE folder" in log and "0 left at init" not in log.split("loaded")[0]

    by_path = {**TINY_OVERRIDES, **env, "train.pretrained_model_path": str(folder), "train.num_epochs": 1}
    rc, t2 = _run(capsys, "train", ["--automl-policy", "off", "--job-id", "t2", "--spec-overrides",
                                    json.dumps(by_path)])
    assert rc == 0, t2["error"]
    assert "from Hugging Face ViT-MAE folder" in (jobs / "t2" / "logs" / "train.log").read_text()


def test_pretrained_folder_of_another_arch_exits_2_before_the_job(tmp_path: Path, env: dict[str, str],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = {**PRETRAIN_TINY, "pretrain.num_epochs": 1, "pretrain.img_dir": env["dataset.train_img_dir"]}
    rc, pre = _run(capsys, "pretrain", ["--job-id", "p1", "--spec-overrides", json.dumps(spec)])
    assert rc == 0, pre["error"]
    bad = {**TINY_OVERRIDES, **env, "model.arch": "vit-deit-tiny/16"}
    rc, out = _run(capsys, "train", ["--automl-policy", "off", "--job-id", "t1", "--parent-job-id", "p1",
                                     "--spec-overrides", json.dumps(bad)])
    assert rc == 2 and out["error"]["field"] == "train.pretrained_model_path"
    assert "another architecture" in out["error"]["message"] and "hidden_size: 128 vs 192" in out["error"]["message"]
    assert not (tmp_path / "jobs" / "t1").exists()


@pytest.mark.parametrize("case", ["no_images", "corrupt_archive", "missing_folder"])
def test_bad_pretrain_input_exits_2_naming_the_field(tmp_path: Path, env: dict[str, str], case: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    if case == "no_images":
        src = tmp_path / "empty"
        src.mkdir()
        (src / "readme.txt").write_text("nothing to see")
        cause = "holds no image files"
    elif case == "corrupt_archive":
        src = tmp_path / "images.tar.gz"
        src.write_bytes(b"\x1f\x8b\x08\x00 this is not a gzip stream")
        cause = "images.tar.gz"
    else:
        src = tmp_path / "nowhere"
        cause = "nowhere"
    spec = {**PRETRAIN_TINY, "pretrain.img_dir": str(src)}
    rc, out = _run(capsys, "pretrain", ["--job-id", "p1", "--spec-overrides", json.dumps(spec)])
    assert rc == 2, out
    assert out["error"]["field"] == "pretrain.img_dir" and cause in out["error"]["message"]
    assert "Traceback" not in capsys.readouterr().err


def test_pretrain_takes_no_train_parent(tmp_path: Path, env: dict[str, str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "jobs" / "t9").mkdir(parents=True)
    (tmp_path / "jobs" / "t9" / "job.json").write_text(json.dumps({"job_id": "t9", "action": "train"}))
    spec = {**PRETRAIN_TINY, "pretrain.img_dir": env["dataset.train_img_dir"]}
    rc, out = _run(capsys, "pretrain", ["--job-id", "p1", "--parent-job-id", "t9", "--dry-run",
                                        "--spec-overrides", json.dumps(spec)])
    assert rc == 2 and out["error"]["field"] == "parent_job_id", out


def test_pretrain_resumes_after_kill(tmp_path: Path, env: dict[str, str]) -> None:
    jobs = tmp_path / "jobs"
    spec = {**PRETRAIN_TINY, "pretrain.num_epochs": 400, "pretrain.img_dir": env["dataset.train_img_dir"]}
    cmd = [sys.executable, str(ROOT / "runners" / "pretrain.py"), "--job-id", "p1", "--jobs-root", str(jobs),
           "--spec-overrides", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MAL_PROGRESS_BAR": "0"})
    deadline = time.time() + 240
    while time.time() < deadline and not list((jobs / "p1").glob("model_epoch_002_*.pth")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = sorted((jobs / "p1").glob("model_epoch_*.pth"))
    assert saved, "no checkpoint was written before the kill"
    assert not (jobs / "p1" / "pretrained_model").exists()  # nothing that looks finished
    done = len((jobs / "p1" / "pretrain_history.jsonl").read_text().splitlines())
    spec["pretrain.num_epochs"] = done + 2
    out = subprocess.run([*cmd[:-1], json.dumps(spec)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MAL_PROGRESS_BAR": "0"})
    res = last_json_line(out.stdout)
    assert out.returncode == 0, res["error"]
    assert "resuming pretraining from" in (jobs / "p1" / "logs" / "pretrain.log").read_text()
    epochs = [json.loads(line)["epoch"] for line in (jobs / "p1" / "pretrain_history.jsonl").read_text().splitlines()]
    assert epochs[-1] == done + 1 and len(epochs) <= done + 2  # continued, did not start over
    assert epochs == list(range(done + 2))  # one line per epoch, even when the kill fell between line and checkpoint
    assert Path(res["artifacts"]["pretrained_model"]).is_dir()


def test_decoder_heads_must_divide_its_width(tmp_path: Path, env: dict[str, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = {**PRETRAIN_TINY, "pretrain.img_dir": env["dataset.train_img_dir"], "pretrain.decoder_num_heads": 5}
    rc, out = _run(capsys, "pretrain", ["--job-id", "p1", "--dry-run", "--spec-overrides", json.dumps(spec)])
    assert rc == 2 and out["error"]["field"] == "pretrain.decoder_num_heads"
    assert "must divide pretrain.decoder_hidden_size (32)" in out["error"]["message"]


def test_warmup_not_below_epochs_is_clamped_with_a_warning(tmp_path: Path, env: dict[str, str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec = {**PRETRAIN_TINY, "pretrain.img_dir": env["dataset.train_img_dir"], "pretrain.warmup_epochs": 40}
    rc, out = _run(capsys, "pretrain", ["--job-id", "p1", "--dry-run", "--spec-overrides", json.dumps(spec)])
    assert rc == 0, out["error"]
    assert out["warnings"] == ["pretrain.warmup_epochs (40) is not below pretrain.num_epochs (2); clamped to 1"]
