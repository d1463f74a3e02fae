"""Measured response: when did node power actually reach an activation's target?

After the island commands caps, a ``ResponseMeter`` samples every GPU's instant power through the
same backend an operator would use (NVML field ``POWER_INSTANT``) every ``period_s`` until the
node sum enters the target band, then reports the time. This is what turns "limits were written"
into "power was cut", and what ``reached_at`` in the ack and the latency bench are made of.

Band (docs/sources.md#target-band): within ``band_fraction`` of the requested reduction from the
target. For a cut, being *below* the band is over-delivery, not a miss, so the test is one-sided:
``power <= target + band_fraction * (baseline - target)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from gridtao.clock import Clock
from gridtao.gpu.backend import GpuBackend, GpuError, GpuLost

log = logging.getLogger("gridtao.response")


@dataclass(frozen=True)
class Reached:
    """``event_id`` reached its band: ``reached_at`` monotonic s, ``reached_wall`` Unix s."""

    event_id: str
    reached_at: float
    reached_wall: float
    node_power_mw: float
    target_mw: float


@dataclass
class _Watch:
    event_id: str
    target_mw: float
    band_mw: float
    deadline: float


def band_mw(baseline_mw: float, target_mw: float, band_fraction: float) -> float:
    """Width of the target band in mW (at least 1 W so a zero reduction is reachable)."""
    return max(band_fraction * abs(baseline_mw - target_mw), 1000.0)


class ResponseMeter:
    """A thread that samples node power while any activation is still on its way to target."""

    def __init__(
        self,
        backend: GpuBackend,
        *,
        clock: Clock,
        on_reached: Callable[[Reached], None],
        band_fraction: float = 0.05,
        period_s: float = 0.001,
        timeout_s: float = 30.0,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._on_reached = on_reached
        self._band_fraction = band_fraction
        self._period_s = period_s
        self._timeout_s = timeout_s
        self._indices = [d.index for d in backend.devices()]
        self._watches: dict[str, _Watch] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gridtao-response", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def watch(self, event_id: str, *, baseline_mw: float, target_mw: float) -> None:
        """Start watching ``event_id``; reported once via ``on_reached`` (or dropped on timeout)."""
        band = band_mw(baseline_mw, target_mw, self._band_fraction)
        with self._cond:
            self._watches[event_id] = _Watch(
                event_id, target_mw, band, self._clock.now() + self._timeout_s
            )
            self._cond.notify_all()

    def node_power_mw(self) -> float | None:
        """One sample of node instant power, mW. A lost GPU counts as 0 W; any other failed read
        gives None (no sample), so a transient error never makes a cut look reached early."""
        total = 0.0
        for index in self._indices:
            try:
                total += self._backend.instant_power_mw(index)
            except GpuLost:
                # A lost GPU draws nothing we can measure: count the others, the cut still counts.
                continue
            except GpuError:
                return None
        return total

    def poll_once(self) -> list[Reached]:
        """Sample once and report every watch that reached its band (public for tests)."""
        with self._cond:
            if not self._watches:
                return []
            watches = list(self._watches.values())
        power = self.node_power_mw()
        now = self._clock.now()
        wall = self._clock.wall()
        done: list[Reached] = []
        expired: list[str] = []
        for w in watches:
            if power is not None and power <= w.target_mw + w.band_mw:
                done.append(Reached(w.event_id, now, wall, power, w.target_mw))
            elif now > w.deadline:
                expired.append(w.event_id)
        with self._cond:
            for r in done:
                self._watches.pop(r.event_id, None)
            for e in expired:
                self._watches.pop(e, None)
                log.warning("event %s: node power did not reach its target band in %.0f s",
                            e, self._timeout_s)
        for r in done:
            self._on_reached(r)
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._watches and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
            try:
                self.poll_once()
            except Exception:  # the meter must never die silently and leave acks unfinished
                log.exception("response meter sample failed")
            self._clock.sleep(self._period_s)
