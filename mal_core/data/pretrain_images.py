"""Unlabelled views for MAE pretraining: random resized crops of whole images, and (given box annotations) crops
around boxes with the same margins MAL trains on, so the encoder also sees objects at the scale MAL will show them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mal_core.data.augment import to_normalised_tensor
from mal_core.data.coco import CocoDataset
from mal_core.data.crops import Box, crop_wrap, expand_box, train_margins
from mal_core.data.images import read_rgb


def _random_resized_box(width: int, height: int, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A random (x0, y0, x1, y1) covering U(scale) of the image area with log-uniform aspect ratio."""
    area = width * height
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand(())))
        log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(torch.rand(())))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(torch.randint(0, width - w + 1, ()))
            y0 = int(torch.randint(0, height - h + 1, ()))
            return x0, y0, x0 + w, y0 + h
    side = min(width, height)  # fallback: the centred square
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


class PretrainImages(Dataset):
    """One random view per image per epoch, as a normalised (3, S, S) tensor.

    With ``boxes`` (image path -> boxes), a view is, with probability ``box_crop_prob``, a crop around one of the
    image's boxes expanded by random margins from ``margin_rate`` (as MAL's training crops are); otherwise a random
    resized crop of the whole image covering ``min_crop_scale``..1 of its area. ``hflip`` flips half the views.
    """

    def __init__(self, images: list[Path], crop_size: int, *, min_crop_scale: float = 0.2, hflip: bool = True,
                 boxes: dict[Path, list[Box]] | None = None, box_crop_prob: float = 0.0,
                 margin_rate: tuple[float, float] = (0.0, 1.2)) -> None:
        self.images = list(images)
        self.crop_size = int(crop_size)
        self.scale = (float(min_crop_scale), 1.0)
        self.hflip = hflip
        self.boxes = boxes or {}
        self.box_crop_prob = float(box_crop_prob) if self.boxes else 0.0
        self.margin_rate = margin_rate

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> np.ndarray:
        """The RGB array of image ``index``; unreadable files raise :class:`DataError` naming them."""
        return read_rgb(self.images[index])

    def view(self, arr: np.ndarray, index: int) -> Image.Image:
        """One random square view of image ``index`` (already decoded as ``arr``), resized to the crop size."""
        h, w = arr.shape[:2]
        boxes = self.boxes.get(self.images[index], [])
        if boxes and float(torch.rand(())) < self.box_crop_prob:
            box = boxes[int(torch.randint(0, len(boxes), ()))]
            ext = expand_box(box, train_margins(torch.rand(6).tolist(), *self.margin_rate))
            region = crop_wrap(arr, ext)
        else:
            x0, y0, x1, y1 = _random_resized_box(w, h, self.scale)
            region = arr[y0:y1, x0:x1]
        img = Image.fromarray(np.ascontiguousarray(region)).resize((self.crop_size,) * 2, Image.BICUBIC)
        if self.hflip and float(torch.rand(())) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": to_normalised_tensor(self.view(self.read(index), index))}

    def fixed_view(self, index: int) -> torch.Tensor:
        """A deterministic view (the centred square of the image), for the reconstruction grid."""
        arr = self.read(index)
        h, w = arr.shape[:2]
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        img = Image.fromarray(np.ascontiguousarray(arr[y0:y0 + side, x0:x0 + side]))
        return to_normalised_tensor(img.resize((self.crop_size,) * 2, Image.BICUBIC))


def boxes_by_image(coco: CocoDataset) -> dict[Path, list[Box]]:
    """Box lists keyed by image path, from a parsed COCO file (crowd regions are already left out)."""
    out: dict[Path, list[Box]] = defaultdict(list)
    for inst in coco.instances:
        out[Path(coco.img_dir) / inst.file_name].append(inst.xyxy)
    return dict(out)
