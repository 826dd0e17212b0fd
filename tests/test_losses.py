"""MIL and CRF losses on hand-checkable inputs."""

from __future__ import annotations

import torch

from mal_core.losses import crf_loss, dice_loss, mean_field_refine, mil_loss


def _box_mask(size=64, box=(16, 20, 48, 44)):
    m = torch.zeros(1, 1, size, size)
    y0, x0, y1, x1 = box
    m[..., y0:y1, x0:x1] = 1.0
    return m


def test_dice_values():
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_loss(t, t).item() < 1e-3
    assert abs(dice_loss(1 - t, t).item() - 1.0) < 1e-6
    # half overlap: 1 - 2*1/(2+2) = 0.5 (up to the 1e-3 terms)
    assert abs(dice_loss(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), t).item() - 0.5) < 1e-3


def test_mil_perfect_box_prediction_is_near_zero():
    box = _box_mask()
    pred = box[..., ::2, ::2].clone()  # same box at the logit resolution
    assert mil_loss(pred, box).item() < 1e-3


def test_mil_any_shape_touching_every_row_and_column_of_the_box_is_near_zero():
    box = _box_mask()
    pred = torch.zeros(1, 1, 64, 64)
    pred[..., 16:48, 20:21] = 1  # a vertical bar spanning the box rows
    pred[..., 16:17, 20:44] = 1  # a horizontal bar spanning the box columns
    assert mil_loss(pred, box).item() < 1e-3


def test_mil_penalises_spill_outside_and_gaps_inside():
    box = _box_mask()
    spill = torch.zeros(1, 1, 64, 64)
    spill[..., 4:60, 4:60] = 1
    shrunk = torch.zeros(1, 1, 64, 64)
    shrunk[..., 24:36, 28:36] = 1
    assert mil_loss(spill, box).item() > 0.3
    assert mil_loss(shrunk, box).item() > 0.3


def test_mean_field_removes_label_noise_within_a_colour_region_without_leaking_across_edges():
    # left half red-ish, right half blue-ish; the initial estimate is right except two noisy blobs
    img = torch.zeros(1, 3, 32, 32)
    img[:, 0, :, :16] = 2.0
    img[:, 2, :, 16:] = 2.0
    init = torch.full((1, 1, 32, 32), 0.3)
    init[..., :, :16] = 0.7
    init[..., 10:12, 4:6] = 0.3  # wrong hole inside the foreground colour region
    init[..., 20:22, 22:24] = 0.7  # wrong blob inside the background colour region
    box = torch.ones(1, 1, 32, 32)
    x = mean_field_refine(img, init, box, num_iter=30, zeta=0.5)
    assert (x[..., :, :16] > 0.5).float().mean() == 1.0
    assert (x[..., :, 16:] < 0.5).float().mean() == 1.0


def test_mean_field_never_puts_foreground_outside_the_box():
    img = torch.randn(1, 3, 16, 16)
    box = torch.zeros(1, 1, 16, 16)
    box[..., 4:12, 4:12] = 1
    x = mean_field_refine(img, torch.full((1, 1, 16, 16), 0.9), box, num_iter=5)
    assert (x[box == 0] <= 0.1 + 1e-6).all()


def test_crf_loss_low_when_prediction_agrees_with_colour_region_and_high_otherwise():
    img = torch.zeros(1, 3, 64, 64)
    img[:, 1, 16:48, 16:48] = 2.0  # a green square = the object
    box = torch.zeros(1, 1, 64, 64)
    box[..., 12:52, 12:52] = 1  # box slightly larger than the object
    obj = torch.zeros(1, 1, 32, 32)
    obj[..., 8:24, 8:24] = 0.95
    good = crf_loss(img, obj, obj, box, num_iter=20, zeta=0.5)
    wrong = 1 - obj
    bad = crf_loss(img, wrong, obj, box, num_iter=20, zeta=0.5)
    assert good.item() < 0.1
    assert bad.item() > 0.5


def test_losses_have_gradients():
    box = _box_mask()
    logits = torch.zeros(1, 1, 32, 32, requires_grad=True)
    p = torch.sigmoid(logits)
    loss = mil_loss(p, box).sum() + crf_loss(torch.randn(1, 3, 64, 64), p, p.detach(), box, num_iter=3).sum()
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
