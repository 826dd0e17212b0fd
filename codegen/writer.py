"""Render every output to ``{relative path: text}``, then write it or compare it with the files on disk.

The repository root is a parameter everywhere (default :data:`codegen.REPO_ROOT`), so tests can target a copy.
Only the Markdown documents of :data:`codegen.skill_md.DOCS` (``skill.md`` and the ``references/*.md`` files holding
generated tables) are read from the root: their prose is hand-written; everything else comes from Python.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codegen import REPO_ROOT, CodegenError
from codegen.manifest import build_manifest, runner_path, schema_path, template_path
from codegen.runners import render_runner
from codegen.schema import build_schemas
from codegen.skill_info_yaml import render_skill_info
from codegen.skill_md import DOCS, render_markdown
from codegen.templates import render_template

SKILL_MD = "skill.md"
MANIFEST = "schemas/manifest.json"
SKILL_INFO_YAML = "references/skill_info.yaml"


def dump_json(data: Any) -> str:
    """Deterministic JSON text: 2-space indent, sorted keys, no NaN/Infinity, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def render_all(root: Path | str = REPO_ROOT) -> dict[str, str]:
    """Every generated file's text by POSIX path relative to ``root``; the documents of ``DOCS`` must exist there."""
    root = Path(root)
    schemas = build_schemas()
    out: dict[str, str] = {}
    for action, schema in schemas.items():
        out[schema_path(action)] = dump_json(schema)
        out[template_path(action)] = render_template(action, schema)
        out[runner_path(action)] = render_runner(action)
    out[MANIFEST] = dump_json(build_manifest(schemas))
    out[SKILL_INFO_YAML] = render_skill_info()
    for doc in DOCS:
        md = root / doc
        if not md.is_file():
            raise CodegenError(f"{md} is missing: {doc} holds hand-written prose and cannot be generated from scratch")
        out[doc] = render_markdown(md.read_text(encoding="utf-8"), schemas, doc)
    return dict(sorted(out.items()))


def stale_files(outputs: dict[str, str], root: Path | str = REPO_ROOT) -> list[tuple[str, str]]:
    """``(status, path)`` for each output that is ``missing`` on disk or ``stale`` (differs byte for byte)."""
    root = Path(root)
    problems: list[tuple[str, str]] = []
    for rel, text in outputs.items():
        path = root / rel
        if not path.is_file():
            problems.append(("missing", rel))
        elif path.read_bytes() != text.encode("utf-8"):
            problems.append(("stale", rel))
    return problems


def write_outputs(outputs: dict[str, str], root: Path | str = REPO_ROOT) -> list[str]:
    """Write the outputs that differ from disk; return the paths written (a second run returns ``[]``)."""
    root = Path(root)
    written: list[str] = []
    for _status, rel in stale_files(outputs, root):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".codegen-tmp")
        tmp.write_bytes(outputs[rel].encode("utf-8"))
        tmp.replace(path)
        written.append(rel)
    return written
