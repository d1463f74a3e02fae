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
* ``informed_reference`` (beside the strategies, :mod:`gridtao.bench.plannerinformed`): the
  same optimiser fed the node's own predictive distribution at the gate, sampled from the
  model that generates it with every job begun before the gate known (and, in two variants,
  the day's actual inference load or its actual jobs), at several quantiles of each hour's
  lowest minute: what knowing the model buys at each rate of undeliverable hours, and which
  part of the oracle's lead the jobs hide and which the inference load.

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
how long real clusters' jobs run). ``--nodes N`` (1..100) pools N such nodes as one site,
planned as one (as an aggregator pools nodes): the GPUs, maximum draw, floor, static enrolment
and every enrolment's ``max_w`` are N times the node's (bid steps stay 100 W), and the site draws
the sum of N independent synthetic nodes (node 0 with the seed itself, so ``--nodes 1`` is the
node above; their 1-s spreads combined as independent), each with its own jobs: a job runs on
one node, as on separate servers. The ``gridtao`` strategy then forecasts the site from the
site's own summed history. With more than one node, six more strategies plan the site on the
forecast its coordinator makes, its nodes' own forecasts (each from its own history) combined per
hour by ``site.market.pooling_correlation`` (gridtao/site/pooling.py): ``site_rho1`` (the
coordinator's default: the nodes' quantiles summed, no pooling claimed) down to ``site_rho0``
(independent, as the bench's nodes are); a correlation claimed above the true one is a margin.
Every strategy is judged on the site's actual draw. For the coordinator this is an upper bound:
it raises separately planned node offers by the pooling gain rather than planning once, and
moves shares to where the room is every ``resplit_s`` rather than at once.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gridtao.bench.plannerday import (
    CALIBRATION_DAYS,
    CARBON_EUR_T,
    DR_MAX_HOURS,
    HOUR_S,
    IDLE_W,
    LEAD_S,
    LOSSES,
    LOST_WORK_EUR_WH,
    MARGINS,
    MAX_NODES,
    MIN_W,
    NODE,
    PUE,
    STRATEGIES,
    TDP_W,
    TZ_OFFSET_S,
    WEEK_START_S,
    BenchNode,
    Day,
    Draws,
    Plan,
    actual_forecast,
    down_it_w,
    hourly_actual,
    lowered,
    plan_optimised,
    plan_reference,
    plan_static,
    simulate,
)
from gridtao.bench.plannerinformed import (
    KNOWS,
    REFERENCE_QUANTILES,
    REFERENCE_SAMPLES,
    informed_forecasts,
)
from gridtao.bench.plannerlive import add_delivery, delivery
from gridtao.bench.plannerreport import judge_targets, markdown, markdown_seeds, summarise_seeds
from gridtao.bench.plannerweek import Week
from gridtao.bench.render import check_outputs, write_outputs
from gridtao.history import synth
from gridtao.telemetry.runinfo import provenance
from gridtao.tier3.optimise import (
    Enrolment,
    PlanProblem,
    solve,
)

# Week (bench/plannerweek.py) is imported from here by the tests.
__all__ = ["Week", "main", "run_planner_bench", "solve_time_check"]

FloatArray = npt.NDArray[np.float64]


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
                        p10_w=p50 - 800.0 * rng.random(n), p50_w=p50, floor_w=NODE.floor_w,
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


#: The site coordinator's strategies (``--nodes`` > 1): name -> pooling correlation claimed.
SITE_STRATEGIES = {f"site_rho{rho:g}": rho for rho in (1.0, 0.5, 0.25, 0.1, 0.05, 0.0)}


def _offered_hours(plan: Plan) -> npt.NDArray[np.bool_]:
    return np.asarray(sum((np.asarray(v) for v in plan.offers.values()), np.zeros(24)) > 0)


def _tally(into: dict[str, float], day: Day, plan: Plan, draws: Draws) -> None:
    """Add ``plan``'s revenue, undeliverable hours and hours offered on ``day`` to ``into``
    (a variant planned beside the strategies: a margin, the informed reference)."""
    got = simulate(day, plan, draws)
    into["revenue"] += got["revenue"]
    into["undeliverable_hours"] += got["undeliverable_hours"]
    into["offered_hours"] += int(_offered_hours(plan).sum())


def run_planner_bench(days: int = 7, seed: int = 0, hours: tuple[float, float] | None = None,
                      lead_h: float = LEAD_S / HOUR_S, nodes: int = 1) -> dict[str, Any]:
    """Simulate ``days`` days for every strategy; JSON-able results (module docstring).
    ``hours``: the synthetic training jobs' length range (:func:`job_hours`); ``lead_h``: how
    long before a day starts it is planned; ``nodes``: how many nodes the site pools."""
    if not 1 <= days <= 28:
        raise ValueError(f"--days must be in 1..28, got {days}")
    if not 0 <= lead_h <= 36:
        raise ValueError(f"--lead-h must be in 0..36, got {lead_h}")
    t0 = time.perf_counter()
    node = BenchNode.of(nodes)
    week = Week(days, seed, hours, lead_s=round(lead_h * HOUR_S), node=node)
    keys = ("revenue", "revenue_offered", "undeliverable_hours", "energy_cost", "carbon_kg",
            "work_shed_wh")
    names = STRATEGIES + (tuple(SITE_STRATEGIES) if nodes > 1 else ())
    totals = {s: dict.fromkeys(keys, 0.0) for s in names}
    sweep = {m: {"revenue": 0.0, "undeliverable_hours": 0.0, "offered_hours": 0.0}
             for m in MARGINS}
    margins: dict[tuple[float, int], list[FloatArray]] = {m: [] for m in MARGINS}
    informed = {(knows, q): {"revenue": 0.0, "undeliverable_hours": 0.0, "offered_hours": 0.0}
                for knows in KNOWS for q in REFERENCE_QUANTILES}
    solve_times: dict[str, list[float]] = {s: [] for s in names}
    covered: list[npt.NDArray[np.bool_]] = []  # per day and hour: lowest minute >= p10
    offered: list[npt.NDArray[np.bool_]] = []  # per day and hour: gridtao offered something
    per_day: list[dict[str, Any]] = []
    site_delivery: dict[str, dict[str, dict[str, float]]] = {}  # --nodes > 1: plannerlive
    for d in range(days):
        day = week.day(d)
        forecast = week.forecast(day.start_s)
        plans = {"static": plan_static(day), "reference": plan_reference(day),
                 "gridtao": plan_optimised(day, forecast),
                 "oracle": plan_optimised(day, actual_forecast(day))}
        if nodes > 1:
            plans |= {name: plan_optimised(day, week.site_forecast(day.start_s, rho))
                      for name, rho in SITE_STRATEGIES.items()}
            means, own = week.node_day(day.start_s)
            for name in SITE_STRATEGIES:
                add_delivery(site_delivery, name,
                             delivery(down_it_w(plans[name]), means, NODE.floor_w, own))
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
            _tally(sweep[m], day, plan_optimised(day, lowered(forecast, margin)), draws)
            margins[m].append(margin)
        for knows in KNOWS:
            for q, made in informed_forecasts(week, day.start_s, seed=seed,
                                              knows=knows).items():
                _tally(informed[knows, q], day, plan_optimised(day, made), draws)
        per_day.append(entry)
    oracle_revenue = totals["oracle"]["revenue"]

    def share(revenue: float) -> float | None:
        return round(revenue / oracle_revenue, 4) if oracle_revenue > 0 else None

    strategies: dict[str, dict[str, Any]] = {}
    for name in names:
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
        "days": days, "seed": seed, "nodes": nodes, "week_start_s": WEEK_START_S, "lead_h": lead_h,
        "calibration_days": CALIBRATION_DAYS,
        "job_hours": list(hours) if hours is not None
        else [synth._JOB_MIN_H, synth._JOB_MAX_H],
        "node": {"nodes": nodes, "gpus": node.gpus, "tdp_w": TDP_W, "min_w": MIN_W,
                 "idle_w": IDLE_W, "max_w": node.max_w, "floor_w": node.floor_w,
                 "static_w": dict(node.static),
                 "enrolments_max_w": {e.kind: e.max_w for e in node.enrolments},
                 "losses_fraction": LOSSES, "pue": PUE,
                 "lost_work_eur_wh": LOST_WORK_EUR_WH, "carbon_eur_t": CARBON_EUR_T,
                 "dr_max_hours_per_day": DR_MAX_HOURS},
        "strategies": strategies,
        "site_delivery": {name: {way: {"short_hours": int(f["short_hours"]),
                                       "short_wh": round(f["short_wh"], 1),
                                       "awarded_wh": round(f["awarded_wh"], 1)}
                                 for way, f in ways.items()}
                          for name, ways in site_delivery.items()},
        "gridtao_margin_sweep": [
            {"miss_quantile": q, "block_h": b, "revenue": round(v["revenue"], 4),
             "oracle_share": share(v["revenue"]),
             "undeliverable_hours": int(v["undeliverable_hours"]),
             "offered_hours": int(v["offered_hours"]),
             "margin_w_median": round(float(np.median(np.concatenate(margins[(q, b)]))), 1)}
            for (q, b), v in sweep.items()],
        "informed_reference": {
            "samples": REFERENCE_SAMPLES,
            "rows": [{"knows": knows, "quantile": q, "revenue": round(v["revenue"], 4),
                      "oracle_share": share(v["revenue"]),
                      "undeliverable_hours": int(v["undeliverable_hours"]),
                      "offered_hours": int(v["offered_hours"])}
                     for (knows, q), v in informed.items()]},
        "forecast": week.forecast_scores(days),
        "solve_48h_all_products": timing,
        "per_day": per_day,
    }
    result["targets"] = judge_targets(result)
    result["run_s"] = round(time.perf_counter() - t0, 2)
    return result


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
    """``gridtao bench planner [--days N] [--nodes N] [--seed S | --seeds S,S,...]
    [--job-hours MIN,MAX] [--lead-h H] [--json FILE] [--markdown FILE]``."""
    p = argparse.ArgumentParser(prog="gridtao bench planner",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--days", type=int, default=7, help="days simulated (1..28, default 7)")
    p.add_argument("--nodes", type=int, default=1, help="synthetic 8-GPU nodes pooled as one "
                   f"site and planned as one (1..{MAX_NODES}, default 1)")
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
        if not 1 <= args.nodes <= MAX_NODES:
            p.error(f"--nodes must be in 1..{MAX_NODES}")
        check_outputs(args, p)  # before the run, not after it
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    command = ("gridtao bench planner " + " ".join(argv if argv is not None else sys.argv[1:])
               ).strip()
    result: dict[str, Any]
    if args.seeds:
        runs = [run_planner_bench(args.days, seed, args.job_hours, args.lead_h, args.nodes)
                for seed in args.seeds]
        summary = summarise_seeds(runs)
        result = {"summary": summary, "runs": runs} | provenance(command)
        text = markdown_seeds(summary, command)
    else:
        result = run_planner_bench(args.days, args.seed, args.job_hours, args.lead_h,
                                   args.nodes)
        result |= provenance(command)
        text = markdown(result, command)
    write_outputs(args, result, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
