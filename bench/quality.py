"""Mask quality benchmark: train the CPU recipe on synthetic boxes, then compare val mIoU with classical baselines.

Usage: python bench/quality.py [--difficulty medium] [--train-images 200] [--set key=value ...] [--out DIR]
Prints a table and writes DIR/quality_<difficulty>.json. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mal_core.baselines import score_baselines  # noqa: E402
from mal_core.config import check_for_action, parse_spec  # noqa: E402
from mal_core.config.loader import read_yaml  # noqa: E402
from mal_core.data.synthetic import generate_synthetic_dataset  # noqa: E402
from mal_core.utils.io import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--difficulty", default="medium")
    ap.add_argument("--train-images", type=int, default=200)
    ap.add_argument("--val-images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spec", default=str(ROOT / "examples" / "cpu_tiny.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench_output"))
    ap.add_argument("--no-grabcut", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("MAL_PROGRESS_BAR", "0")
    from mal_core.engine.evaluate import run_evaluate
    from mal_core.engine.train import run_train

    out = Path(args.out) / f"quality_{args.difficulty}"
    data = generate_synthetic_dataset(out / "data", num_train_images=args.train_images,
                                      num_val_images=args.val_images, difficulty=args.difficulty, seed=args.seed)
    paths = {"results_dir": str(out / "train"), "dataset.train_ann_path": str(data.train_ann_path),
             "dataset.train_img_dir": str(data.train_img_dir), "dataset.val_ann_path": str(data.val_ann_path),
             "dataset.val_img_dir": str(data.val_img_dir)}
    overrides = [f"{k}={v}" for k, v in paths.items()] + args.overrides
    cfg, _ = parse_spec(read_yaml(args.spec), overrides)
    check_for_action(cfg, "train")
    if Path(cfg.results_dir).exists():
        import shutil

        shutil.rmtree(cfg.results_dir)
    t0 = time.time()
    train = run_train(cfg)
    train_s = time.time() - t0
    ecfg, explicit = parse_spec(read_yaml(args.spec), overrides + [
        f"evaluate.checkpoint={train['latest_checkpoint']}", f"results_dir={out / 'eval'}"])
    ev = run_evaluate(ecfg, explicit)
    methods = ("box_fill", "ellipse") if args.no_grabcut else ("box_fill", "ellipse", "grabcut")
    base = score_baselines(data.val_ann_path, data.val_img_dir, methods=methods)
    rows = {"MAL (" + cfg.model.arch + ")": {**ev["metrics"], "seconds": round(train_s, 1)}, **base}
    print(f"\nval set: {args.difficulty}, {int(ev['metrics']['num_instances'])} instances; "
          f"train: {train['num_train_instances']} boxes x {cfg.train.num_epochs} epochs in {train_s:.0f} s")
    print(f"{'method':<24}{'mIoU':>8}{'small':>8}{'medium':>8}{'large':>8}{'seconds':>10}")
    for name, m in rows.items():
        cells = [m.get(k) for k in ("mIoU", "mIoU_small", "mIoU_medium", "mIoU_large")]
        txt = "".join(f"{v:>8.3f}" if isinstance(v, float) and v == v else f"{'-':>8}" for v in cells)
        print(f"{name:<24}{txt}{m.get('seconds', 0):>10.1f}")
    atomic_write_json(out / f"quality_{args.difficulty}.json", {
        "difficulty": args.difficulty, "train_images": args.train_images, "overrides": args.overrides,
        "train_seconds": train_s, "results": rows, "history": _history(train)})
    return 0


def _history(train: dict) -> list:
    path = train.get("validation_history")
    return [json.loads(line) for line in open(path)] if path else []


if __name__ == "__main__":
    sys.exit(main())
