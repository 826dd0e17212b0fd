"""Who labels the shards: :class:`ShardLabeller` (one network loaded once, shard after shard), in this process or
as Ray actors (:func:`label_on_ray`, ``inference.num_workers`` > 0) that take shards as tasks.

Ray runs the actors on the local machine (a Ray started for the job) or on an existing cluster
(``inference.ray_address``); each actor writes its shards' files into the job folder, which must be on a filesystem
every node sees. A lost actor is restarted and its shard retried by Ray (``max_restarts`` / ``max_task_retries``);
a shard file is only ever renamed into place complete, so a retried shard starts clean.
"""

from __future__ import annotations

import heapq
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mal_core.config.experiment import ExperimentConfig
from mal_core.data.coco import CocoDataset, encode_rle
from mal_core.data.datasets import BoxCropDataset, collate_crops
from mal_core.engine.calibration import LabelStats
from mal_core.engine.labelling import BoxLabel, Labeller, TestTimeSettings, autocast_for, to_device
from mal_core.engine.metrics import MIoUSums
from mal_core.engine.progress import Progress
from mal_core.engine.restore import restore_network
from mal_core.engine.shards import Shard, passthrough, read_shard, write_labels
from mal_core.errors import MalError
from mal_core.utils.stop import raise_if_stopped

log = logging.getLogger(__name__)
#: How often Ray restarts a lost labelling actor, and retries the shard it was labelling.
MAX_RETRIES = 3


def label_annotation(coco: CocoDataset, label: BoxLabel) -> dict[str, Any]:
    """The output annotation of one label: the input annotation with the mask (full-image compressed RLE),
    ``area``, ``score``, ``quality``, ``consistency``, ``flags`` (:mod:`mal_core.engine.consistency`) and (with GT)
    ``iou``; an input detector score becomes ``box_score``."""
    inst = coco.instances[label.index]
    mask = label.mask.full(inst.height, inst.width)
    ann = {k: v for k, v in coco.annotation(inst.ann_id).items() if k not in ("segmentation", "area", "score")}
    if inst.score is not None:
        ann["box_score"] = inst.score
    ann.update(segmentation=encode_rle(mask), area=int(mask.sum()), score=round(float(label.score), 6), iscrowd=0,
               quality=label.quality, consistency=label.consistency, flags=list(label.flags))
    if label.iou is not None:
        ann["iou"] = round(float(label.iou), 6)
    return ann


@dataclass
class ShardOutcome:
    """What labelling one shard produced besides its file: counts, metric state and its lowest scores."""

    num_labelled: int
    metric: dict[str, list[float]] | None = None
    box_metric: dict[str, list[float]] | None = None
    fill: tuple[float, int] = (0.0, 0)
    lowest: list[tuple[float, int]] = field(default_factory=list)
    label_stats: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The JSON form stored in the shard file's header."""
        return {"num_labelled": self.num_labelled, "metric": self.metric, "box_metric": self.box_metric,
                "fill": list(self.fill), "lowest": self.lowest, "label_stats": self.label_stats}


def shard_metric(num_categories: int, ious: list[tuple[float, int, float]]) -> dict[str, list[float]]:
    """The metric state (per-category and size-bucket IoU sums and counts) of one shard's labels."""
    metric = MIoUSums(num_categories)
    if ious:
        iou, cat, area = zip(*ious, strict=True)
        metric.update(torch.tensor(iou), torch.tensor(cat), torch.tensor(area))
    return metric.state()


def label_device(cfg: ExperimentConfig) -> torch.device:
    """The first of ``inference.gpu_ids`` when CUDA is there and ``inference.num_gpus`` > 0, else the CPU."""
    inf = cfg.inference
    if torch.cuda.is_available() and inf.num_gpus > 0:
        return torch.device("cuda", int(inf.gpu_ids[0]) if inf.gpu_ids else 0)
    return torch.device("cpu")


class ShardLabeller:
    """Loads the network of ``inference.checkpoint`` once and labels shards with the labelling core."""

    def __init__(self, cfg: ExperimentConfig, explicit_keys: set[str], base: CocoDataset,
                 device: torch.device | None = None, checkpoint_field: str = "inference.checkpoint") -> None:
        inf = cfg.inference
        network, merged, _categories = restore_network(cfg, inf.checkpoint, checkpoint_field, explicit_keys)
        self.device = device or label_device(cfg)
        self.cfg, self.base = merged, base
        mode = {"use_teacher": inf.use_teacher_test, "use_mixed": inf.use_mixed_model_test,
                "use_flip": inf.use_flip_test}
        self.labeller = Labeller(network.to(self.device), TestTimeSettings.from_config(merged, mode))

    def label(self, shard: Shard, key: str) -> ShardOutcome:
        """Label every box of ``shard`` and write its labels file (atomically); returns the outcome."""
        cfg, inf = self.cfg, self.cfg.inference
        coco, positions = read_shard(shard.input_path, self.base)
        records = [(positions[a["id"]], a) for a in passthrough(coco)]
        ious: list[tuple[float, int, float]] = []
        box_ious: list[tuple[float, int, float]] = []
        fills: list[float] = []
        scored: list[tuple[float, int]] = []
        stats = LabelStats(coco.num_categories)
        if coco.instances:
            dataset = BoxCropDataset(coco, cfg.dataset.crop_size, train=False,
                                     test_margin_rate=cfg.postprocess.margin_rate, load_mask=inf.load_mask)
            workers = min(cfg.dataset.num_workers_per_gpu, max(len(coco.instances) // inf.batch_size, 0))
            loader = DataLoader(dataset, batch_size=inf.batch_size, num_workers=workers, collate_fn=collate_crops)
            with torch.inference_mode(), autocast_for(self.device, cfg.postprocess.use_amp):
                for batch in loader:
                    raise_if_stopped()  # a signal swallowed inside the loader (e.g. during a fork) still stops
                    for label in self.labeller.label(to_device(batch, self.device)):
                        ann = label_annotation(coco, label)
                        inst = coco.instances[label.index]
                        pos = positions[inst.ann_id]
                        records.append((pos, ann))
                        scored.append((ann["score"], pos))
                        stats.add(inst.category_index, ann["score"], label.flags, label.iou)
                        if label.iou is not None and label.box_iou is not None and label.fill is not None:
                            ious.append((label.iou, inst.category_index, inst.box_area))
                            box_ious.append((label.box_iou, inst.category_index, inst.box_area))
                            fills.append(label.fill)
        outcome = ShardOutcome(num_labelled=len(coco.instances),
                               metric=shard_metric(coco.num_categories, ious) if inf.load_mask else None,
                               box_metric=shard_metric(coco.num_categories, box_ious) if inf.load_mask else None,
                               fill=(float(sum(fills)), len(fills)),
                               lowest=heapq.nsmallest(inf.max_review_items, scored), label_stats=stats.state())
        write_labels(shard.labels_path, key, shard.index, records, outcome.summary())
        return outcome


def _ray_env() -> dict[str, Any]:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding mal_core
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {"env_vars": {"PYTHONPATH": path, "MAL_PROGRESS_BAR": "0"}}


def label_on_ray(cfg: ExperimentConfig, explicit_keys: set[str], base: CocoDataset, shards: list[Shard], key: str,
                 progress: Progress, checkpoint_field: str = "inference.checkpoint") -> None:
    """Label ``shards`` with ``inference.num_workers`` Ray actors; returns when every shard has its file."""
    import ray
    import ray.exceptions
    from ray.util import ActorPool

    inf = cfg.inference
    started = not ray.is_initialized()
    if started:
        if inf.ray_address:
            log.info("attaching to the Ray cluster at %s", inf.ray_address)
            ray.init(address=inf.ray_address, runtime_env=_ray_env(), log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, runtime_env=_ray_env(),
                     log_to_driver=False)
    try:
        resources = ray.cluster_resources()
        workers = min(inf.num_workers, len(shards))
        cpus = max(1, int(resources.get("CPU", 1)) // workers) if not inf.ray_address else 1
        gpus = inf.gpus_per_worker if resources.get("GPU", 0) > 0 else 0
        actor = ray.remote(_RayShardLabeller).options(num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RETRIES,
                                                      max_task_retries=MAX_RETRIES)
        log.info("labelling %d shards on %d Ray workers (%d CPU, %s GPU each)", len(shards), workers, cpus, gpus)
        actors = [actor.remote(cfg, explicit_keys, base, cpus, checkpoint_field) for _ in range(workers)]
        ray.get([a.ready.remote() for a in actors])  # every worker has its network loaded
        progress.start()
        pool = ActorPool(actors)
        by_index = {s.index: s for s in shards}
        try:
            for index in pool.map_unordered(lambda a, s: a.label.remote(s, key), shards):
                progress.finish(by_index[index])
        except ray.exceptions.RayTaskError as exc:  # our own error in a worker (a corrupt image): as in process
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MalError):
                raise cause from None
            raise
    finally:
        if started:
            ray.shutdown()


class _RayShardLabeller:
    """The body of a Ray labelling actor: a :class:`ShardLabeller` with the CPU threads Ray gave it."""

    def __init__(self, cfg: ExperimentConfig, explicit_keys: set[str], base: CocoDataset, cpus: int,
                 checkpoint_field: str) -> None:
        torch.set_num_threads(max(1, cpus))
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.worker = ShardLabeller(cfg, explicit_keys, base, device=device, checkpoint_field=checkpoint_field)

    def ready(self) -> bool:
        """True once the actor is up (its network is loaded in ``__init__``)."""
        return True

    def label(self, shard: Shard, key: str) -> int:
        """Label one shard (its file lands in the job folder); returns its index."""
        self.worker.label(shard, key)
        return shard.index
