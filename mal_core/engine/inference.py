"""The inference action: label every box of a COCO file with a mask, shard by shard, and write the labelled JSON.

Output: ``<results_dir>/<inference.label_dump_path>`` = the input JSON with each annotation's ``segmentation``
replaced by a compressed RLE of the predicted mask, ``area`` = mask pixel count, ``score`` = estimated mask quality
in [0, 1] (a product of agreement and confidence terms, see :mod:`mal_core.engine.quality`; the terms are in
``quality``); ids, ``bbox`` and other keys are kept. An input detector ``score`` moves to ``box_score``.
Crowd annotations (``iscrowd``) are copied unchanged; they are never labelled or scored.

The images are split into shards of ``inference.shard_size`` (:mod:`mal_core.engine.shards`); each shard is
labelled by the labelling core (:mod:`mal_core.engine.labelling`), in this process or in Ray workers
(``inference.num_workers``, :mod:`mal_core.engine.label_workers`), and saved at once. A re-run with the same inputs
and settings labels only the unfinished shards; the final file is assembled by streaming the shard files.

Each label also carries its box/mask ``consistency`` terms and ``flags`` (:mod:`mal_core.engine.consistency`) and,
when a calibration applies (:mod:`mal_core.engine.calibration`: fitted on this run's GT masks with
``inference.load_mask``, written as ``calibration.json`` into the job folder, or a ``calibration.json`` of the same
checkpoint beside it), its ``expected_iou``, added while the file is assembled. The result's ``label_summary``
(flag counts, per-class count / mean score / flags / mIoU / expected mIoU, the review curve) adds up the histograms
of the shard headers, so memory does not grow with the number of boxes; the review page shows its lines on top.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mal_core.config.actions import ACTIONS
from mal_core.config.experiment import ExperimentConfig
from mal_core.config.loader import spec_to_dict
from mal_core.data.coco import CocoDataset
from mal_core.data.loading import load_eval_coco
from mal_core.engine.calibration import Calibration, LabelStats, job_calibration, review_lines
from mal_core.engine.label_workers import ShardLabeller, label_on_ray
from mal_core.engine.metrics import MIoUSums
from mal_core.engine.progress import Progress
from mal_core.engine.result import EngineResult
from mal_core.engine.shards import (
    HEADER_FILE,
    SHARDS_DIR,
    Shard,
    assemble,
    merged_records,
    read_labels_header,
    resume_key,
    write_plan,
)

log = logging.getLogger(__name__)
#: Called with the job's progress (shards and boxes done / total, seconds) after each shard.
ProgressReport = Callable[[dict[str, Any]], None]


@dataclass
class LabelledSet:
    """A dataset labelled shard by shard: its shards (files in ``folder``), what their headers add up to, and the
    counts and timing of this attempt."""

    shards: list[Shard]
    folder: Path
    base: CocoDataset
    summary: LabelSummary
    totals: dict[str, Any]
    num_input: int


def label_dataset(cfg: ExperimentConfig, explicit_keys: set[str], results_dir: Path,
                  report: ProgressReport | None = None,
                  checkpoint_field: str = "inference.checkpoint") -> LabelledSet:
    """Label every box of ``inference.ann_path`` shard by shard into ``results_dir/shards`` (shards an earlier
    attempt finished with the same resume key are kept), in this process or on Ray workers; the one labelling
    path of inference and evaluate."""
    t0 = time.time()
    inf = cfg.inference
    if inf.num_workers == 0 and (inf.num_gpus > 1 or inf.num_nodes > 1):
        log.warning("num_gpus=%d / num_nodes=%d: labelling in this process uses one device; set "
                    "inference.num_workers to label on several GPUs or machines (Ray)", inf.num_gpus, inf.num_nodes)
    coco = load_eval_coco(inf.ann_path, inf.img_dir, load_mask=inf.load_mask)
    key = resume_key(cfg)
    folder = results_dir / SHARDS_DIR
    shards = write_plan(coco, folder, inf.shard_size)
    base = CocoDataset(coco.ann_path, coco.img_dir, {"annotations": []}, coco.categories, [], 0)
    num_input = len(coco.raw["annotations"])
    del coco  # everything labelling needs is in the shard files now
    done = {s.index for s in shards if read_labels_header(s.labels_path, key) is not None}
    todo = [s for s in shards if s.index not in done]
    progress = Progress(shards, done, report)
    if done:
        log.info("resuming: %d of %d shards (%d boxes) already labelled by an earlier attempt", len(done),
                 len(shards), progress.boxes_done)
    if todo and inf.num_workers > 0:
        label_on_ray(cfg, explicit_keys, base, todo, key, progress, checkpoint_field)
    elif todo:
        worker = ShardLabeller(cfg, explicit_keys, base, checkpoint_field=checkpoint_field)
        progress.start()
        for shard in todo:
            worker.label(shard, key)
            progress.finish(shard)
    progress.close()
    summary = LabelSummary(base.num_categories, inf.max_review_items)
    for shard in shards:  # one shard header in memory at a time
        summary.add(shard, read_labels_header(shard.labels_path, key))
    if summary.missing:
        raise RuntimeError(f"shards {summary.missing[:10]} have no complete labels file after labelling")
    totals = {"shards": len(shards), "shards_resumed": len(done), "boxes": progress.total_boxes,
              "boxes_labelled_now": progress.boxes_done - progress.resumed_boxes,
              "boxes_per_second": progress.rate(), "startup_seconds": round(progress.startup_seconds, 2),
              "labelling_seconds": round(progress.seconds, 2), "seconds": round(time.time() - t0, 2)}
    return LabelledSet(shards, folder, base, summary, totals, num_input)


def run_inference(cfg: ExperimentConfig, explicit_keys: set[str] | None = None,
                  report: ProgressReport | None = None) -> EngineResult:
    """Label ``inference.ann_path`` with ``inference.checkpoint``; returns output paths, counts, timing and (with GT
    masks) the labels' mIoU. ``report`` receives the progress after each shard."""
    inf = cfg.inference
    results_dir = Path(ACTIONS["inference"].results_dir(cfg))
    done = label_dataset(cfg, explicit_keys or set(), results_dir, report)
    summary, folder = done.summary, done.folder
    out_path = results_dir / inf.label_dump_path
    paths = [s.labels_path for s in done.shards]
    calibration, label_summary = job_calibration(summary.stats, done.base.categories, inf.checkpoint, results_dir,
                                                 calibration_settings(cfg))
    assemble(folder, paths, out_path, transform=with_expected_iou(calibration))
    artifacts: dict[str, Any] = {"label_dump": str(out_path), "checkpoint": str(inf.checkpoint),
                                 "num_labelled": summary.num_labelled, "shards": str(folder),
                                 "labelling": done.totals, "label_summary": label_summary}
    if calibration is not None and summary.stats.num_with_gt:
        artifacts["calibration"] = str(results_dir / "calibration.json")
    result = EngineResult(results_dir=str(results_dir), artifacts=artifacts)
    result.details.update(num_input_annotations=done.num_input, **done.totals)
    if inf.load_mask and summary.num_labelled:
        result.metrics = dict(summary.metric.compute())
    _write_review(cfg, done.base, folder, paths, {pos for _score, pos in summary.lowest}, results_dir, artifacts,
                  calibration)
    if inf.output_formats:  # the convert action's pipeline, with its defaults
        from mal_core.config.experiment import ConvertConfig
        from mal_core.engine.convert import deliver

        opts = ConvertConfig(ann_path=str(out_path), img_dir=inf.img_dir, formats=list(inf.output_formats))
        artifacts["formats"] = deliver(opts, out_path, Path(inf.img_dir), results_dir)["formats"]
    if inf.output_uri:
        from mal_core.engine.upload import upload_file

        artifacts["output_uri"] = upload_file(out_path, inf.output_uri, "inference.output_uri")
    log.info("wrote %d labelled annotations to %s", summary.num_labelled, out_path)
    return result


class LabelSummary:
    """What the shard headers add up to, read one header at a time: labels made, the metric (per-shard sums added
    up: the same as one pass over every label) and the lowest scores for the review page."""

    def __init__(self, num_categories: int, keep: int) -> None:
        self.metric = MIoUSums(num_categories)
        self.stats = LabelStats(num_categories)  # per class and score bin: counts, GT IoU sums, flags
        self.box_metric = MIoUSums(num_categories)  # the box-fill baseline, same boxes
        self.fill_sum, self.fill_count = 0.0, 0
        self.keep = keep
        self.num_labelled = 0
        self.lowest: list[tuple[float, int]] = []
        self.missing: list[int] = []

    def add(self, shard: Shard, head: dict[str, Any] | None) -> None:
        """Add one shard's header (None: the shard has no complete labels file)."""
        if head is None:
            self.missing.append(shard.index)
            return
        self.num_labelled += int(head["num_labelled"])
        for metric, name in ((self.metric, "metric"), (self.box_metric, "box_metric")):
            if head.get(name):
                metric.add_sums(torch.tensor(head[name]["iou_sum"]), torch.tensor(head[name]["count"]))
        fill_sum, fill_count = head.get("fill") or (0.0, 0)
        self.fill_sum, self.fill_count = self.fill_sum + float(fill_sum), self.fill_count + int(fill_count)
        self.lowest = heapq.nsmallest(self.keep, [*self.lowest, *(tuple(x) for x in head.get("lowest", []))])
        self.stats.merge(head.get("label_stats"))

    def validation_metrics(self) -> dict[str, float]:
        """mIoU (+ size buckets, instance mean, count) with the box-fill baseline and the mean fraction of its box
        each mask fills: the keys training's validation reports, for the same collapse checks."""
        out = {k: float(v) for k, v in self.metric.compute().items()}
        out["mIoU_box_fill"] = float(self.box_metric.compute()["mIoU"])
        out["mask_box_fill"] = self.fill_sum / self.fill_count if self.fill_count else float("nan")
        return out


def calibration_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a calibration file records of the run that fitted it: its labels' test-time settings and data."""
    inf = cfg.inference
    return {"fitted_on": str(inf.ann_path), "postprocess": spec_to_dict(cfg)["postprocess"],
            "test_mode": {"use_teacher": inf.use_teacher_test, "use_mixed": inf.use_mixed_model_test,
                          "use_flip": inf.use_flip_test}}


def with_expected_iou(calibration: Calibration | None) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The assembly step that adds ``expected_iou`` to every scored annotation (None without a calibration)."""
    if calibration is None:
        return None

    def add(ann: dict[str, Any]) -> dict[str, Any]:
        if "score" in ann:
            ann["expected_iou"] = round(float(calibration.expected(ann["score"])), 4)
        return ann

    return add


def _write_review(cfg: ExperimentConfig, base: CocoDataset, folder: Path, paths: list[Path], lowest: set[int],
                  results_dir: Path, artifacts: dict[str, Any], calibration: Calibration | None = None) -> None:
    """Overlays (first images by id) and the review page (lowest scores, the label summary's lines on top),
    reading only the labels they show."""
    inf = cfg.inference
    want_review = inf.review_page and artifacts["num_labelled"]
    if not inf.save_overlays and not want_review:
        return
    header = json.loads((folder / HEADER_FILE).read_text())
    light = CocoDataset(base.ann_path, base.img_dir, {"images": header.get("images", []), "annotations": [],
                                                      "categories": header.get("categories", [])},
                        base.categories, [], 0)
    labelled_images = sorted({a["image_id"] for _p, a in merged_records(paths) if "score" in a}) \
        if inf.save_overlays else []
    overlay_images = set(labelled_images[:inf.max_overlays])
    shown, overlays = [], []
    add_expected = with_expected_iou(calibration) or (lambda a: a)
    for pos, ann in merged_records(paths):
        if "score" not in ann:
            continue
        ann = add_expected(ann)
        if pos in lowest:
            shown.append(ann)
        if ann["image_id"] in overlay_images:
            overlays.append(ann)
    if inf.save_overlays:
        from mal_core.engine.overlays import write_overlays

        artifacts["overlays"] = str(write_overlays(light, overlays, results_dir / "overlays", inf.max_overlays))
    if want_review:
        from mal_core.engine.review import REVIEW_DIR, write_review_page

        artifacts["review_page"] = str(write_review_page(
            light, shown, results_dir / REVIEW_DIR, inf.max_review_items,
            title=f"Mask review: {Path(inf.ann_path).name}", total=artifacts["num_labelled"],
            labels_file=Path(inf.label_dump_path).name, header_lines=review_lines(artifacts["label_summary"])))
