"""export: a trained checkpoint -> ONNX (torch.onnx, onnx.checker, onnxruntime parity), and evaluate/inference
from the .onnx giving the PyTorch checkpoint's labels; bad ONNX/checkpoint input exits 2 naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mal_core.skill.runner import main
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, tiny_dataset


def _run(capsys: pytest.CaptureFixture[str], action: str, argv: list[str]) -> tuple[int, dict]:
    rc = main(action, argv)
    return rc, last_json_line(capsys.readouterr().out)


def _masks(path: str) -> dict[int, tuple[list[float], np.ndarray]]:
    data = json.loads(Path(path).read_text())
    return {a["id"]: (a["bbox"], mask_utils.decode(a["segmentation"]).astype(bool)) for a in data["annotations"]}


def mean_mask_iou(a: dict[int, tuple[list[float], np.ndarray]], b: dict[int, tuple[list[float], np.ndarray]]) -> float:
    """Mean IoU of the masks of the same annotation ids (two empty masks agree fully)."""
    ious = []
    for ann_id, (box, ma) in a.items():
        assert b[ann_id][0] == box
        mb = b[ann_id][1]
        union = np.logical_or(ma, mb).sum()
        ious.append(1.0 if union == 0 else np.logical_and(ma, mb).sum() / union)
    return float(np.mean(ious))


def test_export_then_label_from_onnx_matches_pytorch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAL_PROGRESS_BAR", "0")
    jobs = ["--jobs-root", str(tmp_path / "jobs")]
    data = tiny_dataset(tmp_path / "data")
    rc, train = _run(capsys, "train", [*jobs, "--automl-policy", "off", "--job-id", "t1",
                                       "--spec-overrides", json.dumps({**TINY_OVERRIDES, **data})])
    assert rc == 0, train["error"]

    rc, ex = _run(capsys, "export", [*jobs, "--parent-job-id", "t1", "--job-id", "x1"])
    assert rc == 0, ex["error"]
    assert ex["route"] == "direct" and ex["artifacts"]["checkpoint"] == train["artifacts"]["best_checkpoint"]
    onnx_file = Path(ex["artifacts"]["onnx_file"])
    assert onnx_file == tmp_path / "jobs" / "x1" / "model.onnx" and onnx_file.is_file()
    assert ex["artifacts"]["onnx_checker"] == "passed" and ex["artifacts"]["dynamic_batch"] is True
    assert 0.0 <= ex["metrics"]["max_abs_logit_diff"] < 1e-3

    inf = {"inference.img_dir": data["dataset.val_img_dir"], "inference.ann_path": data["dataset.val_ann_path"]}
    rc, torch_labels = _run(capsys, "inference", [*jobs, "--parent-job-id", "t1", "--job-id", "i-pt",
                                                  "--spec-overrides", json.dumps(inf)])
    assert rc == 0, torch_labels["error"]
    rc, onnx_labels = _run(capsys, "inference", [*jobs, "--parent-job-id", "x1", "--job-id", "i-onnx",
                                                 "--spec-overrides", json.dumps(inf)])
    assert rc == 0, onnx_labels["error"]
    assert onnx_labels["artifacts"]["checkpoint"] == str(onnx_file)
    pt, ox = _masks(torch_labels["artifacts"]["label_dump"]), _masks(onnx_labels["artifacts"]["label_dump"])
    assert set(pt) == set(ox) and len(pt) > 0
    iou = mean_mask_iou(pt, ox)
    with capsys.disabled():
        print(f"\nONNX vs PyTorch mean mask IoU over {len(pt)} labels: {iou:.5f}; max |logit diff| "
              f"{ex['metrics']['max_abs_logit_diff']:.2e}")
    assert iou >= 0.99
    labelled = json.loads(Path(onnx_labels["artifacts"]["label_dump"]).read_text())["annotations"]
    assert all(0.0 <= a["score"] <= 1.0 and set(a["quality"]) >= {"flip", "teacher", "margin"} for a in labelled)

    val = {"dataset.val_img_dir": data["dataset.val_img_dir"], "dataset.val_ann_path": data["dataset.val_ann_path"]}
    rc, ev = _run(capsys, "evaluate", [*jobs, "--job-id", "e-onnx", "--spec-overrides",
                                       json.dumps({**val, "evaluate.checkpoint": str(onnx_file)})])
    assert rc == 0, ev["error"]
    assert ev["metrics"]["mIoU"] == pytest.approx(train["metrics"]["mIoU"], abs=0.01)


def test_bad_onnx_and_checkpoints_exit_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx
    import torch
    from onnx import TensorProto, helper

    from mal_core.skill.testing import minimal_coco

    data = minimal_coco(tmp_path / "data")
    jobs = ["--jobs-root", str(tmp_path / "jobs")]
    inf = ["--set", f"inference.img_dir={data['img']}", "--set", f"inference.ann_path={data['ann']}"]
    foreign = tmp_path / "foreign.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(foreign))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    for path, words in ((foreign, "not a MAL export"), (corrupt, "not a valid ONNX file")):
        rc, out = _run(capsys, "inference", [*jobs, *inf, "--set", f"inference.checkpoint={path}"])
        assert rc == 2, out
        assert out["error"]["field"] == "inference.checkpoint" and str(path) in out["error"]["message"]
        assert words in out["error"]["message"]

    wrong = tmp_path / "weights.pth"
    torch.save({"something": torch.zeros(1)}, wrong)
    rc, out = _run(capsys, "export", [*jobs, "--set", f"export.checkpoint={wrong}"])
    assert rc == 2 and out["error"]["field"] == "export.checkpoint" and str(wrong) in out["error"]["message"]
    rc, out = _run(capsys, "export", [*jobs, "--set", f"export.checkpoint={foreign}"])
    assert rc == 2 and out["error"]["field"] == "export.checkpoint" and "already an ONNX" in out["error"]["message"]
    rc, out = _run(capsys, "export", [*jobs, "--set", f"export.checkpoint={wrong}", "--set",
                                      "export.onnx_file=../x.onnx", "--dry-run"])
    assert rc == 2 and out["error"]["field"] == "export.onnx_file"
    rc, out = _run(capsys, "export", [*jobs, "--set", f"export.checkpoint={wrong}", "--set", "export.batch_size=0",
                                      "--dry-run"])
    assert rc == 2 and out["error"]["field"] == "export.batch_size"
