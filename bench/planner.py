"""Tier 3's day-ahead plan against simpler strategies, over a simulated week
(``gridtao bench planner``).

Pure simulation, no broker and no GPUs. The node: 8 GPUs of 700 W (minimum limit 200 W, idle
80 W), floor 1680 W IT (:func:`gridtao.tier3.problem.node_floor_w`: the larger of 8 x 200 W
and ``limits.min_node_fraction`` 0.3 of 8 x 700 W), offers settled at the meter with 3 %
losses, energy and carbon counted on site energy at PUE 1.25 (1 + losses + 1 / COP 4.5, the
facility defaults). Its draw is :func:`gridtao.history.synth.synthetic_minutes` (training jobs
at random plus an inference load with a daily shape, local time EET, UTC+2): ``HISTORY_DAYS``
(28) days of history, then the week scored, from Monday 2025-03-03 00:00 EET. Market signals:
:mod:`gridtao.bench.planner_signals` (day-ahead energy price, FCR-N / FCR-D / FFR / DR capacity
prices, carbon intensity; what is sourced and what is ours is said there).

Each day is planned when its markets close, ``--lead-h`` hours before it starts (default 12:
local noon the day before, the day-ahead gate: Nord Pool's day-ahead auction closes at 12:00 CET
and the Nordic FCR and FFR auctions the day before too), from the history up to then only,
then simulated minute by minute. Strategies, on the same day, signals and random activations:

* ``static``: the enrolment of configs/products.yaml (FFR 400 W, FCR-D up 300 W, DR 1500 W,
  for this 8-GPU node as written) offered in every hour its product is procured, no ceiling.
* ``reference``: the reference kit's tier 3 as published, a grid search each hour over mean
  power fraction f in {0.40, 0.55, 0.70, 0.80, 0.90} x FFR band b in {0, 0.05, 0.10, 0.15,
  0.20}, both of the node's maximum power (8 x 700 W), taking the argmax of
  ``0.55 q + 0.45 g + 0.0005 s`` where q, the FFR quality, is b / 0.20 in hours FFR is procured
  and 0 otherwise; g, the carbon-free score, is ``1 - f x carbon / (the day's highest
  carbon)``; s, the net savings (EUR in the hour), is the FFR capacity revenue plus the energy
  cost the cap avoids against running at full power, ``(1 - f) x max power x PUE x price``.
  The node is then capped at f x max power (IT) and offers b x max power of FFR. (Ties go to
  the first in grid order.)
* ``gridtao``: :func:`gridtao.tier3.forecast_draw` (hourly, 24 MTUs, from the history before
  the day) then :func:`gridtao.tier3.optimise.solve` with FFR, FCR-D up, FCR-N and DR
  enrolled (up to 2000 / 2000 / 1000 / 1500 W at the meter, in 100 W steps), DR in at most 4
  hours a day, lost work at ``LOST_WORK_EUR_WH`` and carbon at ``CARBON_EUR_T``, offers
  bounded by the forecast's p10 (the MTU's lowest minute, 9 MTUs out of 10). Beside it, the
  same plan with the p10 lowered by a margin learnt from the forecaster's own misses, as
  :class:`gridtao.tier3.planner.PlanSettings` ``margin_quantile`` does in the agent: how far
  the forecast p10 overshot the actual lowest minute over the ``CALIBRATION_DAYS`` days before
  (each of those forecasts made from the history before its own day, in the MTUs where it was
  above the floor), its split-conformal quantile per block of hours of the local day
  (:func:`gridtao.tier3.scores.calibrated_margin_w`; ``MARGINS``): what deliverability costs
  in revenue (``gridtao_margin_sweep``).
* ``oracle``: the same optimiser fed the actual draw of the day (each hour's lowest minute p10
  and its mean): perfect foresight, the upper bound on what a plan can earn.

Scored per strategy over the days: ``revenue`` (EUR, capacity payments for the hours the node
could deliver what it offered: a TSO pays for available capacity; ``revenue_offered`` counts
every hour offered), ``undeliverable_hours`` (hours in which some minute's p10 draw, capped by
the strategy's ceiling, minus the floor was below the down-capacity offered, IT W, FCR-N
counted twice as in the planner), ``energy_cost`` (EUR) and ``carbon_kg`` of the site energy
actually drawn, ``work_shed_wh`` (IT W·h the jobs lost to ceilings and activations),
``solve_s_p99`` (the planner's solve time), ``oracle_share`` (revenue over the oracle's); for
gridtao also ``p10_coverage`` (the share of the days' hours whose lowest minute stayed at or
above the forecast p10; ``p10_coverage_offered``: of the ``offered_hours`` it offered in).
An undeliverable hour is not paid, and not penalised either (a TSO would, and would in the end
disqualify the unit): static gains from offering blind. Activations per minute, drawn once per
day and shared by the strategies: FFR fires in a minute with probability 0.5 % (full capacity
for the minute), FCR-D up with 2 % (a uniform 20-100 % of capacity), FCR-N follows a deviation
of mean 0 and sd 0.3 of its capacity around its baseline (a capacity below the natural draw),
DR is dispatched for every hour it is offered. A cut never takes the node below its floor.
``forecast``: the forecaster's scores on the simulated days against day-over-day persistence
(:mod:`gridtao.tier3.scores`).

Targets, judged in the output: no undeliverable hour for gridtao; its revenue at least 90 % of
the oracle's and above static's and the reference's; the solve time of 48 MTUs with every
product kind under 1 s.

``--seeds 0,1,2`` runs several seeds and prints their shares of the oracle and undeliverable
hours side by side. ``--job-hours MIN,MAX`` makes the synthetic training jobs last a
log-uniform MIN-MAX hours (synth's own: 2-24 h) at a rate asking for the same GPU-hours a day:
the oracle's lead over any forecast comes from jobs starting and ending at random, so how long
they run decides much of the result (docs/planner-inputs.md, "The bench's synthetic node", on
how long real clusters' jobs run).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gridtao.bench.planner_signals import MarketSignals, market_signals
from gridtao.bench.render import write_outputs
from gridtao.config.kinds import KINDS
from gridtao.gpu.sim.daily import DailyShape
from gridtao.history import synth
from gridtao.history.synth import synthetic_minutes
from gridtao.telemetry.runinfo import provenance
from gridtao.tier3 import Forecast, forecast_draw, persistence_forecast, score
from gridtao.tier3.optimise import (
    Enrolment,
    PlanProblem,
    PlanResult,
    node_floor_w,
    problem_from,
    solve,
)
from gridtao.tier3.scores import calibrated_margin_w

FloatArray = npt.NDArray[np.float64]

HOUR_S, DAY_S = 3600, 86_400
TZ_OFFSET_S = 2 * HOUR_S  # EET
WEEK_START_S = 1_740_952_800  # Monday 2025-03-03 00:00 EET
HISTORY_DAYS = 28
CALIBRATION_DAYS = 14
LEAD_S = 12 * HOUR_S  # a day is planned this long before it starts (the day-ahead gate)
GPUS, TDP_W, MIN_W, IDLE_W = 8, 700.0, 200.0, 80.0
MAX_W = GPUS * TDP_W
FLOOR_W = node_floor_w([MIN_W] * GPUS, [TDP_W] * GPUS, min_node_fraction=0.3)
LOSSES = 0.03
PUE = 1.25
# Ours: 120 EUR per MWh of IT energy the jobs lose. The synthetic node is idle or lightly
# loaded much of the day, so work deferred from an hour is mostly made up later; a node full of
# jobs worth their rental price (~2 EUR per H100-hour) would put this near 1,000 EUR/MWh, and
# then only rarely activated products (FFR) pay.
LOST_WORK_EUR_WH = 1.2e-4
CARBON_EUR_T = 80.0  # about the EU ETS price
DR_MAX_HOURS = 4
STATIC = {"ffr": 400.0, "fcr-d-up": 300.0, "dr": 1500.0}  # configs/products.yaml
ENROLMENTS = (
    Enrolment("ffr", "ffr", 2000.0, bid_step_w=100.0),
    Enrolment("fcr-d-up", "fcr-d-up", 2000.0, bid_step_w=100.0),
    Enrolment("fcr-n", "fcr-n", 1000.0, bid_step_w=100.0),
    Enrolment("dr", "dr", 1500.0, bid_step_w=100.0),
)
REF_FRACTIONS = (0.40, 0.55, 0.70, 0.80, 0.90)
REF_BANDS = (0.0, 0.05, 0.10, 0.15, 0.20)
STRATEGIES = ("static", "reference", "gridtao", "oracle")
P_FFR, P_FCRD, SD_FCRN = 0.005, 0.02, 0.3
TARGET_ORACLE_SHARE = 0.9
#: Margins under the forecast's p10 learnt from its recent misses
#: (:func:`gridtao.tier3.scores.calibrated_margin_w`), as (quantile of the misses, hours of the
#: local day per block; 24: one margin for the day): what deliverability costs in revenue.
MARGINS = ((0.9, 4), (1.0, 4), (1.0, 24))
TARGET_SOLVE_S = 1.0
_ITF = 1.0 / (1.0 + LOSSES)  # IT W per W at the meter


@dataclass(frozen=True)
class Plan:
    """One day's decision: offers per kind (W at the meter, per hour) and the IT ceiling per
    hour (inf: none). ``solve_s``: the planner's time (None: no solver)."""

    offers: Mapping[str, FloatArray]
    ceiling: FloatArray
    solve_s: float | None = None


@dataclass(frozen=True)
class Day:
    """One day's actual minutes (1440) and its hourly signals."""

    start_s: int
    mean_w: FloatArray
    p10_w: FloatArray
    signals: MarketSignals


def _weights(kind: str) -> float:
    """Down-room per W of the product: FCR-N needs its baseline and its down half (the
    planner's rule c)."""
    return 2.0 if KINDS[kind].symmetric else 1.0


def _problem(forecast: Forecast, day: Day) -> PlanProblem:
    # The day's signals as the agent would hold them: issued the day before (day-ahead).
    signals = day.signals.to_signals(issued_at_s=day.start_s - 11 * HOUR_S)
    return problem_from(
        forecast, signals, floor_w=FLOOR_W, enrolments=ENROLMENTS, max_draw_w=MAX_W,
        settle_at="meter", losses_fraction=LOSSES, pue=PUE, carbon_eur_t=CARBON_EUR_T,
        lost_work_eur_wh=LOST_WORK_EUR_WH, dr_max_hours_per_day=DR_MAX_HOURS,
        tz_offset_s=TZ_OFFSET_S)


def _from_result(result: PlanResult) -> Plan:
    offers = {e.kind: np.asarray(result.offers_w[e.name], dtype=np.float64) for e in ENROLMENTS}
    ceiling = (np.full(24, np.inf) if result.ceiling_w is None
               else np.nan_to_num(result.ceiling_w, nan=np.inf))
    return Plan(offers, ceiling, result.solve_s)


def plan_static(day: Day) -> Plan:
    """The fixed enrolment in every hour its product is procured (module docstring)."""
    offers = {}
    for kind, w in STATIC.items():
        price = day.signals.reserve_eur_mw_h[kind]
        offers[kind] = np.where(np.isnan(price), 0.0, w)
    return Plan(offers, np.full(24, np.inf))


def plan_reference(day: Day) -> Plan:
    """The reference kit's grid search, hour by hour (module docstring)."""
    sig = day.signals
    ffr_price = sig.reserve_eur_mw_h["ffr"]
    carbon_max = float(np.max(sig.carbon_g_kwh))
    ffr = np.zeros(24)
    ceiling = np.zeros(24)
    for h in range(24):
        best: tuple[float, float, float] | None = None
        procured = not math.isnan(float(ffr_price[h]))
        for f in REF_FRACTIONS:
            for b in REF_BANDS:
                quality = b / REF_BANDS[-1] if procured else 0.0
                green = 1.0 - f * float(sig.carbon_g_kwh[h]) / carbon_max
                revenue = (float(ffr_price[h]) * b * MAX_W / 1e6) if procured else 0.0
                avoided = (1.0 - f) * MAX_W * PUE * float(sig.energy_eur_mwh[h]) / 1e6
                value = 0.55 * quality + 0.45 * green + 0.0005 * (revenue + avoided)
                if best is None or value > best[0]:
                    best = (value, f, b if procured else 0.0)
        assert best is not None
        ceiling[h] = best[1] * MAX_W
        ffr[h] = best[2] * MAX_W
    return Plan({"ffr": ffr}, ceiling)


def plan_optimised(day: Day, forecast: Forecast) -> Plan:
    """Tier 3's plan for the day from ``forecast`` (gridtao) or the actual draw (oracle)."""
    return _from_result(solve(_problem(forecast, day)))


def lowered(forecast: Forecast, margin_w: float | FloatArray) -> Forecast:
    """``forecast`` with its p10 lowered by ``margin_w`` (per MTU or one value; not below 0)."""
    return Forecast(forecast.start_s, forecast.mtu_s,
                    np.maximum(0.0, forecast.p10_w - margin_w), forecast.p50_w,
                    forecast.p90_w, forecast.method)


def actual_forecast(day: Day) -> Forecast:
    """What the oracle plans on: the day's actual hours as a forecast (module docstring)."""
    p10, mean = hourly_actual(day)
    return Forecast(day.start_s, HOUR_S, p10, mean, mean, "actual")


def hourly_actual(day: Day) -> tuple[FloatArray, FloatArray]:
    """Each hour's lowest minute p10 and mean draw (what the oracle plans on)."""
    return day.p10_w.reshape(24, 60).min(axis=1), day.mean_w.reshape(24, 60).mean(axis=1)


@dataclass(frozen=True)
class Draws:
    """One day's activations per minute, shared by every strategy: the fraction of each
    product's capacity cut in that minute (FCR-N: the deviation below its baseline)."""

    ffr: FloatArray
    fcr_d: FloatArray
    fcr_n: FloatArray

    @classmethod
    def make(cls, rng: np.random.Generator) -> Draws:
        ffr = (rng.random(1440) < P_FFR).astype(np.float64)
        fcr_d = np.where(rng.random(1440) < P_FCRD, rng.uniform(0.2, 1.0, 1440), 0.0)
        fcr_n = np.clip(rng.normal(0.0, SD_FCRN, 1440), -1.0, 1.0)
        return cls(ffr, fcr_d, fcr_n)


def simulate(day: Day, plan: Plan, draws: Draws) -> dict[str, float]:
    """Score one strategy's plan on the day's actual minutes (module docstring)."""
    minute = np.arange(1440) // 60
    offers = {k: np.asarray(plan.offers.get(k, np.zeros(24)), dtype=np.float64)
              for k in ("ffr", "fcr-d-up", "fcr-n", "dr")}
    down_it = sum((_weights(k) * v for k, v in offers.items()), np.zeros(24)) * _ITF
    ceiling = plan.ceiling[minute]
    room = np.maximum(0.0, np.minimum(day.p10_w, ceiling) - FLOOR_W)
    short = np.zeros(24, dtype=bool)
    np.logical_or.at(short, minute, room < down_it[minute] - 1e-6)
    capped = np.minimum(day.mean_w, ceiling)
    cut_it = _ITF * (offers["ffr"][minute] * draws.ffr
                     + offers["fcr-d-up"][minute] * draws.fcr_d
                     + offers["fcr-n"][minute] * (1.0 + draws.fcr_n)
                     + offers["dr"][minute])
    # A cut stops at the floor; a node already under it is not cut at all.
    draw = np.minimum(np.maximum(capped - cut_it, np.minimum(day.mean_w, FLOOR_W)), day.mean_w)
    sig = day.signals
    paid = sum((np.nan_to_num(sig.reserve_eur_mw_h[k]) * v for k, v in offers.items()),
               np.zeros(24)) / 1e6  # EUR per hour: MW x EUR/MW/h x 1 h
    site_kwh = draw * PUE / 60.0 / 1000.0
    energy = float(np.sum(np.nan_to_num(sig.energy_eur_mwh)[minute] * site_kwh)) / 1000.0
    carbon = float(np.sum(np.nan_to_num(sig.carbon_g_kwh)[minute] * site_kwh)) / 1000.0
    return {"revenue": float(np.sum(paid[~short])), "revenue_offered": float(np.sum(paid)),
            "undeliverable_hours": int(short.sum()), "energy_cost": energy, "carbon_kg": carbon,
            "work_shed_wh": float(np.sum(day.mean_w - draw)) / 60.0}


def _mean_log_uniform(lo: float, hi: float) -> float:
    return lo if hi == lo else (hi - lo) / math.log(hi / lo)


@contextlib.contextmanager
def job_hours(hours: tuple[float, float] | None) -> Iterator[None]:
    """While inside: :func:`gridtao.history.synth.synthetic_minutes` draws training jobs of a
    log-uniform ``hours[0]``-``hours[1]`` h (None: synth's own 2-24 h), arriving at a rate
    scaled to ask for the same GPU-hours a day as synth's default (3 a day of 2-24 h): a
    sensitivity study of the job lengths. synth takes no parameter for them yet, so its module
    constants are set and restored; not thread-safe (a CLI bench)."""
    if hours is None:
        yield
        return
    lo, hi = hours
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"job hours must satisfy 0 < min <= max, got {lo}, {hi}")
    saved = (synth._JOB_MIN_H, synth._JOB_MAX_H, synth.JOB_RATE_PER_DAY)
    default = _mean_log_uniform(synth._JOB_MIN_H, synth._JOB_MAX_H)
    synth._JOB_MIN_H, synth._JOB_MAX_H = lo, hi
    synth.JOB_RATE_PER_DAY = saved[2] * default / _mean_log_uniform(lo, hi)
    try:
        yield
    finally:
        synth._JOB_MIN_H, synth._JOB_MAX_H, synth.JOB_RATE_PER_DAY = saved


class Week:
    """The node's minutes from ``HISTORY_DAYS`` before the week to its end, and the signals.
    ``hours``: the training jobs' length range (:func:`job_hours`; None: synth's); ``lead_s``:
    how long before a day starts it is planned (s)."""

    def __init__(self, days: int, seed: int, hours: tuple[float, float] | None = None,
                 lead_s: int = LEAD_S) -> None:
        self.lead_s = lead_s
        first = WEEK_START_S - HISTORY_DAYS * DAY_S
        with job_hours(hours):
            rows = synthetic_minutes(first, HISTORY_DAYS + days, gpus=GPUS, tdp_w=TDP_W,
                                     idle_w=IDLE_W, seed=seed,
                                     shape=DailyShape.default(offset_s=TZ_OFFSET_S))
        self.t = np.array([r.start_s for r in rows], dtype=np.int64)
        self.mean = np.array([r.it_mean_w for r in rows], dtype=np.float64)
        self.p10 = np.array([r.it_p10_w for r in rows], dtype=np.float64)
        self.signals = market_signals(WEEK_START_S, days * 24, seed=seed,
                                      tz_offset_s=TZ_OFFSET_S)
        self._forecasts: dict[int, Forecast] = {}

    def day(self, d: int) -> Day:
        start = WEEK_START_S + d * DAY_S
        sel = (self.t >= start) & (self.t < start + DAY_S)
        return Day(start, self.mean[sel], self.p10[sel], self.signals.window(start, 24))

    def forecast(self, day_start: int) -> Forecast:
        """The day's forecast, made ``lead_s`` before it from the history up to then only
        (cached)."""
        if day_start not in self._forecasts:
            made = day_start - self.lead_s
            before = self.t < made
            self._forecasts[day_start] = forecast_draw(
                self.t[before], self.mean[before], self.p10[before], start_s=day_start,
                mtu_s=HOUR_S, horizon=24, now_s=made, tz_offset_s=TZ_OFFSET_S)
        return self._forecasts[day_start]

    def misses(self, day_start: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """How far the forecast p10 overshot each MTU's actual lowest minute (W, > 0: the
        forecast promised too much), over the ``CALIBRATION_DAYS`` days before ``day_start``,
        in the MTUs where it was above the floor (the only ones a plan offers in) and that had
        ended when ``day_start``'s plan is made: what
        :func:`gridtao.tier3.scores.recent_misses` gives the planner, from cached forecasts.
        Returns (MTU start_s, overshoot)."""
        starts: list[npt.NDArray[np.int64]] = []
        out: list[FloatArray] = []
        made = day_start - self.lead_s
        for b in range(CALIBRATION_DAYS, 0, -1):
            start = day_start - b * DAY_S
            p10 = self.forecast(start).p10_w
            sel = (self.t >= start) & (self.t < start + DAY_S)
            actual = self.p10[sel].reshape(24, 60).min(axis=1)
            ended = start + HOUR_S * (np.arange(24) + 1) <= made
            used = (p10 > FLOOR_W) & ended
            starts.append(start + HOUR_S * np.flatnonzero(used).astype(np.int64))
            out.append(p10[used] - actual[used])
        return np.concatenate(starts), np.concatenate(out)

    def margin(self, day_start: int, quantile: float, block_h: int) -> FloatArray:
        """The day's learnt margin under the p10 per hour (W)."""
        t, miss = self.misses(day_start)
        grid = day_start + HOUR_S * np.arange(24, dtype=np.int64)
        return calibrated_margin_w(t, miss, grid, quantile=quantile, block_h=block_h,
                                   tz_offset_s=TZ_OFFSET_S)

    def forecast_scores(self, days: int) -> dict[str, Any]:
        """The forecaster against day-over-day persistence on the week's days, pooled."""
        pooled: dict[str, list[dict[str, float]]] = {"model": [], "persistence": []}
        for d in range(days):
            start = WEEK_START_S + d * DAY_S
            before = self.t < start - self.lead_s
            sel = (self.t >= start) & (self.t < start + DAY_S)
            hist = (self.t[before], self.mean[before], self.p10[before])
            kw: dict[str, Any] = {"start_s": start, "mtu_s": HOUR_S, "horizon": 24,
                                  "now_s": start - self.lead_s}
            made = {"model": forecast_draw(*hist, tz_offset_s=TZ_OFFSET_S, **kw),
                    "persistence": persistence_forecast(*hist, **kw)}
            for name, f in made.items():
                pooled[name].append(
                    score(f, self.t[sel], self.mean[sel], self.p10[sel]).to_dict())
        out: dict[str, Any] = {}
        for name, rows in pooled.items():
            n = sum(r["n_mtu"] for r in rows)
            out[name] = {k: sum(r[k] * r["n_mtu"] for r in rows) / n
                         for k in rows[0] if k != "n_mtu"} | {"n_mtu": n}
        out["skill_vs_persistence"] = 1.0 - (out["model"]["mean_pinball_w"]
                                             / max(out["persistence"]["mean_pinball_w"], 1e-9))
        return out


def solve_time_check(seed: int, repeats: int = 5) -> dict[str, Any]:
    """Solve 48 hourly MTUs with every product kind enrolled (bid steps, a minimum bid, the DR
    hours limit), ``repeats`` times; the slowest solve."""
    rng = np.random.default_rng(seed)
    n = 48
    p50 = 2500.0 + 2500.0 * rng.random(n)
    enrol = [Enrolment("ffr", "ffr", 2000.0, bid_step_w=100.0),
             Enrolment("ercot-ffr", "ercot-ffr", 1000.0, bid_step_w=100.0),
             Enrolment("fcr-d-up", "fcr-d-up", 2000.0, bid_step_w=100.0),
             Enrolment("fcr-d-up-static", "fcr-d-up-static", 2000.0, min_bid_w=300.0),
             Enrolment("fcr-n", "fcr-n", 1000.0, bid_step_w=100.0),
             Enrolment("dr", "dr", 1500.0, bid_step_w=100.0)]
    times = []
    status = "optimal"
    for _ in range(repeats):
        prices = {e.kind: 5.0 + 40.0 * rng.random(n) for e in enrol}
        p = PlanProblem(start_s=float(WEEK_START_S), mtu_s=float(HOUR_S),
                        p10_w=p50 - 800.0 * rng.random(n), p50_w=p50, floor_w=FLOOR_W,
                        enrolments=tuple(enrol), reserve_eur_mw_h=prices,
                        energy_eur_mwh=20.0 + 120.0 * rng.random(n),
                        carbon_g_kwh=30.0 + 100.0 * rng.random(n), pue=PUE,
                        carbon_eur_t=CARBON_EUR_T, lost_work_eur_wh=LOST_WORK_EUR_WH,
                        dr_max_hours_per_day=DR_MAX_HOURS, tz_offset_s=TZ_OFFSET_S)
        r = solve(p)
        times.append(r.solve_s)
        if r.status != "optimal":
            status = r.status
    return {"mtus": n, "products": len(enrol), "repeats": repeats, "max_s": max(times),
            "status": status}


def _p99(values: Sequence[float]) -> float | None:
    return float(np.percentile(values, 99)) if values else None


def _offered_hours(plan: Plan) -> npt.NDArray[np.bool_]:
    return np.asarray(sum((np.asarray(v) for v in plan.offers.values()), np.zeros(24)) > 0)


def run_planner_bench(days: int = 7, seed: int = 0, hours: tuple[float, float] | None = None,
                      lead_h: float = LEAD_S / HOUR_S) -> dict[str, Any]:
    """Simulate ``days`` days for every strategy; JSON-able results (module docstring).
    ``hours``: the synthetic training jobs' length range (:func:`job_hours`); ``lead_h``: how
    long before a day starts it is planned."""
    if not 1 <= days <= 28:
        raise ValueError(f"--days must be in 1..28, got {days}")
    if not 0 <= lead_h <= 36:
        raise ValueError(f"--lead-h must be in 0..36, got {lead_h}")
    t0 = time.perf_counter()
    week = Week(days, seed, hours, lead_s=round(lead_h * HOUR_S))
    keys = ("revenue", "revenue_offered", "undeliverable_hours", "energy_cost", "carbon_kg",
            "work_shed_wh")
    totals = {s: dict.fromkeys(keys, 0.0) for s in STRATEGIES}
    sweep = {m: {"revenue": 0.0, "undeliverable_hours": 0.0, "offered_hours": 0.0}
             for m in MARGINS}
    margins: dict[tuple[float, int], list[FloatArray]] = {m: [] for m in MARGINS}
    solve_times: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    covered: list[npt.NDArray[np.bool_]] = []  # per day and hour: lowest minute >= p10
    offered: list[npt.NDArray[np.bool_]] = []  # per day and hour: gridtao offered something
    per_day: list[dict[str, Any]] = []
    for d in range(days):
        day = week.day(d)
        forecast = week.forecast(day.start_s)
        plans = {"static": plan_static(day), "reference": plan_reference(day),
                 "gridtao": plan_optimised(day, forecast),
                 "oracle": plan_optimised(day, actual_forecast(day))}
        draws = Draws.make(np.random.default_rng([seed, d, 17]))
        entry: dict[str, Any] = {"start_s": day.start_s}
        for name, plan in plans.items():
            got = simulate(day, plan, draws)
            for key, value in got.items():
                totals[name][key] += value
            if plan.solve_s is not None:
                solve_times[name].append(plan.solve_s)
            entry[name] = {k: round(v, 4) for k, v in got.items()}
        covered.append(hourly_actual(day)[0] >= forecast.p10_w)
        offered.append(_offered_hours(plans["gridtao"]))
        for m in MARGINS:
            margin = week.margin(day.start_s, *m)
            plan = plan_optimised(day, lowered(forecast, margin))
            got = simulate(day, plan, draws)
            sweep[m]["revenue"] += got["revenue"]
            sweep[m]["undeliverable_hours"] += got["undeliverable_hours"]
            sweep[m]["offered_hours"] += int(_offered_hours(plan).sum())
            margins[m].append(margin)
        per_day.append(entry)
    oracle_revenue = totals["oracle"]["revenue"]

    def share(revenue: float) -> float | None:
        return round(revenue / oracle_revenue, 4) if oracle_revenue > 0 else None

    strategies: dict[str, dict[str, Any]] = {}
    for name in STRATEGIES:
        row: dict[str, Any] = {k: (int(v) if k == "undeliverable_hours" else round(v, 4))
                               for k, v in totals[name].items()}
        row["oracle_share"] = share(totals[name]["revenue"])
        row["solve_s_p99"] = _p99(solve_times[name])
        strategies[name] = row
    cov, off = np.concatenate(covered), np.concatenate(offered)
    strategies["gridtao"] |= {
        "p10_coverage": round(float(cov.mean()), 4), "offered_hours": int(off.sum()),
        "p10_coverage_offered": round(float(cov[off].mean()), 4) if off.any() else None}
    timing = solve_time_check(seed)
    result: dict[str, Any] = {
        "days": days, "seed": seed, "week_start_s": WEEK_START_S, "lead_h": lead_h,
        "job_hours": list(hours) if hours is not None
        else [synth._JOB_MIN_H, synth._JOB_MAX_H],
        "node": {"gpus": GPUS, "tdp_w": TDP_W, "min_w": MIN_W, "idle_w": IDLE_W,
                 "floor_w": FLOOR_W, "losses_fraction": LOSSES, "pue": PUE,
                 "lost_work_eur_wh": LOST_WORK_EUR_WH, "carbon_eur_t": CARBON_EUR_T,
                 "dr_max_hours_per_day": DR_MAX_HOURS},
        "strategies": strategies,
        "gridtao_margin_sweep": [
            {"miss_quantile": q, "block_h": b, "revenue": round(v["revenue"], 4),
             "oracle_share": share(v["revenue"]),
             "undeliverable_hours": int(v["undeliverable_hours"]),
             "offered_hours": int(v["offered_hours"]),
             "margin_w_median": round(float(np.median(np.concatenate(margins[(q, b)]))), 1)}
            for (q, b), v in sweep.items()],
        "forecast": week.forecast_scores(days),
        "solve_48h_all_products": timing,
        "per_day": per_day,
    }
    result["targets"] = judge_targets(result)
    result["run_s"] = round(time.perf_counter() - t0, 2)
    return result


def summarise_seeds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several seeds' results side by side: per strategy and margin, revenue share of the
    oracle per seed and pooled (summed revenue over summed oracle revenue), undeliverable
    hours per seed and in all."""
    oracle = sum(r["strategies"]["oracle"]["revenue"] for r in results)

    def row(revenues: list[float], shares: list[float | None],
            hours: list[int]) -> dict[str, Any]:
        return {"oracle_share": shares,
                "oracle_share_pooled": round(sum(revenues) / oracle, 4) if oracle else None,
                "undeliverable_hours": hours, "undeliverable_total": sum(hours)}

    rows: dict[str, dict[str, Any]] = {}
    for name in STRATEGIES:
        got = [r["strategies"][name] for r in results]
        rows[name] = row([g["revenue"] for g in got], [g["oracle_share"] for g in got],
                         [g["undeliverable_hours"] for g in got])
    for i, (q, b) in enumerate(MARGINS):
        got = [r["gridtao_margin_sweep"][i] for r in results]
        rows[f"gridtao, margin q{q:g} per {b} h"] = row(
            [g["revenue"] for g in got], [g["oracle_share"] for g in got],
            [g["undeliverable_hours"] for g in got])
    return {"seeds": [r["seed"] for r in results], "days": results[0]["days"],
            "lead_h": results[0]["lead_h"],
            "job_hours": results[0]["job_hours"],
            "p10_coverage": [r["strategies"]["gridtao"]["p10_coverage"] for r in results],
            "rows": rows}


def judge_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    s = result["strategies"]
    g, o = s["gridtao"], s["oracle"]
    share = g["revenue"] / o["revenue"] if o["revenue"] > 0 else None
    return {
        "gridtao_undeliverable_hours": {"value": g["undeliverable_hours"], "limit": 0,
                                        "met": g["undeliverable_hours"] == 0},
        "revenue_vs_oracle": {"value": share, "limit": TARGET_ORACLE_SHARE,
                              "met": share is not None and share >= TARGET_ORACLE_SHARE},
        "revenue_above_static_and_reference": {
            "value": g["revenue"], "static": s["static"]["revenue"],
            "reference": s["reference"]["revenue"],
            "met": g["revenue"] > max(s["static"]["revenue"], s["reference"]["revenue"])},
        "solve_48h_all_products_s": {
            "value": result["solve_48h_all_products"]["max_s"], "limit": TARGET_SOLVE_S,
            "met": result["solve_48h_all_products"]["max_s"] < TARGET_SOLVE_S},
    }


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f} %"


def markdown(result: dict[str, Any], command: str) -> str:
    node = result["node"]
    fc = result["forecast"]
    g = result["strategies"]["gridtao"]
    lo, hi = result["job_hours"]
    lines = [
        f"### Tier 3 day-ahead plan vs static, reference and oracle ({result['days']} days, "
        "simulated)",
        "",
        f"- command: `{command}`",
        f"- machine: {result.get('machine', 'unknown')}",
        f"- date: {result.get('date', 'unknown')}",
        f"- node: {node['gpus']} GPUs x {node['tdp_w']:g} W, floor {node['floor_w']:g} W IT, "
        f"offers at the meter (losses {node['losses_fraction'] * 100:g} %), PUE {node['pue']:g};"
        f" lost work {node['lost_work_eur_wh'] * 1e6:g} EUR/MWh, carbon "
        f"{node['carbon_eur_t']:g} EUR/t, DR at most {node['dr_max_hours_per_day']} h/day; "
        f"training jobs {lo:g}-{hi:g} h (log-uniform)",
        f"- planned {result['lead_h']:g} h before each day starts, from the history up to "
        "then only",
        f"- forecast (hourly, day ahead): mean pinball {fc['model']['mean_pinball_w']:.0f} W "
        f"against persistence {fc['persistence']['mean_pinball_w']:.0f} W (skill "
        f"{fc['skill_vs_persistence']:+.2f}); p10 pinball {fc['model']['pinball_p10_w']:.0f} W;"
        f" p10 coverage {g['p10_coverage']:.2f} over the week's hours, "
        + ("-" if g["p10_coverage_offered"] is None else f"{g['p10_coverage_offered']:.2f}")
        + f" over the {g['offered_hours']} hours gridtao offered in",
        "",
        "| strategy | revenue EUR | of oracle | offered EUR | undeliverable h | energy cost EUR "
        "| carbon kg | work shed kWh | solve p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["strategies"].items():
        solve_ms = "-" if row["solve_s_p99"] is None else f"{row['solve_s_p99'] * 1000:.1f}"
        lines.append(
            f"| {name} | {row['revenue']:.3f} | {_pct(row['oracle_share'])} | "
            f"{row['revenue_offered']:.3f} | {row['undeliverable_hours']} | "
            f"{row['energy_cost']:.2f} | {row['carbon_kg']:.1f} | "
            f"{row['work_shed_wh'] / 1000:.1f} | {solve_ms} |")
    lines += ["", "revenue: capacity paid for the hours the node could deliver; offered: every "
              "hour offered (an undeliverable hour is not paid, and not penalised either).", "",
              "gridtao with its p10 lowered by a margin learnt from the forecaster's misses over "
              f"the {CALIBRATION_DAYS} days before each day (the quantile of the misses per "
              "block of hours; the largest at 1):", "",
              "| margin | median W | revenue EUR | of oracle | undeliverable h | offered h |",
              "|---|---|---|---|---|---|"]
    for row in result["gridtao_margin_sweep"]:
        lines.append(f"| q{row['miss_quantile']:g} per {row['block_h']} h | "
                     f"{row['margin_w_median']:.0f} | {row['revenue']:.3f} | "
                     f"{_pct(row['oracle_share'])} | {row['undeliverable_hours']} | "
                     f"{row['offered_hours']} |")
    t = result["targets"]
    share = t["revenue_vs_oracle"]["value"]
    lines += [
        "",
        "Targets:",
        f"- no undeliverable hour for gridtao: {t['gridtao_undeliverable_hours']['value']}: "
        f"{_verdict(t['gridtao_undeliverable_hours']['met'])}",
        "- revenue >= 90 % of the oracle's: "
        + ("no oracle revenue" if share is None else f"{share * 100:.0f} %")
        + f": {_verdict(t['revenue_vs_oracle']['met'])}",
        f"- revenue above static ({t['revenue_above_static_and_reference']['static']:.3f}) and "
        f"reference ({t['revenue_above_static_and_reference']['reference']:.3f}): "
        f"{t['revenue_above_static_and_reference']['value']:.3f}: "
        f"{_verdict(t['revenue_above_static_and_reference']['met'])}",
        f"- 48 hourly MTUs x every product kind solved in < 1 s: "
        f"{t['solve_48h_all_products_s']['value'] * 1000:.1f} ms: "
        f"{_verdict(t['solve_48h_all_products_s']['met'])}",
    ]
    return "\n".join(lines) + "\n"


def markdown_seeds(summary: dict[str, Any], command: str) -> str:
    """The table of :func:`summarise_seeds`."""
    lo, hi = summary["job_hours"]
    seeds = summary["seeds"]
    lines = [f"### Tier 3 plan over seeds {', '.join(map(str, seeds))} ({summary['days']} days "
             f"each, training jobs {lo:g}-{hi:g} h)", "", f"- command: `{command}`",
             f"- planned {summary['lead_h']:g} h before each day starts",
             "- gridtao's p10 coverage per seed: "
             + ", ".join(f"{c:.2f}" for c in summary["p10_coverage"]), "",
             "| strategy | of oracle, pooled | per seed | undeliverable h | per seed |",
             "|---|---|---|---|---|"]
    for name, row in summary["rows"].items():
        lines.append(f"| {name} | {_pct(row['oracle_share_pooled'])} | "
                     + " / ".join(_pct(x) for x in row["oracle_share"])
                     + f" | {row['undeliverable_total']} | "
                     + " / ".join(str(h) for h in row["undeliverable_hours"]) + " |")
    return "\n".join(lines) + "\n"


def _hours(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    try:
        out = (float(lo), float(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX hours, got {text!r}") from None
    if not (0 < out[0] <= out[1] and math.isfinite(out[1])):
        raise argparse.ArgumentTypeError(f"need 0 < MIN <= MAX, got {text!r}")
    return out


def _seeds(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("no seed given")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``gridtao bench planner [--days N] [--seed S | --seeds S,S,...] [--job-hours MIN,MAX]
    [--lead-h H] [--json FILE] [--markdown FILE]``."""
    p = argparse.ArgumentParser(prog="gridtao bench planner",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--days", type=int, default=7, help="days simulated (1..28, default 7)")
    p.add_argument("--seed", type=int, default=0, help="seed of the history, signals and "
                   "activations (default 0)")
    p.add_argument("--seeds", type=_seeds, metavar="S,S,...", help="run each of these seeds "
                   "and print their table side by side (JSON: every run and the summary)")
    p.add_argument("--job-hours", type=_hours, metavar="MIN,MAX", help="the synthetic "
                   "training jobs last a log-uniform MIN-MAX hours, at a rate asking for the "
                   "same GPU-hours a day (default: the synthetic history's 2-24 h)")
    p.add_argument("--lead-h", type=float, default=LEAD_S / HOUR_S, metavar="H",
                   help="plan each day H hours before it starts, from the history up to then "
                        "(0..36, default 12: the day-ahead gate at noon the day before)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the Markdown section to FILE")
    try:  # usage errors and --help return their status rather than leave the process
        args = p.parse_args(argv)
        if not 1 <= args.days <= 28:
            p.error("--days must be in 1..28")
        if not 0 <= args.lead_h <= 36:
            p.error("--lead-h must be in 0..36")
        for option in ("json", "markdown"):  # before the run, not after it
            target = getattr(args, option)
            if target and not os.access(Path(target).resolve().parent, os.W_OK):
                p.error(f"--{option} {target}: cannot write there")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    command = ("gridtao bench planner " + " ".join(argv if argv is not None else sys.argv[1:])
               ).strip()
    result: dict[str, Any]
    if args.seeds:
        runs = [run_planner_bench(args.days, seed, args.job_hours, args.lead_h)
                for seed in args.seeds]
        summary = summarise_seeds(runs)
        result = {"summary": summary, "runs": runs} | provenance(command)
        text = markdown_seeds(summary, command)
    else:
        result = run_planner_bench(args.days, args.seed, args.job_hours, args.lead_h)
        result |= provenance(command)
        text = markdown(result, command)
    write_outputs(args, result, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
