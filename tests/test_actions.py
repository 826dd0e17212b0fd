"""The action table: every entry is consistent, and an action outside it cannot be routed."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from mal_core.config import ExperimentConfig, check_for_action, leaf_fields
from mal_core.config.actions import ACTIONS, action_decl
from mal_core.errors import SpecError
from mal_core.skill.policy import PolicyDecision, decide_route


def _defined(ref: str) -> bool:
    """Whether ``"module:function"`` names a top-level function (read from source: importing an engine would pull in
    torch and Lightning here)."""
    module, _, name = ref.partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, ref
    tree = ast.parse(Path(spec.origin).read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


@pytest.mark.parametrize("name", list(ACTIONS))
def test_each_entry_is_consistent(name: str) -> None:
    decl = ACTIONS[name]
    leaves = set(leaf_fields())
    assert decl.name == name and hasattr(ExperimentConfig(), decl.section)
    assert _defined(decl.entry) and (not decl.preflight or _defined(decl.preflight))
    assert {n.key for n in decl.required} <= leaves and decl.results_key in leaves
    assert set(decl.inputs) | set(decl.outputs) <= leaves | {"results_dir"}
    assert set(decl.data_sources) <= set(decl.inputs)
    for parent in decl.parents:
        assert ACTIONS[parent].hands_on is not None, f"{name} takes {parent} jobs, which hand nothing on"
    assert not decl.parents or decl.parent_key in decl.inputs


def test_an_unknown_action_is_a_spec_error_naming_action() -> None:
    with pytest.raises(SpecError) as exc:
        action_decl("label")
    assert exc.value.field == "action"
    with pytest.raises(SpecError) as exc:
        check_for_action(ExperimentConfig(), "label")
    assert exc.value.field == "action"
    with pytest.raises(SpecError):
        decide_route("label", PolicyDecision("auto", "default", "no policy"), None, None)  # type: ignore[arg-type]
