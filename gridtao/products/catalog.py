"""Frequency products: what each enrolled product requires of the node, moment by moment.

Pure objects, no I/O, no clock of their own: feed ``required_reduction_w(f_hz, now_s)`` every
local frequency sample (``f_hz``) and call it with ``f_hz=None`` in between (time-driven
changes: hold, ramp-out, re-arm). The result is the power reduction the product requires now, in
watts at the settlement point, measured from the product's reference (the node's power just
before the activation; for FCR-N the enrolment baseline, and negative when it asks for more).
Rules and sources: docs/sources.md#grid-products.

* :class:`StepProduct` (Nordic FFR, ERCOT FFR): full capacity when frequency falls to the
  threshold; held ``support_s``; ramped out at ``ramp_out_per_s`` of capacity per second (the
  safety island's release rate, which performs it); ready again ``rearm_s`` after the ramp-out
  ended and once frequency is back above the threshold. The agent fires it through the island's
  armed caps (the millisecond path); the product only decides when.
* :class:`FcrDUp` (dynamic): linear, 0 at 49.9 Hz to full at 49.5 Hz.
* :class:`FcrDUpStatic`: full capacity at the threshold; deactivates only after 60 s above
  49.9 Hz, then ramps down at 2 % of capacity per second (the limit is 2.5 %/s: the slack
  covers tier 2's margin and a noisy load; back to full on a new dip).
* :class:`FcrN`: linear 49.9-50.1 Hz around the baseline, both directions.

Debounce cannot eat the activation budget. A step product confirms a threshold crossing with
``debounce_samples`` consecutive samples at or below it, unless waiting for the next sample
(predicted from the last sample interval) would push the activation past
``debounce_budget_fraction x full_activation_s`` after the first low sample: then it fires at
once; if no sample comes in that time (a stalled or irregular stream), the next time-driven call
after it fires. Worst-case added delay: that fraction of the budget (70 ms for FFR at 49.5 Hz by
default) plus one lane tick (50 ms) when the stream stalls.
The proportional products use a running median of ``median_samples`` samples: worst-case delay
``(median_samples - 1) / 2`` sample periods (one period, 0.1 s at 10 Hz, for 3) against a 7.5 s
budget.
"""

from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass
from typing import Literal, Protocol

from gridtao.config.agent import ProductConfig, ProductKind
from gridtao.config.kinds import KINDS

StepState = Literal["armed", "active", "ramping", "rearming"]
ProductState = Literal[
    "armed", "active", "ramping", "rearming", "idle", "waiting", "enrolling"
]

FFR_ACTIVATION_S = {49.7: 1.3, 49.6: 1.0, 49.5: 0.7}
FFR_SUPPORT_S = {"short": 5.0, "long": 30.0}
ERCOT_FFR_HZ, ERCOT_FFR_ACTIVATION_S, ERCOT_FFR_SUPPORT_S = 59.85, 0.25, 900.0
FCR_D_START_HZ, FCR_D_FULL_HZ, FCR_D_ACTIVATION_S = 49.9, 49.5, 7.5
FCR_D_STATIC_HZ, FCR_D_STATIC_ACTIVATION_S = 49.7, 2.5
# Ramp-down 2 %/s: under the 2.5 %/s limit by more than tier 2's margin (tracker.margin_fraction)
# scales it, so a noisy delivered slope still measures under the limit.
FCR_D_STATIC_RECOVERED_S, FCR_D_STATIC_RAMP_PER_S = 60.0, 0.02
FCR_N_LOW_HZ, FCR_N_HIGH_HZ = 49.9, 50.1
REARM_HYSTERESIS_HZ = 0.02


@dataclass(frozen=True)
class ProductStatus:
    """A snapshot for the tracker topic and the compliance bench. Times: monotonic s."""

    name: str
    kind: ProductKind
    state: ProductState
    capacity_w: float
    required_w: float
    activated_at_s: float | None = None
    full_due_s: float | None = None  # activation time + full activation budget
    released_at_s: float | None = None


class FrequencyProduct(Protocol):
    name: str
    kind: ProductKind
    capacity_w: float

    def required_reduction_w(self, f_hz: float | None, now_s: float) -> float:
        """Feed a sample (or None: time passes) and return the reduction required now, W."""
        ...

    def status(self) -> ProductStatus: ...


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
        elif self.state == "armed" and (
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


class _Median:
    def __init__(self, size: int) -> None:
        self._window: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, hz: float) -> float:
        self._window.append(hz)
        return statistics.median(self._window)


class FcrDUp:
    """FCR-D upwards, dynamic: 0 at 49.9 Hz, linear to full capacity at 49.5 Hz."""

    kind: ProductKind = "fcr-d-up"

    def __init__(self, name: str, capacity_w: float, *, median_samples: int = 3) -> None:
        if not capacity_w > 0:
            raise ValueError("capacity_w must be > 0")
        self.name, self.capacity_w = name, capacity_w
        self.full_activation_s = FCR_D_ACTIVATION_S
        self._median = _Median(median_samples)
        self._required_w = 0.0
        self._since_s: float | None = None

    def required_reduction_w(self, f_hz: float | None, now_s: float) -> float:
        if f_hz is not None:
            hz = self._median.add(f_hz)
            share = (FCR_D_START_HZ - hz) / (FCR_D_START_HZ - FCR_D_FULL_HZ)
            self._required_w = self.capacity_w * max(0.0, min(1.0, share))
            if self._required_w > 0 and self._since_s is None:
                self._since_s = now_s
            elif self._required_w == 0:
                self._since_s = None
        return self._required_w

    def status(self) -> ProductStatus:
        state: ProductState = "active" if self._required_w > 0 else "idle"
        since = self._since_s
        return ProductStatus(self.name, self.kind, state, self.capacity_w, self._required_w,
                             since, None if since is None else since + self.full_activation_s)


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


class FcrN:
    """FCR-N: linear 49.9-50.1 Hz, both ways around the baseline (negative = draw more)."""

    kind: ProductKind = "fcr-n"

    def __init__(self, name: str, capacity_w: float, *, median_samples: int = 3) -> None:
        if not capacity_w > 0:
            raise ValueError("capacity_w must be > 0")
        self.name, self.capacity_w = name, capacity_w
        self._median = _Median(median_samples)
        self._required_w = 0.0

    def required_reduction_w(self, f_hz: float | None, now_s: float) -> float:
        if f_hz is not None:
            hz = self._median.add(f_hz)
            mid, half = (FCR_N_LOW_HZ + FCR_N_HIGH_HZ) / 2, (FCR_N_HIGH_HZ - FCR_N_LOW_HZ) / 2
            self._required_w = self.capacity_w * max(-1.0, min(1.0, (mid - hz) / half))
        return self._required_w

    def status(self) -> ProductStatus:
        return ProductStatus(self.name, self.kind, "active", self.capacity_w, self._required_w)


def ffr_activation_s(threshold_hz: float) -> float:
    """Nordic FFR full-activation time for a threshold (the table's level at or below it)."""
    for level, seconds in sorted(FFR_ACTIVATION_S.items(), reverse=True):
        if threshold_hz >= level - 1e-9:
            return seconds
    return min(FFR_ACTIVATION_S.values())


# Step products ramp out at this share of the island's release rate, the TSO's limit (FFR: 20 %
# of the capacity per second): the TSO measures the delivered slope on a noisy trace, so a ramp
# at the limit itself fails about half the time. The composition root applies it.
STEP_RAMP_OUT_SLACK = 0.9


def make_product(cfg: ProductConfig, *, ramp_out_per_s: float) -> FrequencyProduct:
    """Build the frequency product ``cfg`` describes (``dr`` is not one: see dr.py).

    ``ramp_out_per_s``: the safety island's release rate, which performs step ramp-outs."""
    name = cfg.name or cfg.kind
    samples, budget = cfg.debounce_samples, cfg.debounce_budget_fraction
    if KINDS[cfg.kind].activation == "step":
        if cfg.kind == "ffr":
            hz = cfg.threshold_hz if cfg.threshold_hz is not None else 49.7
            act = cfg.full_activation_s or ffr_activation_s(hz)
            support = cfg.support_s if cfg.support_s is not None else FFR_SUPPORT_S[cfg.support]
        else:
            hz = cfg.threshold_hz if cfg.threshold_hz is not None else ERCOT_FFR_HZ
            act = cfg.full_activation_s or ERCOT_FFR_ACTIVATION_S
            support = cfg.support_s if cfg.support_s is not None else ERCOT_FFR_SUPPORT_S
        return StepProduct(name, cfg.kind, cfg.capacity_w, threshold_hz=hz,
                           full_activation_s=act, support_s=support, rearm_s=cfg.rearm_s,
                           ramp_out_per_s=ramp_out_per_s, debounce_samples=samples,
                           debounce_budget_fraction=budget)
    if cfg.kind == "fcr-d-up":
        return FcrDUp(name, cfg.capacity_w, median_samples=cfg.median_samples)
    if cfg.kind == "fcr-d-up-static":
        return FcrDUpStatic(
            name, cfg.capacity_w,
            threshold_hz=cfg.threshold_hz if cfg.threshold_hz is not None else FCR_D_STATIC_HZ,
            full_activation_s=cfg.full_activation_s or FCR_D_STATIC_ACTIVATION_S,
            debounce_samples=samples, debounce_budget_fraction=budget,
        )
    if cfg.kind == "fcr-n":
        return FcrN(name, cfg.capacity_w, median_samples=cfg.median_samples)
    raise ValueError(f"{cfg.kind!r} is not a frequency product")


def required_trace(
    product: FrequencyProduct, samples: list[tuple[float, float]], times_s: list[float]
) -> list[float]:
    """Replay frequency ``samples`` ``(t_s, hz)`` through a fresh ``product`` and return the
    required reduction (W) at each of ``times_s`` (both sorted ascending): what a scorer
    compares the delivered reduction with."""
    out: list[float] = []
    k = 0
    for t in times_s:
        while k < len(samples) and samples[k][0] <= t:
            product.required_reduction_w(samples[k][1], samples[k][0])
            k += 1
        out.append(product.required_reduction_w(None, t))
    return out
