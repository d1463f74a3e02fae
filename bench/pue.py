"""PUE-aware tier 2 against a naive annual-PUE tracker, in virtual time (``gridtao bench pue``).

Pure simulation, no broker and no GPUs: a node whose IT power follows its target through
first-order lags (cap-down 50 ms, cap-up 250 ms: tier 1 plus firmware), a facility plant
(gridtao/control/tier2/facility.py: losses at once, cooling through a lag) and a meter-level
commitment shaped by a demand-response event (gridtao/products/dr.py). Each strategy turns the meter
reduction into an IT target, refreshing its cooling estimate once a second from the measured
IT power as tier 2 does, and is scored on the same scenario:

* meter tracking: mean |delivered - required| and the worst under-delivery, in % of the
  committed reduction, and the share of the event spent more than 5 % short, all after a 1 s
  activation allowance (the IT step itself takes ~0.1-0.2 s through the lags);
* IT shed: mean IT reduction (W) and IT energy shed against an oracle that meets the meter
  commitment exactly with the least IT (the aware model, perfect and instant): ``excess``.

The annual PUE defaults to the model's own steady-state PUE at the node's draw, so the naive
tracker is right in the long run and is judged only on what it does not know: that cooling
takes minutes to follow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridtao.bench.render import write_outputs
from gridtao.config.agent import FacilityConfig
from gridtao.control.tier2.facility import (
    AnnualPueTracker,
    Facility,
    FacilityModel,
    LossesOnlyTracker,
    MeterTracker,
    ReductionTracker,
)
from gridtao.products.dr import DrSchedule
from gridtao.telemetry.plotting import pyplot
from gridtao.telemetry.runinfo import provenance
from gridtao.wire.messages import DrDispatch

CAP_DOWN_TAU_S, CAP_UP_TAU_S = 0.05, 0.25
SCENARIOS = {"short": 30.0, "dr": 1800.0}  # hold durations: an FFR/FCR-D-like cut, a DR event
ALLOWANCE_S = 1.0  # tracking is scored from this long after the event begins


@dataclass(frozen=True)
class Scenario:
    """One event. Powers in W (meter-level ``reduction_w``), times in s."""

    name: str = "dr"
    it_w: float = 4800.0
    reduction_w: float = 1000.0
    start_s: float = 60.0
    ramp_s: float = 0.0
    duration_s: float = 1800.0
    recovery_s: float = 0.0
    tail_s: float = 60.0
    dt_s: float = 0.1
    tick_s: float = 1.0


def _lag(value: float, target: float, dt_s: float) -> float:
    tau = CAP_DOWN_TAU_S if target < value else CAP_UP_TAU_S
    return target + (value - target) * math.exp(-dt_s / tau)


def _requirement(sc: Scenario) -> DrSchedule:
    sched = DrSchedule(sc.reduction_w)
    msg = DrDispatch("bench", sc.duration_s, start_at=sc.start_s, ramp_s=sc.ramp_s,
                     recovery_s=sc.recovery_s, reduction_w=sc.reduction_w)
    reason = sched.add(msg, now_s=0.0, wall_s=0.0)
    if reason is not None:
        raise ValueError(reason)
    return sched


def simulate(
    sc: Scenario, model: FacilityModel, plant: FacilityModel, tracker: ReductionTracker,
    *, instant: bool = False,
) -> dict[str, list[float]]:
    """Run one strategy; returns series ``t_s``, ``required_w``, ``delivered_w`` (meter),
    ``it_w``, ``it_shed_w``. ``instant``: IT follows its target at once and the tracker
    observes every step (the oracle)."""
    sched = _requirement(sc)
    facility = Facility(plant, sc.it_w)
    meter_ref = facility.meter_w
    it = sc.it_w
    end = sc.start_s + sc.duration_s + sc.recovery_s + sc.tail_s
    steps = round(end / sc.dt_s)
    every = 1 if instant else max(1, round(sc.tick_s / sc.dt_s))
    started = False
    out: dict[str, list[float]] = {k: [] for k in ("t_s", "required_w", "delivered_w", "it_w",
                                                   "it_shed_w")}
    for k in range(steps):
        t = k * sc.dt_s
        if k % every == 0:
            tracker.observe(t, it)
        required = sched.required_reduction_w(t, meter_ref)
        if required > 0 and not started:
            tracker.start(t, sc.it_w)
            started = True
        target = sc.it_w - (tracker.it_reduction_w(required) if required > 0 else 0.0)
        target = min(sc.it_w, max(0.0, target))
        it = target if instant else _lag(it, target, sc.dt_s)
        meter = facility.step(it, sc.dt_s)
        for key, v in (("t_s", t + sc.dt_s), ("required_w", required),
                       ("delivered_w", meter_ref - meter), ("it_w", it),
                       ("it_shed_w", sc.it_w - it)):
            out[key].append(v)
    return out


def score(sc: Scenario, series: dict[str, list[float]], oracle_shed_w: float) -> dict[str, float]:
    """Scores over the event (ramp start to recovery end), in % of the committed reduction."""
    lo = sc.start_s - sc.ramp_s
    hi = sc.start_s + sc.duration_s + sc.recovery_s
    idx = [k for k, t in enumerate(series["t_s"]) if lo < t <= hi]
    errors = [series["delivered_w"][k] - series["required_w"][k] for k in idx
              if series["t_s"][k] > lo + ALLOWANCE_S]
    shed = [series["it_shed_w"][k] for k in idx]
    r = sc.reduction_w
    mean_shed = sum(shed) / len(shed)
    return {
        "mean_abs_error_pct": 100.0 * sum(abs(e) for e in errors) / len(errors) / r,
        "worst_under_pct": 100.0 * max(0.0, -min(errors)) / r,
        "time_short_5pct_pct": 100.0 * sum(e < -0.05 * r for e in errors) / len(errors),
        "mean_delivered_w": sum(series["delivered_w"][k] for k in idx) / len(idx),
        "mean_it_shed_w": mean_shed,
        "it_energy_shed_wh": mean_shed * len(idx) * sc.dt_s / 3600.0,
        "excess_it_shed_pct": 100.0 * (mean_shed - oracle_shed_w) / oracle_shed_w,
    }


def run_pue_bench(
    facility: FacilityConfig,
    *,
    scenarios: list[Scenario],
    annual_pue: float | None = None,
    plant_tau_s: float | None = None,
    plant_cop: float | None = None,
) -> dict[str, Any]:
    """Every scenario x {pue-aware, annual-pue, losses-only}, plus the oracle; JSON-able."""
    model = FacilityModel.from_config(facility)
    plant = dataclasses.replace(
        model,
        cooling_tau_s=plant_tau_s if plant_tau_s is not None else model.cooling_tau_s,
        cop=plant_cop if plant_cop is not None else model.cop,
    )
    results = []
    for sc in scenarios:
        pue = annual_pue if annual_pue is not None else model.steady_pue(sc.it_w)
        oracle = simulate(sc, plant, plant, MeterTracker(plant, sc.it_w), instant=True)
        lo, hi = sc.start_s - sc.ramp_s, sc.start_s + sc.duration_s + sc.recovery_s
        o_shed = [s for t, s in zip(oracle["t_s"], oracle["it_shed_w"], strict=True)
                  if lo < t <= hi]
        oracle_mean = sum(o_shed) / len(o_shed)
        rows = []
        trackers: list[ReductionTracker] = [
            MeterTracker(model, sc.it_w), AnnualPueTracker(pue), LossesOnlyTracker(model)]
        for tracker in trackers:
            series = simulate(sc, model, plant, tracker)
            rows.append({"strategy": tracker.name, **score(sc, series, oracle_mean),
                         "series": _thin(series, 1.0)})
        results.append({"scenario": dataclasses.asdict(sc), "annual_pue": pue,
                        "oracle_mean_it_shed_w": oracle_mean, "strategies": rows})
    return {
        "model": dataclasses.asdict(model),
        "plant": dataclasses.asdict(plant),
        "steady_pue": model.steady_pue(scenarios[0].it_w) if scenarios else None,
        "results": results,
    }


def _thin(series: dict[str, list[float]], every_s: float) -> dict[str, list[float]]:
    t = series["t_s"]
    step = max(1, round(every_s / (t[1] - t[0]))) if len(t) > 1 else 1
    return {k: [round(x, 2) for x in v[::step]] for k, v in series.items()}


def markdown(result: dict[str, Any], command: str) -> str:
    m = result["model"]
    lines = [
        "### PUE-aware tier 2 vs a naive annual-PUE tracker (simulated, virtual time)",
        "",
        f"- command: `{command}`",
        f"- facility model: losses {m['losses_fraction'] * 100:.1f} %, COP {m['cop']:g}, "
        f"cooling lag {m['cooling_tau_s']:g} s, fixed {m['fixed_w']:g} W; plant lag "
        f"{result['plant']['cooling_tau_s']:g} s, COP {result['plant']['cop']:g}",
        f"- errors in % of the committed meter reduction, from {ALLOWANCE_S:g} s after the event "
        "begins; excess IT shed against the least IT cut that meets the meter commitment "
        "exactly",
    ]
    for res in result["results"]:
        sc = res["scenario"]
        lines += [
            "",
            f"**{sc['name']}**: node IT {sc['it_w']:g} W, meter reduction {sc['reduction_w']:g} "
            f"W held {sc['duration_s']:g} s (ramp {sc['ramp_s']:g} s); annual PUE "
            f"{res['annual_pue']:.3f}; least IT cut on average {res['oracle_mean_it_shed_w']:.0f}"
            " W",
            "",
            "| strategy | mean abs error % | worst short % | time > 5 % short | mean IT shed W "
            "| excess IT shed % |",
            "|---|---|---|---|---|---|",
        ]
        for row in res["strategies"]:
            lines.append(
                f"| {row['strategy']} | {row['mean_abs_error_pct']:.1f} | "
                f"{row['worst_under_pct']:.1f} | {row['time_short_5pct_pct']:.0f} % | "
                f"{row['mean_it_shed_w']:.0f} | {row['excess_it_shed_pct']:+.1f} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Required vs delivered meter reduction, and IT shed, per scenario and strategy."""
    plt = pyplot()
    n = len(result["results"])
    fig, axes = plt.subplots(2, n, figsize=(6 * n, 7), dpi=110, squeeze=False)
    for col, res in enumerate(result["results"]):
        top, bottom = axes[0][col], axes[1][col]
        first = res["strategies"][0]["series"]
        top.plot(first["t_s"], first["required_w"], "k--", label="required (meter)")
        for row in res["strategies"]:
            s = row["series"]
            top.plot(s["t_s"], s["delivered_w"], label=f"{row['strategy']} delivered")
            bottom.plot(s["t_s"], s["it_shed_w"], label=row["strategy"])
        top.set_title(res["scenario"]["name"])
        top.set_ylabel("meter reduction (W)")
        bottom.set_ylabel("IT shed (W)")
        bottom.set_xlabel("time (s)")
        top.legend(fontsize=8)
        bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args: Any, facility: FacilityConfig, command: str) -> int:
    """Run ``gridtao bench pue`` with parsed ``args``; prints the Markdown section."""

    if not (args.it_w > 0 and 0 < args.reduction_w < args.it_w and args.ramp_s >= 0):
        raise ValueError("need --it-w > 0, 0 < --reduction-w < --it-w and --ramp-s >= 0")
    if args.annual_pue is not None and args.annual_pue < 1.0:
        raise ValueError("--annual-pue must be >= 1")
    names = list(SCENARIOS) if args.scenario == "both" else [args.scenario]
    scenarios = [Scenario(name=n, it_w=args.it_w, reduction_w=args.reduction_w,
                          ramp_s=args.ramp_s, duration_s=SCENARIOS[n]) for n in names]
    result = run_pue_bench(facility, scenarios=scenarios, annual_pue=args.annual_pue,
                           plant_tau_s=args.plant_tau_s, plant_cop=args.plant_cop)
    result |= provenance(command)
    write_outputs(args, result, markdown(result, command), plot)
    return 0
