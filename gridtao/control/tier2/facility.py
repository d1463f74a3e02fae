"""The facility between the GPUs and the settlement meter, and how IT cuts show up on it.

Model (docs/sources.md#facility-meter-and-pue), powers in W, times in s::

    meter(t) = IT(t) x (1 + losses) + cooling(t) + fixed
    d cooling / dt = (IT(t) / COP - cooling(t)) / tau

Electrical losses (UPS, distribution) follow IT at once; cooling follows the IT heat through a
first-order lag (fan loops, chilled-water mass, chiller staging: minutes). So in the first
seconds of a cut the meter falls by the IT cut x (1 + losses) only; over minutes by the IT cut x
(1 + losses + 1/COP). ``fixed`` (lighting, offices, the site's constant share) never moves.

Three ways to turn a meter-level reduction ``R`` into an IT reduction, compared by bench/pue.py:

* :class:`MeterTracker` (what tier 2 uses): ``(R - cooling already shed) / (1 + losses)``:
  exactly ``R`` at the meter at every instant if the model holds, and less IT cut as cooling
  follows.
* :class:`AnnualPueTracker` (naive): ``R / annual PUE``: under-delivers in the first minutes
  (the cooling it counts on has not moved yet) and, with a ``fixed`` load, for ever.
* :class:`LossesOnlyTracker`: ``R / (1 + losses)``: the constant divisor that meets ``R`` from
  the first second without a cooling model, over-delivering (shedding IT for nothing) once
  cooling follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from gridtao.config.agent import FacilityConfig


@dataclass(frozen=True)
class FacilityModel:
    """Facility parameters; see the module docstring. ``fixed_w`` is this node's share."""

    losses_fraction: float = 0.03
    cop: float = 4.5
    cooling_tau_s: float = 120.0
    fixed_w: float = 0.0

    def __post_init__(self) -> None:
        if not (self.losses_fraction >= 0 and self.cop > 0 and self.cooling_tau_s > 0
                and self.fixed_w >= 0):
            raise ValueError("need losses >= 0, COP > 0, tau > 0 and fixed >= 0")

    @classmethod
    def from_config(cls, cfg: FacilityConfig) -> FacilityModel:
        return cls(cfg.losses_fraction, cfg.cop, cfg.cooling_tau_s, cfg.fixed_w)

    @property
    def losses_factor(self) -> float:
        """Meter watts per IT watt in the first seconds: 1 + losses."""
        return 1.0 + self.losses_fraction

    @property
    def settled_meter_per_it_w(self) -> float:
        """Meter watts per IT watt once cooling has settled, the fixed load aside:
        1 + losses + 1 / COP (the meter's share of a change of IT power, steady state)."""
        return self.losses_factor + 1.0 / self.cop

    def steady_cooling_w(self, it_w: float) -> float:
        return it_w / self.cop

    def meter_w(self, it_w: float, cooling_w: float) -> float:
        return it_w * self.losses_factor + cooling_w + self.fixed_w

    def steady_meter_w(self, it_w: float) -> float:
        return self.meter_w(it_w, self.steady_cooling_w(it_w))

    def steady_pue(self, it_w: float) -> float:
        """meter / IT once cooling has settled at ``it_w`` (> 0)."""
        return self.steady_meter_w(it_w) / it_w

    def cooling_step_w(self, cooling_w: float, it_w: float, dt_s: float) -> float:
        """Cooling after ``dt_s`` of constant ``it_w`` (exact for a piecewise-constant input)."""
        if dt_s <= 0:
            return cooling_w
        target = self.steady_cooling_w(it_w)
        return target + (cooling_w - target) * math.exp(-dt_s / self.cooling_tau_s)


class Facility:
    """The plant for simulations: IT power in, meter power out (tests and benches)."""

    def __init__(self, model: FacilityModel, it_w: float) -> None:
        self.model = model
        self.it_w = it_w
        self.cooling_w = model.steady_cooling_w(it_w)

    @property
    def meter_w(self) -> float:
        return self.model.meter_w(self.it_w, self.cooling_w)

    def step(self, it_w: float, dt_s: float) -> float:
        """Hold ``it_w`` for ``dt_s`` (losses follow at once, cooling lags); returns the meter
        power at the end, W."""
        self.it_w = it_w
        self.cooling_w = self.model.cooling_step_w(self.cooling_w, it_w, dt_s)
        return self.meter_w


class ReductionTracker(Protocol):
    """Turns a meter-level reduction into an IT-level one. ``start`` at the event's start,
    ``observe`` the measured IT power as time passes."""

    name: str

    def start(self, now_s: float, reference_it_w: float) -> None: ...

    def observe(self, now_s: float, it_w: float) -> None: ...

    def it_reduction_w(self, meter_reduction_w: float) -> float: ...


class MeterTracker:
    """PUE-aware: cooling estimated by running the model on the measured IT power.

    The commitment is a reduction ``R`` from the meter power the site *would* draw without it:
    reference IT ``I0`` (the node's natural draw) with the cooling that draw would need. So the
    tracker runs the model twice: ``cooling_w`` on the measured IT power and
    ``counterfactual_cooling_w`` on the natural IT power (the reference while committed, tier
    2's natural-draw estimate otherwise). Meter = ``M0 - R`` needs
    ``IT = I0 - (R - (c_natural - c)) / (1 + losses)``: the cooling already shed counts toward
    ``R``, including cooling still depressed by an earlier cut, so a second activation soon
    after a first is not measured from a lowered reference.
    """

    name = "pue-aware"

    def __init__(self, model: FacilityModel, it_w: float, now_s: float = 0.0) -> None:
        self.model = model
        self.cooling_w = model.steady_cooling_w(it_w)
        self.counterfactual_cooling_w = self.cooling_w
        self._last_s = now_s
        self._it_w = it_w
        self._natural_it_w = it_w
        self._reference_it_w: float | None = None

    def start(self, now_s: float, reference_it_w: float) -> None:
        """A commitment starts: the natural IT power is ``reference_it_w`` until :meth:`stop`."""
        self.observe(now_s, self._it_w)
        self._reference_it_w = self._natural_it_w = reference_it_w

    def start_steady(self, reference_it_w: float) -> None:
        """Reference = cooling settled at ``reference_it_w`` (FCR-N's long-held baseline)."""
        self._reference_it_w = self._natural_it_w = reference_it_w
        self.counterfactual_cooling_w = self.model.steady_cooling_w(reference_it_w)

    def stop(self) -> None:
        """The commitment ended: the natural IT power is the observed one again (or the
        ``natural_it_w`` given to :meth:`observe`)."""
        self._reference_it_w = None

    def observe(self, now_s: float, it_w: float, *, natural_it_w: float | None = None) -> None:
        """Advance both cooling estimates to ``now_s`` (the powers since the last call having
        been the previous observation's, held), then note ``it_w`` and the natural IT power:
        ``natural_it_w`` if given, else the reference while committed, else ``it_w``."""
        dt = now_s - self._last_s
        if dt > 0:
            self.cooling_w = self.model.cooling_step_w(self.cooling_w, self._it_w, dt)
            self.counterfactual_cooling_w = self.model.cooling_step_w(
                self.counterfactual_cooling_w, self._natural_it_w, dt)
            self._last_s = now_s
        self._it_w = it_w
        if natural_it_w is not None:
            self._natural_it_w = natural_it_w
        elif self._reference_it_w is not None:
            self._natural_it_w = self._reference_it_w
        else:
            self._natural_it_w = it_w

    @property
    def cooling_shed_w(self) -> float:
        return self.counterfactual_cooling_w - self.cooling_w

    def it_reduction_w(self, meter_reduction_w: float) -> float:
        return (meter_reduction_w - self.cooling_shed_w) / self.model.losses_factor


class AnnualPueTracker:
    """Naive: IT reduction = meter reduction / the site's annual PUE."""

    name = "annual-pue"

    def __init__(self, annual_pue: float) -> None:
        if not annual_pue >= 1.0:
            raise ValueError(f"a PUE is >= 1, got {annual_pue!r}")
        self.annual_pue = annual_pue

    def start(self, now_s: float, reference_it_w: float) -> None:
        pass

    def observe(self, now_s: float, it_w: float) -> None:
        pass

    def it_reduction_w(self, meter_reduction_w: float) -> float:
        return meter_reduction_w / self.annual_pue


class LossesOnlyTracker(AnnualPueTracker):
    """IT reduction = meter reduction / (1 + losses): meets the meter at once, never eases."""

    name = "losses-only"

    def __init__(self, model: FacilityModel) -> None:
        super().__init__(model.losses_factor)
