"""Pairwise colour-affinity loss at mask resolution (as in box-supervised BoxInst): neighbouring pixels of similar
colour inside the box should take the same label.

For each pixel i inside the box and each of its 8 neighbours j at ``dilation`` pixels, the colour similarity is
S_ij = exp(-||Lab_i - Lab_j|| / theta). Pairs with S_ij >= ``threshold`` are edges; each edge costs
-log P(y_i = y_j) = -log(p_i p_j + (1 - p_i)(1 - p_j)). The loss of a sample is the mean over its edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mal_core.data.augment import unnormalised_rgb

_RGB_TO_XYZ = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
LAB_THETA = 2.0


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (B,3,H,W) -> CIE Lab (D65): L in [0, 100], a/b roughly [-128, 127]."""
    rgb = rgb.clamp(0.0, 1.0)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(rgb), lin) / _WHITE.to(rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-8) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def normalised_to_lab(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ImageNet-normalised crop (B,3,S,S) -> Lab at ``size`` (area-averaged first, so texture is smoothed)."""
    rgb = unnormalised_rgb(image)
    if tuple(rgb.shape[-2:]) != tuple(size):
        rgb = F.interpolate(rgb, size=size, mode="area")
    return rgb_to_lab(rgb)


def _neighbours(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,8,H*W): the 8 neighbours at ``dilation`` (zero padded), centre excluded."""
    b, c, h, w = x.shape
    cols = F.unfold(x, 3, dilation=dilation, padding=dilation).view(b, c, 9, h * w)
    return torch.cat([cols[:, :, :4], cols[:, :, 5:]], dim=2)


def colour_similarity(lab: torch.Tensor, dilation: int, theta: float = LAB_THETA) -> torch.Tensor:
    """S_ij between each pixel and its 8 neighbours (B,8,H*W); 0 where the neighbour lies outside the image."""
    b, _, h, w = lab.shape
    diff = _neighbours(lab, dilation) - lab.view(b, 3, 1, h * w)
    valid = _neighbours(lab.new_ones((1, 1, h, w)), dilation)[:, 0]
    return torch.exp(-diff.norm(dim=1) / theta) * valid


def pairwise_loss(logits: torch.Tensor, lab: torch.Tensor, box_mask: torch.Tensor, *, dilation: int = 2,
                  threshold: float = 0.3, theta: float = LAB_THETA) -> torch.Tensor:
    """Per-sample pairwise loss (B,). logits (B,1,H,W); lab (B,3,H,W) at the same size; box_mask (B,1,*,*)."""
    b, _, h, w = logits.shape
    box = F.interpolate(box_mask.float(), size=(h, w), mode="nearest").view(b, 1, h * w)
    edges = (colour_similarity(lab, dilation, theta) >= threshold).float() * box
    x = logits.float()
    log_fg, log_bg = F.logsigmoid(x), F.logsigmoid(-x)
    nb_fg, nb_bg = _neighbours(log_fg, dilation)[:, 0], _neighbours(log_bg, dilation)[:, 0]
    same = torch.logaddexp(log_fg.view(b, 1, h * w) + nb_fg, log_bg.view(b, 1, h * w) + nb_bg)
    return -(same * edges).sum((1, 2)) / edges.sum((1, 2)).clamp(min=1.0)
