"""Scale-out check: train with 1 and 2 CPU processes (DDP over gloo), label in process and with 2 Ray workers, and
compare the metrics.

Usage: python bench/scaleout.py [--epochs 20] [--train-images 60] [--seeds 0,1,2] [--json bench_output/scaleout.json]
Each configuration runs in a fresh worker process (Lightning re-launches the worker command for rank 1), once per
seed, so the table shows run-to-run noise next to the difference. Three training configurations:
  * 1 process, batch B:   the single-device reference (B = half the recipe's batch).
  * 2 processes, batch B: DDP; the effective batch is 2B and the linear rule (lr x devices x batch) doubles the rate,
    so it takes half the optimiser steps at twice the rate.
  * 1 process, batch 2B:  the same effective batch, rate and step count as the 2-process run. DDP is correct when
    2 processes x B agree with 1 process x 2B within noise; they differ only in data order and random streams.
Labelling is deterministic, so labelling on 2 Ray workers must reproduce the in-process labels (masks). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _worker(args: argparse.Namespace) -> int:
    from mal_core.config import parse_spec
    from mal_core.config.loader import read_yaml
    from mal_core.engine.evaluate import run_evaluate
    from mal_core.engine.inference import run_inference
    from mal_core.engine.train import run_train

    data = Path(args.data)
    out = Path(args.out)
    base = [f"dataset.train_ann_path={data / 'train/annotations_boxes.json'}",
            f"dataset.train_img_dir={data / 'train/images'}", f"dataset.val_ann_path={data / 'val/annotations.json'}",
            f"dataset.val_img_dir={data / 'val/images'}", f"train.num_epochs={args.epochs}",
            f"train.validation_interval={args.epochs}", f"train.checkpoint_interval={args.epochs}",
            "dataset.num_workers_per_gpu=0", f"train.seed={args.seed}"]
    spec = read_yaml(ROOT / "examples" / "cpu_tiny.yaml")
    procs = args.procs
    t0 = time.time()
    result: dict = {"procs": procs}
    if args.worker == "train":
        batch = [f"train.batch_size={args.batch}"] if args.batch else []
        cfg, _ = parse_spec(spec, base + batch + [f"results_dir={out}", f"train.num_gpus={procs}"])
        res = run_train(cfg)
        result.update(train_seconds=time.time() - t0, val=res.metrics, checkpoint=res.artifacts["latest_checkpoint"],
                      batch=cfg.train.batch_size, seed=args.seed)
    else:
        cfg, explicit = parse_spec(spec, base + [
            f"results_dir={out}", f"inference.num_workers={0 if procs == 1 else procs}",
            f"inference.checkpoint={args.checkpoint}",
            f"inference.ann_path={data / 'val/annotations.json'}", f"inference.img_dir={data / 'val/images'}",
            "inference.load_mask=true"])
        res = run_inference(cfg, explicit)
        result.update(infer_seconds=time.time() - t0, label_file=res.artifacts["label_dump"],
                      metrics=res.metrics or None)
        if procs == 1:
            ecfg, explicit = parse_spec(spec, base + [f"results_dir={out}_eval",
                                                      f"evaluate.checkpoint={args.checkpoint}"])
            result["evaluate"] = run_evaluate(ecfg, explicit).metrics
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(json.dumps(result, default=str))
    return 0


def _run(cmd: list[str]) -> dict:
    env = {**os.environ, "MAL_PROGRESS_BAR": "0"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
    return mean, var ** 0.5


def main(argv: list[str] | None = None) -> int:
    """Run 1- and 2-process train (per seed) and inference; print and write the comparison."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--train-images", type=int, default=60)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (one run per seed and config)")
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "scaleout"))
    ap.add_argument("--json", default=str(ROOT / "bench_output" / "scaleout.json"))
    ap.add_argument("--worker", choices=["train", "inference"])
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=0, help="worker: per-process batch (0 = the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data")
    ap.add_argument("--checkpoint")
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    from mal_core.config.loader import read_yaml
    from mal_core.data.synthetic import generate_synthetic_dataset
    from mal_core.utils.io import atomic_write_json

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # a leftover results dir would be resumed, not retrained
    data = generate_synthetic_dataset(out / "data", num_train_images=args.train_images, num_val_images=20, seed=1)
    py, me = sys.executable, str(Path(__file__).resolve())
    common = ["--data", str(data.root), "--epochs", str(args.epochs)]
    # B is half the recipe's batch, so the 2B runs train at the recipe's effective rate (a from-scratch rate near
    # the stability edge: doubling it again makes masks collapse to filled boxes, which would hide any DDP effect)
    batch = int(read_yaml(ROOT / "examples" / "cpu_tiny.yaml")["train"]["batch_size"]) // 2
    configs = {"1 process, batch B": (1, batch), "2 processes, batch B": (2, batch),
               "1 process, batch 2B": (1, 2 * batch)}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    train: dict[str, list[dict]] = {name: [] for name in configs}
    for seed in seeds:
        for name, (procs, b) in configs.items():
            run_dir = out / f"train_p{procs}_b{b}_s{seed}"
            train[name].append(_run([py, me, "--worker", "train", "--procs", str(procs), "--batch", str(b),
                                     "--seed", str(seed), "--out", str(run_dir), *common]))
    ckpt = train["1 process, batch B"][0]["checkpoint"]
    infer = {n: _run([py, me, "--worker", "inference", "--procs", str(n), "--out", str(out / f"infer_{n}"),
                      "--checkpoint", ckpt, *common]) for n in (1, 2)}
    labels = [json.loads(Path(infer[n]["label_file"]).read_text())["annotations"] for n in (1, 2)]
    same = [a["id"] for a in labels[0]] == [a["id"] for a in labels[1]] and all(
        a["segmentation"] == b["segmentation"] for a, b in zip(labels[0], labels[1], strict=True))
    print(f"B = {batch}; {args.train_images} training images, {args.epochs} epochs, seeds {seeds}")
    print(f"{'train run':<24}{'val mIoU per seed':>28}{'mean':>8}{'std':>8}{'s/run':>8}")
    summary = {}
    for name, runs in train.items():
        vals = [r["val"]["mIoU"] for r in runs]
        mean, std = _mean_std(vals)
        secs = sum(r["train_seconds"] for r in runs) / len(runs)
        summary[name] = {"mIoU": vals, "mean": mean, "std": std, "seconds": secs}
        print(f"{name:<24}{' '.join(f'{v:.3f}' for v in vals):>28}{mean:>8.3f}{std:>8.3f}{secs:>8.1f}")
    print(f"{'inference run':<24}{'val mIoU':>28}{'':>16}{'s/run':>8}")
    for n in (1, 2):
        print(f"{'inference, ' + str(n) + ' process(es)':<24}{infer[n]['metrics']['mIoU']:>28.3f}{'':>16}"
              f"{infer[n]['infer_seconds']:>8.1f}")
    print(f"2-process labels identical to 1-process labels: {same}")
    atomic_write_json(args.json, {"batch": batch, "seeds": seeds, "train": train, "summary": summary,
                                  "inference": infer, "labels_identical": same})
    return 0


if __name__ == "__main__":
    sys.exit(main())
