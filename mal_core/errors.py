"""Error types that carry the offending field or file, so the CLI and runners can report it and exit 2."""

from __future__ import annotations


class MalError(Exception):
    """Base class for errors the user can fix (bad spec, bad data, wrong checkpoint)."""

    code = "bad_input"

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.hint = hint

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
