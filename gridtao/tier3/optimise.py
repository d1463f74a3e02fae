"""Tier 3's plan: what to offer in each market time unit (MTU) and where to cap the node.

One mixed-integer linear program per horizon (:class:`gridtao.tier3.problem.PlanProblem`),
solved by HiGHS through :func:`scipy.optimize.milp`. Decision variables per MTU ``t``:

* ``x[p,t]``: capacity offered in enrolled product ``p`` (W at the settlement point); an integer
  count of ``bid_step_w`` when the product has a bid step, gated by a binary when it has a
  minimum bid (0 or at least ``min_bid_w``) or is demand response under a daily-hours limit;
* ``s[t]``: IT power shed by a node ceiling ``c[t] = p50[t] - s[t]`` (only with
  ``allow_ceiling``), ``0 <= s[t] <= p50[t] - floor``: a ceiling above the median draw sheds
  nothing worth planning, one below the floor cannot be held.

Constraint families (``itf``: IT W per settled W, ``1 / (1 + losses)`` at the meter, else 1):

a. deliverability: ``sum_p k_p itf x[p,t] <= p10[t] - floor``. Every product counts (they may all
   activate at once: reserves add up, docs/products.md) and the p10 is what the node draws in
   nine minutes out of ten, so an offer stays deliverable through most of the MTU's minutes.
b. with a ceiling, offers are measured from the capped draw: ``sum_p k_p itf x[p,t] + s[t] <=
   p50[t] - floor`` (i.e. ``<= c[t] - floor``; with (a), ``<= min(p10, c) - floor``).
c. FCR-N (any symmetric kind) has ``k_p = 2``: its baseline sits a capacity below the natural
   draw (so its upward half, drawing more, is always there: up to the natural draw) and its
   downward half goes a further capacity below the baseline, so the node's lowest point is
   ``natural - 2 x_fcrn - (other products)``, which must stay at or above the floor. Every other
   kind has ``k_p = 1``.
d. work: ``sum_t w_t h (p50[t] - s[t] - sum_p a_p itf x[p,t]) >= energy_wh`` over the MTUs
   before the deadline (``w_t``: the share of MTU ``t`` before it; ``a_p``: the expected share of
   the capacity activated, :data:`gridtao.tier3.problem.DEFAULT_ACTIVATION`).
e. demand response: ``sum_{t in day} h z[t] <= dr_max_hours_per_day`` with ``x_dr[t] <= max z[t]``
   (days from local midnight, ``tz_offset_s`` east of UTC; an MTU counts in the day of its middle).

Objective (maximised, EUR): capacity revenue ``price x h`` minus the energy cost and the carbon
cost of the expected site draw ``pue (p50 - s - sum_p a_p itf x)`` minus the lost work
``lost_work_eur_wh (s + sum_p a_p itf x) h``. Unknown (NaN) energy prices or carbon leave their
term out in that MTU, with a note in the result.

:func:`solve` never raises for solver trouble (infeasible, time limit without a solution,
HiGHS failing): the status says so and every offer is 0. Pure function of its input; HiGHS
runs in the calling thread, so concurrent calls from several threads are safe.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt

# scipy ships no type hints (scipy-stubs is not a dependency).
from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]
from scipy.sparse import coo_array  # type: ignore[import-untyped]

from gridtao.config.kinds import KINDS
from gridtao.tier3.problem import (
    DEFAULT_ACTIVATION,
    Enrolment,
    FloatArray,
    PlanError,
    PlanProblem,
    WorkRequirement,
    node_floor_w,
    problem_from,
)

__all__ = ["DEFAULT_ACTIVATION", "Enrolment", "PlanError", "PlanProblem", "PlanResult",
           "Status", "WorkRequirement", "node_floor_w", "problem_from", "solve", "work_weights"]

Status = Literal["optimal", "time_limit", "infeasible", "failed"]

#: A ceiling shedding less than this (W) is reported as no ceiling (solver round-off).
_SHED_EPS_W = 1e-3


@dataclass(frozen=True, eq=False)
class PlanResult:
    """A solved plan. ``offers_w``: per enrolment name, W at the settlement point per MTU;
    ``ceiling_w``: node IT ceiling per MTU (NaN where none binds), None when no MTU has one;
    ``expected_draw_w``: the IT draw the plan expects (p50 minus ceilings and expected
    activations). Money in EUR: ``revenue`` (capacity), ``energy_cost`` and ``carbon_cost`` of
    the expected site draw, ``lost_work_cost``; ``objective = revenue - energy_cost -
    carbon_cost - lost_work_cost``. ``carbon_kg`` (CO2), ``work_shed_wh`` (IT W·h the jobs lose
    to ceilings and expected activations). ``solve_s``: wall time of the solver call.
    ``notes``: what was left out or assumed, in words."""

    status: Status
    offers_w: Mapping[str, FloatArray]
    ceiling_w: FloatArray | None
    expected_draw_w: FloatArray
    revenue: float
    energy_cost: float
    carbon_kg: float
    carbon_cost: float
    work_shed_wh: float
    lost_work_cost: float
    objective: float
    solve_s: float
    notes: tuple[str, ...]

    def down_w(self, problem: PlanProblem) -> FloatArray:
        """Summed down-capacity the node must hold per MTU, IT W (FCR-N counted twice, see the
        module's rule c): what has to stay below ``min(p10, ceiling) - floor``."""
        total = np.zeros(problem.n)
        for e in problem.enrolments:
            total += _weight(e) * self.offers_w[e.name]
        out: FloatArray = total * problem.it_per_settled
        return out


def _weight(e: Enrolment) -> float:
    """Down-room one W of the product needs (rule c)."""
    return 2.0 if KINDS[e.kind].symmetric else 1.0


@dataclass
class _Program:
    """The MILP in scipy's terms plus how to read its solution back."""

    c: FloatArray
    lb: FloatArray
    ub: FloatArray
    integrality: FloatArray
    rows: list[tuple[dict[int, float], float, float]]
    x_cols: list[npt.NDArray[np.intp]]  # per enrolment: its offer column per MTU
    unit: FloatArray  # per enrolment: W per unit of its variable
    shed_col: int | None  # first column of s, or None without a ceiling


def _prices(problem: PlanProblem, notes: list[str]) -> dict[str, FloatArray]:
    out: dict[str, FloatArray] = {}
    for e in problem.enrolments:
        series = problem.reserve_eur_mw_h.get(e.kind)
        if series is None:
            notes.append(f"{e.name}: no capacity price for {e.kind}: not offered")
            out[e.name] = np.full(problem.n, np.nan)
            continue
        missing = int(np.isnan(series).sum())
        if missing:
            notes.append(f"{e.name}: capacity price unknown in {missing} of {problem.n} MTUs: "
                         "not offered there")
        out[e.name] = series
    return out


def _known(series: FloatArray | None, what: str, n: int, notes: list[str]) -> FloatArray:
    """The series with unknowns as 0 (their term left out), noting how many there were."""
    if series is None:
        notes.append(f"no {what}: left out of the objective")
        return np.zeros(n)
    missing = int(np.isnan(series).sum())
    if missing:
        notes.append(f"{what} unknown in {missing} of {n} MTUs: left out there")
    return np.nan_to_num(series, nan=0.0)


def _marginal_shed_value(problem: PlanProblem, energy: FloatArray,
                         carbon: FloatArray) -> FloatArray:
    """EUR gained per W of expected IT draw removed for one MTU: energy and carbon saved minus
    the work lost."""
    h = problem.hours
    site_mwh = problem.pue * h / 1e6
    saved = energy * site_mwh + carbon * site_mwh * problem.carbon_eur_t / 1000.0
    out: FloatArray = saved - problem.lost_work_eur_wh * h
    return out


def work_weights(problem: PlanProblem, work: WorkRequirement, notes: list[str]) -> FloatArray:
    """Share of each MTU before the deadline (a deadline past the horizon: its end, noted)."""
    starts = problem.mtu_starts_s()
    end = problem.start_s + problem.n * problem.mtu_s
    by = work.by_s
    if by > end:
        notes.append("the work deadline is past the plan's horizon: the energy is required "
                     "within the horizon, earlier than asked")
        by = end
    out: FloatArray = np.clip((by - starts) / problem.mtu_s, 0.0, 1.0)
    return out


def _build(problem: PlanProblem, notes: list[str]) -> _Program:
    n, h, itf = problem.n, problem.hours, problem.it_per_settled
    prices = _prices(problem, notes)
    energy = _known(problem.energy_eur_mwh, "energy price", n, notes)
    carbon = _known(problem.carbon_g_kwh, "carbon intensity", n, notes)
    shed_value = _marginal_shed_value(problem, energy, carbon)
    room_p10 = np.maximum(0.0, problem.p10_w - problem.floor_w)
    room_p50 = np.maximum(0.0, problem.p50_w - problem.floor_w)

    c: list[float] = []
    lb: list[float] = []
    ub: list[float] = []
    integ: list[float] = []

    def add(cost: float, lo: float, hi: float, integer: bool) -> int:
        c.append(cost)
        lb.append(lo)
        ub.append(hi)
        integ.append(1.0 if integer else 0.0)
        return len(c) - 1

    x_cols: list[list[int]] = []
    unit = np.ones(len(problem.enrolments))
    gates: list[tuple[int, int, float, float]] = []  # (x column, z column, unit W, min bid W)
    dr_gates: list[tuple[int, int]] = []  # (t, z column) for the daily-hours limit
    for i, e in enumerate(problem.enrolments):
        unit[i] = e.bid_step_w if e.integral else 1.0
        top = math.floor(e.max_w / e.bid_step_w + 1e-9) if e.integral else e.max_w
        if e.min_bid_w > e.max_w:
            top = 0
        a = problem.activation[e.kind]
        limited_dr = e.kind == "dr" and problem.dr_max_hours_per_day is not None
        cols = []
        for t in range(n):
            price = prices[e.name][t]
            hi = 0.0 if math.isnan(price) else float(top)
            # Maximise: capacity revenue plus the value of the expected activated draw.
            value = (0.0 if math.isnan(price) else price) * h / 1e6 + a * itf * shed_value[t]
            col = add(-value * unit[i], 0.0, hi, e.integral)
            cols.append(col)
            if hi > 0 and (e.min_bid_w > 0 or limited_dr):
                z = add(0.0, 0.0, 1.0, True)
                gates.append((col, z, float(unit[i]), e.min_bid_w))
                if limited_dr:
                    dr_gates.append((t, z))
        x_cols.append(cols)

    shed_col: int | None = None
    if problem.allow_ceiling:
        shed_col = len(c)
        for t in range(n):
            add(-shed_value[t], 0.0, float(room_p50[t]), False)

    rows: list[tuple[dict[int, float], float, float]] = []
    for t in range(n):  # (a), (c): down products from the p10
        coef = {x_cols[i][t]: _weight(e) * itf * unit[i]
                for i, e in enumerate(problem.enrolments)}
        rows.append((coef, -np.inf, float(room_p10[t])))
        if shed_col is not None:  # (b): and from the ceiling
            rows.append((coef | {shed_col + t: 1.0}, -np.inf, float(room_p50[t])))
    for col, z, w_per_unit, min_bid in gates:
        rows.append(({col: 1.0, z: -ub[col]}, -np.inf, 0.0))  # offer only when z = 1
        if min_bid > 0:
            rows.append(({col: w_per_unit, z: -min_bid}, 0.0, np.inf))  # then >= min bid
    if problem.dr_max_hours_per_day is not None and dr_gates:  # (e)
        days: dict[int, dict[int, float]] = {}
        for t, z in dr_gates:
            mid = problem.start_s + problem.tz_offset_s + (t + 0.5) * problem.mtu_s
            day = int(mid // 86_400)
            days.setdefault(day, {})[z] = h
        for coef in days.values():
            rows.append((coef, -np.inf, float(problem.dr_max_hours_per_day)))
    if problem.work is not None:  # (d)
        w = work_weights(problem, problem.work, notes)
        coef = {}
        for t in range(n):
            for i, e in enumerate(problem.enrolments):
                a = problem.activation[e.kind]
                if a > 0:
                    coef[x_cols[i][t]] = float(w[t]) * h * a * itf * unit[i]
            if shed_col is not None:
                coef[shed_col + t] = float(w[t]) * h
        natural = float(np.sum(w * h * problem.p50_w))
        rows.append((coef, -np.inf, natural - problem.work.energy_wh))
    return _Program(np.array(c), np.array(lb), np.array(ub), np.array(integ), rows,
                    [np.array(cols, dtype=np.intp) for cols in x_cols], unit, shed_col)


def _result(problem: PlanProblem, status: Status, offers: Mapping[str, FloatArray],
            shed: FloatArray, solve_s: float, notes: list[str]) -> PlanResult:
    """The result of a plan, its money, carbon and work recomputed from the offers and the
    ceiling shed (the objective's terms, with its constant part: the natural draw's energy)."""
    n, h, itf = problem.n, problem.hours, problem.it_per_settled
    scratch: list[str] = []  # the solver's build already noted unknown prices
    energy = _known(problem.energy_eur_mwh, "energy price", n, scratch)
    carbon = _known(problem.carbon_g_kwh, "carbon intensity", n, scratch)
    revenue = 0.0
    activated = np.zeros(n)
    for e in problem.enrolments:
        x = offers[e.name]
        x.setflags(write=False)
        price = problem.reserve_eur_mw_h.get(e.kind)
        if price is not None:
            revenue += float(np.nansum(price * x)) * h / 1e6
        activated += problem.activation[e.kind] * itf * x
    draw = np.maximum(0.0, problem.p50_w - shed - activated)
    draw.setflags(write=False)
    site_kwh = draw * problem.pue * h / 1000.0
    energy_cost = float(np.sum(energy * site_kwh)) / 1000.0
    carbon_kg = float(np.sum(carbon * site_kwh)) / 1000.0
    carbon_cost = carbon_kg / 1000.0 * problem.carbon_eur_t
    work_wh = float(np.sum(shed + activated)) * h
    lost = work_wh * problem.lost_work_eur_wh
    binding = shed > _SHED_EPS_W
    ceiling = np.where(binding, problem.p50_w - shed, np.nan) if binding.any() else None
    return PlanResult(
        status=status, offers_w=MappingProxyType(dict(offers)), ceiling_w=ceiling,
        expected_draw_w=draw, revenue=revenue, energy_cost=energy_cost, carbon_kg=carbon_kg,
        carbon_cost=carbon_cost, work_shed_wh=work_wh, lost_work_cost=lost,
        objective=revenue - energy_cost - carbon_cost - lost, solve_s=solve_s,
        notes=tuple(notes))


def _zero(problem: PlanProblem, status: Status, solve_s: float, notes: list[str]) -> PlanResult:
    offers = {e.name: np.zeros(problem.n) for e in problem.enrolments}
    return _result(problem, status, offers, np.zeros(problem.n), solve_s, notes)


def solve(problem: PlanProblem, *, time_limit_s: float = 1.0) -> PlanResult:
    """Solve ``problem``; never raises for solver trouble (the status says it, offers are 0).

    ``time_limit_s``: HiGHS's wall-time limit; a plan found by then is returned with status
    ``time_limit`` (feasible, maybe not optimal). Raises :class:`PlanError` only for a bad
    ``time_limit_s`` (the problem was validated when it was built).
    """
    if not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise PlanError(f"time_limit_s must be > 0, got {time_limit_s}")
    notes: list[str] = []
    prog = _build(problem, notes)
    n = problem.n
    t0 = time.perf_counter()
    if prog.c.size == 0:
        return _zero(problem, "optimal", time.perf_counter() - t0, notes)
    # HiGHS works to absolute tolerances: scale the objective so its largest term is 1 (the
    # coefficients are EUR per W, ~1e-5, which would sit near the dual tolerance).
    scale = float(np.max(np.abs(prog.c))) or 1.0
    constraints = []
    if prog.rows:
        r_idx = [r for r, (coef, _, _) in enumerate(prog.rows) for _ in coef]
        c_idx = [col for coef, _, _ in prog.rows for col in coef]
        vals = [v for coef, _, _ in prog.rows for v in coef.values()]
        a = coo_array((vals, (r_idx, c_idx)), shape=(len(prog.rows), prog.c.size)).tocsr()
        constraints.append(LinearConstraint(a, np.array([lo for _, lo, _ in prog.rows]),
                                            np.array([hi for _, _, hi in prog.rows])))
    try:
        res = milp(prog.c / scale, integrality=prog.integrality,
                   bounds=Bounds(prog.lb, prog.ub), constraints=constraints,
                   options={"time_limit": time_limit_s, "mip_rel_gap": 1e-7, "disp": False})
    except Exception as e:  # HiGHS or scipy refusing: a status, never an exception
        notes.append(f"solver failed: {type(e).__name__}: {e}")
        return _zero(problem, "failed", time.perf_counter() - t0, notes)
    solve_s = time.perf_counter() - t0
    if res.x is None:
        codes: dict[int, Status] = {1: "time_limit", 2: "infeasible"}
        status: Status = codes.get(int(res.status), "failed")
        notes.append(f"no plan: {res.message}")
        return _zero(problem, status, solve_s, notes)
    status = "optimal" if res.status == 0 else "time_limit"
    if status != "optimal":
        notes.append(f"stopped early: {res.message}")
    v = np.asarray(res.x, dtype=np.float64)
    offers: dict[str, FloatArray] = {}
    for i, enr in enumerate(problem.enrolments):
        raw = v[prog.x_cols[i]]
        raw = np.round(raw) if enr.integral else np.clip(raw, 0.0, None)
        x = np.clip(raw * prog.unit[i], 0.0, enr.max_w)
        # Round-off below a minimum bid is no bid.
        x[x < max(enr.min_bid_w - 1e-6, 1e-9)] = 0.0
        offers[enr.name] = x
    shed = (np.clip(v[prog.shed_col:prog.shed_col + n], 0.0, None)
            if prog.shed_col is not None else np.zeros(n))
    return _result(problem, status, offers, shed, solve_s, notes)
