"""Field helper that attaches schema / AutoML metadata to config dataclass fields.

Every parameter of the experiment spec is declared once, with :func:`param`, and the metadata it stores is what
codegen turns into JSON schemas, templates and skill.md tables and what the spec loader uses for validation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

#: Metadata keys understood by codegen and the spec loader.
META_KEYS = (
    "title",
    "description",
    "minimum",
    "maximum",
    "options",
    "option_weights",
    "automl_enabled",
    "automl_range",
    "popular",
    "required",
    "math_cond",
    "depends_on",
    "parent_param",
    "automl_reason",
    "examples",
)


def param(
    default: Any,
    *,
    title: str,
    description: str,
    minimum: float | None = None,
    maximum: float | None = None,
    options: Sequence[Any] | None = None,
    option_weights: Sequence[float] | None = None,
    automl_enabled: bool | None = None,
    automl_reason: str = "",
    automl_range: tuple[float, float] | None = None,
    popular: bool = False,
    required: bool = False,
    math_cond: str | None = None,
    depends_on: str | None = None,
    parent_param: bool = False,
    examples: Sequence[Any] | None = None,
) -> Any:
    """Declare a spec parameter with its default and metadata.

    ``automl_enabled``: True = searched by default, False = never searched unless requested, None = neutral
    (searchable only when requested). ``minimum``/``maximum`` are inclusive hard bounds checked on every spec.
    ``automl_range`` is the default AutoML search interval when it is narrower than the hard bounds (the learning
    rate: fine-tuning needs 1e-7..1e-5, training from scratch needs more).
    """
    if automl_range is not None:
        lo, hi = automl_range
        if not (lo <= hi and (minimum is None or lo >= minimum) and (maximum is None or hi <= maximum)):
            raise ValueError(f"automl_range {automl_range} of {title!r} must be inside [{minimum}, {maximum}]")
    if option_weights is not None and (options is None or len(option_weights) != len(options)):
        raise ValueError(f"option_weights for {title!r} must align with options")
    meta = {
        "title": title,
        "description": description,
        "minimum": minimum,
        "maximum": maximum,
        "options": list(options) if options is not None else None,
        "option_weights": list(option_weights) if option_weights is not None else None,
        "automl_enabled": automl_enabled,
        "automl_reason": automl_reason,
        "automl_range": list(automl_range) if automl_range is not None else None,
        "popular": popular,
        "required": required,
        "math_cond": math_cond,
        "depends_on": depends_on,
        "parent_param": parent_param,
        "examples": list(examples) if examples is not None else None,
    }
    if isinstance(default, (list, dict)):
        snapshot = list(default) if isinstance(default, list) else dict(default)
        return dataclasses.field(default_factory=lambda: type(snapshot)(snapshot), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(factory: type, *, title: str, description: str) -> Any:
    """Declare a nested config section (a dataclass) with a display name and description."""
    meta = {"title": title, "description": description, "section": True}
    return dataclasses.field(default_factory=factory, metadata=meta)
