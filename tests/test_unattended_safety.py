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
