"""Search space from the train schema, settings validation, and a real 2-trial Ray Tune run on tiny data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mal_core.skill.hpo import AutomlError, build_search_space, parse_settings, repair_dependencies, to_ray_space
from mal_core.skill.jobs import read_job
from mal_core.skill.parents import resolve_parent
from mal_core.skill.runner import main
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "train.schema.json").read_text())


def _space(settings: dict, spec: dict | None = None) -> dict[str, dict]:
    rows = build_search_space(SCHEMA, parse_settings(settings), spec or {"train.num_epochs": 10})
    return {r["key"]: r for r in rows}


def test_default_space_from_schema() -> None:
    space = _space({})
    assert set(space) == set(SCHEMA["automl_default_parameters"])
    assert space["train.lr"]["log"] and (space["train.lr"]["low"], space["train.lr"]["high"]) == (1e-7, 1e-5)
    assert not space["model.teacher_momentum"]["log"]
    assert space["train.warmup_epochs"]["high"] == 9  # "< depends_on" with num_epochs 10
    assert space["train.crf_value_high_thres"]["low"] >= 0.5


def test_requested_params_enums_ints_and_ranges() -> None:
    space = _space({"automl_hyperparameters": '["model.arch", "dataset.crop_size", "train.wd", "train.lr"]',
                    "automl_range_override": [{"parameter": "dataset.crop_size", "valid_min": 100, "valid_max": 300},
                                              {"parameter": "model.arch",
                                               "valid_options": ["vit-mae-nano/8", "vit-mae-base/16"]}]})
    crop = space["dataset.crop_size"]
    assert (crop["kind"], crop["low"], crop["high"], crop["step"]) == ("int", 112, 288, 16)
    arch = space["model.arch"]
    assert arch["options"] == ["vit-mae-nano/8", "vit-mae-base/16"] and arch["weights"] == [0.05, 0.4]
    assert space["train.wd"]["log"]
    ray_space = to_ray_space(list(space.values()), "random")
    picks = ray_space["model.arch"].categories
    assert picks.count("vit-mae-base/16") > picks.count("vit-mae-nano/8")  # weighted choice


def test_automl_range_is_the_default_interval_inside_wider_hard_bounds() -> None:
    prop = SCHEMA["properties"]["train"]["properties"]["lr"]
    assert prop["x_automl_range"] == [1e-7, 1e-5] and prop["maximum"] > 1e-5  # from-scratch rates are valid specs
    wide = _space({"automl_range_override": {"train.lr": {"min": 1e-6, "max": 1e-4}}})["train.lr"]
    assert (wide["low"], wide["high"]) == (1e-6, 1e-4)  # an explicit range may go past the default interval
    upper = _space({"automl_range_override": {"train.lr": {"max": 5e-6}}})["train.lr"]
    assert (upper["low"], upper["high"]) == (1e-7, 5e-6)  # one-sided: the other side keeps the default interval
    lower = _space({"automl_range_override": {"train.lr": {"min": 3e-5}}})["train.lr"]
    assert (lower["low"], lower["high"]) == (3e-5, prop["maximum"])  # nothing left below 1e-5: up to the hard bound


def test_automl_range_must_lie_inside_the_hard_bounds() -> None:
    from mal_core.config.fields import param

    with pytest.raises(ValueError, match="automl_range"):
        param(1.0, title="x", description="x", minimum=0.0, maximum=2.0, automl_range=(0.5, 3.0))


@pytest.mark.parametrize(("settings", "match"), [
    ({"automl_range_override": {"train.lr": {"min": 1e-9}}}, "below the schema minimum"),
    ({"automl_range_override": {"train.lr": {"max": 1e-2}}}, "above the schema maximum"),
    ({"automl_hyperparameters": ["model.arch"], "automl_range_override": {"model.arch": {"options": ["resnet"]}}},
     "not allowed"),
    ({"automl_hyperparameters": ["train.margin_rate"]}, "cannot be searched"),
    ({"automl_range_override": {"train.seed": {"min": 1}}}, "not searched"),
])
def test_bad_ranges(settings: dict, match: str) -> None:
    with pytest.raises(AutomlError, match=match):
        _space(settings)


def test_settings_and_dependency_repair() -> None:
    s = parse_settings('{"automl_algorithm": "hyperband", "automl_max_epochs": 6, "automl_reduction_factor": 2}')
    assert s.automl_max_epochs == 6
    with pytest.raises(AutomlError, match="automl_reduction_factor"):
        parse_settings({"automl_reduction_factor": 1})
    rows = [{"key": "train.warmup_epochs", "kind": "int", "depends_on": "train.num_epochs", "math_cond": "< depends_on",
             "high": 50}]
    assert repair_dependencies({"train.warmup_epochs": 5, "train.num_epochs": 3}, rows)["train.warmup_epochs"] == 2


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "MAL_PROGRESS_BAR": "0"}})
    yield
    ray.shutdown()


def test_two_trial_ray_tune_run(local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAL_PROGRESS_BAR", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    jobs = tmp_path / "jobs"
    over = {**TINY_OVERRIDES, **tiny_dataset(tmp_path / "data")}
    settings = {"automl_max_recommendations": 2, "automl_hyperparameters": ["train.lr", "train.loss_crf_weight"],
                "automl_range_override": {"train.lr": {"min": 1e-6}}}
    argv = ["--jobs-root", str(jobs), "--job-id", "hpo1", "--request", "train MAL on my boxes",
            "--spec-overrides", json.dumps(over), "--automl-settings", json.dumps(settings)]
    rc = main("train", argv)
    out = last_json_line(capsys.readouterr().out)
    assert rc == 0, out["error"]
    assert out["status"] == "success" and out["route"] == "automl" and out["automl_policy"] == "auto"
    rec = read_job(jobs / "hpo1")
    trials = rec["automl"]["trials"]
    assert len(trials) == 2 and all(t["status"] == "success" and t["mIoU"] is not None for t in trials)
    assert all(1e-6 <= t["params"]["train.lr"] <= 1e-5 for t in trials)
    best = rec["automl"]["best_trial"]
    assert best["mIoU"] == max(t["mIoU"] for t in trials) and Path(best["checkpoint"]).is_file()
    assert rec["status"] == "success" and out["metrics"]["mIoU"] == best["mIoU"]
    assert out["artifacts"]["best_checkpoint"] == best["checkpoint"]
    assert all(isinstance(t["warnings"], list) for t in trials)
    # the best trial's engine warnings (a 2-epoch model at lr <= 1e-5 is flagged as collapsed) reach the result
    # JSON and the job record
    assert best["warnings"] and out["warnings"] == [f"best trial {best['trial_id']}: {w}" for w in best["warnings"]]
    assert rec["warnings"] == out["warnings"]
    assert resolve_parent(jobs, "hpo1").path == best["checkpoint"]
    # re-running the same job id restores the finished experiment instead of starting over
    rc = main("train", argv)
    again = last_json_line(capsys.readouterr().out)
    assert rc == 0 and again["artifacts"]["best_trial"] == best["trial_id"]
    assert read_job(jobs / "hpo1")["attempts"] == 2


def _failing_hpo(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, job_id: str,
                 data: dict[str, str], overrides: dict, trials: int) -> list[dict]:
    """Run a random-search HPO that must fail as a whole; checks the result line and job record, returns trials."""
    monkeypatch.setenv("MAL_PROGRESS_BAR", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    jobs = tmp_path / "jobs"
    over = {**TINY_OVERRIDES, **data, "train.num_epochs": 1, **overrides}
    settings = {"automl_max_recommendations": trials, "automl_hyperparameters": ["train.lr"],
                "automl_algorithm": "random"}
    rc = main("train", ["--jobs-root", str(jobs), "--job-id", job_id, "--spec-overrides", json.dumps(over),
                        "--automl-settings", json.dumps(settings)])
    out = last_json_line(capsys.readouterr().out)
    assert rc == 1 and out["status"] == "failure" and out["error"]["code"] == "automl_failed"
    rec = read_job(jobs / job_id)
    assert rec["status"] == "failure" and rec["error"]["code"] == "automl_failed"
    return rec["automl"]["trials"]


def test_trials_without_a_finite_miou_are_failed_trials(local_ray: None, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # validating on GT-free boxes (load_mask false) yields no mIoU: each trial must be recorded as failed, and the
    # experiment must end in a terminal failure state, not crash
    trials = _failing_hpo(tmp_path, capsys, monkeypatch, "nan1", tiny_dataset(tmp_path / "data"),
                          {"dataset.load_mask": False}, trials=2)
    assert len(trials) == 2 and all(t["status"] != "success" for t in trials)


def test_a_crashing_trial_is_recorded_with_its_error(local_ray: None, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # an unreadable training image passes the up-front checks (they do not decode every image) and crashes the
    # trial's data loader: the trial must be recorded as failed with the reason, the job must fail cleanly
    data = tiny_dataset(tmp_path / "data")
    broken = sorted(Path(data["dataset.train_img_dir"]).iterdir())[0]
    broken.write_bytes(b"this is not an image")
    trials = _failing_hpo(tmp_path, capsys, monkeypatch, "crash1", data, {}, trials=1)
    assert len(trials) == 1 and trials[0]["status"] == "failure" and trials[0]["mIoU"] is None
    assert broken.name in trials[0]["error"]
