"""Data sources: local paths and archives, and S3 through a moto server on 127.0.0.1 (no in-process mock)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mal_core.skill.datasources import DataSourceError, resolve_value, safe_extract
from mal_core.skill.runner import main
from mal_core.skill.testing import last_json_line


@pytest.fixture
def s3(s3_client: Any) -> Any:
    s3_client.create_bucket(Bucket="data")
    return s3_client


def _tar(files: dict[str, bytes], prefix: str = "images/") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _evil_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo({"dotdot": "../escape.txt", "abs": "/tmp/abs.txt"}.get(kind, "img/link"))
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "device":
            info.type = tarfile.CHRTYPE
        else:
            info.size = 1
        tar.addfile(info, io.BytesIO(b"x") if info.size else None)
    return buf.getvalue()


def test_s3_archive_and_file_with_cache(s3: object, tmp_path: Path) -> None:
    s3.put_object(Bucket="data", Key="train/images.tar.gz", Body=_tar({"a.png": b"1", "b.png": b"2"}))
    s3.put_object(Bucket="data", Key="train/annotations.json", Body=b'{"images": []}')
    cache = tmp_path / "cache"
    got = resolve_value("dataset.train_img_dir", "s3://data/train/images.tar.gz", cache)
    assert got.kind == "s3_archive" and not got.cached and got.etag
    assert sorted(p.name for p in Path(got.local_path).iterdir()) == ["a.png", "b.png"]
    again = resolve_value("dataset.train_img_dir", "s3://data/train/images.tar.gz", cache)
    assert again.cached and again.local_path == got.local_path
    ann = resolve_value("dataset.train_ann_path", "s3://data/train/annotations.json", cache)
    assert json.loads(Path(ann.local_path).read_text()) == {"images": []}
    # a new object version (new ETag) is a new cache entry
    s3.put_object(Bucket="data", Key="train/images.tar.gz", Body=_tar({"c.png": b"3"}))
    newer = resolve_value("dataset.train_img_dir", "s3://data/train/images.tar.gz", cache)
    assert newer.local_path != got.local_path and [p.name for p in Path(newer.local_path).iterdir()] == ["c.png"]


def test_s3_no_such_key(s3: object, tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="NoSuchKey") as err:
        resolve_value("dataset.val_ann_path", "s3://data/missing/annotations.json", tmp_path)
    assert err.value.field == "dataset.val_ann_path"


def test_s3_folder_prefix_downloads_every_object_with_cache(s3: object, tmp_path: Path) -> None:
    for name, body in {"imgs/a.png": b"1", "imgs/sub/b.png": b"2", "imgs2/other.png": b"x"}.items():
        s3.put_object(Bucket="data", Key=name, Body=body)
    cache = tmp_path / "cache"
    got = resolve_value("dataset.train_img_dir", "s3://data/imgs/", cache)
    root = Path(got.local_path)
    assert got.kind == "s3_folder" and not got.cached
    files = sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())
    assert files == ["a.png", "sub/b.png"]  # "imgs2/" shares the letters but is not under "imgs/"
    assert (root / "sub" / "b.png").read_bytes() == b"2"
    # without the trailing slash: no such object, but a folder -> the same listing, served from the cache
    again = resolve_value("dataset.train_img_dir", "s3://data/imgs", cache)
    assert again.kind == "s3_folder" and again.etag == got.etag
    plan = resolve_value("dataset.train_img_dir", "s3://data/imgs/", cache, dry_run=True)
    assert plan.kind == "s3_folder" and plan.etag == got.etag
    s3.put_object(Bucket="data", Key="imgs/c.png", Body=b"3")  # a changed folder is a new cache entry
    newer = resolve_value("dataset.train_img_dir", "s3://data/imgs/", cache)
    assert newer.local_path != got.local_path and (Path(newer.local_path) / "c.png").is_file()
    assert not (Path(got.local_path) / "c.png").exists()


def test_s3_folder_errors(s3: object, tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="no objects under") as err:
        resolve_value("inference.img_dir", "s3://data/empty/", tmp_path / "cache")
    assert err.value.field == "inference.img_dir"
    with pytest.raises(DataSourceError, match="NoSuchKey"):  # neither an object nor a folder
        resolve_value("inference.img_dir", "s3://data/nothing_here", tmp_path / "cache")
    s3.put_object(Bucket="data", Key="up/../escape.png", Body=b"1")
    with pytest.raises(DataSourceError, match="unsafe object name"):
        resolve_value("inference.img_dir", "s3://data/up/", tmp_path / "cache")
    assert not (tmp_path / "cache" / "escape.png").exists()
    assert not list((tmp_path / "cache").rglob("folder"))  # nothing half-downloaded looks complete


@pytest.mark.parametrize("kind", ["dotdot", "abs", "symlink", "device"])
def test_s3_malicious_tar_is_rejected(s3: object, tmp_path: Path, kind: str) -> None:
    s3.put_object(Bucket="data", Key=f"evil/{kind}.tar.gz", Body=_evil_tar(kind))
    with pytest.raises(DataSourceError) as err:
        resolve_value("dataset.train_img_dir", f"s3://data/evil/{kind}.tar.gz", tmp_path / "cache")
    assert err.value.field == "dataset.train_img_dir"
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/abs.txt").exists()


def test_local_archive_and_missing_path(tmp_path: Path) -> None:
    archive = tmp_path / "images.tar.gz"
    archive.write_bytes(_tar({"x.png": b"1"}, prefix=""))
    got = resolve_value("inference.img_dir", str(archive), tmp_path / "cache")
    assert got.kind == "local_archive" and (Path(got.local_path) / "x.png").is_file()
    with pytest.raises(DataSourceError, match="does not exist"):
        resolve_value("inference.img_dir", str(tmp_path / "nope"), tmp_path)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(DataSourceError, match="not a readable tar"):
        safe_extract(bad, tmp_path / "out")


def test_runner_s3_sources(s3: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s3.put_object(Bucket="data", Key="eval/images.tar.gz", Body=_tar({"a.png": b"1"}))
    jobs = tmp_path / "jobs"
    over = {"inference.img_dir": "s3://data/eval/images.tar.gz", "inference.ann_path": "s3://data/eval/annotations.json",
            "inference.checkpoint": str(tmp_path / "m.pth")}
    rc = main("inference", ["--jobs-root", str(jobs), "--dry-run", "--spec-overrides", json.dumps(over)])
    out = last_json_line(capsys.readouterr().out)
    assert rc == 2 and out["error"]["field"] == "inference.ann_path" and "NoSuchKey" in out["error"]["message"]
    s3.put_object(Bucket="data", Key="eval/annotations.json", Body=b"{}")
    rc = main("inference", ["--jobs-root", str(jobs), "--dry-run", "--spec-overrides", json.dumps(over)])
    out = last_json_line(capsys.readouterr().out)
    assert rc == 0 and {s["kind"] for s in out["plan"]["data_sources"]} == {"s3"}
