"""Progress of a sharded job: shards and boxes done / total, boxes/s and ETA, for a person and for the job record.

A person sees a progress bar on stderr when it is a terminal (``MAL_PROGRESS_BAR=0`` turns it off); otherwise (a
scheduler's log file) one log line per finished shard, at most every :data:`LOG_EVERY_S` seconds. The job record
gets the same figures through the ``report`` callback after every shard, so an agent can poll ``job.json``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mal_core.utils.stop import raise_if_stopped

log = logging.getLogger(__name__)
#: Seconds between two progress log lines when stderr is not a terminal.
LOG_EVERY_S = 10.0


class _Sized(Protocol):
    index: int
    num_boxes: int


def _bar_wanted() -> bool:
    return os.environ.get("MAL_PROGRESS_BAR", "1") != "0" and sys.stderr.isatty()


class Progress:
    """Counts finished shards (those of an earlier attempt count as done from the start)."""

    def __init__(self, shards: list[Any], done: Mapping[int, Any],
                 report: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.total_shards = len(shards)
        self.total_boxes = sum(s.num_boxes for s in shards)
        self.shards_done = len(done)
        self.boxes_done = sum(s.num_boxes for s in shards if s.index in done)
        self.resumed_boxes = self.boxes_done
        self.report = report
        self.t0 = time.time()
        self.startup_seconds = 0.0
        self._last_log = 0.0
        self._bar = None
        if _bar_wanted() and self.shards_done < self.total_shards:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_boxes, initial=self.boxes_done, unit="box", desc="labelling",
                             dynamic_ncols=True, file=sys.stderr)
        self._emit()

    def start(self) -> None:
        """The workers are ready (network loaded, Ray started): labelling starts now. The time before is reported
        as ``startup_seconds``, and boxes/s and the ETA count from here."""
        now = time.time()
        self.startup_seconds = now - self.t0
        self.t0 = now

    @property
    def seconds(self) -> float:
        """Seconds since this attempt started labelling."""
        return time.time() - self.t0

    def rate(self) -> float | None:
        """Boxes per second labelled by this attempt (None before the first shard)."""
        new = self.boxes_done - self.resumed_boxes
        return round(new / self.seconds, 3) if new and self.seconds > 0 else None

    def eta(self) -> float | None:
        """Seconds left at the current rate."""
        rate = self.rate()
        return round((self.total_boxes - self.boxes_done) / rate, 1) if rate else None

    def snapshot(self) -> dict[str, Any]:
        """The figures the job record shows."""
        return {"shards_done": self.shards_done, "shards_total": self.total_shards, "boxes_done": self.boxes_done,
                "boxes_total": self.total_boxes, "boxes_per_second": self.rate(), "eta_seconds": self.eta(),
                "seconds": round(self.seconds, 1), "startup_seconds": round(self.startup_seconds, 1)}

    def finish(self, shard: _Sized) -> None:
        """Count one finished shard (a safe point: a pending stop request is raised here)."""
        raise_if_stopped()
        self.shards_done += 1
        self.boxes_done += shard.num_boxes
        if self._bar is not None:
            self._bar.update(shard.num_boxes)
        elif time.time() - self._last_log >= LOG_EVERY_S or self.shards_done == self.total_shards:
            snap = self.snapshot()
            log.info("labelled %d/%d boxes (%d/%d shards), %s boxes/s, ETA %s s", snap["boxes_done"],
                     snap["boxes_total"], snap["shards_done"], snap["shards_total"], snap["boxes_per_second"],
                     snap["eta_seconds"])
            self._last_log = time.time()
        self._emit()

    def _emit(self) -> None:
        if self.report is not None:
            self.report(self.snapshot())

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
