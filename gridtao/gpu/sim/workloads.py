"""Workload demand profiles for the simulated GPUs.

A workload is an endless, deterministic stream of constant-demand stretches
``(duration_s, demand_w)``: the power the running job would draw if no power limit held it back.
The physics (``physics.py``) turns demand and the enforced limit into the true draw.

Shapes (docs/sources.md#workloads for the band and the burstiness; the levels are ours):
training holds ~88 % of TDP with communication-phase dips to ~55 % lasting 50-300 ms, repeating
at 0.5-2 Hz (inside the 0.2-3 Hz band seen on real jobs); inference is bursty (random arrivals,
30-100 % of TDP); idle sits at 70-90 W; a CSV trace replays measured watts in a loop. Every
stream depends only on its ``random.Random`` so runs are reproducible.

A :class:`~gridtao.gpu.sim.daily.DailyShape` given to :func:`make_workload` makes inference
follow the time of day (:func:`shaped`); without one every workload is as above.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from gridtao.errors import GridtaoError
from gridtao.gpu.sim.daily import DailyShape
from gridtao.readfile import check_regular

#: The level a shaped workload falls to when its daily multiplier is 0 (an idle GPU's draw).
SHAPED_FLOOR_W = 80.0


class Workload(Protocol):
    def next_segment(self) -> tuple[float, float]:
        """The next stretch of constant demand: ``(duration_s > 0, demand_w >= 0)``."""
        ...


@runtime_checkable
class Resumable(Workload, Protocol):
    """A workload whose position in its stream can be saved and restored, so processes sharing
    one simulated device continue each other's streams (``gpu/sim/shared.py``). Its whole
    position is ``rng``'s state plus :meth:`state`, a few floats."""

    rng: random.Random

    def state(self) -> tuple[float, ...]:
        """The stream's own position (besides ``rng``): at most :data:`STATE_FLOATS` floats."""
        ...

    def restore(self, state: Sequence[float]) -> None:
        """Continue from a position :meth:`state` gave (``rng`` is restored by the caller)."""
        ...


#: The most floats a :class:`Resumable` workload's :meth:`~Resumable.state` holds.
STATE_FLOATS = 8


class Training:
    """Data-parallel training: compute at ~88 % of TDP (+-2 % jitter every 40-120 ms), then a
    communication dip to 50-60 % of TDP for 50-300 ms, once per step of 0.5-2 s.

    The step period is drawn once per GPU (with +-10 % jitter per step) and the stream starts at
    a random point of its first step, so GPUs built from different generators are out of phase.
    """

    def __init__(self, tdp_w: float, rng: random.Random) -> None:
        self.rng = rng
        self._tdp_w = tdp_w
        # Drawn at the first segment, so the stream's draws come in one order whoever reads it.
        self._period_s = -1.0
        self._base = 0.0
        self._first = True
        self._in_step = False
        self._compute_s = 0.0
        self._dip_s = 0.0

    def next_segment(self) -> tuple[float, float]:
        rng = self.rng
        if self._period_s < 0:
            self._period_s = rng.uniform(0.5, 2.0)
            self._base = rng.uniform(0.86, 0.90)
        if not self._in_step:
            step_s = self._period_s * rng.uniform(0.9, 1.1)
            self._dip_s = rng.uniform(0.05, 0.3)
            compute_s = max(0.1, step_s - self._dip_s)
            if self._first:
                compute_s *= rng.random()
                self._first = False
            self._compute_s = compute_s
            self._in_step = True
        if self._compute_s > 1e-9:
            chunk_s = min(self._compute_s, rng.uniform(0.04, 0.12))
            self._compute_s -= chunk_s
            level = self._base * (1.0 + rng.gauss(0.0, 0.02))
            return chunk_s, self._tdp_w * min(1.0, max(0.05, level))
        self._in_step = False
        return self._dip_s, self._tdp_w * rng.uniform(0.50, 0.60)

    def state(self) -> tuple[float, ...]:
        return (self._period_s, self._base, float(self._first), float(self._in_step),
                self._compute_s, self._dip_s)

    def restore(self, state: Sequence[float]) -> None:
        (self._period_s, self._base, first, in_step, self._compute_s,
         self._dip_s) = state[:6]
        self._first, self._in_step = bool(first), bool(in_step)


def training(tdp_w: float, rng: random.Random) -> Training:
    """A :class:`Training` stream."""
    return Training(tdp_w, rng)


class Inference:
    """Online inference: request bursts at 55-100 % of TDP (exponential lengths, mean 250 ms)
    separated by quiet gaps at 30-40 % of TDP (exponential lengths, mean 200 ms)."""

    def __init__(self, tdp_w: float, rng: random.Random) -> None:
        self.rng = rng
        self._tdp_w = tdp_w
        self._busy_next = True

    def next_segment(self) -> tuple[float, float]:
        rng = self.rng
        busy, self._busy_next = self._busy_next, not self._busy_next
        if busy:
            busy_s = min(2.0, max(0.02, rng.expovariate(1 / 0.25)))
            return busy_s, self._tdp_w * rng.uniform(0.55, 1.0)
        quiet_s = min(2.0, max(0.01, rng.expovariate(1 / 0.2)))
        return quiet_s, self._tdp_w * rng.uniform(0.30, 0.40)

    def state(self) -> tuple[float, ...]:
        return (float(self._busy_next),)

    def restore(self, state: Sequence[float]) -> None:
        self._busy_next = bool(state[0])


def inference(tdp_w: float, rng: random.Random) -> Inference:
    """An :class:`Inference` stream."""
    return Inference(tdp_w, rng)


class Idle:
    """An idle GPU: 70-90 W, wandering every 0.5-2 s."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def next_segment(self) -> tuple[float, float]:
        return self.rng.uniform(0.5, 2.0), self.rng.uniform(70.0, 90.0)

    def state(self) -> tuple[float, ...]:
        return ()

    def restore(self, state: Sequence[float]) -> None:
        pass


def idle(rng: random.Random) -> Idle:
    """An :class:`Idle` stream."""
    return Idle(rng)


@dataclass(frozen=True)
class Trace:
    """A parsed power trace: ``durations_s[i]`` is how long row ``i`` holds, ``columns[g][i]`` its
    demand in watts for GPU column ``g``. The last row holds as long as the one before it."""

    durations_s: tuple[float, ...]
    columns: tuple[tuple[float, ...], ...]

    @property
    def period_s(self) -> float:
        return math.fsum(self.durations_s)


class TraceError(GridtaoError, ValueError):
    """A malformed trace file; the message names the line and the reason."""


def load_trace(path: str | Path) -> Trace:
    """Parse a CSV of ``t_s,watts`` or ``t_s,gpu0,gpu1,...`` rows (an optional header line is
    skipped). Times must start at >= 0 and strictly increase; watts must be finite and >= 0.

    Raises :class:`TraceError` (or ``OSError`` if the file cannot be read).
    """
    times: list[float] = []
    rows: list[list[float]] = []
    check_regular(path)  # a device or a FIFO would never end or never open
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, raw in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in raw]
            if not cells or all(not c for c in cells) or cells[0].startswith("#"):
                continue
            try:
                numbers = [float(c) for c in cells]
            except ValueError:
                if not times and lineno == 1:
                    continue  # a header line
                raise TraceError(f"line {lineno}: expected numbers, got {raw!r}") from None
            if len(numbers) < 2:
                raise TraceError(f"line {lineno}: expected t_s and at least one watts column")
            if rows and len(numbers) != len(rows[0]) + 1:
                raise TraceError(
                    f"line {lineno}: expected {len(rows[0]) + 1} columns, got {len(numbers)}"
                )
            t, watts = numbers[0], numbers[1:]
            if not all(math.isfinite(x) for x in numbers):
                raise TraceError(f"line {lineno}: values must be finite")
            if t < 0 or (times and t <= times[-1]):
                raise TraceError(f"line {lineno}: t_s must be >= 0 and strictly increasing")
            if any(w < 0 for w in watts):
                raise TraceError(f"line {lineno}: watts must be >= 0")
            times.append(t)
            rows.append(watts)
    if not rows:
        raise TraceError("no data rows")
    if len(times) == 1:
        durations = [1.0]
    else:
        durations = [b - a for a, b in itertools.pairwise(times)]
        durations.append(durations[-1])
    columns = tuple(tuple(r[g] for r in rows) for g in range(len(rows[0])))
    return Trace(tuple(durations), columns)


class Replay:
    """Column ``column % n_columns`` of a trace in a loop, starting ``offset_s`` into it."""

    def __init__(self, tr: Trace, column: int, offset_s: float, rng: random.Random) -> None:
        self.rng = rng  # unused by the stream itself: kept for :class:`Resumable`
        self._values = tr.columns[column % len(tr.columns)]
        self._durations = tr.durations_s
        offset = offset_s % tr.period_s
        i = 0
        while offset >= self._durations[i]:
            offset -= self._durations[i]
            i += 1
        # The first segment is what is left of row i; none when nothing is.
        left = self._durations[i] - offset
        self._first_s = left if left > 1e-12 else -1.0
        self._row = i if left > 1e-12 else (i + 1) % len(self._values)

    def next_segment(self) -> tuple[float, float]:
        i = self._row
        if self._first_s > 0:
            dur, self._first_s = self._first_s, -1.0
        else:
            dur = self._durations[i]
        self._row = (i + 1) % len(self._values)
        return dur, self._values[i]

    def state(self) -> tuple[float, ...]:
        return (float(self._row), self._first_s)

    def restore(self, state: Sequence[float]) -> None:
        self._row, self._first_s = int(state[0]), state[1]


def trace(tr: Trace, column: int, offset_s: float,
          rng: random.Random | None = None) -> Replay:
    """Replay column ``column % n_columns`` of ``tr`` in a loop, starting ``offset_s`` into it."""
    return Replay(tr, column, offset_s, rng if rng is not None else random.Random(0))


class Shaped:
    """``workload`` with its demand above ``floor_w`` scaled by ``shape`` at the simulated wall
    time: ``floor_w + (demand - floor_w) * shape.at(t)``, where ``t`` is ``start_wall_s`` (Unix
    seconds when the stream starts) plus the durations of the segments already yielded, taken
    at each segment's start. Demand at or below ``floor_w`` passes unchanged. Segments keep
    their durations, so the stream's timing (and its random draws) are those of ``workload``.
    """

    def __init__(self, workload: Resumable, shape: DailyShape, start_wall_s: float,
                 floor_w: float = SHAPED_FLOOR_W) -> None:
        self.rng = workload.rng
        self._inner = workload
        self._shape = shape
        self._t = start_wall_s
        self._floor_w = floor_w

    def next_segment(self) -> tuple[float, float]:
        dur, demand = self._inner.next_segment()
        if demand > self._floor_w:
            demand = self._floor_w + (demand - self._floor_w) * self._shape.at(self._t)
        self._t += dur
        return dur, demand

    def state(self) -> tuple[float, ...]:
        return (self._t, *self._inner.state())

    def restore(self, state: Sequence[float]) -> None:
        self._t = state[0]
        self._inner.restore(state[1:])


def shaped(workload: Resumable, shape: DailyShape, start_wall_s: float,
           floor_w: float = SHAPED_FLOOR_W) -> Shaped:
    """A :class:`Shaped` stream."""
    return Shaped(workload, shape, start_wall_s, floor_w)


def make_workload(
    kind: str, *, tdp_w: float, rng: random.Random, index: int, trace_data: Trace | None,
    shape: DailyShape | None = None, start_wall_s: float = 0.0,
) -> Resumable:
    """Build workload ``kind`` for GPU ``index``. A single-column trace is shared by all GPUs at
    random phase offsets; a multi-column trace gives GPU ``i`` column ``i`` in phase.

    ``shape``: when given, inference follows it (:func:`shaped`, starting at ``start_wall_s``,
    Unix seconds); training, idle and traces ignore it (training jobs run flat out day and
    night; a trace already carries its own time of day). ``None`` (the default) leaves every
    workload exactly as without the argument."""
    if kind == "training":
        return training(tdp_w, rng)
    if kind == "inference":
        base = inference(tdp_w, rng)
        return base if shape is None else shaped(base, shape, start_wall_s)
    if kind == "idle":
        return idle(rng)
    if kind == "trace":
        if trace_data is None:
            raise ValueError("the trace workload needs trace data")
        offset = rng.uniform(0.0, trace_data.period_s) if len(trace_data.columns) == 1 else 0.0
        return trace(trace_data, index, offset, rng)
    raise ValueError(f"unknown workload {kind!r}")
