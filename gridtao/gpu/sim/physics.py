"""Power physics of one simulated GPU, integrated exactly (no fixed substeps).

Model (watts and seconds inside; the NVML facade converts to mW/mJ):

* ``demand_w(t)``: what the workload would draw unhindered, piecewise constant.
* ``ceiling_w(t)``: the power the clocks currently allow. It follows the enforced limit ``L``
  through a first-order lag, with time constant ``cap_down_s`` when falling (firmware throttles
  fast) and ``cap_up_s`` when rising (clocks step back up gradually: a V100 took ~0.4 s to
  recover 200->280 W, docs/sources.md#gpu-power-response).
* true draw ``p(t) = min(demand_w(t), ceiling_w(t))``. Demand changes pass straight through: a
  job's own phase changes are not slowed by the power controller, only the limit is.
* work, counted in full-speed joules (the energy the job would have spent on it drawing what it
  asks for; ``throughput.py`` turns them into tokens or samples): work arrives at ``demand_w``
  and is served at ``D * (p / D) ** exponent`` while the job asks for ``D`` and draws ``p``
  (``throughput.served_w``). A job that cannot wait (training, a replayed trace: ``queued``
  false) asks for its demand and loses what a cap holds back. An inference server (``queued``)
  keeps what it could not serve in a backlog: while the backlog is not empty it runs flat out
  (asks for ``busy_w``, its largest batch) until it has caught up, so a cap that only clips its
  bursts costs it latency, not work, as long as what it can serve at the cap exceeds what
  arrives. A backlog over :data:`MAX_BACKLOG_S` of full-speed work is dropped (requests time
  out): that work is lost.

Between events (a workload segment boundary, a limit change, a reading refresh) demand and
limit are constant, so ``ceiling_w`` is an exact exponential, the crossing with demand is found
in closed form, and energy is the exact integral. Advancing costs O(events), whatever the gap.

The instant reading is the true draw sampled every ``refresh_s`` on a fixed grid, plus gaussian
noise; a read returns the latest sample. The noise on sample ``k`` of the grid is a function of
``k`` and a key drawn once (``noise.py``), so every replica of one GPU's state (``shared.py``)
draws the same.
The average reading is the mean true draw over the window of ``round(1 s / refresh_s)`` refresh
periods ending at the latest sample.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from gridtao.gpu.sim.noise import keyed_gauss
from gridtao.gpu.sim.throughput import served_w
from gridtao.gpu.sim.workloads import Workload

# A ceiling this close to the limit has converged; snapping avoids endless exponential tails.
_SNAP_W = 1e-6


class WorkTotals(NamedTuple):
    """A GPU's work since it was built, in full-speed joules (see the module docstring):
    ``served``, ``arrived`` (what it would have served unhindered) and ``backlog`` (waiting)."""

    served_j: float
    arrived_j: float
    backlog_j: float


#: How many floats :meth:`GpuPhysics.export` gives before the average window.
STATE_SCALARS = 15
#: A queued server's backlog is capped at this many seconds of its full-speed work, s: requests
#: that waited longer have timed out (ours: a round figure for an online service's patience).
MAX_BACKLOG_S = 30.0
#: A backlog under this (full-speed J) is empty ...
_EMPTY_J = 1e-9
#: ... and so is one left where it was found to empty, under this share of what it was ...
_CROSSING_SLACK = 1e-3
#: ... or after this many tries within one stretch (the ceiling moved under each estimate).
_MAX_CROSSINGS = 4


class GpuPhysics:
    """State of one GPU. Not thread-safe: the caller holds the device's lock.

    Time only moves forward: :meth:`advance` to a time earlier than the state's is a no-op.
    """

    __slots__ = (
        "_arrived_j",
        "_backlog_j",
        "_busy_w",
        "_cap_down_s",
        "_cap_up_s",
        "_ceiling_w",
        "_energy_j",
        "_exponent",
        "_grid0_s",
        "_k",
        "_n_window",
        "_next_refresh_s",
        "_noise_key",
        "_noise_w",
        "_override_w",
        "_profile_demand_w",
        "_queued",
        "_refresh_s",
        "_sample_t_s",
        "_sample_w",
        "_seg_end_s",
        "_served_j",
        "_t",
        "_window_j",
        "_workload",
        "limit_w",
    )

    def __init__(
        self,
        *,
        t0_s: float,
        limit_w: float,
        workload: Workload,
        cap_down_s: float,
        cap_up_s: float,
        refresh_s: float,
        noise_w: float,
        rng: random.Random,
        energy_offset_j: float,
        exponent: float = 1.0,
        queued: bool = False,
        busy_w: float = 0.0,
    ) -> None:
        """``exponent``: of the job's throughput curve, in (0, 1]; ``queued``: the job keeps
        what it could not serve (an inference server) and then asks for ``busy_w`` (W, its
        largest demand) until it has caught up; else it loses it."""
        if min(cap_down_s, cap_up_s, refresh_s) <= 0:
            raise ValueError("time constants and the refresh period must be > 0")
        if not 0.0 < exponent <= 1.0:
            raise ValueError("the throughput exponent must be in (0, 1]")
        self._exponent = exponent
        self._queued = queued
        self._busy_w = busy_w
        self._backlog_j = self._served_j = self._arrived_j = 0.0
        self._t = t0_s
        self.limit_w = limit_w
        self._ceiling_w = limit_w
        self._cap_down_s = cap_down_s
        self._cap_up_s = cap_up_s
        self._refresh_s = refresh_s
        self._noise_w = noise_w
        self._workload = workload
        dur, self._profile_demand_w = workload.next_segment()
        self._seg_end_s = t0_s + dur
        self._override_w: float | None = None
        self._energy_j = energy_offset_j
        # The device has been running its workload at steady state before t0: the last refresh
        # happened a random fraction of a period ago, and the average window is already full.
        p0 = self.draw_w()
        phase_s = rng.uniform(0.0, refresh_s)
        self._grid0_s = t0_s - phase_s
        self._k = 0
        self._next_refresh_s = self._grid0_s + refresh_s
        self._n_window = max(1, round(1.0 / refresh_s))
        e_last = energy_offset_j - phase_s * p0
        self._window_j: deque[float] = deque(
            (e_last - i * refresh_s * p0 for i in range(self._n_window, -1, -1)),
            maxlen=self._n_window + 1,
        )
        self._noise_key = rng.getrandbits(64)
        self._sample_t_s = self._grid0_s
        self._sample_w = self._noisy(p0)

    # -- observables (valid after advance(now)) --------------------------------------------

    @property
    def demand_w(self) -> float:
        """What arrives now, W: the workload's (or the override's) demand, what the job would
        draw unhindered."""
        return self._profile_demand_w if self._override_w is None else self._override_w

    @property
    def asked_w(self) -> float:
        """What the job asks for now, W: its demand, or ``busy_w`` while a backlog waits."""
        d = self.demand_w
        return max(d, self._busy_w) if self._backlog_j > 0.0 else d

    def draw_w(self) -> float:
        """True draw at the state's time."""
        return min(self.asked_w, self._ceiling_w)

    def work(self) -> WorkTotals:
        """The work served, arrived and waiting at the state's time."""
        return WorkTotals(self._served_j, self._arrived_j, self._backlog_j)

    @property
    def ceiling_w(self) -> float:
        return self._ceiling_w

    @property
    def energy_j(self) -> float:
        """Energy counter, J (exact integral of the true draw, plus the start offset)."""
        return self._energy_j

    @property
    def sample_w(self) -> float:
        """Latest instant-power sample (with noise), W."""
        return self._sample_w

    @property
    def sample_t_s(self) -> float:
        """Clock time of the latest sample, s."""
        return self._sample_t_s

    def average_w(self) -> float:
        """Mean true draw over the ~1 s window ending at the latest sample, W."""
        w = self._window_j
        return (w[-1] - w[0]) / (self._n_window * self._refresh_s)

    # -- inputs ----------------------------------------------------------------------------

    def set_limit(self, t_s: float, limit_w: float) -> None:
        self.advance(t_s)
        self.limit_w = limit_w

    def set_override(self, t_s: float, demand_w: float | None) -> None:
        self.advance(t_s)
        self._override_w = demand_w

    # -- integration -----------------------------------------------------------------------

    def advance(self, t1: float) -> None:
        """Move the state to time ``t1`` (s), taking refresh samples and workload steps."""
        t = self._t
        if t1 <= t:
            return
        # Refreshes older than the average window before t1 can never be observed: skip them,
        # but keep every workload segment (the demand stream is sequential).
        horizon = t1 - (self._n_window + 1) * self._refresh_s
        if self._next_refresh_s < horizon:
            self._k = math.ceil((horizon - self._grid0_s) / self._refresh_s) - 1
            self._next_refresh_s = self._grid0_s + (self._k + 1) * self._refresh_s
        while True:
            te = min(self._seg_end_s, self._next_refresh_s, t1)
            if te > t:
                self._evolve(te - t)
                t = te
                self._t = t
            if te >= self._next_refresh_s:
                self._k += 1
                self._sample_t_s = te
                self._sample_w = self._noisy(self.draw_w())
                self._window_j.append(self._energy_j)
                self._next_refresh_s = self._grid0_s + (self._k + 1) * self._refresh_s
            if te >= self._seg_end_s:
                dur, self._profile_demand_w = self._workload.next_segment()
                self._seg_end_s += dur
            if te >= t1:
                return

    def _noisy(self, watts: float) -> float:
        """``watts`` plus the noise of the current sample ``_k``."""
        if self._noise_w <= 0:
            return watts
        return max(0.0, watts + self._noise_w * keyed_gauss(self._noise_key, self._k))

    # -- the state, for replicas in other processes ------------------------------------------

    @property
    def window_len(self) -> int:
        """How many floats of :meth:`export`'s window (fixed by the refresh period)."""
        return self._n_window + 1

    @property
    def workload(self) -> Workload:
        return self._workload

    @property
    def segment_end_s(self) -> float:
        """When the workload's current segment ends (moves whenever a segment is drawn)."""
        return self._seg_end_s

    def export(self) -> tuple[tuple[float, ...], Sequence[float]]:
        """The whole mutable state but the workload's: :data:`STATE_SCALARS` floats (the sixth
        is the sample index, which moves whenever the window does), and the average window's
        :attr:`window_len` energy marks (J, oldest first; a live view: copy it to keep it)."""
        override = math.nan if self._override_w is None else self._override_w
        scalars = (self._t, self.limit_w, self._ceiling_w, self._energy_j, self._grid0_s,
                   float(self._k), self._next_refresh_s, override, self._profile_demand_w,
                   self._seg_end_s, self._sample_t_s, self._sample_w, self._backlog_j,
                   self._served_j, self._arrived_j)
        return scalars, self._window_j

    def load(self, scalars: Sequence[float], window: Sequence[float]) -> None:
        """Take the state :meth:`export` gave (of a GPU built with the same arguments)."""
        if len(scalars) != STATE_SCALARS or len(window) != self.window_len:
            raise ValueError("state of another shape")
        (self._t, self.limit_w, self._ceiling_w, self._energy_j, self._grid0_s, k,
         self._next_refresh_s, override, self._profile_demand_w, self._seg_end_s,
         self._sample_t_s, self._sample_w, self._backlog_j, self._served_j,
         self._arrived_j) = scalars
        self._k = int(k)
        self._override_w = None if math.isnan(override) else override
        self._window_j = deque(window, maxlen=self.window_len)

    def _evolve(self, dt: float) -> None:
        """Integrate ``dt`` seconds with constant demand and limit: energy, and the work that
        arrives and is served. A queued job's backlog may empty inside the stretch; it then
        asks for its demand again from that moment (found at the ceiling the stretch starts
        with: the stretches between refreshes are short)."""
        d = self.demand_w
        crossings = 0
        while dt > 0.0:
            asked = self.asked_w
            step = dt
            backlog0 = self._backlog_j
            if self._queued and backlog0 > 0.0:
                drain_w = served_w(min(asked, self._ceiling_w), asked, self._exponent) - d
                if drain_w > 0.0 and backlog0 < drain_w * dt:
                    step = backlog0 / drain_w
                    crossings += 1
            # The mean draw over the step stands for the draw: exact while the ceiling is flat,
            # which it is but for a few time constants after each limit change.
            served = served_w(self._energy(asked, step) / step, asked, self._exponent) * step
            self._arrived_j += d * step
            if self._queued:
                backlog = backlog0 + d * step - served
                # Where the backlog was found to empty (at the ceiling the step began with, which
                # may have moved since), or floating-point dust is left: what is left was served
                # in the step, so arrived = served + waiting holds exactly.
                tol = _EMPTY_J if step == dt else max(_EMPTY_J, _CROSSING_SLACK * backlog0)
                if backlog < tol or (step < dt and crossings > _MAX_CROSSINGS):
                    served += backlog
                    backlog = 0.0
                cap = MAX_BACKLOG_S * max(self._busy_w, d)
                self._backlog_j = min(backlog, cap)  # beyond it requests time out: dropped
            self._served_j += served
            dt -= step

    def _energy(self, d: float, dt: float) -> float:
        """Integrate ``dt`` seconds of a job asking for ``d`` W under a constant limit: adds to
        the energy counter, moves the ceiling, returns the energy drawn (J)."""
        lim = self.limit_w
        c0 = self._ceiling_w
        if c0 == lim:
            e = min(d, lim) * dt
            self._energy_j += e
            return e
        tau = self._cap_down_s if c0 > lim else self._cap_up_s
        a = c0 - lim
        c1 = lim + a * math.exp(-dt / tau)

        def ceiling_integral(s0: float, s1: float) -> float:
            return lim * (s1 - s0) + a * tau * (math.exp(-s0 / tau) - math.exp(-s1 / tau))

        if a > 0:  # falling ceiling: demand-limited first, then ceiling-limited
            if d >= c0:
                e = ceiling_integral(0.0, dt)
            elif d <= c1:
                e = d * dt
            else:
                s = tau * math.log(a / (d - lim))
                e = d * s + ceiling_integral(s, dt)
        else:  # rising ceiling: ceiling-limited first, then demand-limited
            if d <= c0:
                e = d * dt
            elif d >= c1:
                e = ceiling_integral(0.0, dt)
            else:
                s = tau * math.log(a / (d - lim))
                e = ceiling_integral(0.0, s) + d * (dt - s)
        self._energy_j += e
        self._ceiling_w = lim if abs(c1 - lim) < _SNAP_W else c1
        return e
