"""Issue 18, "safe to run unattended": never delete or overwrite what the user owns, damaged records and planted
inputs refused with exit 2 naming the cause, and the user's files byte-identical afterwards.

Everything here stops before a model runs (or uses the fake engine of ``test_job_isolation``), so the file runs in
seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mal_core.cli import main as cli_main
from mal_core.skill.evals import EVALS_FILE, SKILL_ROOT, load_evals

# ----- helpers -----------------------------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file bytes, ``link -> target`` for links, ``dir`` for folders."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "dir"
    return out


def _user_project(root: Path) -> Path:
    """A folder that looks like somebody's project: the names the demo writes, holding the user's files."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("train", "eval", "inference", "heldout_eval", "data"):
        (root / sub).mkdir()
        (root / sub / "mine.txt").write_text(f"user file in {sub}\n")
    (root / "notes.md").write_text("# my notes\n")
    return root


# ----- 1a. mal demo --out ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["project_folder", "cwd_empty_out", "cwd_dot", "file", "link_entry",
                                     "bad_set_in_marked"])
def test_demo_refuses_folders_it_does_not_own(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    project = _user_project(tmp_path / "project")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("outside")
    extra: list[str] = []
    if variant == "project_folder":
        out, needle = str(project), "not made by `mal demo`"
    elif variant == "cwd_empty_out":
        monkeypatch.chdir(project)
        out, needle = "", "--out ''"
    elif variant == "cwd_dot":
        monkeypatch.chdir(project)
        out, needle = ".", "not made by `mal demo`"
    elif variant == "file":
        out, needle = str(project / "notes.md"), "existing file"
    elif variant == "link_entry":  # a marked demo folder whose train/ is a link to the user's folder
        demo = tmp_path / "demo"
        demo.mkdir()
        (demo / ".mal_demo_output").write_text("x")
        os.symlink(project / "train", demo / "train")
        out, needle = str(demo), "symbolic link"
    else:  # a marked demo folder, but a bad --set: refused before anything is deleted
        demo = tmp_path / "demo"
        (demo / "train").mkdir(parents=True)
        (demo / ".mal_demo_output").write_text("x")
        (demo / "train" / "model.pth").write_bytes(b"earlier demo")
        out, needle, extra = str(demo), "no_such_key", ["--set", "train.no_such_key=1"]
    before = _snapshot(tmp_path)
    rc = cli_main(["demo", "--out", out, *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err and "Traceback" not in err, err
    assert _snapshot(tmp_path) == before


def test_demo_claims_new_empty_or_marked_folders(tmp_path: Path) -> None:
    from mal_core.demo import DEMO_MARKER, claim_output_folder

    new = claim_output_folder(tmp_path / "new" / "out")
    assert (new / DEMO_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (claim_output_folder(empty) / DEMO_MARKER).is_file()
    (new / "train").mkdir()
    assert claim_output_folder(new) == new  # marked by the first claim: reusable


# ----- 1b. mal evals --file ----------------------------------------------------------------------------------------


def _evals_doc() -> dict[str, Any]:
    doc = load_evals(SKILL_ROOT / EVALS_FILE)
    first = next(c for c in doc["cases"] if c["action"] == "train")
    return {"fixtures": {"data": ["train"], "jobs": {}}, "cases": [first]}


@pytest.mark.parametrize(("plant", "where"), [
    ("data_abs", "fixtures.data[0]"),
    ("data_dotdot", "fixtures.data[0]"),
    ("job_id_abs", "fixtures.jobs."),
    ("checkpoint_abs", "fixtures.jobs.t1.checkpoints[0]"),
    ("files_dotdot", "fixtures.jobs.t1.files[0]"),
    ("folders_abs", "fixtures.jobs.t1.folders[0]"),
    ("trial_id_dotdot", "fixtures.jobs.t1.best_trial.trial_id"),
    ("drop_abs", "cases[0].skill_root.drop[0]"),
    ("drop_dotdot", "cases[0].skill_root.drop[0]"),
    ("case_id_dotdot", "cases[0].id"),
])
def test_evals_file_cannot_name_paths_outside_its_temp_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              plant: str, where: str) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    (victim / "model.pth").write_bytes(b"real weights")
    doc = _evals_doc()
    jobs: dict[str, Any] = {"t1": {"action": "train"}}
    if plant == "data_abs":
        doc["fixtures"]["data"] = [str(victim)]
    elif plant == "data_dotdot":
        doc["fixtures"]["data"] = ["../../../../" + str(victim)]
    elif plant == "job_id_abs":
        jobs = {str(victim): {"action": "train"}}
    elif plant == "checkpoint_abs":
        jobs["t1"]["checkpoints"] = [str(victim / "model.pth")]
    elif plant == "files_dotdot":
        jobs["t1"]["files"] = ["../../../victim/precious.txt"]
    elif plant == "folders_abs":
        jobs["t1"]["folders"] = [str(victim)]
    elif plant == "trial_id_dotdot":
        jobs["t1"]["best_trial"] = {"trial_id": "../../..", "checkpoints": ["x.pth"]}
    elif plant in ("drop_abs", "drop_dotdot"):
        rel = str(victim / "precious.txt") if plant == "drop_abs" else "../../../../victim/precious.txt"
        doc["cases"][0]["skill_root"] = {"drop": [rel]}
    else:
        doc["cases"][0]["id"] = "../../victim"
    doc["fixtures"]["jobs"] = jobs
    path = tmp_path / "evals.json"
    path.write_text(json.dumps(doc))
    before = _snapshot(tmp_path)
    rc = cli_main(["evals", "--file", str(path)])
    captured = capsys.readouterr()
    assert rc == 2, captured.out
    assert where in captured.err and str(path) in captured.err, captured.err
    assert "passed" not in captured.out and "Traceback" not in captured.err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("doc", "needle"), [
    ("[1, 2]", "'cases'"),
    ('{"cases": [{"id": "a", "request": "r", "action": "train", "args": [], "expect": []}]}', "cases[0].expect"),
    ('{"cases": [{"id": "a", "request": "r", "action": "train", "args": [], "expect": {"exit": "0"}}]}',
     "cases[0].expect.exit"),
    ('{"cases": [{"id": "a", "request": "r", "action": "train", "args": [], "expect": {"exit": 0, "spec": 3}}]}',
     "cases[0].expect.spec"),
    ('{"fixtures": [], "cases": [{"id": "a", "request": "r", "action": "train", "args": [], "expect": {"exit": 0}}]}',
     "fixtures"),
    ('{"fixtures": {"jobs": {"j": {"checkpoints": "x.pth"}}}, "cases": [{"id": "a", "request": "r", '
     '"action": "train", "args": [], "expect": {"exit": 0}}]}', "fixtures.jobs.j.checkpoints"),
    ('{"cases": [{"id": "a", "request": "r", "action": "train", "args": [], "expect": {"exit": 0}, '
     '"skill_root": {"drop": "schemas"}}]}', "cases[0].skill_root.drop"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
])
def test_malformed_evals_file_is_exit_2_naming_the_cause(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         doc: str, needle: str) -> None:
    path = tmp_path / "evals.json"
    path.write_text(doc)
    rc = cli_main(["evals", "--file", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err, err


# ----- 1c. a folder that is not a job is never adopted; 3. a damaged job.json is refused before anything moves --


def _job_run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, action: str,
             job_id: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    """One in-process run of ``action`` with the fake engine of test_job_isolation (no model, milliseconds)."""
    import mal_core.skill.runner as runner
    from mal_core.skill.testing import last_json_line
    from tests.test_job_isolation import _argv, _inputs, fake_engine

    monkeypatch.setattr(runner, "run_direct", fake_engine())
    d = _inputs(tmp_path / "in") if not (tmp_path / "in").exists() else {
        "ann": str(tmp_path / "in" / "inputs" / "ann.json"), "img": str(tmp_path / "in" / "inputs" / "images"),
        "ckpt": str(tmp_path / "in" / "inputs" / "model.pth")}
    rc = runner.main(action, _argv(action, d, tmp_path / "jobs", job_id, *extra))
    captured = capsys.readouterr()
    return rc, last_json_line(captured.out), captured.err


def _assert_exit2(rc: int, out: dict[str, Any], err: str, *needles: str) -> None:
    assert rc == 2, out
    assert out["status"] == "failure" and out["error"], out
    for needle in needles:
        assert needle in out["error"]["message"], (needle, out["error"])
    assert "Traceback" not in err, err[-2000:]


@pytest.mark.parametrize("action", ["train", "evaluate", "inference"])
@pytest.mark.parametrize("content", ["user_files", "user_subfolder", "record_deleted"])
def test_existing_folder_without_job_record_is_not_adopted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch, action: str,
                                                           content: str) -> None:
    folder = tmp_path / "jobs" / "mine"
    folder.mkdir(parents=True)
    if content == "user_files":
        (folder / "thesis.tex").write_text("\\section{x}")
        (folder / "metrics.json").write_text('{"mine": 1}')
    elif content == "user_subfolder":
        (folder / "photos").mkdir()
        (folder / "photos" / "a.png").write_bytes(b"\x89PNG fake")
    else:  # an earlier attempt's outputs whose job.json was deleted
        rc, _out, _err = _job_run(capsys, monkeypatch, tmp_path, action, "mine")
        assert rc == 0
        (folder / "job.json").unlink()
    before = _snapshot(tmp_path / "jobs")
    rc, out, err = _job_run(capsys, monkeypatch, tmp_path, action, "mine")
    _assert_exit2(rc, out, err, str(folder), "no job.json")
    assert out["error"]["field"] == "job_id"
    assert _snapshot(tmp_path / "jobs") == before


def test_empty_folder_or_one_with_only_a_stale_lock_is_a_fresh_job(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jobs" / "empty").mkdir(parents=True)
    rc, out, _ = _job_run(capsys, monkeypatch, tmp_path, "evaluate", "empty")
    assert rc == 0 and out["status"] == "success"
    (tmp_path / "jobs" / "killed" / "logs").mkdir(parents=True)  # killed between the lock and job.json
    (tmp_path / "jobs" / "killed" / "job.lock").write_text("")
    rc, out, _ = _job_run(capsys, monkeypatch, tmp_path, "evaluate", "killed")
    assert rc == 0 and out["status"] == "success"


@pytest.mark.parametrize(("record", "needle"), [
    ("", "it is empty"),
    ("[]", "expected a JSON object, got list"),
    ("{\"action\": \"evaluate\", \"status\": \"succ", "not valid JSON"),
    ({"status": "success"}, "no 'action'"),
    ({"action": "evaluate", "attempts": "2"}, "'attempts' is str"),
    ({"action": "evaluate", "previous_attempts": {}}, "'previous_attempts' is dict"),
    ({"action": "evaluate", "artifacts": []}, "'artifacts' is list"),
    ({"action": "evaluate", "status": 1}, "'status' is int"),
    ({"action": "evaluate", "attempts": 0}, "'attempts' is 0"),
    ("folder", "link or a folder"),
])
def test_damaged_job_record_is_exit_2_before_anything_moves(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch, record: Any,
                                                            needle: str) -> None:
    rc, _out, _err = _job_run(capsys, monkeypatch, tmp_path, "evaluate", "e1")
    assert rc == 0
    path = tmp_path / "jobs" / "e1" / "job.json"
    if record == "folder":
        path.unlink()
        path.mkdir()
        (path / "x").write_text("x")
    else:
        path.write_text(record if isinstance(record, str) else json.dumps(record))
    before = _snapshot(tmp_path / "jobs")
    rc, out, err = _job_run(capsys, monkeypatch, tmp_path, "evaluate", "e1")
    _assert_exit2(rc, out, err, str(path), "damaged", needle)
    assert _snapshot(tmp_path / "jobs") == before  # nothing moved to previous_attempts, no lock left


@pytest.mark.parametrize("plant", ["link_to_user_file", "dangling_link", "folder"])
def test_job_lock_that_is_a_link_or_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, plant: str) -> None:
    rc, _out, _err = _job_run(capsys, monkeypatch, tmp_path, "evaluate", "e1")
    assert rc == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    lock = tmp_path / "jobs" / "e1" / "job.lock"
    if plant == "link_to_user_file":
        os.symlink(victim, lock)
    elif plant == "dangling_link":
        os.symlink(tmp_path / "nowhere.txt", lock)
    else:
        lock.mkdir()
    before = _snapshot(tmp_path)
    rc, out, err = _job_run(capsys, monkeypatch, tmp_path, "evaluate", "e1")
    _assert_exit2(rc, out, err, str(lock), "not a link or a folder")
    assert _snapshot(tmp_path) == before and not (tmp_path / "nowhere.txt").exists()


# ----- 1d. output paths disjoint from the archive and from what labelling writes later -------------------------------


@pytest.mark.parametrize(("action", "key", "value", "needle"), [
    ("evaluate", "evaluate.results_dir", "previous_attempts/1", "job's own 'previous_attempts'"),
    ("evaluate", "evaluate.results_dir", "previous_attempts", "job's own 'previous_attempts'"),
    ("inference", "inference.results_dir", "logs/x", "job's own 'logs'"),
    ("evaluate", "results_dir", "previous_attempts/1/sub", "job's own 'previous_attempts'"),
    ("inference", "inference.label_dump_path", "review/labels.json", "review folder"),
    ("inference", "inference.label_dump_path", "review/thumbs/1.png", "review folder"),
    ("inference", "inference.label_dump_path", "overlays/img0.png", "overlays folder"),
])
def test_outputs_never_land_in_the_archive_or_labelling_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch, action: str,
                                                                key: str, value: str, needle: str) -> None:
    rc, _out, _err = _job_run(capsys, monkeypatch, tmp_path, action, "j1")
    assert rc == 0
    rc, _out, _err = _job_run(capsys, monkeypatch, tmp_path, action, "j1")  # makes previous_attempts/1
    assert rc == 0 and (tmp_path / "jobs" / "j1" / "previous_attempts" / "1").is_dir()
    before = _snapshot(tmp_path / "jobs")
    rc, out, err = _job_run(capsys, monkeypatch, tmp_path, action, "j1", "--set", f"{key}={value}")
    _assert_exit2(rc, out, err, value, needle)
    assert out["error"]["field"] == key
    assert _snapshot(tmp_path / "jobs") == before


# ----- 3. a partial last history line (kill mid-write) is tolerated on resume ---------------------------------------


@pytest.mark.parametrize(("name", "text"), [
    ("validation_history.jsonl", '{"epoch": 0, "step": 4, "mIoU": 0.5}\n{"epoch": 1, "step": 8, "mI'),
    ("validation_history.jsonl", '{"epoch": 0, "step": 4, "mIoU": 0.5}\n{"epoch": 1, "step": 8, "mIoU": 0.6}'),
    ("pretrain_history.jsonl", '{"epoch": 0, "loss": 0.9}\n\x00\x00\n{"epoch": 1, "loss": 0.8}\n{"epo'),
])
def test_partial_history_line_is_dropped_before_the_resumed_run_appends(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture,
                                                                         name: str, text: str) -> None:
    from mal_core.utils.io import drop_history_from_epoch, read_jsonl_records

    path = tmp_path / name
    path.write_text(text)
    complete = [json.loads(line) for line in text.splitlines() if line.strip().endswith("}")]
    drop_history_from_epoch(path, first_epoch=5)  # what a resumed run does first
    assert read_jsonl_records(path) == complete
    with path.open("a") as fh:  # the resumed run's next line lands on a line of its own
        fh.write(json.dumps({"epoch": 5, "loss": 0.1}) + "\n")
    assert [json.loads(line) for line in path.read_text().splitlines()] == [*complete, {"epoch": 5, "loss": 0.1}]
    if not text.endswith("}"):
        assert str(path) in caplog.text and "dropped" in caplog.text


def test_parent_with_a_partial_history_line_still_resolves(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rc, _out, _err = _job_run(capsys, monkeypatch, tmp_path, "train", "t1")
    assert rc == 0
    history = tmp_path / "jobs" / "t1" / "validation_history.jsonl"
    history.write_text('{"epoch": 0, "step": 1, "mIoU": 0.5}\n{"epoch": 1, "st')
    rc = cli_main(["evaluate", "--jobs-root", str(tmp_path / "jobs"), "--parent-job-id", "t1", "--dry-run",
                   "--set", f"dataset.val_ann_path={tmp_path / 'in' / 'inputs' / 'ann.json'}",
                   "--set", f"dataset.val_img_dir={tmp_path / 'in' / 'inputs' / 'images'}"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0, out
    assert out["plan"]["parent"]["method"] == "best" and out["plan"]["parent"]["metric"] == 0.5


# ----- 3. a re-run refused by preflight is recorded as the latest attempt -------------------------------------------


@pytest.mark.parametrize("action", ["evaluate", "inference", "train"])
def test_rerun_refused_by_preflight_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    rc, first, _err = _job_run(capsys, monkeypatch, tmp_path, action, "j1")
    assert rc == 0
    ann = tmp_path / "in" / "inputs" / "ann.json"
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    key = {"train": "dataset.train_ann_path", "evaluate": "dataset.val_ann_path",
           "inference": "inference.ann_path"}[action]
    ann_before = ann.read_bytes()
    rc, out, err = _job_run(capsys, monkeypatch, tmp_path, action, "j1", "--set", f"{key}={broken}")
    _assert_exit2(rc, out, err, str(broken))
    record = json.loads((tmp_path / "jobs" / "j1" / "job.json").read_text())
    assert record["status"] == "failure" and record["attempts"] == 2, record
    assert str(broken) in record["error"]["message"] and record["refused_by"] == "preflight"
    assert record["artifacts"] == {} and record["metrics"] == {}  # nothing of the earlier attempt is the latest's
    earlier = record["previous_attempts"][-1]
    assert earlier["attempt"] == 1 and earlier["status"] == "success" and earlier["metrics"] == first["metrics"]
    if action != "train":  # the earlier outputs moved with their record, and the paths follow them
        for value in earlier["artifacts"].values():
            if isinstance(value, str) and value.startswith(str(tmp_path / "jobs")):
                assert "previous_attempts/1" in value and Path(value).exists()
    assert ann.read_bytes() == ann_before and not (tmp_path / "jobs" / "j1" / "job.lock").exists()


def test_refused_fresh_job_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("[]")
    rc, out, err = _job_run(capsys, monkeypatch, tmp_path, "evaluate", "fresh", "--set",
                            f"dataset.val_ann_path={broken}")
    _assert_exit2(rc, out, err, str(broken))
    assert not (tmp_path / "jobs" / "fresh").exists()


# ----- 3. a child job refuses a parent that did not end in success ---------------------------------------------------


@pytest.mark.parametrize(("child", "status"), [("evaluate", "running"), ("evaluate", "failure"),
                                               ("inference", "interrupted"), ("inference", "pending")])
def test_child_refuses_a_parent_that_did_not_succeed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch, child: str,
                                                     status: str) -> None:
    rc, _out, _err = _job_run(capsys, monkeypatch, tmp_path, "train", "t1")
    assert rc == 0
    path = tmp_path / "jobs" / "t1" / "job.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "status": status}))
    before = _snapshot(tmp_path / "jobs")
    d = tmp_path / "in" / "inputs"
    sets = {"evaluate": [f"dataset.val_ann_path={d / 'ann.json'}", f"dataset.val_img_dir={d / 'images'}"],
            "inference": [f"inference.ann_path={d / 'ann.json'}", f"inference.img_dir={d / 'images'}"]}[child]
    rc = cli_main([child, "--jobs-root", str(tmp_path / "jobs"), "--job-id", "c1", "--parent-job-id", "t1",
                   *[x for s in sets for x in ("--set", s)]])
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    _assert_exit2(rc, out, captured.err, "'t1'", f"status {status!r}", str(path))
    assert out["error"]["field"] == "parent_job_id"
    assert _snapshot(tmp_path / "jobs") == before


# ----- 4. the archive cache is keyed on content ----------------------------------------------------------------------


def _tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(("suffix", "mode", "second"), [
    (".tar", "w", {"images/a.png": b"B" * 700}),  # same names, other bytes: tar pads to the same size
    (".tar", "w", {"images/b.png": b"A" * 900}),  # another file list of the same padded size
    (".tar.gz", "w:gz", None),  # same length after a few bytes of the gzip stream are changed in place
])
def test_archive_replaced_with_same_size_and_time_is_not_served_from_the_cache(tmp_path: Path, suffix: str,
                                                                               mode: str, second: Any) -> None:
    from mal_core.skill.datasources import resolve_value

    archive = tmp_path / f"images{suffix}"
    first = _tar_bytes({"images/a.png": b"A" * 700}, mode)
    archive.write_bytes(first)
    os.utime(archive, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    got = resolve_value("inference.img_dir", str(archive), tmp_path / "cache")
    assert not got.cached and (Path(got.local_path) / "a.png").read_bytes() == b"A" * 700
    assert resolve_value("inference.img_dir", str(archive), tmp_path / "cache").cached  # same bytes: a hit
    if second is not None:
        replacement = _tar_bytes(second, mode)
    else:  # a gzip of the other content padded to the same length is hard to make: use the same content with
        # another gzip header mtime (bytes 4-7), a different file of the same size
        replacement = first[:4] + bytes([first[4] ^ 0xFF]) + first[5:]
    assert len(replacement) == len(first) and replacement != first
    st = archive.stat()
    archive.write_bytes(replacement)
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p / rsync -t leave
    assert archive.stat().st_size == st.st_size and archive.stat().st_mtime_ns == st.st_mtime_ns
    again = resolve_value("inference.img_dir", str(archive), tmp_path / "cache")
    assert not again.cached and again.local_path != got.local_path
    if second is not None:
        name, data = next(iter(second.items()))
        assert (Path(again.local_path) / Path(name).name).read_bytes() == data


@pytest.mark.parametrize("plant", ["file", "below_a_file"])
def test_mal_cache_dir_that_is_a_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, plant: str) -> None:
    cache = tmp_path / "cache_file"
    cache.write_text("the user's file")
    monkeypatch.setenv("MAL_CACHE_DIR", str(cache) if plant == "file" else str(cache / "sub"))
    archive = tmp_path / "images.tar"
    archive.write_bytes(_tar_bytes({"images/a.png": b"A"}))
    before = _snapshot(tmp_path)
    rc = cli_main(["inference", "--jobs-root", str(tmp_path / "jobs"), "--dry-run",
                   "--set", f"inference.img_dir={archive}", "--set", f"inference.ann_path={tmp_path / 'a.json'}",
                   "--set", f"inference.checkpoint={tmp_path / 'm.pth'}"])
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    _assert_exit2(rc, out, captured.err, "MAL_CACHE_DIR")
    assert out["error"]["field"] == "MAL_CACHE_DIR" and str(cache) in out["error"]["message"]
    assert _snapshot(tmp_path) == before


# ----- 5. resource bombs and exit-2 hygiene ---------------------------------------------------------------------------

_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))


def _dry(capsys: pytest.CaptureFixture[str], action: str, argv: list[str]) -> tuple[int, dict[str, Any], str]:
    rc = cli_main([action, "--dry-run", *argv])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out.strip().splitlines()[-1]), captured.err


@pytest.mark.parametrize(("where", "needle", "field"), [
    ("spec_laughs", "YAML bomb", "spec"),
    ("spec_merge_laughs", "YAML bomb", "spec"),
    ("spec_deep_yaml", "nested deeper than", "spec"),
    ("spec_deep_json", "nested deeper than", "spec"),
    ("set_laughs", "YAML bomb", "train.margin_rate"),
    ("set_deep", "nested deeper than", "train.margin_rate"),
    ("spec_overrides_deep", "nested deeper than", "spec_overrides"),
    ("spec_overrides_very_deep", "nested too deeply", "spec_overrides"),
    ("shorthand_deep", "nested deeper than", None),
])
def test_yaml_bombs_and_deep_nesting_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str,
                                                needle: str, field: str | None) -> None:
    import time

    spec = tmp_path / "spec.yaml"
    argv: list[str] = ["--jobs-root", str(tmp_path / "jobs"), "--automl-policy", "off"]
    if where == "spec_laughs":
        spec.write_text(_LAUGHS + "train: {num_epochs: 1}\n")
    elif where == "spec_merge_laughs":
        spec.write_text("a: &a {k0: x, k1: x, k2: x, k3: x, k4: x, k5: x, k6: x, k7: x, k8: x, k9: x}\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)))
    elif where == "spec_deep_yaml":
        spec.write_text("train:\n" + "".join("  " * i + f"  k{i}:\n" for i in range(1, 200)) + "  " * 200 + "  x: 1\n")
    elif where == "spec_deep_json":
        spec.write_text('{"train": ' + "[" * 50000 + "]" * 50000 + "}")
    if where.startswith("spec_") and not where.startswith("spec_overrides"):
        argv += ["-e", str(spec)]
    elif where == "set_laughs":
        value = "{a: &a [x,x,x,x,x,x,x,x,x,x], " + ", ".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)) + "}"
        argv += ["--set", "train.margin_rate=" + value]
    elif where == "set_deep":
        argv += ["--set", "train.margin_rate=" + "[" * 5000 + "]" * 5000]
    elif where == "spec_overrides_deep":
        argv += ["--spec-overrides", '{"train.margin_rate": ' + "[" * 100 + "]" * 100 + "}"]
    elif where == "spec_overrides_very_deep":
        argv += ["--spec-overrides", '{"train.margin_rate": ' + "[" * 100000 + "]" * 100000 + "}"]
    else:
        argv += ["--epochs", "[" * 100 + "]" * 100]
    t0 = time.time()
    rc, out, err = _dry(capsys, "train", argv)
    assert time.time() - t0 < 20
    _assert_exit2(rc, out, err, needle)
    if field is not None:
        assert out["error"]["field"] == field, out["error"]
    if where.startswith("spec_") and not where.startswith("spec_overrides"):
        assert str(spec) in out["error"]["message"]


def _coco_with(tmp_path: Path, mutate: Any) -> Path:
    from mal_core.skill.testing import minimal_coco

    files = minimal_coco(tmp_path / "data")
    ann = Path(files["ann"])
    text = mutate(ann.read_text())
    ann.write_text(text)
    return ann


@pytest.mark.parametrize(("case", "needle"), [
    ("ann_id_2_64", "annotation #0 has id 18446744073709551616, which does not fit in 64 bits"),
    ("ann_id_float_1e30", "annotation #0 has id 1e+30, which does not fit in 64 bits"),
    ("ann_id_400_digits", "annotation #0 has id 1000000000"),
    ("image_id_2_63", "image #0 has id 9223372036854775808, which does not fit in 64 bits"),
    ("category_id_minus_2_70", "category #0 has id -1180591620717411303424, which does not fit"),
    ("deep_nesting", "nested too deeply"),
])
def test_annotation_ids_beyond_64_bits_and_deep_nesting_are_exit_2(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch, case: str,
                                                                   needle: str) -> None:
    def mutate(text: str) -> str:
        if case == "deep_nesting":
            return text[:-1] + ', "extra": ' + "[" * 100000 + "]" * 100000 + "}"
        doc = json.loads(text)
        if case.startswith("ann_id"):
            doc["annotations"][0]["id"] = {"ann_id_2_64": 2**64, "ann_id_float_1e30": 1e30,
                                           "ann_id_400_digits": 10**400}[case]
        elif case == "image_id_2_63":
            doc["images"][0]["id"] = doc["annotations"][0]["image_id"] = 2**63
        else:
            doc["categories"][0]["id"] = doc["annotations"][0]["category_id"] = -(2**70)
        return json.dumps(doc)

    ann = _coco_with(tmp_path, mutate)
    before = ann.read_bytes()
    rc, out, err = _job_run(capsys, monkeypatch, tmp_path, "evaluate", "e1", "--set", f"dataset.val_ann_path={ann}")
    _assert_exit2(rc, out, err, str(ann), needle)
    assert ann.read_bytes() == before and not (tmp_path / "jobs" / "e1").exists()


@pytest.mark.parametrize("flag", ["--job-id", "--parent-job-id"])
def test_empty_job_ids_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    argv = ["--jobs-root", str(tmp_path / "jobs"), "--set", "evaluate.checkpoint=/x.pth", flag, ""]
    rc, out, err = _dry(capsys, "evaluate", argv)
    _assert_exit2(rc, out, err, "''")
    assert out["error"]["field"] == flag[2:].replace("-", "_")
    assert not (tmp_path / "jobs").exists()


@pytest.mark.parametrize("name", ["model.pth", "model.onnx.bak", "out/", ".onnx", ""])
def test_export_onnx_file_must_end_in_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"x")
    rc, out, err = _dry(capsys, "export", ["--jobs-root", str(tmp_path / "jobs"), "--set",
                                           f"export.checkpoint={ckpt}", "--set", f"export.onnx_file={name}"])
    assert rc == 2 and out["error"]["field"] == "export.onnx_file" and "Traceback" not in err, out
