"""The inference action: label every box of a COCO file with a mask and write the labelled JSON atomically.

Output: ``<results_dir>/<inference.label_dump_path>`` = the input JSON with each annotation's ``segmentation``
replaced by a compressed RLE of the predicted mask, ``area`` = mask pixel count, ``score`` = estimated mask quality
in [0, 1] (a product of agreement and confidence terms, see :mod:`mal_core.engine.quality`; the terms are in
``quality``); ids, ``bbox`` and other keys are kept. An input
detector ``score`` moves to ``box_score``.
Crowd annotations (``iscrowd``) are copied unchanged; they are never labelled or scored.
With several processes each writes a part file; the first merges them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from mal_core.config.actions import ACTIONS
from mal_core.config.experiment import ExperimentConfig
from mal_core.data.coco import CocoDataset, encode_rle
from mal_core.data.datamodule import MALDataModule, load_eval_coco
from mal_core.engine.metrics import MaskMIoU
from mal_core.engine.restore import restore_module
from mal_core.engine.result import EngineResult
from mal_core.engine.trainer import build_trainer, device_settings
from mal_core.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def _records(coco: CocoDataset, predictions: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for pred in predictions:
        inst = coco.instances[pred["index"]]
        canvas = torch.zeros((inst.height, inst.width), dtype=torch.bool)
        x0, y0, x1, y1 = pred["region"]
        canvas[y0:y1, x0:x1] = pred["mask"]
        mask = canvas.numpy()
        ann = {k: v for k, v in coco.annotation(inst.ann_id).items() if k not in ("segmentation", "area", "score")}
        if inst.score is not None:
            ann["box_score"] = inst.score
        ann.update(segmentation=encode_rle(mask), area=int(mask.sum()), score=round(float(pred["score"]), 6),
                   iscrowd=0)
        if "quality" in pred:
            ann["quality"] = pred["quality"]
        if "iou" in pred:
            ann["iou"] = round(float(pred["iou"]), 6)
        out[inst.ann_id] = ann
    return out


def run_inference(cfg: ExperimentConfig, explicit_keys: set[str] | None = None) -> EngineResult:
    """Label ``inference.ann_path`` with ``inference.checkpoint``; returns output paths, counts and (with GT masks)
    the labels' mIoU."""
    t0 = time.time()
    inf = cfg.inference
    results_dir = Path(ACTIONS["inference"].results_dir(cfg))
    coco = load_eval_coco(inf.ann_path, inf.img_dir, load_mask=inf.load_mask)
    test_mode = {"use_teacher": inf.use_teacher_test, "use_mixed": inf.use_mixed_model_test,
                 "use_flip": inf.use_flip_test}
    module, merged = restore_module(cfg, inf.checkpoint, "inference.checkpoint", explicit_keys or set(),
                                    coco.categories, test_mode)
    devices = device_settings(inf.num_gpus, inf.gpu_ids, inf.num_nodes, "inference")
    results_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(results_dir, devices, use_amp=merged.train.use_amp, loggers=False)
    dm = MALDataModule(merged, predict=coco, load_mask=inf.load_mask, batch_size=inf.batch_size)
    batches = trainer.predict(module, datamodule=dm, return_predictions=True) or []
    preds = [rec for batch in batches for rec in batch]
    records = _records(coco, preds)
    out_path = results_dir / inf.label_dump_path
    rank, world = trainer.global_rank, trainer.world_size
    if world > 1:
        part = out_path.with_name(f"{out_path.name}.part{rank}")
        atomic_write_json(part, list(records.values()), indent=None)
        trainer.strategy.barrier()
        if rank == 0:
            records = {}
            for r in range(world):
                p = out_path.with_name(f"{out_path.name}.part{r}")
                for ann in json.loads(p.read_text()):
                    records[ann["id"]] = ann
                p.unlink()
        trainer.strategy.barrier()
    artifacts: dict[str, Any] = {"label_dump": str(out_path), "checkpoint": str(inf.checkpoint), "num_labelled": None}
    result = EngineResult(results_dir=str(results_dir), artifacts=artifacts)
    if rank != 0:
        return result
    ordered = [records[i.ann_id] for i in coco.instances if i.ann_id in records]
    labelled = dict(coco.raw)
    labelled["annotations"] = coco.labelled_annotations(records)  # crowd regions pass through unchanged
    atomic_write_json(out_path, labelled, indent=None)
    artifacts["num_labelled"] = len(ordered)
    result.details.update(num_input_annotations=len(coco.raw["annotations"]), seconds=round(time.time() - t0, 2))
    if inf.load_mask and ordered:
        metric = MaskMIoU(coco.num_categories, sync_on_compute=False)  # rank 0 holds every label already
        idx = {i.ann_id: i for i in coco.instances}
        metric.update(torch.tensor([a["iou"] for a in ordered]),
                      torch.tensor([idx[a["id"]].category_index for a in ordered]),
                      torch.tensor([idx[a["id"]].box_area for a in ordered]))
        result.metrics = dict(metric.compute())
    if inf.save_overlays:
        from mal_core.engine.overlays import write_overlays

        artifacts["overlays"] = str(write_overlays(coco, ordered, results_dir / "overlays", inf.max_overlays))
    if inf.review_page and ordered:
        from mal_core.engine.review import REVIEW_DIR, write_review_page

        artifacts["review_page"] = str(write_review_page(coco, ordered, results_dir / REVIEW_DIR,
                                                         inf.max_review_items,
                                                         title=f"Mask review: {Path(inf.ann_path).name}"))
    log.info("wrote %d labelled annotations to %s", len(ordered), out_path)
    return result
