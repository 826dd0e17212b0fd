"""Learning-rate scaling and the per-iteration warmup + cosine schedule, and loss warm-up weights."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, num_devices: int, batch_size: int) -> float:
    """Linear scaling rule: effective lr = base lr x number of devices x per-device batch size."""
    return base_lr * num_devices * batch_size


def lr_at(epoch_float: float, *, peak: float, floor: float, warmup_epochs: float, num_epochs: float,
          num_wave: float = 1.0) -> float:
    """LR at fractional epoch e: linear warmup to ``peak``, then floor + (peak-floor)*0.5*(1+cos(pi*t*num_wave))."""
    if epoch_float < warmup_epochs:
        return peak * epoch_float / warmup_epochs
    span = max(num_epochs - warmup_epochs, 1e-8)
    t = (epoch_float - warmup_epochs) / span
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t * num_wave))


def warmup_weight(epoch: int, step_in_epoch: int, ramp_steps: int) -> float:
    """Loss warm-up: min(1, step/ramp_steps) during epoch 0, then 1."""
    if epoch > 0 or ramp_steps <= 0:
        return 1.0
    return min(1.0, step_in_epoch / ramp_steps)
