"""Why does the labeler lose to GrabCut? Two diagnostics behind the quality figures in BENCHMARKS.md.

Usage:
  python bench/diagnose.py ceiling [--difficulty medium] [--crop 128]
      Resolution ceiling: the GT mask itself, area-averaged onto the M x M logit grid of the eval crop and pasted back
      exactly as predictions are (bilinear, threshold 0.5, clipped to the box). The mIoU it keeps is the best any
      model can score at that head resolution (M = crop / mask_stride).
  python bench/diagnose.py errors --run bench_output/quality_medium
      Where the trained model loses: labels the validation set of a bench/quality.py run with its last checkpoint
      and prints, per category, MAL and GrabCut mIoU, the IoU quantiles, empty masks, and the share of MAL masks
      with a hole the GT does not have (the "ring" failure: MIL is satisfied by a band along the box).
Prints tables and writes <out>/diagnose_<what>.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _holes(mask: np.ndarray) -> int:
    """Number of background regions fully enclosed by the mask (4-connected background, 8-connected foreground)."""
    import cv2

    bg = (~mask).astype(np.uint8)
    n, labels = cv2.connectedComponents(np.pad(bg, 1, constant_values=1), connectivity=4)
    return int(n - 2) if n > 1 else 0  # minus the label-0 (foreground) and the outer background


def ceiling(args: argparse.Namespace) -> dict:
    """mIoU of GT masks passed through the M x M head grid and the paste step, for several strides."""
    import torch
    import torch.nn.functional as F

    from mal_core.data.coco import decode_segmentation, load_coco
    from mal_core.data.crops import crop_wrap
    from mal_core.data.datasets import BoxCropDataset, collate_crops
    from mal_core.data.synthetic import generate_synthetic_dataset
    from mal_core.engine.postprocess import paste_masks, region_iou

    data = generate_synthetic_dataset(Path(args.out) / f"diagnose_data_{args.difficulty}", num_train_images=1,
                                      num_val_images=args.val_images, difficulty=args.difficulty, seed=args.seed)
    coco = load_coco(data.val_ann_path, data.val_img_dir)
    ds = BoxCropDataset(coco, args.crop, train=False, load_mask=True)
    samples = []  # (collated eval sample, GT cut to its expanded box), read and decoded once for every stride
    for i in range(len(ds)):
        batch = collate_crops([ds[i]])
        inst = ds.instances[i]
        gt = decode_segmentation(coco.annotation(inst.ann_id)["segmentation"], inst.height, inst.width)
        ext = tuple(int(v) for v in batch["ext_box"][0])
        gt_box = np.ascontiguousarray(crop_wrap(gt.astype(np.float32), ext))
        samples.append((batch, torch.from_numpy(gt_box)[None, None]))
    rows = {}
    for stride in (8, 4, 2, 1):
        side = args.crop // stride
        ious = []
        for batch, g in samples:
            logits = torch.logit(F.interpolate(g, size=(side, side), mode="area").clamp(1e-4, 1 - 1e-4))
            pasted = paste_masks(logits, batch["box_mask"], batch["ext_box"], batch["image_size"],
                                 batch["box_area"], [0.5], boxes=batch["box"])
            ious.append(region_iou(pasted[0], batch["gt_region"][0], int(batch["gt_area"][0])))
        rows[f"stride {stride} ({side}x{side})"] = {"mIoU": float(np.mean(ious)), "p10": float(np.quantile(ious, 0.1)),
                                                    "min": float(np.min(ious))}
    print(f"\nresolution ceiling, {args.difficulty}, crop {args.crop}, {len(ds)} val instances")
    print(f"{'head grid':<22}{'mIoU':>8}{'p10':>8}{'min':>8}")
    for name, r in rows.items():
        print(f"{name:<22}{r['mIoU']:>8.3f}{r['p10']:>8.3f}{r['min']:>8.3f}")
    return {"difficulty": args.difficulty, "crop": args.crop, "rows": rows}


def errors(args: argparse.Namespace) -> dict:
    """Per-category MAL vs GrabCut on a finished bench/quality.py run."""
    from PIL import Image

    from mal_core.baselines import grabcut_mask, instance_iou
    from mal_core.config import parse_spec
    from mal_core.config.loader import read_yaml
    from mal_core.data.coco import decode_segmentation
    from mal_core.engine.inference import run_inference

    run = Path(args.run)
    data, ckpt = run / "data", run / "train" / "mal_model_latest.pth"
    if not ckpt.exists():
        raise SystemExit(f"{ckpt} not found: give --run the folder bench/quality.py wrote (bench_output/quality_<d>)")
    spec = read_yaml(run / "train" / "train_spec.yaml")
    cfg, explicit = parse_spec(spec, [f"results_dir={run / 'diagnose'}", f"inference.checkpoint={ckpt}",
                                      f"inference.ann_path={data / 'val/annotations.json'}",
                                      f"inference.img_dir={data / 'val/images'}", "inference.load_mask=true",
                                      "inference.num_gpus=1"])
    labels = json.loads(Path(run_inference(cfg, explicit).artifacts["label_dump"]).read_text())["annotations"]
    gt = json.loads((data / "val/annotations.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    images = {i["id"]: i for i in gt["images"]}
    gts = {a["id"]: a for a in gt["annotations"]}
    per_cat: dict[str, list[dict]] = defaultdict(list)
    for ann in labels:
        g = gts[ann["id"]]
        info = images[g["image_id"]]
        with Image.open(data / "val/images" / info["file_name"]) as im:
            rgb = np.asarray(im.convert("RGB"))
        gmask = decode_segmentation(g["segmentation"], info["height"], info["width"])
        pmask = decode_segmentation(ann["segmentation"], info["height"], info["width"])
        per_cat[names[g["category_id"]]].append({
            "mal": float(ann["iou"]), "grabcut": instance_iou(grabcut_mask(rgb, g["bbox"]), gmask),
            "empty": not pmask.any(), "extra_hole": _holes(pmask) > _holes(gmask)})
    rows = {}
    for name, recs in sorted(per_cat.items()):
        rows[name] = {"n": len(recs), "mal": float(np.mean([r["mal"] for r in recs])),
                      "grabcut": float(np.mean([r["grabcut"] for r in recs])),
                      "empty": sum(r["empty"] for r in recs), "extra_hole": sum(r["extra_hole"] for r in recs)}
    every = [r for recs in per_cat.values() for r in recs]
    quant = {m: np.quantile([r[m] for r in every], [0.1, 0.25, 0.5, 0.75, 0.9]).round(3).tolist()
             for m in ("mal", "grabcut")}
    print(f"\nper category, {run.name} ({len(every)} val instances)")
    print(f"{'category':<12}{'n':>5}{'MAL':>8}{'GrabCut':>9}{'empty':>7}{'extra hole':>12}")
    for name, r in rows.items():
        print(f"{name:<12}{r['n']:>5}{r['mal']:>8.3f}{r['grabcut']:>9.3f}{r['empty']:>7}{r['extra_hole']:>12}")
    print("instance IoU quantiles (10/25/50/75/90%):")
    for m, q in quant.items():
        print(f"  {m:<8}" + " ".join(f"{v:.3f}" for v in q))
    worse = sum(r["mal"] < r["grabcut"] - 0.05 for r in every)
    print(f"MAL more than 0.05 below GrabCut on {worse} of {len(every)} instances")
    return {"run": str(run), "categories": rows, "quantiles": quant, "mal_worse_by_0.05": worse}


def main(argv: list[str] | None = None) -> int:
    """Run one diagnostic; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["ceiling", "errors"])
    ap.add_argument("--difficulty", default="medium")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--val-images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", default=str(ROOT / "bench_output" / "quality_medium"))
    ap.add_argument("--out", default=str(ROOT / "bench_output"))
    args = ap.parse_args(argv)
    os.environ.setdefault("MAL_PROGRESS_BAR", "0")
    from mal_core.utils.io import atomic_write_json

    result = ceiling(args) if args.what == "ceiling" else errors(args)
    name = f"diagnose_{args.what}_{args.difficulty if args.what == 'ceiling' else Path(args.run).name}.json"
    atomic_write_json(Path(args.out) / name, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
