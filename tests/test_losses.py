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


def _unfold_mean_field(image, init, box_mask, kernel_size, zeta, num_iter, low, high):
    """The mean-field update written directly with unfold (the (B, 2, k*k, H*W) neighbour tensor): the reference the
    shifted-view implementation must reproduce."""
    import torch.nn.functional as F

    b, c, h, w = image.shape
    pad = kernel_size // 2
    patches = F.unfold(image, kernel_size, padding=pad).view(b, c, kernel_size**2, h * w)
    dist2 = (patches - image.view(b, c, 1, h * w)).pow(2).sum(1)
    valid = F.unfold(image.new_ones((1, 1, h, w)), kernel_size, padding=pad)
    affinity = (torch.exp(-dist2 / (2.0 * zeta**2)) * valid).unsqueeze(1)
    m = box_mask.view(b, 1, h * w)
    x = (init * box_mask).clamp(low, high)
    for _ in range(num_iter):
        logs = torch.log(torch.cat([1.0 - x, x], dim=1))
        neigh = F.unfold(logs, kernel_size, padding=pad).view(b, 2, kernel_size**2, h * w)
        s = torch.exp((neigh * affinity).sum(2))
        x = (s[:, 1:2] * m / (s[:, 0:1] + s[:, 1:2] * m + 1e-6)).clamp(low, high).view(b, 1, h, w)
    return x


def test_mean_field_over_shifted_views_equals_the_unfold_formulation():
    g = torch.Generator().manual_seed(3)
    for b, h, w, k, iters in [(4, 32, 32, 3, 10), (2, 128, 128, 3, 3), (2, 17, 23, 3, 5), (2, 20, 20, 5, 4)]:
        img = torch.randn(b, 3, h, w, generator=g)
        init = torch.rand(b, 1, h, w, generator=g)
        box = (torch.rand(b, 1, h, w, generator=g) > 0.2).float()
        got = mean_field_refine(img, init, box, kernel_size=k, zeta=0.5, num_iter=iters, low=0.01, high=0.99)
        want = _unfold_mean_field(img, init, box, k, 0.5, iters, 0.01, 0.99)
        if k == 3 and w % 8 == 0:  # the recipe's window and sizes: the same sums in the same order, bit for bit
            assert torch.equal(got, want)
        else:  # a row length off the SIMD width, or a larger window: the reductions' tails round differently
            assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(got, init)  # the refinement did move the estimate
