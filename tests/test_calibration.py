"""Score calibration: the isotonic fit, the review curve and the calibration error on hand-computable histograms,
and an inference run with GT masks (expected IoU, flag counts, per-class summaries, resume, the calibration file
used by a later run without GT)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mal_core.engine.calibration import (
    Calibration,
    LabelStats,
    bin_centres,
    calibration_error,
    class_summaries,
    fit_calibration,
    review_curve,
    score_bin,
)

CENTRES = bin_centres()


def test_the_isotonic_fit_is_monotone_and_recovers_a_step() -> None:
    rng = np.random.default_rng(0)
    stats = LabelStats(2)
    for s in rng.uniform(0, 1, 2000):
        stats.add(int(rng.integers(1, 3)), float(s), [], 0.2 if s < 0.5 else 0.9)
    cal = fit_calibration(stats)
    assert cal is not None and cal.num_labels == 2000
    assert np.all(np.diff(cal.iou) >= 0)
    assert cal.expected([0.05, 0.3, 0.49]).tolist() == pytest.approx([0.2, 0.2, 0.2])
    assert cal.expected([0.51, 0.8, 0.99]).tolist() == pytest.approx([0.9, 0.9, 0.9])
    noisy = LabelStats(1)
    for s in rng.uniform(0, 1, 2000):
        noisy.add(1, float(s), [], float(np.clip(s + rng.normal(0, 0.3), 0, 1)))
    fitted = fit_calibration(noisy)
    assert fitted is not None and np.all(np.diff(fitted.iou) >= 0)
    assert np.all(np.diff(fitted.expected(np.linspace(0, 1, 101))) >= 0)


def test_pooling_a_violating_pair_weights_by_counts() -> None:
    stats = LabelStats(1)
    stats.add(1, 0.2, [], 0.6)  # one label at IoU 0.6 below three at 0.2: pooled (0.6 + 3 x 0.2) / 4 = 0.3
    for _ in range(3):
        stats.add(1, 0.8, [], 0.2)
    cal = fit_calibration(stats)
    assert cal is not None
    assert cal.iou == pytest.approx((0.3, 0.3))
    assert fit_calibration(LabelStats(1)) is None  # no GT label: no calibration


def _two_level_stats(gt: bool) -> tuple[Calibration, LabelStats]:
    """10 labels: 2 at the centre of bin 20 (expected 0.3; true 0.2 and 0.4), 8 at bin 180 (expected and true
    0.8)."""
    cal = Calibration((float(CENTRES[20]), float(CENTRES[180])), (0.3, 0.8), 10)
    stats = LabelStats(1)
    for iou in (0.2, 0.4):
        stats.add(1, float(CENTRES[20]), [], iou if gt else None)
    for _ in range(8):
        stats.add(1, float(CENTRES[180]), [], 0.8 if gt else None)
    return cal, stats


def test_the_review_curve_by_hand() -> None:
    cal, stats = _two_level_stats(gt=True)
    rows = review_curve(cal, stats, fractions=(0.1, 0.2, 0.3))
    assert [r["labels"] for r in rows] == [1, 2, 3]
    assert all(r["before"] == pytest.approx(0.7) for r in rows)  # (2 x 0.3 + 8 x 0.8) / 10
    assert [r["after"] for r in rows] == pytest.approx([0.77, 0.84, 0.86])  # (7 - k-th expected + k) / 10
    assert [r["actual_before"] for r in rows] == pytest.approx([0.7, 0.7, 0.7])
    assert [r["actual_after"] for r in rows] == pytest.approx([0.77, 0.84, 0.86])
    _cal, without_gt = _two_level_stats(gt=False)
    assert "actual_after" not in review_curve(cal, without_gt)[0]


def test_the_calibration_error_by_hand() -> None:
    flat = Calibration((0.0, 1.0), (0.5, 0.5), 0)
    stats = LabelStats(1)
    for score, iou in ((0.05, 0.3), (0.05, 0.3), (0.95, 0.9), (0.95, 0.9)):
        stats.add(1, score, [], iou)
    assert calibration_error(flat, stats) == pytest.approx(0.5 * 0.2 + 0.5 * 0.4)
    assert calibration_error(Calibration((0.05, 0.95), (0.3, 0.9), 0), stats) == pytest.approx(0.0, abs=1e-3)
    assert np.isnan(calibration_error(flat, LabelStats(1)))


def test_stats_add_up_and_give_per_class_summaries() -> None:
    whole, a, b = LabelStats(2), LabelStats(2), LabelStats(2)
    rows = [(1, 0.1, ["partial_box"], 0.5), (2, 0.7, [], 0.9), (1, 0.9, ["empty", "partial_box"], None),
            (2, 1.0, ["fragmented"], 0.7)]
    for n, row in enumerate(rows):
        whole.add(*row)
        (a if n % 2 else b).add(*row)
    merged = LabelStats(2)
    merged.merge(json.loads(json.dumps(a.state())))
    merged.merge(json.loads(json.dumps(b.state())))
    for name in ("count", "gt_count", "iou_sum", "score_sum"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name)), name
    assert score_bin(1.0) == score_bin(0.999) == 199 and score_bin(0.0) == 0
    cats = [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]
    summary = class_summaries(merged, cats, Calibration((0.0, 1.0), (0.0, 1.0), 0))
    assert summary["cat"] == {"category_id": 7, "count": 2, "mean_score": 0.5,
                              "flags": {"empty": 1, "partial_box": 2}, "mIoU": 0.5,
                              "expected_mIoU": pytest.approx((CENTRES[20] + CENTRES[180]) / 2, abs=1e-4)}
    assert summary["dog"]["count"] == 2 and summary["dog"]["mIoU"] == 0.8 and summary["dog"]["flags"] == {
        "fragmented": 1}


def test_a_calibration_file_round_trips_and_a_broken_one_is_refused() -> None:
    cal = Calibration((0.1, 0.5), (0.2, 0.7), 5, {"checkpoint_sha256": "x"})
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal
    with pytest.raises(ValueError):
        Calibration.from_json({**cal.to_json(), "expected_iou": [0.7, 0.2]})
    with pytest.raises(ValueError):
        Calibration.from_json({"kind": "something else"})


# ----- an inference run with GT masks -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny trained job and its validation set (with GT masks)."""
    from mal_core.skill.runner import main
    from mal_core.skill.testing import TINY_OVERRIDES, tiny_dataset

    tmp = tmp_path_factory.mktemp("calibration")
    data = tiny_dataset(tmp / "data")
    os.environ["MAL_PROGRESS_BAR"] = "0"
    rc = main("train", ["--jobs-root", str(tmp / "jobs"), "--automl-policy", "off", "--job-id", "t1",
                        "--spec-overrides", json.dumps({**TINY_OVERRIDES, **data, "train.num_epochs": 1})])
    assert rc == 0
    return {"jobs": tmp / "jobs", "ann": data["dataset.val_ann_path"], "img": data["dataset.val_img_dir"]}


def _infer(t: dict[str, Any], job_id: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    from mal_core.skill.runner import main
    from mal_core.skill.testing import last_json_line

    capsys.readouterr()
    rc = main("inference", ["--jobs-root", str(t["jobs"]), "--parent-job-id", "t1", "--job-id", job_id,
                            "--set", f"inference.ann_path={t['ann']}", "--set", f"inference.img_dir={t['img']}",
                            "--set", "inference.shard_size=1", "--set", "dataset.num_workers_per_gpu=0", *extra])
    out = last_json_line(capsys.readouterr().out)
    assert rc == 0, out.get("error")
    return out


def test_inference_with_gt_calibrates_counts_and_resumes(trained: dict[str, Any],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = _infer(trained, "gt", capsys, "--set", "inference.load_mask=true")
    arts = out["artifacts"]
    labels = [a for a in json.loads(Path(arts["label_dump"]).read_text())["annotations"] if "score" in a]
    assert labels and all({"consistency", "flags", "expected_iou", "iou"} <= set(a) for a in labels)
    cal = Calibration.from_json(json.loads(Path(arts["calibration"]).read_text()))
    assert cal.num_labels == len(labels)
    for a in labels:
        assert a["expected_iou"] == pytest.approx(float(cal.expected(a["score"])), abs=1e-4)
        assert set(a["consistency"]) == {"box_iou", "parts", "fill", "holes"}
    summary = arts["label_summary"]
    assert summary["labels"] == len(labels)
    for flag, n in summary["flags"].items():
        assert n == sum(flag in a["flags"] for a in labels), flag
    cats = {c["id"]: c["name"] for c in json.loads(Path(trained["ann"]).read_text())["categories"]}
    for cat_id, name in cats.items():
        mine = [a for a in labels if a["category_id"] == cat_id]
        if not mine:
            assert name not in summary["classes"]
            continue
        row = summary["classes"][name]
        assert row["count"] == len(mine)
        assert row["mean_score"] == pytest.approx(np.mean([a["score"] for a in mine]), abs=1e-4)
        assert row["mIoU"] == pytest.approx(np.mean([a["iou"] for a in mine]), abs=1e-4)
    calib = summary["calibration"]
    assert [r["fraction"] for r in calib["review_curve"]] == [0.01, 0.05, 0.10, 0.25]
    assert all(r["after"] >= r["before"] for r in calib["review_curve"])
    # the isotonic fit keeps the mean: the expected mean IoU over labels is the true one (up to the bin centres)
    assert calib["expected_mIoU_instance"] == pytest.approx(np.mean([a["iou"] for a in labels]), abs=0.02)
    page = Path(arts["review_page"]).read_text()
    assert "lowest-scored labels" in page and "consistency flags" in page

    shards = sorted(Path(arts["shards"]).glob("labels_*.jsonl"))
    assert len(shards) > 1
    for p in shards[::2]:  # a run that lost half its shards labels them again and adds up to the same summary
        p.unlink()
    again = _infer(trained, "gt", capsys, "--set", "inference.load_mask=true")["artifacts"]
    assert 0 < again["labelling"]["shards_resumed"] < again["labelling"]["shards"]
    assert _close(again["label_summary"], summary)

    # a calibration beside the checkpoint gives a run without GT its expected IoUs
    ckpt = Path(read_checkpoint(trained))
    shutil.copy(arts["calibration"], ckpt.parent / "calibration.json")
    plain = _infer(trained, "plain", capsys)["artifacts"]
    assert "calibration" not in plain  # nothing fitted
    assert "calibration.json" in plain["label_summary"]["calibration"]["source"]
    plain_labels = [a for a in json.loads(Path(plain["label_dump"]).read_text())["annotations"] if "score" in a]
    assert all("iou" not in a for a in plain_labels)
    assert [a["expected_iou"] for a in plain_labels] == pytest.approx([a["expected_iou"] for a in labels], abs=2e-3)
    assert "mIoU" not in next(iter(plain["label_summary"]["classes"].values()))
    (ckpt.parent / "calibration.json").unlink()
    bare = _infer(trained, "bare", capsys)["artifacts"]
    assert "calibration" not in bare["label_summary"]
    assert all("expected_iou" not in a for a in json.loads(Path(bare["label_dump"]).read_text())["annotations"])


def read_checkpoint(t: dict[str, Any]) -> str:
    """The checkpoint the inference jobs of the parent training job use."""
    from mal_core.skill.jobs import read_job

    return str(read_job(t["jobs"] / "gt")["artifacts"]["checkpoint"])


def _close(a: Any, b: Any, tol: float = 1e-4) -> bool:
    """Equal structures with floats within ``tol``."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= tol
    return a == b
