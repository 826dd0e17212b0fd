"""The checkpoint and validation-history format, importable without torch or Lightning: file names, the record a
checkpoint carries, the history file and how checkpoints are ranked by it, and the Hugging Face folder check. The
engine writes these files and the skill runtime (dry runs, preflight, parent jobs) reads them, both from here."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from mal_core.config.archs import hf_config_mismatches
from mal_core.errors import CheckpointError

LATEST_NAME = "mal_model_latest"
#: Version of the ``mal`` record (spec, categories, metrics) written into every training checkpoint.
CHECKPOINT_FORMAT = 1
#: One JSON line per validation of a train run (epoch, step and the metrics).
HISTORY_FILE = "validation_history.jsonl"
#: The validation metric checkpoints are ranked by.
METRIC = "mIoU"
CKPT_PATTERN = re.compile(r"^model_epoch_(\d+)_step_(\d+)\.pth$")


def list_checkpoints(folder: str | Path) -> list[tuple[int, int, Path]]:
    """(epoch, step, path) of the numbered ``model_epoch_<EEE>_step_<SSSSS>.pth`` regular files directly in
    ``folder``, oldest first (links such as ``mal_model_latest.pth`` and other files are ignored)."""
    d = Path(folder)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = CKPT_PATTERN.match(p.name)
        if m and p.is_file() and not p.is_symlink():
            found.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(found)


def check_hf_folder(folder: str | Path, arch: str, field: str, *, required: bool = True) -> None:
    """:class:`CheckpointError` naming ``field`` when the ``config.json`` of the Hugging Face folder ``folder`` is
    unreadable or describes another architecture than ``arch``, or (``required``) is missing."""
    p = Path(folder)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        if required:
            raise CheckpointError(f"{field} {str(p)!r} is a folder but has no config.json (not a Hugging Face model "
                                  "folder)", field=field)
        return
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{field}: {str(cfg_file)!r} is not readable JSON: {exc}", field=field) from exc
    bad = hf_config_mismatches(config if isinstance(config, dict) else {}, arch)
    if bad:
        raise CheckpointError(f"{field} {str(p)!r} holds weights of another architecture than model.arch={arch!r} "
                              f"({'; '.join(bad)})", field=field,
                              hint="set model.arch to the architecture the weights were trained (pretrained) for")


def read_history(folder: str | Path) -> list[dict[str, Any]]:
    """Validation records of a train results folder (:data:`HISTORY_FILE`); lines that are not a JSON record with a
    ``step`` (such as the partial last line of a run killed mid-write) are skipped."""
    path = Path(folder) / HISTORY_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def checkpoint_metric(epoch: int, step: int, path: Path, history: list[dict[str, Any]]) -> float | None:
    """:data:`METRIC` of the last validation before a checkpoint: from the history, else from the checkpoint's
    record (read with torch, lazily)."""
    before = [r for r in history if int(r.get("step", -1)) <= step]
    if before:
        return _finite(max(before, key=lambda r: (int(r["step"]), int(r.get("epoch", 0)))).get(METRIC))
    if history:
        return None
    from mal_core.model.weights import torch_load  # lazy: torch

    try:
        obj = torch_load(path)
    except Exception:  # an unreadable file simply has no metric
        return None
    metrics = obj.get("mal", {}).get("metrics", {}) if isinstance(obj, dict) else {}
    return _finite(metrics.get(METRIC)) if isinstance(metrics, dict) else None


def best_checkpoint(folder: str | Path) -> str | None:
    """Best-by-:data:`METRIC` checkpoint path of a train results folder (the latest when none has a metric), or
    None when it holds none."""
    ckpts = list_checkpoints(folder)
    if not ckpts:
        return None
    history = read_history(folder)
    scored = [(checkpoint_metric(e, s, p, history), s, p) for e, s, p in ckpts]
    finite = [t for t in scored if t[0] is not None]
    return str(max(finite, key=lambda t: (t[0], t[1]))[2] if finite else ckpts[-1][2])
