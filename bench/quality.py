"""Mask quality benchmark: train a recipe on boxes, label the validation boxes, and compare with classical baselines.

Data: ``--data DIR`` (any COCO folder: ``DIR/{train,val}/images/``, ``annotations.json`` with masks for scoring and
``annotations_boxes.json`` for training; e.g. ``../shared/data/coco128`` or a ``bench/shapes_heldout.py`` family)
or ``--family thin|holes|touching`` (the held-out generator ``mal_core.data.heldout_shapes``) or
``--difficulty easy|medium|hard`` (the project's own synthetic generator); generated sets are written under ``--out``.

Prints val mIoU (class-averaged, instance mean, small/medium/large) for MAL and for box fill, inscribed ellipse and
GrabCut on the same instances, MAL's training seconds, the Spearman rank correlation between each mask's ``score``
and its true IoU, and the mean fraction of its box a mask fills (predicted vs true). Writes DIR/quality_<name>.json.
Not a test: it takes minutes.

Usage: python bench/quality.py --data ../shared/data/coco128 [--set train.num_epochs=30 ...] [--name coco128]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mal_core.baselines import score_baselines  # noqa: E402
from mal_core.config import check_for_action, parse_spec  # noqa: E402
from mal_core.config.loader import read_yaml  # noqa: E402
from mal_core.data.heldout_shapes import FAMILIES, generate_family  # noqa: E402
from mal_core.data.synthetic import generate_synthetic_dataset  # noqa: E402
from mal_core.engine.result import EngineResult  # noqa: E402
from mal_core.utils.io import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = ("mIoU", "mIoU_instance", "mIoU_small", "mIoU_medium", "mIoU_large")


def dataset_paths(data: Path) -> dict[str, str]:
    """Spec keys for a COCO folder laid out as ``{train,val}/images`` + annotation files."""
    for split, name in (("train", "annotations_boxes.json"), ("val", "annotations.json")):
        if not (data / split / name).is_file():
            sys.exit(f"--data {data}: missing {split}/{name}")
    return {"dataset.train_ann_path": str(data / "train" / "annotations_boxes.json"),
            "dataset.train_img_dir": str(data / "train" / "images"),
            "dataset.val_ann_path": str(data / "val" / "annotations.json"),
            "dataset.val_img_dir": str(data / "val" / "images")}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    import torch
    from torchmetrics.functional import spearman_corrcoef

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearman_corrcoef(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)))


def box_fill_fraction(annotations: list[dict]) -> float:
    """Mean over annotations of mask area / box area."""
    fr = [a["area"] / max(a["bbox"][2] * a["bbox"][3], 1.0) for a in annotations if "area" in a]
    return float(np.mean(fr)) if fr else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="COCO folder with train/ and val/ (see above)")
    ap.add_argument("--family", choices=FAMILIES, help="held-out synthetic family when --data is not given")
    ap.add_argument("--difficulty", default="medium", help="own synthetic set when neither --data nor --family")
    ap.add_argument("--name", help="name of the run (default: data folder name or difficulty)")
    ap.add_argument("--train-images", type=int, default=200)
    ap.add_argument("--val-images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spec", default=str(ROOT / "examples" / "cpu_tiny.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench_output"))
    ap.add_argument("--no-grabcut", action="store_true")
    ap.add_argument("--pretrain", metavar="SPEC", help="first MAE-pretrain on the train images (and boxes) with this "
                    "recipe (e.g. examples/cpu_pretrain.yaml), then train from the result")
    ap.add_argument("--pretrain-set", dest="pretrain_overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--pretrained", metavar="DIR", help="train from this pretrained_model/ folder (reuse a pretrain)")
    args = ap.parse_args(argv)
    os.environ.setdefault("MAL_PROGRESS_BAR", "0")
    from mal_core.engine.inference import run_inference
    from mal_core.engine.train import run_train

    name = args.name or (Path(args.data).name if args.data else args.family or args.difficulty)
    out = Path(args.out) / f"quality_{name}"
    if args.data:
        paths = dataset_paths(Path(args.data))
    elif args.family:
        paths = dataset_paths(generate_family(out / "data", args.family, train_images=args.train_images,
                                              val_images=args.val_images, seed=args.seed))
    else:
        syn = generate_synthetic_dataset(out / "data", num_train_images=args.train_images,
                                         num_val_images=args.val_images, difficulty=args.difficulty, seed=args.seed)
        paths = {"dataset.train_ann_path": str(syn.train_ann_path), "dataset.train_img_dir": str(syn.train_img_dir),
                 "dataset.val_ann_path": str(syn.val_ann_path), "dataset.val_img_dir": str(syn.val_img_dir)}
    overrides = [f"{k}={v}" for k, v in paths.items()] + [f"results_dir={out / 'train'}"] + args.overrides
    for sub in ("train", "label", "pretrain"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    pretrain = _pretrain(args, paths, out / "pretrain") if args.pretrain else None
    if pretrain or args.pretrained:
        overrides.append("train.pretrained_model_path="
                         + (pretrain.artifacts["pretrained_model"] if pretrain else args.pretrained))
    cfg, _ = parse_spec(read_yaml(args.spec), overrides)
    check_for_action(cfg, "train")
    t0 = time.time()
    train = run_train(cfg)
    train_s = time.time() - t0
    icfg, explicit = parse_spec(read_yaml(args.spec), overrides + [
        f"inference.checkpoint={train.artifacts['latest_checkpoint']}", f"results_dir={out / 'label'}",
        f"inference.ann_path={paths['dataset.val_ann_path']}", f"inference.img_dir={paths['dataset.val_img_dir']}",
        "inference.load_mask=true"])
    inf = run_inference(icfg, explicit)
    labelled = [a for a in json.loads(Path(inf.artifacts["label_dump"]).read_text())["annotations"] if "iou" in a]
    gt = [a for a in json.loads(Path(paths["dataset.val_ann_path"]).read_text())["annotations"]
          if not a.get("iscrowd", 0)]
    ious = [a["iou"] for a in labelled]
    methods = ("box_fill", "ellipse") if args.no_grabcut else ("box_fill", "ellipse", "grabcut")
    base = score_baselines(paths["dataset.val_ann_path"], paths["dataset.val_img_dir"], methods=methods)
    mal = {**inf.metrics, "seconds": round(train_s, 1),
           "pretrain_seconds": pretrain.details["seconds"] if pretrain else 0.0, "spearman_score_iou": spearman(
        [a["score"] for a in labelled], ious), "box_fill_fraction": box_fill_fraction(labelled)}
    terms = sorted({k for a in labelled for k in a.get("quality", {})})
    mal["spearman_terms"] = {k: spearman([a["quality"][k] for a in labelled], ious) for k in terms}
    rows = {"MAL (" + cfg.model.arch + ")": mal, **base}
    budget = train.artifacts.get("time_budget") or {}
    epochs = budget.get("epochs_run") or cfg.train.num_epochs
    print(f"\nval set: {name}, {int(mal['num_instances'])} instances; train: "
          f"{train.details['num_train_instances']} boxes x {epochs} epochs in {train_s:.0f} s"
          + (f" (train.time_budget_s {cfg.train.time_budget_s:.0f})" if budget else "")
          + (f"; pretrain: {pretrain.details['seconds']:.0f} s, loss {pretrain.metrics}" if pretrain else "")
          + (f"; from {args.pretrained}" if args.pretrained else ""))
    print(f"{'method':<24}" + "".join(f"{k.replace('mIoU_', ''):>10}" for k in METRIC_KEYS) + f"{'seconds':>10}")
    for label, m in rows.items():
        cells = [m.get(k) for k in METRIC_KEYS]
        txt = "".join(f"{v:>10.3f}" if isinstance(v, float) and v == v else f"{'-':>10}" for v in cells)
        print(f"{label:<24}{txt}{m.get('seconds', 0):>10.1f}")
    print(f"Spearman(score, IoU) = {mal['spearman_score_iou']:.3f}; mask fills {mal['box_fill_fraction']:.2f} of its "
          f"box (true masks: {box_fill_fraction(gt):.2f}); per term: "
          + ", ".join(f"{k} {v:.3f}" for k, v in mal["spearman_terms"].items()))
    atomic_write_json(out / f"quality_{name}.json", {
        "name": name,
        "data": args.data or (f"held-out {args.family}" if args.family else f"synthetic {args.difficulty}"),
        "overrides": args.overrides,
        "spec": args.spec, "train_seconds": train_s, "pretrain": pretrain.flat() if pretrain else None,
        "pretrained": args.pretrained,
        "pretrain_overrides": args.pretrain_overrides, "results": rows, "true_box_fill_fraction": box_fill_fraction(gt),
        "history": _history(train), "time_budget": budget or None})
    return 0


def _pretrain(args: argparse.Namespace, paths: dict[str, str], out: Path) -> EngineResult:
    """MAE-pretrain on the train split's images (and boxes) with ``args.pretrain``; returns run_pretrain's result."""
    from mal_core.engine.pretrain import run_pretrain

    cfg, _ = parse_spec(read_yaml(args.pretrain), [
        f"pretrain.img_dir={paths['dataset.train_img_dir']}", f"pretrain.ann_path={paths['dataset.train_ann_path']}",
        f"results_dir={out}", *args.pretrain_overrides])
    return run_pretrain(cfg)


def _history(train: EngineResult) -> list:
    path = train.artifacts.get("validation_history")
    return [json.loads(line) for line in open(path)] if path else []


if __name__ == "__main__":
    sys.exit(main())
