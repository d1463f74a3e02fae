"""``gridtao plan``: what tier 3 would offer now, hour by hour, and why.

Reads the node's history (the agent's store, or ``--store``), the signals (``--signals FILE``
or ``planner.signals_file``), the GPUs' limits (read only, through the configured backend) and
the enrolled products, makes one planning round (gridtao/tier3/planner.py) and prints the table:
per MTU the forecast quantiles of the natural IT draw, the offer per product, and the expected
reserve revenue, energy cost and carbon. ``--json FILE`` writes the same, ``--plot FILE`` draws
it. ``--work-kwh E --by TIME`` plans with a work requirement: the node's jobs must still get E
kWh of IT energy by TIME (a training run's remaining need; the program then sheds no more than
that allows). Nothing is published and no limit is written. Exit 0 with a plan; 2 with one line
when there is not enough history, a file or option is bad, or the solver found no plan (a
requirement the forecast cannot meet among them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gridtao.config.agent import Config, ConfigError
from gridtao.config.outputs import output_path, writing

if TYPE_CHECKING:
    from gridtao.tier3.planner import Plan
    from gridtao.tier3.problem import WorkRequirement

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
    p.add_argument("--work-kwh", type=float, default=None, metavar="E",
                   help="with --by: the jobs must still get E kWh of IT energy by then")
    p.add_argument("--by", metavar="TIME", default=None,
                   help="the work requirement's deadline (ISO 8601 with a zone, or Unix "
                        "seconds)")


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
    work = _work_requirement(args)
    json_path = None if not args.json else output_path(args.json, "--json")
    plot_path = None if not args.plot else output_path(args.plot, "--plot")
    from gridtao.tier3.report import draw, table, to_json

    where = ("--signals" if args.signals is not None
             else f"{config.source}: planner.signals_file")
    plan = _plan(config, store_path(args, config), work, signals_where=where)
    print(table(plan))
    if json_path is not None:
        with writing(json_path, "--json"):
            json_path.write_text(json.dumps(to_json(plan), indent=1) + "\n")
    if plot_path is not None:
        with writing(plot_path, "--plot"):
            draw(plan, plot_path)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def _work_requirement(args: argparse.Namespace) -> WorkRequirement | None:
    """``--work-kwh`` and ``--by`` (both or neither) as the program's work requirement."""
    from gridtao.cli.report import parse_time
    from gridtao.tier3.problem import WorkRequirement

    if (args.work_kwh is None) != (args.by is None):
        raise ConfigError("--work-kwh and --by go together: how much IT energy, by when")
    if args.work_kwh is None:
        return None
    if not (math.isfinite(args.work_kwh) and args.work_kwh >= 0):
        raise ConfigError(f"--work-kwh: {args.work_kwh!r} is not kWh >= 0")
    return WorkRequirement(args.work_kwh * 1000.0, parse_time(args.by, "--by"))


def _plan(config: Config, store: Path, work: WorkRequirement | None = None, *,
          signals_where: str = "planner.signals_file") -> Plan:
    from gridtao.app.planning import (
        checked_signals_file,
        floor_w,
        natural_history,
        plan_settings,
    )
    from gridtao.gpu import open_configured
    from gridtao.gpu.sim.shared import SimDeviceError
    from gridtao.history import HistoryError
    from gridtao.tier3.forecast import ForecastError
    from gridtao.tier3.planner import make_plan

    now = time.time()
    # The inputs first, then the GPUs: a bad file is said alone, and nothing is opened.
    signals = checked_signals_file(config, now, where=signals_where)
    if not store.exists():
        raise HistoryError(f"{store}: no history yet (gridtao history import or generate, or "
                           "run the agent)", path=store)
    try:
        backend = open_configured(config.gpus, source=config.source)
    except SimDeviceError as e:  # a key of this configuration against the machine's device
        raise ConfigError(f"{config.source}: {e}") from None
    try:
        indices = [d.index for d in backend.devices()]
        limits = [backend.power_limits(i) for i in indices]
    finally:
        backend.close()
    t, mean, p10 = natural_history(store, int(now) - config.planner.history_days * DAY_S,
                                   int(now))
    settings = plan_settings(config, floor_w(config, limits, indices),
                             sum(lim.default_mw for lim in limits) / 1000.0)
    if work is not None:
        when = _utc(work.by_s)
        settings = dataclasses.replace(
            settings, options=dict(settings.options) | {"work": work},
            notes=(*settings.notes, f"work requirement: at least {work.energy_wh / 1000:g} kWh "
                                    f"of IT energy for the jobs by {when}"))
    try:
        plan = make_plan(t, mean, p10, signals, now_s=now, settings=settings)
    except ForecastError as e:
        raise ForecastError(f"{store}: {e} (the agent records a minute a minute; `gridtao "
                            "history import FILE.csv` or `gridtao history generate --days N` "
                            "fills it at once)") from None
    if not plan.valid:
        if work is not None and plan.result.status == "infeasible":
            raise ConfigError(f"no plan: --work-kwh {work.energy_wh / 1000:g} by --by "
                              f"{_utc(work.by_s)}: {_work_reach(plan, work)}")
        raise ConfigError(f"no plan: solver status {plan.result.status} "
                          f"({'; '.join(plan.result.notes) or 'no detail'})")
    return plan


def _utc(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _work_reach(plan: Plan, work: WorkRequirement) -> str:
    """Why a work requirement cannot be met: its deadline is before the first MTU planned (the
    one under way is not), or the forecast's expected draw before it falls short."""
    start, mtu = plan.forecast.start_s, plan.forecast.mtu_s
    if work.by_s <= start:
        return (f"the deadline is before the first market time unit planned ({_utc(start)}; "
                "the one under way is not planned)")
    from gridtao.tier3.optimise import work_weights

    shares = work_weights(plan.problem, work, [])  # as the program counts the MTUs
    most_kwh = float((plan.problem.p50_w * shares).sum()) * mtu / 3600.0 / 1000.0
    return (f"the node is expected to draw at most {most_kwh:.1f} kWh by then (the forecast's "
            "p50 with nothing shed)")


