"""Agent latency: wall time of ``runners/<action>.py --help`` and ``--dry-run`` (target < 1.5 s each), and the
import seconds a real run pays before it starts working (fresh interpreters; torch, transformers' ViT-MAE, the
labelling engine, the training engine, each measured on top of the previous one).

Usage: python bench/latency.py [--repeats 5] [--json bench_output/latency.json]
Creates a tiny synthetic dataset and a tiny train job (for the evaluate/inference parent), then times fresh
interpreter runs of each runner. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = ["dataset.crop_size=64", "model.arch=vit-mae-nano/8", "model.mask_head_hidden_channel=16",
        "model.mask_head_out_channel=16", "train.num_epochs=1", "train.warmup_epochs=0", "train.batch_size=8",
        "train.crf_num_iter=3", "train.use_amp=false", "dataset.num_workers_per_gpu=0", "dataset.min_obj_size=16"]


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc.returncode, proc.stdout.strip().splitlines()[-1] if proc.stdout else ""


#: Imports of a real run, in the order a run pays them: each row is measured on top of the rows before it.
IMPORT_STEPS = (
    ("torch", "import torch"),
    ("transformers ViT-MAE (the backbone)", "from transformers import ViTMAEModel"),
    ("labelling engine (inference, evaluate)", "import mal_core.engine.inference, mal_core.engine.evaluate"),
    ("training engine (Lightning, torchmetrics)", "import mal_core.engine.train"),
)
_IMPORT_PROBE = """
import json, sys, time
out = {}
for name, stmt in json.loads(sys.argv[1]):
    t0 = time.perf_counter()
    exec(stmt)
    out[name] = time.perf_counter() - t0
out["lightning in the labelling engine"] = "pytorch_lightning" in sys.modules and "mal_core.engine.train" not in out
print(json.dumps(out))
"""


def import_seconds(repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of each :data:`IMPORT_STEPS` row over ``repeats`` fresh interpreters."""
    runs = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, json.dumps(IMPORT_STEPS)], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = {name: {"median_s": statistics.median(r[name] for r in runs), "max_s": max(r[name] for r in runs)}
            for name, _ in IMPORT_STEPS}
    labelling = [n for n, _ in IMPORT_STEPS[:3]]
    rows["= a labelling run (inference / evaluate)"] = {
        "median_s": statistics.median(sum(r[n] for n in labelling) for r in runs),
        "max_s": max(sum(r[n] for n in labelling) for r in runs)}
    rows["= a training run"] = {"median_s": statistics.median(sum(r[n] for n, _ in IMPORT_STEPS) for r in runs),
                                "max_s": max(sum(r[n] for n, _ in IMPORT_STEPS) for r in runs)}
    return rows


def main(argv: list[str] | None = None) -> int:
    """Time the runners; print a table and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=str(ROOT / "bench_output" / "latency.json"))
    args = ap.parse_args(argv)
    from mal_core.data.synthetic import generate_synthetic_dataset
    from mal_core.utils.io import atomic_write_json

    tmp = Path(tempfile.mkdtemp(prefix="mal_latency_"))
    data = generate_synthetic_dataset(tmp / "data", num_train_images=4, num_val_images=2, image_size=96)
    jobs = tmp / "jobs"
    env = {**os.environ, "MAL_JOBS_ROOT": str(jobs), "MAL_PROGRESS_BAR": "0"}
    py = sys.executable
    sets = [f"--set={s}" for s in TINY]
    data_sets = [f"--set=dataset.train_ann_path={data.train_ann_path}",
                 f"--set=dataset.train_img_dir={data.train_img_dir}",
                 f"--set=dataset.val_ann_path={data.val_ann_path}", f"--set=dataset.val_img_dir={data.val_img_dir}"]
    seconds, code, line = _timed([py, "runners/train.py", "--automl-policy", "off", "--job-id", "parent", *sets,
                                  *data_sets], env)
    if code != 0:
        print(f"parent train job failed ({code}): {line}", file=sys.stderr)
        return 1
    cases = {
        "train --help": [py, "runners/train.py", "--help"],
        "evaluate --help": [py, "runners/evaluate.py", "--help"],
        "inference --help": [py, "runners/inference.py", "--help"],
        "train --dry-run (auto -> automl plan)": [py, "runners/train.py", "--dry-run", *sets, *data_sets],
        "train --dry-run (off)": [py, "runners/train.py", "--dry-run", "--automl-policy", "off", *sets, *data_sets],
        "evaluate --dry-run (parent)": [py, "runners/evaluate.py", "--dry-run", "--parent-job-id", "parent",
                                        *data_sets[2:]],
        "inference --dry-run (parent)": [py, "runners/inference.py", "--dry-run", "--parent-job-id", "parent",
                                         f"--set=inference.ann_path={data.val_ann_path}",
                                         f"--set=inference.img_dir={data.val_img_dir}"],
    }
    rows = {}
    for name, cmd in cases.items():
        times = []
        for _ in range(args.repeats):
            seconds, code, line = _timed(cmd, env)
            if code != 0:
                print(f"{name} failed ({code}): {line}", file=sys.stderr)
                return 1
            times.append(seconds)
        rows[name] = {"median_s": statistics.median(times), "max_s": max(times), "runs": len(times)}
        if "dry-run" in name:
            rows[name]["status"] = json.loads(line)["status"]
    print(f"{'command':<40}{'median s':>10}{'max s':>10}")
    for name, r in rows.items():
        print(f"{name:<40}{r['median_s']:>10.3f}{r['max_s']:>10.3f}")
    imports = import_seconds(args.repeats)
    print(f"\n{'imports of a real run (on top of the rows above)':<50}{'median s':>10}{'max s':>10}")
    for name, r in imports.items():
        print(f"{name:<50}{r['median_s']:>10.3f}{r['max_s']:>10.3f}")
    atomic_write_json(args.json, {"target_s": 1.5, "results": rows, "imports": imports})
    return 0


if __name__ == "__main__":
    sys.exit(main())
