"""Per-process random streams for multi-process (DDP) training."""

from __future__ import annotations

import random

import numpy as np
import torch

#: Multiplier that spreads rank seeds apart (a prime, so seed + k * rank never collides for small seeds).
RANK_SEED_STRIDE = 7919


def seed_rank_streams(seed: int, rank: int, world_size: int) -> int | None:
    """Give each DDP rank its own torch / numpy / Python random stream; returns the seed used (None: unchanged).

    Every rank is seeded identically at start-up so the models match; left like that, the ranks would draw the same
    crop margins, flips, colour jitter and dropout masks for the different samples they hold in a step, so a
    2 x B DDP step would see less augmentation diversity than one B x 2 step. Sharding is not affected (the
    distributed sampler shuffles with its own seed). One process (or seed < 0) keeps the stream as it is.
    """
    if world_size <= 1 or seed < 0:
        return None
    value = int(seed) + RANK_SEED_STRIDE * int(rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value
