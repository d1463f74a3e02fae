"""`gridtao run --dry-run`: the whole agent runs, acks and plans, and no GPU limit ever changes.

This is how the agent is checked on real GPUs before it is allowed to act, so a dry run must be
honest about what is set (the status shows the enforced limits, not tier 1's plans) and must not
flood the log while its control loop runs open.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from broker import MosquittoBroker, Subscriber, publish

from gridtao.app.agent import Agent, AgentOptions
from gridtao.clock import MonotonicClock
from gridtao.config.agent import config_from_mapping
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml

N = 2
W = 1000


def test_dry_run_acts_on_nothing_and_reports_the_enforced_limits(
    mqtt_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config_from_mapping({
        "gpus": {"dry_run": True, "sim": {"count": N, "noise_w": 0.0}},
        "mqtt": {"port": mqtt_broker.port, "node_id": "dry", "prefix": "gridtao/dry",
                 "status_period_s": 0.1},
        "metrics": {"enabled": False},
    }, source="<test dry run>")
    clock = MonotonicClock()
    sim = SimNvml.from_config(cfg.gpus.sim, clock)
    backend = NvmlBackend(sim, dry_run=True)
    agent = Agent(cfg, clock=clock, backend=backend,
                  options=AgentOptions(serve_metrics=False, connect_timeout_s=10.0))
    caplog.set_level(logging.INFO, logger="gridtao.gpu")
    caplog.set_level(logging.INFO, logger="gridtao.app")
    with Subscriber(mqtt_broker.host, mqtt_broker.port, agent.topics.ack) as acks:
        try:
            agent.start()
            publish(mqtt_broker.host, mqtt_broker.port, agent.topics.dispatch, json.dumps(
                {"id": "d1", "kind": "shed", "fraction": 0.3, "duration_s": 30}).encode())
            ack = json.loads(acks.wait(1, timeout=10.0)[0].payload)
            assert ack["accepted"] is True
            time.sleep(1.0)  # tier 1 plans (and would write) about 100 times
            assert [backend.enforced_limit_mw(i) for i in range(N)] == [700 * W] * N
            assert sim.call_count("nvmlDeviceSetPowerManagementLimit") == 0
            assert [g["limit_w"] for g in agent.controller.status_gpus()] == [700.0] * N
            assert max(agent.fast.limits_mw) < 700 * W  # what it would have set
            would = [r for r in caplog.records if "dry-run: would set" in r.getMessage()]
            # One INFO line per GPU per second at most (plus the first of each second).
            assert 0 < len(would) <= 4 * N
        finally:
            agent.close()
        got = acks.wait(2, timeout=10.0)  # the first ack, then the stop's (the last one)
    ended = json.loads(got[-1].payload)
    # The stop's ack says the event ended, and claims no limit put back.
    assert ended["id"] == "d1" and ended["ended_at"] is not None
    assert "dry run" in ended["reason"] and "put back" not in ended["reason"]
    assert sim.call_count("nvmlDeviceSetPowerManagementLimit") == 0
    # Its stop says nothing was written rather than that it restored anything.
    stops = [r.getMessage() for r in caplog.records if r.name == "gridtao.app.agent"]
    assert any("dry run: no limit was ever written" in m for m in stops), stops
    assert not any("limits restored" in m for m in stops), stops
