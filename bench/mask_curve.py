"""Mixed supervision on real images: val mIoU against the share of training instances that come with a mask, and
the review loop (fix the lowest-scored 10% of labels vs a random 10%, retrain, relabel).

Each arm runs ``bench/quality.py`` (the recipe ``examples/cpu_tiny.yaml`` with ``train.time_budget_s``, then labelling
the val split) on a training file made from ``<data>/train/annotations.json``: every box, with its mask kept for a
seeded random share of the instances. The loop arms start from the box-only arm's checkpoint: it labels the train
split, the "reviewer" replaces the lowest-scored (or random) 10% of those labels by their true masks, and the model
is fine-tuned on that file (masks only there, boxes elsewhere). Arms run in the order given, one at a time; results
go to ``<out>/mask_curve.json`` after each arm, so a cut-short run keeps what it finished.

    python bench/mask_curve.py --data ../shared/data/coco128 --budget 300 \\
        --arms 0:0 10:0 100:0 5:0 25:0 loop:lowest loop:random 10:1 10:2 5:1 5:2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def training_file(data: Path, out: Path, keep: set[int] | None, share: float, seed: int) -> Path:
    """``data``'s train annotations with masks only for ``keep`` ids (or a seeded random ``share``)."""
    doc = json.loads((data / "train" / "annotations.json").read_text())
    ids = sorted(a["id"] for a in doc["annotations"] if not a.get("iscrowd", 0))
    if keep is None:
        keep = set(random.Random(seed).sample(ids, round(share * len(ids))))
    doc["annotations"] = [a if a["id"] in keep else {k: v for k, v in a.items() if k != "segmentation"}
                          for a in doc["annotations"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
    return out


def run_arm(name: str, data: Path, train_file: Path, budget: int, out: Path, extra: list[str]) -> dict[str, Any]:
    """bench/quality.py on ``train_file``; returns its MAL row and timing."""
    cmd = [sys.executable, str(ROOT / "bench" / "quality.py"), "--data", str(data), "--name", name, "--out", str(out),
           "--no-grabcut", "--set", f"train.time_budget_s={budget}", "--set",
           f"dataset.train_ann_path={train_file}", *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MAL_PROGRESS_BAR": "0"})
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout.strip().split("\n\n")[-1], flush=True)
    res = json.loads((out / f"quality_{name}" / f"quality_{name}.json").read_text())
    mal = next(v for k, v in res["results"].items() if k.startswith("MAL"))
    return {"name": name, "mIoU": mal["mIoU"], "mIoU_instance": mal["mIoU_instance"], "wall_s": time.time() - t0,
            "epochs": (res.get("time_budget") or {}).get("epochs_run"), "box_fill": res["results"]["box_fill"]["mIoU"],
            "ellipse": res["results"]["ellipse"]["mIoU"],
            "checkpoint": str(out / f"quality_{name}" / "train" / "mal_model_latest.pth")}


def label_train(data: Path, checkpoint: str, out: Path) -> list[dict[str, Any]]:
    """The box-only model's labels of the train split, scored against the true masks."""
    from mal_core.config import parse_spec
    from mal_core.config.loader import read_yaml
    from mal_core.engine.inference import run_inference

    cfg, explicit = parse_spec(read_yaml(ROOT / "examples" / "cpu_tiny.yaml"), [
        f"results_dir={out}", f"inference.checkpoint={checkpoint}", "inference.load_mask=true",
        f"inference.ann_path={data / 'train' / 'annotations.json'}", f"inference.img_dir={data / 'train' / 'images'}"])
    res = run_inference(cfg, explicit)
    return [a for a in json.loads(Path(res.artifacts["label_dump"]).read_text())["annotations"] if "iou" in a]


def main() -> None:
    """Run the arms and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "coco128")
    ap.add_argument("--budget", type=int, default=300, help="train.time_budget_s of every arm")
    ap.add_argument("--arms", nargs="+", default=["0:0", "10:0", "100:0", "5:0", "25:0", "loop:lowest",
                                                  "loop:random", "10:1", "10:2", "5:1", "5:2"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench_output" / "mask_curve")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "mask_curve.json"
    rows: list[dict[str, Any]] = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {r["arm"] for r in rows}
    tag = args.data.name
    for arm in args.arms:
        if arm in done:
            continue
        kind, value = arm.split(":")
        if kind == "loop":
            base = next(r for r in rows if r["arm"] == "0:0")
            labels = label_train(args.data, base["checkpoint"], args.out / "loop_labels")
            k = round(0.10 * len(labels))
            chosen = sorted(labels, key=lambda a: a["score"])[:k] if value == "lowest" else \
                random.Random(0).sample(labels, k)
            fixed = {a["id"] for a in chosen}
            delivered = [1.0 if a["id"] in fixed else a["iou"] for a in labels]
            train_file = training_file(args.data, args.out / f"loop_{value}.json", fixed, 0.0, 0)
            row = run_arm(f"{tag}_loop_{value}", args.data, train_file, args.budget, args.out,
                          ["--set", f"train.pretrained_model_path={base['checkpoint']}"])
            row.update(arm=arm, share=0.10, fixed=value, train_labels_miou_before=sum(a["iou"] for a in labels)
                       / len(labels), train_labels_miou_after_review=sum(delivered) / len(delivered))
        else:
            share, seed = float(kind) / 100, int(value)
            train_file = training_file(args.data, args.out / f"train_{kind}_{seed}.json", None, share, seed)
            row = run_arm(f"{tag}_masks{kind}_s{seed}", args.data, train_file, args.budget, args.out, [])
            row.update(arm=arm, share=share, seed=seed)
        rows.append(row)
        results_path.write_text(json.dumps(rows, indent=1) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "checkpoint"}), flush=True)
    print(f"\n{'arm':<14}{'masks':>7}{'class mIoU':>12}{'inst mIoU':>11}{'epochs':>8}{'box fill':>10}{'ellipse':>9}")
    for r in rows:
        print(f"{r['arm']:<14}{r['share']:>7.0%}{r['mIoU']:>12.3f}{r['mIoU_instance']:>11.3f}{r['epochs'] or 0:>8}"
              f"{r['box_fill']:>10.3f}{r['ellipse']:>9.3f}")


if __name__ == "__main__":
    main()
