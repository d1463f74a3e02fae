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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gridtao.errors import GridtaoError
from gridtao.gpu.sim.daily import DailyShape

#: The level a shaped workload falls to when its daily multiplier is 0 (an idle GPU's draw).
SHAPED_FLOOR_W = 80.0


class Workload(Protocol):
    def next_segment(self) -> tuple[float, float]:
        """The next stretch of constant demand: ``(duration_s > 0, demand_w >= 0)``."""
        ...


class _Segments:
    """Adapts a generator of segments to :class:`Workload`."""

    def __init__(self, segments: Iterator[tuple[float, float]]) -> None:
        self._segments = segments

    def next_segment(self) -> tuple[float, float]:
        return next(self._segments)


def training(tdp_w: float, rng: random.Random) -> Workload:
    """Data-parallel training: compute at ~88 % of TDP (+-2 % jitter every 40-120 ms), then a
    communication dip to 50-60 % of TDP for 50-300 ms, once per step of 0.5-2 s.

    The step period is drawn once per GPU (with +-10 % jitter per step) and the stream starts at
    a random point of its first step, so GPUs built from different generators are out of phase.
    """

    def gen() -> Iterator[tuple[float, float]]:
        period_s = rng.uniform(0.5, 2.0)
        base = rng.uniform(0.86, 0.90)
        first = True
        while True:
            step_s = period_s * rng.uniform(0.9, 1.1)
            dip_s = rng.uniform(0.05, 0.3)
            compute_s = max(0.1, step_s - dip_s)
            if first:
                compute_s *= rng.random()
                first = False
            while compute_s > 1e-9:
                chunk_s = min(compute_s, rng.uniform(0.04, 0.12))
                compute_s -= chunk_s
                level = base * (1.0 + rng.gauss(0.0, 0.02))
                yield chunk_s, tdp_w * min(1.0, max(0.05, level))
            yield dip_s, tdp_w * rng.uniform(0.50, 0.60)

    return _Segments(gen())


def inference(tdp_w: float, rng: random.Random) -> Workload:
    """Online inference: request bursts at 55-100 % of TDP (exponential lengths, mean 250 ms)
    separated by quiet gaps at 30-40 % of TDP (exponential lengths, mean 200 ms)."""

    def gen() -> Iterator[tuple[float, float]]:
        while True:
            busy_s = min(2.0, max(0.02, rng.expovariate(1 / 0.25)))
            yield busy_s, tdp_w * rng.uniform(0.55, 1.0)
            quiet_s = min(2.0, max(0.01, rng.expovariate(1 / 0.2)))
            yield quiet_s, tdp_w * rng.uniform(0.30, 0.40)

    return _Segments(gen())


def idle(rng: random.Random) -> Workload:
    """An idle GPU: 70-90 W, wandering every 0.5-2 s."""

    def gen() -> Iterator[tuple[float, float]]:
        while True:
            yield rng.uniform(0.5, 2.0), rng.uniform(70.0, 90.0)

    return _Segments(gen())


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


def trace(tr: Trace, column: int, offset_s: float) -> Workload:
    """Replay column ``column % n_columns`` of ``tr`` in a loop, starting ``offset_s`` into it."""
    values = tr.columns[column % len(tr.columns)]
    durations = tr.durations_s

    def gen() -> Iterator[tuple[float, float]]:
        offset = offset_s % tr.period_s
        i = 0
        while offset >= durations[i]:
            offset -= durations[i]
            i += 1
        if durations[i] - offset > 1e-12:
            yield durations[i] - offset, values[i]
        i = (i + 1) % len(values)
        while True:
            yield durations[i], values[i]
            i = (i + 1) % len(values)

    return _Segments(gen())


def shaped(workload: Workload, shape: DailyShape, start_wall_s: float,
           floor_w: float = SHAPED_FLOOR_W) -> Workload:
    """``workload`` with its demand above ``floor_w`` scaled by ``shape`` at the simulated wall
    time: ``floor_w + (demand - floor_w) * shape.at(t)``, where ``t`` is ``start_wall_s`` (Unix
    seconds when the stream starts) plus the durations of the segments already yielded, taken
    at each segment's start. Demand at or below ``floor_w`` passes unchanged. Segments keep
    their durations, so the stream's timing (and its random draws) are those of ``workload``.
    """

    def gen() -> Iterator[tuple[float, float]]:
        t = start_wall_s
        while True:
            dur, demand = workload.next_segment()
            if demand > floor_w:
                demand = floor_w + (demand - floor_w) * shape.at(t)
            yield dur, demand
            t += dur

    return _Segments(gen())


def make_workload(
    kind: str, *, tdp_w: float, rng: random.Random, index: int, trace_data: Trace | None,
    shape: DailyShape | None = None, start_wall_s: float = 0.0,
) -> Workload:
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
        return trace(trace_data, index, offset)
    raise ValueError(f"unknown workload {kind!r}")
