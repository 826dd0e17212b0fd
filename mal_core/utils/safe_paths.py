"""Job folders that cannot be turned against their owner: no file operation of a job follows a symbolic link planted
inside its job folder, and running out of disk space is an error that names the file.

A job folder may lie in a shared jobs root or be a copy of someone else's, so a link inside it (``logs``,
``review``, ``overlays``, ``previous_attempts``, ``shards``, a history file, ``spec.yaml``, the label file) could
make a run write, move or append outside the folder. Two defences:

* :func:`refuse_links` walks the whole job folder when a run opens it (before anything moves) and refuses any link
  but the checkpoint's own ``mal_model_latest.pth`` (a link to a sibling checkpoint file, written by the run).
* The job folder is registered (:func:`guard`) while the run holds it; every write of :mod:`mal_core.utils.io`
  (and the job's log file) first checks that no part of the path between the job folder and the target is a link
  (:func:`check_no_links`), so a link planted while the run goes on is refused too.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mal_core.errors import MalError

#: errno values that mean "the disk (or the user's quota) is full".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: The only link a job writes itself: the newest checkpoint, pointing at a sibling file.
_OWN_LINK = "mal_model_latest.pth"  # checkpoint_files.LATEST_NAME (not imported: utils stays light)
_guarded: list[str] = []


class LinkInJobFolder(MalError):
    """A symbolic link inside a job folder, where a run would have followed it."""

    code = "link_in_job_folder"


class OutputPathError(MalError):
    """A place a job writes holds something else (a folder where a file goes)."""

    code = "invalid_output_path"


class DiskFullError(MalError):
    """No space left (or the quota is used up) while writing a file."""

    code = "disk_full"


def _link_error(link: Path, root: Path) -> LinkInJobFolder:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return LinkInJobFolder(
        f"{link} is a symbolic link (to {target}) inside the job folder {root}: a job never writes, moves or appends "
        "through a link in its folder (it would change files outside it)", field="job_id",
        hint=f"remove the link {link} (or the job folder, if it is not yours), or pick another --job-id")


def disk_full_error(path: str | Path, exc: OSError) -> DiskFullError:
    """The :class:`DiskFullError` for an ``OSError`` (ENOSPC or EDQUOT) raised while writing ``path``."""
    what = "the disk quota is used up" if exc.errno != errno.ENOSPC else "no space left on the device"
    return DiskFullError(f"cannot write {path}: {what} ({os.strerror(exc.errno or errno.ENOSPC)})", field=None,
                         hint=f"free space on the file system of {Path(path).parent} (or raise the quota) and run "
                              "the same command again")


def is_disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT ``OSError`` that ``exc`` is or was raised from (its cause/context chain), else None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in DISK_FULL_ERRNOS:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _allowed_link(path: Path) -> bool:
    """The run's own latest-checkpoint link: named ``mal_model_latest.pth``, pointing at a sibling regular file."""
    if path.name != _OWN_LINK:
        return False
    try:
        target = os.readlink(path)
    except OSError:
        return False
    sibling = path.parent / target
    return os.sep not in target and target not in (".", "..") and sibling.is_file() and not sibling.is_symlink()


def refuse_links(root: str | Path) -> None:
    """Walk ``root`` (a job folder; not following links) and raise :class:`LinkInJobFolder` (exit 2) naming the
    first symbolic link found, other than the run's own latest-checkpoint link."""
    base = Path(root)
    stack = [base]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                if not _allowed_link(path):
                    raise _link_error(path, base)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(path)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_no_links(path: str | Path, root: str | Path) -> None:
    """Raise :class:`LinkInJobFolder` when ``path`` lies in ``root`` and a part of it below ``root`` (the target
    included) is a symbolic link; parts that do not exist yet are fine (they are created as real folders)."""
    p, r = os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(root))
    if not _within(p, r) or p == r:
        return
    cur = Path(r)
    for part in Path(os.path.relpath(p, r)).parts:
        cur = cur / part
        try:
            mode = os.lstat(cur).st_mode
        except FileNotFoundError:
            return
        except NotADirectoryError as exc:
            raise OutputPathError(f"cannot write {p}: {cur.parent} is a file, expected a folder",
                                  field=None) from exc
        if stat.S_ISLNK(mode):
            raise _link_error(cur, Path(r))


def guard(root: str | Path) -> None:
    """Register a job folder held by this process: writes below it are checked with :func:`check_no_links`."""
    _guarded.append(os.path.abspath(os.fspath(root)))


def unguard(root: str | Path) -> None:
    """Undo one :func:`guard` of ``root`` (nothing happens when it is not registered)."""
    r = os.path.abspath(os.fspath(root))
    if r in _guarded:
        _guarded.remove(r)


def check_guarded(path: str | Path) -> None:
    """:func:`check_no_links` against each registered job folder that ``path`` lies in."""
    p = os.path.abspath(os.fspath(path))
    for root in list(_guarded):
        if _within(p, root):
            check_no_links(p, root)


def open_no_follow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a link at ``path`` itself nor (below a guarded job folder) on the way to it;
    a link there is :class:`LinkInJobFolder`."""
    check_guarded(path)
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkInJobFolder(f"{path} is a symbolic link: a job never writes through a link", field=None,
                                  hint=f"remove the link {path} and run again") from exc
        if exc.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(path, exc) from exc
        raise
