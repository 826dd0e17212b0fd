"""``schemas/manifest.json``: the actions, where their schema/template/runner live, and their AutoML lists."""

from __future__ import annotations

from typing import Any

from codegen import SCHEMA_VERSION, header_text
from mal_core.config.skill_info import SKILL_INFO

SKILL_INFO_PATH = "references/skill_info.yaml"


def schema_path(action: str) -> str:
    """Skill-root-relative path of an action's schema."""
    return f"schemas/{action}.schema.json"


def template_path(action: str) -> str:
    """Skill-root-relative path of an action's spec template."""
    return f"references/spec_template_{action}.yaml"


def runner_path(action: str) -> str:
    """Skill-root-relative path of an action's runner script."""
    return f"runners/{action}.py"


def build_manifest(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Manifest dict for the given ``{action: schema}``."""
    actions: dict[str, Any] = {}
    for action, schema in schemas.items():
        actions[action] = {
            "path": schema_path(action),
            "spec_template": template_path(action),
            "runner": runner_path(action),
            "command": SKILL_INFO.actions[action].command,
            "schema_action": action,
            "automl_default_parameters": list(schema["automl_default_parameters"]),
            "automl_disabled_parameters": list(schema["automl_disabled_parameters"]),
            "popular": schema["popular"],
            "required_parameters": list(schema["x_required_parameters"]),
            "data_source_keys": list(SKILL_INFO.data_sources[action]),
        }
    return {
        "$comment": header_text("mal_core/config"),
        "schema_version": SCHEMA_VERSION,
        "skill": SKILL_INFO.skill_name,
        "model": SKILL_INFO.name,
        "network_arch": SKILL_INFO.network_arch,
        "version": SKILL_INFO.version,
        "automl_enabled": SKILL_INFO.automl_enabled,
        "skill_info": SKILL_INFO_PATH,
        "failures": {},
        "actions": actions,
    }
