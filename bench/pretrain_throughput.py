"""MAE pretraining throughput: images/s, step time, peak memory and (on CUDA) MFU of one pretraining step (encoder on
the visible patches + decoder + per-patch loss + AdamW), on synthetic batches; plus the image loader's views/s on a
real folder (decode + random crop + resize), which bounds a CPU run as much as the model does.

Defaults: on CPU the recipe examples/cpu_pretrain.yaml (vit-mae-nano/8 @ 128); on CUDA vit-mae-base/16 at 224 and 512
in bf16 with the spec's default decoder (512 wide, 8 blocks). Not a test.

Usage: python bench/pretrain_throughput.py [--device cpu|cuda] [--images ../shared/data/coco128/train/images]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import PeakMemory, _cpu_name, _flop_mapping, _loadavg, _sync, resolve_peak  # noqa: E402

from mal_core.config import parse_spec  # noqa: E402
from mal_core.config.loader import read_yaml  # noqa: E402
from mal_core.engine.optim import build_mae_optimizer  # noqa: E402
from mal_core.model.mae import MAEDecoderSize, build_mae  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cases(device: torch.device) -> list[dict]:
    if device.type == "cuda":
        return [{"arch": "vit-mae-base/16", "crop": 224, "batches": [64, 128, 256], "decoder": MAEDecoderSize()},
                {"arch": "vit-mae-base/16", "crop": 512, "batches": [16, 32, 64], "decoder": MAEDecoderSize()}]
    cfg, _ = parse_spec(read_yaml(ROOT / "examples" / "cpu_pretrain.yaml"))
    p = cfg.pretrain
    return [{"arch": cfg.model.arch, "crop": cfg.dataset.crop_size, "batches": [p.batch_size],
             "decoder": MAEDecoderSize(p.decoder_hidden_size, p.decoder_num_layers, p.decoder_num_heads)}]


def bench_step(case: dict, bs: int, device: torch.device, bf16: bool, steps: int, warmup: int) -> dict:
    """Time ``steps`` pretraining steps of batch ``bs`` after ``warmup`` untimed ones."""
    torch.manual_seed(0)
    net = build_mae(case["arch"], case["crop"], decoder=case["decoder"]).to(device).train()
    opt = build_mae_optimizer(net, parse_spec({})[0].pretrain, lr=1e-4)
    x = torch.randn(bs, 3, case["crop"], case["crop"], device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with amp:
            loss = net(pixel_values=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    mem = PeakMemory(device)
    for _ in range(warmup):
        step()
    _sync(device)
    mem.reset()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        step()
    flops = counter.get_total_flops()
    return {"batch": bs, "step_ms": round(dt * 1e3, 1), "images_per_s": round(bs / dt, 1),
            "tflops_per_s": round(flops / dt / 1e12, 3), "memory": mem.read()}


def bench_loader(folder: Path, crop: int, n: int) -> dict:
    """Views/s of the pretrain dataset (one process) on the images of ``folder``."""
    from mal_core.data.loading import list_images
    from mal_core.data.pretrain_images import PretrainImages

    ds = PretrainImages(list_images(folder, field="--images"), crop)
    t0 = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    dt = time.perf_counter() - t0
    return {"images": str(folder), "views": n, "views_per_s": round(n / dt, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per case; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--images", default=None, help="image folder for the loader figure")
    ap.add_argument("--json", default=str(ROOT / "bench_output" / "pretrain_throughput.json"))
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    steps, warmup = args.steps or (20 if cuda else 5), args.warmup or (5 if cuda else 2)
    name = torch.cuda.get_device_name(device) if cuda else _cpu_name()
    print(f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}; load {_loadavg()}")
    rows = []
    for case in _cases(device):
        for bs in case["batches"]:
            try:
                res = bench_step(case, bs, device, bf16=cuda, steps=steps, warmup=warmup)
            except torch.cuda.OutOfMemoryError:
                res = {"batch": bs, "error": "out of memory"}
                torch.cuda.empty_cache()
            peak, _src = resolve_peak(device, "bf16-mixed" if cuda else "32-true", None)
            if peak and "tflops_per_s" in res:
                res["mfu"] = round(res["tflops_per_s"] / peak, 3)
            row = {"arch": case["arch"], "crop": case["crop"], **res}
            rows.append(row)
            print(json.dumps(row))
    loader = bench_loader(Path(args.images), _cases(torch.device("cpu"))[0]["crop"], 200) if args.images else None
    if loader:
        print(json.dumps(loader))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "rows": rows, "loader": loader}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
