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


class ImageStem(nn.Module):
    """Shallow conv stem on the crop itself: log2(stride) stride-2 3x3 convs + one 3x3 conv, each with ReLU.

    Gives the decoder colour and edge evidence at mask resolution (crop / stride), finer than the ViT token grid.
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"stem stride must be a power of two, got {stride}")
        layers: list[nn.Module] = []
        cin = 3
        for _ in range(stride.bit_length() - 1):
            layers += [nn.Conv2d(cin, channels, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            cin = channels
        layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) -> (B,channels,S/stride,S/stride)."""
        return self.body(images)


class StemFusion(nn.Module):
    """Pixel embeddings V (n,D,M,M) fused with stem features (n,C,M,M): 3x3 conv + ReLU, 3x3 conv -> (n,D,M,M)."""

    def __init__(self, embed: int, stem_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(embed + stem_channels, embed, 3, padding=1)
        self.conv2 = nn.Conv2d(embed, embed, 3, padding=1)

    def forward(self, v: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        """Concatenate along channels and mix."""
        return self.conv2(F.relu(self.conv1(torch.cat([v, stem.to(v.dtype)], dim=1))))


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
                 scale_pre: int, adjust_scale: bool, mask_size: int, stem_channels: int = 0) -> None:
        super().__init__()
        self.instance_head = InstanceHead(in_channels, out_channels)
        self.pixel_head = PixelHead(in_channels, hidden, out_channels, num_convs, scale)
        self.fusion = StemFusion(out_channels, stem_channels) if stem_channels > 0 else None
        self.adjust_scale = adjust_scale
        self.scale_pre = int(scale_pre)
        self.mask_size = int(mask_size)

    @staticmethod
    def _dot(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,ndhw->nhw", k, v).unsqueeze(1)

    def _logits(self, k: torch.Tensor, v: torch.Tensor, stem: torch.Tensor | None) -> torch.Tensor:
        """K . V, with V first resized to the mask side and fused with the stem features when there is a stem."""
        if self.fusion is None or stem is None:
            return self._dot(k, v)
        size = tuple(stem.shape[-2:])
        if tuple(v.shape[-2:]) != size:
            v = F.interpolate(v, size=size, mode="bilinear", align_corners=False)
        return self._dot(k, self.fusion(v, stem))

    def forward(self, features: torch.Tensor, box_areas: torch.Tensor,
                stem: torch.Tensor | None = None) -> torch.Tensor:
        """features (B,C,h,w), original box areas (B,), optional stem features (B,C',M,M) -> logits (B,1,M,M)
        with M = mask_size."""
        k = self.instance_head(features)
        size = (self.mask_size, self.mask_size)
        if not self.adjust_scale:
            x = features
            if self.scale_pre != 1:
                x = F.interpolate(x, scale_factor=self.scale_pre, mode="bilinear", align_corners=False)
            logits = self._logits(k, self.pixel_head(x), stem)
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            return logits
        buckets = box_size_bucket(box_areas.to(features.device))
        out = features.new_zeros((features.shape[0], 1) + size)
        h, w = features.shape[-2:]
        for b in range(3):
            idx = torch.nonzero(buckets == b, as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            logits = self.bucket_logits(features[idx], k[idx], None if stem is None else stem[idx], b, (h, w))
            out[idx] = logits.to(out.dtype)
        return out

    def bucket_logits(self, features: torch.Tensor, k: torch.Tensor, stem: torch.Tensor | None, bucket: int,
                      grid: tuple[int, int]) -> torch.Tensor:
        """The scale-adaptive path of one size bucket (0/1/2) on instances ``features`` (n,C,h,w) with instance
        embeddings ``k`` (n,D): the feature map resized by 2^(bucket-1) from ``grid`` = (h, w) (given, not read
        from the tensor, so a traced graph keeps static sizes), K . V, logits resized to (n,1,M,M)."""
        factor = 2.0 ** (bucket - 1)
        h, w = grid
        fsize = (max(1, round(h * factor)), max(1, round(w * factor)))
        x = features if fsize == (h, w) else F.interpolate(features, size=fsize, mode="bilinear",
                                                           align_corners=False)
        logits = self._logits(k, self.pixel_head(x), stem)
        if logits.shape[-1] != self.mask_size:
            logits = F.interpolate(logits, size=(self.mask_size, self.mask_size), mode="bilinear",
                                   align_corners=False)
        return logits
