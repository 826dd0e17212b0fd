"""Delivery formats, each read back by the library its users load it with, and the reviewer's decisions.

Readers: pycocotools (RLE and polygons, COCOeval), Ultralytics' YOLO dataset loader (in the readers environment
``make test`` builds: Ultralytics needs torchvision's metadata, and the torchvision wheel on the registry is built
for CUDA torch, so it lives apart from the runtime), label-studio-sdk (brush RLE decoder and its COCO converter),
Datumaro (CVAT for images XML).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mal_core.config.experiment import ConvertConfig
from mal_core.data.coco import encode_rle
from mal_core.data.decisions import decisions_document
from mal_core.data.polygons import mask_to_polygons, mask_to_single_polygon
from mal_core.engine.convert import deliver
from mal_core.errors import DataError, SpecError

H, W = 60, 80
ROOT = Path(__file__).resolve().parents[1]
READERS_PYTHON = ROOT / ".venv-readers" / "bin" / "python"


def _masks() -> dict[str, np.ndarray]:
    """Masks with holes, several parts, 1-pixel parts, curved edges, a thin bar and an empty one."""
    out = {}
    m = np.zeros((H, W), bool)
    m[5:45, 5:60] = True
    m[15:30, 20:40] = False
    m[20:24, 28:31] = True  # an island inside the hole
    out["ring_with_island"] = m
    m = np.zeros((H, W), bool)
    m[10:20, 10:20] = True
    m[30:50, 50:70] = True
    m[55, 5] = True  # a 1-pixel part
    out["three_parts"] = m
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (40, 30), 17, 1, -1)
    cv2.circle(m, (40, 30), 6, 0, -1)
    out["disk_with_hole"] = m.astype(bool)
    m = np.zeros((H, W), bool)
    m[40:42, 5:75] = True
    m[3, 3] = True
    out["thin_bar_and_pixel"] = m
    out["empty"] = np.zeros((H, W), bool)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [10.0, 10.0, 20.0, 20.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


@pytest.fixture
def labelled(tmp_path: Path) -> dict[str, Any]:
    """A labelled COCO file (one image per mask, two classes) and its images."""
    img_dir = tmp_path / "images"
    (img_dir / "sub").mkdir(parents=True)
    images, anns, masks = [], [], {}
    for i, (name, mask) in enumerate(_masks().items(), 1):
        file_name = f"sub/{name}.png" if i == 1 else f"{name}.png"
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(img_dir / file_name)
        images.append({"id": i, "file_name": file_name, "height": H, "width": W})
        anns.append({"id": 100 + i, "image_id": i, "category_id": 1 + i % 2, "bbox": _bbox(mask), "iscrowd": 0,
                     "segmentation": encode_rle(mask), "area": float(np.prod(_bbox(mask)[2:])),  # a box area
                     "score": round(0.1 * i, 2), "quality": {"colour": 0.5}})
        masks[100 + i] = mask
    anns.append({"id": 999, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1,
                 "segmentation": encode_rle(np.ones((H, W), bool)), "area": H * W})
    doc = {"info": {"description": "test"}, "images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    path = tmp_path / "labelled.json"
    path.write_text(json.dumps(doc))
    return {"path": path, "img_dir": img_dir, "masks": masks, "doc": doc, "out": tmp_path / "out"}


def _deliver(labelled: dict[str, Any], **opts: Any) -> dict[str, Any]:
    return deliver(ConvertConfig(ann_path=str(labelled["path"]), **opts), labelled["path"], labelled["img_dir"],
                   labelled["out"])


def test_polygons_trace_pixel_edges_exactly() -> None:
    for name, mask in _masks().items():
        polys = mask_to_polygons(mask, tolerance=0.0)
        if not mask.any():
            assert polys == [] and mask_to_single_polygon(mask) == []
            continue
        back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W))).astype(bool)
        assert _iou(back, mask) == 1.0, name
        single = mask_to_single_polygon(mask, 0.0)
        back = mask_utils.decode(mask_utils.frPyObjects([single], H, W)[0]).astype(bool)
        assert _iou(back, mask) >= 0.99, name  # bridges between parts add at most a few pixels
    for tiny in ([(5, 5)], [(5, 5), (5, 6)]):  # 1 and 2 pixels: still a polygon (3 vertices) through centres
        mask = np.zeros((H, W), bool)
        for y, x in tiny:
            mask[y, x] = True
        poly = mask_to_single_polygon(mask, 0.5, centres=True)
        assert len(poly) >= 6
        filled = np.zeros((H, W), np.uint8)
        cv2.fillPoly(filled, [np.asarray(poly, np.float64).astype(np.int32).reshape(-1, 2)], 1)
        assert _iou(filled.astype(bool), mask) == 1.0
    polys = mask_to_polygons(_masks()["three_parts"], tolerance=0.5)
    assert len(polys) == 3 and polys[0][:2] == [50.0, 30.0]  # one per part, largest first, from a pixel corner


def test_coco_rle_and_polygons_read_back_by_pycocotools(labelled: dict[str, Any]) -> None:
    out = _deliver(labelled, formats=["coco_rle", "coco_polygon"])
    assert out["counts"]["crowd_left_out"] == 1 and out["counts"]["labels"] == 5
    assert out["formats"]["coco_polygon"]["empty_masks_left_out"] == 1
    for fmt, floor in (("coco_rle", 1.0), ("coco_polygon", 0.95)):
        coco = COCO(out["formats"][fmt]["file"])
        got = coco.loadAnns(coco.getAnnIds())
        assert len(got) == (5 if fmt == "coco_rle" else 4)
        for ann in got:
            truth = labelled["masks"][ann["id"]]
            assert _iou(coco.annToMask(ann).astype(bool), truth) >= floor, (fmt, ann["id"])
            assert ann["area"] == int(truth.sum())  # the mask's area, not the box's
            assert ann["score"] == next(a["score"] for a in labelled["doc"]["annotations"] if a["id"] == ann["id"])
        # COCOeval runs on the delivered masks (as detections against themselves: a perfect score; an empty mask
        # has IoU 0 with itself in pycocotools, so it is left out of this check)
        gt = COCO()
        gt.dataset = {**coco.dataset, "annotations": [a for a in got if a["area"] > 0]}
        gt.createIndex()
        dets = gt.loadRes([{**a, "score": 1.0} for a in got if a["area"] > 0])
        ev = COCOeval(gt, dets, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)
    coco = COCO(out["formats"]["coco_polygon"]["file"])  # polygons hold holes: the disk's hole stays empty
    disk = coco.annToMask(coco.loadAnns([103])[0])
    assert disk[30, 40] == 0 and disk[30, 26] == 1


def _ultralytics_masks(dataset_yaml: str) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Masks as Ultralytics' YOLO dataset loader reads them (its label cache + polygon2mask), per image stem."""
    if not READERS_PYTHON.is_file():
        pytest.fail(f"{READERS_PYTHON} is missing: `make test` builds the readers environment (Ultralytics)")
    script = ROOT / "tests" / "readers" / "ultralytics_masks.py"
    out = Path(dataset_yaml).parent / "ultralytics_masks.npz"
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(out.parent / ".ultralytics")}
    proc = subprocess.run([str(READERS_PYTHON), str(script), dataset_yaml, str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(out)
    result: dict[str, list[tuple[int, np.ndarray]]] = {}
    for key in sorted(data.files):
        stem, n, cls = key.rsplit("__", 2)
        result.setdefault(stem, []).append((int(cls), data[key]))
    return result


def test_yolo_seg_read_back_by_ultralytics(labelled: dict[str, Any]) -> None:
    out = _deliver(labelled, formats=["yolo_seg"])
    info = out["formats"]["yolo_seg"]
    assert info["annotations"] == 4 and info["left_out"] == 1  # the empty mask has no polygon
    folder = Path(info["folder"])
    assert (folder / "images" / "sub" / "ring_with_island.png").is_symlink()
    assert (folder / "labels" / "empty.txt").read_text() == ""
    read = _ultralytics_masks(info["file"])
    names = {i["id"]: Path(i["file_name"]).stem for i in labelled["doc"]["images"]}
    for ann in labelled["doc"]["annotations"]:
        truth = labelled["masks"].get(ann["id"])
        if truth is None or not truth.any():
            continue
        [(cls, mask)] = read[names[ann["image_id"]]]
        assert mask.shape == truth.shape
        assert cls == ann["category_id"] - 1
        got = mask.astype(bool)
        assert not (truth & ~got).any()  # no pixel of the mask is lost
        parts = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)[0] - 1
        # one instance = one polygon: holes cost nothing, but the bridges joining separate parts are drawn as
        # 1-pixel lines by Ultralytics' fillPoly (its own COCO converter joins parts the same way)
        assert _iou(got, truth) >= (0.95 if parts == 1 else 0.75), names[ann["image_id"]]


def test_label_studio_brush_and_polygons_read_back_by_its_sdk(labelled: dict[str, Any], tmp_path: Path) -> None:
    from label_studio_sdk.converter import Converter
    from label_studio_sdk.converter.brush import decode_rle

    out = _deliver(labelled, formats=["label_studio"], model_version="mal-test")
    tasks = json.loads(Path(out["formats"]["label_studio"]["file"]).read_text())
    assert len(tasks) == 5
    for task in tasks:
        for pred in task.get("predictions", []):
            assert pred["model_version"] == "mal-test"
            for res in pred["result"]:
                ann_id = int(res["id"][3:])
                mask = decode_rle(res["value"]["rle"]).reshape(H, W, 4)[..., 3] > 0
                assert _iou(mask, labelled["masks"][ann_id]) == 1.0
                assert res["from_name"] == "mask" and res["to_name"] == "image" and "score" in res

    # polygons: Label Studio's own converter turns an export of the accepted predictions into COCO
    labelled["out"] = tmp_path / "poly"
    out = _deliver(labelled, formats=["label_studio"], label_studio_masks="polygon")
    folder = Path(out["formats"]["label_studio"]["folder"])
    tasks = json.loads((folder / "tasks.json").read_text())
    export = [{"id": n, "data": t["data"], "annotations": [{"id": n, "result": t["predictions"][0]["result"]}]}
              for n, t in enumerate(tasks, 1) if t.get("predictions")]
    (tmp_path / "export.json").write_text(json.dumps(export))
    conv = Converter(config=str(folder / "label_config.xml"), project_dir=str(tmp_path))
    conv.convert_to_coco(str(tmp_path / "export.json"), str(tmp_path / "ls_coco"), is_dir=False)
    coco = COCO(str(tmp_path / "ls_coco" / "result.json"))
    by_name = {Path(labelled_img["file_name"]).name: labelled_img["id"] for labelled_img in labelled["doc"]["images"]}
    truth_by_image = {a["image_id"]: labelled["masks"][a["id"]] for a in labelled["doc"]["annotations"]
                      if a["id"] in labelled["masks"]}
    checked = 0
    for img in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        got = np.zeros((H, W), bool)
        for ann in anns:
            got |= coco.annToMask(ann).astype(bool)
        truth = truth_by_image[by_name[Path(img["file_name"]).name.split("?d=")[-1].split("/")[-1]]]
        assert _iou(got, truth) >= 0.95
        checked += 1
    assert checked == 4


def test_cvat_xml_read_back_by_datumaro(labelled: dict[str, Any]) -> None:
    import datumaro as dm

    out = _deliver(labelled, formats=["cvat"])
    info = out["formats"]["cvat"]
    assert info["shapes"] == 4 and info["empty_masks_left_out"] == 1
    (Path(info["folder"]) / "images").symlink_to(labelled["img_dir"])  # a CVAT task holds its images already
    dataset = dm.Dataset.import_from(info["file"], "cvat")
    cats = dataset.categories()[dm.AnnotationType.label]
    by_file = {Path(i["file_name"]).stem: i for i in labelled["doc"]["images"]}
    anns_by_image = {a["image_id"]: a for a in labelled["doc"]["annotations"] if a["id"] in labelled["masks"]}
    seen = 0
    for item in dataset:
        image = by_file[Path(item.id).name]
        ann = anns_by_image[image["id"]]
        masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
        if not labelled["masks"][ann["id"]].any():
            assert not masks
            continue
        [mask] = masks
        assert _iou(mask.image.astype(bool), labelled["masks"][ann["id"]]) == 1.0
        assert cats[mask.label].name == ("cat" if ann["category_id"] == 1 else "dog")
        assert float(mask.attributes["score"]) == pytest.approx(ann["score"])
        seen += 1
    assert seen == 4


def test_decisions_and_score_filters(labelled: dict[str, Any], tmp_path: Path) -> None:
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps(decisions_document("labelled.json", {101: "rejected", 102: "needs_fixing",
                                                                         103: "accepted", 4242: "accepted"})))
    out = _deliver(labelled, formats=["coco_rle", "label_studio", "cvat"], decisions_path=str(decisions),
                   class_min_scores=["dog=0.35"])
    c = out["counts"]
    # 101 rejected (and a dog scored 0.1); 102 needs fixing; 103 a dog (odd ids) scored 0.3 < 0.35
    assert (c["rejected"], c["needs_fixing"], c["below_score"], c["left_out"]) == (1, 1, 2, 2)
    assert c["decisions_unmatched"] == 1
    coco = json.loads(Path(out["formats"]["coco_rle"]["file"]).read_text())
    assert sorted(a["id"] for a in coco["annotations"]) == [104, 105]  # needs fixing goes to the review tool first
    tasks = json.loads(Path(out["formats"]["label_studio"]["file"]).read_text())
    assert tasks[0]["data"]["coco_image_id"] == 2  # the image with the needs-fixing label comes first
    assert tasks[0]["predictions"][0]["result"][0]["meta"]["text"] == ["needs fixing (review decision)"]
    labelled["out"] = tmp_path / "boxes"
    out = _deliver(labelled, formats=["coco_rle", "cvat"], decisions_path=str(decisions), rejected="box_only")
    coco = json.loads(Path(out["formats"]["coco_rle"]["file"]).read_text())
    boxes = {a["id"]: a for a in coco["annotations"] if a.get("box_only")}
    assert sorted(boxes) == [101] and boxes[101]["segmentation"] == [] and boxes[101]["area"] == 40 * 55
    assert "<box " in Path(out["formats"]["cvat"]["file"]).read_text()


def test_bad_inputs_name_the_cause(labelled: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad_decisions.json"
    bad.write_text(json.dumps({"kind": "mal-review-decisions", "version": 1, "decisions": [{"id": 101,
                                                                                          "decision": "maybe"}]}))
    with pytest.raises(DataError, match="annotation 101.*'maybe'") as err:
        _deliver(labelled, formats=["coco_rle"], decisions_path=str(bad))
    assert err.value.field == "convert.decisions_path"
    with pytest.raises(SpecError, match=r"\['horse'\].*not categories") as err:
        _deliver(labelled, formats=["coco_rle"], class_min_scores=["horse=0.5"])
    assert err.value.field == "convert.class_min_scores"
    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO file.*'annotations'"):
        deliver(ConvertConfig(), not_coco, None, tmp_path / "o")
    with pytest.raises(SpecError, match="yolo_seg needs the images") as err:
        deliver(ConvertConfig(formats=["yolo_seg"]), labelled["path"], None, tmp_path / "o2")
    assert err.value.field == "convert.img_dir"
