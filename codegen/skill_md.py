"""The generated tables of ``skill.md`` and of the ``references/*.md`` files it links: content between
``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->`` is replaced by a fresh render; everything
else is hand-written prose.

Every table is rendered from the dataclass metadata, the action table, the action schemas and ``SKILL_INFO``, so the
tables can't drift from what the runtime accepts. :data:`DOCS` says which blocks each document holds: each must appear
there exactly once; a missing, duplicated or unknown block fails, and so does a document without :data:`NOTICE`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from codegen import CodegenError
from codegen.manifest import runner_path, schema_path, template_path
from codegen.schema import Node, walk
from mal_core.config.actions import ACTIONS as ACTION_TABLE
from mal_core.config.experiment import KEY_ALIASES
from mal_core.config.skill_info import ACTIONS, SKILL_INFO, SkillInfo

#: The Markdown documents codegen fills, by skill-root-relative path, with the generated blocks each holds (in
#: reading order). ``skill.md`` keeps what an agent needs to pick and call an action; the references hold the detail.
DOCS: dict[str, tuple[str, ...]] = {
    "skill.md": ("actions", "parent_jobs", "training_requirements", "dataset_requirements", "spec_overrides",
                 "important_parameters", "hardware", "error_patterns"),
    "references/parameters.md": ("parameter_details", "multi_gpu"),
    "references/automl.md": ("automl_parameters",),
    "references/parent_jobs.md": ("inference_mappings",),
}

#: The comment every document of :data:`DOCS` must carry (near its top) so a reader knows which parts are generated.
NOTICE = (
    "<!-- The blocks between GENERATED markers are rendered by `python -m codegen` from mal_core/config (the "
    "dataclasses,\nactions.py and skill_info.py). Edit the Python source and re-run; hand edits inside a block are "
    "overwritten and\nfail `--check`. -->"
)

#: Parameters listed in the "Important Parameters" table, in this order (canonical keys).
IMPORTANT_PARAMETERS: tuple[str, ...] = (
    "model.arch",
    "train.pretrained_model_path",
    "train.lr",
    "train.wd",
    "train.warmup_epochs",
    "dataset.crop_size",
    "dataset.load_mask",
    "train.num_epochs",
    "train.time_budget_s",
    "train.batch_size",
)

#: Placeholder variable used in the spec-override examples for each data source.
SOURCE_PLACEHOLDERS: dict[str, str] = {
    "train_datasets": "S3_TRAIN",
    "eval_dataset": "S3_EVAL",
    "inference_dataset": "S3_EVAL",
}
PLACEHOLDER_VALUES: dict[str, str] = {"S3_TRAIN": "s3://bucket/data/train", "S3_EVAL": "s3://bucket/data/eval"}

_BLOCK_RE = re.compile(
    r"<!-- BEGIN GENERATED: (?P<name>[a-z_]+) -->\n(?P<body>.*?)<!-- END GENERATED: (?P=name) -->", re.DOTALL
)
_MARKER_RE = re.compile(r"<!-- (BEGIN|END) GENERATED: ([a-z_]+) -->")

_AUTOML_WORDS = {True: "searched", False: "off", None: "on request"}


def fmt_value(value: Any) -> str:
    """A default or option as it reads in YAML (``1e-6``, ``true``, ``null``, ``[0]``, ``""``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:
            mantissa, exp = text.split("e")
            text = f"{mantissa.removesuffix('.0')}e{int(exp)}"
        return text
    if isinstance(value, list):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    if value == "":
        return '""'
    return str(value)


def _code(value: Any) -> str:
    return f"`{fmt_value(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _nodes() -> dict[str, Node]:
    return {n.dotted: n for n in walk() if not n.is_section}


def _interval(lo: Any, hi: Any) -> str:
    return f"{_code(lo)} .. {_code(hi)}"


def _range(node: Node) -> str:
    meta = node.meta
    if meta.get("options") is not None:
        return ", ".join(_code(o) for o in meta["options"])
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None and hi is not None:
        searched = meta.get("automl_range")
        suffix = f" (AutoML searches {_interval(*searched)})" if searched else ""
        return _interval(lo, hi) + suffix
    if lo is not None:
        return f">= {_code(lo)}"
    if hi is not None:
        return f"<= {_code(hi)}"
    return "-"


def _key_cell(key: str) -> str:
    aliases = [a for a, c in KEY_ALIASES.items() if c == key]
    return f"`{key}`" + "".join(f" (alias `{a}`)" for a in aliases)


def block_training_requirements(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """Dataset type, formats, metric and AutoML enablement."""
    metric = info.metrics.monitoring_metric
    others = [m for m in info.metrics.available_metrics if m != metric.name]
    direction = "maximize" if metric.mode == "max" else "minimize"
    return "\n".join(
        [
            f"- Dataset type: `{info.dataset_type}`",
            f"- Formats: `{info.data_format}` (COCO instances JSON + image folder)",
            f"- Monitoring metric: `{metric.name}` ({direction}); also reported: "
            + ", ".join(f"`{m}`" for m in others),
            f"- AutoML enabled at the model layer: `{str(info.automl_enabled).lower()}` "
            "(`automl_enabled` in references/skill_info.yaml)",
        ]
    )


def block_actions(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """Per-action runner, CLI command, schema and template."""
    rows = [
        [a, f"`python {runner_path(a)}`", f"`{info.actions[a].command}`", f"`{schema_path(a)}`",
         f"`{template_path(a)}`"]
        for a in ACTIONS
    ]
    return _table(["Action", "Runner", "CLI", "Schema", "Spec template"], rows)


def block_dataset_requirements(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """Which spec key takes which data source, per action."""
    rows = [
        [action, key, src.source, src.path, "Yes" if src.list else "No"]
        for action in sorted(info.data_sources)
        for key, src in info.data_sources[action].items()
    ]
    return _table(["Action", "Spec Key", "Source", "Files", "List?"], rows)


def block_spec_overrides(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """Example ``spec_overrides`` per action with the mandatory data-source entries."""
    used = list(
        dict.fromkeys(SOURCE_PLACEHOLDERS[s.source] for a in ACTIONS for s in info.data_sources[a].values())
    )
    lines = ["```python"] + [f'{name} = "{PLACEHOLDER_VALUES[name]}"' for name in used] + ["```", ""]
    for action in ACTIONS:
        if not info.data_sources[action] and not info.example_spec_overrides[action]:
            decl = ACTION_TABLE[action]
            parent_keys = [decl.parent_key, *decl.parent_fills] if decl.parents else []
            lines += [f"{action}: no data source; pass `--parent-job-id` (fills {', '.join(parent_keys)}) or set "
                      "the key.", ""]
            continue
        lines += [f"{action} (mandatory data sources):", "", "```python", "{"]
        for key, value in info.example_spec_overrides[action].items():
            lines.append(f'    "{key}": {json.dumps(value)},')
        for key, src in info.data_sources[action].items():
            lines.append(f'    "{key}": f"{{{SOURCE_PLACEHOLDERS[src.source]}}}/{src.path}",')
        lines += ["}", "```", ""]
    return "\n".join(lines).rstrip("\n")


def first_sentence(text: str) -> str:
    """The first sentence of a parameter description (up to the first ``". "``), for the short table."""
    head, sep, _ = text.partition(". ")
    return head + "." if sep else text


def _parameter_rows(schemas: dict[str, dict[str, Any]], *, full: bool) -> list[list[str]]:
    nodes = _nodes()
    rows = []
    for key in IMPORTANT_PARAMETERS:
        if key not in nodes:
            raise CodegenError(f"IMPORTANT_PARAMETERS names unknown key {key!r}")
        node = nodes[key]
        default = schemas["train"]["default"]
        for part in key.split("."):
            default = default[part]
        meaning = node.meta["description"]
        rows.append(
            [
                _key_cell(key),
                _code(default),
                _range(node),
                _AUTOML_WORDS[node.meta.get("automl_enabled")],
                meaning if full else first_sentence(meaning),
            ]
        )
    return rows


def block_important_parameters(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """Key parameters with default, range/options, AutoML status and the first sentence of their meaning."""
    return _table(["Key", "Default", "Range / options", "AutoML", "Meaning"], _parameter_rows(schemas, full=False))


def block_parameter_details(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """The key parameters again, with their whole description."""
    return _table(["Key", "Default", "Range / options", "AutoML", "Meaning"], _parameter_rows(schemas, full=True))


def block_parent_jobs(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """Per action: which jobs ``--parent-job-id`` may name, what each hands on, and the spec key it fills."""
    rows = []
    for action in ACTIONS:
        decl = ACTION_TABLE[action]
        parents = []
        for parent in decl.parents:
            hands_on = ACTION_TABLE[parent].hands_on
            if hands_on is None:
                raise CodegenError(f"{action} names {parent!r} as a parent, but a {parent} job hands nothing on")
            what = f"`{hands_on.artifact}`" if hands_on.artifact else "checkpoint"
            parents.append(f"{parent} ({what})")
        fills = [f"`{decl.parent_key}`"] + [f"`{k}` (the parent's `{v}`, when it has one)"
                                            for k, v in decl.parent_fills.items()]
        rows.append([action, ", ".join(parents) or "-", ", ".join(fills) if decl.parents else "-"])
    return _table(["Action", "Parent job (what it hands on)", "Fills"], rows)


def block_automl_parameters(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """The train schema's default AutoML search space."""
    schema = schemas["train"]
    rows = []
    for key in schema["automl_default_parameters"]:
        sec, name = key.rsplit(".", 1)
        prop = schema
        for part in sec.split("."):
            prop = prop["properties"][part]
        prop = prop["properties"][name]
        node = _nodes()[key]
        cond = "-"
        if prop.get("math_cond"):
            cond = "`" + prop["math_cond"].replace("depends_on", prop.get("depends_on", "depends_on")) + "`"
        searched = node.meta.get("automl_range")
        rng = _interval(*searched) if searched else _range(node)
        rows.append([f"`{key}`", _code(prop["default"]), rng, cond])
    return _table(["Key", "Default", "Range / options", "Condition"], rows)


def block_multi_gpu(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """GPU/node spec keys plus the distributed-training facts."""
    nodes = _nodes()
    default = schemas["train"]["default"]
    rows = []
    for key in (info.gpu_spec_key, info.gpu_ids_spec_key, info.node_spec_key):
        value: Any = default
        for part in key.split("."):
            value = value[part]
        rows.append([f"`{key}`", nodes[key].meta["title"], _code(value)])
    mg = info.multi_gpu
    bullets = [
        f"- Launch: {mg.launch}.",
        f"- Strategy: `{mg.strategy}` for more than one device (`{mg.single_device_strategy}` for one).",
        "- FSDP: " + ("supported." if mg.fsdp else "not supported."),
        f"- LR auto-scaling: `{mg.lr_scaling}` (done by the trainer; do not pre-scale `train.lr`).",
        "- Multi-node env vars (set by the orchestrator): " + ", ".join(f"`{v}`" for v in mg.multi_node_env) + ".",
    ]
    return _table(["Spec Key", "Description", "Default"], rows) + "\n\n" + "\n".join(bullets)


def block_hardware(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """GPU count and memory needs, CPU support."""
    hw = info.hardware
    lines = [
        f"- GPUs: minimum {hw.min_gpus}, recommended {hw.recommended_gpus}.",
        f"- GPU memory: {hw.min_gpu_memory_gb} GB+ per GPU ({hw.recommended_gpu} recommended).",
    ]
    if hw.cpu_supported:
        lines.append(f"- CPU: supported (fp32, no CUDA needed) with `model.arch: {hw.cpu_arch}` and a small crop.")
    lines += [f"- {note}" for note in hw.notes]
    return "\n".join(lines)


def block_error_patterns(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """Known failures and fixes."""
    return "\n".join(
        f"- **{p.symptom}** (`{p.name}`): {p.fix} Keys: " + ", ".join(f"`{k}`" for k in p.spec_keys) + "."
        for p in info.error_patterns
    )


def block_inference_mappings(schemas: dict[str, dict[str, Any]], info: SkillInfo) -> str:
    """Parent-model / spec-param mappings from ``SKILL_INFO.spec_params``."""
    rows = [
        [action, key, fn, info.spec_param_functions[fn]]
        for action in sorted(info.spec_params)
        for key, fn in sorted(info.spec_params[action].items())
    ]
    return _table(["Action", "Spec Field", "Inference Function", "Meaning"], rows)


BLOCKS: dict[str, Callable[[dict[str, dict[str, Any]], SkillInfo], str]] = {
    "training_requirements": block_training_requirements,
    "actions": block_actions,
    "parent_jobs": block_parent_jobs,
    "dataset_requirements": block_dataset_requirements,
    "spec_overrides": block_spec_overrides,
    "important_parameters": block_important_parameters,
    "parameter_details": block_parameter_details,
    "automl_parameters": block_automl_parameters,
    "multi_gpu": block_multi_gpu,
    "hardware": block_hardware,
    "error_patterns": block_error_patterns,
    "inference_mappings": block_inference_mappings,
}


def render_blocks(schemas: dict[str, dict[str, Any]], info: SkillInfo = SKILL_INFO, doc: str = "skill.md"
                  ) -> dict[str, str]:
    """Fresh content of the generated blocks of document ``doc`` (a key of :data:`DOCS`), by block name (no
    markers, no trailing newline)."""
    return {name: BLOCKS[name](schemas, info) for name in _doc_blocks(doc)}


def _doc_blocks(doc: str) -> tuple[str, ...]:
    if doc not in DOCS:
        raise CodegenError(f"{doc} is not a generated document; expected one of {sorted(DOCS)}")
    return DOCS[doc]


def extract_blocks(text: str, doc: str = "skill.md") -> dict[str, str]:
    """Current content of the generated blocks of document ``doc``'s text (validates the markers and the notice)."""
    expected = _doc_blocks(doc)
    markers = _MARKER_RE.findall(text)
    found: dict[str, str] = {}
    for match in _BLOCK_RE.finditer(text):
        name = match.group("name")
        if name in found:
            raise CodegenError(f"{doc}: generated block {name!r} appears twice")
        found[name] = match.group("body").removesuffix("\n")
    if len(markers) != 2 * len(found):
        raise CodegenError(f"{doc}: unbalanced or malformed GENERATED markers")
    unknown = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    if unknown or missing:
        raise CodegenError(f"{doc}: unknown generated blocks {unknown}, missing blocks {missing}")
    if NOTICE not in text:
        raise CodegenError(f"{doc}: the notice saying which parts are generated is missing (codegen.skill_md.NOTICE)")
    return found


def render_markdown(text: str, schemas: dict[str, dict[str, Any]], doc: str, info: SkillInfo = SKILL_INFO) -> str:
    """``text`` (document ``doc``) with every generated block replaced by a fresh render; the prose is kept byte for
    byte."""
    extract_blocks(text, doc)
    blocks = render_blocks(schemas, info, doc)

    def _sub(match: re.Match[str]) -> str:
        name = match.group("name")
        return f"<!-- BEGIN GENERATED: {name} -->\n{blocks[name]}\n<!-- END GENERATED: {name} -->"

    out = _BLOCK_RE.sub(_sub, text)
    return out if out.endswith("\n") else out + "\n"


def render_skill_md(text: str, schemas: dict[str, dict[str, Any]], info: SkillInfo = SKILL_INFO) -> str:
    """:func:`render_markdown` for ``skill.md``."""
    return render_markdown(text, schemas, "skill.md", info)
