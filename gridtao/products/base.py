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
  49.9 Hz, then ramps down at 2 % of capacity per second (the limit is 2.5 %/s: the slack
  covers tier 2's margin and a noisy load; back to full on a new dip).
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
