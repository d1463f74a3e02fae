"""Each GPU's energy per minute from the read-back rounds (:class:`GpuEnergyAggregator`).

A round gives, per GPU, NVML's energy counter (mJ since the driver loaded; None without one or
when the read failed) and tier 1's latest instant power (mW). Between two rounds of one GPU the
energy is

* the counter's increase, when both rounds read the counter and it did not go back
  (``counter``);
* else the two power readings integrated (trapezoid; ``power``), when both are known and the
  rounds are at most ``max_hold_s`` apart. A counter that went back was reset (the driver was
  reloaded): its interval is measured by power and counted in :attr:`counter_resets`. NVML's
  counter is an unsigned 64-bit count of mJ, so it wraps after 2^64 mJ (585 million years at
  1 kW): a decrease is a wrap, counted as the increase through 2^64 and in
  :attr:`counter_wraps`, only when that increase is one a GPU could draw in the interval (at
  most :data:`MAX_GPU_W`; :func:`counter_increase_mj`), i.e. the previous reading was within
  that of 2^64; any other decrease is a reset;
* else nothing: the interval is not covered (rounds too far apart, no power either).

Each interval's energy is spread evenly over its seconds and cut at UTC minutes.

**Restarts.** What was counted is handed over with the counters' readings at that moment
(:meth:`take`: rows and :class:`~gridtao.history.rows.Checkpoint` s, written in one
transaction). A new aggregator seeded with the stored checkpoints (:meth:`resume`) measures its
first interval from them: the counter's increase over the time the agent was down (up to
``max_bridge_s``) is its energy, spread evenly over that time (``bridged``: the total is
measured, its shape over the gap is not). Nothing is counted twice (the checkpoint is exactly
where the counted energy ends) and nothing is dropped while the driver stays loaded. A counter
that went back across the restart (the driver reloaded, or the machine rebooted) leaves the
gap uncovered: only power measured at both ends of a short interval is integrated.

Units: Unix seconds, joules (mJ and mW as read). Not thread-safe: the recorder's thread feeds
it and takes from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gridtao.clock import boot_id
from gridtao.gpu.counters import COUNTER_MODULUS, MAX_GPU_W, counter_increase_mj
from gridtao.history.rows import Checkpoint, GpuMethod, GpuMinuteRow, merge_method, minute_pieces

__all__ = ["COUNTER_MODULUS", "MAX_GPU_W", "GpuEnergyAggregator", "GpuId",
           "counter_increase_mj", "gpu_series"]

#: A GPU's identity in a round: (index as the agent numbers it, UUID).
GpuId = tuple[int, str]
def gpu_series(uuid: str, boot: str) -> str:
    """The checkpoint name of a GPU's energy counter in boot ``boot`` (the counter starts again
    when the driver loads: a reading from another boot says nothing of this one's)."""
    return json.dumps(["gpu", uuid, boot])


@dataclass
class _Last:
    t_s: float
    counter_mj: int | None
    power_w: float | None


@dataclass
class _Acc:
    index: int
    energy_j: float = 0.0
    covered_s: float = 0.0
    power_s: float = 0.0
    method: GpuMethod | None = None


class GpuEnergyAggregator:
    """Read-back rounds -> per-GPU minute energy (module docstring). ``max_hold_s``: the
    longest interval measured by power; ``max_bridge_s``: the longest time without a round
    that a counter's increase is counted over."""

    def __init__(self, *, max_hold_s: float = 2.0, max_bridge_s: float = 86_400.0,
                 boot: str | None = None) -> None:
        if not (math.isfinite(max_hold_s) and max_hold_s > 0):
            raise ValueError(f"max_hold_s must be > 0, got {max_hold_s}")
        if not (math.isfinite(max_bridge_s) and max_bridge_s >= max_hold_s):
            raise ValueError(f"max_bridge_s must be >= max_hold_s, got {max_bridge_s}")
        self.max_hold_s = max_hold_s
        self.max_bridge_s = max_bridge_s
        #: This boot's id (``clock.boot_id``): checkpoints of other boots are not resumed.
        self.boot = boot_id() if boot is None else boot
        self._last: dict[str, _Last] = {}
        self._acc: dict[tuple[int, str], _Acc] = {}
        #: Intervals whose counter went back (measured by power where it could be).
        self.counter_resets = 0
        #: Intervals whose counter wrapped through 2^64 mJ (counted through the wrap).
        self.counter_wraps = 0
        #: Rounds ignored: not after the GPU's previous one (the wall clock stepped back).
        self.ignored = 0
        #: Seconds the agent was down that a counter's increase bridged.
        self.bridged_s = 0.0

    def resume(self, checkpoints: Iterable[Checkpoint]) -> None:
        """Carry on from a previous agent's counters (stored checkpoints of GPUs) read in this
        boot; a checkpoint from another boot (or one that does not say) is not carried on: the
        machine rebooted, the counter started again, and what it reads now is not the energy
        of the time the agent was down."""
        for c in checkpoints:
            try:
                kind, uuid, boot = json.loads(c.series)
            except (ValueError, TypeError):
                continue
            if (kind == "gpu" and isinstance(uuid, str) and boot == self.boot and self.boot
                    and uuid not in self._last and c.value is not None):
                self._last[uuid] = _Last(c.wall_s, int(c.value), None)

    def add(self, wall_s: float, gpus: Sequence[GpuId], energy_mj: Sequence[int | None],
            power_mw: Sequence[float | None]) -> None:
        """One read-back round at ``wall_s`` (Unix s): per GPU its counter (mJ or None) and its
        instant power (mW, None or not finite: unknown)."""
        if not math.isfinite(wall_s):
            self.ignored += 1
            return
        for (index, uuid), mj, mw in zip(gpus, energy_mj, power_mw, strict=True):
            power = (mw / 1000.0 if mw is not None and math.isfinite(mw) and mw >= 0.0
                     else None)
            now = _Last(wall_s, mj, power)
            last = self._last.get(uuid)
            if last is not None and wall_s <= last.t_s:
                self.ignored += 1
                continue
            self._last[uuid] = now
            if last is not None:
                self._interval(index, uuid, last, now)

    def _interval(self, index: int, uuid: str, a: _Last, b: _Last) -> None:
        dt = b.t_s - a.t_s
        if a.counter_mj is not None and b.counter_mj is not None:
            increase = counter_increase_mj(a.counter_mj, b.counter_mj, dt)
            if increase is not None:
                self.counter_wraps += b.counter_mj < a.counter_mj
                if dt <= self.max_hold_s:
                    self._spread(index, uuid, a.t_s, b.t_s, increase / 1000.0, "counter")
                elif dt <= self.max_bridge_s:
                    self.bridged_s += dt
                    self._spread(index, uuid, a.t_s, b.t_s, increase / 1000.0, "bridged")
                return
            self.counter_resets += 1
        if a.power_w is not None and b.power_w is not None and dt <= self.max_hold_s:
            self._spread(index, uuid, a.t_s, b.t_s, (a.power_w + b.power_w) / 2.0 * dt,
                         "power")

    def _spread(self, index: int, uuid: str, t0: float, t1: float, joules: float,
                method: GpuMethod) -> None:
        dt = t1 - t0
        for start, seconds in minute_pieces(t0, t1):
            acc = self._acc.get((start, uuid))
            if acc is None:
                acc = self._acc[(start, uuid)] = _Acc(index)
            acc.index = index
            acc.energy_j += joules * seconds / dt
            acc.covered_s += seconds
            if method == "power":
                acc.power_s += seconds
            acc.method = method if acc.method is None else merge_method(acc.method, method)

    def take(self) -> tuple[list[GpuMinuteRow], list[Checkpoint]]:
        """What was counted since the last take (rows to merge into the store, oldest first)
        and the counters it ends at; then starts counting afresh from there."""
        rows = [GpuMinuteRow(start, uuid, acc.index, max(0.0, acc.energy_j),
                             min(60.0, acc.covered_s), min(60.0, acc.power_s, acc.covered_s),
                             acc.method or "counter")
                for (start, uuid), acc in sorted(self._acc.items()) if acc.covered_s > 0.0]
        self._acc.clear()
        checkpoints = [Checkpoint(gpu_series(uuid, self.boot), last.t_s,
                                  None if last.counter_mj is None else float(last.counter_mj))
                       for uuid, last in sorted(self._last.items())]
        return rows, checkpoints
