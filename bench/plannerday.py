"""The planner bench's node, its strategies and how a day is scored (``gridtao bench planner``; the
module docstring of :mod:`gridtao.bench.planner` describes each): the synthetic node's constants
and the site of ``--nodes`` of them (:class:`BenchNode`), one day's plan per strategy (static,
the reference kit's grid search, tier 3 on a forecast or on the actual draw), the day's
activations, and the minute-by-minute simulation that finds undeliverable hours."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gridtao.bench.planner_signals import MarketSignals
from gridtao.config.kinds import KINDS
from gridtao.history import synth
from gridtao.tier3 import Forecast
from gridtao.tier3.optimise import (
    Enrolment,
    PlanProblem,
    PlanResult,
    node_floor_w,
    problem_from,
    solve,
)

FloatArray = npt.NDArray[np.float64]

HOUR_S, DAY_S = 3600, 86_400
TZ_OFFSET_S = 2 * HOUR_S  # EET
WEEK_START_S = 1_740_952_800  # Monday 2025-03-03 00:00 EET
HISTORY_DAYS = 28
CALIBRATION_DAYS = 14
LEAD_S = 12 * HOUR_S  # a day is planned this long before it starts (the day-ahead gate)
GPUS_PER_NODE, TDP_W, MIN_W, IDLE_W = 8, 700.0, 200.0, 80.0
MAX_NODES = 100
LOSSES = 0.03
PUE = 1.25
# Ours: 120 EUR per MWh of IT energy the jobs lose. The synthetic node is idle or lightly
# loaded much of the day, so work deferred from an hour is mostly made up later; a node full of
# jobs worth their rental price (~2 EUR per H100-hour) would put this near 1,000 EUR/MWh, and
# then only rarely activated products (FFR) pay.
LOST_WORK_EUR_WH = 1.2e-4
CARBON_EUR_T = 80.0  # about the EU ETS price
DR_MAX_HOURS = 4
_STATIC = {"ffr": 400.0, "fcr-d-up": 300.0, "dr": 1500.0}  # configs/products.yaml, per node
_ENROLMENTS = (  # per node
    Enrolment("ffr", "ffr", 2000.0, bid_step_w=100.0),
    Enrolment("fcr-d-up", "fcr-d-up", 2000.0, bid_step_w=100.0),
    Enrolment("fcr-n", "fcr-n", 1000.0, bid_step_w=100.0),
    Enrolment("dr", "dr", 1500.0, bid_step_w=100.0),
)
REF_FRACTIONS = (0.40, 0.55, 0.70, 0.80, 0.90)
REF_BANDS = (0.0, 0.05, 0.10, 0.15, 0.20)
STRATEGIES = ("static", "reference", "gridtao", "oracle")
P_FFR, P_FCRD, SD_FCRN = 0.005, 0.02, 0.3
#: Margins under the forecast's p10 learnt from its recent misses
#: (:func:`gridtao.tier3.scores.calibrated_margin_w`), as (quantile of the misses, hours of the
#: local day per block; 24: one margin for the day): what deliverability costs in revenue.
MARGINS = ((0.9, 4), (1.0, 4), (1.0, 24))
_ITF = 1.0 / (1.0 + LOSSES)  # IT W per W at the meter


@dataclass(frozen=True)
class BenchNode:
    """What the bench plans for: ``nodes`` synthetic nodes of ``GPUS_PER_NODE`` GPUs pooled
    as one site and planned as one (as an aggregator pools nodes): its GPUs, maximum draw and
    floor (IT W), the static enrolment (W at the meter per product kind) and the planner's
    enrolments, each ``nodes`` times one node's. Build it with :meth:`of`."""

    nodes: int
    gpus: int
    max_w: float
    floor_w: float
    static: Mapping[str, float]
    enrolments: tuple[Enrolment, ...]

    @classmethod
    def of(cls, nodes: int = 1) -> BenchNode:
        """``nodes`` (1..``MAX_NODES``) nodes pooled; 1: the bench's single node."""
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"--nodes must be in 1..{MAX_NODES}, got {nodes}")
        gpus = GPUS_PER_NODE
        floor = node_floor_w([MIN_W] * gpus, [TDP_W] * gpus, min_node_fraction=0.3)
        return cls(nodes, nodes * gpus, nodes * (gpus * TDP_W), nodes * floor,
                   {k: nodes * w for k, w in _STATIC.items()},
                   tuple(dataclasses.replace(e, max_w=nodes * e.max_w) for e in _ENROLMENTS))


#: The bench's single node (``--nodes 1``).
NODE = BenchNode.of(1)


@dataclass(frozen=True)
class Plan:
    """One day's decision: offers per kind (W at the meter, per hour) and the IT ceiling per
    hour (inf: none). ``solve_s``: the planner's time (None: no solver)."""

    offers: Mapping[str, FloatArray]
    ceiling: FloatArray
    solve_s: float | None = None


@dataclass(frozen=True)
class Day:
    """One day's actual minutes (1440) of ``node`` (the site planned) and its hourly
    signals."""

    start_s: int
    mean_w: FloatArray
    p10_w: FloatArray
    signals: MarketSignals
    node: BenchNode = NODE


def _weights(kind: str) -> float:
    """Down-room per W of the product: FCR-N needs its baseline and its down half (the
    planner's rule c)."""
    return 2.0 if KINDS[kind].symmetric else 1.0


def _problem(forecast: Forecast, day: Day) -> PlanProblem:
    # The day's signals as the agent would hold them: issued the day before (day-ahead).
    signals = day.signals.to_signals(issued_at_s=day.start_s - 11 * HOUR_S)
    return problem_from(
        forecast, signals, floor_w=day.node.floor_w, enrolments=day.node.enrolments,
        max_draw_w=day.node.max_w, settle_at="meter", losses_fraction=LOSSES, pue=PUE,
        carbon_eur_t=CARBON_EUR_T, lost_work_eur_wh=LOST_WORK_EUR_WH,
        dr_max_hours_per_day=DR_MAX_HOURS, tz_offset_s=TZ_OFFSET_S)


def _from_result(result: PlanResult, node: BenchNode) -> Plan:
    offers = {e.kind: np.asarray(result.offers_w[e.name], dtype=np.float64)
              for e in node.enrolments}
    ceiling = (np.full(24, np.inf) if result.ceiling_w is None
               else np.nan_to_num(result.ceiling_w, nan=np.inf))
    return Plan(offers, ceiling, result.solve_s)


def plan_static(day: Day) -> Plan:
    """The fixed enrolment in every hour its product is procured (module docstring)."""
    offers = {}
    for kind, w in day.node.static.items():
        price = day.signals.reserve_eur_mw_h[kind]
        offers[kind] = np.where(np.isnan(price), 0.0, w)
    return Plan(offers, np.full(24, np.inf))


def plan_reference(day: Day) -> Plan:
    """The reference kit's grid search, hour by hour (module docstring)."""
    sig = day.signals
    max_w = day.node.max_w
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
                revenue = (float(ffr_price[h]) * b * max_w / 1e6) if procured else 0.0
                avoided = (1.0 - f) * max_w * PUE * float(sig.energy_eur_mwh[h]) / 1e6
                value = 0.55 * quality + 0.45 * green + 0.0005 * (revenue + avoided)
                if best is None or value > best[0]:
                    best = (value, f, b if procured else 0.0)
        assert best is not None
        ceiling[h] = best[1] * max_w
        ffr[h] = best[2] * max_w
    return Plan({"ffr": ffr}, ceiling)


def plan_optimised(day: Day, forecast: Forecast) -> Plan:
    """Tier 3's plan for the day from ``forecast`` (gridtao) or the actual draw (oracle)."""
    return _from_result(solve(_problem(forecast, day)), day.node)


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


def _offers(plan: Plan) -> dict[str, FloatArray]:
    return {k: np.asarray(plan.offers.get(k, np.zeros(24)), dtype=np.float64)
            for k in ("ffr", "fcr-d-up", "fcr-n", "dr")}


def down_it_w(plan: Plan) -> FloatArray:
    """The down-room a plan's offers need per hour, all products stacked (IT W)."""
    return np.asarray(sum((_weights(k) * v for k, v in _offers(plan).items()), np.zeros(24))
                      * _ITF)


def simulate(day: Day, plan: Plan, draws: Draws) -> dict[str, float]:
    """Score one strategy's plan on the day's actual minutes (module docstring)."""
    minute = np.arange(1440) // 60
    offers = _offers(plan)
    down_it = down_it_w(plan)
    ceiling = plan.ceiling[minute]
    floor = day.node.floor_w
    room = np.maximum(0.0, np.minimum(day.p10_w, ceiling) - floor)
    short = np.zeros(24, dtype=bool)
    np.logical_or.at(short, minute, room < down_it[minute] - 1e-6)
    capped = np.minimum(day.mean_w, ceiling)
    cut_it = _ITF * (offers["ffr"][minute] * draws.ffr
                     + offers["fcr-d-up"][minute] * draws.fcr_d
                     + offers["fcr-n"][minute] * (1.0 + draws.fcr_n)
                     + offers["dr"][minute])
    # A cut stops at the floor; a node already under it is not cut at all.
    draw = np.minimum(np.maximum(capped - cut_it, np.minimum(day.mean_w, floor)), day.mean_w)
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
