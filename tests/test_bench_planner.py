"""bench/planner.py runs end to end at a small size and reports what it says (no figure is
asserted beyond what holds by construction: the oracle sees the actual draw)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gridtao.bench.planner import SITE_STRATEGIES, Week
from gridtao.bench.planner_signals import market_signals
from gridtao.bench.plannerday import (
    CALIBRATION_DAYS,
    HOUR_S,
    MARGINS,
    NODE,
    STRATEGIES,
    TZ_OFFSET_S,
    WEEK_START_S,
    BenchNode,
    Day,
    Draws,
    Plan,
    hourly_actual,
    job_hours,
    plan_reference,
    simulate,
)
from gridtao.bench.plannerinformed import KNOWS, REFERENCE_QUANTILES
from gridtao.bench.plannerlive import delivery
from gridtao.cli.main import main
from gridtao.history import synth
from gridtao.tier3 import forecast_draw
from gridtao.tier3.scores import recent_misses

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
    assert s["oracle"]["oracle_share"] == 1.0
    assert 0 <= s["gridtao"]["oracle_share"] <= 1.0
    g = s["gridtao"]
    assert 0.0 <= g["p10_coverage"] <= 1.0 and 0 <= g["offered_hours"] <= 48
    assert result["job_hours"] == [2.0, 24.0]
    assert [[m["miss_quantile"], m["block_h"]] for m in result["gridtao_margin_sweep"]] \
        == [list(m) for m in MARGINS]
    for m in result["gridtao_margin_sweep"]:
        assert m["margin_w_median"] >= 0 and m["undeliverable_hours"] >= 0


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


def test_the_bench_margin_learns_from_what_the_planner_would() -> None:
    week = Week(1, seed=3)
    assert week.lead_s == 12 * HOUR_S  # planned at the day-ahead gate, noon the day before
    t, miss = week.misses(WEEK_START_S)
    got = recent_misses(week.t, week.mean, week.p10, now_s=WEEK_START_S - week.lead_s,
                        start_s=WEEK_START_S,
                        mtu_s=HOUR_S, horizon=24, days=CALIBRATION_DAYS, floor_w=NODE.floor_w,
                        tz_offset_s=TZ_OFFSET_S)
    assert np.array_equal(t, got[0]) and np.allclose(miss, got[1])


def test_longer_jobs_for_a_sensitivity_study() -> None:
    def now() -> tuple[float, float, float]:
        return synth._JOB_MIN_H, synth._JOB_MAX_H, synth.JOB_RATE_PER_DAY

    saved = now()
    with job_hours((24.0, 336.0)):
        lo, hi, rate = now()
        assert (lo, hi) == (24.0, 336.0)
        # the same GPU-hours asked a day: fewer, longer jobs
        assert rate == pytest.approx(saved[2] * (22 / math.log(12)) / (312 / math.log(14)))
    assert now() == saved
    with pytest.raises(ValueError), job_hours((5.0, 2.0)):
        pass
    assert now() == saved


def test_several_seeds_side_by_side(tmp_path: Path) -> None:
    out, md = tmp_path / "seeds.json", tmp_path / "seeds.md"
    assert main(["bench", "planner", "--days", "1", "--seeds", "0,1", "--job-hours", "48,96",
                 "--json", str(out), "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["seeds"] == [0, 1] and summary["job_hours"] == [48.0, 96.0]
    assert [r["seed"] for r in result["runs"]] == [0, 1]
    assert summary["rows"]["oracle"]["oracle_share_pooled"] in (1.0, None)
    assert len(summary["rows"]) \
        == len(STRATEGIES) + len(MARGINS) + len(KNOWS) * len(REFERENCE_QUANTILES)
    assert "| gridtao |" in md.read_text()
    assert main(["bench", "planner", "--seeds", "x"]) == 2
    assert main(["bench", "planner", "--job-hours", "0,5"]) == 2


def test_a_day_is_forecast_from_what_was_known_at_its_gate() -> None:
    """Planned 12 h ahead, the forecast is the one made from the rows before noon the day
    before: nothing recorded after the gate changes it."""
    week = Week(1, seed=3)
    gate = WEEK_START_S - week.lead_s
    before = week.t < gate
    made = forecast_draw(week.t[before], week.mean[before], week.p10[before],
                         start_s=WEEK_START_S, mtu_s=HOUR_S, horizon=24, now_s=gate,
                         tz_offset_s=TZ_OFFSET_S)
    assert np.array_equal(week.forecast(WEEK_START_S).p10_w, made.p10_w)
    week.mean[(week.t >= gate) & (week.t < WEEK_START_S)] = 0.0  # what came after the gate
    week._forecasts.clear()
    assert np.array_equal(week.forecast(WEEK_START_S).p10_w, made.p10_w)


def test_nodes_pool_into_one_site_planned_as_one(tmp_path: Path) -> None:
    one, two = BenchNode.of(1), BenchNode.of(2)
    assert one == NODE and (one.nodes, one.gpus, one.max_w) == (1, 8, 5600.0)
    assert one.floor_w == pytest.approx(1680.0)
    assert dict(one.static) == {"ffr": 400.0, "fcr-d-up": 300.0, "dr": 1500.0}
    assert (two.gpus, two.max_w, two.floor_w) == (16, 2 * one.max_w, 2 * one.floor_w)
    assert dict(two.static) == {k: 2 * w for k, w in one.static.items()}
    assert [(e.kind, e.max_w, e.bid_step_w) for e in two.enrolments] \
        == [(e.kind, 2 * e.max_w, e.bid_step_w) for e in one.enrolments]
    for bad in (0, 101):
        with pytest.raises(ValueError):
            BenchNode.of(bad)
    # Node 0 of a site is the one-node bench's node; the site draws it and another besides.
    single, site = Week(1, seed=0), Week(1, seed=0, node=two)
    assert np.array_equal(single.mean, Week(1, seed=0, node=one).mean)
    assert np.all(site.mean > single.mean) and np.all(site.p10 <= site.mean)
    assert np.all(site.p10 > single.p10) and site.day(0).node == two

    out, md = tmp_path / "nodes.json", tmp_path / "nodes.md"
    assert main(["bench", "planner", "--days", "1", "--nodes", "2", "--json", str(out),
                 "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    assert result["nodes"] == 2 and result["node"]["gpus"] == 16
    assert result["node"]["floor_w"] == pytest.approx(2 * 1680.0)
    assert result["node"]["static_w"] == {"ffr": 800.0, "fcr-d-up": 600.0, "dr": 3000.0}
    assert result["strategies"]["oracle"]["undeliverable_hours"] == 0
    assert "2 nodes of 8 GPUs" in md.read_text()
    # the site coordinator's own way: the nodes' forecasts combined by the claimed correlation
    site_rows = {k: v for k, v in result["strategies"].items() if k.startswith("site_rho")}
    assert list(site_rows) == [f"site_rho{r:g}" for r in SITE_STRATEGIES.values()]
    assert site_rows["site_rho1"]["revenue_offered"] <= site_rows["site_rho0"]["revenue_offered"]
    summed, pooled = (site.site_forecast(WEEK_START_S, rho) for rho in (1.0, 0.0))
    own = site._node_forecasts[WEEK_START_S]
    assert np.allclose(summed.p10_w, own[0].p10_w + own[1].p10_w)  # rho 1: the sum of p10s
    assert np.all(pooled.p10_w >= summed.p10_w) and np.any(pooled.p10_w > summed.p10_w)
    assert np.allclose(pooled.p50_w, summed.p50_w)
    # and each site strategy's award delivered node by node, three ways
    assert set(result["site_delivery"]) == set(site_rows)
    assert all(set(ways) == {"pooled", "live", "static"}
               for ways in result["site_delivery"].values())
    assert main(["bench", "planner", "--days", "1", "--nodes", "2", "--seeds", "0,1",
                 "--json", str(out)]) == 0
    seeds = json.loads(out.read_text())
    assert seeds["summary"]["nodes"] == 2 and [r["nodes"] for r in seeds["runs"]] == [2, 2]
    assert main(["bench", "planner", "--nodes", "0"]) == 2
    assert main(["bench", "planner", "--nodes", "101"]) == 2


def test_a_sites_award_delivered_node_by_node_with_and_without_moving_shares() -> None:
    # two nodes, 200 W of down-capacity in hour 0, split 100 / 100 by equal forecasts; node a's
    # room falls from 150 W to 0 at minute 30, node b always has 300 W
    down = np.zeros(24)
    down[0] = 200.0
    floor = 1000.0
    means = np.full((2, 1440), floor + 300.0)
    means[0, :30] = floor + 150.0
    means[0, 30:60] = floor
    f = forecast_draw(np.arange(0, 14 * 86_400, 60, dtype=np.int64) + WEEK_START_S - 14 * 86_400,
                      np.full(14 * 1440, 2000.0), np.full(14 * 1440, 1900.0),
                      start_s=WEEK_START_S, mtu_s=HOUR_S, horizon=24, now_s=WEEK_START_S)
    got = delivery(down, means, floor, [f, f])
    assert got["pooled"] == {"short_hours": 0, "short_wh": 0.0, "awarded_wh": 200.0}
    # the first split held: 100 W short for 30 minutes
    assert got["static"]["short_hours"] == 1
    assert got["static"]["short_wh"] == pytest.approx(50.0)
    # shares moved: short only in the minute the coordinator had not yet seen
    assert got["live"]["short_hours"] == 1
    assert got["live"]["short_wh"] == pytest.approx(100.0 / 60.0)
