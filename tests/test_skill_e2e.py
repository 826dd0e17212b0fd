"""End to end through the runner: direct train, then evaluate and inference chained by the parent job id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mal_core.data.decisions import decisions_document
from mal_core.skill.jobs import read_job
from mal_core.skill.runner import main
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, tiny_dataset


def _run(capsys: pytest.CaptureFixture[str], action: str, argv: list[str]) -> tuple[int, dict]:
    rc = main(action, argv)
    return rc, last_json_line(capsys.readouterr().out)


def test_train_then_evaluate_and_inference_by_parent(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAL_PROGRESS_BAR", "0")
    monkeypatch.setenv("MAL_JOBS_ROOT", str(tmp_path / "jobs"))
    jobs = tmp_path / "jobs"
    data = tiny_dataset(tmp_path / "data")
    rc, train = _run(capsys, "train", ["--request", "plain training, no HPO please", "--job-id", "t1",
                                       "--spec-overrides", json.dumps({**TINY_OVERRIDES, **data})])
    assert rc == 0, train["error"]
    assert train["status"] == "success" and train["route"] == "direct" and train["automl_policy"] == "off"
    assert train["results_dir"] == str(jobs / "t1") and Path(train["spec_path"]).is_file()
    assert len(train["artifacts"]["checkpoints"]) == 2 and Path(train["artifacts"]["best_checkpoint"]).is_file()
    assert 0.0 <= train["metrics"]["mIoU"] <= 1.0
    rec = read_job(jobs / "t1")
    assert [t["state"] for t in rec["transitions"]] == ["pending", "running", "success"]
    assert (jobs / "t1" / "logs" / "train.log").is_file()

    val = {"dataset.val_img_dir": data["dataset.val_img_dir"], "dataset.val_ann_path": data["dataset.val_ann_path"]}
    rc, ev = _run(capsys, "evaluate", ["--parent-job-id", "t1", "--job-id", "e1", "--spec-overrides", json.dumps(val)])
    assert rc == 0, ev["error"]
    assert ev["route"] == "direct" and ev["artifacts"]["checkpoint"] == train["artifacts"]["best_checkpoint"]
    metrics = json.loads(Path(ev["artifacts"]["metrics_json"]).read_text())
    assert metrics["mIoU"] == pytest.approx(ev["metrics"]["mIoU"])
    assert read_job(jobs / "e1")["parent_id"] == "t1"

    inf = {"inference.img_dir": data["dataset.val_img_dir"], "inference.ann_path": data["dataset.val_ann_path"],
           "inference.save_overlays": True, "inference.max_overlays": 1, "inference.output_formats": ["coco_polygon"]}
    rc, lab = _run(capsys, "inference", ["--parent-job-id", "t1", "--parent-checkpoint", "latest", "--job-id", "i1",
                                         "--spec-overrides", json.dumps(inf)])
    assert rc == 0, lab["error"]
    assert lab["artifacts"]["label_dump"] == str(jobs / "i1" / "inference.json")
    labelled = json.loads(Path(lab["artifacts"]["label_dump"]).read_text())
    assert labelled["annotations"] and all("segmentation" in a for a in labelled["annotations"])
    assert lab["artifacts"]["checkpoint"].endswith("model_epoch_001_step_00004.pth")
    assert Path(lab["artifacts"]["overlays"]).is_dir()
    polygons = json.loads(Path(lab["artifacts"]["formats"]["coco_polygon"]["file"]).read_text())
    assert {a["id"] for a in polygons["annotations"]} <= {a["id"] for a in labelled["annotations"]}
    assert all(isinstance(a["segmentation"], list) for a in polygons["annotations"])

    # convert, chained to the labelling job: its label file and its images; the label file is only read
    before = Path(lab["artifacts"]["label_dump"]).read_bytes()
    rc, conv = _run(capsys, "convert", ["--parent-job-id", "i1", "--job-id", "c1",
                                        "--set", "convert.formats=[yolo_seg, cvat]"])
    assert rc == 0, conv["error"]
    assert conv["status"] == "success" and read_job(jobs / "c1")["parent_id"] == "i1"
    assert Path(lab["artifacts"]["label_dump"]).read_bytes() == before
    yolo = conv["artifacts"]["formats"]["yolo_seg"]
    assert Path(yolo["file"]).parent == jobs / "c1" / "yolo_seg" and yolo["images"] == len(labelled["images"])
    linked = sorted((jobs / "c1" / "yolo_seg" / "images").iterdir())
    assert linked and all(p.resolve().parent == Path(data["dataset.val_img_dir"]).resolve() for p in linked)
    assert (jobs / "c1" / "cvat" / "annotations.xml").is_file()

    # the review loop: decisions -> training file (convert) -> fine-tune the labelling model on it (train)
    ids = [a["id"] for a in labelled["annotations"] if not a.get("iscrowd")]
    decisions = tmp_path / "decisions.json"
    decided = {ids[0]: "accepted", ids[1]: "rejected"}
    decisions.write_text(json.dumps(decisions_document("inference.json", decided)))
    rc, loop = _run(capsys, "convert", ["--parent-job-id", "i1", "--job-id", "c2",
                                        "--set", "convert.formats=[train_masks]",
                                        "--set", f"convert.decisions_path={decisions}"])
    assert rc == 0, loop["error"]
    assert loop["artifacts"]["model_checkpoint"] == lab["artifacts"]["checkpoint"]
    rc, tune = _run(capsys, "train", ["--parent-job-id", "c2", "--job-id", "t2", "--automl-policy", "off",
                                      "--spec-overrides", json.dumps({**TINY_OVERRIDES, "train.num_epochs": 1})])
    assert rc == 0, tune["error"]
    spec = yaml.safe_load((jobs / "t2" / "spec.yaml").read_text())
    assert spec["dataset"]["train_ann_path"] == loop["artifacts"]["training_file"]
    assert spec["dataset"]["train_img_dir"] == data["dataset.val_img_dir"]
    assert spec["train"]["pretrained_model_path"] == lab["artifacts"]["checkpoint"]
    assert tune["artifacts"]["mask_supervision"] == {"instances_with_masks": 1, "instances": len(ids)}

    # an explicit model setting that conflicts with the parent's checkpoint is refused
    rc, bad = _run(capsys, "inference", ["--parent-job-id", "t1", "--spec-overrides", json.dumps(inf),
                                         "--arch", "vit-mae-base/16"])
    assert rc == 2 and bad["error"]["field"] == "model.arch"
