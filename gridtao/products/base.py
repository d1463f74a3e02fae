"""Frequency products: what each enrolled product requires of the node, moment by moment.

Pure objects, no I/O, no clock of their own: feed ``required_reduction_w(f_hz, now_s)`` every
local frequency sample (``f_hz``) and call it with ``f_hz=None`` in between (time-driven
changes: hold, ramp-out, re-arm). The result is the power reduction the product requires now, in
watts at the settlement point, measured from the product's reference (the node's power just
before the activation; for FCR-N the enrolment baseline, and negative when it asks for more).
Rules and sources: docs/sources.md#grid-products.

* :class:`~.step.StepProduct` (Nordic FFR, ERCOT FFR): full capacity when frequency falls to the
  threshold; held ``support_s``; ramped out at ``ramp_out_per_s`` of capacity per second (the
  safety island's release rate, which performs it); ready again ``rearm_s`` after the ramp-out
  ended and once frequency is back above the threshold. The agent fires it through the island's
  armed caps (the millisecond path); the product only decides when.
* :class:`~.proportional.FcrDUp` (dynamic): linear, 0 at 49.9 Hz to full at 49.5 Hz.
* :class:`~.step.FcrDUpStatic`: full capacity at the threshold; deactivates only after 60 s above
  49.9 Hz, then ramps down at 1 % of capacity per second (the limit is 2.5 %/s: the slack
  covers tier 2's margin and the 1-s jitter of the node's tracking; back to full on a new
  dip).
* :class:`~.proportional.FcrN`: linear 49.9-50.1 Hz around the baseline, both directions.

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

from dataclasses import dataclass
from typing import Literal, Protocol

from gridtao.config.agent import ProductKind

StepState = Literal["armed", "active", "ramping", "rearming"]
ProductState = Literal[
    "armed", "active", "ramping", "rearming", "idle", "waiting", "enrolling"
]

FFR_ACTIVATION_S = {49.7: 1.3, 49.6: 1.0, 49.5: 0.7}
FFR_SUPPORT_S = {"short": 5.0, "long": 30.0}
ERCOT_FFR_HZ, ERCOT_FFR_ACTIVATION_S, ERCOT_FFR_SUPPORT_S = 59.85, 0.25, 900.0
FCR_D_START_HZ, FCR_D_FULL_HZ, FCR_D_ACTIVATION_S = 49.9, 49.5, 7.5
FCR_D_STATIC_HZ, FCR_D_STATIC_ACTIVATION_S = 49.7, 2.5
# Ramp-down 1 %/s: tier 2's margin (tracker.margin_fraction, up to twice that on a bursty
# node) scales it to at most 1.1 %/s, and the TSO's rate is read as the steepest 1-s fall of the
# 1-s mean over the whole ramp (gridtao/prequal/rules.py), which adds the 1-s jitter of the
# node's tracking to the slope: 0.6-1.2 %/s measured on a steady test load (at 2 %/s the ramp
# read 2.7-3.3 %/s, at 1.25 %/s up to 2.53 %/s). Slower is within the rule (<= 2.5 %/s).
FCR_D_STATIC_RECOVERED_S, FCR_D_STATIC_RAMP_PER_S = 60.0, 0.01
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
