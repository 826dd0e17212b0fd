"""CRF self-training loss: mean-field refinement of the student/teacher average under a colour-affinity Potts
prior, thresholded to a hard pseudo-label, then a Dice loss between the student and that label."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mal_core.losses.dice import dice_loss
from mal_core.losses.mil import resize_to


def _offsets(kernel_size: int) -> list[tuple[int, int]]:
    """The (row, column) offsets of a k x k window into a tensor padded by k // 2, in unfold's (row-major) order."""
    return [(dy, dx) for dy in range(kernel_size) for dx in range(kernel_size)]


def colour_affinity(image: torch.Tensor, kernel_size: int, zeta: float) -> torch.Tensor:
    """K(p,q) = exp(-|I(q)-I(p)|^2 / (2 zeta^2)) over a k x k window -> (B, k*k, H, W); 0 for out-of-image q.

    Built from k*k shifted views of the padded image (no unfold: the (B, C, k*k, H*W) patch tensor is never made).
    """
    b, c, h, w = image.shape
    pad = kernel_size // 2
    padded = F.pad(image, (pad, pad, pad, pad))
    valid = F.pad(image.new_ones((1, 1, h, w)), (pad, pad, pad, pad))
    out = image.new_empty((b, kernel_size * kernel_size, h, w))
    for k, (dy, dx) in enumerate(_offsets(kernel_size)):
        dist2 = (padded[:, :, dy:dy + h, dx:dx + w] - image).pow(2).sum(1)
        out[:, k] = torch.exp(-dist2 / (2.0 * zeta**2)) * valid[:, 0, dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def mean_field_refine(image: torch.Tensor, init: torch.Tensor, box_mask: torch.Tensor, *, kernel_size: int = 3,
                      zeta: float = 0.1, num_iter: int = 100, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """Mean-field foreground probability (B,1,H,W) from an initial probability, the box mask and the image.

    Each iteration sets, per label l, s_l(p) = exp(sum_q K(p,q) log x_l(q)) (a colour-weighted geometric mean of
    the neighbours), zeroes foreground outside the box and renormalises; values are clamped to [low, high]. The
    window sum runs over shifted views of the padded log-probabilities, in the window's row-major order.
    """
    if kernel_size % 2 != 1:
        raise ValueError("crf kernel size must be odd")
    b, _, h, w = init.shape
    affinity = colour_affinity(image.float(), kernel_size, zeta).unsqueeze(1)  # (B,1,k*k,H,W)
    m = box_mask.float()
    x = (init.float() * m).clamp(low, high)
    pad = kernel_size // 2
    offsets = _offsets(kernel_size)
    for _ in range(num_iter):
        logs = F.pad(torch.log(torch.cat([1.0 - x, x], dim=1)), (pad, pad, pad, pad))  # background, foreground
        acc = torch.zeros((b, 2, h, w), dtype=x.dtype, device=x.device)
        for k, (dy, dx) in enumerate(offsets):
            acc += logs[:, :, dy:dy + h, dx:dx + w] * affinity[:, :, k]
        s = torch.exp(acc)
        s_bg, s_fg = s[:, 0:1], s[:, 1:2] * m
        x = (s_fg / (s_bg + s_fg + 1e-6)).clamp(low, high)
    return x


def crf_loss(image: torch.Tensor, student_probs: torch.Tensor, teacher_probs: torch.Tensor, box_mask: torch.Tensor,
             *, size_ratio: int = 1, kernel_size: int = 3, zeta: float = 0.1, num_iter: int = 100,
             low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """Per-sample CRF loss (B,): Dice between the student's probabilities and the refined hard pseudo-label.

    ``image`` is the student's (normalised, colour-augmented) input crop (B,3,S,S); probabilities are (B,1,H,W).
    Everything is resized to (H*size_ratio, W*size_ratio) first.
    """
    h, w = student_probs.shape[-2:]
    size = (h * size_ratio, w * size_ratio)
    img = resize_to(image.float(), size)
    p = resize_to(student_probs.float(), size)
    t = resize_to(teacher_probs.float(), size)
    m = resize_to(box_mask.float(), size)
    refined = mean_field_refine(img, (p.detach() + t) / 2.0, m, kernel_size=kernel_size, zeta=zeta,
                                num_iter=num_iter, low=low, high=high)
    target = (refined > 0.5).float()
    return dice_loss(p, target)
