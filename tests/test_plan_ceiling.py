"""The planner's node ceiling: planned where energy costs more than the work it sheds, held by
tier 2 as part of its soft target, products measured from the capped draw, the natural draw not
learnt from a held node, and in the running agent: applied per MTU, audited, exported, and
taken off again (a real Mosquitto; the planning round is called directly)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker
from nodes import running, steady_sim
from test_planning import _config as planning_config
from waiting import wait_until

from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import FacilityConfig, ProductConfig, TrackerConfig
from gridtao.control.tier2.tracker import Tier2
from gridtao.history import HistoryStore
from gridtao.history.synth import synthetic_minutes
from gridtao.products.portfolio import Portfolio, ProductMonitor, product_key
from gridtao.safety.island import SafetyIsland
from gridtao.wire.messages import DrDispatch

#: The ``island`` fixture (conftest.py): a 4-GPU node at 600 W each, on a virtual clock.
IslandRig = tuple[VirtualClock, SafetyIsland]
W = 1000
N = 4  # test_planning's node
DAY_S = 86_400


def _tier2(clock: VirtualClock, island: SafetyIsland, products: list[ProductConfig],
           facility: FacilityConfig | None = None) -> tuple[Tier2, ProductMonitor]:
    portfolio = Portfolio(products, ramp_out_per_s=0.2)
    tier2 = Tier2(island, portfolio, facility=facility or FacilityConfig(), clock=clock,
                  config=TrackerConfig(margin_fraction=0.0, reference_window_s=5.0))
    monitor = ProductMonitor([], portfolio, on_change=tier2.update)
    tier2.start(2400.0)
    return tier2, monitor


def test_the_ceiling_is_tier_2s_target_and_goes_when_cleared(
        island: IslandRig) -> None:
    clock, isl = island
    tier2, _ = _tier2(clock, isl, [])
    assert isl.view().commitment_mw is None
    tier2.set_ceiling(1800.0)
    assert isl.view().commitment_mw == pytest.approx(1800 * W)
    assert tier2.snapshot()["plan_ceiling_w"] == 1800.0
    clock.advance(1.0)
    tier2.tick(1795.0)  # held there: refreshed, so it does not lapse
    assert isl.view().commitment_mw == pytest.approx(1800 * W)
    assert tier2.ceiling_binding()
    tier2.set_ceiling(None)
    assert isl.view().commitment_mw is None
    with pytest.raises(ValueError, match="finite number of watts"):
        tier2.set_ceiling(float("nan"))


def test_products_are_measured_from_the_capped_draw(
        island: IslandRig) -> None:
    clock, isl = island
    tier2, monitor = _tier2(clock, isl, [ProductConfig(kind="ffr", capacity_w=515.0),
                                            ProductConfig(kind="dr", capacity_w=1000.0)])
    tier2.set_ceiling(2000.0)  # 400 W under the natural 2400 W
    # FFR cuts its capacity from the draw the ceiling leaves, where a TSO measures from.
    act = isl.trigger_armed(product_key("ffr"), "f1")
    assert act is not None and act.target_mw == pytest.approx((2000 - 500) * W)
    isl.release("f1")
    clock.advance(10.0)  # ramped out
    isl.tick()
    # So does a DR event: its reference is the capped draw, and it stays under the ceiling.
    msg = DrDispatch("d1", 60.0, start_at=clock.wall(), ramp_s=0.0, reduction_w=515.0)
    assert monitor.schedule_dr(msg, now_s=clock.now(), wall_s=clock.wall()) is None
    monitor.on_tick(clock.now())
    assert tier2.snapshot()["reference_it_w"] == pytest.approx(2000.0)
    assert isl.view().commitment_mw == pytest.approx((2000 - 500) * W, rel=1e-3)
    # A ceiling above the draw binds nothing: the products see the natural draw.
    assert monitor.cancel_dr("d1", now_s=clock.now())
    monitor.on_tick(clock.now())
    tier2.set_ceiling(3000.0)
    act = isl.trigger_armed(product_key("ffr"), "f2")
    assert act is not None and act.target_mw == pytest.approx((2400 - 500) * W)


def test_commitments_frozen_before_a_ceiling_and_fcr_n_move_under_it(
        island: IslandRig) -> None:
    clock, isl = island
    at_it = FacilityConfig(settle_at="it")  # exact arithmetic: no facility model
    tier2, monitor = _tier2(clock, isl, [ProductConfig(kind="dr", capacity_w=1000.0)], at_it)
    msg = DrDispatch("d1", 600.0, start_at=clock.wall(), ramp_s=0.0, reduction_w=500.0)
    assert monitor.schedule_dr(msg, now_s=clock.now(), wall_s=clock.wall()) is None
    monitor.on_tick(clock.now())
    assert isl.view().commitment_mw == pytest.approx((2400 - 500) * W)
    tier2.set_ceiling(2000.0)  # the reference froze at 2400 W; the plan's hour begins
    assert isl.view().commitment_mw == pytest.approx((2000 - 500) * W)


def test_fcr_n_s_baseline_goes_a_capacity_under_the_ceiling(island: IslandRig) -> None:
    clock, isl = island
    fcr_n = ProductConfig(kind="fcr-n", capacity_w=300.0, baseline_w=2100.0, median_samples=1)
    tier2, monitor = _tier2(clock, isl, [fcr_n], FacilityConfig(settle_at="it"))
    clock.advance(1.0)
    tier2.tick(2400.0)  # enrolled at its configured baseline
    tier2.set_ceiling(1900.0)
    # The baseline goes to 1600 W: the whole band still works, its top at the ceiling.
    for hz, target_w in ((49.9, 1300.0), (50.0, 1600.0), (50.1, 1900.0)):
        monitor.on_sample(hz, clock.now(), wall_s=clock.wall())
        assert isl.view().commitment_mw == pytest.approx(target_w * W), hz


def test_a_held_node_is_not_learnt_as_its_natural_draw(
        island: IslandRig) -> None:
    clock, isl = island
    tier2, _ = _tier2(clock, isl, [])
    tier2.set_ceiling(1800.0)
    for _ in range(30):  # far longer than the 5 s reference window
        clock.advance(1.0)
        tier2.tick(1790.0)
    assert tier2.snapshot()["natural_it_w"] == pytest.approx(2400.0)
    tier2.set_ceiling(None)
    for _ in range(30):
        clock.advance(1.0)
        tier2.tick(2200.0)  # free again: now it is natural
    assert tier2.snapshot()["natural_it_w"] == pytest.approx(2200.0)


# ---------------------------------------------------------------- in the running agent


def _signals(now: float, hours: int = 72) -> dict[str, Any]:
    """Energy far dearer than the work it runs (with lost work valued at 100 EUR/MWh), and no
    reserve market: a ceiling pays in every hour."""
    start = int(now) // 3600 * 3600
    return {"version": 1, "issued_at": now, "source": "test", "start": start, "mtu_s": 3600,
            "energy_price_eur_per_mwh": [900.0] * hours}


class _ShiftedClock(MonotonicClock):
    """The machine's clocks with the wall clock moved by ``shift_s`` (set at any time): the
    agent lives through the plan's hours in seconds."""

    shift_s = 0.0

    def wall(self) -> float:
        return super().wall() + self.shift_s


@pytest.mark.parametrize("ceiling", [True, False], ids=["ceiling", "no-ceiling"])
def test_the_agent_holds_the_planned_ceiling_in_its_hour(
        mqtt_broker: MosquittoBroker, tmp_path: Path, ceiling: bool) -> None:
    now = time.time()
    with HistoryStore.open(tmp_path / "history.sqlite3") as store:
        store.write(synthetic_minutes(int(now) // 60 * 60 - 14 * DAY_S, 14, gpus=N, seed=2))
    (tmp_path / "signals.json").write_text(json.dumps(_signals(now)))
    cfg = planning_config(mqtt_broker, tmp_path, signals_file="signals.json",
                          lost_work_eur_per_mwh=100.0, ceiling=ceiling)
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    clock = _ShiftedClock()
    with running(mqtt_broker, cfg, sim, clock=clock, serve=True) as node:
        agent = node.agent
        state = agent.planning.plan_once()
        plan = state.plan
        assert plan is not None and state.name == "planned"
        # Into the plan's first hour with a ceiling (a round plans from the next one on; an
        # hour the history forecasts at the floor has nothing to hold down): the agent applies
        # the hour's ceiling on its own, within its arming period.
        ceilings = plan.result.ceiling_w
        hour = next((k for k in range(plan.forecast.horizon)
                     if ceilings is not None and math.isfinite(ceilings[k])), 0)
        clock.shift_s = (plan.forecast.start_s + hour * plan.forecast.mtu_s + 60.0
                         - time.time())
        planned = plan.ceiling_at(clock.wall())
        if not ceiling:  # not asked for: none planned, none held
            assert plan.result.ceiling_w is None and planned is None
            time.sleep(2.5)  # two arming periods
            assert agent.tier2.ceiling_w is None
            return
        assert planned is not None and planned < 2400.0
        assert planned >= plan.problem.floor_w - 1e-6
        wait_until(lambda: agent.tier2.ceiling_w == planned, "the ceiling handed to tier 2",
                   timeout_s=10.0)
        wait_until(lambda: sum(agent.fast.draw_mw) / W <= planned * 1.02,
                   "the node held under the planned ceiling", timeout_s=15.0)
        assert node.value("gridtao_plan_ceiling_watts") == pytest.approx(planned)
        # Past the plan's horizon: no ceiling, and the node draws freely again.
        clock.shift_s = plan.end_s + 60.0 - time.time()
        wait_until(lambda: agent.tier2.ceiling_w is None, "the ceiling taken off",
                   timeout_s=10.0)
        wait_until(lambda: sum(agent.fast.draw_mw) / W >= 2400.0 * 0.97,
                   "the node back at its natural draw", timeout_s=15.0)
        records = [r["fields"] for r in node.audit() if r["kind"] == "ceiling"]
        assert [(r["from_w"], r["to_w"]) for r in records] == [(None, planned), (planned, None)]
