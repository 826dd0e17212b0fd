"""Shards of a labelling job: the plan (images split into shards), the shard files, and streaming assembly.

Layout inside the job's results folder, under :data:`SHARDS_DIR`:

* ``header.json``: the input COCO file without its ``annotations`` (images, categories, info, ...).
* ``input_<NNNNN>.json``: one shard's images, its boxes (the parsed, validated instances) and its raw annotations
  with their position in the input file.
* ``labels_<NNNNN>.jsonl``: the shard's output, written atomically once the whole shard is labelled. Line 1 is a
  header (format, the job's :func:`resume_key`, shard index, record count, metric state, the lowest scores, the
  label histograms of :class:`~mal_core.engine.calibration.LabelStats`); then
  one ``{"pos": p, "ann": {...}}`` line per output annotation, in input order (crowd regions pass through here).

A shard whose labels file is complete and carries the same key is done: a re-run of the job labels only the
others. The final COCO file is assembled by merging the labels files in input order, one line at a time, so
memory never holds more than one shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mal_core.config.actions import SHARDS_DIR
from mal_core.config.experiment import ExperimentConfig
from mal_core.config.loader import spec_to_dict
from mal_core.data.coco import CocoDataset, Instance, is_crowd
from mal_core.utils.io import atomic_write, atomic_write_json
from mal_core.utils.safe_paths import check_guarded

__all__ = ["SHARDS_DIR", "Shard", "assemble", "read_labels_header", "resume_key", "write_plan"]
HEADER_FILE = "header.json"
#: Version of the shard files; a change makes older shards unusable for resume (2: consistency terms and flags in
#: every label, ``label_stats`` in the header).
SHARD_FORMAT = 2
#: Inference keys that change how a job runs or what else it writes, never a label: a re-run that changes only
#: these continues the earlier attempt's shards.
OPERATIONAL_KEYS = frozenset({
    "num_gpus", "gpu_ids", "num_nodes", "results_dir", "label_dump_path", "save_overlays", "max_overlays",
    "review_page", "max_review_items", "num_workers", "ray_address", "gpus_per_worker", "output_uri",
})
_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (streamed), or of every file under a folder (names and contents)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def resume_key(cfg: ExperimentConfig) -> str:
    """What a labelling job's labels depend on, hashed: the content of the annotation file and the checkpoint,
    the image folder, and every setting but the :data:`OPERATIONAL_KEYS`. Equal keys = equal labels."""
    tree = spec_to_dict(cfg)
    inf = {k: v for k, v in tree["inference"].items() if k not in OPERATIONAL_KEYS}
    ident = {"format": SHARD_FORMAT, "inference": inf, "model": tree["model"], "dataset": tree["dataset"],
             "postprocess": tree["postprocess"], "train": {k: tree["train"][k] for k in ("crf_kernel_size",
                                                                                        "crf_zeta")},
             "img_dir": os.path.realpath(cfg.inference.img_dir),
             "ann": file_digest(cfg.inference.ann_path), "checkpoint": file_digest(cfg.inference.checkpoint)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Shard:
    """One shard of the plan: its index, how many boxes it labels, and its input and labels files."""

    index: int
    num_boxes: int
    input_path: Path
    labels_path: Path


def shard_paths(folder: Path, index: int) -> tuple[Path, Path]:
    """(input file, labels file) of shard ``index`` in ``folder``."""
    return folder / f"input_{index:05d}.json", folder / f"labels_{index:05d}.jsonl"


def write_plan(coco: CocoDataset, folder: Path, shard_size: int) -> list[Shard]:
    """Split ``coco``'s annotated images into shards of ``shard_size`` images (file order), write each shard's input
    file and the header; returns the shards. ``coco.raw`` is not needed afterwards."""
    check_guarded(folder)  # a link planted at the shards folder is refused before anything is made or removed
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # temp files of a killed run (never a complete-looking file)
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
    header = {k: (None if k == "annotations" else v) for k, v in coco.raw.items()}  # keeps the key order
    atomic_write_json(folder / HEADER_FILE, header, indent=None)
    by_image: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for pos, ann in enumerate(coco.raw["annotations"]):
        by_image.setdefault(ann.get("image_id"), []).append((pos, ann))
    instances: dict[Any, list[Instance]] = {}
    for inst in coco.instances:
        instances.setdefault(inst.image_id, []).append(inst)
    image_ids = [img["id"] for img in coco.raw["images"] if img["id"] in by_image]
    images = {img["id"]: img for img in coco.raw["images"]}
    # crowd regions of an image the file does not list are never labelled: they pass through with the first shard
    orphans = [pa for image_id, anns in by_image.items() if image_id not in images for pa in anns]
    shards = []
    for index, start in enumerate(range(0, max(len(image_ids), 1 if orphans else 0), shard_size)):
        ids = image_ids[start:start + shard_size]
        insts = [i for image_id in ids for i in instances.get(image_id, [])]
        anns = [[pos, ann] for i in ids for pos, ann in by_image[i]] + ([list(pa) for pa in orphans] if index == 0
                                                                        else [])
        body = {"shard": index, "images": [images[i] for i in ids],
                "instances": [dataclasses.astuple(i) for i in insts], "annotations": anns}
        input_path, labels_path = shard_paths(folder, index)
        atomic_write_json(input_path, body, indent=None)
        shards.append(Shard(index, len(insts), input_path, labels_path))
    return shards


def read_shard(path: Path, base: CocoDataset) -> tuple[CocoDataset, dict[int, int]]:
    """A shard's boxes as a :class:`CocoDataset` (categories and folders from ``base``) and each annotation id's
    position in the input file."""
    with open(path) as fh:
        body = json.load(fh)
    anns = [ann for _pos, ann in body["annotations"]]
    raw = {"images": body["images"], "annotations": anns, "categories": base.categories}
    insts = [dataclasses.replace(i, bbox=tuple(i.bbox))  # JSON gives the box back as a list
             for i in (Instance(*fields) for fields in body["instances"])]
    coco = CocoDataset(base.ann_path, base.img_dir, raw, base.categories, insts, 0)
    return coco, {ann["id"]: pos for pos, ann in body["annotations"]}


def passthrough(coco: CocoDataset) -> list[dict[str, Any]]:
    """The shard's annotations that are copied unchanged (crowd regions)."""
    return [a for a in coco.raw["annotations"] if is_crowd(a)]


def write_labels(path: Path, key: str, index: int, records: list[tuple[int, dict[str, Any]]],
                 summary: dict[str, Any]) -> None:
    """Write a shard's labels file atomically: the header line, then ``records`` ((pos, annotation)) in input
    order."""
    records = sorted(records, key=lambda r: r[0])
    head = {"format": SHARD_FORMAT, "key": key, "shard": index, "num_records": len(records), **summary}

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(head) + "\n")
            for pos, ann in records:
                fh.write(json.dumps({"pos": pos, "ann": ann}, allow_nan=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def read_labels_header(path: Path, key: str) -> dict[str, Any] | None:
    """The header of a finished shard's labels file with this job's ``key``, or None (missing, another key or
    format, or fewer lines than it announces)."""
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with open(path) as fh:
            head = json.loads(fh.readline())
            count = sum(1 for _ in fh)
    except (OSError, ValueError):
        return None
    ok = isinstance(head, dict) and head.get("format") == SHARD_FORMAT and head.get("key") == key
    return head if ok and head.get("num_records") == count else None


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(pos, annotation) of a labels file, in its order."""
    with open(path) as fh:
        fh.readline()
        for line in fh:
            rec = json.loads(line)
            yield rec["pos"], rec["ann"]


def merged_records(paths: list[Path]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Every shard's (pos, annotation) in input order, streamed (one line of each file in memory)."""
    return heapq.merge(*(iter_records(p) for p in paths), key=lambda r: r[0])


def assemble(folder: Path, paths: list[Path], out_path: Path,
             transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> int:
    """Write the labelled COCO file ``out_path`` atomically: the header's keys in their order, with
    ``annotations`` streamed from the labels files in input order (each through ``transform`` when given);
    returns the number of annotations."""
    with open(folder / HEADER_FILE) as fh:
        header = json.load(fh)
    keys = list(header)
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "w") as fh:
            fh.write("{")
            for n, k in enumerate(keys):
                fh.write(("," if n else "") + json.dumps(k) + ":")
                if k != "annotations":
                    fh.write(json.dumps(header[k], allow_nan=False))
                    continue
                fh.write("[")
                for i, (_pos, ann) in enumerate(merged_records(paths)):
                    ann = transform(ann) if transform is not None else ann
                    fh.write(("," if i else "") + json.dumps(ann, allow_nan=False))
                    count += 1
                fh.write("]")
            fh.write("}\n")
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(out_path, write)
    return count
