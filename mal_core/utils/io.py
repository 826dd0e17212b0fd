"""Atomic file writes: write to a temporary file in the same folder, then rename over the target."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mal_core.utils.safe_paths import (
    DISK_FULL_ERRNOS,
    DiskFullError,
    OutputPathError,
    check_guarded,
    disk_full_error,
    is_disk_full,
    open_no_follow,
)

log = logging.getLogger(__name__)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename the temp file to ``path``; never leaves a partial file nor
    its temp file.

    Below a job folder held by this run (:func:`mal_core.utils.safe_paths.guard`) no part of the path may be a
    symbolic link (:class:`~mal_core.utils.safe_paths.LinkInJobFolder`); a folder at ``path`` is an
    :class:`~mal_core.utils.safe_paths.OutputPathError` and a full disk or quota a
    :class:`~mal_core.utils.safe_paths.DiskFullError`, each naming the path (exit 2)."""
    target = Path(path)
    check_guarded(target)
    if target.is_dir() and not target.is_symlink():
        raise OutputPathError(f"cannot write {target}: it is an existing folder, expected a file (or nothing)",
                              field=None, hint=f"move the folder {target} away and run again")
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        write(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None and os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        full = is_disk_full(exc) if isinstance(exc, Exception) else None
        if full is not None and not isinstance(exc, DiskFullError):
            raise disk_full_error(target, full) from exc
        raise
    return target


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (created when missing) without following a link at it or, below a guarded job
    folder, on the way to it; a full disk is a :class:`~mal_core.utils.safe_paths.DiskFullError` naming it."""
    p = Path(path)
    check_guarded(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = open_no_follow(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        with os.fdopen(fd, "a") as fh:
            fh.write(text)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(p, exc) from exc
        raise


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


def _jsonl_lines(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """(line, record) of each JSON-object line and the number of lines dropped as unreadable, each logged."""
    out: list[tuple[str, dict[str, Any]]] = []
    dropped = 0
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            rec = None
        if not isinstance(rec, dict):
            dropped += 1
            where = "its last line" if i == len(lines) else f"line {i}"
            log.warning("%s: %s is not a complete JSON record (a run killed while writing it?); dropped", path,
                        where)
            continue
        out.append((line, rec))
    return out, dropped


def read_jsonl_records(path: str | Path) -> list[dict[str, Any]]:
    """The JSON-object lines of a history file (``[]`` when it is missing); a partial last line left by a kill
    mid-write, or any damaged line, is skipped with a warning naming the file."""
    path = Path(path)
    return [rec for _, rec in _jsonl_lines(path)[0]] if path.is_file() else []


def _epoch(rec: dict[str, Any]) -> int | None:
    value = rec.get("epoch")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def drop_history_from_epoch(path: str | Path, first_epoch: int) -> None:
    """Rewrite a JSON-lines history (one object with an ``epoch`` per line) without the lines of ``first_epoch`` and
    later, atomically; nothing happens when the file is missing or has no such line.

    A run writes an epoch's history line before that epoch's checkpoint, so after a kill between the two the resumed
    run repeats the epoch: its stale line is dropped here before the run writes it again. A kill while the line was
    being written leaves a partial last line: it is dropped too (with a warning), so the next line appended starts
    on a line of its own."""
    path = Path(path)
    if not path.is_file():
        return
    records, dropped = _jsonl_lines(path)
    kept = [line for line, rec in records if (epoch := _epoch(rec)) is not None and epoch < first_epoch]
    raw = path.read_bytes()
    if dropped or len(kept) != len(records) or (raw and not raw.endswith(b"\n")):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
