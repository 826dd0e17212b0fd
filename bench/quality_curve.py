"""Quality against data size and training time: run bench/quality.py once per training-set size, then tabulate.

Usage: python bench/quality_curve.py [--difficulty medium] [--train-images 50,100,200,400] [--set key=value ...]
Every size trains the same recipe for the same number of epochs (so larger sets also train longer) and is scored
on the same validation images; the validation history gives mIoU at every validation epoch with the elapsed
training time. Prints one table and writes DIR/quality_curve_<difficulty>.json. Not a test: it takes many minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    """Run one quality benchmark per data size; print mIoU by size and epoch; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--difficulty", default="medium")
    ap.add_argument("--train-images", default="50,100,200,400", help="comma-separated training-set sizes")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench_output"))
    args = ap.parse_args(argv)
    from mal_core.utils.io import atomic_write_json

    sizes = [int(s) for s in args.train_images.split(",") if s.strip()]
    rows = []
    for n in sizes:
        out = Path(args.out) / f"curve_{args.difficulty}_{n}"
        cmd = [sys.executable, str(ROOT / "bench" / "quality.py"), "--difficulty", args.difficulty,
               "--train-images", str(n), "--out", str(out), "--no-grabcut"]
        for item in args.overrides:
            cmd += ["--set", item]
        subprocess.run(cmd, check=True, cwd=ROOT)
        res = json.loads((out / f"quality_{args.difficulty}" / f"quality_{args.difficulty}.json").read_text())
        mal = next(v for k, v in res["results"].items() if k.startswith("MAL"))
        rows.append({"train_images": n, "train_seconds": res["train_seconds"], "final_mIoU": mal["mIoU"],
                     "history": res["history"], "box_fill": res["results"]["box_fill"]["mIoU"]})
    epochs = sorted({h["epoch"] + 1 for r in rows for h in r["history"]})
    print(f"\nval mIoU by training-set size ({args.difficulty}); columns: epochs of training")
    print(f"{'train images':<14}" + "".join(f"{'ep ' + str(e):>9}" for e in epochs) + f"{'train s':>10}")
    for r in rows:
        by_epoch = {h["epoch"] + 1: h["mIoU"] for h in r["history"]}
        cells = "".join(f"{by_epoch[e]:>9.3f}" if e in by_epoch else f"{'-':>9}" for e in epochs)
        print(f"{r['train_images']:<14}{cells}{r['train_seconds']:>10.0f}")
    atomic_write_json(Path(args.out) / f"quality_curve_{args.difficulty}.json",
                      {"difficulty": args.difficulty, "overrides": args.overrides, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
