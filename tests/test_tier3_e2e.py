"""Tier 3 end to end, over a real Mosquitto, with a real agent living through the plan's hours in
seconds (its wall clock shifted): a plan made and published, an award for the next market time
unit received, nothing armed before that MTU starts, FFR armed with the awarded capacity at the
boundary, a trigger cutting exactly that much, and a later award that lands during the
activation deferred until the activation has ended."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from broker import MosquittoBroker, Subscriber
from nodes import running, steady_sim
from test_plan_ceiling import _ShiftedClock
from test_planning import N, _config, _signals
from waiting import wait_until

from gridtao.clock import MonotonicClock
from gridtao.history import HistoryStore
from gridtao.history.synth import synthetic_minutes

W = 1000  # mW per W
DAY_S = 86_400
DEMAND_W = 600.0
LOSSES = 0.03  # the facility model's default: an award at the meter is this much more than IT
WAIT_S = 20.0


def test_a_plan_an_award_the_boundary_a_trigger_and_a_deferred_change(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    now = time.time()
    with HistoryStore.open(tmp_path / "history.sqlite3") as store:
        store.write(synthetic_minutes(int(now) // 60 * 60 - 14 * DAY_S, 14, gpus=N, seed=2))
    (tmp_path / "signals.json").write_text(json.dumps(_signals(now)))
    cfg = _config(mqtt_broker, tmp_path, signals_file="signals.json")
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), DEMAND_W)
    clock = _ShiftedClock()
    natural_w = N * DEMAND_W

    def limits_w() -> float:
        return sum(node.agent.backend.enforced_limit_mw(i) for i in range(N)) / W

    def frequency(hz: float) -> None:  # dated by the agent's (shifted) wall clock
        node.send(node.topics.frequency, {"t": clock.wall(), "hz": hz})

    with running(mqtt_broker, cfg, sim, clock=clock, serve=True) as node, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, node.topics.ack) as acks, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, node.topics.plan) as plans:
        agent = node.agent
        wait_until(lambda: agent.status_link.is_connected, "the controller's connection",
                   timeout_s=WAIT_S)
        # No award yet: the configured capacity.
        assert agent.portfolio.capacities()["ffr"] == 400.0
        state = agent.planning.plan_once()
        plan = state.plan
        assert plan is not None and state.name == "planned"
        published = json.loads(plans.wait(1, WAIT_S)[0].payload)
        start = int(plan.forecast.start_s)  # the plan's first MTU: the next hour
        assert published["start"] == start and published["state"] == "planned"
        # the most an award may give each product: what a site pooling nodes needs
        assert published["capacity_w"] == {"ffr": 400.0}
        award_w = 300.0
        node.send(node.topics.award, {"id": "award-1", "issued_at": clock.wall(),
                                      "start": start, "mtu_s": 3600,
                                      "capacity_w": {"ffr": [award_w]}})
        assert json.loads(acks.wait(1, WAIT_S)[0].payload)["accepted"] is True
        # FFR is in the market now: before its awarded MTU starts nothing is armed, and a dip
        # below the threshold fires nothing.
        wait_until(lambda: agent.portfolio.capacities()["ffr"] == 0.0, "nothing armed",
                   timeout_s=WAIT_S)
        time.sleep(1.5)  # tier 2's period: the island's caps follow
        frequency(49.45)
        time.sleep(1.0)
        assert limits_w() == pytest.approx(N * 700.0)
        frequency(50.0)
        # Into the MTU: the award is armed within an arming period, tier 2 re-arms the caps.
        clock.shift_s = start + 5.0 - time.time()
        wait_until(lambda: agent.portfolio.capacities()["ffr"] == award_w, "the award armed",
                   timeout_s=WAIT_S)
        assert agent.planning.arming.snapshot().source["ffr"] == "award"
        time.sleep(1.5)  # tier 2's period: the island's caps follow the new capacity
        frequency(49.45)
        fired = json.loads(acks.wait(2, WAIT_S)[1].payload)
        assert fired["accepted"] is True and fired["id"].startswith("ffr-")
        # Exactly the awarded capacity, at the meter: award_w / (1 + losses) of IT.
        assert limits_w() == pytest.approx(natural_w - award_w / (1.0 + LOSSES), abs=5.0)
        frequency(50.0)
        # A newer award for the same MTU lands during the activation: deferred.
        node.send(node.topics.award, {"id": "award-2", "issued_at": clock.wall(),
                                      "start": start, "mtu_s": 3600,
                                      "capacity_w": {"ffr": [150.0]}})
        assert json.loads(acks.wait(3, WAIT_S)[2].payload)["accepted"] is True
        wait_until(lambda: agent.planning.arming.snapshot().pending_w.get("ffr") == 150.0,
                   "the change pending while FFR delivers", timeout_s=WAIT_S)
        assert agent.portfolio.capacities()["ffr"] == award_w
        # Once the activation has ended (support, then its ramp-out): applied.
        wait_until(lambda: agent.portfolio.capacities()["ffr"] == 150.0,
                   "the change applied after the activation", timeout_s=30.0)
        wait_until(lambda: limits_w() == pytest.approx(N * 700.0, abs=1.0),
                   "the limits back at rest", timeout_s=WAIT_S)
        kinds = [(r["kind"], r["fields"].get("source")) for r in node.audit()
                 if r["kind"] == "capacity"]
        assert kinds == [("capacity", "unawarded"), ("capacity", "award"),
                         ("capacity", "award")]  # 400 -> 0, 0 -> 300, 300 -> 150
