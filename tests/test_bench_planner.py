"""bench/planner.py runs end to end at a small size and reports what it says (no figure is
asserted beyond what holds by construction: the oracle sees the actual draw)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gridtao.bench.planner import (
    STRATEGIES,
    Day,
    Draws,
    Plan,
    hourly_actual,
    plan_reference,
    simulate,
)
from gridtao.bench.planner_signals import market_signals
from gridtao.cli.main import main

KEYS = {"revenue", "undeliverable_hours", "energy_cost", "carbon_kg", "work_shed_wh",
        "solve_s_p99"}


def test_two_days_report_every_strategy(tmp_path: Path) -> None:
    out, md = tmp_path / "planner.json", tmp_path / "planner.md"
    assert main(["bench", "planner", "--days", "2", "--json", str(out),
                 "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    assert result["days"] == 2
    assert set(result["strategies"]) == set(STRATEGIES)
    for name, row in result["strategies"].items():
        assert set(row) >= KEYS, name
        assert isinstance(row["undeliverable_hours"], int) and row["undeliverable_hours"] >= 0
        assert row["revenue"] >= 0 and row["work_shed_wh"] >= 0 and row["carbon_kg"] > 0
    s = result["strategies"]
    assert s["oracle"]["revenue"] >= s["gridtao"]["revenue"] >= 0
    assert s["oracle"]["undeliverable_hours"] == 0  # it plans on the actual lowest minutes
    assert s["gridtao"]["solve_s_p99"] is not None and s["static"]["solve_s_p99"] is None
    assert result["forecast"]["model"]["n_mtu"] == 48
    assert "skill_vs_persistence" in result["forecast"]
    for key in ("machine", "commit", "date", "command"):
        assert key in result
    assert {"gridtao_undeliverable_hours", "revenue_vs_oracle",
            "revenue_above_static_and_reference", "solve_48h_all_products_s"} \
        == set(result["targets"])
    assert "| oracle |" in md.read_text()


def test_bad_options_exit_2(tmp_path: Path) -> None:
    assert main(["bench", "planner", "--days", "0"]) == 2
    assert main(["bench", "planner", "--days", "1", "--json",
                 str(tmp_path / "missing" / "x.json")]) == 2


def _day(p10_w: float, mean_w: float) -> Day:
    start = 1_740_952_800
    return Day(start, np.full(1440, mean_w), np.full(1440, p10_w),
               market_signals(start, 24).window(start, 24))


def test_an_hour_is_undeliverable_when_a_minute_cannot_cover_the_offer() -> None:
    day = _day(3000.0, 3200.0)
    day.p10_w[65] = 1800.0  # one minute of hour 1 dips to 120 W above the 1680 W floor
    offers = {"ffr": np.full(24, 500.0)}
    quiet = Draws(np.zeros(1440), np.zeros(1440), np.zeros(1440))
    got = simulate(day, Plan(offers, np.full(24, np.inf)), quiet)
    assert got["undeliverable_hours"] == 1
    assert got["work_shed_wh"] == 0.0  # no activation, no ceiling
    # A ceiling lowers the room too: 2000 W leaves 320 W above the floor, under 500 / 1.03.
    got = simulate(day, Plan(offers, np.full(24, 2000.0)), quiet)
    assert got["undeliverable_hours"] == 24 and got["revenue"] == 0.0
    assert got["work_shed_wh"] == pytest.approx(1200.0 * 24)


def test_activations_never_cut_below_the_floor() -> None:
    day = _day(3000.0, 3200.0)
    offers = {"dr": np.full(24, 1500.0), "fcr-n": np.full(24, 1000.0)}
    hot = Draws(np.ones(1440), np.ones(1440), np.ones(1440))
    got = simulate(day, Plan(offers, np.full(24, np.inf)), hot)
    assert got["work_shed_wh"] == pytest.approx((3200.0 - 1680.0) * 24)


def test_the_reference_caps_and_bands_from_its_grid() -> None:
    plan = plan_reference(_day(3000.0, 3200.0))
    assert set(np.unique(plan.ceiling / 5600.0).round(2)) <= {0.4, 0.55, 0.7, 0.8, 0.9}
    assert set(np.unique(plan.offers["ffr"] / 5600.0).round(2)) <= {0.0, 0.05, 0.1, 0.15, 0.2}


def test_the_oracle_plans_on_each_hours_lowest_minute() -> None:
    day = _day(3000.0, 3200.0)
    day.p10_w[130] = 2500.0
    p10, p50 = hourly_actual(day)
    assert p10[2] == 2500.0 and p10[1] == 3000.0 and math.isclose(p50[2], 3200.0)
