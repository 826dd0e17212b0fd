"""Torch datasets of box crops: training (random margins, flip, student/teacher views) and test (fixed margins)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mal_core.data.augment import student_augment, to_normalised_tensor
from mal_core.data.coco import CocoDataset, Instance, decode_segmentation
from mal_core.data.crops import (
    box_mask_in_crop,
    clip_to_image,
    crop_wrap,
    eval_margins,
    expand_box,
    train_margins,
)
from mal_core.data.images import read_rgb
from mal_core.errors import DataError


class _ImageCache:
    """Tiny per-worker LRU of decoded RGB images (consecutive boxes often share an image)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, path: str) -> np.ndarray:
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        arr = read_rgb(path)  # EXIF orientation applied, 16-bit scaled, bombs refused (DataError naming the file)
        self._items[path] = arr
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return arr


def _resize_rgb(arr: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr)).resize((size, size), Image.BICUBIC)


class BoxCropDataset(Dataset):
    """Crops around the boxes of a :class:`CocoDataset`.

    ``train=True``: random margins from ``margin_rate``, random horizontal flip, a colour-augmented student view
    (``image``) and an un-augmented teacher view (``timage``), plus the box mask. ``train=False``: fixed margins
    from ``test_margin_rate``, the geometry needed to paste the mask back, and (``load_mask``) the ground-truth mask
    cut to the crop's in-image region with its full area (and, with ``gt_crop``, the GT resampled onto the crop).
    ``train_masks=True`` (mixed supervision): each training sample also has ``gt_mask`` (1, S, S), the annotation's
    mask cut and flipped like the crop (zeros without one), and ``has_mask``.
    """

    def __init__(self, coco: CocoDataset, crop_size: int, *, train: bool, margin_rate: list[float] | None = None,
                 test_margin_rate: list[float] | None = None, load_mask: bool = False,
                 gt_crop: bool = False, train_masks: bool = False) -> None:
        self.coco = coco
        self.instances: list[Instance] = coco.instances
        self.crop_size = int(crop_size)
        self.train = train
        self.margin_rate = list(margin_rate or [0.0, 1.2])
        self.test_margin_rate = list(test_margin_rate or [0.6, 0.6])
        self.load_mask = load_mask
        self.gt_crop = gt_crop and load_mask
        self.train_masks = train_masks and train
        self._cache = _ImageCache()

    def __len__(self) -> int:
        return len(self.instances)

    def _image(self, inst: Instance) -> np.ndarray:
        arr = self._cache.get(str(self.coco.img_dir / inst.file_name))
        if arr.shape[:2] != (inst.height, inst.width):
            raise DataError(
                f"image {inst.file_name!r} is {arr.shape[1]}x{arr.shape[0]} but {self.coco.ann_path} says "
                f"{inst.width}x{inst.height}", field=str(self.coco.img_dir / inst.file_name))
        return arr

    def __getitem__(self, index: int) -> dict[str, Any]:
        inst = self.instances[index]
        arr = self._image(inst)
        box = inst.xyxy
        if self.train:
            u = torch.rand(6).tolist()
            margins = train_margins(u, self.margin_rate[0], self.margin_rate[1])
        else:
            margins = eval_margins(self.test_margin_rate)
        ext = expand_box(box, margins)
        crop = _resize_rgb(crop_wrap(arr, ext), self.crop_size)
        box_mask = box_mask_in_crop(box, ext, self.crop_size)
        sample: dict[str, Any] = {
            "box_area": torch.tensor(inst.box_area, dtype=torch.float32),
            "category_index": torch.tensor(inst.category_index, dtype=torch.long),
            "ann_id": torch.tensor(inst.ann_id, dtype=torch.long),
        }
        if self.train:
            flip = float(torch.rand(())) < 0.5
            if flip:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                box_mask = box_mask[:, ::-1].copy()
            if self.train_masks:
                sample["gt_mask"], sample["has_mask"] = self._train_mask(inst, ext, flip)
            sample["timage"] = to_normalised_tensor(crop)
            sample["image"] = to_normalised_tensor(student_augment(crop, self.crop_size))
            sample["box_mask"] = torch.from_numpy(box_mask)[None]
            return sample
        sample["image"] = to_normalised_tensor(crop)
        sample["box_mask"] = torch.from_numpy(box_mask)[None]
        sample["ext_box"] = torch.tensor(ext, dtype=torch.long)
        sample["box"] = torch.tensor(box, dtype=torch.float64)
        sample["image_size"] = torch.tensor((inst.height, inst.width), dtype=torch.long)
        sample["index"] = torch.tensor(index, dtype=torch.long)
        if self.load_mask:
            gt = decode_segmentation(self.coco.annotation(inst.ann_id)["segmentation"], inst.height, inst.width)
            cx0, cy0, cx1, cy1 = clip_to_image(ext, inst.height, inst.width)
            sample["gt_region"] = torch.from_numpy(gt[cy0:cy1, cx0:cx1].copy())
            sample["gt_area"] = torch.tensor(int(gt.sum()), dtype=torch.long)
        if self.gt_crop:  # GT resampled onto the crop, only for the feature clustering score
            gt_crop = Image.fromarray(crop_wrap(gt, ext).astype(np.uint8) * 255)
            sample["gt_crop"] = torch.from_numpy(np.asarray(gt_crop.resize((self.crop_size,) * 2, Image.NEAREST)) > 127)
        return sample


    def _train_mask(self, inst: Instance, ext: tuple[int, int, int, int], flip: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The annotation's mask on the crop (1, S, S) float, flipped like it, and whether there is one."""
        if not inst.has_segmentation:
            return torch.zeros(1, self.crop_size, self.crop_size), torch.tensor(False)
        gt = decode_segmentation(self.coco.annotation(inst.ann_id)["segmentation"], inst.height, inst.width)
        if not gt.any():  # an empty mask says nothing about the object: box losses only
            return torch.zeros(1, self.crop_size, self.crop_size), torch.tensor(False)
        on_crop = Image.fromarray(crop_wrap(gt, ext).astype(np.uint8) * 255).resize((self.crop_size,) * 2,
                                                                                   Image.NEAREST)
        arr = np.asarray(on_crop) > 127
        if flip:
            arr = arr[:, ::-1]
        return torch.from_numpy(arr.astype(np.float32).copy())[None], torch.tensor(True)


def collate_crops(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-shape tensors; keep variable-size ones (GT regions) as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
