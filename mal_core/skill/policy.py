"""Per-run ``automl_policy`` resolution (flag > request text > auto) and the train route (AutoML or direct)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mal_core.config.actions import action_decl
from mal_core.config.skill_info import SkillInfo
from mal_core.errors import MalError

POLICIES = ("auto", "on", "off")

_AUTOML = r"(?:auto-?ml|hpo|hyper-?parameter\s+(?:search|tuning|optimi[sz]ation|sweep)s?|tuning|sweeps?)"
#: Request phrases that switch AutoML off for one run (checked before the "on" phrases).
OFF_PATTERNS: tuple[str, ...] = (
    rf"\b(?:turn|switch|shut)(?:ing)?\s+off\s+(?:the\s+)?{_AUTOML}",
    rf"\b{_AUTOML}\s+(?:off|disabled)\b",
    rf"\bdisabl(?:e|ing)\s+(?:the\s+)?{_AUTOML}",
    rf"\bno\s+{_AUTOML}",
    rf"\bwithout\s+(?:any\s+|an\s+|the\s+)?{_AUTOML}",
    rf"\b(?:skip|avoid)(?:ping)?\s+(?:the\s+)?{_AUTOML}",
    rf"\b(?:do\s*n[o']?t|never)\s+(?:use|run|do)\s+(?:any\s+)?{_AUTOML}",
    r"\bplain\s+training\b",
    r"\bdirect\s+training\b",
    r"\btrain\s+directly\b",
)
#: Request phrases that force AutoML on (fail instead of falling back to direct training).
ON_PATTERNS: tuple[str, ...] = (
    rf"\b(?:turn|switch)(?:ing)?\s+on\s+(?:the\s+)?{_AUTOML}",
    rf"\benabl(?:e|ing)\s+(?:the\s+)?{_AUTOML}",
    rf"\b(?:force|require)\s+(?:the\s+)?{_AUTOML}",
    rf"\b{_AUTOML}\s+on\b",
)


@dataclass(frozen=True)
class PolicyDecision:
    """The per-run policy and where it came from (``flag``, ``request`` or ``default``)."""

    policy: str
    source: str
    reason: str


@dataclass(frozen=True)
class Route:
    """How an action runs: ``automl`` or ``direct``, and why."""

    action: str
    route: str
    automl_policy: str
    policy_source: str
    reason: str
    automl_runnable: bool
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


class PolicyError(MalError):
    """AutoML was required but cannot run, or the policy value is invalid."""

    code = "automl_policy"


def policy_from_request(request: str | None) -> tuple[str | None, str | None]:
    """(policy, matched phrase) read from free text, or (None, None) when the text says nothing about AutoML."""
    if not request:
        return None, None
    text = " ".join(request.lower().split())
    for policy, patterns in (("off", OFF_PATTERNS), ("on", ON_PATTERNS)):
        for pattern in patterns:
            m = re.search(pattern, text)
            if m:
                return policy, m.group(0)
    return None, None


def resolve_policy(flag: str | None, request: str | None) -> PolicyDecision:
    """``--automl-policy`` wins, then a phrase in ``--request``, else ``auto``."""
    if flag is not None:
        if flag not in POLICIES:
            raise PolicyError(f"--automl-policy must be one of {list(POLICIES)}, got {flag!r}", field="automl_policy")
        return PolicyDecision(flag, "flag", f"--automl-policy {flag}")
    policy, phrase = policy_from_request(request)
    if policy is not None:
        return PolicyDecision(policy, "request", f"request says {phrase!r}")
    return PolicyDecision("auto", "default", "no policy given; default auto")


def automl_runnable(skill_root: Path) -> tuple[bool, str]:
    """Whether the packaged train schema and template exist and parse; the reason when not."""
    schema = skill_root / "schemas" / "train.schema.json"
    template = skill_root / "references" / "spec_template_train.yaml"
    for path, load in ((schema, json.loads), (template, yaml.safe_load)):
        if not path.is_file():
            return False, f"{path.relative_to(skill_root)} is missing"
        try:
            data = load(path.read_text(encoding="utf-8"))
        except (ValueError, yaml.YAMLError) as exc:
            return False, f"{path.relative_to(skill_root)} does not parse: {exc}"
        if not isinstance(data, dict):
            return False, f"{path.relative_to(skill_root)} does not hold a mapping"
    return True, "schemas/train.schema.json and references/spec_template_train.yaml are packaged"


def decide_route(action: str, decision: PolicyDecision, info: SkillInfo, skill_root: Path) -> Route:
    """Pick the route for ``action``; raise :class:`PolicyError` when ``on`` cannot be honoured."""
    base = {"action": action, "automl_policy": decision.policy, "policy_source": decision.source}
    if not action_decl(action).automl:
        return Route(route="direct", reason=f"{action} always runs directly ({decision.reason})",
                     automl_runnable=False, **base)
    if decision.policy == "off":
        return Route(route="direct", reason=f"AutoML off for this run: {decision.reason}", automl_runnable=False,
                     **base)
    if not info.automl_enabled:
        if decision.policy == "on":
            raise PolicyError("AutoML was requested but skill_info.yaml declares automl_enabled: false",
                              field="automl_policy", hint="use --automl-policy off")
        return Route(route="direct", reason="skill_info.yaml declares automl_enabled: false", automl_runnable=False,
                     **base)
    ok, why = automl_runnable(skill_root)
    if not ok:
        message = info.automl.not_runnable_message
        if decision.policy == "on":
            raise PolicyError(f"{message} ({why})", field="automl_policy",
                              hint="run `python -m codegen` to generate schemas/templates, or use --automl-policy off")
        return Route(route="direct", reason=f"{decision.reason}; {why}", automl_runnable=False, message=message,
                     **base)
    return Route(route="automl", reason=f"{decision.reason}; automl_enabled and {why}", automl_runnable=True, **base)
