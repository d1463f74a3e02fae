"""A flood of junk on the broker must not delay a genuine trigger or cost a genuine ack.

The rejection gate on its own (reject acks for unproven input within a budget, log lines
coalesced), then the whole agent against a real Mosquitto: a dip sample published after
thousands of junk dispatches is handled before the junk backlog, because frequency has its own
connection and priority on the lane. Ordering is asserted, never wall-clock speed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest
from broker import MosquittoBroker, Subscriber
from nodes import merge, running, steady_sim
from waiting import wait_until

from gridtao.clock import MonotonicClock
from gridtao.config.agent import config_from_mapping
from gridtao.hotpath.rejections import RejectionGate
from gridtao.transport.localbroker import Publisher

N = 2
JUNK = 3000
WAIT_S = 30.0


def test_reject_acks_for_unproven_input_stay_within_their_budget() -> None:
    gate = RejectionGate(acks_per_s=10.0, ack_burst=5)
    allowed = [gate.ack_allowed(100.0, proven=False) for _ in range(20)]
    assert allowed == [True] * 5 + [False] * 15
    assert gate.suppressed_acks == 15
    # A sender whose signature verified is always told why.
    assert all(gate.ack_allowed(100.0, proven=True) for _ in range(10))
    # The budget refills at acks_per_s: 0.45 s later four more.
    assert [gate.ack_allowed(100.45, proven=False) for _ in range(5)] == [True] * 4 + [False]
    assert gate.suppressed_acks == 16


def test_a_flood_of_refusals_is_a_few_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    gate = RejectionGate(log_lines=3, interval_s=10.0)
    with caplog.at_level(logging.INFO, logger="gridtao.intake"):
        for k in range(1000):
            gate.log(f"dispatch 'junk-{k}'", "not JSON" if k % 2 else "bad signature", 5.0)
        assert len(caplog.records) == 3
        gate.flush(16.0)  # the interval is over: one summary of the 997 others
    assert len(caplog.records) == 4
    summary = caplog.records[-1].getMessage()
    assert "997 more messages rejected" in summary and "'not JSON'" in summary


def _config(broker: MosquittoBroker) -> Any:
    return config_from_mapping(merge({}, {
        "gpus": {"sim": {"count": N, "noise_w": 0.0, "seed": 3}},
        "mqtt": {"port": broker.port, "node_id": "flood", "prefix": "gridtao/e2e-flood",
                 "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
        "safety": {"triggers": [{"hz": 49.5, "reduction_fraction": 0.3, "min_hold_s": 0.5,
                                 "recovery_s": 0.3}]},
    }), source="<test flood>")


def test_a_dip_is_handled_before_a_backlog_of_junk_dispatches(
        mqtt_broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(mqtt_broker)
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(mqtt_broker, cfg, sim) as node, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, node.topics.ack) as acks:
        # The junk refused when the dip fires, counted on the lane as it fires (counted when
        # its ack reaches this test, it would include what the lane went on with meanwhile).
        refused_at_fire: list[float] = []
        trigger = node.agent.island.trigger_armed

        def counted(*args: Any, **kwargs: Any) -> Any:
            refused_at_fire.append(node.count("dispatch", "rejected"))
            return trigger(*args, **kwargs)

        monkeypatch.setattr(node.agent.island, "trigger_armed", counted)
        # Hold the lane's loop while the broker queues the flood and then the dip behind it,
        # so both arrive as a backlog, as a burst faster than the lane would leave them.
        resume = threading.Event()

        def hold() -> None:
            resume.wait(20.0)

        node.agent.lane.call(hold)
        pub = Publisher(mqtt_broker.host, mqtt_broker.port)
        try:
            for k in range(JUNK):
                pub.send(node.topics.dispatch, b'{"id": "junk-%d", "kind": "shed"' % k, qos=0)
            pub.send(node.topics.frequency,
                     json.dumps({"t": time.time(), "hz": 49.4}).encode(), qos=0)
            time.sleep(0.5)  # let the broker hand everything to the agent's sockets
        finally:
            resume.set()
            pub.close()

        def ffr_ack() -> dict[str, Any] | None:
            for m in list(acks.messages):
                ack = json.loads(m.payload)
                if ack.get("accepted") and str(ack.get("id", "")).startswith("ffr-"):
                    return dict(ack)
            return None

        wait_until(lambda: ffr_ack() is not None, "the dip's ack", timeout_s=WAIT_S)
        rejected_then = refused_at_fire[0]
        # Handled before the junk that came first, not after all of it.
        assert rejected_then < JUNK / 2, rejected_then
        wait_until(lambda: node.count("dispatch", "rejected") == JUNK, "every junk dispatch",
                   timeout_s=WAIT_S)
        # Every refusal counted; only the reject-ack budget acked; the activation acked.
        gate = node.agent.intake.rejections
        assert gate.suppressed_acks > 0
        wait_until(lambda: sum(1 for m in acks.messages
                               if not json.loads(m.payload)["accepted"])
                   == JUNK - gate.suppressed_acks, "the budgeted reject acks", timeout_s=WAIT_S)


def test_audit_records_of_unproven_refusals_stay_within_their_budget() -> None:
    gate = RejectionGate(records_per_s=10.0, record_burst=3)
    assert [gate.record_allowed(1.0, proven=False) for _ in range(5)] == [True] * 3 + [False] * 2
    assert gate.record_allowed(1.0, proven=True)  # a verified sender's refusal: always
    gate.log("dispatch 'x'", "not JSON", 1.0)  # refusals are logged as they are counted
    assert gate.take_unrecorded() == 0  # summed up once the interval ends, not every tick
    gate.flush(11.5)
    assert gate.take_unrecorded() == 2 and gate.take_unrecorded() == 0


def test_a_frequency_storm_cannot_starve_dispatches() -> None:
    from typing import cast

    from gridtao.hotpath.intake import Intake
    from gridtao.hotpath.lane import FREQUENCY_RUN, IslandLane
    from gridtao.transport.mqtt import InboundMessage, MqttLink

    def link(name: str) -> MqttLink:
        return MqttLink(host="127.0.0.1", port=1, client_id=name)

    dispatch, frequency = link("d"), link("f")
    lane = IslandLane(dispatch, cast(Intake, None), frequency_link=frequency)
    for k in range(2 * FREQUENCY_RUN + 4):
        frequency._inbox.put_nowait(InboundMessage("f", b"%d" % k, 0, False, 0.0, 0.0))
    for k in range(2):
        dispatch._inbox.put_nowait(InboundMessage("d", b"%d" % k, 1, False, 0.0, 0.0))
    order = []
    while (msg := lane._next()) is not None:
        order.append(msg.topic)
    run = ["f"] * FREQUENCY_RUN
    assert order == [*run, "d", *run, "d", "f", "f", "f", "f"]
    lane._loop.close()


def test_aiomqtts_full_queue_is_counted_not_logged_per_message(
        caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from gridtao.transport.diagnose import QUEUE_FULL, PahoTap
    from gridtao.transport.mqtt import MqttLink

    link = MqttLink(host="127.0.0.1", port=1, client_id="full")
    loop = asyncio.new_event_loop()
    try:
        tap = PahoTap(loop, on_discard=link._discarded)
        with caplog.at_level(logging.DEBUG):
            for _ in range(1000):
                tap.warning(QUEUE_FULL)  # what aiomqtt logs for each message it drops
        assert link.stats.dropped_inbound == 1000
        assert not [r for r in caplog.records if QUEUE_FULL in r.getMessage()]
    finally:
        loop.close()


def test_messages_handled_out_of_arrival_order_earn_no_extra_budget() -> None:
    # The lane interleaves two inboxes, so a dispatch read earlier can follow a sample read
    # later: an older time must never refill the budget again on the next newer one.
    gate = RejectionGate(records_per_s=20.0, record_burst=5, acks_per_s=20.0, ack_burst=5)
    times = [100.0 + 0.1 * (k % 2) for k in range(200)]  # 0.1 s apart, alternating
    assert sum(gate.record_allowed(t, proven=False) for t in times) == 6
    assert sum(gate.ack_allowed(t, proven=False) for t in times) == 6
