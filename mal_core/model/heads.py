"""Attention-style mask decoder: an instance head K and a pixel head V; mask logits are the per-pixel dot K . V."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mal_core.sizes import MEDIUM_AREA, SMALL_AREA


class InstanceHead(nn.Module):
    """K: global average pool of the feature map -> Linear -> ReLU -> Linear, one embedding per instance."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, out_channels)
        self.fc2 = nn.Linear(out_channels, out_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) -> (B,D)."""
        return self.fc2(F.relu(self.fc1(features.mean(dim=(2, 3)))))


class PixelHead(nn.Module):
    """V: ``num_convs`` 3x3 conv + ReLU layers; the map is bilinearly upsampled by ``scale`` before the last conv."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_convs: int, scale: float) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError("mask head needs at least one convolution")
        chans = [in_channels] + [hidden] * (num_convs - 1) + [out_channels]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(num_convs))
        self.upsample_at = num_convs - 1
        self.scale = float(scale)
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n,C,h,w) -> (n,D,h*scale,w*scale)."""
        for i, conv in enumerate(self.convs):
            if i == self.upsample_at and self.scale != 1.0:
                x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
            x = F.relu(conv(x))
        return x


def box_size_bucket(box_areas: torch.Tensor) -> torch.Tensor:
    """0/1/2 = small/medium/large by original box area (same edges as the metric: <= 32^2, <= 96^2)."""
    return torch.where(box_areas <= SMALL_AREA, 0, torch.where(box_areas <= MEDIUM_AREA, 1, 2))


class MaskDecoder(nn.Module):
    """Produces mask logits (B,1,M,M) from backbone features.

    Scale-adaptive path (default): each instance's feature map is resized by 2^(bucket-1) (x0.5 / x1 / x2 for
    small / medium / large boxes) before V, so larger objects get finer masks; every bucket's logits are resized to
    the common output side ``mask_size``. Works for any head depth and in-head scale. Fixed path
    (``not_adjust_scale``): resize by ``scale_pre``, V, then resize to ``mask_size`` (one scale for all boxes).
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_convs: int, scale: float,
                 scale_pre: int, adjust_scale: bool, mask_size: int) -> None:
        super().__init__()
        self.instance_head = InstanceHead(in_channels, out_channels)
        self.pixel_head = PixelHead(in_channels, hidden, out_channels, num_convs, scale)
        self.adjust_scale = adjust_scale
        self.scale_pre = int(scale_pre)
        self.mask_size = int(mask_size)

    @staticmethod
    def _dot(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,ndhw->nhw", k, v).unsqueeze(1)

    def forward(self, features: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor:
        """features (B,C,h,w), original box areas (B,) -> logits (B,1,mask_size,mask_size)."""
        k = self.instance_head(features)
        size = (self.mask_size, self.mask_size)
        if not self.adjust_scale:
            x = features
            if self.scale_pre != 1:
                x = F.interpolate(x, scale_factor=self.scale_pre, mode="bilinear", align_corners=False)
            logits = self._dot(k, self.pixel_head(x))
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        buckets = box_size_bucket(box_areas.to(features.device))
        out = features.new_zeros((features.shape[0], 1) + size)
        h, w = features.shape[-2:]
        for b in range(3):
            idx = torch.nonzero(buckets == b, as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            factor = 2.0 ** (b - 1)
            fsize = (max(1, round(h * factor)), max(1, round(w * factor)))
            x = features[idx]
            if fsize != (h, w):
                x = F.interpolate(x, size=fsize, mode="bilinear", align_corners=False)
            logits = self._dot(k[idx], self.pixel_head(x))
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            out[idx] = logits.to(out.dtype)
        return out
