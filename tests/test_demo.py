"""`mal demo` end to end on a tiny run: train, evaluate, label with a review page, score the held-out family."""

from __future__ import annotations

from pathlib import Path

from mal_core.demo import HELDOUT_FAMILY, run_demo


def test_demo_runs_end_to_end_and_reports_the_untuned_family(tmp_path: Path, capsys) -> None:
    out = run_demo(tmp_path / "demo", train_images=6, val_images=3, overrides=[
        "train.num_epochs=1", "train.warmup_epochs=0", "train.batch_size=8", "dataset.num_workers_per_gpu=0"])
    printed = capsys.readouterr().out
    assert f"untuned '{HELDOUT_FAMILY}' family" in printed and "held-out:" in printed
    assert out["heldout_evaluate"]["metrics"]["num_instances"] > 0
    assert 0.0 <= out["heldout_evaluate"]["metrics"]["mIoU"] <= 1.0
    assert Path(out["inference"]["review_page"]).is_file()
    assert (tmp_path / "demo" / "data_heldout" / "val" / "annotations.json").is_file()
