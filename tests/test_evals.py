"""The agent evals shipped in evals/evals.json run (as dry runs) and pass; a wrong expectation fails the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mal_core.cli import main as cli_main
from mal_core.skill.evals import EVALS_FILE, SKILL_ROOT, load_evals

ACTIONS_COVERED = {"train", "evaluate", "inference", "export"}


def test_shipped_evals_cover_every_action_and_policy_phrase() -> None:
    doc = load_evals(SKILL_ROOT / EVALS_FILE)
    cases = doc["cases"]
    assert len(cases) >= 15
    assert ACTIONS_COVERED <= {c["action"] for c in cases}
    requests = " ".join(c["request"].lower() for c in cases)
    for phrase in ("turn off automl", "disable automl", "no hpo", "plain training"):
        assert phrase in requests
    assert any(c.get("skill_root", {}).get("drop") for c in cases)
    assert any(c["expect"]["exit"] == 2 for c in cases)


def test_mal_evals_passes(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["evals"])
    lines = capsys.readouterr().out.strip().splitlines()
    n = len(load_evals(SKILL_ROOT / EVALS_FILE)["cases"])
    assert lines[-1] == f"{n} passed, 0 failed", "\n".join(lines)
    assert rc == 0 and len(lines) == n + 1


def test_wrong_expectation_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_evals(SKILL_ROOT / EVALS_FILE)
    first = next(c for c in doc["cases"] if c["expect"].get("route") == "direct" and c["action"] == "train")
    first["expect"]["route"] = "automl"
    doc["cases"] = [first]
    path = tmp_path / "evals.json"
    path.write_text(json.dumps(doc))
    rc = cli_main(["evals", "--file", str(path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"FAIL {first['id']}" in out and "route: expected 'automl', got 'direct'" in out
    assert out.strip().splitlines()[-1] == "0 passed, 1 failed"


def test_malformed_evals_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evals.json"
    path.write_text(json.dumps({"cases": [{"id": "x", "request": "r", "action": "deploy", "args": [],
                                           "expect": {"exit": 0}}]}))
    assert cli_main(["evals", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "cases[0].action" in err
