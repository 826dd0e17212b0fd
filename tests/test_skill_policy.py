"""AutoML policy resolution (flag > request > auto) and the train route."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mal_core.config.skill_info import load_skill_info
from mal_core.skill.policy import PolicyError, decide_route, policy_from_request, resolve_policy
from mal_core.skill.runner import main
from mal_core.skill.testing import last_json_line

ROOT = Path(__file__).resolve().parents[1]
INFO = load_skill_info(ROOT / "references" / "skill_info.yaml")


@pytest.mark.parametrize("text", [
    "Please turn off AutoML and train for 5 epochs", "disable automl", "no HPO, just train", "Plain training please",
    "train without hyperparameter search", "TURN OFF AUTOML", "train it without any hyperparameter tuning",
    "skip the HPO", "don't use AutoML this time",
])
def test_off_phrases(text: str) -> None:
    assert policy_from_request(text)[0] == "off"
    assert resolve_policy(None, text).policy == "off"


@pytest.mark.parametrize("text", ["enable AutoML please", "turn on HPO"])
def test_on_phrases(text: str) -> None:
    assert resolve_policy(None, text).policy == "on"


@pytest.mark.parametrize("text", [None, "", "train MAL on my boxes for 5 epochs", "fine-tuning a ViT"])
def test_neutral_requests_default_to_auto(text: str | None) -> None:
    d = resolve_policy(None, text)
    assert (d.policy, d.source) == ("auto", "default")


def test_flag_wins_over_request() -> None:
    d = resolve_policy("on", "turn off AutoML")
    assert (d.policy, d.source) == ("on", "flag")
    with pytest.raises(PolicyError):
        resolve_policy("maybe", None)


def _skill_copy(tmp_path: Path, drop: str | None) -> Path:
    root = tmp_path / "skill"
    shutil.copytree(ROOT / "references", root / "references")
    shutil.copytree(ROOT / "schemas", root / "schemas")
    if drop:
        (root / drop).unlink()
    return root


def test_route_auto_and_off() -> None:
    assert decide_route("train", resolve_policy(None, None), INFO, ROOT).route == "automl"
    off = decide_route("train", resolve_policy(None, "no HPO"), INFO, ROOT)
    assert off.route == "direct" and "no hpo" in off.reason
    for action in ("evaluate", "inference"):
        assert decide_route(action, resolve_policy("on", None), INFO, ROOT).route == "direct"


@pytest.mark.parametrize("drop", ["schemas/train.schema.json", "references/spec_template_train.yaml"])
def test_missing_schema_runs_direct_with_message(tmp_path: Path, drop: str) -> None:
    root = _skill_copy(tmp_path, drop)
    route = decide_route("train", resolve_policy("auto", None), INFO, root)
    assert route.route == "direct"
    assert route.message == "AutoML is enabled but not runnable for this model until schemas are generated"
    with pytest.raises(PolicyError, match="not runnable"):
        decide_route("train", resolve_policy("on", None), INFO, root)


def test_unparsable_schema_is_not_runnable(tmp_path: Path) -> None:
    root = _skill_copy(tmp_path, None)
    (root / "schemas/train.schema.json").write_text("{not json")
    assert decide_route("train", resolve_policy(None, None), INFO, root).route == "direct"


def test_runner_on_with_missing_schema_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _skill_copy(tmp_path, "schemas/train.schema.json")
    rc = main("train", ["--skill-root", str(root), "--automl-policy", "on", "--jobs-root", str(tmp_path / "jobs"),
                        "--dry-run"])
    out = last_json_line(capsys.readouterr().out)
    assert rc == 2 and out["status"] == "failure" and out["automl_policy"] == "on"
    assert "not runnable for this model until schemas are generated" in out["error"]["message"]
    assert not (tmp_path / "jobs").exists()


def test_runner_auto_with_missing_schema_reports_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _skill_copy(tmp_path, "schemas/train.schema.json")
    data = tmp_path / "d"
    data.mkdir()
    (data / "a.json").write_text("{}")
    rc = main("train", ["--skill-root", str(root), "--jobs-root", str(tmp_path / "jobs"), "--dry-run",
                        "--set", f"dataset.train_img_dir={data}", "--set", f"dataset.train_ann_path={data / 'a.json'}"])
    out = last_json_line(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "planned" and out["route"] == "direct"
    assert out["message"] == "AutoML is enabled but not runnable for this model until schemas are generated"
    # the override never edits skill_info
    assert (root / "references/skill_info.yaml").read_text() == (ROOT / "references/skill_info.yaml").read_text()


def test_malformed_skill_info_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _skill_copy(tmp_path, None)
    (root / "references/skill_info.yaml").write_text("name: mal\nautoml_enabled: maybe\n")
    rc = main("evaluate", ["--skill-root", str(root), "--dry-run", "--jobs-root", str(tmp_path / "jobs")])
    out = last_json_line(capsys.readouterr().out)
    assert rc == 2 and out["error"]["code"] == "invalid_skill_info"
