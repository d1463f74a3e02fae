"""Tier 1: the ~100 Hz loop that makes measured node power track the safety island's target.

Each :meth:`FastLoop.step` reads every GPU's instant power, hands the readings to the island
(the basis of its armed caps), advances the island's ramps, plans per-GPU limits from the
island's view and writes them *through the island* (``apply_limits``), which clamps them into
the envelope, scales them under the event's ceiling and refuses a plan made before a newer
trigger. The loop never calls ``backend.set_limit_mw`` itself.

Control law (math in :mod:`gridtao.control.tier1.allocation`):

* No event: limits rise toward the defaults, at most ``max_raise_w_per_s`` for the whole node
  (the island restores defaults itself when an event ends; this covers limits found low at
  start-up).
* Event with target ``T``: a node budget ``B`` starts at the island's caps and integrates the
  error ``T - P`` (P = summed instant readings), with target ramps fed straight through and
  ``B`` clamped under the ceiling (anti-windup). ``B`` is split by water-filling: GPUs using
  less than their limit keep their recent peak plus headroom, the rest share what is left.

A GPU whose read fails keeps its last reading and its current limit; the error is counted and
the loop goes on (the reads, their faults and the smoothed cut basis: readings.py; what a
step reports and how tracking is scored: results.py). Power is in mW; times are seconds of
the injected clock, except the loop's own duration (a CPU-cost measurement), which uses
``timer`` (real time by default).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gridtao.clock import Clock
from gridtao.config.agent import ControlConfig
from gridtao.control.response import band_mw
from gridtao.control.tier1.allocation import (
    NodeBudget,
    NodeSplit,
    PeakHold,
    SettleTracker,
    allocate_mw,
    raise_toward_mw,
    want_mw,
)
from gridtao.control.tier1.readings import DrawReadings
from gridtao.control.tier1.results import StepResult, node_error_stats
from gridtao.gpu.backend import GpuBackend
from gridtao.safety.island import IslandView, SafetyIsland
from gridtao.telemetry.metrics import Metrics

__all__ = ["FAILED_WRITE_RETRY_S", "FastLoop", "StepResult", "node_error_stats"]

log = logging.getLogger("gridtao.control.tier1.loop")

#: How often a GPU whose limit write failed is written again while the plan holds still (s):
#: often enough to catch a transient driver error, seldom enough not to hammer a lost GPU.
FAILED_WRITE_RETRY_S = 1.0


class FastLoop:
    """Tier-1 controller for one node. Not thread-safe: one thread calls :meth:`step` (or
    :meth:`run_forever`).

    ``rearm_period_s``: the island's armed caps are recomputed from the latest draw at least
    this often. ``peak_window_s``: how far back a GPU's peak draw counts as evidence of its
    demand. ``settle_s``: how long a GPU whose limit was raised keeps it while its draw climbs.
    ``write_deadband_mw``: during an event a new plan is written only if some GPU's limit moves
    by at least this much (or the event changed), so the loop does not issue 100 driver writes a
    second per GPU for sub-watt corrections.
    """

    def __init__(
        self,
        backend: GpuBackend,
        island: SafetyIsland,
        *,
        clock: Clock,
        config: ControlConfig,
        metrics: Metrics | None = None,
        heartbeat: Callable[[], None] | None = None,
        rearm_period_s: float = 0.5,
        peak_window_s: float = 1.0,
        settle_s: float = 0.75,
        write_deadband_mw: int = 1000,
        timer: Callable[[], float] = time.perf_counter,
        slow_read_s: float | None = None,
    ) -> None:
        if rearm_period_s <= 0 or peak_window_s <= 0 or settle_s < 0 or write_deadband_mw < 0:
            raise ValueError("periods must be > 0, settle_s and write_deadband_mw >= 0")
        self._backend = backend
        self._island = island
        #: How a node budget is split between GPUs (``control.allocation``): None, the
        #: proportional split; else e.g. the work-aware one (gridtao/app/workmodel.py). May be
        #: set from another thread at any time: one reference, read once per step.
        self.split: NodeSplit | None = None
        self._clock = clock
        self._config = config
        self._metrics = metrics
        self._heartbeat = heartbeat
        self._timer = timer
        self._period_s = 1.0 / config.fast_hz
        self._rearm_period_s = rearm_period_s
        self._deadband_mw = write_deadband_mw
        self._headroom_mw = config.headroom_w * 1000.0
        self._max_raise_mw_per_s = config.max_raise_w_per_s * 1000.0
        self._indices = [d.index for d in backend.devices()]
        n = len(self._indices)
        limits = [backend.power_limits(i) for i in self._indices]
        self._min_mw = [lim.min_mw for lim in limits]
        # Upper bound of every plan: the island's resting limits (the operator's limits found at
        # start, within the defaults), so tier 1 never raises a GPU above where it was.
        self._upper_mw = list(island.resting_mw)
        self._budget = NodeBudget(
            self._min_mw,
            self._upper_mw,
            # A dry run writes nothing, so the draw never answers a cap and the integral would
            # wind the planned limits down to the GPUs' minimums: plan open loop instead.
            integral_gain_per_s=0.0 if island.dry_run else config.integral_gain,
            max_raise_mw_per_s=self._max_raise_mw_per_s,
        )
        self._peaks = PeakHold(n, peak_window_s)
        self._settle = SettleTracker(n, settle_s, min_raise_mw=self._headroom_mw)
        self._retry_at: dict[int, float] = {}  # GPU index -> when its failed write is redone
        # Power reads, their faults and the cut basis (readings.py). A read slower than two
        # periods would halve the loop's rate for every GPU: such a GPU is read off the loop.
        self._readings = readings = DrawReadings(
            backend, self._indices, clock=clock, metrics=metrics,
            slow_s=slow_read_s if slow_read_s is not None else 2.0 * self._period_s,
        )
        self._limits_mw = [readings.read_limit(i, lim.default_mw) for i, lim in enumerate(limits)]
        # The readings' own list, refreshed in place each step (each GPU its limit until read).
        self._draw_mw = readings.seed(self._limits_mw)
        self._generation: int | None = None
        self._event_id: str | None = None
        self._safe_mode: str | None = None
        self._last_t: float | None = None
        self._last_rearm_t: float | None = None
        self._band_fraction = config.band_fraction
        self._at_target = False
        if metrics is not None:
            metrics.set_default_limits([lim.default_mw / 1000.0 for lim in limits])

    @property
    def period_s(self) -> float:
        return self._period_s

    @property
    def at_target(self) -> bool:
        """Whether the node's summed readings were within their band of the event's target at
        the last plan (``control.band_fraction`` of the cut from the draw basis): the cut's
        response is done. False with no event, or with no basis (an event that cannot cut).
        Set and read on tier 1's thread (the work-aware split reads it within a step)."""
        return self._at_target

    @property
    def draw_mw(self) -> tuple[float, ...]:
        """Last instant reading of each GPU, mW (a failed read keeps the previous one)."""
        return tuple(self._draw_mw)

    @property
    def read_faults(self) -> tuple[str | None, ...]:
        """Per GPU: the error kind of its failing power reads (e.g. ``"GpuLost"``),
        ``"GpuSlow"`` while a read too slow for the loop keeps it quarantined (read off the
        loop, stragglers.py), else None."""
        return self._readings.faults

    @property
    def limits_mw(self) -> tuple[int, ...]:
        return tuple(self._limits_mw)

    # ------------------------------------------------------------------ one iteration

    def _sync_to_island(self, view: IslandView) -> None:
        """A trigger, an event end or a safe state wrote limits behind our back: adopt them."""
        if view.safe_mode == "minimum":
            self._limits_mw = list(self._min_mw)
        elif view.caps_mw is not None:
            self._limits_mw = list(view.caps_mw)
        elif view.safe_mode is None:
            self._limits_mw = list(self._upper_mw)
        self._budget.deactivate()

    def _failed_write_due(self, island: SafetyIsland, now: float) -> bool:
        """Whether to write the plan again though it holds still: a GPU whose last limit write
        failed still holds its old limit, whatever the plan says, so the plan is written again
        at once and then about once every :data:`FAILED_WRITE_RETRY_S` while it keeps failing
        (a transient driver error then leaves no GPU short of, or over, its plan for good; a
        lost GPU is not hammered at the loop's rate)."""
        faults = island.write_faults()
        for i in [k for k in self._retry_at if k not in faults]:
            del self._retry_at[i]  # written since
        due = False
        for i in faults:
            if now >= self._retry_at.get(i, now):
                self._retry_at[i] = now + FAILED_WRITE_RETRY_S
                due = True
        return due

    def _follow_resting(self, resting_mw: tuple[int, ...], view: IslandView) -> None:
        """Take the island's resting limits when they moved (a limit an operator set from
        outside, adopted by the island): plans rise no higher, and the GPU is taken to be where
        the operator put it, so no plan ramps it from where it was before (fighting them). But
        where the GPU was read back above it (a write of ours planned before the adoption and
        landed after it), it is taken to be there, so the next plan brings it down."""
        if resting_mw == tuple(self._upper_mw):
            return
        enforced = self._island.enforced_mw()
        for i, (old, new) in enumerate(zip(self._upper_mw, resting_mw, strict=True)):
            if old != new:
                self._limits_mw[i] = max(new, enforced[i]) if view.target_mw is None else min(
                    self._limits_mw[i], new)
        self._upper_mw = list(resting_mw)
        self._budget.default_total_mw = float(sum(resting_mw))

    def _plan(self, view: IslandView, now: float, dt: float, failed: list[bool]) -> list[int]:
        if view.target_mw is None:
            self._at_target = False
            self._budget.deactivate()
            return raise_toward_mw(
                self._limits_mw, self._upper_mw, self._max_raise_mw_per_s * dt
            )
        measured_mw = sum(self._draw_mw)
        basis = view.basis_total_mw
        self._at_target = basis is not None and measured_mw <= view.target_mw + band_mw(
            basis, view.target_mw, self._band_fraction)
        if view.event_id != self._event_id:
            self._budget.deactivate()
        budget = self._budget.update(
            target_mw=view.target_mw,
            ceiling_mw=view.ceiling_total_mw,
            measured_mw=measured_mw,
            dt_s=dt,
            releasing=view.releasing,
        )
        settling = self._settle.settling(now)
        hold = [s or f for s, f in zip(settling, failed, strict=True)]
        want = want_mw(
            self._draw_mw,
            self._limits_mw,
            self._min_mw,
            self._upper_mw,
            self._headroom_mw,
            peak_mw=self._peaks.peaks(),
            hold=hold,
        )
        # Priority floors (tier 2) shape the split; the island still scales the plan under a
        # hard event ceiling with the true minimums.
        lower = self._min_mw if view.floors_mw is None else view.floors_mw
        return allocate_mw(budget, want, lower, self._upper_mw, split=self.split)

    def step(self) -> StepResult:
        """One iteration (see the module docstring). GPU read errors never propagate."""
        t0 = self._timer()
        now = self._clock.now()
        dt = self._period_s if self._last_t is None else max(0.0, now - self._last_t)
        self._last_t = now
        readings = self._readings
        failed = readings.read()
        island = self._island
        island.update_draw(readings.smoothed_basis(dt, self._config.basis_tau_s))
        self._peaks.update(now, self._draw_mw)
        island.tick()
        if self._last_rearm_t is None or now - self._last_rearm_t >= self._rearm_period_s:
            island.rearm()
            self._last_rearm_t = now
        view = island.view()
        self._follow_resting(island.resting_mw, view)
        changed = view.generation != self._generation
        if changed:
            if self._generation is not None:
                self._sync_to_island(view)
            self._generation = view.generation
        if self._safe_mode is not None and view.safe_mode is None:
            # Leaving a safe state writes nothing and keeps the generation: read what is set.
            self._limits_mw = [readings.read_limit(i, d) for i, d in enumerate(self._upper_mw)]
            changed = True
        self._safe_mode = view.safe_mode
        new = self._plan(view, now, dt, failed)
        self._event_id = view.event_id
        wrote = applied = False
        if view.target_mw is None:
            # Outside events the plan only ever steps toward the defaults; write every step of
            # it, or the last sub-deadband step would never land.
            moved = new != self._limits_mw
        else:
            moved = any(
                abs(a - b) >= self._deadband_mw
                for a, b in zip(new, self._limits_mw, strict=True)
            )
        redo = self._failed_write_due(island, now)
        if view.safe_mode is None and (moved or redo or (changed and new != self._limits_mw)):
            wrote = True
            applied = island.apply_limits(new, view.generation)
            if applied:
                self._settle.note_limits(now, self._limits_mw, new)
                self._limits_mw = new
        node_mw = sum(self._draw_mw)
        duration = self._timer() - t0
        if self._metrics is not None:
            m = self._metrics
            m.observe_gpus([d / 1000.0 for d in self._draw_mw],
                           [lim / 1000.0 for lim in island.enforced_mw()],
                           planned_w=[lim / 1000.0 for lim in self._limits_mw])
            m.observe_node(
                node_mw / 1000.0,
                None if view.target_mw is None else view.target_mw / 1000.0,
                # Any activation: an island event, or tier 2's commitment (FCR-D, FCR-N, DR).
                view.event_id is not None or view.commitment_mw is not None,
            )
            m.observe_fast_loop(duration)
        if self._heartbeat is not None:
            self._heartbeat()
        return StepResult(
            t_s=now,
            draw_mw=tuple(self._draw_mw),
            node_power_mw=node_mw,
            target_mw=view.target_mw,
            ceiling_mw=view.ceiling_total_mw,
            budget_mw=self._budget.budget_mw,
            limits_mw=tuple(self._limits_mw),
            wrote=wrote,
            applied=applied,
            read_errors=sum(failed),
            duration_s=duration,
        )

    # ------------------------------------------------------------------ runner

    def run_forever(self, stop: threading.Event) -> None:
        """Step at ``fast_hz`` on the injected clock until ``stop`` is set.

        An unexpected exception in a step is logged and the loop goes on; since the heartbeat
        is the step's last act, a step that keeps failing stops the heartbeat and lets the
        watchdog put the GPUs in their safe state. A late step is not made up for with a burst:
        the schedule restarts from now.
        """
        next_t = self._clock.now()
        failures = 0
        while not stop.is_set():
            try:
                self.step()
                failures = 0
            except Exception:
                failures += 1
                if failures == 1 or failures % 1000 == 0:
                    log.exception("tier 1 step failed (%d in a row)", failures)
            next_t += self._period_s
            now = self._clock.now()
            if next_t < now - self._period_s:
                next_t = now
            self._clock.sleep(next_t - now)
        self._readings.close()

    def start_thread(self, stop: threading.Event) -> threading.Thread:
        """Run :meth:`run_forever` on a daemon thread named ``gridtao-fast``."""
        thread = threading.Thread(
            target=self.run_forever, args=(stop,), name="gridtao-fast", daemon=True
        )
        thread.start()
        return thread
