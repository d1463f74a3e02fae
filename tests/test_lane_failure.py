"""An island lane that fails leaves the node deaf to the grid: the agent must not go on looking
healthy. It stops (every limit restored, every held event recorded as ended) and says why, so
its supervisor restarts it; ``gridtao run`` then exits with status 4."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from broker import MosquittoBroker
from nodes import CONNECT_S, Node, node_config, steady_sim
from waiting import wait_until

from gridtao.app.agent import Agent, AgentOptions
from gridtao.app.serve import serving
from gridtao.clock import MonotonicClock
from gridtao.config.agent import Config
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.records.audit_verify import read_records

WAIT_S = 15.0
W = 1000  # mW per W


def _two_gpu_agent(cfg: Config) -> tuple[Agent, SimNvml, NvmlBackend]:
    """An agent (not started) on two simulated GPUs drawing a steady 600 W each."""
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    backend = NvmlBackend(sim)
    agent = Agent(cfg, clock=sim.clock, backend=backend,
                  options=AgentOptions(serve_metrics=False, connect_timeout_s=CONNECT_S))
    return agent, sim, backend


def _die() -> None:
    # What a bug that escapes the lane's own handlers looks like: its loop stops with it.
    raise SystemExit("the island lane dies")


def _refuse(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("the ack outbox is broken")


@pytest.mark.parametrize("how", ["loop", "task"])
def test_a_failed_lane_stops_the_agent_restored_and_recorded(
        mqtt_broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        how: str) -> None:
    """``loop``: an exception that stops the lane's loop; ``task``: one that ends one of its
    tasks (the receiving one), which would leave the loop running but the node deaf."""
    audit = tmp_path / "audit.jsonl"
    agent, sim, backend = _two_gpu_agent(node_config(
        mqtt_broker, "lane-dies", "gridtao/e2e-lane", gpus=2, audit=audit,
        source="<test lane failure>"))
    start_mw = [backend.enforced_limit_mw(i) for i in range(2)]
    try:
        agent.start()
        node = Node(agent, sim, mqtt_broker)
        with serving(agent, name="test-controller"), node.acks() as acks, \
                caplog.at_level(logging.ERROR):
            node.dispatch({"id": "held", "kind": "shed", "fraction": 0.3, "duration_s": 120.0})
            acks.wait(1, WAIT_S)
            wait_until(lambda: sum(backend.enforced_limit_mw(i) for i in range(2))
                       < sum(start_mw), "the cut", timeout_s=WAIT_S)
            if how == "loop":
                agent.lane.call(_die)
            else:  # the next ack cannot be handed over: the receiving task dies on it
                agent.lane.link.publish_nowait = _refuse  # type: ignore[method-assign]
                node.dispatch({"id": "bad", "kind": "shed"})
            wait_until(lambda: agent.lane_failed, "the agent to notice", timeout_s=WAIT_S)
            # It stops by itself: the limits found at start are back on the GPUs.
            wait_until(lambda: [backend.enforced_limit_mw(i) for i in range(2)] == start_mw,
                       "the limits restored", timeout_s=WAIT_S)
            time.sleep(0.2)
        assert isinstance(agent.lane.error, SystemExit if how == "loop" else RuntimeError)
        assert not agent.lane.is_connected  # its connections closed with it
        lines = [r.getMessage() for r in caplog.records]
        assert any("island lane failed" in line and "exit status 4" in line for line in lines)
        assert any("final ack(s) not sent" in line for line in lines), lines
    finally:
        agent.close()
    kinds = [(r["kind"], r["fields"].get("event")) for r in read_records([str(audit)])]
    assert ("event_ended", "held") in kinds


def test_a_stop_step_that_fails_still_restores_the_limits(
        mqtt_broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Closing the message guard raises (the replay store's flush on a full disk): the stop
    logs it and goes on, the limits found at start are restored, and a later close (the run's
    ``finally``) has nothing left to do."""
    agent, sim, backend = _two_gpu_agent(node_config(
        mqtt_broker, "stop-fails", "gridtao/e2e-stop", gpus=2, source="<test stop step>"))
    start_mw = [backend.enforced_limit_mw(i) for i in range(2)]

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    try:
        agent.start()
        agent.island.update_draw([600 * W, 600 * W])
        assert agent.island.trigger_shed("e1", 0.5).commanded
        assert [backend.enforced_limit_mw(i) for i in range(2)] != start_mw
        agent.guard.close = disk_full  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR):
            agent.quiesce()
        assert "closing the message guard failed" in caplog.text
        assert [backend.enforced_limit_mw(i) for i in range(2)] == start_mw
    finally:
        agent.close()
    with NvmlBackend(sim) as after:  # the GPUs outlive the agent
        assert [after.enforced_limit_mw(i) for i in range(2)] == start_mw


def test_a_slow_stop_step_is_logged_with_how_long_it_took(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each step of a stop is bounded, the whole must fit a supervisor's 30 s: one that takes
    longer than expected is named with its time (quick ones say nothing)."""
    from gridtao.app.stopping import stop_step

    with caplog.at_level(logging.WARNING, "gridtao.app.agent"):
        stop_step("a quick step", lambda: None, slow_s=5.0)
        stop_step("a slow step", lambda: time.sleep(0.1), slow_s=0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "gridtao.app.agent"]
    assert len(lines) == 1, lines
    took = lines[0].removeprefix("stopping: a slow step took ").removesuffix(" s")
    assert float(took) >= 0.1, lines
