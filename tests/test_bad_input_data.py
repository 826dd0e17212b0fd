"""Bad-input matrix (issue 12, "nothing lost, nothing overwritten"): each case plants one defect in the spec, an
annotation file, an image, an archive, a checkpoint or an S3 source, runs the runner in-process and checks the exit
code (2), that the message names the planted cause (file, annotation id, field, key), that no traceback was printed,
and what is on disk afterwards (no checkpoint or output written, no cache entry left for a bad archive)."""

from __future__ import annotations

import functools
import gzip
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from mal_core.data.coco import load_coco
from mal_core.errors import DataError
from mal_core.skill import datasources
from mal_core.skill.datasources import DataSourceError, resolve_value, safe_extract
from mal_core.skill.runner import main
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, tiny_dataset

SIZE = 96
POLY = [[16, 16, 48, 16, 48, 48, 16, 48]]


# ----- helpers -------------------------------------------------------------------------------------------------------


def _coco(with_masks: bool = True) -> dict[str, Any]:
    anns = []
    for i, (x, y) in enumerate([(16, 16), (50, 50)], start=1):
        ann: dict[str, Any] = {"id": i, "image_id": 1, "category_id": 1, "bbox": [x, y, 32, 32], "area": 1024.0,
                               "iscrowd": 0}
        if with_masks:
            ann["segmentation"] = [[x, y, x + 32, y, x + 32, y + 32, x, y + 32]]
        anns.append(ann)
    return {"images": [{"id": 1, "file_name": "a.png", "height": SIZE, "width": SIZE}], "annotations": anns,
            "categories": [{"id": 1, "name": "shape"}]}


def _dataset(root: Path) -> dict[str, Path]:
    """A valid one-image train/val set: ``{train, val, img}``."""
    img = root / "images"
    img.mkdir(parents=True)
    Image.new("RGB", (SIZE, SIZE), (90, 120, 150)).save(img / "a.png")
    (root / "train.json").write_text(json.dumps(_coco(with_masks=False)))
    (root / "val.json").write_text(json.dumps(_coco()))
    return {"train": root / "train.json", "val": root / "val.json", "img": img}


def _train_overrides(data: dict[str, Path]) -> dict[str, Any]:
    return {**TINY_OVERRIDES, "train.num_epochs": 1, "dataset.train_ann_path": str(data["train"]),
            "dataset.train_img_dir": str(data["img"]), "dataset.val_ann_path": str(data["val"]),
            "dataset.val_img_dir": str(data["img"])}


def _run(capsys: pytest.CaptureFixture[str], action: str, argv: list[str]) -> tuple[int, dict[str, Any], str]:
    rc = main(action, argv)
    captured = capsys.readouterr()
    return rc, last_json_line(captured.out), captured.err


def _assert_refused(rc: int, out: dict[str, Any], err: str, *needles: str) -> str:
    """Exit 2, a failure record whose message holds every needle, no traceback; returns the message."""
    assert rc == 2, out
    assert out["status"] == "failure" and out["error"], out
    message = out["error"]["message"]
    for needle in needles:
        assert needle in message, (needle, message)
    assert "Traceback" not in err, err[-2000:]
    return message


def _assert_nothing_written(jobs: Path) -> None:
    """No checkpoint, metrics or labels anywhere under the jobs root; any job record says failure."""
    if not jobs.exists():
        return
    outputs = [p for p in jobs.rglob("*") if p.suffix == ".pth" or p.name in ("metrics.json", "labels.json")]
    assert not outputs, outputs
    for record in jobs.glob("*/job.json"):
        assert json.loads(record.read_text())["status"] == "failure"


def _tar(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _images(n: int = 4, size: int = 20000) -> dict[str, bytes]:
    gen = torch.Generator().manual_seed(0)
    return {f"images/{i}.png": bytes(torch.randint(0, 256, (size,), generator=gen, dtype=torch.uint8).tolist())
            for i in range(n)}


def _flipped(data: bytes) -> bytes:
    b = bytearray(data)
    mid = len(b) // 2
    for k in range(8):
        b[mid + k] ^= 0xFF
    return bytes(b)


def _bad_header() -> bytes:
    """A valid gzip of a tar whose third header is garbled (tarfile alone would stop there and call it the end)."""
    raw = bytearray(_tar(_images(), mode="w"))
    third = 2 * (512 + -(-20000 // 512) * 512)
    raw[third + 100:third + 108] = b"garbage!"
    return gzip.compress(bytes(raw))


def _cache_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


# ----- annotation files and images (train action, real run: the check runs before any training) ---------------------


def _set(key: str, value: Any) -> Callable[[dict[str, Any], Path], None]:
    def mutate(coco: dict[str, Any], _img: Path) -> None:
        section, *rest = key.split(".")
        if not rest:
            coco[section] = value
            return
        coco[section][int(rest[0])][rest[1]] = value
    return mutate


def _append_image(coco: dict[str, Any], _img: Path) -> None:
    coco["images"].append({"id": 1, "file_name": "b.png", "height": SIZE, "width": SIZE})


def _dotdot(coco: dict[str, Any], img: Path) -> None:
    Image.new("RGB", (SIZE, SIZE)).save(img.parent / "secret.png")  # exists, outside the image folder
    coco["images"][0]["file_name"] = "../secret.png"


def _all_crowd(coco: dict[str, Any], _img: Path) -> None:
    for ann in coco["annotations"]:
        ann["iscrowd"] = 1


def _dup_category(coco: dict[str, Any], _img: Path) -> None:
    coco["categories"].append({"id": 1, "name": "again"})


def _missing_image(coco: dict[str, Any], img: Path) -> None:
    (img / "a.png").unlink()


def _corrupt_image(_coco: dict[str, Any], img: Path) -> None:
    (img / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not image data")


def _wrong_size_image(_coco: dict[str, Any], img: Path) -> None:
    Image.new("RGB", (SIZE // 2, SIZE)).save(img / "a.png")


# (case id, which file, mutation, message fragments); "{file}" is replaced by the mutated file's path
ANNOTATION_CASES: list[tuple[str, str, Any, tuple[str, ...]]] = [
    ("empty_annotations", "train", _set("annotations", []), ("{file}", "has no annotations")),
    ("duplicate_image_id", "train", _append_image, ("duplicate image id 1 in {file}",)),
    ("absolute_file_name", "train", _set("images.0.file_name", "/etc/passwd"),
     ("{file}", "'/etc/passwd'", "outside the image folder")),
    ("dotdot_file_name", "train", _dotdot, ("{file}", "'../secret.png'", "outside the image folder")),
    ("duplicate_annotation_id", "train", _set("annotations.1.id", 1), ("{file}", "annotation id 1 appears twice")),
    ("unknown_image_id", "train", _set("annotations.0.image_id", 99), ("annotation id 1", "unknown image_id 99")),
    ("unknown_category", "train", _set("annotations.0.category_id", 42), ("annotation id 1", "unknown category_id 42")),
    ("zero_size_box", "train", _set("annotations.0.bbox", [1, 1, 0, 5]), ("annotation id 1", "zero or negative")),
    ("box_outside_image", "train", _set("annotations.0.bbox", [200, 1, 5, 5]),
     ("annotation id 1", "outside its 96x96")),
    ("bbox_not_numbers", "train", _set("annotations.0.bbox", ["1", 1, 5, 5]), ("annotation id 1", "bbox must be")),
    ("string_annotation_id", "train", _set("annotations.0.id", "one"), ("{file}", "integer id")),
    ("bad_image_height", "train", _set("images.0.height", 0), ("image id 1", "positive integers")),
    ("duplicate_category_id", "train", _dup_category, ("duplicate category id 1 in {file}",)),
    ("only_crowd_annotations", "train", _all_crowd, ("{file}", "crowd")),
    ("missing_image_file", "train", _missing_image, ("a.png", "missing")),
    ("corrupt_image_file", "train", _corrupt_image, ("a.png", "cannot read image")),
    ("image_size_differs", "train", _wrong_size_image, ("a.png", "48x96")),
    ("polygon_under_3_points", "val", _set("annotations.0.segmentation", [[1, 2, 3]]),
     ("{file}", "annotation id 1", "segmentation", "polygon 0 has 3 coordinates")),
    ("polygon_2_points", "val", _set("annotations.0.segmentation", [[1, 2, 3, 4]]),
     ("annotation id 1", "segmentation", "4 coordinates")),
    ("polygon_odd_length", "val", _set("annotations.0.segmentation", [[1, 2, 30, 2, 30, 30, 1]]),
     ("annotation id 1", "segmentation", "even number")),
    ("polygon_not_numbers", "val", _set("annotations.0.segmentation", [["a", "b", "c", "d", "e", "f"]]),
     ("annotation id 1", "segmentation", "list of numbers")),
    ("rle_garbage_counts", "val", _set("annotations.0.segmentation", {"size": [SIZE, SIZE], "counts": "zz!!~~"}),
     ("annotation id 1", "segmentation", "not a valid compressed RLE")),
    ("rle_size_differs", "val", _set("annotations.0.segmentation", {"size": [40, 40], "counts": [1600]}),
     ("annotation id 1", "segmentation", "[40, 40] differs", "[96, 96]")),
    ("rle_counts_wrong_total", "val", _set("annotations.0.segmentation", {"size": [SIZE, SIZE], "counts": [5, 5]}),
     ("annotation id 1", "segmentation", "cover 10 pixels")),
    ("rle_negative_counts", "val", _set("annotations.0.segmentation", {"size": [SIZE, SIZE], "counts": [9217, -1]}),
     ("annotation id 1", "segmentation", "non-negative")),
    ("rle_counts_wrong_type", "val", _set("annotations.0.segmentation", {"size": [SIZE, SIZE], "counts": 7}),
     ("annotation id 1", "segmentation", "RLE counts must be")),
    ("segmentation_is_text", "val", _set("annotations.0.segmentation", "mask"),
     ("annotation id 1", "segmentation", "list of polygons or an RLE")),
    ("no_segmentation_for_scoring", "val", _set("annotations.0.segmentation", []),
     ("annotation id 1", "load_mask")),
]

RAW_FILE_CASES = [
    ("malformed_json", '{"images": [}', ("not valid JSON", "line 1")),
    ("top_level_list", "[]", ("top level must be a JSON object",)),
    ("missing_images_key", json.dumps({"annotations": [], "categories": []}), ("missing or non-list 'images'",)),
]


@pytest.mark.parametrize(("case", "which", "mutate", "needles"), ANNOTATION_CASES, ids=[c[0] for c in ANNOTATION_CASES])
def test_bad_annotations_and_images(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, which: str,
                                    mutate: Callable[[dict[str, Any], Path], None], needles: tuple[str, ...]) -> None:
    data = _dataset(tmp_path / "data")
    coco = json.loads(data[which].read_text())
    mutate(coco, data["img"])
    data[which].write_text(json.dumps(coco))
    before = data[which].read_bytes()
    jobs = tmp_path / "jobs"
    rc, out, err = _run(capsys, "train", ["--jobs-root", str(jobs), "--automl-policy", "off",
                                          "--spec-overrides", json.dumps(_train_overrides(data))])
    _assert_refused(rc, out, err, *(n.replace("{file}", str(data[which])) for n in needles))
    _assert_nothing_written(jobs)
    assert data[which].read_bytes() == before  # inputs are never rewritten


@pytest.mark.parametrize(("case", "text", "needles"), RAW_FILE_CASES, ids=[c[0] for c in RAW_FILE_CASES])
def test_unreadable_annotation_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, text: str,
                                     needles: tuple[str, ...]) -> None:
    data = _dataset(tmp_path / "data")
    data["val"].write_text(text)
    jobs = tmp_path / "jobs"
    rc, out, err = _run(capsys, "train", ["--jobs-root", str(jobs), "--automl-policy", "off",
                                          "--spec-overrides", json.dumps(_train_overrides(data))])
    _assert_refused(rc, out, err, str(data["val"]), *needles)
    _assert_nothing_written(jobs)


def test_crowd_annotations_are_skipped_when_reading(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    coco = _coco()
    coco["annotations"].append({"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 96, 96], "iscrowd": 1,
                                "segmentation": {"size": [1, 1], "counts": "garbage"}})  # never read, so not checked
    data["val"].write_text(json.dumps(coco))
    got = load_coco(data["val"], data["img"], require_masks=True)
    assert [i.ann_id for i in got.instances] == [1, 2] and got.num_crowd == 1
    labels = {1: {"id": 1, "label": True}, 2: {"id": 2, "label": True}}
    assert got.labelled_annotations(labels) == [labels[1], labels[2], coco["annotations"][2]]
    with pytest.raises(DataError, match="polygon 0 has 3 coordinates"):  # the same defect on a scored one is refused
        coco["annotations"][0]["segmentation"] = [[1, 2, 3]]
        data["val"].write_text(json.dumps(coco))
        load_coco(data["val"], data["img"], require_masks=True)
    assert len(load_coco(data["val"], data["img"]).instances) == 2  # box-only reading ignores masks


# ----- specs (dry runs) ----------------------------------------------------------------------------------------------

SPEC_CASES = [
    ("alias_crop_size_in_file", {"model": {"crop_size": 64}, "dataset": {"crop_size": 128}}, [],
     ("model.crop_size=64", "dataset.crop_size=128")),
    ("alias_load_mask_in_file", {"model": {"load_mask": False}, "dataset": {"load_mask": True}}, [],
     ("model.load_mask=False", "dataset.load_mask=True")),
    ("alias_crop_size_in_overrides", {}, ["--set", "model.crop_size=64", "--set", "dataset.crop_size=128"],
     ("model.crop_size=64", "dataset.crop_size=128")),
    ("shorthand_flag_vs_key", {}, ["--epochs", "3", "--set", "train.num_epochs=5"],
     ("--epochs=3", "train.num_epochs=5")),
    ("shorthand_json_vs_key", {}, ["--spec-overrides", '{"lr": 1e-5, "train.lr": 2e-5}'],
     ("lr=1e-05", "train.lr=2e-05")),
    ("two_shorthands", {}, ["--crop_size", "64", "--set", "model.crop_size=128"],
     ("--crop_size=64", "model.crop_size=128")),
    ("unknown_key", {"train": {"num_epoch": 3}}, [], ("train.num_epoch", "did you mean 'train.num_epochs'")),
    ("wrong_type", {"train": {"batch_size": "many"}}, [], ("train.batch_size", "integer")),
    ("out_of_bounds", {"train": {"lr": 1.0}}, [], ("train.lr", "<= 0.001")),
    ("bad_option", {"model": {"arch": "vit-mae-giant/3"}}, [], ("model.arch", "must be one of")),
    ("bad_margin_rate", {"train": {"margin_rate": [1.0, 0.5]}}, [], ("train.margin_rate",)),
    ("section_not_mapping", {"train": 5}, [], ("train must be a mapping",)),
]


@pytest.mark.parametrize(("case", "spec", "argv", "needles"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, spec: dict[str, Any],
                   argv: list[str], needles: tuple[str, ...]) -> None:
    data = _dataset(tmp_path / "data")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    jobs = tmp_path / "jobs"
    rc, out, err = _run(capsys, "train", ["--jobs-root", str(jobs), "--automl-policy", "off", "--dry-run",
                                          "-e", str(spec_file), "--set", f"dataset.train_ann_path={data['train']}",
                                          "--set", f"dataset.train_img_dir={data['img']}", *argv])
    _assert_refused(rc, out, err, *needles)
    assert not jobs.exists()  # a dry run writes nothing


def test_same_value_under_two_names_is_no_conflict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _dataset(tmp_path / "data")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"model": {"crop_size": 64}, "dataset": {"crop_size": 64}}))
    rc, out, _ = _run(capsys, "train", ["--jobs-root", str(tmp_path / "jobs"), "--automl-policy", "off", "--dry-run",
                                        "-e", str(spec_file), "--set", f"dataset.train_ann_path={data['train']}",
                                        "--set", f"dataset.train_img_dir={data['img']}", "--lr", "1e-6",
                                        "--spec-overrides", '{"train.lr": 1e-6}', "--epochs", "4",
                                        "--set", "train.num_epochs=4"])
    assert rc == 0, out["error"]
    spec = out["plan"]["spec"]
    assert spec["dataset"]["crop_size"] == 64 and spec["train"]["lr"] == 1e-6 and spec["train"]["num_epochs"] == 4


# ----- archives ------------------------------------------------------------------------------------------------------

ARCHIVE_CASES = [
    ("flipped_bytes_mid_stream", lambda: _flipped(_tar(_images())), "corrupt or truncated"),
    ("truncated_gzip", lambda: _tar(_images())[: len(_tar(_images())) // 2], "corrupt or truncated"),
    ("truncated_tail", lambda: _tar(_images())[:-4], "corrupt or truncated"),
    ("garbled_header_mid_archive", _bad_header, "unreadable header"),
    ("not_an_archive", lambda: b"this is not a tar archive at all", "not a readable tar archive"),
]


@pytest.mark.parametrize(("case", "make", "needle"), ARCHIVE_CASES, ids=[c[0] for c in ARCHIVE_CASES])
def test_corrupt_local_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                               case: str, make: Callable[[], bytes], needle: str) -> None:
    data = _dataset(tmp_path / "data")
    archive = tmp_path / "images.tar.gz"
    archive.write_bytes(make())
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAL_CACHE_DIR", str(cache))
    over = {**_train_overrides(data), "dataset.train_img_dir": str(archive)}
    jobs = tmp_path / "jobs"
    for _attempt in range(2):  # a second run meets the same error, not a cache entry marked good
        rc, out, err = _run(capsys, "train", ["--jobs-root", str(jobs), "--automl-policy", "off",
                                              "--spec-overrides", json.dumps(over)])
        message = _assert_refused(rc, out, err, str(archive.resolve()), needle)
        assert out["error"]["field"] == "dataset.train_img_dir" and message.startswith("dataset.train_img_dir")
        assert _cache_files(cache) == [] and not list(cache.rglob(".extract-*"))
    _assert_nothing_written(jobs)


def test_corrupt_archive_keeps_a_good_earlier_extraction(tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    good.write_bytes(_tar(_images()))
    dest = tmp_path / "out"
    root = safe_extract(good, dest)
    names = sorted(p.name for p in root.iterdir())
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(_flipped(_tar(_images())))
    with pytest.raises(DataSourceError, match="corrupt or truncated"):
        safe_extract(bad, dest)
    assert sorted(p.name for p in root.iterdir()) == names  # not replaced by a partial extraction
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".extract-")] == []


@functools.lru_cache(maxsize=2)
def _bomb(total: int) -> bytes:
    """Two members of zeros, ``total`` bytes in all, gzip-compressed about 1000:1."""

    class Zeros(io.RawIOBase):
        def __init__(self, n: int) -> None:
            self.left = n

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for i in range(2):
            info = tarfile.TarInfo(f"images/zeros{i}.png")
            info.size = total // 2
            tar.addfile(info, io.BufferedReader(Zeros(info.size)))
    return buf.getvalue()


def test_archive_bomb_refused_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in datasources.ARCHIVE_LIMIT_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    archive = tmp_path / "images.tar.gz"
    archive.write_bytes(_bomb(200 << 20))  # 200 MiB of zeros in well under 1 MiB
    assert archive.stat().st_size < (1 << 20)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAL_CACHE_DIR", str(cache))
    data = _dataset(tmp_path / "data")
    jobs = tmp_path / "jobs"
    rc, out, err = _run(capsys, "train", ["--jobs-root", str(jobs), "--automl-policy", "off", "--spec-overrides",
                                          json.dumps({**_train_overrides(data), "dataset.val_img_dir": str(archive)})])
    _assert_refused(rc, out, err, "dataset.val_img_dir", str(archive.resolve()), "MAL_ARCHIVE_MAX_RATIO",
                    "archive bomb")
    assert _cache_files(cache) == []  # refused before the first member was written
    _assert_nothing_written(jobs)


LIMIT_CASES = [
    ("ratio", {"MAL_ARCHIVE_MAX_RATIO": "50"}, lambda: _bomb(4 << 20), "MAL_ARCHIVE_MAX_RATIO"),
    ("members", {"MAL_ARCHIVE_MAX_MEMBERS": "3"}, lambda: _tar(_images(n=4, size=10)), "MAL_ARCHIVE_MAX_MEMBERS"),
    ("total_bytes", {"MAL_ARCHIVE_MAX_BYTES": "50000"}, lambda: _tar(_images(n=4)), "MAL_ARCHIVE_MAX_BYTES"),
    ("bad_env_value", {"MAL_ARCHIVE_MAX_RATIO": "lots"}, lambda: _tar(_images(n=1)), "MAL_ARCHIVE_MAX_RATIO='lots'"),
]


@pytest.mark.parametrize(("case", "env", "make", "needle"), LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_archive_limits_are_enforced_while_extracting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str,
                                                      env: dict[str, str], make: Callable[[], bytes],
                                                      needle: str) -> None:
    monkeypatch.setattr(datasources, "RATIO_ALLOWANCE_BYTES", 1 << 20)  # small test archives count too
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    archive = tmp_path / "images.tar.gz"
    archive.write_bytes(make())
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match="refused|must be a positive number") as err:
        resolve_value("inference.img_dir", str(archive), cache)
    assert needle in err.value.message and err.value.field in ("inference.img_dir", next(iter(env)))
    assert _cache_files(cache) == []


def test_archive_limits_can_be_raised_and_real_images_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasources, "RATIO_ALLOWANCE_BYTES", 1 << 20)
    archive = tmp_path / "zeros.tar.gz"
    archive.write_bytes(_bomb(4 << 20))
    with pytest.raises(DataSourceError, match="MAL_ARCHIVE_MAX_RATIO"):
        resolve_value("inference.img_dir", str(archive), tmp_path / "cache")
    monkeypatch.setenv("MAL_ARCHIVE_MAX_RATIO", "100000")  # a trusted archive
    got = resolve_value("inference.img_dir", str(archive), tmp_path / "cache")
    assert sum(p.stat().st_size for p in Path(got.local_path).iterdir()) == 4 << 20
    monkeypatch.delenv("MAL_ARCHIVE_MAX_RATIO")
    photos = tmp_path / "photos.tar.gz"  # incompressible like JPEG/PNG data: ratio near 1:1, any size passes
    photos.write_bytes(_tar(_images(n=3, size=1 << 20)))
    got = resolve_value("inference.img_dir", str(photos), tmp_path / "cache")
    assert len(list(Path(got.local_path).iterdir())) == 3
    again = resolve_value("inference.img_dir", str(photos), tmp_path / "cache")
    assert again.cached and again.local_path == got.local_path


# ----- S3 sources (moto server) --------------------------------------------------------------------------------------


@pytest.fixture
def s3(s3_client: Any) -> Iterator[Any]:
    client = s3_client
    client.create_bucket(Bucket="bad")
    yield client
    for obj in client.list_objects_v2(Bucket="bad").get("Contents", []):
        client.delete_object(Bucket="bad", Key=obj["Key"])
    client.delete_bucket(Bucket="bad")


S3_CASES = [
    ("s3_flipped_bytes", lambda: _flipped(_tar(_images())), "corrupt or truncated"),
    ("s3_truncated", lambda: _tar(_images())[:-4], "corrupt or truncated"),
    ("s3_garbled_header", _bad_header, "unreadable header"),
    ("s3_bomb", lambda: _bomb(200 << 20), "MAL_ARCHIVE_MAX_RATIO"),
]


@pytest.mark.parametrize(("case", "make", "needle"), S3_CASES, ids=[c[0] for c in S3_CASES])
def test_s3_bad_archives(s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                         case: str, make: Callable[[], bytes], needle: str) -> None:
    s3.put_object(Bucket="bad", Key="train/images.tar.gz", Body=make())
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAL_CACHE_DIR", str(cache))
    data = _dataset(tmp_path / "data")
    over = {**_train_overrides(data), "dataset.train_img_dir": "s3://bad/train/images.tar.gz"}
    jobs = tmp_path / "jobs"
    rc, out, err = _run(capsys, "train", ["--jobs-root", str(jobs), "--automl-policy", "off",
                                          "--spec-overrides", json.dumps(over)])
    _assert_refused(rc, out, err, "dataset.train_img_dir", "s3://bad/train/images.tar.gz", needle)
    assert _cache_files(cache) == []  # neither the download nor a partial extraction stays in the cache
    _assert_nothing_written(jobs)


def test_s3_missing_annotation_object(s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _dataset(tmp_path / "data")
    over = {**_train_overrides(data), "dataset.val_ann_path": "s3://bad/val/annotations.json"}
    rc, out, err = _run(capsys, "train", ["--jobs-root", str(tmp_path / "jobs"), "--automl-policy", "off",
                                          "--dry-run", "--spec-overrides", json.dumps(over)])
    _assert_refused(rc, out, err, "dataset.val_ann_path", "s3://bad/val/annotations.json", "NoSuchKey")


# ----- checkpoints and crowd regions (one tiny trained model) --------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("trained")
    data = tiny_dataset(root / "data")
    jobs = root / "jobs"
    rc = main("train", ["--jobs-root", str(jobs), "--job-id", "t1", "--automl-policy", "off",
                        "--spec-overrides", json.dumps({**TINY_OVERRIDES, **data, "train.num_epochs": 1})])
    assert rc == 0
    ckpt = sorted((jobs / "t1").glob("model_epoch_*.pth"))[-1]
    return {"data": data, "checkpoint": ckpt, "root": root}


def _bad_checkpoint(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.pth"
    if kind == "missing":
        return path
    if kind == "not_mal":
        torch.save({"weight": torch.zeros(2)}, path)
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:4096])
    return path


CHECKPOINT_CASES = [
    ("missing", (), "does not exist"),
    ("not_mal", (), "is not a MAL checkpoint"),
    ("garbage", (), "is not a loadable"),
    ("truncated", (), "is not a loadable"),
    ("arch_conflict", ("--set", "model.arch=vit-mae-base/16"), "conflicts with the checkpoint"),
    ("crop_conflict", ("--set", "dataset.crop_size=128"), "conflicts with the checkpoint"),
]


@pytest.mark.parametrize(("kind", "extra", "needle"), CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoints(trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str,
                         extra: tuple[str, ...], needle: str) -> None:
    good = trained["checkpoint"]
    ckpt = good if kind.endswith("conflict") else _bad_checkpoint(kind, good, tmp_path)
    data = trained["data"]
    jobs = tmp_path / "jobs"
    rc, out, err = _run(capsys, "evaluate", [
        "--jobs-root", str(jobs), "--set", f"evaluate.checkpoint={ckpt}",
        "--set", f"dataset.val_ann_path={data['dataset.val_ann_path']}",
        "--set", f"dataset.val_img_dir={data['dataset.val_img_dir']}", *extra])
    _assert_refused(rc, out, err, needle)
    assert str(ckpt) in out["error"]["message"] or out["error"]["field"] in ("evaluate.checkpoint", str(ckpt))
    assert not list(jobs.rglob("metrics.json"))


def test_crowd_regions_not_scored_and_passed_through(trained: dict[str, Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data, ckpt = trained["data"], trained["checkpoint"]
    plain = json.loads(Path(data["dataset.val_ann_path"]).read_text())
    crowd = json.loads(json.dumps(plain))
    region = {"id": 999, "image_id": plain["images"][0]["id"], "category_id": plain["categories"][0]["id"],
              "bbox": [0, 0, 96, 96], "area": 9216, "iscrowd": 1, "segmentation": {"size": [96, 96], "counts": [9216]}}
    orphan = {**region, "id": 1000, "image_id": 424242}  # a crowd region of an image the file does not list
    crowd["annotations"] += [region, orphan]
    (tmp_path / "crowd.json").write_text(json.dumps(crowd))
    base = ["--jobs-root", str(tmp_path / "jobs"), "--set", f"dataset.val_img_dir={data['dataset.val_img_dir']}",
            "--set", f"evaluate.checkpoint={ckpt}"]
    rc, without, _ = _run(capsys, "evaluate", [*base, "--set", f"dataset.val_ann_path={data['dataset.val_ann_path']}"])
    assert rc == 0, without["error"]
    rc, with_crowd, _ = _run(capsys, "evaluate", [*base, "--set", f"dataset.val_ann_path={tmp_path / 'crowd.json'}"])
    assert rc == 0, with_crowd["error"]
    assert with_crowd["metrics"] == without["metrics"]  # a full-image crowd region would change every score
    rc, inf, _ = _run(capsys, "inference", [
        "--jobs-root", str(tmp_path / "jobs"), "--set", f"inference.checkpoint={ckpt}",
        "--set", f"inference.ann_path={tmp_path / 'crowd.json'}",
        "--set", f"inference.img_dir={data['dataset.val_img_dir']}", "--set", "inference.load_mask=true"])
    assert rc == 0, inf["error"]
    assert inf["artifacts"]["num_labelled"] == len(plain["annotations"])
    labelled = json.loads(Path(inf["artifacts"]["label_dump"]).read_text())["annotations"]
    assert [a["id"] for a in labelled] == [a["id"] for a in crowd["annotations"]]  # nothing lost, order kept
    assert labelled[-2:] == [region, orphan]  # copied unchanged, not labelled
    assert all("score" in a and isinstance(a["segmentation"]["counts"], str) for a in labelled[:-2])
