"""DDP ranks draw different augmentation / dropout streams; one process keeps its stream untouched."""

from __future__ import annotations

import torch

from mal_core.engine.seeding import seed_rank_streams


def _draws(seed: int, rank: int, world: int) -> torch.Tensor:
    torch.manual_seed(seed)  # what seed_everything leaves every rank with
    seed_rank_streams(seed, rank, world)
    return torch.rand(8)


def test_ranks_get_distinct_reproducible_streams() -> None:
    r0, r1 = _draws(1234, 0, 2), _draws(1234, 1, 2)
    assert not torch.equal(r0, r1)
    assert torch.equal(r1, _draws(1234, 1, 2))  # reproducible per rank
    assert not torch.equal(_draws(1234, 1, 2), _draws(99, 1, 2))


def test_single_process_and_unseeded_runs_are_untouched() -> None:
    torch.manual_seed(5)
    expected = torch.rand(8)
    torch.manual_seed(5)
    assert seed_rank_streams(1234, 0, 1) is None
    assert torch.equal(torch.rand(8), expected)
    torch.manual_seed(5)
    assert seed_rank_streams(-1, 1, 2) is None
    assert torch.equal(torch.rand(8), expected)
