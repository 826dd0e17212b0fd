"""Issue 18 §3 and §5 leftovers: a full disk partway through a run, hostile ONNX files, a folder where the review
page goes, S3 keys with ``.``/``..`` parts, data errors raised in DataLoader workers, and ONNX models exported with
a fixed batch size. Each is exit 2 naming the cause, no traceback, no temp file left, the user's files unchanged.

One tiny model is trained for the module (seconds); most other cases stop before a model runs.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mal_core.engine.shards as shards_mod
import mal_core.skill.runner as runner
import mal_core.utils.io as io_mod
from mal_core.engine.result import EngineResult
from mal_core.errors import DataError, MalError
from mal_core.skill.jobs import read_job
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, minimal_coco, tiny_dataset
from mal_core.utils.io import atomic_write_json, atomic_write_text
from mal_core.utils.safe_paths import OutputPathError
from tests.test_unattended_safety import _assert_exit2, _snapshot


def _run(capsys: pytest.CaptureFixture[str], action: str, argv: list[str]) -> tuple[int, dict[str, Any], str]:
    rc = runner.main(action, argv)
    captured = capsys.readouterr()
    return rc, last_json_line(captured.out), captured.err


def _leftovers(folder: Path) -> list[str]:
    """Temp and partial files under ``folder``."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".part")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny trained job ``t1`` and a labelling set of 4 images (a few boxes each)."""
    from mal_core.data.synthetic import generate_synthetic_dataset

    tmp = tmp_path_factory.mktemp("faults")
    data = tiny_dataset(tmp / "data")
    os.environ["MAL_PROGRESS_BAR"] = "0"
    rc = runner.main("train", ["--jobs-root", str(tmp / "jobs"), "--automl-policy", "off", "--job-id", "t1",
                               "--spec-overrides", json.dumps({**TINY_OVERRIDES, **data, "train.num_epochs": 1})])
    assert rc == 0
    label = generate_synthetic_dataset(tmp / "label", num_train_images=1, num_val_images=4, image_size=96, seed=3)
    return {"jobs": tmp / "jobs", "ann": str(label.val_ann_path), "img": str(label.val_img_dir), "tmp": tmp}


def _inference_argv(t: dict[str, Any], parent: str, job_id: str, *extra: str) -> list[str]:
    return ["--jobs-root", str(t["jobs"]), "--parent-job-id", parent, "--job-id", job_id,
            "--set", f"inference.ann_path={t['ann']}", "--set", f"inference.img_dir={t['img']}",
            "--set", "dataset.num_workers_per_gpu=0", *extra]


# ----- §3 disk full partway through inference ------------------------------------------------------------------


class _Disk:
    """A disk that fills up: from the first write to a file whose name matches ``trigger`` on, every write through
    the patched ``open`` of a module writes half its data and fails with ``err``."""

    def __init__(self, trigger: Callable[[str], bool], err: int = errno.ENOSPC) -> None:
        self.trigger, self.err, self.full = trigger, err, False
        self.failed: list[str] = []

    def patch(self, monkeypatch: pytest.MonkeyPatch, *modules: Any) -> None:
        for module in modules:
            monkeypatch.setattr(module, "open", self._open, raising=False)

    def _open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = builtins.open(file, mode, *args, **kwargs)
        return _FillingFile(fh, self, os.fspath(file)) if any(c in mode for c in "wax+") else fh


class _FillingFile:
    def __init__(self, fh: Any, disk: _Disk, path: str) -> None:
        self._fh, self._disk, self._path = fh, disk, path

    def write(self, data: str) -> int:
        disk = self._disk
        if disk.full or disk.trigger(os.path.basename(self._path)):
            disk.full = True
            disk.failed.append(self._path)
            self._fh.write(data[:len(data) // 2])
            raise OSError(disk.err, os.strerror(disk.err))
        return self._fh.write(data)

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


@pytest.mark.parametrize(("trigger", "err", "names"), [
    ("labels_00001", errno.ENOSPC, "shards/labels_00001.jsonl"),  # the second shard's labels file
    (".labels.json", errno.EDQUOT, "labels.json"),  # the assembled label file
    ("index.html", errno.ENOSPC, "review/index.html"),  # the review page, after the labels
])
def test_disk_full_partway_through_inference_is_exit_2_naming_the_file(
        trained: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, trigger: str,
        err: int, names: str) -> None:
    job_id = f"full-{trigger.strip('.')[:12]}"
    disk = _Disk(lambda name: name.startswith(f".{trigger}") or name.startswith(trigger) or f".{trigger}" in name,
                 err)
    disk.patch(monkeypatch, shards_mod, io_mod)
    inputs = _snapshot(Path(trained["ann"]).parent)
    rc, out, stderr = _run(capsys, "inference", _inference_argv(trained, "t1", job_id, "--set",
                                                                "inference.shard_size=1", "--set",
                                                                "inference.label_dump_path=labels.json"))
    job_dir = trained["jobs"] / job_id
    _assert_exit2(rc, out, stderr, str(job_dir / names), "no space left" if err == errno.ENOSPC else "quota")
    assert disk.failed and out["error"]["code"] == "disk_full"
    record = read_job(job_dir)  # the record says so too (rewritten in place: no room for a temp file)
    assert record is not None and record["status"] == "failure" and record["error"]["code"] == "disk_full"
    assert _leftovers(job_dir) == []
    assert _snapshot(Path(trained["ann"]).parent) == inputs


def _full_disk_engine(monkeypatch: pytest.MonkeyPatch, how: str) -> Callable[..., EngineResult]:
    def run(action: str, spec: Any, report: Any = None) -> EngineResult:
        out = Path(spec.tree["evaluate"].get("results_dir") or spec.tree["results_dir"])
        if how == "everything":  # not even job.json can be rewritten in place
            _Disk(lambda name: True).patch(monkeypatch, io_mod)

            def no_pwrite(*_a: Any) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(os, "pwrite", no_pwrite)
            atomic_write_json(out / "metrics.json", {"mIoU": 0.5})
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(out / "model_epoch_000.pth"))  # torch.save-like

    return run


@pytest.mark.parametrize("how", ["everything", "unnamed_write"])
def test_disk_full_failure_handler_cannot_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    from tests.test_job_isolation import _argv, _inputs

    d = _inputs(tmp_path / "in")
    monkeypatch.setattr(runner, "run_direct", _full_disk_engine(monkeypatch, how))
    rc, out, stderr = _run(capsys, "evaluate", _argv("evaluate", d, tmp_path / "jobs", "e1"))
    job_dir = tmp_path / "jobs" / "e1"
    needle = str(job_dir / ("metrics.json" if how == "everything" else "model_epoch_000.pth"))
    _assert_exit2(rc, out, stderr, needle)
    assert out["error"]["code"] == "disk_full" and _leftovers(job_dir) == []
    record = read_job(job_dir)
    assert record is not None
    if how == "everything":  # the record could not be written at all: the JSON line and exit code still tell
        assert record["status"] == "running" and "could not record the outcome" in stderr
    else:
        assert record["status"] == "failure" and record["error"]["code"] == "disk_full"


# ----- §5 a folder where the review page (or another output file) goes -----------------------------------------


def _review_engine(plant: str) -> Callable[..., EngineResult]:
    def run(action: str, spec: Any, report: Any = None) -> EngineResult:
        from mal_core.data.coco import load_coco
        from mal_core.engine.review import write_review_page

        out = Path(spec.tree["inference"].get("results_dir") or spec.tree["results_dir"])
        coco = load_coco(spec.tree["inference"]["ann_path"], spec.tree["inference"]["img_dir"])
        ann = {**coco.raw["annotations"][0], "score": 0.5, "quality": {}}
        blocked = out / "review" / ("index.html" if plant == "page" else f"thumbs/{ann['id']}.png")
        (blocked / "inside").mkdir(parents=True)
        write_review_page(coco, [ann], out / "review", limit=5)
        return EngineResult(str(out), {})

    return run


@pytest.mark.parametrize("plant", ["page", "thumbnail"])
def test_folder_where_the_review_page_goes_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, plant: str) -> None:
    from tests.test_job_isolation import _argv, _inputs

    d = _inputs(tmp_path / "in")
    monkeypatch.setattr(runner, "run_direct", _review_engine(plant))
    rc, out, stderr = _run(capsys, "inference", _argv("inference", d, tmp_path / "jobs", "i1"))
    review = tmp_path / "jobs" / "i1" / "review"
    blocked = review / "index.html" if plant == "page" else review / "thumbs" / "1.png"
    _assert_exit2(rc, out, stderr, str(blocked), "existing folder")
    assert (blocked / "inside").is_dir() and _leftovers(tmp_path / "jobs") == []


def test_atomic_write_onto_a_folder_names_it(tmp_path: Path) -> None:
    (tmp_path / "out.json").mkdir()
    with pytest.raises(OutputPathError, match="out.json"):
        atomic_write_text(tmp_path / "out.json", "{}")
    assert list((tmp_path / "out.json").iterdir()) == [] and _leftovers(tmp_path) == []


# ----- §5 S3 keys with '.' or '..' parts -------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["s3://data/ann/..", "s3://data/ann/../x.json", "s3://data/./ann.json",
                                 "s3://data/ann/../"])
def test_s3_key_with_dot_parts_is_exit_2_naming_it(s3_client: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str], uri: str) -> None:
    s3_client.create_bucket(Bucket="data")
    s3_client.put_object(Bucket="data", Key="ann/x.json", Body=b"{}")
    data = minimal_coco(tmp_path / "d")
    (tmp_path / "m.pth").write_bytes(b"never read: the data sources are refused first")
    jobs = tmp_path / "jobs"
    rc, out, stderr = _run(capsys, "inference", ["--jobs-root", str(jobs), "--job-id", "i1",
                                                 "--set", f"inference.ann_path={uri}",
                                                 "--set", f"inference.img_dir={data['img']}",
                                                 "--set", f"inference.checkpoint={tmp_path / 'm.pth'}"])
    _assert_exit2(rc, out, stderr, uri, "'..'" if ".." in uri else "'.'")
    assert out["error"]["field"] == "inference.ann_path"
    assert not jobs.exists() or _leftovers(jobs) == []


def test_s3_download_cut_short_leaves_no_part_file(s3_client: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import mal_core.skill.datasources as ds

    s3_client.create_bucket(Bucket="data")
    s3_client.put_object(Bucket="data", Key="ann/x.json", Body=b"{}")

    class Client:
        def download_file(self, bucket: str, key: str, dest: str) -> None:
            Path(dest).write_bytes(b"{")  # half an object, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dest)

    real = ds._s3_client
    monkeypatch.setattr(ds, "_s3_client", lambda: Client() if getattr(run, "downloading", False) else real())

    def run() -> None:
        etag = ds.s3_head("s3://data/ann/x.json", "inference.ann_path")
        run.downloading = True  # type: ignore[attr-defined]
        ds._fetch_s3("s3://data/ann/x.json", "inference.ann_path", tmp_path / "cache", etag)

    with pytest.raises(MalError, match="no space left") as err:
        run()
    assert err.value.code == "disk_full" and "x.json" in err.value.message
    assert _leftovers(tmp_path / "cache") == [] and not list((tmp_path / "cache").rglob("x.json"))


# ----- §5 data errors raised in DataLoader workers ---------------------------------------------------------------


class _BadDataset:
    def __init__(self, error: MalError) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        if i == 2:
            raise self.error
        return i


@pytest.mark.parametrize(("error", "field"), [
    (DataError("cannot read image '/data/img 7.png': truncated", field="/data/img 7.png"), "/data/img 7.png"),
    (DataError("annotation 5 of '/data/ann.json' has\na box outside its image", field="dataset.val_ann_path",
               hint="fix the box"), "dataset.val_ann_path"),
    (MalError("a plain error without a field"), None),
])
def test_data_error_in_a_dataloader_worker_keeps_its_message_and_field(error: MalError, field: str | None) -> None:
    from torch.utils.data import DataLoader

    loader = DataLoader(_BadDataset(error), batch_size=1, num_workers=1)
    with pytest.raises(type(error)) as caught:
        list(loader)
    got = caught.value
    assert got.message.startswith(error.message) and "DataLoader worker process 0" in got.message
    assert "Traceback" not in got.message and "File " not in got.message
    assert got.field == field and got.hint == error.hint


@pytest.mark.parametrize("route", ["loader_worker", "ray_worker"])
def test_unreadable_image_read_in_a_worker_is_exit_2_naming_it(trained: dict[str, Any],
                                                               capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path, route: str) -> None:
    import shutil

    images = tmp_path / "images"
    shutil.copytree(trained["img"], images)
    first = json.loads(Path(trained["ann"]).read_text())["images"][0]["file_name"]
    bad = images / first
    bad.write_bytes(bad.read_bytes()[:120])  # the header (size) reads, the pixels do not
    before = _snapshot(images)
    extra = ["--set", "inference.num_workers=1"] if route == "ray_worker" else []
    rc, out, stderr = _run(capsys, "inference", [
        *_inference_argv(trained, "t1", f"worker-err-{route}"), "--set", f"inference.img_dir={images}",
        "--set", "dataset.num_workers_per_gpu=1", "--set", "inference.batch_size=1", *extra])
    _assert_exit2(rc, out, stderr, str(bad), "DataLoader worker")
    assert out["error"]["field"] == str(bad) and "\n" not in out["error"]["message"]
    assert _snapshot(images) == before


# ----- §5 hostile ONNX files; a fixed export.batch_size ----------------------------------------------------------


@pytest.fixture(scope="module")
def fixed_export(trained: dict[str, Any]) -> Path:
    """``t1`` exported with ``export.batch_size=2`` (a fixed batch axis)."""
    rc = runner.main("export", ["--jobs-root", str(trained["jobs"]), "--parent-job-id", "t1", "--job-id", "x2",
                                "--set", "export.batch_size=2"])
    assert rc == 0
    return trained["jobs"] / "x2" / "model.onnx"


def test_fixed_batch_onnx_labels_any_number_of_boxes(trained: dict[str, Any], fixed_export: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_export import _masks, mean_mask_iou

    capsys.readouterr()
    rc, pt, _ = _run(capsys, "inference", _inference_argv(trained, "t1", "fb-pt"))
    assert rc == 0, pt["error"]
    for batch in ("3", "1"):  # 3: chunks of 2, the last padded; 1: every chunk padded
        rc, ox, stderr = _run(capsys, "inference", _inference_argv(trained, "x2", f"fb-onnx{batch}", "--set",
                                                                    f"inference.batch_size={batch}"))
        assert rc == 0, (ox["error"], stderr[-2000:])
        a, b = _masks(pt["artifacts"]["label_dump"]), _masks(ox["artifacts"]["label_dump"])
        assert len(a) >= 3 and set(a) == set(b)
        assert mean_mask_iou(a, b) >= 0.99


def _hostile(src: Path, dest: Path, how: str) -> Path:
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    meta = {m.key: m for m in model.metadata_props}
    spec = json.loads(meta["mal_spec"].value)
    if how == "spec_not_json":
        meta["mal_spec"].value = "{\"model\": {"
    elif how == "spec_a_list":
        meta["mal_spec"].value = "[1, 2]"
    elif how == "categories_an_object":
        meta["mal_categories"].value = "{\"id\": 1}"
    elif how == "category_id_text":
        meta["mal_categories"].value = "[{\"id\": \"one\"}]"
    elif how == "model_a_string":
        meta["mal_spec"].value = json.dumps({**spec, "model": "vit"})
    elif how == "crop_size":
        meta["mal_spec"].value = json.dumps({**spec, "dataset": {**spec["dataset"], "crop_size": 128}})
    elif how == "output_shape":
        model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 7
    elif how == "custom_op":
        for node in model.graph.node:
            for i, name in enumerate(node.output):
                if name == "student_logits":
                    node.output[i] = "student_raw"
        model.graph.node.append(helper.make_node("Evil", ["student_raw"], ["student_logits"], domain="com.evil"))
        model.opset_import.append(helper.make_opsetid("com.evil", 1))
    onnx.save(model, str(dest))
    return dest


@pytest.mark.parametrize(("how", "needle"), [
    ("spec_not_json", "mal_spec is not valid JSON"),
    ("spec_a_list", "mal_spec is a JSON list"),
    ("categories_an_object", "mal_categories is a JSON dict"),
    ("category_id_text", "integer 'id'"),
    ("model_a_string", "not a usable training spec"),
    ("crop_size", "crops has shape"),
    ("output_shape", "student_logits has shape"),
    ("custom_op", "com.evil"),
])
def test_hostile_onnx_file_is_exit_2_naming_it(trained: dict[str, Any], fixed_export: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], how: str, needle: str) -> None:
    path = _hostile(fixed_export, tmp_path / f"{how}.onnx", how)
    before = path.read_bytes()
    rc, out, stderr = _run(capsys, "inference", [
        "--jobs-root", str(tmp_path / "jobs"), "--job-id", "i1", "--set", f"inference.ann_path={trained['ann']}",
        "--set", f"inference.img_dir={trained['img']}", "--set", f"inference.checkpoint={path}"])
    _assert_exit2(rc, out, stderr, str(path), needle)
    assert out["error"]["field"] == "inference.checkpoint" and path.read_bytes() == before
