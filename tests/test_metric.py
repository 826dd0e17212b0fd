"""mIoU: class-averaged mean of per-instance IoU, size buckets by box area."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mal_core.engine.metrics import MIoUSums, instance_iou
from mal_core.engine.val_metric import MaskMIoU

#: The plain accumulator of labelling jobs and training's torchmetrics metric share one implementation.
METRICS = pytest.mark.parametrize("metric_cls", [MIoUSums, MaskMIoU])


def test_instance_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert math.isclose(instance_iou(a, b), 4 / 12, rel_tol=1e-5)
    assert instance_iou(a, np.zeros_like(a)) == 0.0


@METRICS
def test_class_average_not_instance_average(metric_cls):
    m = metric_cls(num_categories=3)
    # category 1: IoUs 1.0 and 0.0 (mean 0.5); category 2: one IoU 0.9; category 3: absent
    m.update(torch.tensor([1.0, 0.0, 0.9]), torch.tensor([1, 1, 2]), torch.tensor([500.0, 5000.0, 20000.0]))
    out = m.compute()
    assert math.isclose(out["mIoU"], (0.5 + 0.9) / 2, rel_tol=1e-5)  # instance mean would be 0.633
    assert math.isclose(out["mIoU_small"], 1.0, rel_tol=1e-5)  # 500 <= 32^2
    assert math.isclose(out["mIoU_medium"], 0.0, abs_tol=1e-6)  # 5000 <= 96^2
    assert math.isclose(out["mIoU_large"], 0.9, rel_tol=1e-5)
    assert out["num_instances"] == 3


@METRICS
def test_bucket_edges_are_inclusive_and_empty_bucket_is_nan(metric_cls):
    m = metric_cls(num_categories=1)
    m.update(torch.tensor([0.4, 0.8]), torch.tensor([1, 1]), torch.tensor([32.0**2, 96.0**2]))
    out = m.compute()
    assert math.isclose(out["mIoU_small"], 0.4, rel_tol=1e-5)
    assert math.isclose(out["mIoU_medium"], 0.8, rel_tol=1e-5)
    assert math.isnan(out["mIoU_large"])


@METRICS
def test_states_sum_like_a_distributed_reduction(metric_cls):
    a, b, both = metric_cls(2), metric_cls(2), metric_cls(2)
    a.update(torch.tensor([0.2]), torch.tensor([1]), torch.tensor([100.0]))
    b.update(torch.tensor([0.6]), torch.tensor([2]), torch.tensor([100.0]))
    both.update(torch.tensor([0.2, 0.6]), torch.tensor([1, 2]), torch.tensor([100.0, 100.0]))
    a.iou_sum += b.iou_sum
    a.count += b.count
    got, want = a.compute(), both.compute()
    assert got.keys() == want.keys()
    for k in want:
        assert (math.isnan(got[k]) and math.isnan(want[k])) or math.isclose(got[k], want[k]), k
