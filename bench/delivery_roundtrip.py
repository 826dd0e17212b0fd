"""Round trip of real masks through every delivery format and the library its users read it with.

Takes a COCO file with masks (default: coco128 val), writes its masks as a labelled file (RLE, score 1), delivers
every format with :func:`mal_core.engine.convert.deliver` and reads each back: pycocotools (``coco_rle``,
``coco_polygon``), Ultralytics' YOLO dataset loader + ``polygon2mask`` (``yolo_seg``, in the readers venv that
``make test`` builds), label-studio-sdk's brush decoder (``label_studio`` brush) and its COCO converter
(``label_studio`` polygons), Datumaro (``cvat``). Prints per format and reader: labels, mean / min IoU with the
original mask, the share at IoU 1 and >= 0.95, and the writing time per label.

    python bench/delivery_roundtrip.py [--ann .../coco128/val/annotations.json --img-dir .../coco128/val/images]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools.coco import COCO

from mal_core.config.experiment import ConvertConfig
from mal_core.data.coco import decode_segmentation, encode_rle
from mal_core.engine.convert import deliver

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128" / "val"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def labelled_copy(ann: Path, out: Path) -> tuple[Path, dict[int, np.ndarray], dict[str, Any]]:
    """The GT masks as a labelled file (RLE, score 1; crowd regions and empty masks left out)."""
    doc = json.loads(ann.read_text())
    images = {im["id"]: im for im in doc["images"]}
    masks, anns = {}, []
    for a in doc["annotations"]:
        if a.get("iscrowd", 0):
            continue
        im = images[a["image_id"]]
        mask = decode_segmentation(a["segmentation"], im["height"], im["width"])
        if not mask.any():
            continue
        masks[a["id"]] = mask
        anns.append({**a, "segmentation": encode_rle(mask), "area": int(mask.sum()), "score": 1.0})
    doc["annotations"] = anns
    path = out / "labelled.json"
    path.write_text(json.dumps(doc))
    return path, masks, doc


def read_coco(path: str) -> dict[int, np.ndarray]:
    """Masks by annotation id as pycocotools decodes them."""
    coco = COCO(path)
    return {a["id"]: coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds())}


def read_yolo(info: dict[str, Any], doc: dict[str, Any]) -> dict[int, np.ndarray]:
    """Masks by annotation id as Ultralytics' loader reads the dataset (lines in delivery order per image)."""
    python = ROOT / ".venv-readers" / "bin" / "python"
    out = Path(info["folder"]) / "masks.npz"
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(out.parent / ".ultralytics")}
    subprocess.run([str(python), str(ROOT / "tests" / "readers" / "ultralytics_masks.py"), info["file"], str(out)],
                   check=True, env=env, capture_output=True)
    data = np.load(out)
    stems = {im["id"]: Path(im["file_name"]).stem for im in doc["images"]}
    got = {}
    per_image: dict[Any, list[int]] = {}
    for a in doc["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a["id"])
    for image_id, ids in per_image.items():
        for n, ann_id in enumerate(ids):
            keys = [k for k in data.files if k.startswith(f"{stems[image_id]}__{n}__")]
            if keys:
                got[ann_id] = data[keys[0]].astype(bool)
    return got


def read_label_studio_brush(info: dict[str, Any], doc: dict[str, Any]) -> dict[int, np.ndarray]:
    """Masks by annotation id from label-studio-sdk's brush RLE decoder."""
    from label_studio_sdk.converter.brush import decode_rle

    sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
    got = {}
    for task in json.loads(Path(info["file"]).read_text()):
        h, w = sizes[task["data"]["coco_image_id"]]
        for res in task.get("predictions", [{}])[0].get("result", []):
            got[int(res["id"][3:])] = decode_rle(res["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0
    return got


def read_label_studio_polygons(info: dict[str, Any], doc: dict[str, Any], work: Path) -> dict[int, np.ndarray]:
    """Masks by annotation id: the tasks as Label Studio exports accepted predictions, through its COCO converter
    (one COCO annotation per polygon; a label's parts are OR-ed back together)."""
    from label_studio_sdk.converter import Converter

    tasks = json.loads(Path(info["file"]).read_text())
    export = [{"id": n, "data": t["data"], "annotations": [{"id": n, "result": t["predictions"][0]["result"]}]}
              for n, t in enumerate(tasks, 1) if t.get("predictions")]
    (work / "ls_export.json").write_text(json.dumps(export))
    Converter(config=info["config"], project_dir=str(work)).convert_to_coco(
        str(work / "ls_export.json"), str(work / "ls_coco"), is_dir=False)
    coco = COCO(str(work / "ls_coco" / "result.json"))
    # the converter numbers annotations itself: match each result back by task order and result order
    ids = [int(r["id"][3:].split("_")[0]) for t in export for r in t["annotations"][0]["result"]]
    got: dict[int, np.ndarray] = {}
    for ann_id, ann in zip(ids, coco.loadAnns(sorted(coco.getAnnIds())), strict=True):
        mask = coco.annToMask(ann).astype(bool)
        got[ann_id] = got[ann_id] | mask if ann_id in got else mask
    return got


def read_cvat(info: dict[str, Any], doc: dict[str, Any], img_dir: Path) -> dict[int, np.ndarray]:
    """Masks by annotation id as Datumaro imports the CVAT XML (shapes in delivery order per image)."""
    import datumaro as dm

    images = Path(info["folder"]) / "images"
    if not images.exists():
        images.symlink_to(img_dir.resolve())
    dataset = dm.Dataset.import_from(info["file"], "cvat")
    by_name = {str(Path(im["file_name"]).with_suffix("")): im["id"] for im in doc["images"]}
    per_image: dict[Any, list[int]] = {}
    for a in doc["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a["id"])
    got = {}
    for item in dataset:
        ids = per_image.get(by_name[item.id], [])
        masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
        for ann_id, mask in zip(ids, masks, strict=True):
            got[ann_id] = mask.image.astype(bool)
    return got


def main() -> None:
    """Run the round trip and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ann", type=Path, default=COCO128 / "annotations.json")
    ap.add_argument("--img-dir", type=Path, default=COCO128 / "images")
    ap.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path, truth, doc = labelled_copy(args.ann, work)
        parts = {i: cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[0] - 1 for i, m in truth.items()}
        rows = []
        runs = [("coco_rle", {}, "pycocotools", lambda i: read_coco(i["file"])),
                ("coco_polygon", {}, "pycocotools", lambda i: read_coco(i["file"])),
                ("yolo_seg", {}, "ultralytics", lambda i: read_yolo(i, doc)),
                ("label_studio", {}, "label-studio-sdk brush", lambda i: read_label_studio_brush(i, doc)),
                ("label_studio", {"label_studio_masks": "polygon"}, "label-studio-sdk converter",
                 lambda i: read_label_studio_polygons(i, doc, work)),
                ("cvat", {}, "datumaro", lambda i: read_cvat(i, doc, args.img_dir))]
        for n, (fmt, extra, reader, read) in enumerate(runs):
            t0 = time.time()
            info = deliver(ConvertConfig(formats=[fmt], **extra), path, args.img_dir, work / f"run{n}")["formats"][fmt]
            seconds = time.time() - t0
            got = read(info)
            ious = np.array([_iou(got[i], m) if i in got else 0.0 for i, m in truth.items()])
            multi = np.array([parts[i] > 1 for i in truth])
            rows.append({"format": fmt + (" (polygon)" if extra else ""), "reader": reader, "labels": len(ious),
                         "read_back": len(got), "mean_iou": float(ious.mean()), "min_iou": float(ious.min()),
                         "share_iou_1": float((ious >= 1.0 - 1e-9).mean()),
                         "share_iou_095": float((ious >= 0.95).mean()),
                         "mean_iou_one_part": float(ious[~multi].mean()), "mean_iou_several_parts":
                         float(ious[multi].mean()) if multi.any() else None,
                         "ms_per_label": 1000 * seconds / max(len(ious), 1)})
    print(f"{len(truth)} masks, {int(sum(p > 1 for p in parts.values()))} with several parts")
    head = (f"{'format':<24}{'reader':<28}{'labels':>7}{'mean IoU':>10}{'min IoU':>9}{'=1':>7}{'>=.95':>7}"
            f"{'1 part':>8}{'parts':>8}{'ms/label':>10}")
    print(head)
    for r in rows:
        print(f"{r['format']:<24}{r['reader']:<28}{r['labels']:>7}{r['mean_iou']:>10.4f}{r['min_iou']:>9.4f}"
              f"{r['share_iou_1']:>7.3f}{r['share_iou_095']:>7.3f}{r['mean_iou_one_part']:>8.4f}"
              f"{r['mean_iou_several_parts'] or float('nan'):>8.4f}{r['ms_per_label']:>10.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
