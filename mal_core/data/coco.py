"""COCO instances JSON: parsing with clear errors, box filtering, and ground-truth mask decoding.

One sample is one box annotation. Boxes are clipped to their image; a box with zero or negative size, or one lying
entirely outside its image, is an error naming the annotation. Category ids map to 1-based compact indices in the
order of the ``categories`` list. Crowd annotations (``iscrowd: 1``) are skipped, as COCO's evaluation does: never
trained on, labelled or scored (inference copies them to its output unchanged). Image ``file_name`` values must stay
inside the image folder, and ground-truth masks are checked when they are to be scored.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from mal_core.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Instance:
    """One box to crop: ids, its image, the clipped box (x, y, w, h), category and optional input score."""

    ann_id: int
    image_id: int
    file_name: str
    height: int
    width: int
    bbox: tuple[float, float, float, float]
    category_id: int
    category_index: int
    has_segmentation: bool
    score: float | None = None

    @property
    def box_area(self) -> float:
        """Box area w*h in pixels (size buckets and filters use this, not the mask area)."""
        return self.bbox[2] * self.bbox[3]

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """Box corners (x0, y0, x1, y1)."""
        x, y, w, h = self.bbox
        return x, y, x + w, y + h


@dataclass
class CocoDataset:
    """A parsed annotation file: the raw JSON (for writing labels back), categories and kept instances."""

    ann_path: Path
    img_dir: Path
    raw: dict[str, Any]
    categories: list[dict[str, Any]]
    instances: list[Instance]
    num_filtered: int
    num_crowd: int = 0

    @property
    def num_categories(self) -> int:
        """Number of categories in the file."""
        return len(self.categories)

    def annotation(self, ann_id: int) -> dict[str, Any]:
        """The raw annotation dict of ``ann_id``."""
        return self._ann_by_id[ann_id]

    def __post_init__(self) -> None:
        self._ann_by_id = {a["id"]: a for a in self.raw["annotations"]}

    def labelled_annotations(self, labels: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """The file's annotations in file order with each labelled one replaced by ``labels[id]``; crowd
        annotations are copied unchanged (never labelled), the others without a label are left out."""
        return [labels[a["id"]] if a["id"] in labels else a for a in self.raw["annotations"]
                if a["id"] in labels or is_crowd(a)]


def read_json(path: str | Path, what: str) -> Any:
    """Read a JSON file; errors name the file (and line/column for syntax errors)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {str(p)!r} does not exist", field=str(p))
    try:
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {str(p)!r} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                        field=str(p)) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {str(p)!r} is not UTF-8 text", field=str(p)) from exc
    except RecursionError as exc:
        raise DataError(f"{what} {str(p)!r} is nested too deeply to be a COCO file", field=str(p)) from exc
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DataError(f"{what} {str(p)!r} cannot be read: {exc}", field=str(p)) from exc


#: COCO ids are stored as signed 64-bit integers (numpy/torch int64, pycocotools).
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


def _number(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) < 2**1000  # finite as a float (a larger int overflows float())
    return isinstance(value, float) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return _number(value) and float(value).is_integer()


def _integral(value: Any) -> bool:
    """An integer of any size, or a float with an integer value."""
    return (isinstance(value, int) and not isinstance(value, bool)) or _integer(value)


def _id(value: Any) -> bool:
    """An integer id that fits in a signed 64-bit integer."""
    return _integral(value) and ID_MIN <= int(value) <= ID_MAX


def _id_error(where: str, what: str, index: int, value: Any, field: str) -> DataError:
    shown = f"{value!r:.60}" + ("..." if len(repr(value)) > 60 else "")
    if _integral(value):
        why = "does not fit in 64 bits (ids must lie in [-2**63, 2**63 - 1])"
    else:
        why = "is not an integer"
    return DataError(f"{where}: {what} #{index} has id {shown}, which {why}", field=field)


def is_crowd(ann: dict[str, Any]) -> bool:
    """Whether a COCO annotation is a crowd region (``iscrowd`` set), which COCO never scores."""
    return bool(ann.get("iscrowd"))


def _check_file_name(img: dict[str, Any], where: str) -> None:
    name = img["file_name"]
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: image id {img['id']!r} needs a non-empty file_name string, got {name!r}",
                        field=f"{where}:file_name")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts:
        raise DataError(f"{where}: image id {img['id']!r} has file_name {name!r}, which points outside the image "
                        "folder; file_name must be a path relative to the image folder, without '..'",
                        field=f"{where}:file_name")


def rle_string_counts(counts: str | bytes) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string, or None when the string is malformed.

    The format: each run length (after the second, as the difference to the run two before) is written in 5-bit
    groups, least significant first, one character per group (``chr(48 + group)``, 0x20 = another group follows,
    0x10 in the last group = negative).
    """
    text = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
    out: list[int] = []
    value = shift = 0
    for ch in text:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift
        if len(out) > 2:
            value += out[-2]
        out.append(value)
        value = shift = 0
    return out if shift == 0 else None


def _rle_problem(rle: dict[str, Any], height: int, width: int) -> str | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_integer(v) for v in size)):
        return f"RLE size must be [height, width], got {size!r}"
    if [int(size[0]), int(size[1])] != [height, width]:
        return f"RLE size {size} differs from its image's [height, width] [{height}, {width}]"
    if isinstance(counts, list):
        if not all(_integer(v) and v >= 0 for v in counts):
            return "RLE counts must be non-negative integers"
        runs = [int(v) for v in counts]
    elif isinstance(counts, (str, bytes)):
        runs = rle_string_counts(counts)
        if runs is None or any(v < 0 for v in runs):
            return "RLE counts is not a valid compressed RLE string"
    else:
        return f"RLE counts must be a list of run lengths or a compressed string, got {type(counts).__name__}"
    if sum(runs) != height * width:
        return f"RLE counts cover {sum(runs)} pixels but the {width}x{height} image has {height * width}"
    return None


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why ``segmentation`` is not a valid mask of a ``height`` x ``width`` image (polygons, RLE or uncompressed
    RLE), or None when it is."""
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, height, width)
    if not isinstance(segmentation, list) or not segmentation:
        return f"must be a list of polygons or an RLE object, got {segmentation!r:.80}"
    rle_parts = isinstance(segmentation[0], dict)
    for k, part in enumerate(segmentation):
        if rle_parts:
            why = _rle_problem(part, height, width) if isinstance(part, dict) else "mixes RLE objects and polygons"
        elif not isinstance(part, list) or not all(_number(v) for v in part):
            why = f"polygon {k} must be a list of numbers [x1, y1, x2, y2, ...], got {part!r:.80}"
        elif len(part) < 6 or len(part) % 2:
            why = (f"polygon {k} has {len(part)} coordinates; a polygon needs an even number of coordinates and at "
                   "least 3 points (6 numbers)")
        else:
            why = None
        if why:
            return why
    return None


def load_coco(ann_path: str | Path, img_dir: str | Path, *, min_area: float = 0.0, max_area: float = float("inf"),
              min_side: float = 0.0, require_masks: bool = False, check_masks: bool = False,
              check_images: bool = True) -> CocoDataset:
    """Parse and validate a COCO instances file and keep the boxes that pass the filters.

    Kept iff ``min_area < w*h < max_area`` and both sides ``> min_side`` after clipping to the image.
    ``require_masks`` demands a ``segmentation`` on every kept annotation; ``check_masks`` checks the ones given
    (training with masks: a bad one is a :class:`DataError` naming its annotation).
    """
    ann_path, img_dir = Path(ann_path), Path(img_dir)
    data = read_json(ann_path, "annotation file")
    where = str(ann_path)
    if not isinstance(data, dict):
        raise DataError(f"{where}: top level must be a JSON object with images/annotations/categories", field=where)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{where}: missing or non-list '{key}'", field=f"{where}:{key}")
    if not data["annotations"]:
        raise DataError(f"{where} has no annotations (its 'annotations' list is empty); give a COCO file with at "
                        "least one box", field=f"{where}:annotations")
    if not img_dir.is_dir():
        raise DataError(f"image folder {str(img_dir)!r} does not exist", field=str(img_dir))

    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not {"id", "file_name", "height", "width"} <= img.keys():
            raise DataError(f"{where}: every image needs id, file_name, height and width (got {img!r:.200})",
                            field=f"{where}:images")
        if not _integral(img["id"]):
            raise DataError(f"{where}: image id must be an integer, got {img['id']!r:.60}", field=f"{where}:images")
        if not _id(img["id"]):
            raise _id_error(where, "image", i, img["id"], f"{where}:images")
        if img["id"] in images:
            raise DataError(f"{where}: duplicate image id {img['id']} in {where}; image ids must be unique",
                            field=f"{where}:images")
        if not all(_integer(img[k]) and img[k] > 0 for k in ("height", "width")):
            raise DataError(f"{where}: image id {img['id']}: height and width must be positive integers, got "
                            f"{img['height']!r} x {img['width']!r}", field=f"{where}:images")
        _check_file_name(img, where)
        images[img["id"]] = img
    categories = data["categories"]
    cat_index: dict[int, int] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat or not _integral(cat["id"]):
            raise DataError(f"{where}: every category needs an integer id (got {cat!r:.200})",
                            field=f"{where}:categories")
        if not _id(cat["id"]):
            raise _id_error(where, "category", i, cat["id"], f"{where}:categories")
        if cat["id"] in cat_index:
            raise DataError(f"{where}: duplicate category id {cat['id']} in {where}; category ids must be unique",
                            field=f"{where}:categories")
        cat_index[cat["id"]] = i + 1

    kept: list[Instance] = []
    filtered = crowd = 0
    seen_ids: set[Any] = set()
    for n, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if not isinstance(ann, dict) or not _integral(ann_id):
            raise DataError(f"{where}: every annotation needs an integer id (annotation #{n}: {ann!r:.200})",
                            field=f"{where}:annotations")
        if not _id(ann_id):
            raise _id_error(where, "annotation", n, ann_id, f"{where}:annotations")
        label = f"{where}: annotation id {ann_id!r}"
        if ann_id in seen_ids:
            raise DataError(f"{label} appears twice; annotation ids must be unique", field=f"{where}:annotations")
        seen_ids.add(ann_id)
        if is_crowd(ann):
            crowd += 1
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            raise DataError(f"{label}: bbox must be [x, y, w, h] numbers, got {bbox!r}", field=f"{where}:bbox")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise DataError(f"{label}: box has zero or negative size (w={w}, h={h})", field=f"{where}:bbox")
        if ann.get("category_id") not in cat_index:
            raise DataError(f"{label}: unknown category_id {ann.get('category_id')!r} (known: {sorted(cat_index)})",
                            field=f"{where}:category_id")
        img = images.get(ann.get("image_id"))
        if img is None:
            raise DataError(f"{label}: unknown image_id {ann.get('image_id')!r}", field=f"{where}:image_id")
        H, W = int(img["height"]), int(img["width"])
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(W)), min(y + h, float(H))
        if x1 <= x0 or y1 <= y0:
            raise DataError(f"{label}: box {bbox} lies outside its {W}x{H} image", field=f"{where}:bbox")
        cw, ch = x1 - x0, y1 - y0
        if not (min_area < cw * ch < max_area and cw > min_side and ch > min_side):
            filtered += 1
            continue
        has_seg = bool(ann.get("segmentation"))
        if require_masks and not has_seg:
            raise DataError(f"{label} has no segmentation but masks are required for scoring; set "
                            "dataset.load_mask (or inference.load_mask) to false for box-only files",
                            field=f"{where}:segmentation")
        if require_masks or (check_masks and has_seg):
            why = segmentation_problem(ann["segmentation"], H, W)
            if why:
                raise DataError(f"{label}: segmentation {why}", field=f"{where}:segmentation")
        score = ann.get("score")
        kept.append(Instance(int(ann_id), int(img["id"]), str(img["file_name"]), H, W, (x0, y0, cw, ch),
                             int(ann["category_id"]), cat_index[ann["category_id"]], has_seg,
                             float(score) if _number(score) else None))
    if check_images:
        missing = sorted({i.file_name for i in kept if not (img_dir / i.file_name).is_file()})
        if missing:
            raise DataError(f"{len(missing)} image file(s) referenced by {where} are missing from {img_dir}: "
                            f"{missing[:5]}", field=str(img_dir / missing[0]))
    if filtered:
        log.info("%s: %d of %d boxes filtered out (size limits)", where, filtered, len(data["annotations"]))
    if crowd:
        log.info("%s: %d crowd annotation(s) (iscrowd) skipped: not trained on, labelled or scored", where, crowd)
    return CocoDataset(ann_path, img_dir, data, categories, kept, filtered, crowd)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Polygon list, uncompressed RLE (list counts) or compressed RLE -> (H, W) bool mask (parts are OR-ed)."""
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        if isinstance(segmentation[0], dict):
            rles = [mask_utils.frPyObjects(s, height, width) if isinstance(s["counts"], list) else s
                    for s in segmentation]
        else:
            polys = [p for p in segmentation if len(p) >= 6]
            if not polys:
                return np.zeros((height, width), dtype=bool)
            rles = mask_utils.frPyObjects(polys, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle["counts"], str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    else:
        raise DataError(f"unsupported segmentation {type(segmentation).__name__}", field="segmentation")
    m = mask_utils.decode(rle)
    if m.ndim == 3:
        m = m.any(axis=2)
    return m.astype(bool)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool mask -> compressed COCO RLE with ``counts`` as an ASCII string."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}
