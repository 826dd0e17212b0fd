"""The export action: a trained MAL checkpoint -> ``<results_dir>/<export.onnx_file>`` (ONNX, through
``torch.onnx``), checked with ``onnx.checker`` and run with onnxruntime against PyTorch on the same inputs.

The graph is described in :mod:`mal_core.engine.onnx_model`. The result reports the largest absolute difference
between the onnxruntime and PyTorch logits (student and teacher) on a verification batch with boxes of every size
bucket; beyond :data:`MAX_ABS_DIFF` the export is a failure.
"""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from pathlib import Path

import torch

from mal_core.config.actions import ACTIONS
from mal_core.config.experiment import ExperimentConfig
from mal_core.config.loader import spec_to_dict
from mal_core.engine.checkpoint_io import load_mal_checkpoint
from mal_core.engine.onnx_model import (
    INPUTS,
    META_CATEGORIES,
    META_FORMAT,
    META_SPEC,
    ONNX_FORMAT,
    OUTPUTS,
    TraceablePair,
    is_onnx_path,
    ort_session,
    run_session,
)
from mal_core.engine.restore import restore_module
from mal_core.engine.result import EngineResult
from mal_core.errors import CheckpointError
from mal_core.utils.io import atomic_write

log = logging.getLogger(__name__)

#: Largest accepted |onnxruntime - PyTorch| logit difference on the verification batch.
MAX_ABS_DIFF = 1e-3
#: Box areas of the example and verification batches: small, medium and large (every decoder path).
_AREAS = (20.0 * 20.0, 64.0 * 64.0, 200.0 * 200.0)


def _inputs(batch: int, crop_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    crops = torch.randn(batch, 3, crop_size, crop_size, generator=gen)
    areas = torch.tensor([_AREAS[i % len(_AREAS)] for i in range(batch)], dtype=torch.float32)
    return crops, areas


def export_onnx(pair: TraceablePair, path: Path, *, crop_size: int, opset: int, batch_size: int,
                metadata: dict[str, str]) -> None:
    """Trace ``pair`` to ONNX at ``path`` (atomically), with ``metadata`` in the model's metadata_props."""
    import onnx

    example = _inputs(batch_size if batch_size > 0 else len(_AREAS), crop_size, seed=0)
    dynamic = {name: {0: "batch"} for name in (*INPUTS, *OUTPUTS)} if batch_size <= 0 else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values taken as constants
        torch.onnx.export(pair, example, buffer, input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    atomic_write(path, lambda tmp: onnx.save(model, tmp))


def max_abs_diff(pair: TraceablePair, path: Path, crop_size: int, batch_size: int) -> float:
    """Largest |onnxruntime - PyTorch| over both outputs on a fresh verification batch."""
    crops, areas = _inputs(batch_size if batch_size > 0 else 2 * len(_AREAS) + 1, crop_size, seed=1)
    with torch.no_grad():
        ref = pair(crops, areas)
    got = run_session(ort_session(path), crops, areas)
    return max(float((torch.from_numpy(g) - r).abs().max()) for g, r in zip(got, ref, strict=True))


def run_export(cfg: ExperimentConfig, explicit_keys: set[str] | None = None) -> EngineResult:
    """Export ``export.checkpoint`` to ONNX; returns the file, the check results and the logit difference."""
    t0 = time.time()
    ex = cfg.export
    if is_onnx_path(ex.checkpoint):
        raise CheckpointError(f"export.checkpoint {ex.checkpoint!r} is already an ONNX file; export takes a MAL "
                              "checkpoint (.pth)", field="export.checkpoint")
    categories = load_mal_checkpoint(ex.checkpoint, field="export.checkpoint")["mal"]["categories"]
    module, merged = restore_module(cfg, ex.checkpoint, "export.checkpoint", explicit_keys or set(), categories, {})
    crop = merged.dataset.crop_size
    pair = TraceablePair(module.model.cpu().eval(), crop).eval()
    results_dir = Path(ACTIONS["export"].results_dir(cfg))
    results_dir.mkdir(parents=True, exist_ok=True)
    out_path = results_dir / ex.onnx_file
    out_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {META_FORMAT: ONNX_FORMAT, META_SPEC: json.dumps(spec_to_dict(merged)),
                META_CATEGORIES: json.dumps(categories), "mal_source_checkpoint": str(ex.checkpoint)}
    export_onnx(pair, out_path, crop_size=crop, opset=ex.opset_version, batch_size=ex.batch_size, metadata=metadata)
    diff = max_abs_diff(pair, out_path, crop, ex.batch_size)
    log.info("exported %s to %s; max |onnxruntime - pytorch| logit difference %.3g", ex.checkpoint, out_path, diff)
    if not diff <= MAX_ABS_DIFF:
        raise RuntimeError(f"onnxruntime logits differ from PyTorch by {diff:.3g} (> {MAX_ABS_DIFF}) for {out_path}")
    return EngineResult(
        results_dir=str(results_dir), metrics={"max_abs_logit_diff": diff},
        artifacts={"onnx_file": str(out_path), "checkpoint": str(ex.checkpoint), "opset_version": ex.opset_version,
                   "dynamic_batch": ex.batch_size <= 0, "onnx_checker": "passed"},
        details={"seconds": round(time.time() - t0, 2)})
