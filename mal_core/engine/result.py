"""What every engine entry point returns (torch-free: the runner and its test fakes build it too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EngineResult:
    """One action's outcome. ``artifacts`` and ``metrics`` are reported as they are in the result JSON and the job
    record; ``warnings`` join the plan's warnings there; ``details`` (counts, timing) are for scripts only."""

    results_dir: str
    artifacts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """One-level view for scripts: results_dir, artifacts, details, metrics and warnings."""
        return {"results_dir": self.results_dir, **self.artifacts, **self.details, "metrics": self.metrics,
                "warnings": self.warnings}
