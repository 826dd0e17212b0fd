"""Codegen: generated schemas/templates/manifest/skill_info/runners/skill.md follow the config dataclasses."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

import mal_core
from codegen import CodegenError
from codegen.__main__ import main as codegen_main
from codegen.schema import build_schemas, kept_top_level, unwrap_optional
from codegen.skill_md import (
    BLOCKS,
    DOCS,
    IMPORTANT_PARAMETERS,
    NOTICE,
    extract_blocks,
    first_sentence,
    render_blocks,
    render_markdown,
    render_skill_md,
)
from codegen.writer import render_all, stale_files, write_outputs
from mal_core.config.archs import ARCHS
from mal_core.config.experiment import KEY_ALIASES, ExperimentConfig
from mal_core.config.loader import leaf_fields
from mal_core.config.skill_info import ACTIONS, SKILL_INFO, SkillInfo, SkillInfoError, load_skill_info

ROOT = Path(__file__).resolve().parents[1]
SCALAR = {bool: "boolean", int: "integer", float: "number", str: "string"}


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    return render_all(ROOT)


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return {a: json.loads((ROOT / f"schemas/{a}.schema.json").read_text()) for a in ACTIONS}


def _template(action: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / f"references/spec_template_{action}.yaml").read_text())


def _prop(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _sections() -> list[str]:
    out = []

    def rec(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                out.append(prefix + f.name)
                rec(hints[f.name], prefix + f.name + ".")

    rec(ExperimentConfig, "")
    return out


def _copy_docs(dst: Path) -> None:
    """Copy the hand-written Markdown documents codegen fills (skill.md and the generated references) to ``dst``."""
    for doc in DOCS:
        (dst / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / doc, dst / doc)


def _copy_generated(dst: Path) -> None:
    _copy_docs(dst)
    write_outputs(render_all(dst), dst)


# --- committed files, determinism, --check -------------------------------------------------------------------------


def test_committed_files_match_fresh_render(outputs: dict[str, str]) -> None:
    expected = {
        *DOCS, "schemas/manifest.json", "references/skill_info.yaml",
        *(f"schemas/{a}.schema.json" for a in ACTIONS),
        *(f"references/spec_template_{a}.yaml" for a in ACTIONS),
        *(f"runners/{a}.py" for a in ACTIONS),
    }
    assert set(outputs) == expected
    for rel, text in outputs.items():
        assert (ROOT / rel).read_bytes() == text.encode("utf-8"), f"{rel} is stale; run python -m codegen"
        assert text.endswith("\n") and not text.endswith("\n\n"), rel


def test_render_is_deterministic_and_cwd_independent(outputs, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert render_all() == outputs
    assert render_all(ROOT) == outputs


def test_write_into_fresh_root_reproduces_committed_files(tmp_path) -> None:
    _copy_docs(tmp_path)
    rendered = render_all(tmp_path)
    assert stale_files(rendered, tmp_path) == [("missing", rel) for rel in rendered if rel not in DOCS]
    written = write_outputs(rendered, tmp_path)
    assert "schemas/train.schema.json" in written and not set(DOCS) & set(written)  # the documents already current
    assert write_outputs(render_all(tmp_path), tmp_path) == []  # second run changes nothing
    assert stale_files(rendered, tmp_path) == []
    for rel in rendered:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), rel
    assert codegen_main(["--check", "--root", str(tmp_path)]) == 0


def test_check_passes_on_repo(capsys) -> None:
    assert codegen_main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out
    from mal_core.cli import main as cli_main

    assert cli_main(["codegen", "--check"]) == 0


def test_check_reports_exactly_the_hand_edited_file(tmp_path, capsys) -> None:
    _copy_generated(tmp_path)
    path = tmp_path / "schemas/train.schema.json"
    data = json.loads(path.read_text())
    data["properties"]["train"]["properties"]["lr"]["maximum"] = 1.0
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    capsys.readouterr()
    assert codegen_main(["--check", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == ["stale: schemas/train.schema.json"]

    (tmp_path / "references/skill_info.yaml").unlink()
    tpl = tmp_path / "references/spec_template_inference.yaml"
    tpl.write_text(tpl.read_text().replace("crop_size: 512", "crop_size: 384"))
    assert codegen_main(["--check", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "missing: references/skill_info.yaml",
        "stale: references/spec_template_inference.yaml",
        "stale: schemas/train.schema.json",
    ]
    assert codegen_main(["--root", str(tmp_path)]) == 0  # regenerate
    assert codegen_main(["--check", "--root", str(tmp_path)]) == 0


def test_check_flags_edits_inside_generated_blocks_but_not_prose(tmp_path, capsys) -> None:
    _copy_generated(tmp_path)
    md = tmp_path / "skill.md"
    text = md.read_text()
    md.write_text(text.replace("## Hardware\n", "## Hardware\n\nHand-written note.\n"))
    assert codegen_main(["--check", "--root", str(tmp_path)]) == 0
    md.write_text(text.replace("| train | dataset.train_img_dir |", "| train | dataset.train_image_dir |"))
    capsys.readouterr()
    assert codegen_main(["--check", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == ["stale: skill.md"]


def test_check_covers_the_generated_references(tmp_path, capsys) -> None:
    _copy_generated(tmp_path)
    ref = tmp_path / "references/parent_jobs.md"
    text = ref.read_text()
    ref.write_text(text.replace("Read this when", "Hand-written: read this when"))
    assert codegen_main(["--check", "--root", str(tmp_path)]) == 0  # prose is the author's
    ref.write_text(text.replace("| evaluate | evaluate.checkpoint | parent_model |", "| evaluate | x | parent_model |"))
    capsys.readouterr()
    assert codegen_main(["--check", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == ["stale: references/parent_jobs.md"]
    assert codegen_main(["--root", str(tmp_path)]) == 0 and ref.read_text() == text
    ref.unlink()
    assert codegen_main(["--check", "--root", str(tmp_path)]) == 1
    assert "references/parent_jobs.md is missing" in capsys.readouterr().err


def test_render_does_not_import_torch() -> None:
    # what keeps codegen fast is that it never imports torch or the engine (its speed is not a timed test: a loaded
    # 2-core CI machine would make that flaky)
    code = (
        "import sys; from codegen.writer import render_all; render_all(); "
        "assert 'torch' not in sys.modules, 'codegen imported torch'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_every_generated_file_has_a_header(outputs) -> None:
    for rel, text in outputs.items():
        if rel.endswith(".json"):
            assert "python -m codegen" in json.loads(text)["$comment"], rel
        elif rel.endswith((".yaml", ".py")):
            assert text.startswith("# GENERATED by `python -m codegen`"), rel
        else:
            assert "python -m codegen" in text.split("\n# ")[0], rel  # before the title


# --- schemas ----------------------------------------------------------------------------------------------------


def test_schemas_are_valid_json_schema_without_nonfinite_tokens(schemas) -> None:
    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    for action in ACTIONS:
        json.loads((ROOT / f"schemas/{action}.schema.json").read_text(), parse_constant=reject)
        schema = schemas[action]
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        for key in ("type", "properties", "default", "automl_default_parameters", "automl_disabled_parameters",
                    "popular", "required"):
            assert key in schema, (action, key)
        assert schema["type"] == "object" and schema["additionalProperties"] is False


def test_action_filtering(schemas) -> None:
    base = ["results_dir", "dataset", "model", "postprocess", "train"]
    assert list(schemas["train"]["properties"]) == sorted(base)
    assert sorted(schemas["evaluate"]["properties"]) == sorted([*base, "evaluate"])
    assert sorted(schemas["inference"]["properties"]) == sorted([*base, "inference"])
    for action in ACTIONS:
        assert set(schemas[action]["default"]) == set(schemas[action]["properties"])


def _type_of(tp: Any) -> tuple[Any, Any]:
    inner, nullable = unwrap_optional(tp)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        expected: Any = "array"
        items = SCALAR[item]
    else:
        expected, items = SCALAR[inner], None
    return ([expected, "null"] if nullable else expected), items


@pytest.mark.parametrize("action", ACTIONS)
def test_every_leaf_appears_with_its_metadata(schemas, action) -> None:
    schema = schemas[action]
    hints_cache: dict[str, Any] = {}
    for dotted, f in leaf_fields().items():
        top = dotted.split(".")[0]
        if not kept_top_level(top, action):
            assert top not in schema["properties"]
            continue
        prop = _prop(schema, dotted)
        meta = f.metadata
        owner = ExperimentConfig
        for part in dotted.split(".")[:-1]:
            owner = typing.get_type_hints(owner)[part]
        tp = hints_cache.setdefault(dotted, typing.get_type_hints(owner)[f.name])
        expected_type, items = _type_of(tp)
        assert prop["type"] == expected_type, dotted
        if items:
            assert prop["items"]["type"] == items, dotted
        assert prop["title"] == meta["title"] and prop["description"] == meta["description"], dotted
        assert prop["default"] == _default(f), dotted
        assert _get(schema["default"], dotted) == _default(f), dotted
        for key in ("minimum", "maximum"):
            holder = prop["items"] if items else prop
            if meta[key] is None:
                assert key not in holder, dotted
            else:
                assert holder[key] == meta[key], dotted
        assert prop.get("enum") == meta["options"], dotted
        assert prop.get("option_weights") == meta["option_weights"], dotted
        assert prop.get("math_cond") == meta["math_cond"], dotted
        assert prop.get("depends_on") == meta["depends_on"], dotted
        assert prop.get("parent_param", False) == meta["parent_param"], dotted
        assert prop.get("popular", False) == meta["popular"], dotted
        assert prop.get("automl_enabled") == meta["automl_enabled"], dotted
        assert prop.get("x_automl_reason", "") == meta["automl_reason"], dotted
        assert prop.get("examples") == meta["examples"], dotted
        if meta["popular"]:
            assert _get(schema["popular"], dotted) == _default(f), dotted
            assert f.name in _prop(schema, dotted.rsplit(".", 1)[0]).get("popular", []) if "." in dotted else True


@pytest.mark.parametrize("action", ACTIONS)
def test_automl_lists_follow_the_metadata(schemas, action) -> None:
    schema = schemas[action]
    leaves = {k: f for k, f in leaf_fields().items() if kept_top_level(k.split(".")[0], action)}
    sections = [s for s in _sections() if kept_top_level(s.split(".")[0], action)]
    aliases = [a for a in KEY_ALIASES if kept_top_level(a.split(".")[0], action)]
    enabled = sorted(k for k, f in leaves.items() if f.metadata["automl_enabled"] is True)
    disabled = sorted([k for k, f in leaves.items() if f.metadata["automl_enabled"] is False] + sections + aliases)
    assert schema["automl_default_parameters"] == enabled
    assert schema["automl_disabled_parameters"] == disabled
    assert {"train.lr", "train.wd"} <= set(enabled)
    neutral = {k for k, f in leaves.items() if f.metadata["automl_enabled"] is None}
    assert not neutral & (set(enabled) | set(disabled))
    train = schema["properties"]["train"]
    assert train["automl_default_parameters"] == [k for k in enabled if k.startswith("train.")]
    assert train["automl_disabled_parameters"] == [k for k in disabled if k.startswith("train.")]
    assert train["automl_enabled"] is False


def test_required_representation(schemas) -> None:
    assert schemas["train"]["required"] == [] and schemas["train"]["x_required_parameters"] == []
    for action in ("evaluate", "inference"):
        schema = schemas[action]
        assert schema["required"] == [action]
        assert schema["properties"][action]["required"] == ["checkpoint"]
        assert schema["x_required_parameters"] == [f"{action}.checkpoint"]
        spec = _template(action)
        del spec[action]["checkpoint"]
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(spec))
        assert len(errors) == 1 and list(errors[0].path) == [action] and "'checkpoint'" in errors[0].message


# --- templates ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_template_validates_against_its_schema(schemas, action) -> None:
    spec = _template(action)
    assert spec == schemas[action]["default"]
    jsonschema.Draft202012Validator(schemas[action]).validate(spec)
    assert isinstance(spec["train"]["lr"], float) and spec["train"]["lr"] == 1e-6
    for key in SKILL_INFO.data_sources[action]:
        assert _get(spec, key) == "", key


BAD_SPECS = [
    ("train.num_epochs", "ten", "train.num_epochs", "is not of type 'integer'"),
    ("train.lr", 1.0, "train.lr", "greater than the maximum"),
    ("train.lr", 0.0, "train.lr", "less than the minimum"),
    ("model.arch", "vit-foo/16", "model.arch", "is not one of"),
    ("dataset.load_mask", "yes", "dataset.load_mask", "is not of type 'boolean'"),
    ("train.gpu_ids", [0, "1"], "train.gpu_ids.1", "is not of type 'integer'"),
    ("results_dir", None, "results_dir", "is not of type 'string'"),
    ("train.lrr", 1e-6, "train", "'lrr' was unexpected"),
    ("nonsense", 1, "", "'nonsense' was unexpected"),
]


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(("key", "value", "path", "message"), BAD_SPECS)
def test_bad_spec_fails_naming_the_field(schemas, action, key, value, path, message) -> None:
    spec = copy.deepcopy(_template(action))
    parent = spec
    parts = key.split(".")
    for part in parts[:-1]:
        parent = parent[part]
    parent[parts[-1]] = value
    errors = list(jsonschema.Draft202012Validator(schemas[action]).iter_errors(spec))
    assert len(errors) == 1, [e.message for e in errors]
    assert ".".join(str(p) for p in errors[0].absolute_path) == path
    assert message in errors[0].message


def test_aliases_validate_like_their_canonical_key(schemas) -> None:
    validator = jsonschema.Draft202012Validator(schemas["train"])
    spec = _template("train")
    spec["model"]["crop_size"] = 384
    spec["model"]["load_mask"] = True
    assert not list(validator.iter_errors(spec))
    spec["model"]["crop_size"] = 10**6
    assert [".".join(e.absolute_path) for e in validator.iter_errors(spec)] == ["model.crop_size"]
    for alias, canonical in KEY_ALIASES.items():
        prop = _prop(schemas["train"], alias)
        assert prop["x_alias_of"] == canonical and prop["deprecated"] is True and "default" not in prop
        assert prop["type"] == _prop(schemas["train"], canonical)["type"]
        assert alias.split(".")[1] not in schemas["train"]["default"]["model"]


# --- manifest and skill_info ------------------------------------------------------------------------------------------


def test_manifest_agrees_with_files_on_disk(schemas) -> None:
    manifest = json.loads((ROOT / "schemas/manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["automl_enabled"] is True
    assert manifest["skill"] == SKILL_INFO.skill_name and (ROOT / manifest["skill_info"]).is_file()
    assert list(manifest["actions"]) == sorted(ACTIONS)
    for action, entry in manifest["actions"].items():
        for key in ("path", "spec_template", "runner"):
            assert (ROOT / entry[key]).is_file(), entry[key]
        assert json.loads((ROOT / entry["path"]).read_text()) == schemas[action]
        for key in ("automl_default_parameters", "automl_disabled_parameters", "popular"):
            assert entry[key] == schemas[action][key], (action, key)
        assert entry["required_parameters"] == schemas[action]["x_required_parameters"]
        assert entry["data_source_keys"] == list(SKILL_INFO.data_sources[action])


def test_skill_info_yaml_round_trips() -> None:
    path = ROOT / "references/skill_info.yaml"
    assert yaml.safe_load(path.read_text()) == SKILL_INFO.model_dump(mode="json")
    assert load_skill_info(path) == SKILL_INFO


def test_skill_info_content() -> None:
    info = SKILL_INFO
    assert (info.name, info.network_arch, info.automl_enabled) == ("mal", "mal", True)
    assert (info.data_format, info.dataset_type) == ("default", "segmentation")
    assert info.metrics.monitoring_metric.model_dump() == {"name": "mIoU", "mode": "max"}
    assert (info.gpu_spec_key, info.node_spec_key, info.gpu_ids_spec_key) == (
        "train.num_gpus", "train.num_nodes", "train.gpu_ids")
    assert info.spec_params == {
        "train": {"results_dir": "output_dir", "train.resume_training_checkpoint_path": "resume_model",
                  "train.pretrained_model_path": "ptm_if_no_resume_model"},
        "evaluate": {"results_dir": "output_dir", "evaluate.checkpoint": "parent_model"},
        "inference": {"results_dir": "output_dir", "inference.checkpoint": "parent_model",
                      "inference.label_dump_path": "create_inference_result_file_mal"},
        "convert": {"results_dir": "output_dir"},
        "export": {"results_dir": "output_dir", "export.checkpoint": "parent_model"},
        "pretrain": {"results_dir": "output_dir", "pretrain.resume_training_checkpoint_path": "resume_model",
                     "pretrain.pretrained_model_path": "ptm_if_no_resume_model"},
    }
    short = info.spec_shorthand_keys
    assert short["num_epochs"] == "train.num_epochs" and short["learning_rate"] == "train.lr"
    assert short["arch"] == "model.arch" and short["crop_size"] == "dataset.crop_size"
    assert short["batch_size"] == short["train_batch_size"] == "train.batch_size"
    assert short["evaluate_batch_size"] == "evaluate.batch_size"
    assert short["inference_batch_size"] == "inference.batch_size"
    assert short["resume_checkpoint"] == "train.resume_training_checkpoint_path"
    assert info.multi_gpu.strategy == "ddp_find_unused_parameters_true" and info.multi_gpu.fsdp is False
    assert info.multi_gpu.multi_node_env == ["WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                                             "NUM_GPU_PER_NODE"]
    assert (info.hardware.min_gpus, info.hardware.recommended_gpus, info.hardware.min_gpu_memory_gb) == (1, 2, 24)
    assert info.hardware.cpu_arch in ARCHS
    assert info.actions["train"].outputs["results_dir"].files == [
        "model_epoch_<EEE>_step_<SSSSS>.pth", "mal_model_latest.pth"]
    assert info.actions["evaluate"].outputs["results_dir"].files == ["metrics.json"]
    assert info.actions["inference"].outputs["inference.label_dump_path"].type == "file"


def test_skill_info_data_sources_match_seed_table() -> None:
    rows = [
        (a, k, s.source, s.path, s.list) for a in sorted(SKILL_INFO.data_sources)
        for k, s in SKILL_INFO.data_sources[a].items() if a != "pretrain"  # ours, not in the seed's table
    ]
    pretrain = SKILL_INFO.data_sources["pretrain"]
    assert [(k, s.source, s.path, s.optional) for k, s in pretrain.items()] == [
        ("pretrain.img_dir", "train_datasets", "images.tar.gz", False),
        ("pretrain.ann_path", "train_datasets", "annotations.json", True)]
    assert rows == [
        ("evaluate", "dataset.val_img_dir", "eval_dataset", "images.tar.gz", False),
        ("evaluate", "dataset.val_ann_path", "eval_dataset", "annotations.json", False),
        ("inference", "inference.img_dir", "inference_dataset", "images.tar.gz", False),
        ("inference", "inference.ann_path", "inference_dataset", "annotations.json", False),
        ("train", "dataset.train_img_dir", "train_datasets", "images.tar.gz", False),
        ("train", "dataset.train_ann_path", "train_datasets", "annotations.json", False),
        ("train", "dataset.val_img_dir", "eval_dataset", "images.tar.gz", False),
        ("train", "dataset.val_ann_path", "eval_dataset", "annotations.json", False),
    ]
    for sources in SKILL_INFO.data_sources.values():
        for src in sources.values():
            assert src.runtime == ("extracted_folder" if src.path == "images.tar.gz" else "file")


def test_skill_info_keys_and_paths_exist(schemas) -> None:
    for action in ACTIONS:
        for key in [*SKILL_INFO.data_sources[action], *SKILL_INFO.spec_params[action],
                    *SKILL_INFO.actions[action].inputs, *SKILL_INFO.actions[action].outputs]:
            _prop(schemas[action], key)  # KeyError if the schema lacks it
            _get(_template(action), key)
        assert (ROOT / SKILL_INFO.spec_templates[action]).is_file()
        assert (ROOT / SKILL_INFO.actions[action].runner).is_file()
        assert (ROOT / SKILL_INFO.actions[action].schema_path).is_file()
        assert SKILL_INFO.actions[action].command == f"mal {action} -e {{config_path}}"
    leaves = set(leaf_fields())
    assert set(SKILL_INFO.spec_shorthand_keys.values()) <= leaves
    assert {k for _, k in SKILL_INFO.spec_keys()} <= leaves


def test_skill_info_rejects_a_spec_key_typo() -> None:
    data = SKILL_INFO.model_dump(mode="json")
    data["spec_params"]["evaluate"]["evaluate.checkpiont"] = "parent_model"
    with pytest.raises(ValidationError, match="evaluate.checkpiont"):
        SkillInfo.model_validate(data)
    data = SKILL_INFO.model_dump(mode="json")
    data["spec_shorthand_keys"]["lr"] = "train.learning_rate"
    with pytest.raises(ValidationError, match="train.learning_rate"):
        SkillInfo.model_validate(data)


def test_load_skill_info_errors_name_file_and_field(tmp_path) -> None:
    data = SKILL_INFO.model_dump(mode="json")
    data["automl_enabled"] = "maybe"
    bad = tmp_path / "skill_info.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(SkillInfoError) as exc:
        load_skill_info(bad)
    assert str(bad) in exc.value.message and exc.value.field == "automl_enabled"
    data = SKILL_INFO.model_dump(mode="json")
    data["data_sources"]["train"]["dataset.train_img_dir"]["runtime"] = "zip"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(SkillInfoError) as exc:
        load_skill_info(bad)
    assert exc.value.field == "data_sources.train.dataset.train_img_dir.runtime"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SkillInfoError, match="not valid YAML"):
        load_skill_info(bad)
    with pytest.raises(SkillInfoError, match="does not exist"):
        load_skill_info(tmp_path / "nope.yaml")


# --- skill.md ---------------------------------------------------------------------------------------------------


def _skill_md() -> tuple[dict[str, Any], str]:
    text = (ROOT / "skill.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "skill.md must start with YAML frontmatter"
    return yaml.safe_load(match.group(1)), text


def test_skill_md_frontmatter() -> None:
    front, text = _skill_md()
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", front["name"]) and len(front["name"]) <= 64
    assert front["name"] == SKILL_INFO.skill_name
    assert 0 < len(front["description"]) <= 1024 and "<" not in front["description"]
    assert "Use it" in front["description"]
    assert front["license"] == "Apache-2.0"
    assert front["metadata"]["version"] == mal_core.__version__ == SKILL_INFO.version
    assert len(front.get("compatibility", "")) <= 500
    assert len(text.splitlines()) < 500


def _doc_text(doc: str) -> str:
    return (ROOT / doc).read_text()


#: The budget of skill.md: 5,000 tokens at about four characters a token (no offline tokenizer is available).
SKILL_MD_MAX_CHARS = 20_000
_REFERENCE_LINK = re.compile(r"references/[A-Za-z0-9_.-]+\.md")


def _linked_references(text: str) -> list[str]:
    return sorted(set(_REFERENCE_LINK.findall(text)))


def test_skill_md_within_the_token_budget() -> None:
    _, text = _skill_md()
    assert len(text) <= SKILL_MD_MAX_CHARS, (
        f"skill.md has {len(text)} characters, over the budget of {SKILL_MD_MAX_CHARS} (5,000 tokens at 4 characters "
        "a token): move detail into a references/*.md file and link it with a line saying when to read it"
    )


def test_skill_md_reference_links_exist_and_every_reference_is_linked() -> None:
    _, text = _skill_md()
    linked = _linked_references(text)
    assert linked, "skill.md links no references/*.md"
    missing = [rel for rel in linked if not (ROOT / rel).is_file()]
    assert not missing, f"skill.md links references that do not exist: {missing}"
    on_disk = sorted(f"references/{p.name}" for p in (ROOT / "references").glob("*.md"))
    unlinked = sorted(set(on_disk) - set(linked))
    assert not unlinked, f"references/*.md not linked from skill.md: {unlinked}"
    assert set(DOCS) - {"skill.md"} <= set(linked)
    for rel in linked:  # each is listed with a line saying when to read it
        assert re.search(rf"^- `{re.escape(rel)}`: \S", text, re.MULTILINE), f"{rel} lacks its one-line description"


def test_every_block_is_rendered_in_exactly_one_document() -> None:
    placed = [name for blocks in DOCS.values() for name in blocks]
    assert sorted(placed) == sorted(BLOCKS)
    for doc in DOCS:
        text = _doc_text(doc)
        assert NOTICE in text, doc
        assert NOTICE in text[: text.index("<!-- BEGIN GENERATED")], f"{doc}: the notice must come before the blocks"


def test_docs_tables_match_a_fresh_render(schemas) -> None:
    blocks: dict[str, str] = {}
    for doc in DOCS:
        found = extract_blocks(_doc_text(doc), doc)
        assert found == render_blocks(build_schemas(), doc=doc), doc
        blocks.update(found)
    for action in ACTIONS:
        for key, src in SKILL_INFO.data_sources[action].items():
            assert f"| {action} | {key} | {src.source} | {src.path} | No |" in blocks["dataset_requirements"]
            assert f'"{key}": f"{{S3_' in blocks["spec_overrides"]
        for key, fn in SKILL_INFO.spec_params[action].items():
            assert f"| {action} | {key} | {fn} |" in blocks["inference_mappings"]
        assert f"| {action} | " in blocks["parent_jobs"]
    assert "| evaluate | train (checkpoint), export (`onnx_file`) | `evaluate.checkpoint` |" in blocks["parent_jobs"]
    assert ("| train | train (checkpoint), pretrain (`pretrained_model`), convert (`model_checkpoint`) | "
            "`train.pretrained_model_path`, `dataset.train_ann_path` (the parent's `artifacts.training_file`, when it "
            "has one)") in (
        blocks["parent_jobs"])
    for name in ("important_parameters", "parameter_details"):
        table = blocks[name]
        for key in IMPORTANT_PARAMETERS:
            assert f"`{key}`" in table
        assert "| `model.arch` | `vit-mae-base/16` |" in table
        assert all(f"`{arch}`" in table for arch in ARCHS)
        assert "| `train.lr` | `1e-6` | `1e-7` .. `0.001` (AutoML searches `1e-7` .. `1e-5`) | searched |" in table
        assert "| `dataset.crop_size` (alias `model.crop_size`) | `512` |" in table
        assert "`dataset.load_mask` (alias `model.load_mask`)" in table
    # skill.md shows the first sentence of each meaning, the reference the whole of it
    assert "| ViT variant of the image encoder. |" in blocks["important_parameters"]
    assert "vit-mae-nano/8 is a small CPU model" in blocks["parameter_details"]
    assert "vit-mae-nano/8 is a small CPU model" not in blocks["important_parameters"]
    assert "| `train.num_gpus` | Number of GPUs | `1` |" in blocks["multi_gpu"]
    assert "| `train.gpu_ids` | GPU ids | `[0]` |" in blocks["multi_gpu"]
    assert "ddp_find_unused_parameters_true" in blocks["multi_gpu"]
    for key in schemas["train"]["automl_default_parameters"]:
        assert f"| `{key}` |" in blocks["automl_parameters"]


def test_first_sentence() -> None:
    assert first_sentence("One. Two. Three.") == "One."
    assert first_sentence("Only one (x.y).") == "Only one (x.y)."


#: Facts of the seed skill that an agent needs before it picks an action: they stay in skill.md itself.
_SEED_FACTS_IN_SKILL_MD = (
    "train.pretrained_model_path", "ViT-MAE", "schemas/manifest.json", "automl_enabled", "tao-core",
    "turn off AutoML", "disable AutoML", "no HPO", "plain training",
    "AutoML is enabled but not runnable for this model until schemas are generated", "Ray Tune",
    "`segmentation`", "`default`", "`mIoU`", "mandatory for every action", "S3_TRAIN", "S3_EVAL", "Optional",
    "vit-mae-base/16", "`1e-6`", "train.warmup_epochs", "Lightning", "FSDP", "minimum 1, recommended 2",
    "24 GB", "A100", "vit-mae-nano/8", "CUDA out of memory", "512 -> 384 -> 256", "parent_job_id",
    "patch the generated runner", "mal_model_latest.pth", "python runners/<action>.py --spec", "mal <action> -e",
)
#: Seed facts moved to a reference (with the reference that holds them); skill.md links each of those references.
_SEED_FACTS_IN_REFERENCES = {
    "references/parameters.md": ("lr = lr * num_devices * batch_size", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
                                 "MASTER_PORT", "NUM_GPU_PER_NODE", "Lightning", "FSDP: not supported"),
    "references/parent_jobs.md": ("| inference | inference.label_dump_path | create_inference_result_file_mal |",
                                  "not in any platform config", "parent_job_id", "patch the generated runner"),
    "references/automl.md": ("automl_default_parameters", "automl_disabled_parameters", "option_weights",
                             "math_cond", "depends_on", "popular"),
    "references/schemas.md": ("spec_template_<action>.yaml", "top-level `default`", "python -m codegen"),
}


def test_skill_md_carries_the_seed_facts() -> None:
    _, text = _skill_md()
    for fact in _SEED_FACTS_IN_SKILL_MD:
        assert fact in text, fact
    for ref, facts in _SEED_FACTS_IN_REFERENCES.items():
        assert ref in _linked_references(text), f"skill.md must link {ref}"
        ref_text = _doc_text(ref)
        for fact in facts:
            assert fact in ref_text, f"{fact!r} not in {ref}"


def test_skill_md_marker_errors() -> None:
    _, text = _skill_md()
    schemas = build_schemas()
    with pytest.raises(CodegenError, match="missing blocks"):
        render_skill_md(re.sub(r"<!-- (BEGIN|END) GENERATED: hardware -->\n?", "", text), schemas)
    block = "<!-- BEGIN GENERATED: hardware -->\nx\n<!-- END GENERATED: hardware -->"
    with pytest.raises(CodegenError, match="twice"):
        render_skill_md(text + block + "\n", schemas)
    with pytest.raises(CodegenError, match="unbalanced"):
        render_skill_md(text + "<!-- BEGIN GENERATED: extra -->\n", schemas)
    with pytest.raises(CodegenError, match="notice"):
        render_skill_md(text.replace(NOTICE, ""), schemas)
    assert render_skill_md(text, schemas) == text
    ref = _doc_text("references/automl.md")
    with pytest.raises(CodegenError, match=r"references/automl.md: unknown generated blocks \['hardware'\]"):
        render_markdown(ref + block + "\n", schemas, "references/automl.md")
    with pytest.raises(CodegenError, match="not a generated document"):
        render_markdown(ref, schemas, "references/labelling.md")
    assert render_markdown(ref, schemas, "references/automl.md") == ref


# --- runners ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_runner_help_works_from_any_cwd(action, tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / f"runners/{action}.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"usage: mal {action}" in proc.stdout and "--spec" in proc.stdout


@pytest.mark.parametrize("action", ACTIONS)
def test_runner_imports_and_rejects_a_bad_spec(action, tmp_path, capsys) -> None:
    import importlib

    module = importlib.import_module(f"runners.{action}")
    assert module.ACTION == action and callable(module.main)
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  lrr: 1\n")
    assert module.main(["--spec", str(spec)]) == 2
    assert "train.lrr" in capsys.readouterr().err
