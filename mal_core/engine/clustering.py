"""Feature clustering score: how well backbone features separate the object from its background.

For each crop the last-layer features are L2-normalised per position; each position is assigned to foreground or
background by the ground-truth mask (downsampled to the feature grid); the score is the mean squared distance of the
features to the normalised centroid of their group. Lower is better.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mal_core.engine.module import MALModule


@torch.no_grad()
def clustering_score(module: MALModule, loader: DataLoader) -> float:
    """Mean clustering score over the crops of ``loader`` (needs ``gt_crop`` in the batches)."""
    device = module.device
    total, count = 0.0, 0
    for batch in loader:
        feats = module.model.student.backbone(batch["image"].to(device)).float()
        feats = F.normalize(feats, dim=1)
        gt = batch["gt_crop"].to(device).float().unsqueeze(1)
        gt = F.interpolate(gt, size=feats.shape[-2:], mode="area") > 0.5
        for i in range(feats.shape[0]):
            f = feats[i].flatten(1).T  # (N, C)
            g = gt[i].flatten()
            for group in (g, ~g):
                if group.any():
                    centre = F.normalize(f[group].mean(0), dim=0)
                    total += float((f[group] - centre).pow(2).sum(1).sum())
                    count += int(group.sum())
    return total / max(count, 1)
