"""What an agent needs to know about the MAL skill, declared in Python next to the config dataclasses.

``SKILL_INFO`` is rendered by codegen into ``references/skill_info.yaml`` (never edit that file by hand) and is the
source of the skill.md tables about data sources, parent-model mappings and multi-GPU keys. Every spec key named here
is checked against :func:`mal_core.config.loader.leaf_fields` when the model is built, so a typo fails codegen (and
loading a stale ``skill_info.yaml``) instead of reaching an agent. All paths are relative to the skill root (the
folder holding ``skill.md``).

The runtime reads the YAML back with :func:`load_skill_info`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from mal_core import __version__
from mal_core.config.actions import ACTIONS as ACTION_TABLE
from mal_core.config.io_specs import DataSource, FrozenModel, InputSpec, OutputSpec
from mal_core.config.loader import leaf_fields
from mal_core.errors import MalError

__all__ = [
    "ACTIONS",
    "SKILL_INFO",
    "ActionInfo",
    "AutomlInfo",
    "DataSource",
    "ErrorPattern",
    "Hardware",
    "InputSpec",
    "Metric",
    "Metrics",
    "MultiGpu",
    "OutputSpec",
    "SkillInfo",
    "SkillInfoError",
    "load_skill_info",
]

#: Actions the skill exposes, in the order tables list them (the keys of the action table).
ACTIONS: tuple[str, ...] = tuple(ACTION_TABLE)


class SkillInfoError(MalError):
    """``skill_info.yaml`` is missing, unreadable or does not match :class:`SkillInfo`."""

    code = "invalid_skill_info"


class Metric(FrozenModel):
    """A metric and the direction that counts as better."""

    name: str
    mode: Literal["max", "min"]


class Metrics(FrozenModel):
    """Metrics the evaluate action reports and the one AutoML optimises."""

    monitoring_metric: Metric
    available_metrics: list[str]
    source: str = Field(description="where the runtime reads the metric from")


class ActionInfo(FrozenModel):
    """How to run one action and what it reads and writes."""

    command: str
    runner: str
    schema_path: str
    config_format: Literal["yaml"] = "yaml"
    mode: Literal["config"] = "config"
    inputs: dict[str, InputSpec]
    outputs: dict[str, OutputSpec]
    upload_excludes: list[str] = Field(default_factory=list)


class MultiGpu(FrozenModel):
    """How multi-device and multi-node training is launched."""

    launch: str
    strategy: str
    single_device_strategy: str
    fsdp: bool
    lr_scaling: str
    multi_node_env: list[str]


class Hardware(FrozenModel):
    """Hardware needs of the default configuration."""

    min_gpus: int
    recommended_gpus: int
    min_gpu_memory_gb: int
    recommended_gpu: str
    cpu_supported: bool
    cpu_arch: str
    notes: list[str]


class ErrorPattern(FrozenModel):
    """A known failure, how to recognise it and how to fix it."""

    name: str
    symptom: str
    fix: str
    spec_keys: list[str]


class AutomlInfo(FrozenModel):
    """Model-level AutoML facts (the per-run ``automl_policy`` override lives in the request, not here)."""

    backend: str
    runner: str
    epochs_key: str
    backbone_key: str
    required_values: dict[str, Any]
    not_runnable_message: str


class SkillInfo(FrozenModel):
    """Content of ``references/skill_info.yaml``."""

    name: str
    skill_name: str
    network_arch: str
    version: str
    description: str
    automl_enabled: bool
    data_format: str
    dataset_type: str
    gpu_spec_key: str
    gpu_ids_spec_key: str
    node_spec_key: str
    metrics: Metrics
    actions: dict[str, ActionInfo]
    data_sources: dict[str, dict[str, DataSource]]
    spec_params: dict[str, dict[str, str]]
    spec_param_functions: dict[str, str]
    key_defaults: dict[str, Any] = Field(default_factory=dict)
    spec_shorthand_keys: dict[str, str]
    spec_templates: dict[str, str]
    example_spec_overrides: dict[str, dict[str, Any]]
    multi_gpu: MultiGpu
    hardware: Hardware
    error_patterns: list[ErrorPattern]
    automl: AutomlInfo

    def spec_keys(self) -> list[tuple[str, str]]:
        """Every (where, spec key) this document names, for validation."""
        out: list[tuple[str, str]] = [
            ("gpu_spec_key", self.gpu_spec_key),
            ("gpu_ids_spec_key", self.gpu_ids_spec_key),
            ("node_spec_key", self.node_spec_key),
            ("automl.epochs_key", self.automl.epochs_key),
            ("automl.backbone_key", self.automl.backbone_key),
        ]
        for action, info in self.actions.items():
            out += [(f"actions.{action}.inputs", k) for k in info.inputs]
            out += [(f"actions.{action}.outputs", k) for k in info.outputs]
        for action, sources in self.data_sources.items():
            out += [(f"data_sources.{action}", k) for k in sources]
        for action, params in self.spec_params.items():
            out += [(f"spec_params.{action}", k) for k in params]
        for action, overrides in self.example_spec_overrides.items():
            out += [(f"example_spec_overrides.{action}", k) for k in overrides]
        out += [(f"spec_shorthand_keys.{short}", key) for short, key in self.spec_shorthand_keys.items()]
        out += [("key_defaults", k) for k in self.key_defaults]
        out += [("automl.required_values", k) for k in self.automl.required_values]
        for i, pattern in enumerate(self.error_patterns):
            out += [(f"error_patterns.{i}.spec_keys", k) for k in pattern.spec_keys]
        return out

    @model_validator(mode="after")
    def _check_consistency(self) -> SkillInfo:
        known = set(leaf_fields())
        bad = [f"{where}: {key!r}" for where, key in self.spec_keys() if key not in known]
        if bad:
            raise ValueError("unknown spec key(s) (not a leaf of ExperimentConfig): " + "; ".join(bad))
        for table in ("actions", "data_sources", "spec_params", "spec_templates", "example_spec_overrides"):
            names = set(getattr(self, table))
            if names != set(ACTIONS):
                raise ValueError(f"{table} must cover exactly the actions {list(ACTIONS)}, got {sorted(names)}")
        used = {fn for params in self.spec_params.values() for fn in params.values()}
        undocumented = sorted(used - set(self.spec_param_functions))
        if undocumented:
            raise ValueError(f"spec_param_functions lacks a meaning for {undocumented}")
        for action, sources in self.data_sources.items():
            inputs = self.actions[action].inputs
            for key, src in sources.items():
                want = "folder" if src.runtime == "extracted_folder" else "file"
                if key not in inputs or inputs[key].type != want:
                    raise ValueError(f"data_sources.{action}.{key} needs actions.{action}.inputs.{key} of type {want}")
        if self.monitoring_metric_name not in self.metrics.available_metrics:
            raise ValueError("metrics.monitoring_metric.name must be one of metrics.available_metrics")
        return self

    @property
    def monitoring_metric_name(self) -> str:
        """Name of the metric AutoML optimises."""
        return self.metrics.monitoring_metric.name


def _action(action: str, inputs: dict[str, InputSpec], outputs: dict[str, OutputSpec]) -> ActionInfo:
    return ActionInfo(
        command=f"mal {action} -e {{config_path}}",
        runner=f"runners/{action}.py",
        schema_path=f"schemas/{action}.schema.json",
        inputs=inputs,
        outputs=outputs,
        upload_excludes=["inputs/"],
    )


SKILL_INFO = SkillInfo(
    name="mal",
    skill_name="mal-mask-auto-label",
    network_arch="mal",
    version=__version__,
    description=(
        "MAL (Mask Auto-Labeler): trains a ViT-MAE based model from COCO box annotations alone (MIL box-projection "
        "loss plus CRF self-training with an EMA teacher) and labels boxes with instance masks. Actions: train, "
        "evaluate (mask mIoU), inference (COCO JSON with masks), export (ONNX for onnxruntime), pretrain (MAE "
        "self-pretraining of the backbone on the user's own images, no labels)."
    ),
    automl_enabled=True,
    data_format="default",
    dataset_type="segmentation",
    gpu_spec_key="train.num_gpus",
    gpu_ids_spec_key="train.gpu_ids",
    node_spec_key="train.num_nodes",
    metrics=Metrics(
        monitoring_metric=Metric(name="mIoU", mode="max"),
        available_metrics=["mIoU", "mIoU_small", "mIoU_medium", "mIoU_large"],
        source="metrics.json written by evaluate in results_dir",
    ),
    actions={n: _action(n, dict(d.inputs), dict(d.outputs)) for n, d in ACTION_TABLE.items()},
    data_sources={n: dict(d.data_sources) for n, d in ACTION_TABLE.items()},
    spec_params={n: dict(d.spec_params) for n, d in ACTION_TABLE.items()},
    spec_param_functions={
        "output_dir": "current job results directory",
        "parent_model": "model file inferred from the parent job results folder",
        "resume_model": "newest checkpoint already in this job's results folder (resume)",
        "ptm_if_no_resume_model": "pretrained weights (a pretrain parent job's pretrained_model/ folder, a train "
                                  "parent's checkpoint, or the given path), only when there is nothing to resume",
        "create_inference_result_file_mal": "MAL inference JSON path",
    },
    key_defaults={},
    spec_shorthand_keys={
        "num_epochs": "train.num_epochs",
        "epochs": "train.num_epochs",
        "batch_size": "train.batch_size",
        "train_batch_size": "train.batch_size",
        "evaluate_batch_size": "evaluate.batch_size",
        "inference_batch_size": "inference.batch_size",
        "learning_rate": "train.lr",
        "lr": "train.lr",
        "weight_decay": "train.wd",
        "warmup_epochs": "train.warmup_epochs",
        "arch": "model.arch",
        "backbone": "model.arch",
        "crop_size": "dataset.crop_size",
        "load_mask": "dataset.load_mask",
        "pretrained_model": "train.pretrained_model_path",
        "resume_checkpoint": "train.resume_training_checkpoint_path",
        "num_gpus": "train.num_gpus",
        "gpu_ids": "train.gpu_ids",
        "num_nodes": "train.num_nodes",
        "seed": "train.seed",
        "checkpoint_interval": "train.checkpoint_interval",
        "validation_interval": "train.validation_interval",
    },
    spec_templates={action: f"references/spec_template_{action}.yaml" for action in ACTIONS},
    example_spec_overrides={n: dict(d.example_overrides) for n, d in ACTION_TABLE.items()},
    multi_gpu=MultiGpu(
        launch="Lightning-managed (a single python process; Lightning spawns one worker per device)",
        strategy="ddp_find_unused_parameters_true",
        single_device_strategy="auto",
        fsdp=False,
        lr_scaling="lr = lr * num_devices * batch_size",
        multi_node_env=["WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NUM_GPU_PER_NODE"],
    ),
    hardware=Hardware(
        min_gpus=1,
        recommended_gpus=2,
        min_gpu_memory_gb=24,
        recommended_gpu="A100",
        cpu_supported=True,
        cpu_arch="vit-mae-nano/8",
        notes=["A ViT-MAE backbone at dataset.crop_size 512 needs 24 GB or more of GPU memory."],
    ),
    error_patterns=[
        ErrorPattern(
            name="cuda_oom",
            symptom="CUDA out of memory",
            fix="Lower dataset.crop_size (512 -> 384 -> 256) or pick a smaller model.arch (e.g. base instead of "
            "large).",
            spec_keys=["dataset.crop_size", "model.arch"],
        ),
        ErrorPattern(
            name="non_finite_miou",
            symptom="mIoU is missing or not finite during evaluate or AutoML",
            fix="Set dataset.load_mask true and give a validation JSON whose annotations carry segmentation masks.",
            spec_keys=["dataset.load_mask", "dataset.val_ann_path"],
        ),
    ],
    automl=AutomlInfo(
        backend="ray_tune",
        runner="runners/train.py",
        epochs_key="train.num_epochs",
        backbone_key="model.arch",
        required_values={"dataset.load_mask": True},
        not_runnable_message="AutoML is enabled but not runnable for this model until schemas are generated",
    ),
)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def load_skill_info(path: str | Path) -> SkillInfo:
    """Read and validate a ``skill_info.yaml``; errors name the file and the offending field."""
    p = Path(path)
    if not p.is_file():
        raise SkillInfoError(f"skill info file {str(p)!r} does not exist", field="skill_info")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SkillInfoError(f"skill info file {str(p)!r} is not valid YAML: {exc}", field="skill_info") from exc
    if not isinstance(data, dict):
        raise SkillInfoError(f"skill info file {str(p)!r} must hold a mapping at the top level", field="skill_info")
    try:
        return SkillInfo.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_loc(tuple(errors[0]["loc"])) if errors else "<root>"
        details = "; ".join(f"{_format_loc(tuple(e['loc']))}: {e['msg']}" for e in errors)
        raise SkillInfoError(f"skill info file {str(p)!r} is invalid: {details}", field=first) from exc
