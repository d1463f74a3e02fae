"""Each GPU's energy for the report: the history's GPU minutes (:class:`GpuMinute`) summed per
GPU over the window, its UTC hours and days (:class:`GpuSpan`, :class:`GpuEnergy`).

As for the node's energy (gridtao/records/report/minutes.py), nothing is filled in: a minute
with no row counts for nothing and lowers ``coverage``; a minute cut by the span's edge counts
for the share of its 60 s inside. Each span says how its energy was measured: the seconds from
the GPU's energy counter, from its power readings (``power_s``), and bridged (the counter's
increase over a time the agent was down, spread evenly: ``bridged_s``).

Units: times Unix seconds (UTC), energy kWh in a span (J in the rows).
Threads: pure computation over values the caller has read; any thread.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gridtao.records.report.common import DAY_S, HOUR_S, J_PER_KWH, MINUTE_S, coverage, mean_w

__all__ = ["GpuEnergy", "GpuMinute", "GpuSpan", "buckets", "energy_by_index", "gpu_energy",
           "share"]


class GpuMinute(Protocol):
    """One GPU's minute of the history (:class:`gridtao.history.GpuMinuteRow`): ``energy_j``
    over ``covered_s`` of ``[start_s, start_s + 60)``; ``power_s`` of it from power readings;
    ``method`` counter, power, bridged or mixed; ``gpu`` its UUID, ``index`` its driver
    index."""

    @property
    def start_s(self) -> int: ...

    @property
    def gpu(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def energy_j(self) -> float: ...

    @property
    def covered_s(self) -> float: ...

    @property
    def power_s(self) -> float: ...

    @property
    def method(self) -> str: ...


def share(start_s: float, a: float, b: float) -> float:
    """The share of the minute starting at ``start_s`` inside ``[a, b)``, in [0, 1]."""
    return max(0.0, min(b, start_s + MINUTE_S) - max(a, start_s)) / MINUTE_S


def buckets(a: float, b: float, size: int) -> list[tuple[float, float]]:
    """``[a, b)`` cut at the UTC multiples of ``size`` seconds."""
    out: list[tuple[float, float]] = []
    t = math.floor(a / size) * size
    while t < b:
        out.append((float(max(a, t)), float(min(b, t + size))))
        t += size
    return out


@dataclass(frozen=True)
class GpuSpan:
    """One GPU's energy over ``[start_s, end_s)``: ``energy_kwh`` over ``covered_s`` of
    ``expected_s`` seconds; ``minutes``: stored minutes in the span; ``power_s`` and
    ``bridged_s``: covered seconds measured from power readings and bridged across the agent's
    downtime (the rest: the energy counter between read-back rounds); ``mixed_s``: covered
    seconds of minutes that themselves mixed two of these (a restart within the minute), which
    the stored minute does not split."""

    start_s: float
    end_s: float
    energy_kwh: float
    expected_s: float
    covered_s: float
    minutes: int
    power_s: float
    bridged_s: float
    mixed_s: float = 0.0

    @property
    def coverage(self) -> float:
        """Share of the span covered, in [0, 1]."""
        return coverage(self.covered_s, self.expected_s)

    @property
    def mean_w(self) -> float | None:
        """Mean draw over the covered time (W); None when nothing is covered."""
        return mean_w(self.energy_kwh, self.covered_s)

    @property
    def method(self) -> str:
        """``counter``, ``power``, ``bridged``, ``mixed`` (two of them, or a minute that mixed
        them itself), or ``none`` (nothing covered)."""
        if self.mixed_s > 1e-9:
            return "mixed"
        counter = self.covered_s - self.power_s - self.bridged_s
        used = [name for name, s in (("counter", counter), ("power", self.power_s),
                                     ("bridged", self.bridged_s)) if s > 1e-9]
        return used[0] if len(used) == 1 else "none" if not used else "mixed"


@dataclass(frozen=True)
class GpuEnergy:
    """One GPU of a node over the window: ``total``, UTC ``hours`` and ``days``. A CPU package
    the agent read through RAPL (``work.cpu_power``) is in the ledger beside the GPUs as
    ``cpu:<package>``, index -1, -2, ...: :attr:`device` says which."""

    node: str
    gpu: str
    index: int
    total: GpuSpan
    hours: list[GpuSpan]
    days: list[GpuSpan]

    @property
    def device(self) -> str:
        """``gpu`` or ``cpu`` (a CPU package, RAPL)."""
        return "cpu" if self.gpu.startswith("cpu:") else "gpu"


class _Gpu:
    def __init__(self, rows: list[GpuMinute]) -> None:
        self.rows = sorted(rows, key=lambda r: r.start_s)
        self.starts = [r.start_s for r in self.rows]

    def span(self, a: float, b: float) -> GpuSpan:
        lo = bisect.bisect_left(self.starts, math.floor(a / MINUTE_S) * MINUTE_S)
        hi = bisect.bisect_left(self.starts, b)
        energy: list[float] = []
        covered: list[float] = []
        power: list[float] = []
        bridged: list[float] = []
        mixed: list[float] = []
        n = 0
        for r in self.rows[lo:hi]:
            f = share(r.start_s, a, b)
            if f <= 0.0:
                continue
            n += 1
            energy.append(r.energy_j * f)
            covered.append(r.covered_s * f)
            power.append(r.power_s * f)
            # A bridged minute's seconds are all bridged unless it is mixed; mixed minutes
            # count as measured between rounds (the row does not split them further).
            bridged.append(r.covered_s * f if r.method == "bridged" else 0.0)
            mixed.append(r.covered_s * f if r.method == "mixed" else 0.0)
        return GpuSpan(a, b, math.fsum(energy) / J_PER_KWH, max(0.0, b - a), math.fsum(covered),
                       n, math.fsum(power), math.fsum(bridged), math.fsum(mixed))


def gpu_energy(node: str, rows: Iterable[GpuMinute], from_s: float, to_s: float
               ) -> list[GpuEnergy]:
    """Per GPU of ``rows`` (by driver index, then UUID): its energy over ``[from_s, to_s)``,
    its hours and days. A GPU is named by its UUID; the index is its latest row's."""
    by_gpu: dict[str, list[GpuMinute]] = {}
    for r in rows:
        by_gpu.setdefault(r.gpu, []).append(r)
    out: list[GpuEnergy] = []
    for gpu, mine in by_gpu.items():
        g = _Gpu(mine)
        out.append(GpuEnergy(node, gpu, g.rows[-1].index, g.span(from_s, to_s),
                             [g.span(a, b) for a, b in buckets(from_s, to_s, HOUR_S)],
                             [g.span(a, b) for a, b in buckets(from_s, to_s, DAY_S)]))
    out.sort(key=lambda e: (e.index, e.gpu))
    return out


def energy_by_index(rows: Sequence[GpuMinute]) -> dict[int, dict[int, tuple[float, float]]]:
    """GPU index -> minute start -> (energy J, covered s) of that minute (summed if two UUIDs
    shared an index over time), for matching GPUs to the work sources mapped to them."""
    out: dict[int, dict[int, tuple[float, float]]] = {}
    for r in rows:
        minutes = out.setdefault(r.index, {})
        energy, covered = minutes.get(r.start_s, (0.0, 0.0))
        minutes[r.start_s] = (energy + r.energy_j, covered + r.covered_s)
    return out
