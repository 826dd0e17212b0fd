"""Labelling at scale: peak RSS, boxes/s and wall time of whole `mal inference` jobs for growing box counts, and
boxes/s on Ray with 1 and 2 workers against the in-process path on the same boxes. A benchmark, not a test.

Data: synthetic 640x480 noisy JPEG images with 8 boxes of 200-400 px sides each (``--distinct-images`` distinct
files, cycled under distinct image ids, so the disk holds a few MB whatever the box count). Model: the CPU recipe's
architecture (``examples/cpu_tiny.yaml``) trained for one epoch on a tiny synthetic set (speed and memory do not
depend on what the weights learned), or ``--checkpoint``. Test-time settings: the recipe's colour model and
refinement off for the memory runs unless ``--recipe-test-time`` (the issue's measurement); the quality terms are
always computed, as in every labelling job.

Boxes/s count from the moment the workers are ready (network loaded; on Ray also Ray started and the actors up):
that start-up is reported on its own (``startup_s``), and ``wall_s`` is the whole job, start-up and assembly
included. Each job runs as its own process (``runners/inference.py``), so its peak RSS (``ru_maxrss`` of that
process via ``wait4``) is the job's alone. Prints one table and writes ``bench_output/label_scale.json``.

    .venv/bin/python bench/label_scale.py --sizes 1000 8000 32000 --ray-boxes 2000 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOXES_PER_IMAGE = 8
IMAGE_W, IMAGE_H = 640, 480


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_images(folder: Path, count: int, seed: int) -> list[str]:
    """``count`` distinct noisy 640x480 JPEG files (coloured rectangles on noise)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        img = rng.integers(0, 255, size=(IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
        for _ in range(BOXES_PER_IMAGE):
            x, y = int(rng.integers(0, IMAGE_W - 200)), int(rng.integers(0, IMAGE_H - 200))
            img[y:y + 150, x:x + 150] = rng.integers(0, 255, size=3)
        name = f"img{i:04d}.jpg"
        Image.fromarray(img).save(folder / name, quality=90)
        names.append(name)
    return names


def make_coco(path: Path, names: list[str], num_boxes: int, seed: int) -> None:
    """A boxes-only COCO file of ``num_boxes`` boxes, 8 per image, image files cycled from ``names``."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_boxes // BOXES_PER_IMAGE):
        images.append({"id": i + 1, "file_name": names[i % len(names)], "width": IMAGE_W, "height": IMAGE_H})
        for _ in range(BOXES_PER_IMAGE):
            w, h = (int(v) for v in rng.integers(200, 401, size=2))
            h = min(h, IMAGE_H)
            x, y = int(rng.integers(0, IMAGE_W - w + 1)), int(rng.integers(0, IMAGE_H - h + 1))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "thing"}]}))


def train_checkpoint(work: Path, crop: int) -> str:
    """A one-epoch checkpoint with the CPU recipe's architecture at crop side ``crop``."""
    from mal_core.skill.testing import tiny_dataset

    data = tiny_dataset(work / "train_data")
    spec = {**data, "train.num_epochs": 1, "train.batch_size": 8, "train.warmup_epochs": 0,
            "train.checkpoint_interval": 1, "train.validation_interval": 1, "dataset.min_obj_size": 16,
            "dataset.crop_size": crop}
    cmd = [sys.executable, str(ROOT / "runners" / "train.py"), "-e", str(ROOT / "examples" / "cpu_tiny.yaml"),
           "--automl-policy", "off", "--jobs-root", str(work / "jobs"), "--job-id", "ckpt",
           "--spec-overrides", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ,
                                                                                "MAL_PROGRESS_BAR": "0"})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if out.returncode != 0:
        raise SystemExit(f"training the benchmark checkpoint failed: {res['error']}")
    return str(res["artifacts"]["best_checkpoint"])


def run_job(work: Path, job_id: str, ckpt: str, ann: Path, img_dir: Path, extra: list[str]) -> dict[str, Any]:
    """One labelling job in its own process: wall seconds, peak RSS (MiB) and the job's own figures."""
    cmd = [sys.executable, str(ROOT / "runners" / "inference.py"), "--jobs-root", str(work / "jobs"),
           "--job-id", job_id, "--set", f"inference.checkpoint={ckpt}", "--set", f"inference.ann_path={ann}",
           "--set", f"inference.img_dir={img_dir}", "--set", "inference.batch_size=16", *extra]
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env={**os.environ,
                                                                                 "MAL_PROGRESS_BAR": "0"})
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - t0
        out.seek(0)
        res = json.loads(out.read().strip().splitlines()[-1])
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"job {job_id} failed: {res['error']}")
    record = json.loads((work / "jobs" / job_id / "job.json").read_text())
    progress = record.get("progress") or {}
    return {"job": job_id, "wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "boxes": progress.get("boxes_total"), "boxes_per_s": progress.get("boxes_per_second"),
            "labelling_s": progress.get("seconds"), "startup_s": progress.get("startup_seconds")}


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 8000, 32000])
    ap.add_argument("--ray-boxes", type=int, default=2000, help="boxes of the Ray comparison (0: skip it)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--distinct-images", type=int, default=64)
    ap.add_argument("--checkpoint", default="", help="label with this checkpoint instead of a 1-epoch one")
    ap.add_argument("--crop", type=int, default=128,
                    help="crop side of the 1-epoch checkpoint (128 = the CPU recipe; a smaller one makes the 32k-box "
                         "run affordable on 2 cores: memory does not depend on it)")
    ap.add_argument("--recipe-test-time", action="store_true",
                    help="keep the checkpoint's colour model and refinement (default: off, as the issue measured)")
    ap.add_argument("--work", default="", help="work folder (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "bench_output" / "label_scale.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="label_scale_"))
    ckpt = args.checkpoint or train_checkpoint(work, args.crop)
    names = make_images(work / "images", args.distinct_images, seed=0)
    test_time = [] if args.recipe_test_time else ["--set", "postprocess.colour_weight=0",
                                                  "--set", "postprocess.refine_iters=0"]
    rows = []
    for n in args.sizes:
        ann = work / f"boxes_{n}.json"
        make_coco(ann, names, n, seed=n)
        rows.append({"route": "in-process", **run_job(work, f"inproc-{n}", ckpt, ann, work / "images", test_time)})
        print(json.dumps(rows[-1]), flush=True)
    if args.ray_boxes:
        ann = work / f"boxes_ray_{args.ray_boxes}.json"
        make_coco(ann, names, args.ray_boxes, seed=1)
        rows.append({"route": "in-process", **run_job(work, "ray-base", ckpt, ann, work / "images", test_time)})
        print(json.dumps(rows[-1]), flush=True)
        for w in args.workers:
            extra = [*test_time, "--set", f"inference.num_workers={w}"]
            rows.append({"route": f"ray x{w}", **run_job(work, f"ray-{w}", ckpt, ann, work / "images", extra)})
            print(json.dumps(rows[-1]), flush=True)
    report = {"cpu": cpu_name(), "cores": os.cpu_count(), "loadavg_end": os.getloadavg(), "rows": rows,
              "checkpoint": ckpt, "crop": None if args.checkpoint else args.crop,
              "recipe_test_time": args.recipe_test_time}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nCPU: {report['cpu']} ({report['cores']} cores), load average at the end {report['loadavg_end']}")
    print(f"{'route':<12}{'boxes':>8}{'boxes/s':>10}{'label s':>10}{'startup s':>11}{'wall s':>9}"
          f"{'peak RSS MiB':>14}")
    for r in rows:
        print(f"{r['route']:<12}{r['boxes']:>8}{r['boxes_per_s'] or 0:>10.2f}{r['labelling_s'] or 0:>10.1f}"
              f"{r['startup_s'] or 0:>11.1f}{r['wall_s']:>9.1f}{r['peak_rss_mib']:>14.1f}")


if __name__ == "__main__":
    main()
