"""Score calibration measured on labels it was not fitted on, and the per-box cost of the consistency terms.

Usage: python bench/calibration.py [--coco-checkpoint CKPT] [--family-run DIR] [--out bench/results/calibration]

For each pair (checkpoint, data): label the train split and the val split with ground-truth masks
(``inference.load_mask``, the same labelling path as inference), fit score -> IoU (isotonic, the inference run's own
``calibration.json``) on the train labels and measure on the val labels: the expected calibration error (10 equal
score groups, :func:`mal_core.engine.calibration.calibration_error`), the same for the raw score read as an IoU,
and the review curve predicted from the train fit beside the one the val set's true IoUs give. Pairs: coco128 with a
checkpoint trained on coco128's train boxes; a synthetic family held out of every choice (``touching`` by default,
its own checkpoint trained on its train boxes, as ``bench/quality.py --family touching`` makes it); and that
family's val set labelled by the coco128 checkpoint with the coco128 fit (a calibration carried to other data).
Raw results: ``<out>/calibration.json``; the fitted curves: ``<out>/calibration_<pair>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mal_core.config import parse_spec  # noqa: E402
from mal_core.config.loader import read_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GEN = Path("/tmp/b21/gen")


def label_split(spec: str, checkpoint: str, folder: Path, split: str, tmp: Path) -> dict[str, Any]:
    """Label ``folder/<split>`` with GT masks; returns the run's artifacts, its labels and its calibration."""
    from mal_core.engine.inference import run_inference

    ann, img = folder / split / "annotations.json", folder / split / "images"
    out = tmp / f"{folder.name}_{split}_{Path(checkpoint).parent.parent.name}"
    overrides = [f"results_dir={out}", f"inference.checkpoint={checkpoint}", "inference.load_mask=true",
                 f"inference.ann_path={ann}", f"inference.img_dir={img}", "inference.review_page=false",
                 f"dataset.val_ann_path={ann}", f"dataset.val_img_dir={img}",
                 f"dataset.train_ann_path={ann}", f"dataset.train_img_dir={img}"]
    cfg, explicit = parse_spec(read_yaml(spec), overrides)
    res = run_inference(cfg, explicit)
    data = json.loads(Path(res.artifacts["label_dump"]).read_text())
    labels = [a for a in data["annotations"] if "iou" in a]
    return {"artifacts": res.artifacts, "labels": labels, "categories": data["categories"],
            "calibration": json.loads((out / "calibration.json").read_text()), "images": data["images"]}


def stats_of(labels: list[dict[str, Any]]) -> Any:
    """A one-class :class:`LabelStats` of labels with their true IoU."""
    from mal_core.engine.calibration import LabelStats

    stats = LabelStats(1)
    for a in labels:
        stats.add(1, a["score"], a.get("flags", []), a["iou"])
    return stats


def measure(fit_run: dict[str, Any], eval_run: dict[str, Any]) -> dict[str, Any]:
    """Calibration figures of ``fit_run``'s curve on ``eval_run``'s labels."""
    from mal_core.engine.calibration import Calibration, calibration_error, fit_calibration, review_curve

    fitted = Calibration.from_json(fit_run["calibration"])
    ev = stats_of(eval_run["labels"])
    identity = Calibration((0.0, 1.0), (0.0, 1.0), 0)
    self_fit = fit_calibration(ev)
    scores = np.array([a["score"] for a in eval_run["labels"]])
    ious = np.array([a["iou"] for a in eval_run["labels"]])
    return {"fit_labels": fitted.num_labels, "eval_labels": len(ious),
            "ece_heldout": round(calibration_error(fitted, ev), 4),
            "ece_in_sample_on_fit_set": round(calibration_error(fitted, stats_of(fit_run["labels"])), 4),
            "ece_eval_set_self_fit": round(calibration_error(self_fit, ev), 4) if self_fit else None,
            "ece_raw_score_as_iou": round(calibration_error(identity, ev), 4),
            "mean_abs_error_per_label": round(float(np.abs(fitted.expected(scores) - ious).mean()), 4),
            "mean_expected_iou": round(float(fitted.expected(scores).mean()), 4),
            "mean_actual_iou": round(float(ious.mean()), 4),
            "review_curve": review_curve(fitted, ev)}


def consistency_cost(run: dict[str, Any], repeats: int = 3) -> dict[str, float]:
    """Seconds per box of the consistency terms on the pasted regions of a run's masks (the box expanded by the
    recipe's test margin, cut to the image), best of ``repeats``."""
    import torch
    from pycocotools import mask as mask_utils

    from mal_core.engine.labelling import region_consistency

    cases = []
    for a in run["labels"]:
        rle = dict(a["segmentation"])
        rle["counts"] = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
        m = mask_utils.decode(rle).astype(bool)
        h, w = m.shape
        x, y, bw, bh = a["bbox"]
        mx, my = 0.5 * bw, 0.5 * bh  # about the recipe's margin around the box
        region = (max(int(x - mx), 0), max(int(y - my), 0), min(int(x + bw + mx) + 1, w), min(int(y + bh + my) + 1, h))
        cases.append((torch.from_numpy(m[region[1]:region[3], region[0]:region[2]].copy()), region,
                      torch.tensor([x, y, x + bw, y + bh])))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for mask, region, box in cases:
            region_consistency(mask, region, box)
        best = min(best, time.perf_counter() - t0)
    return {"boxes": len(cases), "seconds_per_box": best / max(len(cases), 1)}


def main(argv: list[str] | None = None) -> int:
    """Label, fit, measure, print and write the figures; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coco", default="/work/shared/data/coco128")
    ap.add_argument("--coco-checkpoint", default=str(GEN / "quality_coco128_budget600/train/mal_model_latest.pth"))
    ap.add_argument("--family-run", default=str(GEN / "quality_touching_budget600"),
                    help="a bench/quality.py --family run folder (data/ and train/mal_model_latest.pth)")
    ap.add_argument("--spec", default=str(ROOT / "examples" / "cpu_tiny.yaml"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "calibration"))
    args = ap.parse_args(argv)
    os.environ.setdefault("MAL_PROGRESS_BAR", "0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    family = Path(args.family_run)
    family_ckpt = str(family / "train" / "mal_model_latest.pth")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result: dict[str, Any] = {"cpu": cpu, "cpus": os.cpu_count(), "coco_checkpoint": args.coco_checkpoint,
                              "family_checkpoint": family_ckpt, "pairs": {}}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        coco_train = label_split(args.spec, args.coco_checkpoint, Path(args.coco), "train", tmp)
        coco_val = label_split(args.spec, args.coco_checkpoint, Path(args.coco), "val", tmp)
        fam_train = label_split(args.spec, family_ckpt, family / "data", "train", tmp)
        fam_val = label_split(args.spec, family_ckpt, family / "data", "val", tmp)
        fam_val_coco = label_split(args.spec, args.coco_checkpoint, family / "data", "val", tmp)
        name = family.name.removeprefix("quality_").split("_")[0]
        pairs = {"coco128 train -> val": (coco_train, coco_val),
                 f"{name} train -> val (its own checkpoint)": (fam_train, fam_val),
                 f"coco128 train -> {name} val (coco128 checkpoint)": (coco_train, fam_val_coco)}
        for key, (fit, ev) in pairs.items():
            result["pairs"][key] = measure(fit, ev)
        for key, run in (("coco128_train", coco_train), (f"{name}_train", fam_train)):
            (out / f"calibration_{key}.json").write_text(json.dumps(run["calibration"], indent=1) + "\n")
        result["label_summary_coco128_val"] = coco_val["artifacts"]["label_summary"]
        result["labelling_coco128_val"] = coco_val["artifacts"]["labelling"]
        result["consistency_cost_coco128_val"] = consistency_cost(coco_val)
    result["seconds"] = round(time.time() - t0, 1)
    (out / "calibration.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"CPU: {cpu} ({os.cpu_count()} visible)")
    for key, r in result["pairs"].items():
        print(f"{key}: ECE held out {r['ece_heldout']:.4f} (in sample on the fit set "
              f"{r['ece_in_sample_on_fit_set']:.4f}, raw score as IoU {r['ece_raw_score_as_iou']:.4f});"
              f" |expected - actual| per label "
              f"{r['mean_abs_error_per_label']:.4f}; mean expected {r['mean_expected_iou']:.4f} vs actual "
              f"{r['mean_actual_iou']:.4f} ({r['fit_labels']} fit / {r['eval_labels']} eval labels)")
        for row in r["review_curve"]:
            print(f"   review {row['labels']:>4} lowest ({row['fraction']:.0%}): expected {row['before']:.3f} -> "
                  f"{row['after']:.3f}; actual {row['actual_before']:.3f} -> {row['actual_after']:.3f}")
    c = result["consistency_cost_coco128_val"]
    lab = result["labelling_coco128_val"]
    print(f"consistency terms: {1e6 * c['seconds_per_box']:.0f} us per box ({c['boxes']} boxes); labelling ran at "
          f"{lab['boxes_per_second']} boxes/s ({1e3 / lab['boxes_per_second']:.1f} ms per box)")
    print("flags on coco128 val:", result["label_summary_coco128_val"]["flags"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
