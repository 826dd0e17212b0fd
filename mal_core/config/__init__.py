"""Experiment spec dataclasses, their metadata and the YAML loader."""

from mal_core.config.checks import check_for_action
from mal_core.config.experiment import (
    KEY_ALIASES,
    DatasetConfig,
    EvaluateConfig,
    ExperimentConfig,
    InferenceConfig,
    ModelConfig,
    TrainConfig,
)
from mal_core.config.loader import leaf_fields, load_spec, parse_spec, spec_to_dict

__all__ = [
    "KEY_ALIASES",
    "DatasetConfig",
    "EvaluateConfig",
    "ExperimentConfig",
    "InferenceConfig",
    "ModelConfig",
    "TrainConfig",
    "check_for_action",
    "leaf_fields",
    "load_spec",
    "parse_spec",
    "spec_to_dict",
]
