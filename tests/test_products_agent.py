"""Products through the whole agent over a real broker: an FFR step on the island's armed caps,
FCR-D and a demand-response event through tier 2's commitment, and the retained tracker topic.

Simulated GPUs (4 x H100 at a fixed 600 W demand), real time; waits are generous and nothing
asserts wall-clock speed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from broker import MosquittoBroker, Subscriber, publish
from waiting import wait_until

from gridtao.app.agent import Agent, AgentOptions
from gridtao.app.serve import serving
from gridtao.clock import MonotonicClock
from gridtao.config.agent import config_from_mapping
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml

W = 1000
N = 4
DEMAND_W = 600.0
NATURAL_W = N * DEMAND_W
DEFAULT_W = 700.0
WAIT_S = 20.0


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    wait_until(cond, what, timeout_s=timeout_s)


FFR = {"kind": "ffr", "capacity_w": 515, "threshold_hz": 49.6, "support": "long",
       "support_s": 3.0, "rearm_s": 0}
PRODUCTS: list[dict[str, Any]] = [
    FFR,
    {"kind": "fcr-d-up", "capacity_w": 412, "median_samples": 1},
    {"kind": "dr", "capacity_w": 600},
]


@contextmanager
def agent_serving(
    broker: MosquittoBroker, name: str, products: list[dict[str, Any]] = PRODUCTS,
    settle_at: str = "meter",
) -> Iterator[tuple[Agent, SimNvml]]:
    cfg = config_from_mapping({
        "gpus": {"sim": {"count": N, "noise_w": 0.0, "seed": 3}},
        "mqtt": {"port": broker.port, "node_id": name, "prefix": f"gridtao/prod-{name}",
                 "keepalive_s": 5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
        "safety": {"triggers": [], "release_rate_per_s": 1.0},
        "tracker": {"period_s": 0.2, "reference_window_s": 0.5},
        "facility": {"settle_at": settle_at},
        "products": products,
    }, source=f"<test {name}>")
    clock = MonotonicClock()
    sim = SimNvml.from_config(cfg.gpus.sim, clock)
    for i in range(N):
        sim.set_demand_w(i, DEMAND_W)
    backend = NvmlBackend(sim)
    wait_for(lambda: all(abs(backend.instant_power_mw(i) - DEMAND_W * W) <= W
                         for i in range(N)), "the simulated draw to settle")
    agent = Agent(cfg, clock=clock, backend=backend,
                  options=AgentOptions(serve_metrics=False, connect_timeout_s=WAIT_S))
    try:
        agent.start()
        with serving(agent, name="products-agent"):
            yield agent, sim
            assert agent.lane.error is None, agent.lane.error
    finally:
        agent.close()


def _frequency(agent: Agent, broker: MosquittoBroker, hz: float) -> None:
    raw = json.dumps({"t": time.time(), "hz": hz}).encode()
    publish(broker.host, broker.port, agent.topics.frequency, raw, qos=0)


def _dispatch(agent: Agent, broker: MosquittoBroker, body: dict[str, Any]) -> None:
    publish(broker.host, broker.port, agent.topics.dispatch, json.dumps(body).encode(), qos=1)


def _limits_w(agent: Agent) -> list[float]:
    return [agent.backend.enforced_limit_mw(i) / W for i in range(N)]


def test_ffr_product_fires_on_armed_caps_and_publishes_tracker_state(
    mqtt_broker: MosquittoBroker,
) -> None:
    with agent_serving(mqtt_broker, "ffr") as (agent, _sim), \
            Subscriber(mqtt_broker.host, mqtt_broker.port, agent.topics.ack) as acks:
        _frequency(agent, mqtt_broker, 49.7)  # above the product's 49.6 Hz: nothing
        _frequency(agent, mqtt_broker, 49.55)
        ack = json.loads(acks.wait(1, WAIT_S)[0].payload)
        assert ack["accepted"] is True and ack["id"].startswith("ffr-")
        assert ack["received_at"] <= ack["commanded_at"]
        # 515 W at the meter is 500 W of IT (3 % losses): the caps the trigger wrote. (The
        # limits themselves may already be lower: tier 1 stacks FCR-D's commitment on top.)
        caps = agent.island.view().caps_mw
        assert caps is not None and sum(caps) / W == pytest.approx(NATURAL_W - 500.0, abs=5.0)
        # FCR-D also saw 49.55 Hz (87.5 % of 412 W, aimed 5 % over, 3 % losses): the two
        # reserves add up, FFR's cut on top of FCR-D's commitment, and tier 1 gets there.
        # Its commitment follows each sample: the 49.7 Hz one's (50 %) may be the first seen.
        stacked_w = NATURAL_W - 500.0 - 0.875 * 412 * 1.05 / 1.03

        def stacked() -> bool:
            target = agent.island.view().target_mw
            return target is not None and abs(target - stacked_w * W) <= 5 * W

        wait_for(stacked, "FFR's cut on top of FCR-D's commitment at 49.55 Hz")
        view = agent.island.view()
        assert view.event_id == ack["id"] and not view.releasing
        wait_for(lambda: sum(agent.fast.draw_mw) / W < stacked_w + 0.03 * NATURAL_W,
                 "node power down to both reserves")
        _frequency(agent, mqtt_broker, 50.0)
        # FFR held 3 s, ramped out at 100 %/s, defaults back; re-armed (rearm_s 0).
        wait_for(lambda: agent.island.view().event_id is None, "the FFR event to end")
        wait_for(lambda: _limits_w(agent) == [DEFAULT_W] * N, "default limits after the ramp")
        with Subscriber(mqtt_broker.host, mqtt_broker.port, agent.topics.tracker) as sub:
            state = json.loads(sub.wait(1, WAIT_S)[0].payload)
        assert state["node"] == "ffr" and state["settle_at"] == "meter"
        kinds = {p["kind"]: p for p in state["products"]}
        assert set(kinds) == {"ffr", "fcr-d-up"}
        assert state["meter_w"] > state["it_w"] * 1.03 > 0  # losses + cooling on top of IT
        assert state["natural_it_w"] == pytest.approx(NATURAL_W, rel=0.03)


def test_fcr_d_and_dr_hold_the_commitment_through_tier2(mqtt_broker: MosquittoBroker) -> None:
    with agent_serving(mqtt_broker, "fcrd") as (agent, _sim), \
            Subscriber(mqtt_broker.host, mqtt_broker.port, agent.topics.ack) as acks:
        island = agent.island
        wait_for(lambda: agent.tier2.snapshot()["natural_it_w"] is not None, "a reference")
        _frequency(agent, mqtt_broker, 49.7)  # FCR-D at 50 %: 206 W at the meter
        wait_for(lambda: island.view().commitment_mw is not None, "the FCR-D commitment")
        aim = 1.0 + agent.config.tracker.margin_fraction
        expected_it_w = NATURAL_W - 206.0 * aim / 1.03
        assert island.view().commitment_mw == pytest.approx(expected_it_w * W, abs=5 * W)
        wait_for(lambda: abs(sum(agent.fast.draw_mw) / W - expected_it_w) < 0.03 * NATURAL_W,
                 "node power to reach the FCR-D target")
        _frequency(agent, mqtt_broker, 50.0)
        wait_for(lambda: island.view().commitment_mw is None, "FCR-D to deactivate")
        # A DR event scheduled 0.5 s ahead; one above the enrolled capacity is refused.
        _dispatch(agent, mqtt_broker, {"id": "big", "kind": "dr", "duration_s": 60,
                                       "reduction_w": 700})
        _dispatch(agent, mqtt_broker, {"id": "d1", "kind": "dr", "start_at": time.time() + 0.5,
                                       "duration_s": 60, "reduction_w": 515})
        refused, queued = (json.loads(m.payload) for m in acks.wait(2, WAIT_S))
        assert refused["id"] == "big" and refused["accepted"] is False
        assert "exceeds the enrolled demand-response capacity" in refused["reason"]
        assert queued["id"] == "d1" and queued["accepted"] is True
        assert queued["scheduled"] is True and queued["commanded_at"] is None
        wait_for(lambda: island.view().commitment_mw is not None, "the DR event to start")
        assert island.view().commitment_mw == pytest.approx((NATURAL_W - 500.0) * W, rel=0.02)
        wait_for(lambda: sum(_limits_w(agent)) < NATURAL_W - 300.0, "tier 1 to cut for DR")
        _dispatch(agent, mqtt_broker, {"id": "r1", "kind": "release", "ref": "d1"})
        released = json.loads(acks.wait(3, WAIT_S)[2].payload)
        assert released["id"] == "r1" and released["accepted"] is True
        wait_for(lambda: island.view().commitment_mw is None, "the DR event to be cancelled")
        wait_for(lambda: _limits_w(agent) == [DEFAULT_W] * N, "default limits after DR")


def test_ffr_stacks_on_the_fcr_n_operating_point(mqtt_broker: MosquittoBroker) -> None:
    """FCR-N holds the node at its baseline (2000 W) and, at 49.55 Hz, its full 206 W down: FFR
    then comes on top, measured from there, not from the natural draw. Settled at the IT
    level, so the numbers carry no cooling dynamics."""
    fcr_n = {"kind": "fcr-n", "capacity_w": 206, "baseline_w": 2000, "median_samples": 1}
    ffr = FFR | {"support_s": 10.0}  # held through every check below (a release moves the target)
    with agent_serving(mqtt_broker, "fcrn", [ffr, fcr_n], settle_at="it") as (agent, _sim), \
            Subscriber(mqtt_broker.host, mqtt_broker.port, agent.topics.ack) as acks:
        island = agent.island
        _frequency(agent, mqtt_broker, 50.0)
        wait_for(lambda: island.view().commitment_mw is not None, "the FCR-N baseline")
        wait_for(lambda: abs(sum(agent.fast.draw_mw) / W - 2000.0) < 0.03 * NATURAL_W,
                 "node power at the FCR-N baseline")
        _frequency(agent, mqtt_broker, 49.55)
        assert json.loads(acks.wait(1, WAIT_S)[0].payload)["accepted"] is True
        # FCR-N saturated down (206 W, aimed 5 % over), FFR's 515 W on top.
        stacked_w = 2000.0 - 206.0 * 1.05 - 515.0
        wait_for(lambda: abs((island.view().target_mw or 0.0) - stacked_w * W) <= 5 * W,
                 "the stacked target")
        # FFR's caps were cut from the natural draw (2400 - 515 W): above the target, so the
        # last watts are tier 1's; it gets there while FFR holds.
        view = island.view()
        assert view.ceiling_total_mw == pytest.approx((NATURAL_W - 515.0) * W, abs=5 * W)
        wait_for(lambda: sum(agent.fast.draw_mw) / W < stacked_w + 0.03 * NATURAL_W,
                 "node power down to the stacked target")
        assert island.view().event_id is not None and not island.view().releasing


def test_an_award_arms_exactly_the_accepted_capacity(mqtt_broker: MosquittoBroker) -> None:
    with agent_serving(mqtt_broker, "award", products=[FFR]) as (agent, _sim), \
            Subscriber(mqtt_broker.host, mqtt_broker.port, agent.topics.ack) as acks:
        # The controller's connection subscribes to awards when it is up (an award is a
        # command: not retained, so one sent before that is not seen).
        wait_for(lambda: agent.status_link.is_connected, "the controller's connection")
        mtu = 900
        start = int(time.time()) // mtu * mtu  # the MTU in force now, so it applies at once
        award = {"id": "award-1", "start": start, "mtu_s": mtu,
                 "capacity_w": {"ffr": [206.0, 206.0]}}
        publish(mqtt_broker.host, mqtt_broker.port, agent.topics.award,
                json.dumps(award).encode(), qos=1)
        ack = json.loads(acks.wait(1, WAIT_S)[0].payload)
        assert ack["id"] == "award-1" and ack["accepted"] is True and ack["kind"] == "award"
        wait_for(lambda: agent.portfolio.capacities()["ffr"] == 206.0, "the award armed")
        assert agent.planning.arming.snapshot().source["ffr"] == "award"
        time.sleep(1.5)  # tier 2 re-arms the island's caps once a period
        _frequency(agent, mqtt_broker, 49.55)
        first = json.loads(acks.wait(2, WAIT_S)[1].payload)
        assert first["accepted"] is True and first["id"].startswith("ffr-")
        # 206 W at the meter is 200 W of IT (3 % losses): the accepted capacity, not the 515 W
        # of the configuration.
        assert sum(_limits_w(agent)) == pytest.approx(NATURAL_W - 200.0, abs=5.0)
        # An award naming a product the node does not offer is refused, and changes nothing.
        publish(mqtt_broker.host, mqtt_broker.port, agent.topics.award, json.dumps(
            award | {"id": "award-2", "capacity_w": {"fcr-n": [100.0]}}).encode(), qos=1)
        refused = [json.loads(m.payload) for m in acks.wait(4, WAIT_S)]
        bad = next(a for a in refused if a["id"] == "award-2")
        assert bad["accepted"] is False and "'fcr-n' is not enrolled" in bad["reason"]
        assert agent.portfolio.capacities()["ffr"] == 206.0


def test_demand_response_events_queued_or_running_at_stop_are_acked_as_ended(
        mqtt_broker: MosquittoBroker) -> None:
    with agent_serving(mqtt_broker, "drstop") as (agent, _sim), \
            Subscriber(mqtt_broker.host, mqtt_broker.port, agent.topics.ack) as acks:
        wait_for(lambda: agent.tier2.snapshot()["natural_it_w"] is not None, "a reference")
        _dispatch(agent, mqtt_broker, {"id": "now", "kind": "dr", "duration_s": 60,
                                       "reduction_w": 300})
        time.sleep(1.1)  # limits.min_event_interval_s
        _dispatch(agent, mqtt_broker, {"id": "later", "kind": "dr", "duration_s": 60,
                                       "start_at": time.time() + 600, "reduction_w": 300})
        acks.wait(2, WAIT_S)
        wait_for(lambda: agent.island.view().commitment_mw is not None, "the DR event to start")
        agent.close()
        ended = {b["id"]: b for b in (json.loads(m.payload) for m in acks.wait(4, WAIT_S))
                 if b.get("ended_at") is not None}
    assert set(ended) == {"now", "later"}
    assert all("the agent stopped" in b["reason"] for b in ended.values())
