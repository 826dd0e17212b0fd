"""Rebuilding a trained model for evaluate / inference: the architecture comes from the checkpoint's stored spec;
an explicitly set, conflicting model setting is an error rather than a silent mismatch."""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from mal_core.config.checks import check_checkpoint_conflicts
from mal_core.config.experiment import ExperimentConfig, PostprocessConfig
from mal_core.config.loader import canonical_keys, parse_spec, spec_to_dict
from mal_core.engine.checkpoint_io import load_mal_checkpoint
from mal_core.errors import CheckpointError
from mal_core.model.build import build_network

if TYPE_CHECKING:  # Lightning is imported only where a LightningModule is needed (not by labelling jobs)
    from mal_core.engine.module import MALModule


def merge_checkpoint_spec(cfg: ExperimentConfig, stored: dict[str, Any], explicit: set[str],
                          source: str) -> ExperimentConfig:
    """``cfg`` with the model settings, crop size and post-processing taken from the checkpoint's spec ``stored``
    (post-processing keys set explicitly for this run are kept; a checkpoint written before the ``postprocess``
    section has them under their old names, which are read as their new ones)."""
    stored = canonical_keys(stored)
    stored_cfg, _ = parse_spec({"model": stored.get("model", {}),
                                "dataset": {"crop_size": stored.get("dataset", {}).get("crop_size", 512)},
                                "postprocess": stored.get("postprocess", {})})
    check_checkpoint_conflicts(spec_to_dict(cfg), explicit, spec_to_dict(stored_cfg), source)
    merged = copy.deepcopy(cfg)
    merged.model = copy.deepcopy(stored_cfg.model)
    merged.postprocess = copy.deepcopy(stored_cfg.postprocess)
    for f in dataclasses.fields(PostprocessConfig):  # given for this run: wins over the checkpoint's
        if f"postprocess.{f.name}" in explicit:
            setattr(merged.postprocess, f.name, getattr(cfg.postprocess, f.name))
    merged.dataset.crop_size = stored_cfg.dataset.crop_size
    return merged


def restore_network(cfg: ExperimentConfig, checkpoint: str, field: str,
                    explicit: set[str]) -> tuple[torch.nn.Module, ExperimentConfig, list[dict[str, Any]]]:
    """The student/teacher pair of ``checkpoint`` (an ``.onnx`` export runs through onnxruntime instead: same
    predictions, same test-time modes), the spec merged with the checkpoint's architecture, and its categories."""
    from mal_core.engine.onnx_model import is_onnx_path

    if is_onnx_path(checkpoint):
        from mal_core.engine.onnx_model import OnnxStudentTeacher, expected_shapes, read_onnx

        _model, stored, categories = read_onnx(checkpoint, field)
        network = OnnxStudentTeacher(checkpoint, field, mask_size=expected_shapes(stored)[1])
        return network, merge_checkpoint_spec(cfg, stored, explicit, checkpoint), categories
    ckpt = load_mal_checkpoint(checkpoint, field=field)
    merged = merge_checkpoint_spec(cfg, ckpt["mal"]["spec"], explicit, checkpoint)
    network = build_network(merged)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint} does not fit the model: missing {result.missing_keys[:5]}, unexpected "
                              f"{result.unexpected_keys[:5]}", field=field)
    return network.eval(), merged, list(ckpt["mal"].get("categories") or [])


def restore_module(cfg: ExperimentConfig, checkpoint: str, field: str, explicit: set[str],
                   categories: list[dict[str, Any]], test_mode: dict[str, bool]) -> tuple[MALModule, ExperimentConfig]:
    """:func:`restore_network` in a fresh :class:`MALModule` (Lightning's validation/predict loops)."""
    from mal_core.engine.module import MALModule

    network, merged, _stored = restore_network(cfg, checkpoint, field, explicit)
    module = MALModule(merged, categories, test_mode=test_mode, network=network)
    return module.eval(), merged
