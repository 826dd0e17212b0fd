"""A spec resolved once per run: the canonical tree, its typed config and the keys set explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mal_core.config.experiment import ExperimentConfig
from mal_core.config.loader import parse_spec


@dataclass(frozen=True)
class ResolvedSpec:
    """``tree`` (what job records and dry runs print), ``cfg`` parsed from it, and ``explicit`` keys."""

    tree: dict[str, Any]
    cfg: ExperimentConfig
    explicit: frozenset[str]

    @classmethod
    def from_tree(cls, tree: dict[str, Any], explicit: set[str] | frozenset[str]) -> ResolvedSpec:
        """Parse ``tree`` (a canonical spec tree) into a resolved spec."""
        cfg, _ = parse_spec(tree)
        return cls(tree=tree, cfg=cfg, explicit=frozenset(explicit))
