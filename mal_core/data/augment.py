"""Student-view colour augmentation (PIL based; no torchvision) and ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def colour_jitter(img: Image.Image, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                  hue: float = 0.1) -> Image.Image:
    """Random brightness/contrast/saturation factors in [1-x, 1+x] and hue shift in [-hue, hue], random order."""
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(_uniform(1 - brightness, 1 + brightness)),
        lambda im: ImageEnhance.Contrast(im).enhance(_uniform(1 - contrast, 1 + contrast)),
        lambda im: ImageEnhance.Color(im).enhance(_uniform(1 - saturation, 1 + saturation)),
        lambda im: _shift_hue(im, _uniform(-hue, hue)),
    ]
    for i in torch.randperm(len(ops)).tolist():
        img = ops[i](img)
    return img


def student_augment(img: Image.Image, crop_size: int) -> Image.Image:
    """Jitter (p=0.5), grayscale (p=0.2), Gaussian blur (p=0.5, radius U(0.1, 2.0) scaled to the crop size)."""
    if float(torch.rand(())) < 0.5:
        img = colour_jitter(img)
    if float(torch.rand(())) < 0.2:
        img = img.convert("L").convert("RGB")
    if float(torch.rand(())) < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=_uniform(0.1, 2.0) * crop_size / 512.0))
    return img


def to_normalised_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """RGB uint8 image -> (3, H, W) float tensor normalised with the ImageNet mean and std."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def unnormalised_rgb(images: torch.Tensor) -> torch.Tensor:
    """Normalised crops (B,3,H,W) -> RGB in [0, 1] (float32, same device), undoing the ImageNet normalisation."""
    mean = torch.as_tensor(IMAGENET_MEAN).to(images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD).to(images.device).view(1, 3, 1, 1)
    return images.float() * std + mean


def denormalise(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8 image."""
    arr = t.detach().cpu().float().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return (arr.clip(0, 1) * 255).round().astype(np.uint8)
