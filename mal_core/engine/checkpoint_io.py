"""Finding a run's newest checkpoint for resume, and loading MAL checkpoints with a clear error for files of another
kind (plain torch: labelling jobs load checkpoints without importing Lightning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mal_core.checkpoint_files import LATEST_NAME, list_checkpoints
from mal_core.errors import CheckpointError
from mal_core.model.weights import torch_load


def find_resume_checkpoint(results_dir: str | Path) -> Path | None:
    """The newest checkpoint of a previous run in ``results_dir`` (``mal_model_latest.pth`` first), or None."""
    latest = Path(results_dir) / f"{LATEST_NAME}.pth"
    if latest.exists():
        return latest.resolve()
    ckpts = list_checkpoints(results_dir)
    return ckpts[-1][2] if ckpts else None


def load_mal_checkpoint(path: str | Path, field: str = "checkpoint") -> dict[str, Any]:
    """Load a MAL checkpoint (weights_only) and check it is one: a ``state_dict`` with student weights and the
    ``mal`` record (spec, categories, metrics)."""
    obj = torch_load(path)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(k.startswith("model.student.") for k in state):
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a MAL checkpoint (no student weights; top-level keys: {keys})", field=field,
            hint="pass a model_epoch_*.pth written by `mal train`; backbone weights go to train.pretrained_model_path",
        )
    meta = obj.get("mal")
    if not isinstance(meta, dict) or "spec" not in meta:
        raise CheckpointError(f"{str(path)!r} lacks the MAL record (spec/categories); it was not written by mal-skill",
                              field=field)
    return obj
