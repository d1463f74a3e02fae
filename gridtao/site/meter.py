"""The site meter closing the loop that the facility model alone leaves open.

A meter-level commitment (hold the meter at or below T W) is met by an IT budget the nodes can
act on. The facility model (``facility:``: losses, cooling by COP, the site's fixed load) turns
T into that budget; when the model is wrong (losses or cooling underestimated), the metered
power ends above T. :class:`MeterFeedback` estimates the ratio of metered to modelled power from
the readings on ``{prefix}/meter`` and the nodes' IT power at the same time (an exponential
average over ``meter.tau_s``), and the budget becomes the model's budget for T divided by that
ratio. ``ratio - 1`` is the model's error, reported whether or not the feedback is applied.

Power in W, times in Unix seconds. Not thread-safe: fed and read on the coordinator's loop.
"""

from __future__ import annotations

import math

from gridtao.config.site import MeterConfig
from gridtao.control.tier2.facility import FacilityModel
from gridtao.wire.site import MeterReading, SettleAt

__all__ = ["MeterFeedback"]


class MeterFeedback:
    """Metered against modelled site power (see the module docstring)."""

    def __init__(self, model: FacilityModel, cfg: MeterConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.last: MeterReading | None = None
        self._ratio: float | None = None
        self._ratio_t: float | None = None

    def observe(self, reading: MeterReading, it_w: float) -> None:
        """A meter reading, with the site's IT power (W) at about the same time."""
        self.last = reading
        modelled = self.model.steady_meter_w(it_w)
        if it_w <= 0.0 or modelled <= 0.0:
            return
        sample = reading.w / modelled
        if self._ratio is None or self._ratio_t is None or self.cfg.tau_s == 0.0:
            self._ratio = sample
        else:
            dt = max(0.0, reading.t - self._ratio_t)
            alpha = 1.0 - math.exp(-dt / self.cfg.tau_s)
            self._ratio += alpha * (sample - self._ratio)
        self._ratio_t = reading.t

    def fresh(self, wall: float) -> bool:
        return self.last is not None and wall - self.last.t <= self.cfg.stale_s

    def metered_w(self, wall: float) -> float | None:
        """The last reading, W, when fresh."""
        return self.last.w if self.last is not None and self.fresh(wall) else None

    def model_error(self, wall: float) -> float | None:
        """(metered - modelled) / modelled, from fresh readings; None without them."""
        if self._ratio is None or not self.fresh(wall):
            return None
        return self._ratio - 1.0

    def ratio(self, wall: float) -> float:
        """The correction applied to budgets: the estimated ratio with feedback on and fresh
        readings, else 1 (the model alone)."""
        if not self.cfg.feedback or self._ratio is None or not self.fresh(wall):
            return 1.0
        return self._ratio

    def site_meter_w(self, it_w: float, wall: float) -> float:
        """The site's metered power now: the fresh reading, else the model's estimate."""
        metered = self.metered_w(wall)
        return metered if metered is not None else self.model.steady_meter_w(it_w)

    def power_at(self, at: SettleAt, it_w: float, wall: float) -> float:
        """The site's power at ``at`` with ``it_w`` W of IT: ``it_w`` itself, or the meter's
        estimate (the model's, times the correction :meth:`it_budget_w` applies, so the budget
        for a meter target T is estimated at T)."""
        return it_w if at == "it" else self.model.steady_meter_w(it_w) * self.ratio(wall)

    def it_budget_w(self, meter_target_w: float, wall: float) -> float:
        """The site IT power (W) that keeps the meter at ``meter_target_w``: the model's
        inverse (IT x (1 + losses + 1 / COP) + fixed = meter) of the target over the ratio."""
        m = self.model
        per_it = 1.0 + m.losses_fraction + 1.0 / m.cop
        return max(0.0, (meter_target_w / self.ratio(wall) - m.fixed_w) / per_it)
