"""Checkpoint file names, importable without torch or Lightning (the runners' dry runs use it)."""

from __future__ import annotations

import re
from pathlib import Path

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
