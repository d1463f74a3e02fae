"""The demo's tier-3 step: what the node would offer over the next day, and why.

Two weeks of synthetic history for the demo's GPUs (gridtao/history/synth.py), illustrative
price and carbon signals (daily shapes, not market data: see :func:`demo_signals`), the
configured products or, when none are enrolled, the example enrolment of
``configs/products.yaml``; then one planning round, exactly as the agent's planner makes it
(gridtao/tier3/planner.py), printed as the hourly table and drawn to ``plan.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gridtao.app.planning import floor_w, plan_settings
from gridtao.config.agent import Config, ProductConfig
from gridtao.gpu.backend import PowerLimits
from gridtao.gpu.sim.daily import DailyShape
from gridtao.history.synth import synthetic_minutes
from gridtao.tier3.planner import Plan, make_plan
from gridtao.tier3.report import draw, table
from gridtao.tier3.signals import parse_signals

__all__ = ["DEMO_PRODUCTS", "demo_signals", "show_plan"]

DAY_S = 86_400
HISTORY_DAYS = 14
#: The inference load of the demo's history, at every hour (0-1 of the GPUs' inference peak).
HISTORY_LOAD = 0.9
#: configs/products.yaml's example enrolment, for a demo configuration without products.
DEMO_PRODUCTS = (
    ProductConfig(kind="ffr", capacity_w=400.0, name="ffr", threshold_hz=49.5),
    ProductConfig(kind="fcr-d-up", capacity_w=300.0),
    ProductConfig(kind="dr", capacity_w=1500.0),
)


def _bump(hour: np.ndarray[Any, Any], centre: float, width: float) -> np.ndarray[Any, Any]:
    d = np.minimum(np.abs(hour - centre), 24.0 - np.abs(hour - centre))
    out: np.ndarray[Any, Any] = np.exp(-0.5 * (d / width) ** 2)
    return out


def demo_signals(now_s: float, hours: int = 48) -> dict[str, Any]:
    """Illustrative signals in the normalized schema (docs/planner-inputs.md), hourly from the
    current hour: energy with morning and evening peaks, reserve prices highest at night (low
    inertia, fewer units online) for FFR and flatter for FCR-D, demand response paid only in the
    evening peak, carbon highest in the evening. Shapes only; the levels are ours."""
    start = int(now_s) // 3600 * 3600
    hour = ((start + 3600 * np.arange(hours)) % DAY_S) / 3600.0
    energy = 45.0 + 40.0 * _bump(hour, 8.0, 1.5) + 60.0 * _bump(hour, 18.0, 2.0)
    ffr = 4.0 + 20.0 * _bump(hour, 3.0, 3.0)
    fcr_d = 9.0 + 4.0 * _bump(hour, 3.0, 4.0)
    dr = 60.0 * _bump(hour, 18.0, 1.0)
    carbon = 90.0 + 70.0 * _bump(hour, 18.0, 3.0)

    def r(a: np.ndarray[Any, Any]) -> list[float]:
        return [round(float(x), 2) for x in a]

    return {"version": 1, "issued_at": now_s, "source": "gridtao demo (illustrative)",
            "start": start, "mtu_s": 3600, "energy_price_eur_per_mwh": r(energy),
            "reserve_price_eur_per_mw_h": {"ffr": r(ffr), "fcr-d-up": r(fcr_d), "dr": r(dr)},
            "carbon_g_per_kwh": r(carbon)}


def show_plan(config: Config, limits: Sequence[PowerLimits], indices: Sequence[int],
              out_dir: Path) -> Plan:
    """Plan the next 24 h for the demo node (its GPUs' ``limits``), print the table, draw
    ``out_dir/plan.png`` (when matplotlib is there)."""
    products = config.products or DEMO_PRODUCTS
    cfg = dataclasses.replace(config, products=tuple(products),
                              planner=dataclasses.replace(config.planner, horizon_h=24))
    now = time.time()
    tdp_w = max(lim.default_mw for lim in limits) / 1000.0
    # The demo's node is busy (its GPUs run training at about 80 % of their limits): its
    # history is inference busy around the clock beside the synthetic training jobs.
    rows = synthetic_minutes(int(now) // 60 * 60 - HISTORY_DAYS * DAY_S, HISTORY_DAYS,
                             gpus=len(indices), tdp_w=tdp_w, seed=0,
                             shape=DailyShape.flat(HISTORY_LOAD))
    t = np.array([row.start_s for row in rows], dtype=np.int64)
    mean = np.array([row.it_mean_w for row in rows])
    p10 = np.array([row.it_p10_w for row in rows])
    signals = parse_signals(json.dumps(demo_signals(now)), now_s=now)
    plan = make_plan(t, mean, p10, signals, now_s=now,
                     settings=plan_settings(cfg, floor_w(cfg, limits, indices),
                                            sum(lim.default_mw for lim in limits) / 1000.0))
    enrolled = ", ".join(f"{p.name or p.kind} {p.capacity_w:.0f} W" for p in products)
    print(f"\ntier 3: the plan for the next 24 h ({enrolled}"
          f"{'' if config.products else ', the example enrolment'}; {HISTORY_DAYS} days of "
          "synthetic history; illustrative prices)")
    print(table(plan))
    from gridtao.telemetry import plotting

    if plotting.available() and math.isfinite(plan.result.revenue):
        png = out_dir / "plan.png"
        draw(plan, png)
        print(f"plot: {png}")
    return plan
