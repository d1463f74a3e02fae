"""``gridtao plan``: what tier 3 would offer now, hour by hour, and why.

Reads the node's history (the agent's store, or ``--store``), the signals (``--signals FILE``
or ``planner.signals_file``), the GPUs' limits (read only, through the configured backend) and
the enrolled products, makes one planning round (gridtao/tier3/planner.py) and prints the table:
per MTU the forecast quantiles of the natural IT draw, the offer per product, and the expected
reserve revenue, energy cost and carbon. ``--json FILE`` writes the same, ``--plot FILE`` draws
it. Nothing is published and no limit is written. Exit 0 with a plan; 2 with one line when there
is not enough history, a file is bad, or the solver found no plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridtao.config.agent import Config, ConfigError

if TYPE_CHECKING:
    from gridtao.tier3.planner import Plan

DAY_S = 86_400


def configure_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--horizon-h", type=int, default=None,
                   help="hours to plan (1..48; default planner.horizon_h)")
    p.add_argument("--signals", metavar="FILE", default=None,
                   help="prices and carbon (docs/planner-inputs.md; default "
                        "planner.signals_file)")
    p.add_argument("--store", metavar="FILE", default=None,
                   help="the history database (default: the agent's, history.path)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the plan as JSON")
    p.add_argument("--plot", metavar="FILE", default=None, help="draw the plan as PNG")


def run_plan(args: argparse.Namespace, config: Config) -> int:
    from gridtao.cli.history import store_path
    from gridtao.telemetry import plotting

    if args.plot and not plotting.available():
        raise plotting.PlottingUnavailable(f"--plot: {plotting.INSTALL_HINT}")
    planner = config.planner
    if args.horizon_h is not None:
        if not 1 <= args.horizon_h <= 48:
            raise ConfigError("--horizon-h must be in 1..48")
        planner = dataclasses.replace(planner, horizon_h=args.horizon_h)
    if args.signals is not None:
        planner = dataclasses.replace(planner, signals_file=str(Path(args.signals).resolve()))
    config = dataclasses.replace(config, planner=planner)
    if not config.products:
        raise ConfigError(f"{config.source}: products: none enrolled, nothing to plan")
    plan = _plan(config, store_path(args, config))
    print(table(plan))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(plan), indent=1) + "\n")
    if args.plot:
        draw(plan, Path(args.plot))
    return 0


def _plan(config: Config, store: Path) -> Plan:
    from gridtao.app.planning import floor_w, plan_settings
    from gridtao.config.paths import resolve_path
    from gridtao.gpu import open_backend
    from gridtao.history import HistoryError, HistoryStore
    from gridtao.tier3.planner import make_plan
    from gridtao.tier3.signals import parse_signals

    backend = open_backend(config.gpus)
    try:
        indices = [d.index for d in backend.devices()]
        limits = [backend.power_limits(i) for i in indices]
    finally:
        backend.close()
    now = time.time()
    if not store.exists():
        raise HistoryError(f"{store}: no history yet (gridtao history import or generate, or "
                           "run the agent)", path=store)
    with HistoryStore.open(store) as db:
        series = db.series(int(now) - config.planner.history_days * DAY_S, int(now) + 1)
    signals = None
    if config.planner.signals_file is not None:
        path = resolve_path(config.planner.signals_file, config.source)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
        signals = parse_signals(data, now_s=now, source=str(path),
                                max_age_s=config.planner.signals_max_age_h * 3600.0)
    plan = make_plan(series.start_s, series.it_mean_w, series.it_p10_w, signals, now_s=now,
                     settings=plan_settings(config, floor_w(config, limits, indices)))
    if not plan.valid:
        raise ConfigError(f"no plan: solver status {plan.result.status} "
                          f"({'; '.join(plan.result.notes) or 'no detail'})")
    return plan


def rows(plan: Plan) -> list[dict[str, Any]]:
    """One row per MTU: forecast, offers and money (EUR), carbon (kg)."""
    f, p, r = plan.forecast, plan.problem, plan.result
    hours = f.mtu_s / 3600.0
    out = []
    for k in range(f.horizon):
        revenue = 0.0
        for e in p.enrolments:
            price = p.reserve_eur_mw_h.get(e.kind)
            if price is not None and math.isfinite(float(price[k])):
                revenue += float(r.offers_w[e.name][k]) / 1e6 * float(price[k]) * hours
        draw_mwh = float(r.expected_draw_w[k]) * p.pue / 1e6 * hours
        energy = _times(p.energy_eur_mwh, k, draw_mwh)
        carbon = _times(p.carbon_g_kwh, k, draw_mwh)  # g/kWh x MWh = kg
        out.append({
            "start": f.start_s + k * f.mtu_s,
            "p10_w": float(f.p10_w[k]), "p50_w": float(f.p50_w[k]), "p90_w": float(f.p90_w[k]),
            "offers_w": {name: float(v[k]) for name, v in r.offers_w.items()},
            "ceiling_w": None if r.ceiling_w is None or not math.isfinite(float(r.ceiling_w[k]))
            else float(r.ceiling_w[k]),
            "revenue_eur": revenue, "energy_cost_eur": energy, "carbon_kg": carbon})
    return out


def _times(series: Any, k: int, mwh: float) -> float | None:
    if series is None or not math.isfinite(float(series[k])):
        return None
    return float(series[k]) * mwh


def table(plan: Plan) -> str:
    names = list(plan.result.offers_w)
    head = (f"{'hour (local)':<17}{'p10 W':>8}{'p50 W':>8}{'p90 W':>8}"
            + "".join(f"{n[:10]:>11}" for n in names)
            + f"{'rev EUR':>9}{'energy EUR':>11}{'CO2 kg':>8}")
    lines = [f"plan for {plan.forecast.horizon} MTUs of {plan.forecast.mtu_s} s "
             f"(node floor {plan.problem.floor_w:.0f} W IT; offers in W at the settlement "
             "point)", head]
    for row in rows(plan):
        when = datetime.fromtimestamp(row["start"]).strftime("%Y-%m-%d %H:%M")
        lines.append(
            f"{when:<17}{row['p10_w']:>8.0f}{row['p50_w']:>8.0f}{row['p90_w']:>8.0f}"
            + "".join(f"{row['offers_w'][n]:>11.0f}" for n in names)
            + f"{row['revenue_eur']:>9.3f}{_num(row['energy_cost_eur'], 11, 3)}"
            + f"{_num(row['carbon_kg'], 8, 2)}")
    r = plan.result
    lines.append(f"total: revenue {r.revenue:.3f} EUR, energy {r.energy_cost:.3f} EUR, carbon "
                 f"{r.carbon_kg:.2f} kg, work shed {r.work_shed_wh / 1000:.2f} kWh; solved in "
                 f"{r.solve_s * 1000:.0f} ms ({r.status})")
    lines += [f"note: {n}" for n in (*r.notes, *plan.signal_warnings)]
    return "\n".join(lines)


def _num(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def to_json(plan: Plan) -> dict[str, Any]:
    return {"made_at": plan.made_at_s, "mtu_s": plan.forecast.mtu_s,
            "start": plan.forecast.start_s, **plan.summary(), "hours": rows(plan)}


def draw(plan: Plan, path: Path) -> None:
    """Forecast band and the stacked offers (IT W) per MTU."""
    from gridtao.telemetry.plotting import pyplot

    plt = pyplot()
    data = rows(plan)
    t = [datetime.fromtimestamp(r["start"]) for r in data]
    fig, ax = plt.subplots(figsize=(11, 4), dpi=110)
    ax.fill_between(t, [r["p10_w"] for r in data], [r["p90_w"] for r in data], step="post",
                    alpha=0.2, label="forecast p10-p90 (IT W)")
    ax.step(t, [r["p50_w"] for r in data], where="post", label="forecast p50")
    ax.axhline(plan.problem.floor_w, color="k", ls=":", lw=1, label="node floor")
    bottom = [plan.problem.floor_w] * len(data)
    for name in plan.result.offers_w:
        height = [r["offers_w"][name] for r in data]
        ax.bar(t, height, bottom=bottom, width=plan.forecast.mtu_s / 86_400, align="edge",
               alpha=0.6, label=f"offer {name} (W)")
        bottom = [b + h for b, h in zip(bottom, height, strict=True)]
    ax.set_ylabel("W")
    ax.set_title(f"gridtao plan: expected revenue {plan.result.revenue:.2f} EUR")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"plot: {path}", file=sys.stderr)
