"""Error types that carry the offending field or file, so the CLI and runners can report it and exit 2."""

from __future__ import annotations

import json

#: Note added to a :class:`MalError` that carries a field or hint: it travels in the formatted traceback, so an error
#: re-raised from its text (torch's DataLoader workers do that) gets its field and hint back.
_NOTE = "mal-error-details: "
_WORKER_HEAD = "Caught "
_WORKER_TRACEBACK = "\nOriginal Traceback"


def _unwrap(cls: type, text: str) -> tuple[str, str | None, str | None]:
    """(message, field, hint) of a :class:`MalError` from the text torch re-raises a DataLoader worker's exception
    with (``Caught DataError in DataLoader worker process 0. Original Traceback ...`` then the formatted
    exception): the exception's own message and details note, without the worker's traceback."""
    prefix = f"{cls.__module__}.{cls.__qualname__}: "
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    if not starts:
        return text, None, None
    body = [lines[starts[-1]][len(prefix):]]
    field = hint = None
    for line in lines[starts[-1] + 1:]:
        if line.startswith(_NOTE):
            try:
                details = json.loads(line[len(_NOTE):])
            except ValueError:
                details = {}
            field, hint = details.get("field"), details.get("hint")
            break
        body.append(line)
    where = lines[0][len(_WORKER_HEAD):].split(" in ", 1)[-1].rstrip(".")
    return f"{chr(10).join(body).strip()} (raised in {where})", field, hint


class MalError(Exception):
    """Base class for errors the user can fix (bad spec, bad data, wrong checkpoint)."""

    code = "bad_input"

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        if isinstance(message, str) and message.startswith(_WORKER_HEAD) and _WORKER_TRACEBACK in message:
            message, field, hint = _unwrap(type(self), message)  # re-raised from a DataLoader worker
        super().__init__(message)
        self.message = message
        self.field = field
        self.hint = hint
        if (field is not None or hint is not None) and hasattr(self, "add_note"):  # Python >= 3.11
            self.add_note(_NOTE + json.dumps({"field": field, "hint": hint}))

    def to_dict(self) -> dict:
        """JSON-friendly form: code, message, field, hint."""
        return {"code": self.code, "message": self.message, "field": self.field, "hint": self.hint}


class SpecError(MalError):
    """A spec key, value or combination is invalid."""

    code = "invalid_spec"


class DataError(MalError):
    """An annotation file, image or dataset content is invalid."""

    code = "invalid_data"


class CheckpointError(MalError):
    """A checkpoint or weights file is missing, of the wrong kind, or does not fit the model."""

    code = "invalid_checkpoint"
