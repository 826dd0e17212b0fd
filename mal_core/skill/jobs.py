"""Job folders ``<jobs_root>/<job_id>/`` and their ``job.json`` record (atomic writes, state transitions).

One run at a time per job: a run holds ``job.lock`` (an exclusive ``flock`` on a file naming its pid and host) from
the moment it opens the job until it ends; a second run on the same job id is refused. A lock left by a process that
no longer exists on this host is taken over.

Each run of a job id is one attempt. When an evaluate or inference job is run again, everything the earlier attempt
wrote (outputs, ``spec.yaml``, logs) is moved to ``previous_attempts/<n>/`` before the new attempt starts, and its
record (status, artifacts, metrics, error) moves to ``previous_attempts`` in ``job.json``; so what sits at the top
of the folder, and what ``job.json`` lists, always belongs to the current attempt. A train job keeps its files in
place (a re-run resumes from its checkpoints); only its record is archived.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from mal_core.config.actions import action_decl
from mal_core.errors import MalError
from mal_core.utils.io import atomic_write_json, json_safe
from mal_core.utils.safe_paths import (
    DiskFullError,
    check_no_links,
    guard,
    open_no_follow,
    refuse_links,
    unguard,
)

JOB_FILE = "job.json"
SPEC_FILE = "spec.yaml"
LOG_DIR = "logs"
LOCK_FILE = "job.lock"
PREVIOUS_DIR = "previous_attempts"
#: Names at the top of a job folder that belong to the job, not to one attempt.
JOB_OWN_NAMES = (JOB_FILE, LOCK_FILE, PREVIOUS_DIR)
STATES = ("pending", "running", "success", "failure", "interrupted")
TERMINAL = ("success", "failure", "interrupted")
_TRANSITIONS = {"pending": {"running", "failure", "interrupted"}, "running": {"success", "failure", "interrupted"},
                "interrupted": {"running"},
                "success": {"running"}, "failure": {"running"}}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
log = logging.getLogger(__name__)


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


#: Types a ``job.json`` field must have when present (None allowed where listed).
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "job_id": (str,), "action": (str,), "status": (str,), "attempts": (int,), "transitions": (list,),
    "previous_attempts": (list,), "artifacts": (dict,), "metrics": (dict,), "error": (dict, type(None)),
    "parent_id": (str, type(None)), "results_dir": (str, type(None)), "spec_path": (str, type(None)),
    "checkpoint_dir": (str, type(None)), "route": (str, type(None)), "automl": (dict, type(None)),
}


def _damaged(path: Path, what: str) -> JobError:
    return JobError(f"job record {path} is damaged: {what}; nothing in its folder was touched", field="job_id",
                    hint=f"restore {path.name} (or move the folder away) and run again, or pick another --job-id")


def read_job(job_dir: Path) -> dict[str, Any] | None:
    """The ``job.json`` of a job folder, or None when there is none; a record that is a link, a folder, empty, not
    a JSON object or has a field of the wrong type is a :class:`JobError` naming it (a damaged record is never
    mistaken for a fresh job)."""
    path = job_dir / JOB_FILE
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_file():
        raise _damaged(path, "it is a link or a folder, expected a file")
    try:
        text = path.read_text()
        data = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"it cannot be read ({exc})") from exc
    except RecursionError as exc:
        raise _damaged(path, "it is nested too deeply") from exc
    except ValueError as exc:
        raise _damaged(path, "it is empty" if not text.strip() else f"it is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _damaged(path, f"expected a JSON object, got {type(data).__name__}")
    if not isinstance(data.get("action"), str):
        raise _damaged(path, "it has no 'action' string")
    for key, types in _RECORD_TYPES.items():
        if key in data and (not isinstance(data[key], types) or isinstance(data[key], bool)):
            raise _damaged(path, f"field {key!r} is {type(data[key]).__name__}, expected "
                           f"{' or '.join(t.__name__ for t in types)}")
    if "attempts" in data and data["attempts"] < 1:
        raise _damaged(path, f"field 'attempts' is {data['attempts']}, expected 1 or more")
    return data


def refuse_foreign_folder(job_dir: Path) -> None:
    """A folder at the job's place that holds files but no ``job.json`` is not ours: :class:`JobError` (exit 2)
    naming it, so a run never writes into, nor later moves, files it did not write. An empty folder (or one a run
    killed while creating the job left with only ``job.lock`` and an empty ``logs/``) is fine."""
    if job_dir.is_symlink():
        raise JobError(f"job folder {job_dir} is a symbolic link; a job folder must be a real folder",
                       field="job_id", hint="remove the link or pick another --job-id")
    if not job_dir.is_dir() or os.path.lexists(job_dir / JOB_FILE):
        return
    foreign = sorted(p.name for p in job_dir.iterdir()
                     if not (p.name == LOCK_FILE or (p.name == LOG_DIR and p.is_dir() and not p.is_symlink()
                                                     and not any(p.iterdir()))))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise JobError(f"folder {job_dir} exists and holds {shown} but no {JOB_FILE}: it is not a job of this tool "
                       "(or its record was deleted), and a job never adopts files it did not write", field="job_id",
                       hint="pick another --job-id or --jobs-root (a new or empty folder), or restore its job.json")


def ensure_job_dir(job_dir: Path) -> None:
    """Create the job folder; an existing file in its place is a :class:`JobError` naming ``results_dir``."""
    for p, field in ((job_dir.parent, "jobs_root"), (job_dir, "results_dir")):
        if p.exists() and not p.is_dir():
            raise JobError(f"{field} {str(p)!r} is an existing file, expected a folder (the job folder "
                           f"{str(job_dir)!r} goes there)", field=field,
                           hint="pick another --job-id or --jobs-root, or move the file away")
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file further up the path, or no permission
        raise JobError(f"cannot create the job folder {str(job_dir)!r}: {exc.strerror}", field="jobs_root") from exc


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _holder_text(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid')} on host {holder.get('host')!r}, {holder.get('action')} since "
            f"{holder.get('started')}")


class JobLock:
    """The exclusive lock of a job folder (``job.lock``): held by one run, released when it ends."""

    def __init__(self, path: Path, fd: int, taken_over: dict[str, Any] | None) -> None:
        self.path = path
        self._fd: int | None = fd
        #: the lock record of a dead run this lock replaced (None when the job was not locked)
        self.taken_over = taken_over

    @classmethod
    def acquire(cls, job_dir: Path, job_id: str, action: str) -> JobLock:
        """Lock ``job_dir`` or raise :class:`JobError` (exit 2) naming the run that holds it."""
        path = job_dir / LOCK_FILE
        for _ in range(10):
            try:  # never through a link planted at job.lock (it would truncate the file it points to)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                raise JobError(f"lock file {path} cannot be opened ({exc.strerror}): it must be a regular file, "
                               "not a link or a folder", field="job_id",
                               hint=f"remove {path} if no run of this job is alive, or pick another --job-id") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_lock(fd)
                os.close(fd)
                raise JobError(f"job {job_id!r} is already running ({_holder_text(holder)}); lock file {path}",
                               field="job_id", hint="wait for that run to end, or pick another --job-id") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (deleted) it between our open and flock: lock the new file
                os.close(fd)
                continue
            holder = _read_lock(fd)
            if holder and not _lock_is_stale(holder):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise JobError(f"job {job_id!r} is locked by {_holder_text(holder)} (lock file {path})",
                               field="job_id", hint=f"if no run of this job is alive on {holder.get('host')!r}, "
                               f"delete {path} and run again; otherwise pick another --job-id")
            record = {"pid": os.getpid(), "host": socket.gethostname(), "action": action, "job_id": job_id,
                      "started": _now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
            if holder:
                log.warning("job %s: took over the stale lock of %s (that process is gone)", job_id,
                            _holder_text(holder))
            return cls(path, fd, holder or None)
        raise JobError(f"could not lock job {job_id!r}: {path} keeps changing", field="job_id")

    def release(self) -> None:
        """Delete the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                self.path.unlink()
        os.close(fd)


def _read_lock(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}  # half-written by a run that died at once: nothing to honour
    return data if isinstance(data, dict) else {}


def _lock_is_stale(holder: dict[str, Any]) -> bool:
    """A lock record nobody holds any more: its process is gone from this host (another host cannot be checked)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    return not isinstance(pid, int) or pid == os.getpid() or not _pid_alive(pid)


def _rewrite_paths(obj: Any, old: Path, new: Path, moved: set[str]) -> Any:
    """Paths in a JSON tree that pointed at an entry ``moved`` out of folder ``old`` now point into ``new``."""
    if isinstance(obj, str):
        head, sep, rest = obj.partition(str(old) + os.sep)
        if not head and sep and rest.split(os.sep, 1)[0] in moved:
            return str(new / rest)
        return obj
    if isinstance(obj, dict):
        return {k: _rewrite_paths(v, old, new, moved) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rewrite_paths(v, old, new, moved) for v in obj]
    return obj


def archive_attempt(job_dir: Path, record: dict[str, Any], move_files: bool,
                    keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Move the last attempt out of the way; returns its entry for ``record['previous_attempts']``.

    With ``move_files``, everything at the top of ``job_dir`` but ``job.json``, ``job.lock``,
    ``previous_attempts/`` and the names in ``keep`` (the work a re-run continues) goes to
    ``previous_attempts/<n>/`` (paths in the archived artifacts follow).
    """
    n = int(record.get("attempts") or 1)
    status = record.get("status")
    entry: dict[str, Any] = {"attempt": n, "status": status if status in TERMINAL else "interrupted",
                             "updated": record.get("updated"), "artifacts": record.get("artifacts") or {},
                             "metrics": record.get("metrics") or {}, "error": record.get("error"), "folder": None}
    leftovers = sorted(p for p in job_dir.iterdir() if p.name not in (*JOB_OWN_NAMES, *keep)) if move_files else []
    if leftovers:
        dest = job_dir / PREVIOUS_DIR / str(n)
        k = 1
        while dest.exists():  # an attempt number seen twice (a record rewritten by hand): never overwrite
            k += 1
            dest = job_dir / PREVIOUS_DIR / f"{n}-{k}"
        check_no_links(dest, job_dir)  # never move the attempt's files through a planted link
        dest.mkdir(parents=True)
        for p in leftovers:
            os.rename(p, dest / p.name)
        entry["folder"] = str(dest)
        entry["artifacts"] = _rewrite_paths(entry["artifacts"], job_dir, dest, {p.name for p in leftovers})
        log.info("job %s: attempt %d (%s) moved to %s", job_dir.name, n, entry["status"], dest)
    return entry


class Job:
    """One job folder and its record; every change rewrites ``job.json`` atomically."""

    def __init__(self, jobs_root: Path, job_id: str, record: dict[str, Any], lock: JobLock | None = None) -> None:
        self.jobs_root = jobs_root
        self.job_id = job_id
        self.dir = jobs_root / job_id
        self.record = record
        self.lock = lock

    @property
    def results_dir(self) -> Path:
        """The action's results folder (the job folder itself)."""
        return self.dir

    @property
    def state(self) -> str:
        """Current state."""
        return str(self.record.get("status", "pending"))

    @classmethod
    def create(cls, jobs_root: Path, action: str, job_id: str | None = None, parent_id: str | None = None,
               resume_key: str | None = None) -> Job:
        """Lock and create (or reopen, for a new attempt of the same action) ``<jobs_root>/<job_id>``.

        Raises :class:`JobError` when another run holds the job, or the job ran another action; call
        :meth:`close` when the attempt ends to release the lock. A re-run whose ``resume_key`` equals the earlier
        attempt's keeps the action's ``keeps_on_rerun`` files in place (a labelling job continues its shards).
        """
        job_id = check_job_id(job_id or new_job_id(action))
        job_dir = jobs_root / job_id
        refuse_foreign_folder(job_dir)
        ensure_job_dir(job_dir)
        lock = JobLock.acquire(job_dir, job_id, action)
        guarded = False
        try:
            refuse_links(job_dir)  # a link planted in the folder is refused before anything moves or is written
            guard(job_dir)
            guarded = True
            return cls._open_locked(jobs_root, job_dir, action, job_id, parent_id, lock, resume_key)
        except BaseException:
            if guarded:
                unguard(job_dir)
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, jobs_root: Path, job_dir: Path, action: str, job_id: str, parent_id: str | None,
                     lock: JobLock, resume_key: str | None = None) -> Job:
        old = read_job(job_dir)
        if old is not None:
            if old.get("action") != action:
                raise JobError(f"job {job_id!r} exists and ran action {old.get('action')!r}, not {action!r}",
                               field="job_id", hint="pick another --job-id")
            # an action that resumes (train) continues from its own files; others move the last attempt's aside
            decl = action_decl(action)
            same = resume_key is not None and old.get("resume_key") == resume_key
            previous = archive_attempt(job_dir, old, move_files=not decl.resumes,
                                       keep=decl.keeps_on_rerun if same else ())
            if same and decl.keeps_on_rerun:
                previous["continued"] = list(decl.keeps_on_rerun)  # this attempt goes on with that work
            old.setdefault("previous_attempts", []).append(previous)
            old["resume_key"] = resume_key
            old["attempts"] = int(old.get("attempts") or 1) + 1
            old["parent_id"] = parent_id or old.get("parent_id")
            old.update(artifacts={}, metrics={}, error=None)
            job = cls(jobs_root, job_id, old, lock)
            note = f"re-run; attempt {previous['attempt']} ended {previous['status']}"
            if previous["folder"]:
                note += f", its files moved to {PREVIOUS_DIR}/{Path(previous['folder']).name}"
            job.transition("pending", note=note)
            (job.dir / LOG_DIR).mkdir(exist_ok=True)
            return job
        record = {"job_id": job_id, "action": action, "parent_id": parent_id, "status": "pending",
                  "created": _now(), "attempts": 1, "transitions": [], "route": None, "results_dir": str(job_dir),
                  "spec_path": None, "artifacts": {}, "metrics": {}, "error": None, "resume_key": resume_key}
        job = cls(jobs_root, job_id, record, lock)
        (job.dir / LOG_DIR).mkdir(exist_ok=True)
        record["transitions"].append({"state": "pending", "time": _now()})
        job.save()
        return job

    def close(self) -> None:
        """End of the attempt: release the job lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            unguard(self.dir)

    def save(self) -> None:
        """Write ``job.json`` atomically. On a full disk (no room for the temp file) the record is rewritten in
        place, compact, when it fits in the space the old one holds; otherwise :class:`DiskFullError`."""
        self.record["updated"] = _now()
        try:
            atomic_write_json(self.dir / JOB_FILE, self.record)
        except DiskFullError:
            if not self._save_in_place():
                raise
            log.warning("job %s: disk full; %s rewritten in place", self.job_id, JOB_FILE)

    def _save_in_place(self) -> bool:
        path = self.dir / JOB_FILE
        data = (json.dumps(json_safe(self.record), separators=(",", ":"), default=str) + "\n").encode()
        try:
            fd = open_no_follow(path, os.O_WRONLY)
        except (OSError, MalError):
            return False
        try:
            if len(data) > os.fstat(fd).st_size:  # growing the file would need space the disk does not have
                return False
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

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

    def update_progress(self, progress: dict[str, Any]) -> None:
        """Record a running job's progress (shards and boxes done / total, rate, ETA)."""
        self.update(progress=progress)

    def finish(self, ok: bool, *, error: dict[str, Any] | None = None, state: str | None = None,
               **fields: Any) -> None:
        """Terminal transition (``success`` / ``failure``, or ``state`` such as ``interrupted``) with the final
        artifacts / metrics / error."""
        self.record.update(fields)
        self.record["error"] = error
        self.transition(state or ("success" if ok else "failure"))

    def log_handler(self) -> logging.Handler:
        """A file handler for ``logs/<action>.log`` (never through a link: :class:`LinkInJobFolder`)."""
        path = self.dir / LOG_DIR / f"{self.record['action']}.log"
        check_no_links(path, self.dir)
        (self.dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
        handler = _JobLogHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        return handler


class _JobLogHandler(logging.FileHandler):
    """The job's log file, opened without following a link; a write that fails (a full disk) drops the record
    instead of printing a traceback (the same message still reaches stderr)."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = open_no_follow(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        """Ignore the failed write of ``record``."""


def record_refused_attempt(jobs_root: Path, action: str, job_id: str | None, parent_id: str | None,
                           error: dict[str, Any], **create_kwargs: Any) -> bool:
    """A re-run of an existing job refused before it started (bad input found by preflight) is still an attempt:
    the record's latest attempt becomes this one, ``failure`` with its cause, and the earlier attempt (its outputs
    moved aside as on any re-run) is listed under ``previous_attempts``. Nothing happens for a job id that has no
    record yet, or one another run holds; returns whether the refusal was recorded. ``create_kwargs`` go to
    :meth:`Job.create` as for the attempt the refusal stands for."""
    if not job_id or not (jobs_root / job_id / JOB_FILE).is_file():
        return False
    try:
        job = Job.create(jobs_root, action, job_id, parent_id=parent_id, **create_kwargs)
    except MalError as exc:
        log.warning("job %s: the refused attempt is not recorded: %s", job_id, exc.message)
        return False
    try:
        job.finish(False, error=error, refused_by="preflight")
    except (MalError, OSError) as exc:  # e.g. a full disk: the refusal itself is what gets reported
        log.warning("job %s: the refused attempt is not recorded: %s", job_id, getattr(exc, "message", exc))
        return False
    finally:
        job.close()
    return True
