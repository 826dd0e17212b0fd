"""Backbone architecture table (plain data, importable without torch).

Names follow TAO's ``vit-<family>-<size>/<patch>`` scheme. ``vit-mae-nano/8`` is ours: a 4-block ViT small enough to
train from scratch on a CPU in minutes (the demo default); the others match the public DeiT/MAE sizes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """Size of one ViT variant, the network family that builds it (a key of
    :data:`mal_core.model.build.NETWORK_BUILDERS`) and its AutoML sampling weight over ``model.arch``."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    automl_weight: float
    mlp_ratio: float = 4.0
    family: str = "vit"


#: AutoML weights: base is the paper's default and best quality per cost, large is slightly better at ~3x the cost,
#: the small ones are for smoke tests and CPUs.
ARCHS: dict[str, ArchSpec] = {
    "vit-mae-nano/8": ArchSpec(embed_dim=128, depth=4, num_heads=4, patch_size=8, automl_weight=0.05),
    "vit-deit-tiny/16": ArchSpec(embed_dim=192, depth=12, num_heads=3, patch_size=16, automl_weight=0.1),
    "vit-deit-small/16": ArchSpec(embed_dim=384, depth=12, num_heads=6, patch_size=16, automl_weight=0.15),
    "vit-mae-base/16": ArchSpec(embed_dim=768, depth=12, num_heads=12, patch_size=16, automl_weight=0.4),
    "vit-mae-large/16": ArchSpec(embed_dim=1024, depth=24, num_heads=16, patch_size=16, automl_weight=0.25),
    "vit-mae-huge/14": ArchSpec(embed_dim=1280, depth=32, num_heads=16, patch_size=14, automl_weight=0.05),
}


#: Hugging Face ``config.json`` fields that must match an architecture for its encoder weights to fit (the image
#: size may differ: position tables are interpolated).
HF_ARCH_FIELDS: dict[str, str] = {
    "hidden_size": "embed_dim", "num_hidden_layers": "depth", "num_attention_heads": "num_heads",
    "patch_size": "patch_size",
}


def hf_config_mismatches(config: dict, arch: str) -> list[str]:
    """``field: folder value vs arch value`` for each :data:`HF_ARCH_FIELDS` entry of a Hugging Face ViT(-MAE)
    ``config.json`` that differs from ``ARCHS[arch]`` (empty when the weights fit, or the arch is unknown)."""
    spec = ARCHS.get(arch)
    if spec is None:
        return []
    return [f"{key}: {config[key]} vs {getattr(spec, attr)}" for key, attr in HF_ARCH_FIELDS.items()
            if key in config and config[key] != getattr(spec, attr)]
