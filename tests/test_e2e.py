"""End to end on CPU through the real Lightning Trainer: train -> evaluate -> inference, resume, bad checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from mal_core.cli import main
from mal_core.data.coco import decode_segmentation
from mal_core.data.synthetic import generate_synthetic_dataset

TINY = {
    "dataset": {"crop_size": 64, "min_obj_size": 16.0, "num_workers_per_gpu": 0},
    "model": {"arch": "vit-mae-nano/8", "mask_head_hidden_channel": 16, "mask_head_out_channel": 16},
    "train": {"num_epochs": 2, "warmup_epochs": 0, "batch_size": 8, "lr": 1e-5, "use_amp": False,
              "crf_num_iter": 3, "checkpoint_interval": 1, "validation_interval": 1, "loss_mil_step": 2,
              "loss_crf_step": 2},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = generate_synthetic_dataset(root / "data", num_train_images=6, num_val_images=3, image_size=96, seed=3)
    spec = {**TINY, "results_dir": str(root / "train"),
            "dataset": {**TINY["dataset"], "train_ann_path": str(data.train_ann_path),
                        "train_img_dir": str(data.train_img_dir), "val_ann_path": str(data.val_ann_path),
                        "val_img_dir": str(data.val_img_dir)}}
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return root, data, path


def _run(capsys, argv, jobs_root):
    if argv[0] == "train":
        argv = [*argv, "--automl-policy", "off"]
    code = main([*argv, "--jobs-root", str(jobs_root)])
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[-1]) if out else None)


def test_train_evaluate_infer_and_resume(workspace, capsys, monkeypatch):
    monkeypatch.setenv("MAL_PROGRESS_BAR", "0")
    root, data, spec = workspace
    code, res = _run(capsys, ["train", "-e", str(spec), "--job-id", "t1"], root / "jobs")
    assert code == 0, res
    train_dir = root / "jobs" / "t1"  # the job folder: the spec file's results_dir does not apply to a job
    assert res["results_dir"] == str(train_dir) and not (root / "train").exists()
    assert res["status"] == "success" and res["route"] == "direct" and res["error"] is None
    names = sorted(p.split("/")[-1] for p in res["artifacts"]["checkpoints"])
    assert len(names) == 2 and names[0].startswith("model_epoch_000_step_") and names[1].startswith("model_epoch_001")
    assert (train_dir / "mal_model_latest.pth").is_symlink()
    assert 0.0 <= res["metrics"]["mIoU"] <= 1.0
    history = [json.loads(x) for x in (train_dir / "validation_history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]
    assert list((train_dir / "lightning_logs").rglob("events.out.tfevents*"))  # TensorBoard log
    ckpt = torch.load(train_dir / "mal_model_latest.pth", weights_only=True)
    assert ckpt["mal"]["spec"]["model"]["arch"] == "vit-mae-nano/8" and ckpt["epoch"] == 1

    # resume: same job id, one more epoch -> continues from the job's latest checkpoint. A run killed after writing
    # an epoch's validation line but before its checkpoint leaves a line the resumed run must not keep twice.
    with (train_dir / "validation_history.jsonl").open("a") as fh:
        fh.write(json.dumps({"epoch": 2, "step": 999, "mIoU": -1.0}) + "\n")
    code, res2 = _run(capsys, ["train", "-e", str(spec), "--job-id", "t1", "--set", "train.num_epochs=3"],
                      root / "jobs")
    assert code == 0 and res2["artifacts"]["resumed_from"].endswith(names[1])
    assert len(res2["artifacts"]["checkpoints"]) == 3
    history = [json.loads(x) for x in (train_dir / "validation_history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2] and history[-1]["mIoU"] >= 0.0
    ckpt3 = torch.load(train_dir / "mal_model_latest.pth", weights_only=True)
    assert ckpt3["epoch"] == 2 and ckpt3["global_step"] > ckpt["global_step"]

    latest = str(train_dir / "mal_model_latest.pth")
    code, ev = _run(capsys, ["evaluate", "-e", str(spec), "--job-id", "e1",
                             "--set", f"evaluate.checkpoint={latest}", "--set", "evaluate.comp_clustering=true"],
                        root / "jobs")
    assert code == 0, ev
    metrics = json.loads((root / "jobs" / "e1" / "metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(ev["metrics"]["mIoU"]) and metrics["num_instances"] > 0
    assert 0.0 < metrics["cluster_score"] < 2.0  # squared distance of unit vectors to their normalised centroid
    assert ev["metrics"]["mIoU"] == pytest.approx(json.loads(
        (train_dir / "validation_history.jsonl").read_text().splitlines()[-1])["mIoU"], abs=1e-6)

    code, inf = _run(capsys, [
        "inference", "-e", str(spec), "--job-id", "i1", "--set", f"inference.checkpoint={latest}",
        "--set", f"inference.ann_path={data.train_ann_path}", "--set", f"inference.img_dir={data.train_img_dir}",
        "--set", "inference.save_overlays=true", "--set", "inference.use_flip_test=true"], root / "jobs")
    assert code == 0, inf
    source = json.loads(data.train_ann_path.read_text())
    out = json.loads(open(inf["artifacts"]["label_dump"]).read())
    assert inf["artifacts"]["label_dump"] == str(root / "jobs" / "i1" / "inference.json")
    assert out["images"] == source["images"] and out["categories"] == source["categories"]
    assert [a["id"] for a in out["annotations"]] == [a["id"] for a in source["annotations"]]
    for ann, src in zip(out["annotations"], source["annotations"], strict=True):
        assert ann["bbox"] == src["bbox"] and ann["image_id"] == src["image_id"]
        img = next(i for i in source["images"] if i["id"] == ann["image_id"])
        mask = decode_segmentation(ann["segmentation"], img["height"], img["width"])
        assert isinstance(ann["segmentation"]["counts"], str) and ann["area"] == int(mask.sum())
        x, y, w, h = src["bbox"]
        outside = mask.copy()
        outside[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] = False
        assert not outside.any()  # masks never leave their box
        assert 0.0 <= ann["score"] <= 1.0
    assert len(list((root / "jobs" / "i1" / "overlays").glob("*.png"))) == len(source["images"])
    assert not list((root / "jobs" / "i1").glob(".*.tmp"))


def test_wrong_kind_of_checkpoint_and_conflicting_arch_exit_2(workspace, capsys, tmp_path):
    root, data, spec = workspace
    torch.save({"model": {"blocks.0.norm1.weight": torch.ones(4)}}, tmp_path / "mae.pth")
    jobs = ["--jobs-root", str(tmp_path / "jobs")]
    code = main(["evaluate", "-e", str(spec), "--set", f"evaluate.checkpoint={tmp_path / 'mae.pth'}", *jobs])
    out = capsys.readouterr()
    err = json.loads(out.out.strip().splitlines()[-1])["error"]
    assert code == 2 and "not a MAL checkpoint" in err["message"] and err["field"] == "evaluate.checkpoint"
    code = main(["evaluate", "-e", str(spec), "--set", f"evaluate.checkpoint={tmp_path / 'nope.pth'}", *jobs])
    assert code == 2 and "does not exist" in capsys.readouterr().out


def test_bad_input_exit_2_names_the_field(workspace, capsys, tmp_path):
    root, data, spec = workspace
    jobs = ["--jobs-root", str(tmp_path / "jobs"), "--automl-policy", "off"]
    assert main(["train", "-e", str(spec), "--set", "train.num_epochs=zero", *jobs]) == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]["field"] == "train.num_epochs"
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert main(["train", "-e", str(spec), "--set", f"dataset.train_ann_path={bad}", *jobs]) == 2
    assert "not valid JSON" in capsys.readouterr().out
