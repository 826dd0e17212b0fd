"""Apply skill_info ``spec_params`` (output_dir, parent_model, create_inference_result_file_mal, resume_model,
ptm_if_no_resume_model) to a spec tree; explicitly given spec values always win."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mal_core.checkpoint_files import list_checkpoints
from mal_core.config.actions import action_decl
from mal_core.config.loader import get_dotted, set_dotted
from mal_core.config.skill_info import SkillInfo
from mal_core.errors import MalError
from mal_core.skill.parents import ParentCheckpoint

INFERENCE_FILE = "inference.json"


class MappingError(MalError):
    """A spec_params mapping cannot be applied (e.g. parent_model without a parent job)."""

    code = "missing_parent"


def apply_mappings(info: SkillInfo, action: str, tree: dict[str, Any], explicit: set[str], results_dir: Path,
                   parent: ParentCheckpoint | None) -> dict[str, dict[str, Any]]:
    """Fill mapped keys of ``tree`` in place; returns ``{key: {function, value, applied, reason}}``."""
    resume = list_checkpoints(results_dir)
    resume_path = str(resume[-1][2]) if resume else None

    def parent_model() -> tuple[Any, str]:
        if parent is None:
            return None, "no --parent-job-id"
        return parent.path, f"{parent.method} checkpoint of parent job {parent.job_id}"

    def label_file() -> tuple[Any, str]:
        # the label file goes where the action writes: inference.results_dir, else results_dir (set just before)
        out_dir = action_decl(action).results_dir(tree) or results_dir
        return str(Path(out_dir) / INFERENCE_FILE), "inference JSON in the results folder"

    functions: dict[str, Callable[[], tuple[Any, str]]] = {
        "output_dir": lambda: (str(results_dir), "job results folder"),
        "create_inference_result_file_mal": label_file,
        "parent_model": parent_model,
        "resume_model": lambda: (resume_path, "newest checkpoint of this job" if resume_path else "nothing to resume"),
        "ptm_if_no_resume_model": lambda: (
            (None, "resuming; pretrained weights are ignored") if resume_path
            else (None, "no pretrained-model registry; the spec value is kept")),
    }
    report: dict[str, dict[str, Any]] = {}
    for key, fn in info.spec_params.get(action, {}).items():
        current = get_dotted(tree, key)
        if key in explicit and current not in (None, ""):
            report[key] = {"function": fn, "value": current, "applied": False, "reason": "explicit spec value wins"}
            continue
        if fn not in functions:
            report[key] = {"function": fn, "value": current, "applied": False, "reason": "unknown function"}
            continue
        value, reason = functions[fn]()
        if value is None:
            if fn == "parent_model" and current in (None, ""):
                raise MappingError(f"{key} is needed for {action}: pass --parent-job-id (the train job) or set {key}",
                                   field=key, hint="e.g. --parent-job-id train-20250101-120000-1a2b3c")
            report[key] = {"function": fn, "value": current, "applied": False, "reason": reason}
            continue
        set_dotted(tree, key, value)
        report[key] = {"function": fn, "value": value, "applied": True, "reason": reason}
    return report
