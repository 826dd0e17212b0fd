"""Cross-field checks of a spec for one action (single fields are checked by the loader)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mal_core.config.actions import action_decl
from mal_core.config.experiment import DELIVERY_FORMATS, ExperimentConfig, ModelConfig
from mal_core.config.loader import get_dotted, get_field
from mal_core.errors import SpecError


def _need(value: str | None, key: str, what: str) -> None:
    if not value:
        raise SpecError(f"{key} is required for this action ({what})", field=key)


def _check_train(cfg: ExperimentConfig) -> None:
    d = cfg.dataset
    if bool(d.val_ann_path) != bool(d.val_img_dir):
        raise SpecError("dataset.val_ann_path and dataset.val_img_dir must be given together",
                        field="dataset.val_ann_path" if not d.val_ann_path else "dataset.val_img_dir")


def _check_export(cfg: ExperimentConfig) -> None:
    if cfg.export.batch_size == 0:
        raise SpecError("export.batch_size must be -1 (dynamic) or a positive batch size", field="export.batch_size")
    name = cfg.export.onnx_file
    if not name.lower().endswith(".onnx") or not name.strip() or Path(name).name.lower() == ".onnx":
        raise SpecError(f"export.onnx_file {name!r} must be a file name ending in .onnx (evaluate and inference tell "
                        "an ONNX model from a checkpoint by that suffix)", field="export.onnx_file",
                        hint="e.g. --set export.onnx_file=model.onnx")


def _check_pretrain(cfg: ExperimentConfig) -> None:
    p = cfg.pretrain
    if p.decoder_hidden_size % p.decoder_num_heads:
        raise SpecError(f"pretrain.decoder_num_heads ({p.decoder_num_heads}) must divide pretrain.decoder_hidden_size "
                        f"({p.decoder_hidden_size})", field="pretrain.decoder_num_heads")


def check_formats(formats: list[str], key: str) -> None:
    """Each name is a delivery format, once; :class:`SpecError` naming ``key`` otherwise."""
    unknown = [f for f in formats if f not in DELIVERY_FORMATS]
    if unknown or len(set(formats)) != len(formats):
        what = f"unknown format(s) {unknown}" if unknown else "a format named twice"
        raise SpecError(f"{key}: {what}; expected names from {list(DELIVERY_FORMATS)}", field=key)


def parse_class_scores(entries: list[str], key: str = "convert.class_min_scores") -> dict[str, float]:
    """``NAME=SCORE`` entries -> {name: score}; :class:`SpecError` naming ``key`` for a malformed entry."""
    out: dict[str, float] = {}
    for entry in entries:
        name, sep, value = str(entry).rpartition("=")
        try:
            score = float(value)
        except ValueError:
            score = -1.0
        if not sep or not name.strip() or not 0.0 <= score <= 1.0:
            raise SpecError(f"{key} entry {entry!r} must be NAME=SCORE with a score in [0, 1], e.g. person=0.4",
                            field=key)
        out[name.strip()] = score
    return out


def _check_convert(cfg: ExperimentConfig) -> None:
    c = cfg.convert
    if not c.formats:
        raise SpecError(f"convert.formats is empty; expected names from {list(DELIVERY_FORMATS)}",
                        field="convert.formats")
    check_formats(c.formats, "convert.formats")
    parse_class_scores(c.class_min_scores)


def _check_inference(cfg: ExperimentConfig) -> None:
    check_formats(cfg.inference.output_formats, "inference.output_formats")


#: Checks beyond the table's required keys, by config section (sections without any are absent).
SECTION_CHECKS: dict[str, Callable[[ExperimentConfig], None]] = {
    "train": _check_train, "export": _check_export, "pretrain": _check_pretrain, "convert": _check_convert,
    "inference": _check_inference}


def _check_common(cfg: ExperimentConfig) -> None:
    t = cfg.train
    if len(t.margin_rate) != 2 or t.margin_rate[0] > t.margin_rate[1] or t.margin_rate[0] < 0:
        raise SpecError("train.margin_rate must be [low, high] with 0 <= low <= high", field="train.margin_rate")
    p = cfg.postprocess
    if not p.margin_rate or p.margin_rate[0] < 0:
        raise SpecError("postprocess.margin_rate must be a non-empty list of non-negative numbers",
                        field="postprocess.margin_rate")
    if len(p.mask_thres) not in (1, 3) or not all(0.0 <= v < 1.0 for v in p.mask_thres):
        raise SpecError("postprocess.mask_thres must hold 1 or 3 values in [0, 1)", field="postprocess.mask_thres")
    if t.crf_value_low_thres >= t.crf_value_high_thres:
        raise SpecError("train.crf_value_low_thres must be below train.crf_value_high_thres",
                        field="train.crf_value_low_thres")
    if len(t.optim_betas) != 2 or not all(0.0 <= b < 1.0 for b in t.optim_betas):
        raise SpecError("train.optim_betas must be two numbers in [0, 1)", field="train.optim_betas")
    if len(cfg.model.frozen_stages) not in (1, 2):
        raise SpecError("model.frozen_stages must be [-1] or [first, last]", field="model.frozen_stages")


def check_for_action(cfg: ExperimentConfig, action: str) -> None:
    """Raise :class:`SpecError` naming the field if ``cfg`` cannot run ``action``."""
    decl = action_decl(action)
    _check_common(cfg)
    if not (cfg.results_dir or (decl.own_results_dir_suffices and get_field(cfg, decl.results_key))):
        _need(cfg.results_dir, "results_dir", "where outputs are written")
    for need in decl.required:
        _need(get_field(cfg, need.key), need.key, need.what)
    check = SECTION_CHECKS.get(decl.section)
    if check is not None:
        check(cfg)


def clamp_for_action(cfg: ExperimentConfig, action: str) -> list[str]:
    """Adjust, in place, values TAO accepts but that cannot be honoured as given; one warning per change.

    ``<section>.warmup_epochs`` at or above ``<section>.num_epochs`` (train, pretrain: TAO's AutoML draws the
    warmup from its own range, whatever the epochs) becomes ``num_epochs - 1``. (A ``checkpoint_interval`` longer
    than the run needs no change: the final epoch always writes a checkpoint.)
    """
    warnings: list[str] = []
    name = action_decl(action).section
    sec = getattr(cfg, name)
    warmup, epochs = getattr(sec, "warmup_epochs", 0), getattr(sec, "num_epochs", 0)
    if warmup > 0 and warmup >= epochs:
        clamped = max(0, epochs - 1)
        warnings.append(f"{name}.warmup_epochs ({warmup}) is not below {name}.num_epochs ({epochs}); "
                        f"clamped to {clamped}")
        sec.warmup_epochs = clamped
    return warnings


#: Spec keys a trained checkpoint fixes: the architecture (every ``model.*`` key but the EMA momentum, which only
#: matters while training) and the crop size.
CHECKPOINT_FIXED_KEYS: tuple[str, ...] = tuple(
    f"model.{name}" for name in ModelConfig.__dataclass_fields__ if name != "teacher_momentum"
) + ("dataset.crop_size",)


def check_checkpoint_conflicts(spec: Mapping[str, Any], explicit: set[str], stored: Mapping[str, Any],
                               source: str) -> None:
    """Raise :class:`SpecError` when an explicitly set key of :data:`CHECKPOINT_FIXED_KEYS` differs from the
    checkpoint's stored spec (nested dicts; keys missing from ``stored`` are not compared)."""
    for key in CHECKPOINT_FIXED_KEYS:
        if key not in explicit:
            continue
        want, have = get_dotted(stored, key), get_dotted(spec, key)
        if want is not None and have != want:
            raise SpecError(f"{key}={have!r} conflicts with the checkpoint {source}, trained with {want!r}",
                            field=key, hint=f"drop {key} from the spec; it is read from the checkpoint")
