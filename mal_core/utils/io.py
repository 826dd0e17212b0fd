"""Atomic file writes: write to a temporary file in the same folder, then rename over the target."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename the temp file to ``path``; never leaves a partial file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""

    def _write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    return atomic_write(path, _write)


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats (NaN, inf) by None so the result is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically write strict JSON (NaN/inf become null; trailing newline)."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")


def drop_history_from_epoch(path: str | Path, first_epoch: int) -> None:
    """Rewrite a JSON-lines history (one object with an ``epoch`` per line) without the lines of ``first_epoch`` and
    later, atomically; nothing happens when the file is missing or has no such line.

    A run writes an epoch's history line before that epoch's checkpoint, so after a kill between the two the resumed
    run repeats the epoch: its stale line is dropped here before the run writes it again."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["epoch"] < first_epoch]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
