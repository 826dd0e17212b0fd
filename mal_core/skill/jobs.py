"""Job folders ``<jobs_root>/<job_id>/`` and their ``job.json`` record (atomic writes, state transitions)."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from mal_core.errors import MalError
from mal_core.utils.io import atomic_write_json

JOB_FILE = "job.json"
SPEC_FILE = "spec.yaml"
LOG_DIR = "logs"
STATES = ("pending", "running", "success", "failure")
TERMINAL = ("success", "failure")
_TRANSITIONS = {"pending": {"running", "failure"}, "running": {"success", "failure"},
                "success": {"running"}, "failure": {"running"}}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class JobError(MalError):
    """A job id, folder or record is invalid."""

    code = "invalid_job"


def default_jobs_root(flag: str | None = None) -> Path:
    """``--jobs-root``, else ``$MAL_JOBS_ROOT``, else ``./mal_jobs``."""
    return Path(flag or os.environ.get("MAL_JOBS_ROOT") or "mal_jobs").absolute()


def new_job_id(action: str) -> str:
    """A fresh, sortable job id such as ``train-20250101-120000-1a2b3c``."""
    return f"{action}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def check_job_id(job_id: str, field: str = "job_id") -> str:
    """Reject ids that are not a single safe folder name."""
    if not _ID_RE.match(job_id) or job_id in (".", ".."):
        raise JobError(f"{field} {job_id!r} must be 1-128 characters of letters, digits, '.', '_' or '-'",
                       field=field)
    return job_id


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_job(job_dir: Path) -> dict[str, Any] | None:
    """The ``job.json`` of a job folder, or None when there is none."""
    path = job_dir / JOB_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise JobError(f"{path} is not valid JSON: {exc}", field="job_id") from exc
    return data if isinstance(data, dict) else None


class Job:
    """One job folder and its record; every change rewrites ``job.json`` atomically."""

    def __init__(self, jobs_root: Path, job_id: str, record: dict[str, Any]) -> None:
        self.jobs_root = jobs_root
        self.job_id = job_id
        self.dir = jobs_root / job_id
        self.record = record

    @property
    def results_dir(self) -> Path:
        """The action's results folder (the job folder itself)."""
        return self.dir

    @property
    def state(self) -> str:
        """Current state."""
        return str(self.record.get("status", "pending"))

    @classmethod
    def create(cls, jobs_root: Path, action: str, job_id: str | None = None, parent_id: str | None = None) -> Job:
        """Create (or reopen, for a resumed run of the same action) ``<jobs_root>/<job_id>``."""
        job_id = check_job_id(job_id or new_job_id(action))
        job_dir = jobs_root / job_id
        old = read_job(job_dir)
        if old is not None:
            if old.get("action") != action:
                raise JobError(f"job {job_id!r} exists and ran action {old.get('action')!r}, not {action!r}",
                               field="job_id", hint="pick another --job-id")
            old.setdefault("attempts", 1)
            old["attempts"] += 1
            old["parent_id"] = parent_id or old.get("parent_id")
            job = cls(jobs_root, job_id, old)
            job.transition("pending", note="re-run")
            return job
        record = {"job_id": job_id, "action": action, "parent_id": parent_id, "status": "pending",
                  "created": _now(), "attempts": 1, "transitions": [], "route": None, "results_dir": str(job_dir),
                  "spec_path": None, "artifacts": {}, "metrics": {}, "error": None}
        job = cls(jobs_root, job_id, record)
        job.dir.mkdir(parents=True, exist_ok=True)
        (job.dir / LOG_DIR).mkdir(exist_ok=True)
        record["transitions"].append({"state": "pending", "time": _now()})
        job.save()
        return job

    def save(self) -> None:
        """Write ``job.json`` atomically."""
        self.record["updated"] = _now()
        atomic_write_json(self.dir / JOB_FILE, self.record)

    def transition(self, state: str, note: str | None = None) -> None:
        """Move to ``state`` (pending -> running -> success|failure; a terminal job may be re-run)."""
        cur = self.state
        if state != cur and state not in _TRANSITIONS.get(cur, set()) and state != "pending":
            raise JobError(f"job {self.job_id}: cannot go from {cur} to {state}", field="job_id")
        self.record["status"] = state
        entry = {"state": state, "time": _now()}
        if note:
            entry["note"] = note
        self.record.setdefault("transitions", []).append(entry)
        self.save()

    def update(self, **fields: Any) -> None:
        """Set top-level record fields and save."""
        self.record.update(fields)
        self.save()

    def finish(self, ok: bool, *, error: dict[str, Any] | None = None, **fields: Any) -> None:
        """Terminal transition with the final artifacts / metrics / error."""
        self.record.update(fields)
        self.record["error"] = error
        self.transition("success" if ok else "failure")

    def log_handler(self) -> logging.Handler:
        """A file handler for ``logs/<action>.log``."""
        (self.dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.dir / LOG_DIR / f"{self.record['action']}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        return handler
