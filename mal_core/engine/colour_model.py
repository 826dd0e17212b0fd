"""Per-instance colour models of a box crop: what the image's colours say about a mask, without ground truth.

For one crop, the object model is the colour histogram of the mask's pixels inside the box and the background
model the histogram of the crop's pixels outside the box (the test margin ring: background, since the box is
tight). ``log_ratio`` = log(h_obj(c) / h_bg(c)) per pixel colour c says how much more the pixel's colour belongs to
the object than to its surroundings. Colours are quantised to :data:`COLOUR_BINS` levels per RGB channel of the
un-normalised image. Both histograms are shrunk towards the crop's pooled colour histogram with
:data:`PRIOR_PIXELS_PER_BIN` pseudo-pixels per bin, so a colour seen a few times gives weak evidence and a crop of
one colour gives none, whatever the sizes of the mask and the ring.
"""

from __future__ import annotations

import torch

from mal_core.data.augment import unnormalised_rgb
from mal_core.engine.quality import box_at
from mal_core.losses.mil import resize_to

#: Quantisation levels per RGB channel of the colour histograms.
COLOUR_BINS = 16
#: Strength of the pooled-histogram prior, in pseudo-pixels per histogram bin.
PRIOR_PIXELS_PER_BIN = 0.5
#: Bound of the per-pixel log-ratio the refinement adds (so no single colour overrides the network outright).
LOG_RATIO_CLIP = 4.0


def colour_index(images: torch.Tensor, bins: int = COLOUR_BINS) -> torch.Tensor:
    """Histogram bin (B,H,W) of every pixel of normalised crops (B,3,H,W)."""
    q = (unnormalised_rgb(images).clamp(0.0, 1.0) * bins).long().clamp(max=bins - 1)
    return (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]


def _counts(index: torch.Tensor, weight: torch.Tensor, bins: int) -> torch.Tensor:
    """Weighted colour counts (B, bins**3) of per-pixel weights (B,H,W)."""
    flat = index.flatten(1)
    counts = torch.zeros(flat.shape[0], bins ** 3, dtype=torch.float32, device=index.device)
    return counts.scatter_add_(1, flat, weight.flatten(1).float())


def log_ratio(index: torch.Tensor, obj_weight: torch.Tensor, bg_weight: torch.Tensor,
              bins: int = COLOUR_BINS) -> torch.Tensor:
    """log(h_obj / h_bg) (B,1,H,W) at every pixel of crops whose :func:`colour_index` is ``index`` (B,H,W), for the
    colour histograms of the per-pixel weights ``obj_weight`` and ``bg_weight`` (B,1,H,W), both shrunk towards
    their pooled histogram."""
    n_obj, n_bg = _counts(index, obj_weight[:, 0], bins), _counts(index, bg_weight[:, 0], bins)
    pooled = n_obj + n_bg
    pooled = pooled / pooled.sum(1, keepdim=True).clamp(min=1e-6)
    prior = PRIOR_PIXELS_PER_BIN * bins ** 3
    h_obj = (n_obj + prior * pooled) / (n_obj.sum(1, keepdim=True) + prior)
    h_bg = (n_bg + prior * pooled) / (n_bg.sum(1, keepdim=True) + prior)
    ratio = torch.log(h_obj.clamp(min=1e-8)) - torch.log(h_bg.clamp(min=1e-8))
    return torch.gather(ratio, 1, index.flatten(1)).view_as(obj_weight)


def colour_agreement(logits: torch.Tensor, images: torch.Tensor, box_mask: torch.Tensor,
                     threshold: float = 0.5) -> torch.Tensor:
    """IoU (B,) inside the box between the mask and the pixels whose colour the mask's own colour model calls
    object, at the crop's resolution; 1 when both are empty. Low when the mask covers colours common outside the
    box (background swallowed) or leaves out colours only the object has."""
    size = tuple(images.shape[-2:])
    box = box_at(box_mask, size)
    mask = (torch.sigmoid(resize_to(logits.float(), size)) > threshold) & box
    colour = (log_ratio(colour_index(images), mask.float(), (~box).float()) > 0) & box
    inter = (mask & colour).flatten(1).sum(1).float()
    union = (mask | colour).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def colour_refine(logits: torch.Tensor, images: torch.Tensor, box_mask: torch.Tensor, *, weight: float,
                  iters: int) -> torch.Tensor:
    """Logits at the crop's resolution (B,1,S,S) after ``iters`` rounds of adding ``weight`` x the clipped colour
    log-ratio to the network's (upsampled) logits, re-estimating the object's colours from the current mask each
    round: GrabCut-like EM with the network as the prior. Foreground outside the box is zeroed."""
    size = tuple(images.shape[-2:])
    box = box_at(box_mask, size).float()
    prior = resize_to(logits.float(), size)
    index = colour_index(images)
    probs = torch.sigmoid(prior) * box
    for _ in range(iters):
        ratio = log_ratio(index, probs, 1.0 - box).clamp(-LOG_RATIO_CLIP, LOG_RATIO_CLIP)
        probs = torch.sigmoid(prior + weight * ratio) * box
    return torch.logit(probs.clamp(1e-4, 1.0 - 1e-4))
