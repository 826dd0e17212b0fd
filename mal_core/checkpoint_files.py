"""Checkpoint file names and the Hugging Face folder check, importable without torch or Lightning (the runners' dry
runs and preflight use them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mal_core.config.archs import hf_config_mismatches
from mal_core.errors import CheckpointError

LATEST_NAME = "mal_model_latest"
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
