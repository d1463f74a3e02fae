"""Threshold products: full capacity when frequency falls to a threshold.

:class:`StepProduct` (Nordic FFR, ERCOT FFR) holds for its support duration and ramps out;
:class:`FcrDUpStatic` holds until frequency has recovered for a minute, then ramps down. Both
confirm a crossing through :class:`_Debounce` within their activation budget. The product
contract, timing and sources: :mod:`gridtao.products.base`.
"""

from __future__ import annotations

import math
from typing import Literal

from gridtao.config.agent import ProductKind
from gridtao.products.base import (
    FCR_D_START_HZ,
    FCR_D_STATIC_ACTIVATION_S,
    FCR_D_STATIC_HZ,
    FCR_D_STATIC_RAMP_PER_S,
    FCR_D_STATIC_RECOVERED_S,
    FFR_ACTIVATION_S,
    REARM_HYSTERESIS_HZ,
    ProductStatus,
    StepState,
)


class _Debounce:
    """Confirms a threshold crossing without spending more than ``max_delay_s`` on it."""

    def __init__(self, samples: int, max_delay_s: float) -> None:
        self.samples = samples
        self.max_delay_s = max_delay_s
        self._count = 0
        self._first_s = 0.0
        self._last_s: float | None = None
        self._period_s = math.inf

    def note(self, now_s: float) -> None:
        """A sample arrived (keeps the sample-interval estimate current while not armed)."""
        if self._last_s is not None and now_s > self._last_s:
            self._period_s = now_s - self._last_s
        self._last_s = now_s

    def sample(self, low: bool, now_s: float) -> bool:
        """Feed whether this sample is at/below the threshold; True when the crossing counts."""
        self.note(now_s)
        if not low:
            self._count = 0
            return False
        if self._count == 0:
            self._first_s = now_s
        self._count += 1
        waited = now_s - self._first_s
        return self._count >= self.samples or waited + self._period_s > self.max_delay_s

    def due(self, now_s: float) -> bool:
        """A crossing is pending and has waited its allowance with no sample since (the stream
        stalled or is irregular): it counts now, on time."""
        return self._count > 0 and now_s - self._first_s >= self.max_delay_s

    def reset(self) -> None:
        self._count = 0


class StepProduct:
    """Nordic FFR and ERCOT FFR: a step to full capacity, held, ramped out, re-armed."""

    def __init__(
        self, name: str, kind: ProductKind, capacity_w: float, *, threshold_hz: float,
        full_activation_s: float, support_s: float, rearm_s: float, ramp_out_per_s: float,
        debounce_samples: int = 2, debounce_budget_fraction: float = 0.1,
    ) -> None:
        if not (capacity_w > 0 and full_activation_s > 0 and support_s >= 0 and rearm_s >= 0
                and ramp_out_per_s > 0):
            raise ValueError("capacity, activation time and ramp-out rate must be > 0")
        self.name, self.kind, self.capacity_w = name, kind, capacity_w
        self.threshold_hz = threshold_hz
        self.full_activation_s = full_activation_s
        self.support_s = support_s
        self.rearm_s = rearm_s
        self.ramp_out_per_s = ramp_out_per_s
        self._debounce = _Debounce(debounce_samples, debounce_budget_fraction * full_activation_s)
        self.state: StepState = "armed"
        self.activated_at_s: float | None = None
        self.released_at_s: float | None = None
        self._ramp_end_s = -math.inf
        self._last_hz: float | None = None
        self._now_s = -math.inf

    def required_reduction_w(self, f_hz: float | None, now_s: float) -> float:
        self._now_s = max(self._now_s, now_s)
        if f_hz is not None:
            self._last_hz = f_hz
        if self.state == "rearming" and self._ready(now_s):
            self.state = "armed"
            self._debounce.reset()
        if f_hz is not None and self.state != "armed":
            self._debounce.note(now_s)
        elif self.state == "armed" and self.capacity_w > 0 and (
            # capacity 0: not offered this market time unit (tier 3), so it never fires
            self._debounce.due(now_s) if f_hz is None
            else self._debounce.sample(f_hz <= self.threshold_hz, now_s)
        ):
            self._debounce.reset()
            self.state = "active"
            self.activated_at_s, self.released_at_s = now_s, None
        act = self.activated_at_s
        if self.state == "active" and act is not None and now_s - act >= self.support_s:
            # The ramp starts when the support ended, however late this call noticed it: the
            # required trace does not depend on the tick rate (the island ramps from the tick,
            # which only delivers more).
            self.release(act + self.support_s)
        if self.state == "ramping" and now_s >= self._ramp_end_s:
            self.state = "rearming"
        return self.required_at(now_s)

    def required_at(self, now_s: float) -> float:
        """The requirement at ``now_s`` for the current state (no state change)."""
        if self.state == "active":
            return self.capacity_w
        if self.state == "ramping" and self.released_at_s is not None:
            left = 1.0 - (now_s - self.released_at_s) * self.ramp_out_per_s
            return self.capacity_w * max(0.0, min(1.0, left))
        return 0.0

    def release(self, now_s: float) -> None:
        """Start the ramp-out now (support done, or the event ended elsewhere)."""
        if self.state != "active":
            return
        self.state = "ramping"
        self.released_at_s = now_s
        self._ramp_end_s = now_s + 1.0 / self.ramp_out_per_s

    def abort(self) -> None:
        """The activation did not happen or was ended elsewhere: count it as over now."""
        if self.state in ("active", "ramping"):
            self.released_at_s = self.released_at_s or self._now_s
            self._ramp_end_s = self._now_s
            self.state = "rearming"

    def _ready(self, now_s: float) -> bool:
        hz = self._last_hz
        recovered = hz is None or hz > self.threshold_hz + REARM_HYSTERESIS_HZ
        return now_s >= self._ramp_end_s + self.rearm_s and recovered

    def status(self) -> ProductStatus:
        act = self.activated_at_s if self.state in ("active", "ramping") else None
        return ProductStatus(
            self.name, self.kind, self.state, self.capacity_w, self.required_at(self._now_s),
            act, None if act is None else act + self.full_activation_s,
            self.released_at_s if self.state == "ramping" else None,
        )


class FcrDUpStatic:
    """FCR-D upwards, static: full capacity at the threshold; deactivation only after 60 s
    above 49.9 Hz, then 2 % of capacity per second (limit 2.5 %/s)."""

    kind: ProductKind = "fcr-d-up-static"

    def __init__(
        self, name: str, capacity_w: float, *, threshold_hz: float = FCR_D_STATIC_HZ,
        full_activation_s: float = FCR_D_STATIC_ACTIVATION_S, debounce_samples: int = 2,
        debounce_budget_fraction: float = 0.1,
    ) -> None:
        if not capacity_w > 0:
            raise ValueError("capacity_w must be > 0")
        self.name, self.capacity_w = name, capacity_w
        self.threshold_hz = threshold_hz
        self.full_activation_s = full_activation_s
        self._debounce = _Debounce(debounce_samples, debounce_budget_fraction * full_activation_s)
        self.state: Literal["armed", "active", "waiting", "ramping"] = "armed"
        self.activated_at_s: float | None = None
        self._above_since_s: float | None = None
        self._ramp_from_s = 0.0
        self._level = 0.0  # fraction of capacity
        self._now_s = -math.inf

    def required_reduction_w(self, f_hz: float | None, now_s: float) -> float:
        self._now_s = max(self._now_s, now_s)
        fired = self._debounce.due(now_s) if f_hz is None else self._debounce.sample(
            f_hz <= self.threshold_hz, now_s)
        if fired:
            self._debounce.reset()
            if self.state in ("armed", "ramping"):
                self.activated_at_s = now_s
            self.state, self._level, self._above_since_s = "active", 1.0, None
        if f_hz is not None and not fired and self.state in ("active", "waiting"):
            if f_hz > FCR_D_START_HZ:
                if self._above_since_s is None:
                    self._above_since_s = now_s
                self.state = "waiting"
            else:
                self._above_since_s, self.state = None, "active"
        if (self.state == "waiting" and self._above_since_s is not None
                and now_s - self._above_since_s >= FCR_D_STATIC_RECOVERED_S):
            self.state = "ramping"
            self._ramp_from_s = self._above_since_s + FCR_D_STATIC_RECOVERED_S
        if self.state == "ramping":
            self._level = max(0.0, 1.0 - (now_s - self._ramp_from_s) * FCR_D_STATIC_RAMP_PER_S)
            if self._level == 0.0:
                self.state, self.activated_at_s = "armed", None
        return self.capacity_w * self._level

    def status(self) -> ProductStatus:
        act = self.activated_at_s
        return ProductStatus(self.name, self.kind, self.state, self.capacity_w,
                             self.capacity_w * self._level, act,
                             None if act is None else act + self.full_activation_s)


def ffr_activation_s(threshold_hz: float) -> float:
    """Nordic FFR full-activation time for a threshold (the table's level at or below it)."""
    for level, seconds in sorted(FFR_ACTIVATION_S.items(), reverse=True):
        if threshold_hz >= level - 1e-9:
            return seconds
    return min(FFR_ACTIVATION_S.values())


# Step products ramp out at this share of the island's release rate, the TSO's limit (FFR: 20 %
# of the capacity per second): the TSO measures the delivered slope on a noisy trace, so a ramp
# at the limit itself fails about half the time. The composition root applies it.
