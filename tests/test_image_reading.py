"""Issue 18 §5: how images are read everywhere (training crops, labelling, overlays, review, pretraining): EXIF
orientation applied (boxes are drawn on the rotated view), 16-bit values scaled to 8 bits, decompression bombs
refused with a DataError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mal_core.data.coco import load_coco
from mal_core.data.datasets import BoxCropDataset, _ImageCache
from mal_core.data.images import read_rgb
from mal_core.data.pretrain_images import PretrainImages
from mal_core.engine.overlays import write_overlays
from mal_core.engine.review import write_review_page
from mal_core.errors import DataError

RAW_W, RAW_H = 60, 40  # stored pixels; EXIF orientation 6 shows them rotated: 40 wide, 60 high


def _exif_image(path: Path, orientation: int) -> np.ndarray:
    """A stored RAW_W x RAW_H image, left half red, right half blue, with the given EXIF orientation; returns the
    stored pixels."""
    arr = np.zeros((RAW_H, RAW_W, 3), np.uint8)
    arr[:, : RAW_W // 2] = (255, 0, 0)
    arr[:, RAW_W // 2:] = (0, 0, 255)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes())
    return arr


@pytest.mark.parametrize(("orientation", "expect"), [
    (6, lambda a: np.rot90(a, k=-1)),  # 90 degrees clockwise
    (8, lambda a: np.rot90(a, k=1)),  # 90 degrees counter-clockwise
    (3, lambda a: np.rot90(a, k=2)),  # upside down
    (2, lambda a: a[:, ::-1]),  # mirrored
    (1, lambda a: a),  # as stored
])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, expect) -> None:
    stored = _exif_image(tmp_path / "a.png", orientation)
    got = read_rgb(tmp_path / "a.png")
    assert np.array_equal(got, expect(stored))


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(16, 16)  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = read_rgb(tmp_path / "g16.png")
    assert got.dtype == np.uint8 and got.shape == (16, 16, 3)
    assert np.array_equal(got[:, :, 0], np.arange(256, dtype=np.uint8).reshape(16, 16))  # 257*v -> v exactly
    assert len(np.unique(got)) == 256  # not the 0/255 image PIL's convert("RGB") gives


def test_sixteen_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    import cv2

    rgb16 = np.zeros((8, 8, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1] = 65535, 32896  # 255 and 128 in 8 bits
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    assert tuple(read_rgb(tmp_path / "c16.png")[0, 0]) == (255, 128, 0)


@pytest.mark.parametrize("factor", [1.5, 3.0])  # over the limit (PIL warns) and over twice the limit (PIL raises)
def test_decompression_bomb_is_a_data_error_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            factor: float) -> None:
    path = tmp_path / "bomb.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(100 * 100 / factor))
    for read in (read_rgb, _ImageCache().get):
        with pytest.raises(DataError, match="decompression bomb") as err:
            read(str(path))
        assert str(path) in err.value.message and err.value.field == str(path)


def _rotated_coco(tmp_path: Path) -> Path:
    """A COCO file whose one image is stored 60x40 with EXIF orientation 6: its height/width are the rotated
    view's (40 wide, 60 high), as an annotation tool records them, and the box covers the top (red) half."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    _exif_image(img_dir / "rot.png", 6)
    coco = {"images": [{"id": 1, "file_name": "rot.png", "height": RAW_W, "width": RAW_H}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, RAW_H, RAW_W // 2],
                             "area": RAW_H * RAW_W / 2, "iscrowd": 0,
                             "segmentation": [[0, 0, RAW_H, 0, RAW_H, RAW_W // 2, 0, RAW_W // 2]], "score": 0.5}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "ann.json"


def test_rotated_image_is_read_the_same_way_by_training_labelling_overlays_review_and_pretraining(
        tmp_path: Path) -> None:
    ann = _rotated_coco(tmp_path)
    coco = load_coco(ann, tmp_path / "images")
    for train in (True, False):  # the dataset checks the decoded size against the COCO height/width
        ds = BoxCropDataset(coco, 32, train=train)
        item = ds[0]
        assert item["image"].shape[-2:] == (32, 32)
    crop = BoxCropDataset(coco, 32, train=False)[0]["image"]  # the box is the red half of the rotated view
    red, blue = float(crop[0].mean()), float(crop[2].mean())
    assert red > blue
    out = write_overlays(coco, coco.raw["annotations"], tmp_path / "overlays", limit=10)
    assert Image.open(out / "1-rot.png").size == (RAW_H, RAW_W)
    page = write_review_page(coco, coco.raw["annotations"], tmp_path / "review", limit=10)
    assert page.is_file() and (tmp_path / "review" / "thumbs" / "7.png").is_file()
    pre = PretrainImages([tmp_path / "images" / "rot.png"], 32)
    assert pre.read(0).shape == (RAW_W, RAW_H, 3)
