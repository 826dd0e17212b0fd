"""The convert action: deliver a labelled COCO file in the formats training frameworks and review tools load.

One pipeline, :func:`deliver`, called by the convert action and by inference's ``inference.output_formats``:
read the labelled file -> choose what to deliver (:func:`select_labels`: crowd regions left out; labels below
``convert.min_score`` or their class's ``convert.class_min_scores`` and labels a reviewer rejected follow
``convert.rejected``; labels marked needs_fixing go to the review-tool formats first) -> write each format into
``<results folder>/<format>/`` (:mod:`mal_core.engine.formats`). The labelled file itself is only read.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from mal_core.config.actions import ACTIONS
from mal_core.config.checks import parse_class_scores
from mal_core.config.experiment import ConvertConfig, ExperimentConfig
from mal_core.data.decisions import NEEDS_FIXING, REJECTED, read_decisions
from mal_core.engine.formats import writer
from mal_core.engine.formats.delivery import Delivery, Label
from mal_core.engine.result import EngineResult
from mal_core.errors import DataError, SpecError
from mal_core.utils.safe_paths import check_guarded

log = logging.getLogger(__name__)


def read_labelled(path: Path) -> dict[str, Any]:
    """The labelled COCO file; :class:`DataError` naming it when it is not COCO JSON with images, annotations and
    categories."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc})", field="convert.ann_path") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
            raise DataError(f"{path}: not a COCO file: expected a list under {key!r}", field="convert.ann_path")
    return doc


def _threshold_for(cats: list[dict[str, Any]], opts: ConvertConfig) -> dict[Any, float]:
    """Category id -> minimum score (``class_min_scores`` by name or id, else ``min_score``)."""
    wanted = parse_class_scores(opts.class_min_scores)
    by_key = {str(c.get("name", c["id"])): c["id"] for c in cats} | {str(c["id"]): c["id"] for c in cats}
    unknown = [k for k in wanted if k not in by_key]
    if unknown:
        raise SpecError(f"convert.class_min_scores names {unknown}, not categories of the labelled file; expected "
                        f"names or ids from {sorted({str(c.get('name', c['id'])) for c in cats})}",
                        field="convert.class_min_scores")
    out = {c["id"]: opts.min_score for c in cats}
    out.update({by_key[k]: v for k, v in wanted.items()})
    return out


def select_labels(doc: dict[str, Any], source: Path, img_dir: Path | None, opts: ConvertConfig,
                  decisions: dict[int, str]) -> Delivery:
    """What to deliver of ``doc`` (see the module docstring), with the counts of each choice."""
    thresholds = _threshold_for(doc["categories"], opts)
    delivery = Delivery(source, img_dir, doc["images"], doc["categories"], decisions=decisions)
    counts = dict.fromkeys(("labels", "delivered_as_masks", "delivered_as_boxes", "left_out", "below_score",
                            "rejected", "needs_fixing", "crowd_left_out", "decisions_unmatched"), 0)
    image_ids = {im["id"] for im in doc["images"]}
    seen: set[int] = set()
    for ann in doc["annotations"]:
        if ann.get("iscrowd", 0):
            counts["crowd_left_out"] += 1
            continue
        if ann.get("image_id") not in image_ids or ann.get("category_id") not in thresholds:
            raise DataError(f"{source}: annotation {ann.get('id')!r} names image {ann.get('image_id')!r} / category "
                            f"{ann.get('category_id')!r}, not in the file's images / categories",
                            field="convert.ann_path")
        counts["labels"] += 1
        decision = decisions.get(ann["id"])
        seen.add(ann["id"])
        score = ann.get("score")
        low = isinstance(score, (int, float)) and score < thresholds[ann["category_id"]]
        counts["below_score"] += int(low)
        counts["rejected"] += int(decision == REJECTED)
        counts["needs_fixing"] += int(decision == NEEDS_FIXING)
        if low or decision == REJECTED:
            if opts.rejected == "drop":
                counts["left_out"] += 1
                continue
            label = Label(ann, box_only=True)
        else:
            label = Label(ann, needs_fixing=decision == NEEDS_FIXING)
        counts["delivered_as_boxes" if label.box_only else "delivered_as_masks"] += 1
        delivery.labels.setdefault(ann["image_id"], []).append(label)
    counts["decisions_unmatched"] = len(set(decisions) - seen)
    delivery.counts = counts
    return delivery


def deliver(opts: ConvertConfig, ann_path: Path, img_dir: Path | None, out_root: Path) -> dict[str, Any]:
    """Write ``opts.formats`` of the labelled file ``ann_path`` into ``out_root/<format>/``; returns, per format,
    what was written, and the selection counts."""
    doc = read_labelled(ann_path)
    decisions = read_decisions(opts.decisions_path, field="convert.decisions_path") if opts.decisions_path else {}
    delivery = select_labels(doc, ann_path, img_dir, opts, decisions)
    out: dict[str, Any] = {"counts": delivery.counts, "formats": {}}
    for name in opts.formats:
        t0 = time.time()
        folder = out_root / name
        check_guarded(folder)  # never through a link planted in the job folder
        folder.mkdir(parents=True, exist_ok=True)
        info = writer(name)(delivery, folder, opts, doc)
        info["folder"], info["seconds"] = str(folder), round(time.time() - t0, 2)
        out["formats"][name] = info
        log.info("%s: wrote %s", name, info["file"])
    return out


def run_convert(cfg: ExperimentConfig, explicit_keys: set[str] | None = None) -> EngineResult:
    """The convert action's entry point: :func:`deliver` into the job's results folder."""
    opts = cfg.convert
    results_dir = Path(ACTIONS["convert"].results_dir(cfg))
    img_dir = Path(opts.img_dir) if opts.img_dir else None
    done = deliver(opts, Path(opts.ann_path), img_dir, results_dir)
    artifacts: dict[str, Any] = {"formats": done["formats"], "counts": done["counts"]}
    if "train_masks" in done["formats"]:  # what a train job chained to this one starts from
        artifacts["training_file"] = done["formats"]["train_masks"]["file"]
        artifacts["model_checkpoint"] = opts.model_checkpoint or None
    result = EngineResult(results_dir=str(results_dir), artifacts=artifacts)
    if done["counts"]["decisions_unmatched"]:
        result.warnings.append(f"{done['counts']['decisions_unmatched']} decisions name annotations that are not "
                               f"in {opts.ann_path} (a decisions file of another labelled file?)")
    return result
