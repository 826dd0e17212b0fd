"""The optimiser of the student network, built in one place (the LightningModule and the benchmarks use it)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mal_core.config.experiment import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], t: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable ``params`` at learning rate ``lr`` with the betas, eps and weight decay of ``t``."""
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=lr, betas=tuple(t.optim_betas), eps=t.optim_eps, weight_decay=t.wd)
