"""Samples of the node's IT draw, at any rate, turned into :class:`MinuteRow` s.

The signal between samples is taken as held: a sample ``(t, w)`` stands for the draw from ``t``
until the next sample, but for at most ``max_hold_s`` (the rectangle rule, left-point: energy over
``[t_i, t_i+1)`` is ``w_i * (t_i+1 - t_i)``). Time no sample covers (a gap longer than
``max_hold_s``, the agent stopped) counts for nothing: a row's mean and energy are over the
covered time only, and a minute no sample covers produces no row.

Per minute, the held signal is cut into 1-s bins (Unix seconds ``[k, k+1)``); a bin's average is
its energy over its covered time. The row's ``it_mean_w`` is energy over covered time (the
time-weighted mean); ``it_p10_w`` is the 10th percentile of the covered bins' averages (linear
interpolation between order statistics, numpy's default); ``limit_w`` the time-weighted mean of
the limits over the covered time where a limit was known (``None`` if never); ``event_s`` the
covered seconds with an activation in force.

A minute closes when a sample arrives in a later minute: only then is the last sample's hold
known. A sample not later than the previous one (the wall clock stepped back) is ignored and
counted in ``ignored``; after a large step back samples are ignored until the clock passes the
last accepted one, since the minutes before it are already closed. A sample whose time or watts
are not finite, or whose watts are negative, is ignored likewise; a limit that is not a finite
positive number is taken as unknown.

Not thread-safe: one thread feeds an aggregator (the recorder's, or the importer's caller).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gridtao.history.store import MinuteRow

__all__ = ["MinuteAggregator"]


@dataclass
class _Minute:
    """Accumulators of one open minute: per 1-s bin energy (J) and covered time (s)."""

    energy_j: list[float] = field(default_factory=lambda: [0.0] * 60)
    covered_s: list[float] = field(default_factory=lambda: [0.0] * 60)
    limit_j: float = 0.0  # integral of the limit (W*s) over the covered time where known
    limit_s: float = 0.0
    event_s: float = 0.0


@dataclass(frozen=True)
class _Sample:
    t_s: float
    it_w: float
    limit_w: float | None
    event_active: bool


class MinuteAggregator:
    """Groups samples into 1-s averages, then per-minute rows (see the module docstring).

    ``max_hold_s`` (> 0): the longest a sample stands for. The agent's default of 2 s tolerates a
    missed sample or two at its ~2 Hz without papering over a stall; an importer sets it to a
    little over the file's sampling interval.
    """

    def __init__(self, *, max_hold_s: float = 2.0) -> None:
        if not (math.isfinite(max_hold_s) and max_hold_s > 0):
            raise ValueError(f"max_hold_s must be > 0, got {max_hold_s}")
        self.max_hold_s = max_hold_s
        self._last: _Sample | None = None
        self._open: dict[int, _Minute] = {}  # start_s -> accumulators, oldest first
        #: Samples ignored: time not after the previous sample, or invalid values.
        self.ignored = 0

    @property
    def last_t_s(self) -> float | None:
        """Time of the last accepted sample (Unix seconds), ``None`` before the first."""
        return None if self._last is None else self._last.t_s

    def add(self, t_s: float, it_w: float, limit_w: float | None,
            event_active: bool) -> list[MinuteRow]:
        """Feed one sample: ``t_s`` Unix seconds, ``it_w`` the node's IT draw (W), ``limit_w`` the
        summed enforced GPU limits (W, or ``None``), ``event_active`` whether a grid activation
        is in force. Returns the rows of the minutes this sample closed, oldest first (usually
        none; one when a minute ends; more only after a hold spanning a minute boundary)."""
        if not (math.isfinite(t_s) and math.isfinite(it_w) and it_w >= 0.0):
            self.ignored += 1
            return []
        if limit_w is not None and not (math.isfinite(limit_w) and limit_w > 0.0):
            limit_w = None
        last = self._last
        if last is not None:
            if t_s <= last.t_s:
                self.ignored += 1
                return []
            self._spread(last, min(t_s, last.t_s + self.max_hold_s))
        self._last = _Sample(t_s, it_w, limit_w, event_active)
        # Every later sample's hold starts at or after t_s: earlier minutes are complete.
        return self._close_before(math.floor(t_s / 60.0) * 60)

    def finish(self, until_s: float | None = None) -> list[MinuteRow]:
        """Close every open minute, partial ones included, and return their rows. The last
        sample holds until ``until_s`` (at most ``max_hold_s``); ``None``: it adds nothing.
        The aggregator then starts afresh (the next sample is a first sample)."""
        last = self._last
        if last is not None and until_s is not None and until_s > last.t_s:
            self._spread(last, min(until_s, last.t_s + self.max_hold_s))
        self._last = None
        rows = self._close_before(None)
        return rows

    def _spread(self, s: _Sample, end_s: float) -> None:
        """Add sample ``s`` held over ``[s.t_s, end_s)`` to the 1-s bins it covers."""
        pos = s.t_s
        k = math.floor(pos)
        while pos < end_s:
            stop = min(end_s, k + 1.0)
            dt = stop - pos
            start = (k // 60) * 60
            acc = self._open.get(start)
            if acc is None:
                acc = self._open[start] = _Minute()
            i = k - start
            acc.energy_j[i] += s.it_w * dt
            acc.covered_s[i] += dt
            if s.limit_w is not None:
                acc.limit_j += s.limit_w * dt
                acc.limit_s += dt
            if s.event_active:
                acc.event_s += dt
            pos = stop
            k += 1

    def _close_before(self, start_s: int | None) -> list[MinuteRow]:
        rows: list[MinuteRow] = []
        for start in sorted(self._open):
            if start_s is not None and start >= start_s:
                break
            row = _row(start, self._open.pop(start))
            if row is not None:
                rows.append(row)
        return rows


def _row(start_s: int, acc: _Minute) -> MinuteRow | None:
    covered = math.fsum(acc.covered_s)
    if covered <= 0.0:
        return None
    energy = math.fsum(acc.energy_j)
    averages = [e / c for e, c in zip(acc.energy_j, acc.covered_s, strict=True) if c > 0.0]
    p10 = float(np.percentile(np.asarray(averages), 10.0))
    limit = acc.limit_j / acc.limit_s if acc.limit_s > 0.0 else None
    return MinuteRow(start_s=int(start_s), it_mean_w=max(0.0, energy / covered),
                     it_p10_w=max(0.0, p10), energy_j=max(0.0, energy), limit_w=limit,
                     event_s=min(60.0, max(0.0, acc.event_s)))
