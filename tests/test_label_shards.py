"""Sharded, streaming, resumable labelling: shard files, resume after SIGTERM and kill -9, Ray workers (one killed
mid-run), S3 output, and the final file equal to an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mal_core.engine.shards import read_labels_header
from mal_core.skill.jobs import read_job
from mal_core.skill.runner import main
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys: pytest.CaptureFixture[str], action: str, argv: list[str]) -> tuple[int, dict]:
    rc = main(action, argv)
    return rc, last_json_line(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny trained job and a labelling set of 16 images."""
    from mal_core.data.synthetic import generate_synthetic_dataset

    tmp = tmp_path_factory.mktemp("shards")
    data = tiny_dataset(tmp / "data")
    os.environ["MAL_PROGRESS_BAR"] = "0"
    rc = main("train", ["--jobs-root", str(tmp / "jobs"), "--automl-policy", "off", "--job-id", "t1",
                        "--spec-overrides", json.dumps({**TINY_OVERRIDES, **data, "train.num_epochs": 1})])
    assert rc == 0
    label = generate_synthetic_dataset(tmp / "label", num_train_images=1, num_val_images=16, image_size=96, seed=3)
    return {"jobs": tmp / "jobs", "ann": str(label.val_ann_path), "img": str(label.val_img_dir), "tmp": tmp,
            "val_ann": data["dataset.val_ann_path"], "val_img": data["dataset.val_img_dir"]}


def _argv(t: dict[str, Any], job_id: str, *extra: str) -> list[str]:
    return ["--jobs-root", str(t["jobs"]), "--parent-job-id", "t1", "--job-id", job_id,
            "--set", f"inference.ann_path={t['ann']}", "--set", f"inference.img_dir={t['img']}",
            "--set", "inference.shard_size=1", "--set", "inference.batch_size=2",
            "--set", "dataset.num_workers_per_gpu=0", *extra]


def _labels(path: str | Path) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text())["annotations"]


def assert_same_labels(got: list[dict[str, Any]], want: list[dict[str, Any]], tol: float = 1e-4) -> None:
    """Annotation for annotation: ids, boxes, masks, areas and every other key exact; ``score`` and the quality
    terms within ``tol`` (multi-threaded CPU reductions may move the last printed digit between runs, and other
    batch compositions move it a little more)."""
    assert [a["id"] for a in got] == [a["id"] for a in want]
    for a, b in zip(got, want, strict=True):
        assert {k: v for k, v in a.items() if k not in ("score", "quality")} == \
            {k: v for k, v in b.items() if k not in ("score", "quality")}
        assert a["score"] == pytest.approx(b["score"], abs=tol)
        assert a["quality"] == pytest.approx(b["quality"], abs=tol)


@pytest.fixture(scope="module")
def reference(trained: dict[str, Any]) -> list[dict[str, Any]]:
    """The labels of an uninterrupted in-process run, one image per shard."""
    rc = main("inference", _argv(trained, "ref"))
    assert rc == 0
    return _labels(read_job(trained["jobs"] / "ref")["artifacts"]["label_dump"])


def test_shards_progress_and_one_shard_give_the_same_labels(trained: dict[str, Any],
                                                             reference: list[dict[str, Any]],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    rec = read_job(trained["jobs"] / "ref")
    assert rec["progress"]["shards_done"] == rec["progress"]["shards_total"] == 16
    assert rec["progress"]["boxes_done"] == rec["progress"]["boxes_total"] == len(reference)
    shards = sorted((trained["jobs"] / "ref" / "shards").glob("labels_*.jsonl"))
    assert len(shards) == 16 and not list((trained["jobs"] / "ref" / "shards").glob(".*.tmp"))
    rc, out = _run(capsys, "inference", _argv(trained, "one", "--set", "inference.shard_size=1000"))
    assert rc == 0, out["error"]
    one = _labels(out["artifacts"]["label_dump"])
    assert [a["id"] for a in one] == [a["id"] for a in json.loads(Path(trained["ann"]).read_text())["annotations"]]
    assert_same_labels(one, reference, tol=2e-3)  # shard boundaries change no mask


def _start(t: dict[str, Any], job_id: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "runners" / "inference.py"), *_argv(t, job_id, *extra)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "MAL_PROGRESS_BAR": "0"})


def _wait_for_shards(folder: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(list(folder.glob("labels_*.jsonl"))) >= n:
            return
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.02)
    raise AssertionError(f"no {n} shard files in {folder}")


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_a_stopped_run_resumes_only_unfinished_shards(trained: dict[str, Any], reference: list[dict[str, Any]],
                                                      capsys: pytest.CaptureFixture[str], how: str) -> None:
    job = trained["jobs"] / f"stop-{how}"
    proc = _start(trained, job.name)
    _wait_for_shards(job / "shards", 2, proc)
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=60)
    if how == "sigterm":
        assert proc.returncode == 143
        res = last_json_line(stdout)
        assert res["status"] == "interrupted" and "SIGTERM" in res["error"]["message"]
        assert read_job(job)["status"] == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (job / "inference.json").exists()  # nothing that looks finished
    done = {p.name: p.stat().st_mtime_ns for p in (job / "shards").glob("labels_*.jsonl")}
    assert 2 <= len(done) < 16
    rc, out = _run(capsys, "inference", _argv(trained, job.name))
    assert rc == 0, out["error"]
    rec = read_job(job)
    totals = out["artifacts"]["labelling"]  # in the JSON line and the record alike
    assert rec["artifacts"]["labelling"] == totals
    assert totals["shards"] == 16 and totals["shards_resumed"] == len(done)
    assert totals["boxes_labelled_now"] < totals["boxes"] == len(reference)
    assert rec["previous_attempts"][-1]["status"] == "interrupted"
    assert rec["previous_attempts"][-1]["continued"] == ["shards"]
    assert {p.name: p.stat().st_mtime_ns for p in (job / "shards").glob("labels_*.jsonl") if p.name in done} == done
    assert_same_labels(_labels(out["artifacts"]["label_dump"]), reference)


def test_changed_settings_start_over(trained: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _run(capsys, "inference", _argv(trained, "changed", "--set", "inference.shard_size=8"))
    assert rc == 0, out["error"]
    rc, out = _run(capsys, "inference", _argv(trained, "changed", "--set", "inference.shard_size=8",
                                              "--set", "postprocess.mask_thres=[0.6]"))
    assert rc == 0, out["error"]
    job = trained["jobs"] / "changed"
    rec = read_job(job)
    assert "continued" not in rec["previous_attempts"][-1]
    assert (job / "previous_attempts" / "1" / "shards").is_dir()  # the old shards went with the old attempt
    for p in (job / "shards").glob("labels_*.jsonl"):
        assert read_labels_header(p, rec["resume_key"]) is not None


def test_ray_workers_survive_a_killed_worker_and_upload_to_s3(trained: dict[str, Any], s3_client: Any,
                                                              reference: list[dict[str, Any]]) -> None:
    s3_client.create_bucket(Bucket="labels")
    job = trained["jobs"] / "ray"
    proc = _start(trained, job.name, "--set", "inference.num_workers=2", "--set",
                  "inference.output_uri=s3://labels/run1")
    _wait_for_shards(job / "shards", 1, proc, timeout=240)
    killed = subprocess.run(["pkill", "-9", "-f", "ray::_RayShardLabeller"], check=False).returncode
    stdout, _ = proc.communicate(timeout=300)
    assert killed == 0, "no Ray labelling worker was found to kill"
    res = last_json_line(stdout)
    assert proc.returncode == 0, res["error"]
    local = Path(res["artifacts"]["label_dump"])
    assert_same_labels(_labels(local), reference)
    assert res["artifacts"]["output_uri"] == f"s3://labels/run1/{local.name}"
    body = s3_client.get_object(Bucket="labels", Key=f"run1/{local.name}")["Body"].read()
    assert body == local.read_bytes()


def test_per_shard_metrics_equal_training_validation(trained: dict[str, Any], reference: list[dict[str, Any]],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate (shards, metrics summed per shard file) gives the numbers training's Lightning validation loop
    recorded for the same checkpoint and validation set; inference with GT masks gives the same mIoU too."""
    history = [json.loads(line) for line in (trained["jobs"] / "t1" / "validation_history.jsonl").read_text()
               .splitlines()]
    val = ["--set", f"dataset.val_ann_path={trained['val_ann']}", "--set", f"dataset.val_img_dir={trained['val_img']}"]
    rc, ev = _run(capsys, "evaluate", ["--jobs-root", str(trained["jobs"]), "--parent-job-id", "t1",
                                       "--job-id", "ev", "--set", "evaluate.shard_size=1", *val])
    assert rc == 0, ev["error"]
    assert ev["artifacts"]["labelling"]["shards"] > 1
    for key in ("mIoU", "mIoU_instance", "mIoU_small", "mIoU_medium", "num_instances", "mIoU_box_fill",
                "mask_box_fill"):
        assert ev["metrics"][key] == pytest.approx(history[-1][key], abs=1e-6), key
    rc, inf = _run(capsys, "inference", ["--jobs-root", str(trained["jobs"]), "--parent-job-id", "t1",
                                         "--job-id", "scored", "--set", f"inference.ann_path={trained['val_ann']}",
                                         "--set", f"inference.img_dir={trained['val_img']}",
                                         "--set", "inference.load_mask=true", "--set", "inference.review_page=false"])
    assert rc == 0, inf["error"]
    assert inf["metrics"]["mIoU"] == pytest.approx(history[-1]["mIoU"], abs=1e-6)
