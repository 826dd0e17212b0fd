"""``SKILL_INFO`` (declared in ``mal_core/config/skill_info.py``) -> ``references/skill_info.yaml``."""

from __future__ import annotations

import yaml

from codegen import CodegenError, header_text
from mal_core.config.skill_info import SKILL_INFO, SkillInfo


def render_skill_info(info: SkillInfo = SKILL_INFO) -> str:
    """YAML text of the skill info, with a generated header; round-trips through ``load_skill_info``."""
    for action, path in info.spec_templates.items():
        if path != f"references/spec_template_{action}.yaml":
            raise CodegenError(f"spec_templates.{action} must be references/spec_template_{action}.yaml")
    data = info.model_dump(mode="json")
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)
    return f"# {header_text('mal_core/config/skill_info.py')}\n{body}"
