"""The optimisers, built in one place: MAL's student network and the MAE pretraining network (the LightningModules
and the benchmarks use these)."""

from __future__ import annotations

import re

import torch

from mal_core.config.experiment import PretrainConfig, TrainConfig

#: Parameter names that get no weight decay in MAE pretraining (biases and norms are caught by their rank).
_NO_DECAY = ("cls_token", "mask_token", "position_embeddings")
#: MAE's AdamW betas (a lower beta2 than the usual 0.999, as in the MAE recipe).
MAE_BETAS = (0.9, 0.95)


def layer_of(name: str, depth: int) -> int:
    """Depth index of a student parameter for layer-wise decay: 0 = patch embedding (and class/position tokens),
    i + 1 = backbone block i, ``depth + 1`` = the final norm and everything outside the backbone (the heads)."""
    if name.startswith("backbone.vit.embeddings."):
        return 0
    m = re.match(r"backbone\.vit\.layers\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else depth + 1


def layer_groups(student: torch.nn.Module, decay: float) -> list[dict]:
    """Trainable parameters of ``student`` grouped by ``lr_scale`` = decay^(depth + 1 - layer); one group when
    ``decay`` is 1."""
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    if decay >= 1.0:
        return [{"params": [p for _, p in named], "lr_scale": 1.0}]
    depth = len(student.backbone.vit.layers)
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, p in named:
        groups.setdefault(layer_of(name, depth), []).append(p)
    return [{"params": ps, "lr_scale": decay ** (depth + 1 - layer)} for layer, ps in sorted(groups.items())]


def build_optimizer(student: torch.nn.Module, t: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of ``student`` at learning rate ``lr`` (times each group's
    ``lr_scale`` under ``t.layer_decay``) with the betas, eps and weight decay of ``t``."""
    groups = layer_groups(student, t.layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(t.optim_betas), eps=t.optim_eps, weight_decay=t.wd)


def decay_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """AdamW parameter groups: weight decay on weight matrices only (not biases, norms, tokens, positions)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 or any(k in name for k in _NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": plain, "weight_decay": 0.0}]


def build_mae_optimizer(model: torch.nn.Module, p: PretrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW for MAE pretraining of ``model`` at learning rate ``lr`` with ``p.wd`` on weight matrices only."""
    return torch.optim.AdamW(decay_groups(model, p.wd), lr=lr, betas=MAE_BETAS)
