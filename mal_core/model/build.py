"""Network builder registry (in the manner of ``segment_anything/build_sam.py``): ``model.arch`` names an
:class:`~mal_core.config.archs.ArchSpec` whose ``family`` picks the builder here."""

from __future__ import annotations

from collections.abc import Callable

from mal_core.config.experiment import ExperimentConfig, ModelConfig
from mal_core.model.backbone import arch_spec
from mal_core.model.network import StudentTeacher


def build_vit(cfg: ModelConfig, crop_size: int) -> StudentTeacher:
    """Student/teacher pair with a ViT-MAE encoder and the MAL mask decoder."""
    return StudentTeacher(cfg, crop_size)


#: Builder of each network family named by :data:`mal_core.config.archs.ARCHS`.
NETWORK_BUILDERS: dict[str, Callable[[ModelConfig, int], StudentTeacher]] = {"vit": build_vit}


def build_network(cfg: ExperimentConfig) -> StudentTeacher:
    """The student/teacher network of ``cfg.model`` at crop size ``cfg.dataset.crop_size``."""
    return NETWORK_BUILDERS[arch_spec(cfg.model.arch).family](cfg.model, cfg.dataset.crop_size)
