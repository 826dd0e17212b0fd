"""Test-time options on one trained checkpoint: label a COCO folder's val split once per variant and score it.

Usage: python bench/test_time.py --checkpoint CKPT --data DIR --variant "postprocess.refine_iters=10" \
           --variant "postprocess.mask_thres=[0.6]" [--variant "a=1;b=2"]
The first row is the checkpoint as trained. Prints class mIoU, instance mean, mask fill and the Spearman rank
correlation of the quality score (and of each of its terms) with the true IoU, per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import box_fill_fraction, dataset_paths, spearman  # noqa: E402
from mal_core.config import parse_spec  # noqa: E402
from mal_core.config.loader import read_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Evaluate every variant; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--variant", action="append", default=[], help="';'-separated key=value overrides")
    ap.add_argument("--spec", default=str(ROOT / "examples" / "cpu_tiny.yaml"))
    ap.add_argument("--split", choices=("val", "train"), default="val",
                    help="label this split (train: its annotations.json must hold masks, e.g. coco128)")
    ap.add_argument("--keep", help="copy each variant's label file into this folder (variant_<n>.json)")
    args = ap.parse_args(argv)
    os.environ.setdefault("MAL_PROGRESS_BAR", "0")
    from mal_core.engine.inference import run_inference

    paths = dataset_paths(Path(args.data))
    if args.split == "train":
        paths["dataset.val_ann_path"] = str(Path(args.data) / "train" / "annotations.json")
        paths["dataset.val_img_dir"] = str(Path(args.data) / "train" / "images")
    print(f"{'variant':<40}{'mIoU':>7}{'inst':>7}{'fill':>7}  Spearman(score, IoU) [per term]")
    for n, variant in enumerate(["", *args.variant]):
        sets = [s for s in variant.split(";") if s]
        with tempfile.TemporaryDirectory() as tmp:
            overrides = [f"{k}={v}" for k, v in paths.items()] + [
                f"results_dir={tmp}", f"inference.checkpoint={args.checkpoint}", "inference.load_mask=true",
                f"inference.ann_path={paths['dataset.val_ann_path']}", "inference.review_page=false",
                f"inference.img_dir={paths['dataset.val_img_dir']}"] + sets
            cfg, explicit = parse_spec(read_yaml(args.spec), overrides)
            res = run_inference(cfg, explicit | {s.split("=")[0] for s in sets})
            labels = [a for a in json.loads(Path(res.artifacts["label_dump"]).read_text())["annotations"] if "iou" in a]
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(res.artifacts["label_dump"], Path(args.keep) / f"variant_{n}.json")
        m, ious = res.metrics, [a["iou"] for a in labels]
        terms = {k: spearman([a["quality"][k] for a in labels], ious) for k in labels[0].get("quality", {})}
        print(f"{variant or '(as trained)':<40}{m['mIoU']:>7.3f}{m['mIoU_instance']:>7.3f}"
              f"{box_fill_fraction(labels):>7.3f}  {spearman([a['score'] for a in labels], ious):.3f} ["
              + ", ".join(f"{k} {v:.3f}" for k, v in terms.items()) + "]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
