"""CRF self-training loss: mean-field refinement of the student/teacher average under a colour-affinity Potts
prior, thresholded to a hard pseudo-label, then a Dice loss between the student and that label."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mal_core.losses.dice import dice_loss
from mal_core.losses.mil import resize_to


def colour_affinity(image: torch.Tensor, kernel_size: int, zeta: float) -> torch.Tensor:
    """K(p,q) = exp(-|I(q)-I(p)|^2 / (2 zeta^2)) over a k x k window -> (B, k*k, H*W); 0 for out-of-image q."""
    b, c, h, w = image.shape
    pad = kernel_size // 2
    patches = F.unfold(image, kernel_size, padding=pad).view(b, c, kernel_size * kernel_size, h * w)
    centre = image.view(b, c, 1, h * w)
    dist2 = (patches - centre).pow(2).sum(1)
    valid = F.unfold(image.new_ones((1, 1, h, w)), kernel_size, padding=pad)  # (1, k*k, H*W)
    return torch.exp(-dist2 / (2.0 * zeta**2)) * valid


@torch.no_grad()
def mean_field_refine(image: torch.Tensor, init: torch.Tensor, box_mask: torch.Tensor, *, kernel_size: int = 3,
                      zeta: float = 0.1, num_iter: int = 100, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """Mean-field foreground probability (B,1,H,W) from an initial probability, the box mask and the image.

    Each iteration sets, per label l, s_l(p) = exp(sum_q K(p,q) log x_l(q)) (a colour-weighted geometric mean of
    the neighbours), zeroes foreground outside the box and renormalises; values are clamped to [low, high].
    """
    if kernel_size % 2 != 1:
        raise ValueError("crf kernel size must be odd")
    b, _, h, w = init.shape
    affinity = colour_affinity(image.float(), kernel_size, zeta).unsqueeze(1)  # (B,1,k*k,HW)
    m = box_mask.float().view(b, 1, h * w)
    x = (init.float() * box_mask.float()).clamp(low, high)
    pad = kernel_size // 2
    for _ in range(num_iter):
        logs = torch.log(torch.cat([1.0 - x, x], dim=1))  # (B,2,H,W): background, foreground
        neigh = F.unfold(logs, kernel_size, padding=pad).view(b, 2, kernel_size * kernel_size, h * w)
        s = torch.exp((neigh * affinity).sum(2))  # (B,2,HW)
        s_bg, s_fg = s[:, 0:1], s[:, 1:2] * m
        x = (s_fg / (s_bg + s_fg + 1e-6)).clamp(low, high).view(b, 1, h, w)
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
