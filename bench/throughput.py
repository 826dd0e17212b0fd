"""Throughput benchmark: training and inference instances/s, peak memory, a per-component profile of the training
step, data-loading speed and (on CUDA) model FLOPs utilisation.

Usage: python bench/throughput.py [--device auto|cpu|cuda] [--configs cpu_tiny,base512] [--batch-sizes 4,8,16]
       [--steps N] [--warmup N] [--profile-steps N] [--peak-tflops T] [--set key=value ...] [--json OUT.json]

Configs: ``cpu_tiny`` is examples/cpu_tiny.yaml; ``base512`` is the spec defaults (vit-mae-base/16, crop 512,
256-channel head, scale-adaptive path, 100 CRF iterations); a path to a YAML spec also works. ``--set`` overrides
apply to every config. base512 runs by default on CUDA only; on CPU it must be asked for with ``--steps`` <= 3.

The training step is MALModule.training_step rebuilt from the same parts: student forward, teacher forward under
no_grad, the training objective itself (mal_core.losses.objective.mal_objective, past its warm-ups), the finite-loss
check, backward, AdamW over the student's trainable
parameters (the spec's betas/eps/wd, lr scaled by the batch), EMA update. It runs under the precision Lightning would
pick (bf16 autocast on CUDA with train.use_amp, fp16 + GradScaler where bf16 is missing, fp32 otherwise) and the spec's
determinism flags. Inputs are random normalised crops with a random box each (COCO-like 640x480 images, crop geometry
from mal_core.data.crops). Inference is the labelling core (mal_core.engine.labelling: network, test-time refinement,
paste, quality terms, score) under inference_mode, exactly what a labelling job runs per batch.

On CPU each config is also exported to ONNX (mal_core.engine.export) and the graph's forward (student and teacher
logits of a batch of crops) is timed in PyTorch and in onnxruntime's CPU provider on the same batches (--no-onnx
skips it).

Three passes per batch size: one untimed step under FlopCounterMode, ``--warmup`` + ``--steps`` plain steps for
throughput (synchronised only around the loop), then ``--profile-steps`` steps synchronised around each component.
Prints tables and writes JSON (default bench_output/throughput.json). Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import math
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import flop_counter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mal_core.config.experiment import ExperimentConfig  # noqa: E402
from mal_core.config.loader import parse_spec, read_yaml  # noqa: E402
from mal_core.data.crops import box_mask_in_crop, eval_margins, expand_box, train_margins  # noqa: E402
from mal_core.data.datamodule import load_train_coco  # noqa: E402
from mal_core.data.datasets import BoxCropDataset, collate_crops  # noqa: E402
from mal_core.data.synthetic import generate_synthetic_dataset  # noqa: E402
from mal_core.engine.labelling import Labeller, TestTimeSettings  # noqa: E402
from mal_core.engine.module import MALModule  # noqa: E402
from mal_core.engine.optim import build_optimizer  # noqa: E402
from mal_core.engine.schedule import scaled_lr  # noqa: E402
from mal_core.engine.trainer import precision_for  # noqa: E402
from mal_core.losses import crf as crf_module  # noqa: E402
from mal_core.losses.objective import mal_objective  # noqa: E402
from mal_core.model.build import build_network  # noqa: E402
from mal_core.utils.io import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIB = 2.0**20
CONFIGS = ("cpu_tiny", "base512")
DEFAULT_BATCHES = {"cpu_tiny": {"cpu": [8, 32], "cuda": [32, 128, 512]},
                   "base512": {"cpu": [2], "cuda": [4, 8, 16, 32]}}
DEFAULT_STEPS = {"cpu": (5, 2), "cuda": (20, 5)}  # (steps, warmup)
MAX_CPU_STEPS_BASE512 = 3
IMAGE_HW = (480, 640)  # (height, width) of the simulated source images
TRAIN_PARTS = ("to_device", "student_fwd", "teacher_fwd", "crf_refine", "losses", "backward", "optimizer", "ema")
INFER_PARTS = ("to_device", "label")
FLOP_PARTS = ("student_fwd", "teacher_fwd", "backward")

# Dense peak TFLOPS per GPU (name substring, first match wins): bf16/fp16 tensor cores, TF32 tensor cores, plain fp32.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIE", {"16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # SXM
    ("H200", {"16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    ("A100", {"16": 312.0, "tf32": 156.0, "fp32": 19.5}),
]
FLOP_NOTE = ("FLOPs are counted by torch.utils.flop_counter.FlopCounterMode over student forward + backward and "
             "teacher forward (matmul, conv, attention), and for labelling over the network passes of one batch "
             "(main, flip and teacher); the CRF mean-field refinement, interpolation and other elementwise work are "
             "not counted, so MFU understates the work done. CPU peak: cores x 2 FMA pipes x SIMD lanes x 2 x the "
             "clock of /proc/cpuinfo.")


# ----- small helpers ------------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free(device: torch.device, module: torch.nn.Module | None = None) -> None:
    if module is not None:
        for p in module.parameters():
            p.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _loadavg() -> float | None:
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None


# Attention on CPU runs as aten._scaled_dot_product_flash_attention_for_cpu, which FlopCounterMode does not know.
def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_bwd_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def _flop_mapping() -> dict[Any, Callable]:
    ops = torch.ops.aten
    mapping: dict[Any, Callable] = {}
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[ops._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[ops._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_bwd_flops
    return mapping


# ----- memory -------------------------------------------------------------------------------------------------------
def _proc_status_mib(field: str) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return None


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


class PeakMemory:
    """CUDA: peak bytes held by tensors (``max_memory_allocated``, weights and optimizer state included).

    CPU: the process's peak RSS (torch allocations bypass tracemalloc). Freed heap is returned first (malloc_trim);
    where the kernel lets the peak be reset (writing 5 to /proc/self/clear_refs) it is VmHWM since the reset,
    otherwise ``ru_maxrss``, the peak over the process's lifetime, which only shows a run that goes above every
    earlier one. ``growth_mib`` is the rise over the resident size (CPU) or allocated bytes (CUDA) at the reset.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base_mib = 0.0
        self.resettable = False

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mib = torch.cuda.memory_allocated(self.device) / MIB
            return
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # hand freed heap back so RSS growth is this run's
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = _proc_status_mib("VmHWM") is not None
        except OSError:
            self.resettable = False
        self.base_mib = (_proc_status_mib("VmRSS") or 0.0) if self.resettable else _maxrss_mib()

    def read(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / MIB
            return {"kind": "cuda max_memory_allocated", "peak_mib": round(peak, 1),
                    "growth_mib": round(peak - self.base_mib, 1),
                    "reserved_mib": round(torch.cuda.max_memory_reserved(self.device) / MIB, 1)}
        if self.resettable:
            peak, kind = _proc_status_mib("VmHWM") or 0.0, "process peak RSS (VmHWM since reset)"
        else:
            peak, kind = _maxrss_mib(), "process peak RSS (ru_maxrss, lifetime)"
        return {"kind": kind, "peak_mib": round(peak, 1), "growth_mib": round(max(peak - self.base_mib, 0.0), 1)}


# ----- synthetic batches --------------------------------------------------------------------------------------------
def _sample_box(rng: np.random.Generator, min_area: float, max_area: float) -> tuple[float, float, float, float]:
    """A box in a 640x480 image: log-uniform side 8..480 px, aspect within e^+-0.7, area inside the filter."""
    h_img, w_img = IMAGE_HW
    bw = bh = 64.0
    for _ in range(1000):
        side = math.exp(rng.uniform(math.log(8.0), math.log(min(h_img, w_img))))
        aspect = math.exp(rng.uniform(-0.7, 0.7))
        bw, bh = min(side * math.sqrt(aspect), w_img - 1.0), min(side / math.sqrt(aspect), h_img - 1.0)
        if min_area < bw * bh < max_area:
            break
    x0, y0 = rng.uniform(0.0, w_img - bw), rng.uniform(0.0, h_img - bh)
    return x0, y0, x0 + bw, y0 + bh


def make_batch(cfg: ExperimentConfig, batch_size: int, *, train: bool, rng: np.random.Generator,
               gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A host batch shaped like collate_crops' output of BoxCropDataset (train or test view)."""
    size, d, t = cfg.dataset.crop_size, cfg.dataset, cfg.train
    boxes, exts, masks = [], [], []
    for _ in range(batch_size):
        box = _sample_box(rng, d.min_obj_size, d.max_obj_size) if train else _sample_box(rng, 0.0, math.inf)
        margins = (train_margins(rng.random(6).tolist(), t.margin_rate[0], t.margin_rate[1]) if train
                   else eval_margins(cfg.postprocess.margin_rate))
        ext = expand_box(box, margins)
        boxes.append(box)
        exts.append(ext)
        masks.append(box_mask_in_crop(box, ext, size))
    image = torch.randn(batch_size, 3, size, size, generator=gen)
    batch = {"image": image, "box_mask": torch.from_numpy(np.stack(masks))[:, None],
             "box_area": torch.tensor([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes], dtype=torch.float32)}
    if train:  # the teacher sees the un-jittered view of the same crop
        batch["timage"] = image + 0.1 * torch.randn(image.shape, generator=gen)
    else:
        batch["ext_box"] = torch.tensor(exts, dtype=torch.long)
        batch["box"] = torch.tensor(boxes, dtype=torch.float64)
        batch["image_size"] = torch.tensor([IMAGE_HW] * batch_size, dtype=torch.long)
        batch["index"] = torch.arange(batch_size)
    return batch


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# ----- the step -----------------------------------------------------------------------------------------------------
class StepRunner:
    """Runs MAL's training and inference steps. ``mode``: "off" (plain), "time" (synchronise and time each
    component), "flops" (count each component's FLOPs)."""

    def __init__(self, module: MALModule, cfg: ExperimentConfig, device: torch.device, precision: str) -> None:
        self.module, self.cfg, self.device, self.precision = module, cfg, device, precision
        self.mode = "off"
        self.times: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.nonfinite = 0
        self._flop_map = _flop_mapping()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda" or self.precision == "32-true":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision.startswith("bf16") else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.mode == "time":
            _sync(self.device)
            t0 = time.perf_counter()
            yield
            _sync(self.device)
            self.times[name] += time.perf_counter() - t0
        elif self.mode == "flops" and name in FLOP_PARTS:
            with flop_counter.FlopCounterMode(display=False, custom_mapping=self._flop_map) as counter:
                yield
            self.flops[name] += counter.get_total_flops()
        else:
            yield

    def optimizer(self, batch_size: int) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler | None]:
        """AdamW as MALModule.configure_optimizers builds it (one device, lr scaled by the batch)."""
        t = self.cfg.train
        opt = build_optimizer(self.module.model.student, t, scaled_lr(t.lr, 1, batch_size))
        scaler = torch.amp.GradScaler("cuda") if self.precision == "16-mixed" else None
        return opt, scaler

    @contextlib.contextmanager
    def _refine_phase(self) -> Iterator[None]:
        """While timing, the CRF mean-field refinement inside mal_objective is timed as its own component."""
        if self.mode != "time":
            yield
            return
        original = crf_module.mean_field_refine

        def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
            with self.phase("crf_refine"):
                return original(*args, **kwargs)

        crf_module.mean_field_refine = timed
        try:
            yield
        finally:
            crf_module.mean_field_refine = original

    def train_step(self, host: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None) -> None:
        t, model = self.cfg.train, self.module.model
        with self.phase("to_device"):
            batch = _to_device(host, self.device)
        areas = batch["box_area"]
        with self.autocast():  # Lightning's precision plugin wraps the whole training_step
            with self.phase("student_fwd"):
                logits = model.student(batch["image"], areas)
            with self.phase("teacher_fwd"), torch.no_grad():
                t_logits = model.teacher(batch["timage"], areas)
            refine_before = self.times["crf_refine"]
            with self.phase("losses"), self._refine_phase():  # the training objective (warm-ups done: epoch 1)
                loss = mal_objective(t, logits, t_logits, batch["image"], batch["timage"], batch["box_mask"],
                                     epoch=1, step=0).loss
                if not torch.isfinite(loss):  # a host sync, as in training_step; the bench steps on regardless
                    self.nonfinite += 1
            self.times["losses"] -= self.times["crf_refine"] - refine_before  # refinement counted once
            with self.phase("backward"):
                opt.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler is not None else loss).backward()
            with self.phase("optimizer"):
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
            with self.phase("ema"):
                model.ema_update()

    def infer_step(self, host: dict[str, torch.Tensor]) -> None:
        inf = self.cfg.inference
        mode = {"use_teacher": inf.use_teacher_test, "use_mixed": inf.use_mixed_model_test,
                "use_flip": inf.use_flip_test}
        labeller = Labeller(self.module.model, TestTimeSettings.from_config(self.cfg, mode))
        with self.phase("to_device"):
            batch = _to_device(host, self.device)
        with torch.inference_mode(), self.autocast(), self.phase("label"):
            labeller.label(batch)  # masks come back on the host, as a labelling job gets them


def _timed(fn: Callable[[dict], None], batches: list[dict], warmup: int, steps: int, device: torch.device) -> float:
    for i in range(warmup):
        fn(batches[i % len(batches)])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        fn(batches[(warmup + i) % len(batches)])
    _sync(device)
    return time.perf_counter() - t0


# ----- benchmarks ---------------------------------------------------------------------------------------------------
def bench_train(runner: StepRunner, bs: int, args: argparse.Namespace, rng: np.random.Generator,
                gen: torch.Generator, mem: PeakMemory, peak_tflops: float | None) -> dict[str, Any]:
    cfg, device = runner.cfg, runner.device
    runner.module.model.train()
    batches = [make_batch(cfg, bs, train=True, rng=rng, gen=gen) for _ in range(min(max(args.steps, 1), 3))]
    opt, scaler = runner.optimizer(bs)
    mem.reset()
    runner.mode, runner.nonfinite = "flops", 0
    runner.flops.clear()
    runner.train_step(batches[0], opt, scaler)  # untimed: counts FLOPs and pays first-step costs
    flops = {k: int(runner.flops.get(k, 0)) for k in FLOP_PARTS}
    runner.mode = "off"

    def step(b: dict[str, torch.Tensor]) -> None:
        runner.train_step(b, opt, scaler)

    elapsed = _timed(step, batches, args.warmup, args.steps, device)
    out: dict[str, Any] = {"status": "ok", "steps": args.steps, "warmup": args.warmup}
    if args.steps > 0:
        step_s = elapsed / args.steps
        out.update(instances_per_s=bs / step_s, step_ms=1000.0 * step_s)
    profile = {}
    if args.profile_steps > 0:
        runner.mode = "time"
        runner.times.clear()
        _timed(step, batches, 0, args.profile_steps, device)
        profile = {k: 1000.0 * runner.times.get(k, 0.0) / args.profile_steps for k in TRAIN_PARTS}
    runner.mode = "off"
    out["memory"] = mem.read()
    out["nonfinite_losses"] = runner.nonfinite
    total = sum(flops.values())
    out["flops_per_step"] = {**flops, "total": total}
    out["gflop_per_instance"] = total / bs / 1e9
    if "step_ms" in out:
        achieved = total / (out["step_ms"] / 1000.0) / 1e12
        out["achieved_tflops"] = achieved
        out["mfu"] = achieved / peak_tflops if peak_tflops else None
    if profile:
        out["profile_ms"] = profile
        out["profile_step_ms"] = sum(profile.values())
    opt.zero_grad(set_to_none=True)
    return out


def bench_infer(runner: StepRunner, bs: int, args: argparse.Namespace, rng: np.random.Generator,
                gen: torch.Generator, mem: PeakMemory, peak_tflops: float | None) -> dict[str, Any]:
    cfg, device = runner.cfg, runner.device
    runner.module.model.eval()
    batches = [make_batch(cfg, bs, train=False, rng=rng, gen=gen) for _ in range(min(max(args.steps, 1), 3))]
    mem.reset()
    runner.mode = "off"
    with flop_counter.FlopCounterMode(display=False, custom_mapping=runner._flop_map) as counter:
        runner.infer_step(batches[0])  # untimed first step; counts the FLOPs of the network passes
    flops = counter.get_total_flops()
    elapsed = _timed(runner.infer_step, batches, args.warmup, args.steps, device)
    out: dict[str, Any] = {"status": "ok", "steps": args.steps, "gflop_per_instance": flops / bs / 1e9}
    if args.steps > 0:
        out.update(instances_per_s=bs * args.steps / elapsed, batch_ms=1000.0 * elapsed / args.steps)
        out["achieved_tflops"] = flops * args.steps / elapsed / 1e12
        out["mfu"] = out["achieved_tflops"] / peak_tflops if peak_tflops else None
    if args.profile_steps > 0:
        runner.mode = "time"
        runner.times.clear()
        _timed(runner.infer_step, batches, 0, args.profile_steps, device)
        out["profile_ms"] = {k: 1000.0 * runner.times.get(k, 0.0) / args.profile_steps for k in INFER_PARTS}
    runner.mode = "off"
    out["memory"] = mem.read()
    runner.module.model.train()
    return out


def bench_onnx(runner: StepRunner, onnx_path: Path, bs: int, args: argparse.Namespace, rng: np.random.Generator,
               gen: torch.Generator) -> dict[str, Any]:
    """The exported graph (student + teacher logits of a batch of crops) on CPU: PyTorch (TraceablePair, the
    module export traces, under inference_mode) vs onnxruntime (CPU provider, torch's thread count) on the same
    batches; instances/s and the largest logit difference."""
    import onnxruntime as ort

    from mal_core.engine.export import export_onnx
    from mal_core.engine.onnx_model import TraceablePair, run_session

    cfg = runner.cfg
    pair = TraceablePair(runner.module.model, cfg.dataset.crop_size).eval()
    export_onnx(pair, onnx_path, crop_size=cfg.dataset.crop_size, opset=cfg.export.opset_version, batch_size=-1,
                metadata={})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    batches = [make_batch(cfg, bs, train=False, rng=rng, gen=gen) for _ in range(min(max(args.steps, 1), 3))]
    out: dict[str, Any] = {"status": "ok", "steps": args.steps, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        ref = pair(batches[0]["image"], batches[0]["box_area"])
        got = run_session(session, batches[0]["image"], batches[0]["box_area"])
        out["max_abs_logit_diff"] = max(float((torch.from_numpy(g) - r).abs().max()) for g, r in zip(got, ref,
                                                                                                       strict=True))
        runs = {"pytorch": lambda b: pair(b["image"], b["box_area"]),
                "onnxruntime": lambda b: run_session(session, b["image"], b["box_area"])}
        for name, fn in runs.items():
            elapsed = _timed(fn, batches, args.warmup, max(args.steps, 1), torch.device("cpu"))
            out[f"{name}_instances_per_s"] = bs * max(args.steps, 1) / elapsed
    runner.module.model.train()  # as bench_infer leaves it
    return out


def bench_loader(dataset: BoxCropDataset, bs: int, n_batches: int, seed: int) -> dict[str, Any]:
    """BoxCropDataset(train=True).__getitem__ + collate_crops in this process (a DataLoader with 0 workers)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g).tolist()  # the train loader shuffles: few image-cache hits
    collate_crops([dataset[order[0]]])  # warm imports and the first decode
    t0 = time.perf_counter()
    for b in range(n_batches):
        collate_crops([dataset[order[(b * bs + j) % len(order)]] for j in range(bs)])
    elapsed = time.perf_counter() - t0
    return {"instances_per_s": bs * n_batches / elapsed, "batch_ms": 1000.0 * elapsed / n_batches,
            "batches": n_batches, "dataset_instances": len(dataset)}


def _guarded(fn: Callable[[], dict[str, Any]], device: torch.device, module: torch.nn.Module) -> dict[str, Any]:
    try:
        result = fn()
    except Exception as exc:  # only out-of-memory is recorded, everything else is re-raised
        if not _is_oom(exc):
            raise
        result = {"status": "OOM", "error": str(exc).strip().splitlines()[0][:300]}
    _free(device, module)
    return result


# ----- configs and devices ------------------------------------------------------------------------------------------
def load_config(name: str, overrides: list[str]) -> ExperimentConfig:
    if name == "cpu_tiny":
        data = read_yaml(ROOT / "examples" / "cpu_tiny.yaml")
    elif name == "base512":
        data = {}
    elif name.endswith((".yaml", ".yml")):
        data = read_yaml(name)
    else:
        raise SystemExit(f"unknown config {name!r}: use {', '.join(CONFIGS)} or a path to a YAML spec")
    return parse_spec(data, overrides)[0]


def apply_torch_flags(cfg: ExperimentConfig) -> bool:
    """The determinism/benchmark flags run_train hands Lightning (deterministic='warn'); returns determinism."""
    deterministic = bool(cfg.train.cudnn.deterministic)
    torch.backends.cudnn.benchmark = bool(cfg.train.cudnn.benchmark) and not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    return deterministic


def cpu_peak_tflops(threads: int) -> tuple[float | None, str]:
    """FP32 FMA peak of ``threads`` cores: cores x FLOP/cycle x clock, with FLOP/cycle = 2 FMA pipes x SIMD lanes
    x 2 (AVX-512: 16 lanes, AVX2 + FMA: 8, else 4 lanes without FMA) and the clock /proc/cpuinfo reports."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        info = Path("/proc/cpuinfo").read_text()
        flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
        mhz = float(next(line for line in info.splitlines() if line.startswith("cpu MHz")).split(":", 1)[1])
        per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
        return threads * per_cycle * mhz / 1e6, (f"cpu: {threads} cores x {per_cycle} FP32 FLOP/cycle x "
                                                 f"{mhz / 1000:.2f} GHz")
    return None, "cpu: peak unknown"


def resolve_peak(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """Peak TFLOPS for MFU: --peak-tflops (0 turns MFU off), else the CPU's FMA peak (:func:`cpu_peak_tflops`) or
    the GPU's by name and precision."""
    if override is not None:
        return (override or None), "--peak-tflops"
    if device.type != "cuda":
        return cpu_peak_tflops(torch.get_num_threads())
    name = torch.cuda.get_device_name(device).upper()
    if precision == "32-true":
        column = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    else:
        column = "16"
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks[column], f"{key} {column} dense"
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (its dense peak for this precision; 0 skips MFU)")


def _config_summary(cfg: ExperimentConfig, precision: str, deterministic: bool) -> dict[str, Any]:
    m, t, s = cfg.model, cfg.train, cfg.dataset.crop_size
    crf_side = s // m.mask_stride * t.crf_size_ratio
    return {"arch": m.arch, "crop_size": s, "mask_stride": m.mask_stride, "head_hidden": m.mask_head_hidden_channel,
            "head_out": m.mask_head_out_channel, "head_convs": m.mask_head_num_convs,
            "scale_adaptive": not m.not_adjust_scale, "crf_num_iter": t.crf_num_iter, "crf_side": crf_side,
            "crf_kernel_size": t.crf_kernel_size, "use_amp": t.use_amp, "precision": precision,
            "deterministic": deterministic, "spec_batch_size": t.batch_size,
            "inference_flags": {"use_teacher": cfg.inference.use_teacher_test,
                                "use_mixed": cfg.inference.use_mixed_model_test,
                                "use_flip": cfg.inference.use_flip_test}}


# ----- output -------------------------------------------------------------------------------------------------------
def _f(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)


def print_config(name: str, res: dict[str, Any], device: torch.device) -> None:
    s = res["spec"]
    head = "scale-adaptive" if s["scale_adaptive"] else "fixed-scale"
    print(f"\n== {name}: {s['arch']}, crop {s['crop_size']}, head {s['head_hidden']}/{s['head_out']} {head}, "
          f"CRF {s['crf_num_iter']} it at {s['crf_side']}x{s['crf_side']}, {s['precision']}, {device.type}; "
          f"{res['student_params'] / 1e6:.2f} M student params ==")
    mem_head = "peak MiB" if device.type == "cuda" else "RSS+ MiB"
    cols = [("batch", 6), ("train inst/s", 13), ("step ms", 10), ("infer inst/s", 13), (f"train {mem_head}", 15),
            (f"infer {mem_head}", 15), ("GFLOP/inst", 11), ("TFLOPS", 8), ("MFU", 7), ("infer MFU", 10),
            ("loader inst/s", 14), ("workers", 8)]
    print("".join(f"{c:>{w}}" for c, w in cols))
    for row in res["rows"]:
        tr, inf, ld = row["train"], row["infer"], row.get("loader", {})
        ok, iok = tr.get("status") == "ok", inf.get("status") == "ok"
        mem_key = "peak_mib" if device.type == "cuda" else "growth_mib"
        cells = [
            str(row["batch_size"]),
            _f(tr.get("instances_per_s"), ".1f") if ok else tr["status"],
            _f(tr.get("step_ms"), ".1f") if ok else tr["status"],
            _f(inf.get("instances_per_s"), ".1f") if iok else inf["status"],
            _f(tr["memory"][mem_key], ".0f") if ok else tr["status"],
            _f(inf["memory"][mem_key], ".0f") if iok else inf["status"],
            _f(tr.get("gflop_per_instance"), ".2f") if ok else "-",
            _f(tr.get("achieved_tflops"), ".3f") if ok else "-",
            (_f(tr["mfu"] * 100, ".1f") + "%" if tr.get("mfu") is not None else "n/a") if ok else "-",
            (_f(inf["mfu"] * 100, ".1f") + "%" if inf.get("mfu") is not None else "n/a") if iok else "-",
            _f(ld.get("instances_per_s"), ".1f"),
            _f(row.get("loader_workers_needed"), "d"),
        ]
        print("".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols, strict=True)))
    rows = [r for r in res["rows"] if "profile_ms" in r["train"]]
    if rows:
        print("training step profile (ms per step, synchronised around each component; % of their sum):")
        print(f"{'component':<16}" + "".join(f"{'b=' + str(r['batch_size']) + ' ms':>12}{'%':>7}" for r in rows))
        for part in TRAIN_PARTS:
            line = f"{part:<16}"
            for r in rows:
                ms, total = r["train"]["profile_ms"][part], r["train"]["profile_step_ms"]
                line += f"{ms:>12.2f}{100.0 * ms / total if total else 0.0:>6.1f}%"
            print(line)
        print(f"{'sum (synced)':<16}" + "".join(f"{r['train']['profile_step_ms']:>12.2f}{'':>7}" for r in rows))
        print(f"{'step (plain)':<16}" + "".join(f"{_f(r['train'].get('step_ms'), '.2f'):>12}{'':>7}" for r in rows))
    orows = [r for r in res["rows"] if r.get("onnx", {}).get("status") == "ok"]
    if orows:
        print("exported graph (student + teacher logits) on CPU, instances/s:")
        print(f"{'batch':>6}{'pytorch':>12}{'onnxruntime':>13}{'ratio':>8}{'max |diff|':>12}")
        for r in orows:
            o = r["onnx"]
            ratio = o["onnxruntime_instances_per_s"] / o["pytorch_instances_per_s"]
            print(f"{r['batch_size']:>6}{o['pytorch_instances_per_s']:>12.1f}{o['onnxruntime_instances_per_s']:>13.1f}"
                  f"{ratio:>8.2f}{o['max_abs_logit_diff']:>12.2e}")
    irows = [r for r in res["rows"] if "profile_ms" in r["infer"]]
    if irows:
        print("inference batch profile (ms per batch):")
        print(f"{'component':<16}" + "".join(f"{'b=' + str(r['batch_size']) + ' ms':>12}{'':>7}" for r in irows))
        for part in INFER_PARTS:
            print(f"{part:<16}" + "".join(f"{r['infer']['profile_ms'][part]:>12.2f}{'':>7}" for r in irows))


# ----- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--configs", default=None, help="comma list of cpu_tiny, base512 or YAML spec paths "
                    "(default: cpu_tiny on CPU, cpu_tiny,base512 on CUDA)")
    ap.add_argument("--batch-sizes", default=None, help="comma list (default: per config and device)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per batch size (default 20 CUDA, 5 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA, 2 CPU)")
    ap.add_argument("--profile-steps", type=int, default=None, help="steps of the per-component profile "
                    "(default: --steps; 0 skips it)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense peak TFLOPS for MFU (default by GPU "
                    "name and precision; required for other GPUs; 0 skips MFU)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="spec override key=value, "
                    "applied to every config (repeatable)")
    ap.add_argument("--loader-image-size", type=int, default=160, help="side of the synthetic loader images")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime vs PyTorch comparison (CPU only)")
    ap.add_argument("--json", default=str(ROOT / "bench_output" / "throughput.json"))
    args = ap.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    steps_given = args.steps is not None
    d_steps, d_warmup = DEFAULT_STEPS[args.device]
    args.steps = d_steps if args.steps is None else args.steps
    args.warmup = d_warmup if args.warmup is None else args.warmup
    args.profile_steps = args.steps if args.profile_steps is None else args.profile_steps
    if min(args.steps, args.warmup, args.profile_steps) < 0:
        ap.error("--steps, --warmup and --profile-steps must be >= 0")
    default_configs = "cpu_tiny" if args.device == "cpu" else "cpu_tiny,base512"
    args.configs = [c.strip() for c in (args.configs or default_configs).split(",") if c.strip()]
    if args.device == "cpu" and "base512" in args.configs and (not steps_given or args.steps > MAX_CPU_STEPS_BASE512):
        ap.error("base512 on CPU is slow (about 15 s per step at batch 2): ask for it with "
                 f"--steps <= {MAX_CPU_STEPS_BASE512} (e.g. --batch-sizes 2 --steps 1 --warmup 0)")
    args.batch_sizes = _ints(args.batch_sizes) if args.batch_sizes else None
    if args.batch_sizes is not None and (not args.batch_sizes or min(args.batch_sizes) < 1):
        ap.error("--batch-sizes must be positive integers")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cfgs = {name: load_config(name, args.overrides) for name in args.configs}
    if any(c.train.cudnn.deterministic for c in cfgs.values()):  # before cuBLAS starts, as Lightning does
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    precisions = {name: precision_for("gpu" if device.type == "cuda" else "cpu", c.train.use_amp)
                  for name, c in cfgs.items()}
    peaks = {name: resolve_peak(device, precisions[name], args.peak_tflops) for name in cfgs}  # fail fast
    load_start = _loadavg()
    meta = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv[1:],
        "device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else _cpu_name(), "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_1m_start": load_start,
        "steps": args.steps, "warmup": args.warmup, "profile_steps": args.profile_steps, "overrides": args.overrides,
        "inputs": "random N(0,1) crops; one box per crop in a 640x480 image, log-uniform side 8..480 px, train "
        "boxes inside dataset.min/max_obj_size; crop geometry from mal_core.data.crops",
        "flops_note": FLOP_NOTE,
    }
    print(f"device: {meta['device_name']} ({device.type}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load_start}")
    if device.type == "cpu" and load_start is not None and load_start > 0.5 * (os.cpu_count() or 1):
        print("note: the CPU is busy with other work; these timings are contended"
              + ("" if args.threads else " (--threads 1 keeps torch's thread barriers from stalling on it)"))
    out: dict[str, Any] = {"meta": meta, "configs": {}}
    mem = PeakMemory(device)
    with tempfile.TemporaryDirectory(prefix="mal_bench_") as tmp:
        synth = generate_synthetic_dataset(tmp, num_train_images=20, num_val_images=2,
                                           image_size=args.loader_image_size, seed=args.seed)
        for name, cfg in cfgs.items():
            out["configs"][name] = run_config(name, cfg, precisions[name], peaks[name], synth, device, args, rng,
                                              gen, mem)
            _free(device)  # the config's model and optimizer state went with run_config's frame
            print_config(name, out["configs"][name], device)
    meta["loadavg_1m_end"] = _loadavg()
    print(f"\nload average (1 min) at start {load_start}, at end {meta['loadavg_1m_end']}")
    print(FLOP_NOTE)
    if device.type == "cpu":
        print("CPU memory is process peak RSS growth over the resident size at the start of each run "
              f"({mem.read()['kind']}).")
    path = atomic_write_json(args.json, out)
    print(f"wrote {path}")
    return 0


def run_config(name: str, cfg: ExperimentConfig, precision: str, peak: tuple[float | None, str], synth: Any,
               device: torch.device, args: argparse.Namespace, rng: np.random.Generator, gen: torch.Generator,
               mem: PeakMemory) -> dict[str, Any]:
    deterministic = apply_torch_flags(cfg)
    module = MALModule(cfg, categories=[{"id": 1, "name": "x"}], network=build_network(cfg)).to(device)
    runner = StepRunner(module, cfg, device, precision)
    student = module.model.student
    res: dict[str, Any] = {
        "spec": _config_summary(cfg, precision, deterministic),
        "student_params": sum(p.numel() for p in student.parameters()),
        "trainable_params": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "peak_tflops": peak[0], "peak_source": peak[1], "rows": [],
    }
    dcfg = dataclasses.replace(cfg.dataset, train_ann_path=str(synth.train_ann_path),
                               train_img_dir=str(synth.train_img_dir))
    coco = load_train_coco(dataclasses.replace(cfg, dataset=dcfg))
    if not coco.instances:  # every synthetic box under min_obj_size: time the loader on all of them
        coco = load_train_coco(dataclasses.replace(cfg, dataset=dataclasses.replace(dcfg, min_obj_size=0.0)))
        res["loader_note"] = "no synthetic box passed dataset.min_obj_size; loader timed without the filter"
    dataset = BoxCropDataset(coco, cfg.dataset.crop_size, train=True, margin_rate=cfg.train.margin_rate)
    batch_sizes = sorted(args.batch_sizes or DEFAULT_BATCHES.get(name, {}).get(device.type) or [cfg.train.batch_size])
    # the onnxruntime comparison is a CPU one; the model is exported afresh for each batch size (training steps
    # change the weights)
    onnx_path = Path(synth.train_img_dir).parent / f"{name}.onnx" if device.type == "cpu" and not args.no_onnx \
        else None
    for bs in batch_sizes:
        print(f"[{name}] batch {bs} ...", flush=True)
        row: dict[str, Any] = {"batch_size": bs}
        row["train"] = _guarded(lambda bs=bs: bench_train(runner, bs, args, rng, gen, mem, peak[0]), device, module)
        row["infer"] = _guarded(lambda bs=bs: bench_infer(runner, bs, args, rng, gen, mem, peak[0]),
                                device, module)
        row["loader"] = bench_loader(dataset, bs, max(1, min(args.steps, 5)), args.seed)
        if onnx_path is not None:
            row["onnx"] = _guarded(lambda bs=bs: bench_onnx(runner, onnx_path, bs, args, rng, gen), device, module)
        train_ips = row["train"].get("instances_per_s")
        if train_ips:
            row["loader_workers_needed"] = max(1, math.ceil(train_ips / row["loader"]["instances_per_s"]))
        res["rows"].append(row)
    return res


if __name__ == "__main__":
    sys.exit(main())
