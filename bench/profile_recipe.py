"""Where the CPU recipe's time goes: op-level (torch profiler) and Python-level (py-spy sampling) breakdowns.

Usage:
  python bench/profile_recipe.py ops [--batch-size 32] [--steps 3]
      torch.profiler over the recipe's training step and labelling batch (random crops, as bench/throughput.py):
      time per pipeline component (record_function scopes) and the top operators by self CPU time.
  python bench/profile_recipe.py job --out DIR -- <runner command ...>
      py-spy samples a real job (its DataLoader workers too) and sums the samples into the components of a job:
      start-up imports, data loading, network forward, backward, CRF loss, mean-field refinement, colour model,
      quality-term passes, pasting, RLE, writing, logging, Lightning's loop.
Needs py-spy for ``job`` (``pip install py-spy``; a bench tool, not a dependency). Not a test.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

#: py-spy frames -> job component. The first rule (in this order) that matches any frame of a sample's stack names
#: its component, so a forward pass inside the quality terms counts as "quality-term passes".
JOB_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("start-up imports", ("_find_and_load", "_call_with_frames_removed (<frozen importlib")),
    ("validation (labelling the val boxes)", ("validation_step (",)),
    ("quality-term passes", ("quality_terms (",)),
    ("colour model", ("colour_refine (", "colour_agreement (")),
    ("mean-field refinement (labelling)", ("refined (",)),
    ("CRF loss (incl. its mean-field)", ("crf_loss (",)),
    ("backward", ("backward (", "manual_backward (")),
    ("optimizer + EMA", ("step (torch/optim", "ema_update (", "_single_tensor_adamw", "_multi_tensor_adamw")),
    ("pasting", ("paste_masks (", "paste (")),
    ("RLE + writing labels", ("encode (", "write_labels (", "_records (", "label_record (", "assemble (",
                              "merged_records (", "atomic_write")),
    ("review page + overlays", ("_write_review (", "write_review (", "save_overlays (", "draw_overlay (")),
    ("network forward (labelling: main pass; training: student + teacher)",
     ("forward (mal_core/model", "predict_logits (", "raw_logits (", "training_step (")),
    ("MIL/other losses", ("mal_objective (",)),
    ("validation metrics", ("gt_scores (", "region_iou (", "update (torchmetrics")),
    ("logging", ("log (pytorch_lightning", "log_metrics (", "_log_dict", "save (lightning_fabric/loggers",
                 "flush (", "add_scalar (")),
    ("data loading in the main process", ("__getitem__ (mal_core/data", "collate_crops (", "read_image (")),
    ("waiting for the loader", ("_next_data (", "__next__ (torch/utils/data")),
    ("Lightning loop + hooks", ("pytorch_lightning",)),
]


#: Leaf frames of a thread that waits (DataLoader workers waiting for work).
IDLE_LEAVES = ("Condition.wait (threading.py", "Queue.get (multiprocessing/queues.py", "_poll (", "poll (",
               "select (", "_PollLikeSelector.select (")


def component_of(stack: str) -> str:
    """The :data:`JOB_RULES` component of one py-spy stack ("frame;frame;..." root first)."""
    for name, needles in JOB_RULES:
        if any(n in stack for n in needles):
            return name
    return "other"


def summarise_raw(raw: Path) -> dict[str, float]:
    """Share of the job's wall time per component: the samples of the main thread of the job's process (py-spy
    samples it whether busy or waiting, with ``--idle``), plus the busy share of any DataLoader worker processes
    as "loader workers busy (parallel)"."""
    counts: collections.Counter[str] = collections.Counter()
    worker_busy = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        if "_worker_loop (" in stack:  # a forked worker: its stack starts with the main thread's
            worker_busy += 0 if stack.split(";")[-1].startswith(IDLE_LEAVES) else int(n)
        elif "<module> (" in stack:
            counts[component_of(stack)] += int(n)
    total = sum(counts.values())
    shares = {k: v / total for k, v in counts.most_common()} if total else {}
    if total and worker_busy:
        shares["loader workers busy (parallel, not in the sum)"] = worker_busy / total
    return shares


def run_job(out: Path, command: list[str], rate: int) -> int:
    """py-spy a job command, write the raw samples and a JSON summary under ``out``, print the table."""
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "pyspy_raw.txt"
    t0 = time.time()
    rc = subprocess.call(["py-spy", "record", "--subprocesses", "--idle", "-r", str(rate), "--format", "raw",
                          "-o", str(raw), "--", *command])
    wall = time.time() - t0
    shares = summarise_raw(raw) if raw.exists() else {}
    print(f"\njob wall {wall:.1f} s (rc {rc}); share of py-spy samples per component (idle waits included):")
    for name, share in shares.items():
        print(f"  {name:38s} {100 * share:5.1f}%")
    (out / "profile_job.json").write_text(json.dumps({"command": command, "wall_s": wall, "rc": rc,
                                                      "shares": shares}, indent=1))
    return rc


@contextlib.contextmanager
def scoped(targets: list[tuple[Any, str, str]]) -> Iterator[dict[str, float]]:
    """Wraps each ``(owner, attribute, label)`` in a torch.profiler.record_function scope and an inclusive
    wall-clock timer (the dict yielded)."""
    import torch

    seconds: dict[str, float] = collections.defaultdict(float)
    saved = []
    for owner, attr, label in targets:
        fn = getattr(owner, attr)
        saved.append((owner, attr, fn))

        def wrapped(*args: Any, __fn: Callable = fn, __label: str = label, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            with torch.profiler.record_function(__label):
                result = __fn(*args, **kwargs)
            seconds[__label] += time.perf_counter() - t0
            return result

        setattr(owner, attr, wrapped)
    try:
        yield seconds
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)


def run_ops(batch_size: int, steps: int, top: int, out: Path) -> None:
    """torch.profiler over ``steps`` training steps and labelling batches of the recipe."""
    import numpy as np
    import throughput as tp
    import torch

    from mal_core.engine import labelling
    from mal_core.engine.module import MALModule
    from mal_core.losses import crf, objective
    from mal_core.model.build import build_network

    cfg = tp.load_config("cpu_tiny", [])
    module = MALModule(cfg, categories=[{"id": 1, "name": "x"}], network=build_network(cfg))
    runner = tp.StepRunner(module, cfg, torch.device("cpu"), "32-true")
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    report: dict[str, Any] = {"cpu": tp._cpu_name(), "threads": torch.get_num_threads(), "batch_size": batch_size}
    net = module.model
    for part in ("train", "label"):
        batches = [tp.make_batch(cfg, batch_size, train=part == "train", rng=rng, gen=gen) for _ in range(2)]
        opt, _ = runner.optimizer(batch_size)
        step = (lambda b, o=opt: runner.train_step(b, o, None)) if part == "train" else runner.infer_step
        module.model.train(part == "train")
        step(batches[0])  # warm-up
        targets = [(objective, "crf_loss", "crf_loss"), (crf, "mean_field_refine", "mean_field"),
                   (type(net), "ema_update", "ema")]
        if part == "label":
            targets = [(labelling.Labeller, "raw_logits", "network (main pass)"),
                       (labelling, "colour_refine", "colour model (refine)"),
                       (labelling.Labeller, "refined", "mean-field refinement"),
                       (labelling.Labeller, "paste", "pasting"),
                       (labelling.Labeller, "quality_terms", "quality terms (2 passes + CRF + colour)"),
                       (labelling, "colour_agreement", "colour agreement"),
                       (labelling, "gt_scores", "GT scores")]
        with scoped(targets) as seconds, torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                                 record_shapes=False) as prof:
            t0 = time.perf_counter()
            for i in range(steps):
                step(batches[i % 2])
            wall = (time.perf_counter() - t0) / steps
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        report[part] = {"ms_per_step": 1000 * wall,
                        "components_ms": {k: 1000 * v / steps for k, v in seconds.items()},
                        "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1000 / steps,
                                     "calls": e.count // steps} for e in ops[:top]]}
        print(f"\n== {part}: {1000 * wall:.0f} ms per batch of {batch_size} ==")
        for k, v in report[part]["components_ms"].items():
            print(f"  {k:42s} {v:8.1f} ms  {100 * v / 1000 / wall:5.1f}%")
        print("  top operators by self CPU time:")
        for row in report[part]["top_ops"]:
            print(f"    {row['op']:40s} {row['self_ms']:8.1f} ms  x{row['calls']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_ops.json").write_text(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one profile."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    ops = sub.add_parser("ops")
    ops.add_argument("--batch-size", type=int, default=32)
    ops.add_argument("--steps", type=int, default=3)
    ops.add_argument("--top", type=int, default=15)
    ops.add_argument("--out", default=str(ROOT / "bench_output" / "profile"))
    job = sub.add_parser("job")
    job.add_argument("--out", default=str(ROOT / "bench_output" / "profile"))
    job.add_argument("--rate", type=int, default=50)
    job.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.part == "ops":
        run_ops(args.batch_size, args.steps, args.top, Path(args.out))
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return run_job(Path(args.out), command, args.rate)


if __name__ == "__main__":
    sys.exit(main())
