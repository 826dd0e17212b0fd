"""Lightning DataModule: COCO files -> box-crop datasets -> loaders for training and validation (labelling runs
shard by shard outside Lightning: :mod:`mal_core.engine.label_workers`)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from mal_core.config.experiment import ExperimentConfig
from mal_core.data.coco import CocoDataset
from mal_core.data.datasets import BoxCropDataset, collate_crops
from mal_core.data.loading import TRAIN_MIN_SIDE, load_eval_coco, load_train_coco

__all__ = ["TRAIN_MIN_SIDE", "MALDataModule", "load_eval_coco", "load_train_coco"]


def uses_masks(cfg: ExperimentConfig, coco: CocoDataset | None) -> bool:
    """Whether training learns from given masks: ``train.use_gt_masks`` and at least one instance has one (a
    box-only file trains exactly as before)."""
    return bool(cfg.train.use_gt_masks and coco is not None and any(i.has_segmentation for i in coco.instances))


class MALDataModule(pl.LightningDataModule):
    """Loaders over pre-parsed datasets (parsing happens up front so bad input fails before any training)."""

    def __init__(self, cfg: ExperimentConfig, *, train: CocoDataset | None = None, val: CocoDataset | None = None,
                 load_mask: bool = True, batch_size: int | None = None,
                 gt_crop: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_coco, self.val_coco = train, val
        self.load_mask = load_mask
        self.gt_crop = gt_crop
        self.batch_size = batch_size or cfg.train.batch_size

    def _loader(self, dataset: BoxCropDataset, *, shuffle: bool, batch_size: int,
                unrepeated: bool = False) -> DataLoader:
        workers = self.cfg.dataset.num_workers_per_gpu
        kwargs: dict[str, Any] = {"persistent_workers": True} if workers > 0 else {}
        if unrepeated and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every instance scored exactly once across processes (the default sampler pads with repeats)
            kwargs["sampler"] = UnrepeatedDistributedSampler(dataset, shuffle=False)
        else:
            kwargs["shuffle"] = shuffle
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_crops,
                          drop_last=False, **kwargs)

    def _test_set(self, coco: CocoDataset, load_mask: bool) -> BoxCropDataset:
        return BoxCropDataset(coco, self.cfg.dataset.crop_size, train=False,
                              test_margin_rate=self.cfg.postprocess.margin_rate, load_mask=load_mask,
                              gt_crop=self.gt_crop)

    def train_dataloader(self) -> DataLoader:
        t = self.cfg.train
        ds = BoxCropDataset(self.train_coco, self.cfg.dataset.crop_size, train=True, margin_rate=t.margin_rate,
                            train_masks=uses_masks(self.cfg, self.train_coco))
        return self._loader(ds, shuffle=True, batch_size=t.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_coco is None:
            return []
        return self._loader(self._test_set(self.val_coco, self.load_mask), shuffle=False,
                            batch_size=self.batch_size, unrepeated=True)
