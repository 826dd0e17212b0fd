"""A reviewer's decisions file: what the review page downloads and what ``convert`` (and training) read.

The file is JSON::

    {"kind": "mal-review-decisions", "version": 1, "labels": "<name of the labelled COCO file>",
     "decisions": [{"id": <annotation id>, "decision": "accepted" | "rejected" | "needs_fixing"}, ...]}

A label with no entry is unreviewed. Each annotation id appears at most once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mal_core.errors import DataError

DECISIONS_KIND = "mal-review-decisions"
DECISIONS_VERSION = 1
ACCEPTED, REJECTED, NEEDS_FIXING = "accepted", "rejected", "needs_fixing"
#: Every decision a reviewer can make, in the order the review page shows its buttons.
DECISIONS = (ACCEPTED, REJECTED, NEEDS_FIXING)
#: The file name the review page downloads.
DECISIONS_FILE = "decisions.json"


def decisions_document(labels: str, decisions: dict[int, str]) -> dict[str, Any]:
    """The JSON document for ``decisions`` (annotation id -> decision) made on the labels of file ``labels``."""
    return {"kind": DECISIONS_KIND, "version": DECISIONS_VERSION, "labels": labels,
            "decisions": [{"id": i, "decision": d} for i, d in sorted(decisions.items())]}


def parse_decisions(doc: Any, where: str, field: str | None = None) -> dict[int, str]:
    """Annotation id -> decision from a decisions document; :class:`DataError` naming ``where`` (and ``field``)
    and what was expected when it is not one."""
    def bad(what: str) -> DataError:
        return DataError(f"{where}: {what}", field=field)

    if not isinstance(doc, dict) or doc.get("kind") != DECISIONS_KIND:
        raise bad(f'not a decisions file: expected a JSON object with "kind": "{DECISIONS_KIND}"')
    if doc.get("version") != DECISIONS_VERSION:
        raise bad(f"decisions file version {doc.get('version')!r}; expected {DECISIONS_VERSION}")
    entries = doc.get("decisions")
    if not isinstance(entries, list):
        raise bad('"decisions" must be a list of {"id": <annotation id>, "decision": ...}')
    out: dict[int, str] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or isinstance(entry.get("id"), bool) or not isinstance(entry.get("id"), int):
            raise bad(f"decisions[{n}] must be an object with an integer annotation \"id\"")
        if entry.get("decision") not in DECISIONS:
            raise bad(f"decisions[{n}] (annotation {entry['id']}) has decision {entry.get('decision')!r}; "
                      f"expected one of {list(DECISIONS)}")
        if entry["id"] in out:
            raise bad(f"annotation {entry['id']} has more than one decision")
        out[entry["id"]] = entry["decision"]
    return out


def read_decisions(path: str | Path, field: str | None = None) -> dict[int, str]:
    """Read and check a decisions file (see :func:`parse_decisions`)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the decisions file as JSON ({exc})", field=field) from None
    return parse_decisions(doc, str(path), field)
