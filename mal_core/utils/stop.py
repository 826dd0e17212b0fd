"""Stop requests: SIGTERM / SIGINT turned into :class:`Interrupted`, raised at once and again at the next safe
point, so a signal that lands somewhere that swallows exceptions (a fork handler, a ``__del__``) is never lost.

The skill runtime installs the handlers for a run (:func:`catch_stop_signals`); long loops of the engine call
:func:`raise_if_stopped` between units of work (a batch, a shard, a training step).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_requested: list[int] = []
_deferred: list[bool] = []


class Interrupted(BaseException):  # noqa: N818 (not an error of the run: a request to stop it)
    """SIGTERM or SIGINT arrived: the run stops, records ``interrupted`` and exits 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of the result JSON and the job record."""
        name = signal.Signals(self.signum).name
        return {"code": "interrupted", "message": f"stopped by {name} (exit {self.exit_code})", "field": None,
                "hint": "run the same command again: a train or pretrain job resumes from its last checkpoint, an "
                        "inference job labels only the shards it had not finished"}


def stop_requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested[0] if _requested else None


def raise_if_stopped() -> None:
    """Raise :class:`Interrupted` when a stop was requested (a safe point of a long loop)."""
    if _requested:
        raise Interrupted(_requested[0])


def _on_signal(signum: int, _frame: Any) -> None:
    if not _requested:
        _requested.append(signum)
    if not _deferred:
        raise Interrupted(_requested[0])


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """Inside this block a signal only records the request: the loop's own safe point (e.g. the checkpoint
    callback of training, which saves a resumable checkpoint first) raises it."""
    _deferred.append(True)
    try:
        yield
    except SystemExit as exc:  # a library's own exit on the signal (Lightning's SIGTERMException) is ours
        if _requested:
            raise Interrupted(_requested[0]) from exc
        raise
    finally:
        _deferred.pop()


def catch_stop_signals() -> dict[int, Any]:
    """Turn SIGTERM/SIGINT into :class:`Interrupted` for this run (main thread only); returns the previous
    handlers for :func:`restore_signals`."""
    _requested.clear()
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def restore_signals(previous: dict[int, Any]) -> None:
    """Put the handlers :func:`catch_stop_signals` replaced back, and forget the request."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    _requested.clear()
