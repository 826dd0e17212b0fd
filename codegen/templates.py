"""Schema ``default`` -> ``references/spec_template_<action>.yaml`` (a complete spec to copy and fill in)."""

from __future__ import annotations

from typing import Any

import yaml

from codegen import CodegenError, header_text
from mal_core.config.skill_info import SKILL_INFO


def _lookup(tree: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def render_template(action: str, schema: dict[str, Any]) -> str:
    """YAML spec template of ``action`` from its schema's ``default``; data-source keys must be present."""
    default = schema["default"]
    sources = SKILL_INFO.data_sources[action]
    missing = [key for key in sources if not _lookup(default, key)[0]]
    if missing:
        raise CodegenError(f"spec template of {action} lacks data-source key(s) {missing}")
    lines = [
        f"# {header_text('mal_core/config/experiment.py')}",
        f"# Spec template of `mal {action}` (the default of schemas/{action}.schema.json).",
        "# Fill the data-source keys: " + ", ".join(sources) + ".",
    ]
    required = schema.get("x_required_parameters", [])
    if required:
        lines.append("# Also set: " + ", ".join(required) + ".")
    body = yaml.safe_dump(default, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)
    return "\n".join(lines) + "\n" + body
