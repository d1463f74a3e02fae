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
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

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
    from gridtao.tier3.report import draw, table, to_json

    plan = _plan(config, store_path(args, config))
    print(table(plan))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(plan), indent=1) + "\n")
    if args.plot:
        draw(plan, Path(args.plot))
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def _plan(config: Config, store: Path) -> Plan:
    from gridtao.app.planning import floor_w, natural_history, plan_settings, signals_file
    from gridtao.gpu import open_backend
    from gridtao.history import HistoryError
    from gridtao.tier3.forecast import ForecastError
    from gridtao.tier3.planner import make_plan

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
    t, mean, p10 = natural_history(store, int(now) - config.planner.history_days * DAY_S,
                                   int(now))
    try:
        signals = signals_file(config, now)
    except OSError as e:
        where = e.filename or config.planner.signals_file
        raise ConfigError(f"{config.source}: planner.signals_file: {where}: cannot read: "
                          f"{e.strerror or e}") from None
    try:
        plan = make_plan(t, mean, p10, signals, now_s=now,
                         settings=plan_settings(config, floor_w(config, limits, indices)))
    except ForecastError as e:
        raise ForecastError(f"{store}: {e} (the agent records a minute a minute; `gridtao "
                            "history import FILE.csv` or `gridtao history generate --days N` "
                            "fills it at once)") from None
    if not plan.valid:
        raise ConfigError(f"no plan: solver status {plan.result.status} "
                          f"({'; '.join(plan.result.notes) or 'no detail'})")
    return plan


