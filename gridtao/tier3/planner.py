"""Tier 3's decision and its states: from history and signals to a plan, and what the node
offers when a plan cannot be made.

:func:`make_plan` is one planning round, pure (no I/O, no clock): forecast the natural IT draw
(:mod:`gridtao.tier3.forecast`), lower its low quantile by the configured safety margin, build
the program (:mod:`gridtao.tier3.problem`) and solve it with HiGHS
(:mod:`gridtao.tier3.optimise`). It raises :class:`~gridtao.tier3.forecast.ForecastError` or
:class:`~gridtao.tier3.problem.PlanError` when no plan can be made; a solver that fails or finds
the program infeasible returns a result whose status says so (offers all zero).

The planner's state is one of three classes; :func:`next_state` is the only transition
function. The offers in force are :meth:`PlannerState.offers_at`. Power: W at the settlement
point for offers, IT W for the forecast. Times: Unix seconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gridtao.tier3.forecast import Forecast, forecast_draw
from gridtao.tier3.problem import Enrolment, PlanProblem, problem_from
from gridtao.tier3.scores import calibrated_margin_w, recent_misses
from gridtao.tier3.signals import Signals

if TYPE_CHECKING:  # the solver (scipy) loads on the first round, not with the agent
    from gridtao.tier3.optimise import PlanResult

__all__ = ["Fallback", "NoPlan", "Plan", "PlanSettings", "Planned", "PlannerState",
           "clip_note", "make_plan", "next_state"]


@dataclass(frozen=True)
class PlanSettings:
    """What a round needs besides its inputs (gridtao.config.planner.PlannerConfig, and the
    node's floor and enrolments). ``safety_margin_fraction`` lowers the forecast's p10 by that
    share before it bounds the offers. ``margin_quantile`` (None: off) lowers it first by a
    margin learnt from the node's own recent misses
    (:func:`gridtao.tier3.scores.calibrated_margin_w`): over the last ``margin_days`` days, the
    forecasts the planner would have made at this time of day, and how far their p10 overshot
    each MTU's actual lowest draw where it was above the floor; per block of ``margin_block_h``
    hours of the local day, the margin that would have covered ``margin_quantile`` of them
    (1.0: the largest). ``options``: further :class:`PlanProblem` fields; its ``tz_offset_s``
    (local time east of UTC) also sets the forecast's hours of the day and week."""

    mtu_s: int
    horizon: int
    floor_w: float
    enrolments: Sequence[Enrolment]
    safety_margin_fraction: float = 0.0
    time_limit_s: float = 5.0
    weeks: int = 4
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    margin_quantile: float | None = None
    margin_days: int = 14
    margin_block_h: int = 4
    notes: tuple[str, ...] = ()  # said with the plan (how an input was taken)
    #: The most the node can draw (W, IT: its GPUs' summed limits); None: unknown. A forecast
    #: above it (a history of a larger node) is clipped to it, and the plan says so.
    max_w: float | None = None


@dataclass(frozen=True)
class Plan:
    """A solved round: made at ``made_at_s`` for the MTUs from ``forecast.start_s``."""

    made_at_s: float
    forecast: Forecast
    problem: PlanProblem
    result: PlanResult
    signal_warnings: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return self.result.status in ("optimal", "time_limit")

    @property
    def end_s(self) -> int:
        return self.forecast.end_s

    def offers_at(self, wall_s: float) -> dict[str, float]:
        """The offer per product for the MTU holding ``wall_s`` (empty outside the plan)."""
        start, mtu = self.forecast.start_s, self.forecast.mtu_s
        k = int((wall_s - start) // mtu)
        if not 0 <= k < self.forecast.horizon:
            return {}
        return {name: float(v[k]) for name, v in self.result.offers_w.items()}

    def ceiling_at(self, wall_s: float) -> float | None:
        """The node IT ceiling (W) planned for the MTU holding ``wall_s``; None where none
        binds, outside the plan, or when the plan is not valid."""
        ceilings = self.result.ceiling_w
        k = int((wall_s - self.forecast.start_s) // self.forecast.mtu_s)
        if ceilings is None or not self.valid or not 0 <= k < self.forecast.horizon:
            return None
        value = float(ceilings[k])
        return value if math.isfinite(value) else None

    def summary(self) -> dict[str, Any]:
        """The plan's figures for the retained plan topic and the audit trail."""
        r = self.result
        return {"status": r.status, "revenue_eur": round(r.revenue, 4),
                "energy_cost_eur": round(r.energy_cost, 4),
                "carbon_kg": round(r.carbon_kg, 3), "work_shed_wh": round(r.work_shed_wh, 1),
                "solve_s": round(r.solve_s, 4),
                "forecast_w": {q: [round(float(x), 1) for x in getattr(self.forecast, q)]
                               for q in ("p10_w", "p50_w", "p90_w")},
                "floor_w": round(self.problem.floor_w, 1),
                # The most an award may give each product (a site pooling nodes needs it)
                # rounded down: a capacity rounded up would have the node refuse its own
                "capacity_w": {e.name: math.floor(e.max_w * 10.0) / 10.0
                               for e in self.problem.enrolments},
                "notes": [*r.notes, *self.signal_warnings]}


def clip_note(p90_w: float, top_w: float, history_peak_w: float) -> str:
    """Why a forecast peaking at ``p90_w`` was clipped to ``top_w``, what the node's GPUs can
    draw (W). Only a history that itself drew more (``history_peak_w``) hints at another
    node's: a spread added to a node's own levels can overshoot on its own."""
    why = (f"the history itself reaches {history_peak_w:.0f} W: is it another node's?"
           if history_peak_w > top_w else
           f"its spread reaches past the history's own peak, {history_peak_w:.0f} W")
    return (f"the forecast (p90 up to {p90_w:.0f} W) runs above the {top_w:.0f} W this node's "
            f"GPUs can draw: clipped there ({why})")


def make_plan(history_start_s: np.ndarray[Any, Any], history_it_w: np.ndarray[Any, Any],
              history_p10_w: np.ndarray[Any, Any] | None, signals: Signals | None, *,
              now_s: float, settings: PlanSettings) -> Plan:
    """One planning round for the ``horizon`` MTUs from the MTU after ``now_s`` (the next
    market time unit that can still be bid; the current one is under way). With
    ``settings.margin_quantile`` the round also re-runs the forecaster on each of the last
    ``margin_days`` days (about a tenth of a second each)."""
    mtu = settings.mtu_s
    start = (int(now_s) // mtu + 1) * mtu
    tz = int(settings.options.get("tz_offset_s", 0))
    forecast = forecast_draw(history_start_s, history_it_w, history_p10_w, start_s=start,
                             mtu_s=mtu, horizon=settings.horizon, now_s=now_s,
                             weeks=settings.weeks, tz_offset_s=tz)
    notes: list[str] = []
    if settings.max_w is not None and float(np.max(forecast.p90_w)) > settings.max_w:
        top = settings.max_w
        notes.append(clip_note(float(np.max(forecast.p90_w)), top,
                               float(np.max(history_it_w)) if len(history_it_w) else 0.0))
        forecast = dataclasses.replace(forecast, **{
            name: np.minimum(np.asarray(getattr(forecast, name)), top)
            for name in ("p10_w", "p50_w", "p90_w")})
    p10 = np.asarray(forecast.p10_w)
    if settings.margin_quantile is not None:
        miss_t, miss_w = recent_misses(
            history_start_s, history_it_w, history_p10_w, now_s=now_s, start_s=start,
            mtu_s=mtu, horizon=settings.horizon, days=settings.margin_days,
            floor_w=settings.floor_w, weeks=settings.weeks, tz_offset_s=tz)
        margin = calibrated_margin_w(miss_t, miss_w, forecast.times_s(),
                                     quantile=settings.margin_quantile,
                                     block_h=settings.margin_block_h, tz_offset_s=tz)
        p10 = np.maximum(0.0, p10 - margin)
        notes.append(f"p10 lowered by a margin of {margin.min():.0f}-{margin.max():.0f} W: "
                     f"q{settings.margin_quantile:g} of {miss_w.size} misses over the last "
                     f"{settings.margin_days} days")
    if settings.safety_margin_fraction > 0:
        p10 = p10 * (1.0 - settings.safety_margin_fraction)
    lowered = settings.margin_quantile is not None or settings.safety_margin_fraction > 0
    bounded = dataclasses.replace(forecast, p10_w=p10) if lowered else forecast
    problem = problem_from(bounded, signals, floor_w=settings.floor_w,
                           enrolments=settings.enrolments, **dict(settings.options))
    from gridtao.tier3.optimise import solve

    result = solve(problem, time_limit_s=settings.time_limit_s)
    warnings = () if signals is None else tuple(signals.warnings)
    if signals is None:
        warnings = ("no price or carbon signals: nothing is offered where a price is missing",)
    return Plan(now_s, forecast, problem, result, (*warnings, *settings.notes, *notes))


class NoPlan:
    """Nothing to offer: before the first plan, or after the last valid plan ran out.

    Transitions: a valid plan -> :class:`Planned`; a failed round -> :class:`NoPlan` (with its
    reason)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    name = "no_plan"

    def offers_at(self, wall_s: float) -> dict[str, float]:
        return {}

    @property
    def plan(self) -> Plan | None:
        return None


class Planned:
    """The latest round gave a valid plan; its offers are in force.

    Transitions: a newer valid plan -> :class:`Planned`; a failed round -> :class:`Fallback`
    on this plan."""

    name = "planned"

    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    @property
    def plan(self) -> Plan | None:
        return self._plan

    def offers_at(self, wall_s: float) -> dict[str, float]:
        return self._plan.offers_at(wall_s)


class Fallback:
    """The latest round failed (``reason``): the last valid plan stays in force, never
    extended past its horizon.

    Transitions: a valid plan -> :class:`Planned`; a failed round -> :class:`Fallback` while
    the kept plan covers the time, else :class:`NoPlan`."""

    name = "fallback"

    def __init__(self, plan: Plan, reason: str) -> None:
        self._plan = plan
        self.reason = reason

    @property
    def plan(self) -> Plan | None:
        return self._plan

    def offers_at(self, wall_s: float) -> dict[str, float]:
        return self._plan.offers_at(wall_s)


PlannerState = NoPlan | Planned | Fallback


def next_state(state: PlannerState, outcome: Plan | str, *, now_s: float) -> PlannerState:
    """The state after a round: ``outcome`` is its plan, or the reason no plan was made."""
    if isinstance(outcome, Plan) and outcome.valid:
        return Planned(outcome)
    reason = outcome if isinstance(outcome, str) else (
        f"solver status {outcome.result.status}: {'; '.join(outcome.result.notes) or '-'}")
    kept = state.plan
    if kept is not None and now_s < kept.end_s:
        return Fallback(kept, reason)
    return NoPlan(reason)
