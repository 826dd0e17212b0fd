"""Every spec an AutoML can draw from ``schemas/train.schema.json`` must pass the runner's validation.

Two samplers read the packaged schema: ours (the rows :func:`build_search_space` makes, with ``depends_on`` repaired
as the trials do) and a TAO-style one (each parameter uniformly or log-uniformly inside its hard ``minimum`` ..
``maximum`` or over its ``enum``, endpoints included; ``depends_on`` honoured only when the parent is drawn in the same
sample, as NVIDIA's AutoML does, which is how it proposed ``train.warmup_epochs`` 17..44 with ``num_epochs`` 10).
Each sample is dry-run through the runner in-process.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from mal_core.config.loader import get_dotted
from mal_core.skill.hpo import AutomlSettings, build_search_space, flatten_schema, repair_dependencies
from mal_core.skill.runner import main
from mal_core.skill.testing import TINY_OVERRIDES, last_json_line, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "train.schema.json").read_text())
PROPS = flatten_schema(SCHEMA)
TEMPLATE = yaml.safe_load((ROOT / "references" / "spec_template_train.yaml").read_text())
SAMPLES = 240


def _kind(prop: dict[str, Any]) -> str | None:
    t = prop.get("type")
    t = next((x for x in t if x != "null"), None) if isinstance(t, list) else t
    if "enum" in prop or t == "boolean":
        return "choice"
    return t if t in ("integer", "number") else None


def _searchable() -> list[str]:
    """What an AutoML may draw: ``automl_default_parameters``, the parameters searchable on request
    (``automl_enabled`` null) and every parent they depend on."""
    names = list(SCHEMA["automl_default_parameters"])
    names += [k for k, p in PROPS.items() if p.get("automl_enabled") is None and _kind(p) and k not in names]
    names += [p for p in {PROPS[k].get("depends_on") for k in names} - {None} if p not in names]
    return names


NAMES = _searchable()


def _tao_draw(rng: random.Random, prop: dict[str, Any], lo: float | None = None, hi: float | None = None) -> Any:
    kind = _kind(prop)
    if kind == "choice":
        return rng.choice(prop.get("enum", [False, True]))
    default = prop.get("default") or 0
    lo = prop.get("minimum", default / 10) if lo is None else lo
    hi = prop.get("maximum", default * 10 if default > 0 else 1.0) if hi is None else hi
    u = rng.random()
    if u < 0.1:
        value = lo
    elif u < 0.2:
        value = hi
    elif lo > 0 and hi / lo >= 10:
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        value = rng.uniform(lo, hi)
    if kind == "integer":
        m = re.fullmatch(r"\s*/\s*(\d+)\s*", str(prop.get("math_cond") or ""))
        step = int(m.group(1)) if m else 1
        value = min(max(int(round(value / step) * step), math.ceil(lo / step) * step), math.floor(hi / step) * step)
    return value


def _tao_sample(rng: random.Random) -> dict[str, Any]:
    drawn: dict[str, Any] = {}
    names = [n for n in NAMES if rng.random() < 0.7 or n in SCHEMA["automl_default_parameters"]]
    for key in sorted(names, key=lambda k: PROPS[k].get("depends_on") in names):  # parents first
        prop, parent = PROPS[key], PROPS[key].get("depends_on")
        lo = hi = None
        if parent in drawn:  # TAO honours the condition only against a parent it drew
            cond, pv = str(prop.get("math_cond")), drawn[parent]
            if "<" in cond:
                hi = min(prop["maximum"], pv - 1 if _kind(prop) == "integer" else pv * 0.999)
            elif ">" in cond:
                lo = max(prop["minimum"], pv + 1 if _kind(prop) == "integer" else pv + 1e-3)
            if lo is not None and hi is None:
                hi = prop["maximum"]
            if hi is not None and lo is None:
                lo = prop["minimum"]
            if lo > hi:
                continue  # no room for the child: TAO leaves it at its spec value
        drawn[key] = _tao_draw(rng, prop, lo, hi)
    return drawn


def _our_sample(rng: random.Random, base: dict[str, Any]) -> dict[str, Any]:
    rows = build_search_space(SCHEMA, AutomlSettings(automl_hyperparameters=NAMES), base)
    drawn: dict[str, Any] = {}
    for r in rows:
        if r["kind"] == "choice":
            drawn[r["key"]] = rng.choice(r["options"])
        elif r["kind"] == "int":
            drawn[r["key"]] = rng.randrange(r["low"], r["high"] + 1, r["step"])
        elif r["log"]:
            drawn[r["key"]] = math.exp(rng.uniform(math.log(r["low"]), math.log(r["high"])))
        else:
            drawn[r["key"]] = rng.uniform(r["low"], r["high"])
    return repair_dependencies(drawn, rows)


@pytest.fixture(scope="module")
def data_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sampling")
    (root / "images").mkdir()
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}], "categories": [{"id": 1}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]}
    (root / "ann.json").write_text(json.dumps(coco))
    return {"dataset.train_ann_path": str(root / "ann.json"), "dataset.train_img_dir": str(root / "images"),
            "dataset.val_ann_path": str(root / "ann.json"), "dataset.val_img_dir": str(root / "images")}


def test_declared_search_ranges_fit_the_defaults_they_depend_on() -> None:
    checked = 0
    for key, prop in PROPS.items():
        parent = prop.get("depends_on")
        if not parent:
            continue
        lo, hi = prop.get("x_automl_range") or (prop["minimum"], prop["maximum"])
        parent_default = PROPS[parent]["default"]
        cond = str(prop["math_cond"])
        if "<" in cond:
            assert hi < parent_default, (key, hi, parent, parent_default)
        if ">" in cond:
            assert lo > parent_default, (key, lo, parent, parent_default)
        checked += 1
    assert checked >= 2  # train.warmup_epochs < num_epochs, crf_value_high_thres > crf_value_low_thres


def test_every_sampled_spec_passes_the_runner(data_paths: dict[str, str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert {"train.warmup_epochs", "train.num_epochs", "train.lr", "train.crf_value_low_thres"} <= set(NAMES)
    rng = random.Random(20240612)
    clamped = 0
    for i in range(SAMPLES):
        base = {"train.num_epochs": rng.choice([1, 2, 3, 5, 10]), "train.checkpoint_interval": rng.choice([1, 5, 10])}
        sample = _tao_sample(rng) if i % 2 else _our_sample(rng, base)
        over = {**data_paths, **base, **sample}
        rc = main("train", ["--jobs-root", str(tmp_path / "jobs"), "--automl-policy", "off", "--dry-run",
                            "--spec-overrides", json.dumps(over)])
        out = last_json_line(capsys.readouterr().out)
        assert rc == 0 and out["status"] == "planned", (i, sample, out["error"])
        t = out["plan"]["spec"]["train"]
        for key, value in sample.items():  # what was drawn is what the plan holds
            got = get_dotted(out["plan"]["spec"], key)
            assert got == value or math.isclose(got, value), (key, got, value)
        if t["warmup_epochs"] >= t["num_epochs"] and t["warmup_epochs"] > 0:
            clamped += 1
            assert any("train.warmup_epochs" in w and "clamped" in w for w in out["warnings"]), out["warnings"]
        else:
            assert out["warnings"] == []
    assert clamped >= 20  # the TAO sampler does draw warmups beyond the epochs; they are accepted, not refused
    assert not (tmp_path / "jobs").exists()


@pytest.mark.parametrize(("epochs", "warmup", "interval"),
                         [(10, 17, 1), (10, 44, 10), (1, 1, 10), (1, 50, 10), (3, 0, 10), (10, 9, 10)])
def test_tao_specs_are_accepted(data_paths: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                epochs: int, warmup: int, interval: int) -> None:
    spec = {**TEMPLATE, "train": {**TEMPLATE["train"], "num_epochs": epochs, "warmup_epochs": warmup,
                                  "checkpoint_interval": interval}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    rc = main("train", ["--jobs-root", str(tmp_path / "jobs"), "--automl-policy", "off", "--dry-run",
                        "-e", str(tmp_path / "spec.yaml"), "--spec-overrides", json.dumps(data_paths)])
    out = last_json_line(capsys.readouterr().out)
    assert rc == 0, out["error"]
    expected = [f"train.warmup_epochs ({warmup}) is not below train.num_epochs ({epochs}); clamped to {epochs - 1}"]
    assert out["warnings"] == (expected if warmup >= epochs and warmup else [])


def test_warmup_beyond_epochs_trains_and_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAL_PROGRESS_BAR", "0")
    data = tiny_dataset(tmp_path / "data")
    over = {**TINY_OVERRIDES, **data, "train.num_epochs": 1, "train.warmup_epochs": 5,
            "train.checkpoint_interval": 10}
    jobs = tmp_path / "jobs"
    rc = main("train", ["--jobs-root", str(jobs), "--job-id", "w1", "--automl-policy", "off",
                        "--spec-overrides", json.dumps(over)])
    out = last_json_line(capsys.readouterr().out)
    assert rc == 0, out["error"]
    warning = "train.warmup_epochs (5) is not below train.num_epochs (1); clamped to 0"
    assert out["warnings"][0] == warning  # the clamp, once; a 1-epoch model may add collapse-check warnings after it
    assert out["warnings"].count(warning) == 1 and all(w.startswith("collapse:") for w in out["warnings"][1:])
    assert warning in (jobs / "w1" / "logs" / "train.log").read_text()
    ckpts = sorted(p.name for p in (jobs / "w1").glob("model_epoch_*.pth"))
    assert len(ckpts) == 1 and ckpts[0].startswith("model_epoch_000_")  # interval 10 > 1 epoch: the last one saves
    assert (jobs / "w1" / "mal_model_latest.pth").resolve().name == ckpts[0]
    assert yaml.safe_load((jobs / "w1" / "train_spec.yaml").read_text())["train"]["warmup_epochs"] == 0
    assert 0.0 <= out["metrics"]["mIoU"] <= 1.0
