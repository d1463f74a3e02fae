"""Each work source's counted work per minute from its scrapes (:class:`WorkAggregator`).

A successful scrape gives the source's counters (gridtao/work/sources.py: tokens by model and
kind ``generation`` / ``prompt``, or a custom counter's units). Between two scrapes a counter's
increase is the work done in between, spread evenly over those seconds and cut at UTC minutes.
A counter that went down means the server restarted and counted its new value since: that
value is the interval's work (as the scraper's totals count it). Scrapes further apart than
``max_bridge_s`` (the source was down for long) count nothing: the work is not lost from the
totals, but when in that time it was done is not known well enough to put in minutes.

Restarts of the agent: as for the GPUs' energy (gridtao/history/gpuenergy.py), what was counted
is handed over with each counter's last value (:meth:`take`), and a new aggregator seeded with
them (:meth:`resume`) counts from there: the work done while the agent was down lands, spread
evenly, in the minutes it was down.

Units: Unix seconds; work in the source's units. Not thread-safe: the recorder's thread feeds
it and takes from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gridtao.history.rows import Checkpoint, WorkMinuteRow, minute_pieces

__all__ = ["WorkAggregator", "WorkKey", "work_series"]

#: (model, kind) as gridtao.work.exposition keys a source's counters.
WorkKey = tuple[str, str]


def work_series(source: str, model: str, kind: str) -> str:
    """The checkpoint name of one of a source's counters."""
    return json.dumps(["work", source, model, kind])


@dataclass
class _Acc:
    source_kind: str
    gpus: tuple[int, ...]
    units: float = 0.0
    covered_s: float = 0.0


class WorkAggregator:
    """Scrapes -> per-minute work (module docstring)."""

    def __init__(self, *, max_bridge_s: float = 86_400.0) -> None:
        if not (math.isfinite(max_bridge_s) and max_bridge_s > 0):
            raise ValueError(f"max_bridge_s must be > 0, got {max_bridge_s}")
        self.max_bridge_s = max_bridge_s
        self._last: dict[tuple[str, str, str], tuple[float, float]] = {}
        self._acc: dict[tuple[int, str, str, str], _Acc] = {}
        #: Counters that went down (the source's server restarted).
        self.resets = 0
        #: Scrapes ignored: not after the previous one (the wall clock stepped back).
        self.ignored = 0

    def resume(self, checkpoints: Iterable[Checkpoint]) -> None:
        """Carry on from a previous agent's counters (stored checkpoints of work sources)."""
        for c in checkpoints:
            try:
                kind, source, model, unit = json.loads(c.series)
            except (ValueError, TypeError):
                continue
            key = (source, model, unit)
            if kind == "work" and c.value is not None and key not in self._last:
                self._last[key] = (c.wall_s, c.value)

    def add(self, wall_s: float, source: str, source_kind: str, gpus: Sequence[int],
            values: Mapping[WorkKey, float]) -> None:
        """One successful scrape of ``source`` at ``wall_s`` (Unix s): its counters' values."""
        if not math.isfinite(wall_s):
            self.ignored += 1
            return
        mapped = tuple(gpus)
        for (model, kind), value in sorted(values.items()):
            if not (math.isfinite(value) and value >= 0.0):
                continue
            key = (source, model, kind)
            last = self._last.get(key)
            if last is not None and wall_s <= last[0]:
                self.ignored += 1
                continue
            self._last[key] = (wall_s, value)
            if last is None:
                continue
            t0, v0 = last
            if value < v0:
                self.resets += 1
                units = value
            else:
                units = value - v0
            if wall_s - t0 > self.max_bridge_s:
                continue
            dt = wall_s - t0
            for start, seconds in minute_pieces(t0, wall_s):
                acc = self._acc.get((start, source, model, kind))
                if acc is None:
                    acc = self._acc[(start, source, model, kind)] = _Acc(source_kind, mapped)
                acc.source_kind, acc.gpus = source_kind, mapped
                acc.units += units * seconds / dt
                acc.covered_s += seconds

    def take(self) -> tuple[list[WorkMinuteRow], list[Checkpoint]]:
        """What was counted since the last take (rows to merge, oldest first) and the counters'
        values it ends at; then starts afresh from there."""
        rows = [WorkMinuteRow(start, source, acc.source_kind, model, kind, max(0.0, acc.units),
                              min(60.0, acc.covered_s), acc.gpus)
                for (start, source, model, kind), acc in sorted(self._acc.items())
                if acc.covered_s > 0.0]
        self._acc.clear()
        checkpoints = [Checkpoint(work_series(*key), t, value)
                       for key, (t, value) in sorted(self._last.items())]
        return rows, checkpoints
