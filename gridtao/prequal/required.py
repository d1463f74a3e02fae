"""What each grid product requires over a test: the product's spec, demand response's event
windows, and the required reduction at each sample, computed from the TSO's definition of the
product and the frequency the unit was sent (rules.py says which rules score it).

Pure functions: times in s from the test's start, powers in W at the settlement point,
frequencies in Hz, capacity > 0. No state, no threads.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gridtao.prequal import scoring as sc

__all__ = ["CROSSING_SLACK_S", "DrWindow", "ProductSpec", "check_glitches", "check_step_crossing",
           "required_dr", "required_fcr_d", "required_fcr_n", "required_static", "required_step",
           "static_recovered_s"]


@dataclass(frozen=True)
class ProductSpec:
    """What the scorer needs to know of the enrolled product (W, Hz, s)."""

    kind: str  # ffr | ercot-ffr | fcr-d-up | fcr-d-up-static | fcr-n | dr
    capacity_w: float
    threshold_hz: float = math.nan
    support_s: float = 0.0
    short_support: bool = True

    def __post_init__(self) -> None:
        if not self.capacity_w > 0:
            raise ValueError("capacity_w must be > 0")

    @property
    def full_activation_s(self) -> float:
        """The TSO's limit for this product (not the configured value)."""
        if self.kind == "ffr":
            for level, seconds in sorted(sc.FFR_FULL_ACTIVATION_S.items(), reverse=True):
                if self.threshold_hz >= level - 1e-9:
                    return seconds
            return min(sc.FFR_FULL_ACTIVATION_S.values())
        if self.kind == "ercot-ffr":
            return sc.ERCOT_FFR_ACTIVATION_S
        if self.kind == "fcr-d-up-static":
            return sc.FCR_D_STATIC_START_S
        return sc.FCR_D_T_S


@dataclass(frozen=True)
class DrWindow:
    """One demand-response event on the trace's time base (s) and its amount (W)."""

    event_id: str
    start_s: float
    ramp_s: float
    duration_s: float
    recovery_s: float
    amount_w: float
    interval_s: float = sc.DR_INTERVAL_S

    def level(self, t_s: float) -> float:
        if t_s < self.start_s - self.ramp_s:
            return 0.0
        if t_s < self.start_s:
            return (t_s - self.start_s + self.ramp_s) / self.ramp_s
        end = self.start_s + self.duration_s
        if t_s < end:
            return 1.0
        if t_s < end + self.recovery_s:
            return 1.0 - (t_s - end) / self.recovery_s
        return 0.0


# ---- requirements -----------------------------------------------------------------------------


def required_fcr_d(hz: float, capacity_w: float) -> float:
    share = (sc.FCR_D_START_HZ - hz) / (sc.FCR_D_START_HZ - sc.FCR_D_FULL_HZ)
    return capacity_w * min(1.0, max(0.0, share))


def required_fcr_n(hz: float, capacity_w: float) -> float:
    mid = (sc.FCR_N_LOW_HZ + sc.FCR_N_HIGH_HZ) / 2
    half = (sc.FCR_N_HIGH_HZ - sc.FCR_N_LOW_HZ) / 2
    return capacity_w * min(1.0, max(-1.0, (mid - hz) / half))


#: How far from the plan's step the recorded frequency may first reach the threshold (s).
CROSSING_SLACK_S = 0.5


def _first_at_threshold(t_s: Sequence[float], hz: Sequence[float], threshold_hz: float,
                        from_s: float) -> float | None:
    """The first sample time from ``from_s`` on with the frequency at or below
    ``threshold_hz`` (s), or None."""
    return next((t for t, f in zip(t_s, hz, strict=True)
                 if t >= from_s and f <= threshold_hz + 1e-9), None)


def check_step_crossing(t_s: Sequence[float], hz: Sequence[float], spec: ProductSpec,
                        event_s: float, test: str) -> None:
    """A step test is timed from the plan's step: the recording must show the frequency at or
    below the product's threshold within ``CROSSING_SLACK_S`` of it, else it is not a
    recording of that test (a flat frequency, another threshold) and nothing is scored.
    Raises ValueError naming the test, the threshold and what the recording shows."""
    if math.isnan(spec.threshold_hz):
        return
    start = event_s - CROSSING_SLACK_S
    first = _first_at_threshold(t_s, hz, spec.threshold_hz, start)
    if first is not None and first <= event_s + CROSSING_SLACK_S:
        return
    seen = "never" if first is None else f"only at t={first:.2f} s"
    low = min((f for t, f in zip(t_s, hz, strict=True) if t >= start), default=math.nan)
    raise ValueError(f"{test}: the recorded frequency reaches the {spec.threshold_hz:g} Hz "
                     f"threshold {seen} (lowest {low:.3f} Hz), not at the test's step "
                     f"(t={event_s:.2f} s): not a recording of this test at this threshold")


def check_glitches(t_s: Sequence[float], hz: Sequence[float], spec: ProductSpec,
                   glitches: Sequence[tuple[float, float, float]], test: str) -> None:
    """A normal-frequency test is judged on its glitches (short dips below the threshold that
    must not activate): the recording must show each below the threshold within
    ``CROSSING_SLACK_S`` of its time, else no activation proves nothing and nothing is scored.
    Raises ValueError naming the first glitch missing. A recording sampled more coarsely than
    the shortest glitch lasts cannot show them, and is not checked."""
    steps = sorted(b - a for a, b in itertools.pairwise(t_s))
    if not glitches or not steps or steps[len(steps) // 2] > min(e - s for s, e, _ in glitches):
        return
    for start, end, lowest in glitches:
        first = _first_at_threshold(t_s, hz, spec.threshold_hz, start - CROSSING_SLACK_S)
        if first is not None and first <= end + CROSSING_SLACK_S:
            continue
        raise ValueError(f"{test}: the recording never shows the glitch at t={start:.2f} s "
                         f"({lowest:.3f} Hz, below the {spec.threshold_hz:g} Hz threshold): "
                         "not a recording of this test (its glitches are what it judges)")


def required_step(t_s: Sequence[float], spec: ProductSpec, event_s: float | None) -> list[float]:
    """FFR-like, for the plot and the steady-state checks: capacity from the crossing for the
    support duration, then the steepest allowed ramp-out (FFR short: 20 %/s; otherwise a
    drop). The rules themselves time the support from the measured full activation."""
    if event_s is None:
        return [0.0] * len(t_s)
    end = event_s + spec.support_s
    rate = sc.FFR_RAMP_OUT_PCT_PER_S / 100.0 if spec.kind == "ffr" and spec.short_support else (
        math.inf)
    out = []
    for t in t_s:
        if t < event_s:
            out.append(0.0)
        elif t < end:
            out.append(spec.capacity_w)
        else:
            out.append(spec.capacity_w * max(0.0, 1.0 - (t - end) * rate) if rate < math.inf
                       else 0.0)
    return out


def static_recovered_s(t_s: Sequence[float], hz: Sequence[float], after_s: float) -> float | None:
    """When the sent frequency is back above 49.9 Hz for good after ``after_s``."""
    found: float | None = None
    for t, f in zip(t_s, hz, strict=True):
        if t < after_s:
            continue
        found = (t if found is None else found) if f > sc.FCR_D_START_HZ else None
    return found


def required_static(t_s: Sequence[float], hz: Sequence[float], spec: ProductSpec) -> list[float]:
    """FCR-D static: capacity from the first sample at/below the threshold until 60 s after the
    frequency is back above 49.9 Hz, then the steepest allowed ramp-down (2.5 %/s)."""
    start = next((t for t, f in zip(t_s, hz, strict=True) if f <= spec.threshold_hz), None)
    if start is None:
        return [0.0] * len(t_s)
    back = static_recovered_s(t_s, hz, start)
    down = math.inf if back is None else back + sc.FCR_D_STATIC_WAIT_S
    rate = sc.FCR_D_STATIC_RAMP_PCT_PER_S / 100.0
    return [0.0 if t < start else spec.capacity_w * min(1.0, max(0.0, 1.0 - (t - down) * rate))
            for t in t_s]


def required_dr(t_s: Sequence[float], events: Sequence[DrWindow]) -> list[float]:
    """The deepest scheduled event binds where events overlap."""
    return [max((ev.level(t) * ev.amount_w for ev in events), default=0.0) for t in t_s]


# ---- product recipes --------------------------------------------------------------------------
