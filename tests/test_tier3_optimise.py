"""Tier 3's planner (gridtao/tier3/optimise.py): small programs whose optimum is worked out by
hand, one per constraint family, then the edges (unknown prices, infeasible work, bid steps,
malformed input) and the solve time at full size."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from gridtao.tier3.optimise import (
    Enrolment,
    PlanError,
    PlanProblem,
    PlanResult,
    WorkRequirement,
    node_floor_w,
    problem_from,
    solve,
)

NO_ACTIVATION = {k: 0.0 for k in ("ffr", "ercot-ffr", "fcr-d-up", "fcr-d-up-static", "fcr-n",
                                  "dr")}


def problem(p10: Sequence[float], p50: Sequence[float], enrolments: Sequence[Enrolment],
            prices: Mapping[str, Sequence[float]], **kw: Any) -> PlanProblem:
    """A problem settled at the IT level, floor 1000 W, hourly MTUs, no activation energy and
    no ceiling unless the test says otherwise."""
    args: dict[str, Any] = {
        "start_s": 0.0, "mtu_s": 3600.0, "floor_w": 1000.0, "settle_at": "it",
        "activation": NO_ACTIVATION, "allow_ceiling": False,
    }
    args |= kw
    return PlanProblem(p10_w=np.array(p10, dtype=float), p50_w=np.array(p50, dtype=float),
                       enrolments=tuple(enrolments),
                       reserve_eur_mw_h={k: np.array(v, dtype=float) for k, v in prices.items()},
                       **args)


def offers(result: PlanResult, name: str) -> list[float]:
    return [round(float(v), 6) for v in result.offers_w[name]]


FFR = Enrolment("ffr", "ffr", 5000.0)
FCRD = Enrolment("fcr-d", "fcr-d-up", 5000.0)
FCRN = Enrolment("fcr-n", "fcr-n", 5000.0)
DR = Enrolment("dr", "dr", 1000.0)


# ---------------------------------------------------------------- (a) deliverability


def test_down_capacity_is_bounded_by_p10_minus_floor_and_goes_to_the_best_price() -> None:
    # Room 3000 - 1000 = 2000 W; FFR pays more per W, so it takes it all.
    r = solve(problem([3000], [4000], [FFR, FCRD], {"ffr": [10], "fcr-d-up": [5]}))
    assert r.status == "optimal"
    assert offers(r, "ffr") == [2000.0] and offers(r, "fcr-d") == [0.0]
    assert r.revenue == pytest.approx(2000 * 10 / 1e6)
    assert r.objective == pytest.approx(r.revenue)


def test_products_add_up_when_one_is_capped_by_its_enrolment() -> None:
    ffr = Enrolment("ffr", "ffr", 1200.0)
    r = solve(problem([3000], [4000], [ffr, FCRD], {"ffr": [10], "fcr-d-up": [5]}))
    assert offers(r, "ffr") == [1200.0] and offers(r, "fcr-d") == [800.0]


def test_at_the_meter_an_it_watt_counts_one_plus_losses() -> None:
    # 2000 W of IT room is 2000 x 1.25 = 2500 W at the meter.
    p = problem([3000], [4000], [FFR], {"ffr": [10]}, settle_at="meter", losses_fraction=0.25)
    r = solve(p)
    assert offers(r, "ffr") == [2500.0]
    assert r.down_w(p).tolist() == pytest.approx([2000.0])


def test_a_draw_under_the_floor_offers_nothing() -> None:
    r = solve(problem([600], [700], [FFR], {"ffr": [10]}))
    assert r.status == "optimal" and offers(r, "ffr") == [0.0]


# ---------------------------------------------------------------- (b) ceiling


def test_a_ceiling_sheds_in_an_expensive_hour_and_offers_are_measured_from_it() -> None:
    # Per W for one hour: FFR earns 80e-6 EUR; shedding saves 100e-6 of energy and loses 50e-6
    # of work, net 50e-6. FFR first, up to the p10 room (2000 W); the ceiling takes the rest
    # of the p50 room (4000 - 1000 - 2000 = 1000 W): ceiling 3000 W, FFR 2000 W below it.
    p = problem([3000], [4000], [FFR], {"ffr": [80]}, energy_eur_mwh=[100.0],
                lost_work_eur_wh=50e-6, allow_ceiling=True)
    r = solve(p)
    assert r.status == "optimal"
    assert offers(r, "ffr") == [2000.0]
    assert r.ceiling_w is not None and r.ceiling_w.tolist() == pytest.approx([3000.0])
    assert r.work_shed_wh == pytest.approx(1000.0)
    assert r.revenue == pytest.approx(0.16)
    assert r.energy_cost == pytest.approx(3000 * 100 / 1e6)
    assert r.lost_work_cost == pytest.approx(0.05)
    assert r.objective == pytest.approx(0.16 - 0.3 - 0.05)


def test_a_ceiling_that_does_not_pay_is_not_set() -> None:
    p = problem([3000], [4000], [FFR], {"ffr": [80]}, energy_eur_mwh=[40.0],
                lost_work_eur_wh=50e-6, allow_ceiling=True)
    r = solve(p)
    assert r.ceiling_w is None and offers(r, "ffr") == [2000.0]


def test_a_ceiling_below_the_p10_lowers_the_offer() -> None:
    # Shedding pays 150e-6 net per W against FFR's 80e-6: the ceiling goes to the floor and
    # leaves nothing to offer.
    p = problem([3000], [4000], [FFR], {"ffr": [80]}, energy_eur_mwh=[200.0],
                lost_work_eur_wh=50e-6, allow_ceiling=True)
    r = solve(p)
    assert r.ceiling_w is not None and r.ceiling_w.tolist() == pytest.approx([1000.0])
    assert offers(r, "ffr") == [0.0]


# ---------------------------------------------------------------- (c) FCR-N


def test_fcr_n_needs_room_for_its_baseline_and_its_down_half() -> None:
    # 2000 W of room holds 1000 W of FCR-N (baseline 1000 W below the draw, then 1000 more).
    r = solve(problem([3000], [4000], [FCRN], {"fcr-n": [10]}))
    assert offers(r, "fcr-n") == [1000.0]


def test_fcr_n_against_ffr_per_watt_of_room() -> None:
    # FCR-N earns 10 per W but takes 2 W of room (5 per room-W); FFR at 8 wins the room.
    r = solve(problem([3000], [4000], [FCRN, FFR], {"fcr-n": [10], "ffr": [8]}))
    assert offers(r, "ffr") == [2000.0] and offers(r, "fcr-n") == [0.0]
    # FFR at 4 loses to FCR-N's 5 per room-W.
    r = solve(problem([3000], [4000], [FCRN, FFR], {"fcr-n": [10], "ffr": [4]}))
    assert offers(r, "fcr-n") == [1000.0] and offers(r, "ffr") == [0.0]
    # FCR-N capped at 600 W uses 1200 W; FFR takes the 800 W left.
    small = Enrolment("fcr-n", "fcr-n", 600.0)
    r = solve(problem([3000], [4000], [small, FFR], {"fcr-n": [10], "ffr": [4]}))
    assert offers(r, "fcr-n") == [600.0] and offers(r, "ffr") == [800.0]


# ---------------------------------------------------------------- (d) work


def test_the_work_requirement_limits_the_ceilings_and_puts_them_in_the_dear_hour() -> None:
    # Natural 2 x 4000 Wh, 6000 Wh needed: 2000 Wh may be shed. Both hours' prices beat the
    # lost work (10e-6 per W·h), hour 0 the most: all 2000 W shed there.
    p = problem([3500, 3500], [4000, 4000], [], {}, energy_eur_mwh=[200.0, 50.0],
                lost_work_eur_wh=10e-6, allow_ceiling=True,
                work=WorkRequirement(energy_wh=6000.0, by_s=7200.0))
    r = solve(p)
    assert r.status == "optimal"
    assert r.ceiling_w is not None
    assert r.ceiling_w[0] == pytest.approx(2000.0) and math.isnan(r.ceiling_w[1])
    assert r.work_shed_wh == pytest.approx(2000.0)


def test_the_work_requirement_counts_expected_activations() -> None:
    # DR counts as dispatched for the hour it is offered: 4000 Wh natural, 2000 Wh needed,
    # so at most 2000 W of DR although 3000 W is enrolled and the floor is 0.
    dr = Enrolment("dr", "dr", 3000.0)
    p = problem([4000], [4000], [dr], {"dr": [50]}, floor_w=0.0, activation={"dr": 1.0},
                work=WorkRequirement(energy_wh=2000.0, by_s=3600.0))
    r = solve(p)
    assert offers(r, "dr") == [2000.0]
    assert r.work_shed_wh == pytest.approx(2000.0)


def test_the_work_requirement_only_counts_mtus_before_the_deadline() -> None:
    # Deadline half-way through hour 1: 1.5 h x 4000 W = 6000 Wh natural, 5000 Wh needed,
    # 1000 Wh of shedding allowed before it; hour 1's shed counts half, hour 2 is free.
    p = problem([4000] * 3, [4000] * 3, [], {}, energy_eur_mwh=[100.0, 300.0, 10.0],
                allow_ceiling=True, work=WorkRequirement(energy_wh=5000.0, by_s=5400.0))
    r = solve(p)
    assert r.ceiling_w is not None
    # Per W·h of the allowance hour 1 saves 600e-6 EUR (it counts half), hour 0 100e-6: 2000 W
    # in hour 1 spends the 1000 Wh; hour 2, after the deadline, sheds to the floor anyway.
    assert math.isnan(r.ceiling_w[0])
    assert r.ceiling_w[1] == pytest.approx(2000.0)
    assert r.ceiling_w[2] == pytest.approx(1000.0)


def test_an_impossible_work_requirement_is_infeasible_with_zero_offers() -> None:
    p = problem([3000], [4000], [FFR], {"ffr": [10]},
                work=WorkRequirement(energy_wh=5000.0, by_s=3600.0))
    r = solve(p)
    assert r.status == "infeasible"
    assert offers(r, "ffr") == [0.0] and r.ceiling_w is None and r.revenue == 0.0


# ---------------------------------------------------------------- (e) DR hours


def test_dr_is_offered_in_its_best_hours_up_to_the_daily_limit() -> None:
    p = problem([4000] * 3, [4000] * 3, [DR], {"dr": [10, 30, 20]}, dr_max_hours_per_day=2)
    r = solve(p)
    assert offers(r, "dr") == [0.0, 1000.0, 1000.0]
    assert r.revenue == pytest.approx(1000 * (30 + 20) / 1e6)


def test_the_dr_limit_is_per_day() -> None:
    # Two days of two hours each (23:00-01:00 twice is not it: MTUs 22-23 h and 24-25 h).
    p = problem([4000] * 4, [4000] * 4, [DR], {"dr": [10, 30, 20, 5]}, start_s=22 * 3600.0,
                dr_max_hours_per_day=1)
    r = solve(p)
    assert offers(r, "dr") == [0.0, 1000.0, 1000.0, 0.0]


# ---------------------------------------------------------------- edges


def test_an_unknown_price_means_no_offer_there() -> None:
    p = problem([3000, 3000], [4000, 4000], [FFR], {"ffr": [math.nan, 10]})
    r = solve(p)
    assert offers(r, "ffr") == [0.0, 2000.0]
    assert any("unknown in 1 of 2" in note for note in r.notes)


def test_a_kind_without_prices_is_not_offered_and_unknown_energy_is_noted() -> None:
    p = problem([3000], [4000], [FFR, FCRD], {"ffr": [10]}, energy_eur_mwh=[math.nan])
    r = solve(p)
    assert offers(r, "fcr-d") == [0.0] and offers(r, "ffr") == [2000.0]
    assert r.energy_cost == 0.0
    assert any("fcr-d: no capacity price" in note for note in r.notes)
    assert any("energy price unknown in 1 of 1" in note for note in r.notes)
    assert any("no carbon intensity" in note for note in r.notes)


def test_bid_steps_give_whole_multiples() -> None:
    stepped = Enrolment("ffr", "ffr", 5000.0, bid_step_w=300.0)
    r = solve(problem([3050, 2000], [4000, 4000], [stepped], {"ffr": [10, 10]}))
    assert offers(r, "ffr") == [1800.0, 900.0]


def test_a_minimum_bid_is_all_or_nothing() -> None:
    big = Enrolment("ffr", "ffr", 5000.0, min_bid_w=1500.0)
    r = solve(problem([2400, 2600], [4000, 4000], [big], {"ffr": [10, 10]}))
    # 1400 W of room is under the minimum bid; 1600 W is above it (and continuous).
    assert offers(r, "ffr") == [0.0, 1600.0]


def test_carbon_and_energy_are_accounted_on_the_expected_draw() -> None:
    # 4000 W for 1 h at PUE 1.25: 5 kWh; 200 g/kWh -> 1 kg; 100 EUR/t -> 0.1 EUR.
    p = problem([3000], [4000], [], {}, carbon_g_kwh=[200.0], carbon_eur_t=100.0, pue=1.25,
                energy_eur_mwh=[100.0])
    r = solve(p)
    assert r.carbon_kg == pytest.approx(1.0) and r.carbon_cost == pytest.approx(0.1)
    assert r.energy_cost == pytest.approx(0.5)


@pytest.mark.parametrize("change", [
    {"p10": [3000, 3000]},
    {"floor_w": -1.0},
    {"mtu_s": 0.0},
    {"prices": {"ffr": [10, 10]}},
    {"prices": {"fcr-x": [10]}},
    {"p50": [math.nan]},
    {"p10": [-5.0]},
    {"energy_eur_mwh": [1.0, 2.0]},
    {"activation": {"ffr": 2.0}},
    {"enrolments": [FFR, FFR]},
    {"enrolments": [FCRN, Enrolment("other", "fcr-n", 10.0)]},
])
def test_malformed_input_raises_plan_error(change: dict[str, Any]) -> None:
    args: dict[str, Any] = {"p10": [3000.0], "p50": [4000.0], "enrolments": [FFR],
                            "prices": {"ffr": [10.0]}}
    extra = {k: v for k, v in change.items() if k not in args}
    args |= {k: v for k, v in change.items() if k in args}
    with pytest.raises(PlanError):
        problem(args["p10"], args["p50"], args["enrolments"], args["prices"], **extra)


def test_malformed_enrolments_and_requirements_raise_plan_error() -> None:
    with pytest.raises(PlanError):
        Enrolment("x", "fcr-q", 100.0)
    with pytest.raises(PlanError):
        Enrolment("x", "ffr", -1.0)
    with pytest.raises(PlanError):
        WorkRequirement(energy_wh=-1.0, by_s=0.0)
    with pytest.raises(PlanError):
        solve(problem([3000], [4000], [FFR], {"ffr": [10]}), time_limit_s=0.0)


def test_node_floor_is_the_larger_of_gpu_floors_and_the_node_fraction() -> None:
    assert node_floor_w([200.0] * 8, [700.0] * 8, min_node_fraction=0.3) == pytest.approx(1680)
    assert node_floor_w([200.0] * 8, [700.0] * 8, min_node_fraction=0.1,
                        priority_floor_w={0: 500.0}) == pytest.approx(1900)
    with pytest.raises(PlanError):
        node_floor_w([200.0], [700.0, 700.0], min_node_fraction=0.3)


def test_48_mtus_and_every_product_solve_well_under_a_second() -> None:
    rng = np.random.default_rng(0)
    n = 48
    p50 = 3000 + 1500 * rng.random(n)
    enrol = [Enrolment("ffr", "ffr", 2000.0, bid_step_w=100.0),
             Enrolment("ercot-ffr", "ercot-ffr", 500.0),
             Enrolment("fcr-d", "fcr-d-up", 2000.0, min_bid_w=200.0),
             Enrolment("fcr-d-static", "fcr-d-up-static", 1000.0),
             Enrolment("fcr-n", "fcr-n", 1000.0, bid_step_w=100.0),
             Enrolment("dr", "dr", 1500.0)]
    prices = {e.kind: 5 + 30 * rng.random(n) for e in enrol}
    p = PlanProblem(start_s=0.0, mtu_s=3600.0, p10_w=p50 - 600, p50_w=p50, floor_w=1680.0,
                    enrolments=tuple(enrol), reserve_eur_mw_h=prices,
                    energy_eur_mwh=30 + 80 * rng.random(n), carbon_g_kwh=50 + 100 * rng.random(n),
                    carbon_eur_t=80.0, lost_work_eur_wh=1e-4, dr_max_hours_per_day=4,
                    work=WorkRequirement(energy_wh=float(p50.sum()) * 0.9, by_s=48 * 3600.0))
    r = solve(p)
    assert r.status == "optimal", r.notes
    assert r.solve_s < 1.0
    ceiling = np.full(n, np.inf) if r.ceiling_w is None else np.nan_to_num(r.ceiling_w,
                                                                             nan=np.inf)
    room = np.maximum(0.0, np.minimum(p.p10_w, ceiling) - p.floor_w)
    assert (r.down_w(p) <= room + 1e-6).all()
    assert (r.offers_w["ffr"] % 100 == 0).all() and (r.offers_w["fcr-n"] % 100 == 0).all()
    fcrd = r.offers_w["fcr-d"]
    assert ((fcrd == 0) | (fcrd >= 200 - 1e-6)).all()
    dr_hours = (r.offers_w["dr"] > 0).reshape(2, 24).sum(axis=1)
    assert (dr_hours <= 4).all()


def test_solver_trouble_is_a_status_never_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    import gridtao.tier3.optimise as optimise

    p = problem([3000], [4000], [FFR], {"ffr": [10]})

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("HiGHS fell over")

    monkeypatch.setattr(optimise, "milp", broken)
    r = solve(p)
    assert r.status == "failed" and offers(r, "ffr") == [0.0]
    assert any("HiGHS fell over" in note for note in r.notes)

    class Stopped:
        x = None
        status = 1
        message = "time limit reached"

    monkeypatch.setattr(optimise, "milp", lambda *a, **k: Stopped())
    r = solve(p)
    assert r.status == "time_limit" and offers(r, "ffr") == [0.0]


def test_a_problem_from_a_forecast_and_signals_on_other_grids() -> None:
    from gridtao.tier3 import Forecast, Series, Signals

    f = Forecast(7200, 3600, np.array([3000.0, 3000.0]), np.array([4000.0, 4000.0]),
                 np.array([4500.0, 4500.0]))
    quarter = Series(7200, 900, np.array([100.0, 200.0, 300.0, 400.0, 50.0, 50.0, 50.0,
                                          math.nan]))
    signals = Signals(0.0, "test", energy_price_eur_per_mwh=Series(3600, 3600,
                                                                   np.array([1.0, 2.0, 3.0])),
                      reserve_price_eur_per_mw_h={"ffr": Series(7200, 3600,
                                                                np.array([10.0, math.nan]))},
                      carbon_g_per_kwh=quarter)
    p = problem_from(f, signals, floor_w=1000.0, enrolments=[FFR, FCRD], settle_at="it")
    assert p.n == 2 and p.start_s == 7200.0 and p.mtu_s == 3600.0
    assert p.energy_eur_mwh is not None and p.energy_eur_mwh.tolist() == [2.0, 3.0]
    assert p.carbon_g_kwh is not None and p.carbon_g_kwh[0] == pytest.approx(250.0)
    assert math.isnan(p.carbon_g_kwh[1])  # a quarter unknown: the hour is unknown
    assert set(p.reserve_eur_mw_h) == {"ffr"}
    r = solve(p)
    assert offers(r, "ffr") == [2000.0, 0.0] and offers(r, "fcr-d") == [0.0, 0.0]
    assert problem_from(f, None, floor_w=0.0, enrolments=[]).energy_eur_mwh is None


def test_the_plan_table_says_why_an_mtu_has_no_offer() -> None:
    from gridtao.tier3.forecast import Forecast
    from gridtao.tier3.planner import Plan
    from gridtao.tier3.report import table, why_no_offer

    # MTU 0: room and a price (offered); 1: under the floor; 2: no price; 3: priced at 0.
    prob = problem([3000, 900, 3000, 3000], [3500, 1000, 3500, 3500], [FFR],
                   {"ffr": [10, 10, math.nan, 0]})
    result = solve(prob)
    forecast = Forecast(0, 3600, prob.p10_w, prob.p50_w, prob.p50_w)
    plan = Plan(0.0, forecast, prob, result)
    assert offers(result, "ffr") == [2000.0, 0.0, 0.0, 0.0]
    why = why_no_offer(plan)
    assert why == ["no offer in 3 of 4 MTUs: 1 MTU: the forecast's p10 is at or under the "
                   "node's floor (1000 W IT): no room to offer; 2 MTUs: no capacity price for "
                   "any enrolled product"]
    assert f"note: {why[0]}" in table(plan)
    offered = problem([3000], [3500], [FFR], {"ffr": [10]})
    everywhere = Plan(0.0, Forecast(0, 3600, offered.p10_w, offered.p50_w, offered.p50_w),
                      offered, solve(offered))
    assert why_no_offer(everywhere) == []
    # One cause for every MTU without an offer: said once, no count repeated.
    nowhere = problem([900, 900], [1000, 1000], [FFR], {"ffr": [10, 10]})
    none_plan = Plan(0.0, Forecast(0, 3600, nowhere.p10_w, nowhere.p50_w, nowhere.p50_w),
                     nowhere, solve(nowhere))
    assert why_no_offer(none_plan) == ["no offer in 2 of 2 MTUs: the forecast's p10 is at or "
                                       "under the node's floor (1000 W IT): no room to offer"]
