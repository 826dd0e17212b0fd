"""Scale-out check: train and label with 1 and with 2 CPU processes (DDP over gloo) and compare the metrics.

Usage: python bench/scaleout.py [--epochs 20] [--train-images 60] [--json bench_output/scaleout.json]
Each configuration runs in a fresh worker process (Lightning re-launches the worker command for rank 1). Expect the
2-process run to match the 1-process one within run-to-run noise: DDP changes the data order and the effective
learning rate follows the linear rule (lr x devices x batch), so the step count halves while the rate doubles.
Labelling is deterministic, so 2-process inference must reproduce the 1-process labels. Not a test.
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
            "dataset.num_workers_per_gpu=0"]
    spec = read_yaml(ROOT / "examples" / "cpu_tiny.yaml")
    procs = args.procs
    t0 = time.time()
    result: dict = {"procs": procs}
    if args.worker == "train":
        cfg, _ = parse_spec(spec, base + [f"results_dir={out}", f"train.num_gpus={procs}"])
        res = run_train(cfg)
        result.update(train_seconds=time.time() - t0, val=res["metrics"], checkpoint=res["latest_checkpoint"])
    else:
        cfg, explicit = parse_spec(spec, base + [
            f"results_dir={out}", f"inference.num_gpus={procs}", f"inference.checkpoint={args.checkpoint}",
            f"inference.ann_path={data / 'val/annotations.json'}", f"inference.img_dir={data / 'val/images'}",
            "inference.load_mask=true"])
        res = run_inference(cfg, explicit)
        result.update(infer_seconds=time.time() - t0, label_file=res["label_file"], metrics=res.get("metrics"))
        if procs == 1:
            ecfg, explicit = parse_spec(spec, base + [f"results_dir={out}_eval",
                                                      f"evaluate.checkpoint={args.checkpoint}"])
            result["evaluate"] = run_evaluate(ecfg, explicit)["metrics"]
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(json.dumps(result, default=str))
    return 0


def _run(cmd: list[str]) -> dict:
    env = {**os.environ, "MAL_PROGRESS_BAR": "0"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run 1- and 2-process train and inference; print and write the comparison."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--train-images", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "scaleout"))
    ap.add_argument("--json", default=str(ROOT / "bench_output" / "scaleout.json"))
    ap.add_argument("--worker", choices=["train", "inference"])
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--data")
    ap.add_argument("--checkpoint")
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    from mal_core.data.synthetic import generate_synthetic_dataset
    from mal_core.utils.io import atomic_write_json

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # a leftover results dir would be resumed, not retrained
    data = generate_synthetic_dataset(out / "data", num_train_images=args.train_images, num_val_images=20, seed=1)
    py, me = sys.executable, str(Path(__file__).resolve())
    common = ["--data", str(data.root), "--epochs", str(args.epochs)]
    train = {n: _run([py, me, "--worker", "train", "--procs", str(n), "--out", str(out / f"train_{n}"), *common])
             for n in (1, 2)}
    ckpt = train[1]["checkpoint"]
    infer = {n: _run([py, me, "--worker", "inference", "--procs", str(n), "--out", str(out / f"infer_{n}"),
                      "--checkpoint", ckpt, *common]) for n in (1, 2)}
    labels = [json.loads(Path(infer[n]["label_file"]).read_text())["annotations"] for n in (1, 2)]
    same = [a["id"] for a in labels[0]] == [a["id"] for a in labels[1]] and all(
        a["segmentation"] == b["segmentation"] for a, b in zip(labels[0], labels[1], strict=True))
    print(f"{'run':<28}{'val mIoU':>10}{'seconds':>10}")
    for n in (1, 2):
        print(f"{'train, ' + str(n) + ' process(es)':<28}{train[n]['val']['mIoU']:>10.3f}"
              f"{train[n]['train_seconds']:>10.1f}")
    for n in (1, 2):
        print(f"{'inference, ' + str(n) + ' process(es)':<28}{infer[n]['metrics']['mIoU']:>10.3f}"
              f"{infer[n]['infer_seconds']:>10.1f}")
    print(f"2-process labels identical to 1-process labels: {same}")
    atomic_write_json(args.json, {"train": train, "inference": infer, "labels_identical": same})
    return 0


if __name__ == "__main__":
    sys.exit(main())
