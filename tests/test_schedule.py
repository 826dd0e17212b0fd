"""LR scaling rule (devices x batch) and the warmup + cosine schedule."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from mal_core.config import parse_spec
from mal_core.engine.module import MALModule
from mal_core.engine.schedule import lr_at, scaled_lr, warmup_weight


def test_linear_scaling_rule():
    assert scaled_lr(1e-6, 8, 4) == pytest.approx(3.2e-5)


def test_warmup_then_cosine_to_floor():
    kw = {"peak": 1.0, "floor": 0.2, "warmup_epochs": 2, "num_epochs": 10}
    assert lr_at(0.0, **kw) == 0.0
    assert lr_at(1.0, **kw) == pytest.approx(0.5)
    assert lr_at(2.0, **kw) == pytest.approx(1.0)
    assert lr_at(6.0, **kw) == pytest.approx(0.6)  # halfway: floor + 0.8 * 0.5
    assert lr_at(10.0, **kw) == pytest.approx(0.2)
    assert lr_at(10.0, **{**kw, "num_wave": 2.0}) == pytest.approx(1.0)  # two half-waves end back at the peak
    assert lr_at(0.5, **{**kw, "warmup_epochs": 0}) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 20)))


def test_loss_warmup_weight():
    assert warmup_weight(0, 0, 100) == 0.0
    assert warmup_weight(0, 50, 100) == 0.5
    assert warmup_weight(0, 500, 100) == 1.0
    assert warmup_weight(1, 0, 100) == 1.0
    assert warmup_weight(0, 3, 0) == 1.0


@pytest.mark.parametrize("world", [1, 2, 4])
def test_module_scales_lr_by_world_size_and_batch(world):
    cfg, _ = parse_spec({"model": {"arch": "vit-mae-nano/8", "mask_head_hidden_channel": 8,
                                   "mask_head_out_channel": 8},
                         "dataset": {"crop_size": 64}, "train": {"lr": 2e-6, "batch_size": 5, "min_lr_rate": 0.1,
                                                                   "warmup_epochs": 0}})
    module = MALModule(cfg, [{"id": 1, "name": "a"}])
    module._trainer = SimpleNamespace(world_size=world)
    opt = module.configure_optimizers()
    assert module.peak_lr == pytest.approx(2e-6 * world * 5)
    assert module.min_lr == pytest.approx(module.peak_lr * 0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(module.peak_lr)  # no warmup: start at the peak
    trainable = {id(p) for p in module.model.student.parameters() if p.requires_grad}
    assert {id(p) for p in opt.param_groups[0]["params"]} == trainable  # teacher never optimised
