"""The whole agent in-process against a real Mosquitto broker: simulated GPUs, island lane,
tier 1, watchdog, response meter and status, driven over wire contract v1 exactly as the grid
side would (paho clients, and the real ``mosquitto_pub`` / ``mosquitto_sub`` binaries).

Waits are generous (a loaded 2-core machine); nothing here asserts wall-clock speed.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Subscriber
from nodes import Node, merge, running, steady_sim
from waiting import wait_until

from gridtao.clock import MonotonicClock
from gridtao.config.agent import config_from_mapping
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml

W = 1000  # mW per W
N = 4
DEMAND_W = 600
BASELINE_W = N * DEMAND_W
MIN_W, DEFAULT_W = 200, 700  # H100 SXM profile
RATE_PER_S = 1.0  # release ramp: the whole reduction given back in 1 s
WAIT_S = 15.0

# Node-level status fields added to wire contract v1 (additive: v1 clients ignore them).
STATUS_ADDITIONS = {"capacity", "frequency", "simulated", "instance", "records", "auth",
                    "limits", "links"}


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    wait_until(cond, what, timeout_s=timeout_s)


@contextmanager
def running_node(
    broker: MosquittoBroker, name: str, *, serve: bool = False,
    freeze_startup_heap: bool = False, **over: Any
) -> Iterator[Node]:
    base: dict[str, Any] = {
        "gpus": {"sim": {"count": N, "noise_w": 0.0, "seed": 7}},
        "mqtt": {
            "port": broker.port, "node_id": name, "prefix": f"gridtao/e2e-{name}",
            "keepalive_s": 5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,
            "status_period_s": 0.1,
        },
        "metrics": {"enabled": False},
        "safety": {
            "triggers": [
                {"hz": 49.7, "reduction_fraction": 0.1, "min_hold_s": 0.5, "recovery_s": 0.3},
                {"hz": 49.5, "reduction_fraction": 0.3, "min_hold_s": 0.5, "recovery_s": 0.3},
            ],
            "release_rate_per_s": RATE_PER_S,
        },
    }
    cfg = config_from_mapping(merge(base, over), source=f"<test {name}>")
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), DEMAND_W)
    # The island's pre-event baseline is then exactly N x DEMAND_W.
    with running(broker, cfg, sim, serve=serve, settled_w=DEMAND_W,
                 freeze_startup_heap=freeze_startup_heap) as node:
        yield node


def _ack(msg: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(msg.payload)
    return data


def _shed(event_id: str, fraction: float, duration_s: float = 60.0) -> dict[str, object]:
    return {"id": event_id, "kind": "shed", "fraction": fraction, "duration_s": duration_s,
            "issued_at": time.time()}


def _reopened_limits_w(sim: SimNvml) -> list[float]:
    """The limits the simulated GPUs hold, read through a fresh backend (after agent.close())."""
    with NvmlBackend(sim) as backend:
        return [backend.enforced_limit_mw(i) / W for i in range(N)]


# ---------------------------------------------------------------- metrics of the links


def test_link_and_audit_counters_reach_prometheus_once(mqtt_broker: MosquittoBroker,
                                                        tmp_path: Path) -> None:
    audit = {"enabled": True, "path": str(tmp_path / "audit.jsonl"), "fsync": "never"}
    with running_node(mqtt_broker, "counters", audit=audit) as node:
        agent = node.agent
        agent.lane.link.stats.dropped_inbound += 3  # what an inbox overflow leaves behind
        agent.status_link.stats.refused += 2
        assert agent.ledger.audit is not None
        agent.ledger.audit._dropped += 4  # a full writer queue
        for _ in range(2):  # read when scraped: reading again adds nothing
            assert node.value("gridtao_mqtt_dropped_total", link="island", direction="in") == 3
            assert node.value("gridtao_mqtt_refused_total", link="status") == 2
            assert node.value("gridtao_audit_dropped_total") == 4
        assert node.value("gridtao_mqtt_dropped_total", link="status", direction="out") == 0
        # The agent's own footprint, as every Prometheus exporter reports it.
        assert node.value("process_cpu_seconds_total") > 0
        assert node.value("process_resident_memory_bytes") > 10 * 2**20
        assert any(m.name == "python_info" for m in agent.registry.collect())


# ---------------------------------------------------------------- frequency trigger


def test_frequency_dip_caps_gpus_acks_twice_and_recovers(mqtt_broker: MosquittoBroker) -> None:
    with running_node(mqtt_broker, "freq") as node, node.acks() as acks:
        node.frequency(49.8)  # above every level: nothing
        node.frequency(49.65)
        first, second = (_ack(m) for m in acks.wait(2, WAIT_S))
        assert first["accepted"] is True and first["reason"] is None
        assert first["id"].startswith("ffr-49.70-")
        assert first["received_at"] <= first["commanded_at"]
        assert first["reached_at"] is None
        # The second ack: same event, reached_at filled in once measured power is in the band.
        assert second["id"] == first["id"] and second["accepted"] is True
        assert second["received_at"] == first["received_at"]
        assert second["commanded_at"] == first["commanded_at"] <= second["reached_at"]
        limits = node.limits_w()
        assert all(MIN_W <= lim < DEFAULT_W for lim in limits)
        assert sum(limits) == pytest.approx(0.9 * BASELINE_W, rel=0.02)
        assert node.count("frequency", "accepted") == 2
        assert node.agent.island.view().event_id == first["id"]
        reached = node.agent.registry.get_sample_value("gridtao_trigger_to_target_seconds_count")
        assert reached == 1
        # Recovery above 49.72 Hz for recovery_s, held min_hold_s: ramps out, defaults back.
        node.frequency(50.0)
        wait_for(lambda: node.agent.island.view().event_id is None, "frequency event to end")
        wait_for(lambda: node.limits_w() == [DEFAULT_W] * N, "default limits after the ramp")
        assert len(acks.messages) == 2  # no more acks: releasing is not a new event


# ---------------------------------------------------------------- dispatch


def test_shed_dispatch_then_release_ramps_out(mqtt_broker: MosquittoBroker) -> None:
    with running_node(mqtt_broker, "shed") as node, node.acks() as acks:
        node.dispatch(_shed("s1", 0.5))
        ack = _ack(acks.wait(1, WAIT_S)[0])
        assert ack["id"] == "s1" and ack["accepted"] is True
        assert ack["received_at"] <= ack["commanded_at"]
        # The ack leaves after the writes returned: the caps are in place when it arrives.
        limits = node.limits_w()
        assert all(MIN_W <= lim < DEFAULT_W for lim in limits)
        assert sum(limits) == pytest.approx(0.5 * BASELINE_W, rel=0.02)
        reached = _ack(acks.wait(2, WAIT_S)[1])
        assert reached["id"] == "s1" and reached["reached_at"] >= ack["commanded_at"]
        view = node.agent.island.view()
        assert view.target_mw is not None and view.ceiling_total_mw is not None
        target_w = view.target_mw / W
        reduction_w = BASELINE_W - target_w
        assert target_w == pytest.approx(0.5 * BASELINE_W, rel=0.02)

        t_release = time.monotonic()
        node.dispatch({"id": "s1-end", "kind": "release", "ref": "s1"})
        samples: list[tuple[float, float, float]] = []  # (before, target W, after)
        while True:
            t0 = time.monotonic()
            v = node.agent.island.view()
            t1 = time.monotonic()
            if v.event_id is None:
                t_gone = t0
                break
            assert v.event_id == "s1"
            assert v.target_mw is not None
            samples.append((t0, v.target_mw / W, t1))
            assert t1 - t_release < WAIT_S, "release never finished"
            time.sleep(0.02)
        rel_ack = _ack(acks.wait(3, WAIT_S)[2])
        assert rel_ack["id"] == "s1-end" and rel_ack["accepted"] is True
        # Ended early, but through the ramp: never faster than RATE_PER_S of the reduction.
        assert t_gone - t_release >= 1.0 / RATE_PER_S
        for (a0, ta, _a1), (_b0, tb, b1) in itertools.pairwise(samples):
            assert tb >= ta - 1e-6
            assert tb - ta <= RATE_PER_S * reduction_w * (b1 - a0) + 1.0
        wait_for(lambda: node.limits_w() == [DEFAULT_W] * N, "default limits after the ramp")
        assert node.count("dispatch", "accepted") == 2


def test_cap_dispatch_holds_node_w(mqtt_broker: MosquittoBroker) -> None:
    with running_node(mqtt_broker, "cap") as node, node.acks() as acks:
        node.dispatch({"id": "c1", "kind": "cap", "node_w": 1500, "duration_s": 60})
        first, second = (_ack(m) for m in acks.wait(2, WAIT_S))
        assert first["accepted"] is True and second["reached_at"] is not None
        limits = node.limits_w()
        assert all(MIN_W <= lim <= DEFAULT_W for lim in limits)
        assert sum(limits) <= 1500 + 0.001
        assert sum(limits) == pytest.approx(1500, rel=0.02)
        time.sleep(0.3)  # tier 1 runs on: it may never lift the node above the cap
        assert sum(node.limits_w()) <= 1500 + 0.001


# ---------------------------------------------------------------- rejections

REJECTED: list[tuple[str, bytes]] = [
    ("bad JSON", b'{"id": "j1", "kind": "shed",'),
    ("wrong type", b'{"id":"t1","kind":"shed","fraction":"0.3","duration_s":5}'),
    ("NaN", b'{"id":"n1","kind":"shed","fraction":NaN,"duration_s":5}'),
    ("inf", b'{"id":"n2","kind":"cap","node_w":1e999,"duration_s":5}'),
    ("fraction > 1", b'{"id":"o1","kind":"shed","fraction":1.2,"duration_s":5}'),
    ("fraction 0", b'{"id":"o2","kind":"shed","fraction":0,"duration_s":5}'),
    ("negative watts", b'{"id":"w1","kind":"cap","node_w":-5,"duration_s":5}'),
    ("huge watts", b'{"id":"w2","kind":"cap","node_w":5e10,"duration_s":5}'),
    ("unknown kind", b'{"id":"k1","kind":"boost","fraction":0.3,"duration_s":5}'),
    ("missing id", b'{"kind":"shed","fraction":0.3,"duration_s":5}'),
    ("oversize", json.dumps({"id": "big", "kind": "shed", "fraction": 0.3, "duration_s": 5,
                             "pad": "x" * 5000}).encode()),
    ("release of nothing", b'{"id":"r1","kind":"release","ref":"never-seen"}'),
]


def test_every_rejection_is_acked_counted_and_changes_no_limit(
    mqtt_broker: MosquittoBroker,
) -> None:
    with running_node(mqtt_broker, "reject") as node, node.acks() as acks:
        time.sleep(0.2)  # tier 1 settled at the defaults
        before, sets = node.limits_w(), node.sets()
        assert before == [DEFAULT_W] * N
        for k, (what, payload) in enumerate(REJECTED, start=1):
            node.dispatch(payload)
            ack = _ack(acks.wait(k, WAIT_S)[k - 1])
            assert ack["accepted"] is False, what
            assert isinstance(ack["reason"], str) and ack["reason"], what
            assert ack["commanded_at"] is None and ack["reached_at"] is None, what
            assert isinstance(ack["received_at"], float), what
        ids = [_ack(m)["id"] for m in acks.messages]
        assert ids == [None, "t1", None, "n2", "o1", "o2", "w1", "w2", "k1",
                       None, None, "r1"]
        assert node.count("dispatch", "rejected") == len(REJECTED)
        assert node.count("dispatch", "accepted") == 0
        time.sleep(0.2)
        assert node.limits_w() == before
        assert node.sets() == sets
        assert node.agent.island.view().event_id is None
        # A valid dispatch after all that still works.
        node.dispatch(_shed("ok", 0.2))
        ok = _ack(acks.wait(len(REJECTED) + 1, WAIT_S)[-1])
        assert ok["id"] == "ok" and ok["accepted"] is True


def test_duplicate_event_id_is_acted_on_once(mqtt_broker: MosquittoBroker) -> None:
    with running_node(mqtt_broker, "dup") as node, node.acks() as acks:
        node.dispatch(_shed("d1", 0.3))
        _first, reached = (m.payload for m in acks.wait(2, WAIT_S))
        generation = node.agent.island.view().generation
        node.dispatch(_shed("d1", 0.3))
        node.dispatch(_shed("d1", 0.6))  # same id, other body: refused, the first stands
        msgs = acks.wait(4, WAIT_S)
        assert msgs[2].payload == reached  # the latest ack, reached_at included
        reused = _ack(msgs[3])
        assert reused["accepted"] is False and "reused with a different body" in reused["reason"]
        assert reused["in_force"] is True
        assert node.count("dispatch", "accepted") == 1
        assert node.count("dispatch", "duplicate") == 1
        assert node.count("dispatch", "rejected") == 1
        assert node.agent.island.view().generation == generation
        assert node.agent.island.view().active_event_ids == ("d1",)
        commands = node.agent.registry.get_sample_value(
            "gridtao_trigger_to_command_seconds_count"
        )
        assert commands == 1
        assert sum(node.limits_w()) == pytest.approx(0.7 * BASELINE_W, rel=0.02)


# ---------------------------------------------------------------- broker restart


def test_broker_restart_during_an_event(mqtt_broker: MosquittoBroker) -> None:
    with running_node(mqtt_broker, "restart", serve=True) as node:
        with node.acks() as acks:
            node.dispatch({"id": "c1", "kind": "cap", "node_w": 1600, "duration_s": 120})
            assert _ack(acks.wait(1, WAIT_S)[0])["accepted"] is True
        capped = node.limits_w()
        assert sum(capped) == pytest.approx(1600, rel=0.02)

        assert node.agent.trigger_links() == {"island": True, "dispatch": True,
                                              "frequency": True}
        mqtt_broker.stop()
        wait_for(lambda: not node.agent.lane.is_connected, "the lane to notice")
        wait_for(lambda: not any(node.agent.trigger_links().values()),
                 "the status's links to say so")
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:  # the broker is gone: the caps stay
            assert node.agent.island.view().event_id == "c1"
            assert sum(node.limits_w()) <= 1600 + 0.001
            time.sleep(0.05)

        mqtt_broker.start()
        wait_for(lambda: node.agent.lane.is_connected, "the lane to reconnect")
        assert node.agent.island.view().event_id == "c1"
        assert sum(node.limits_w()) <= 1600 + 0.001
        with node.acks() as acks:
            node.dispatch(_shed("s2", 0.5))
            new = _ack(acks.wait(1, WAIT_S)[0])
            assert new["id"] == "s2" and new["accepted"] is True
            node.dispatch({"id": "c1-end", "kind": "release", "ref": "c1"})
            ids = [_ack(m)["id"] for m in acks.wait(3, WAIT_S)]
            assert "c1-end" in ids
        assert sum(node.limits_w()) == pytest.approx(0.5 * BASELINE_W, rel=0.02)
        # The retained status came back too (the restarted broker had lost it).
        with Subscriber(mqtt_broker.host, mqtt_broker.port, node.topics.status) as st:
            status = json.loads(st.wait(1, WAIT_S)[0].payload)
        assert status["online"] is True and status["node"] == "restart"
        assert set(status["links"]) == {"island", "dispatch", "frequency"}


# ---------------------------------------------------------------- watchdog


def test_watchdog_puts_gpus_in_the_safe_state_when_tier1_stops(
    mqtt_broker: MosquittoBroker,
) -> None:
    with running_node(
        mqtt_broker, "watchdog", safety={"watchdog_timeout_s": 0.3, "safe_state": "minimum"}
    ) as node:
        time.sleep(0.5)
        assert not node.agent.watchdog.expired
        assert node.limits_w() == [DEFAULT_W] * N
        # Tier 1 dies (its thread stops beating).
        node.agent._fast_stop.set()
        thread = node.agent._fast_thread
        assert thread is not None
        thread.join(5.0)
        wait_for(lambda: node.limits_w() == [MIN_W] * N, "minimum limits")
        assert node.agent.watchdog.expired
        assert node.agent.island.view().safe_mode == "minimum"
        sim = node.sim
    # Stop restores what the agent found at start.
    assert _reopened_limits_w(sim) == [DEFAULT_W] * N


def test_a_hung_driver_trips_the_safe_state_and_the_grid_s_event_is_kept(
    mqtt_broker: MosquittoBroker,
) -> None:
    with running_node(
        mqtt_broker, "hang", safety={"watchdog_timeout_s": 0.3, "safe_state": "default"}
    ) as node, node.acks() as acks:
        node.dispatch(_shed("h1", 0.4))
        acks.wait(2, WAIT_S)  # accepted and reached: the response meter is idle again
        assert sum(node.limits_w()) == pytest.approx(0.6 * BASELINE_W, rel=0.02)
        # GPU 0's calls hang for 2 s: tier 1 stalls inside its power read, no heartbeat. (Every
        # call, until the watchdog trips: one slow call could be taken by another reader.)
        node.sim.inject_fault(0, "slow", delay_s=2.0)
        wait_for(lambda: node.agent.watchdog.expired, "the watchdog to expire")
        node.sim.clear_faults()
        # Safe state default: tier 1 locked out, the shed the grid asked for still held.
        view = node.agent.island.view()
        assert view.safe_mode == "default" and view.event_id == "h1"
        assert sum(node.limits_w()) <= 0.6 * BASELINE_W * 1.02
        # Tier 1 comes back and beats again: the safe state is left, the shed goes on.
        wait_for(lambda: not node.agent.watchdog.expired, "the heartbeat to return")
        wait_for(lambda: node.agent.island.view().safe_mode is None, "the safe state to end")
        assert "h1" in node.agent.island.view().active_event_ids
        # A GPU whose safe-state write timed out can leave the held total a few watts under
        # h1's cap: the exit latch then binds while it ramps up to the cap, and goes.
        wait_for(lambda: node.agent.island.view().active_event_ids == ("h1",),
                 "the exit ramp to end, h1 alone in force")
        assert node.agent.island.view().event_id == "h1"
        assert node.agent.watchdog.expiries == 1


# ---------------------------------------------------------------- a v1-only client


def _mosquitto_client(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    return path


class CliSubscriber:
    """``mosquitto_sub`` in debug mode: waits for its SUBACK, then collects payload lines."""

    def __init__(self, broker: MosquittoBroker, topic: str, count: int) -> None:
        # stdbuf: line-buffered stdout, or the SUBACK line would only show up at exit.
        self._proc = subprocess.Popen(
            ["stdbuf", "-oL", _mosquitto_client("mosquitto_sub"), "-d", "-h", broker.host, "-p",
             str(broker.port), "-t", topic, "-q", "1", "-C", str(count), "-W", str(int(WAIT_S))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._subscribed.wait(WAIT_S):
            self.close()
            raise AssertionError(f"mosquitto_sub never subscribed: {self.lines}")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "SUBACK" in line:
                self._subscribed.set()

    def payloads(self) -> list[dict[str, Any]]:
        rc = self._proc.wait(WAIT_S + 5)
        self._reader.join(5)
        assert rc == 0, f"mosquitto_sub exited {rc}: {self.lines}"
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(5)
        self._reader.join(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _cli_publish(broker: MosquittoBroker, topic: str, message: str) -> None:
    subprocess.run(
        [_mosquitto_client("mosquitto_pub"), "-h", broker.host, "-p", str(broker.port),
         "-t", topic, "-q", "1", "-m", message],
        check=True, timeout=WAIT_S,
    )


def _cli_retained(broker: MosquittoBroker, topic: str) -> dict[str, Any]:
    done = subprocess.run(
        [_mosquitto_client("mosquitto_sub"), "-h", broker.host, "-p", str(broker.port),
         "-t", topic, "-C", "1", "-W", "5"],
        check=True, timeout=WAIT_S, capture_output=True, text=True,
    )
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_a_v1_client_with_mosquitto_tools_drives_and_observes(
    mqtt_broker: MosquittoBroker,
) -> None:
    with running_node(mqtt_broker, "cli", serve=True) as node:
        topics = node.topics
        sub = CliSubscriber(mqtt_broker, topics.ack, 2)
        try:
            _cli_publish(mqtt_broker, topics.dispatch,
                         '{"id": "cli-1", "kind": "cap", "node_w": 1500, "duration_s": 60}')
            first, second = sub.payloads()
        finally:
            sub.close()
        assert set(first) >= {"id", "accepted", "reason", "received_at", "commanded_at",
                              "reached_at"}
        assert first["id"] == "cli-1" and first["accepted"] is True
        assert first["received_at"] <= first["commanded_at"] <= second["reached_at"]

        def capped_status() -> bool:
            st = _cli_retained(mqtt_broker, topics.status)
            event: str | None = st["event"]
            limits_w: float = sum(g["limit_w"] for g in st["gpus"])
            return event == "cli-1" and limits_w <= 1500.01

        wait_for(capped_status, "a retained status showing the cap")
        status = _cli_retained(mqtt_broker, topics.status)
        v1 = {"node", "online", "t", "event", "gpus"}
        assert set(status) >= v1 and set(status) - v1 <= STATUS_ADDITIONS
        assert status["node"] == "cli" and status["online"] is True
        assert status["records"] == {"journal": "ok", "audit": "ok"}
        assert isinstance(status["t"], float) and abs(status["t"] - time.time()) < 60
        assert [g["index"] for g in status["gpus"]] == list(range(N))
        for g in status["gpus"]:
            assert set(g) == {"index", "power_w", "limit_w", "default_w", "min_w", "max_w",
                              "fault"}
            assert g["fault"] is None
            assert (g["min_w"], g["default_w"], g["max_w"]) == (MIN_W, DEFAULT_W, DEFAULT_W)
            assert MIN_W <= g["limit_w"] < DEFAULT_W
            assert 0 < g["power_w"] <= DEFAULT_W + 50  # may still be falling toward the cap

        _cli_publish(mqtt_broker, topics.dispatch,
                     '{"id": "cli-2", "kind": "release", "ref": "cli-1"}')
        wait_for(lambda: _cli_retained(mqtt_broker, topics.status)["event"] is None,
                 "the status to show no event")
        wait_for(
            lambda: all(g["limit_w"] == DEFAULT_W
                        for g in _cli_retained(mqtt_broker, topics.status)["gpus"]),
            "the status to show default limits",
        )
    # Stopped cleanly: the retained status says offline (what a v1 client sees last), and
    # that the stop put its limits back.
    assert _cli_retained(mqtt_broker, topics.status) == {"node": "cli", "online": False,
                                                         "restored": True}


# ---------------------------------------------------------------- one agent per node id


def test_a_second_agent_on_a_served_node_id_refuses_to_start(
    mqtt_broker: MosquittoBroker,
) -> None:
    from gridtao.app.agent import Agent, AgentOptions
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.transport.instance import Instance, NodeIdInUse

    with running_node(mqtt_broker, "twin", serve=True) as node:
        first = node.agent
        wait_for(lambda: node.value("gridtao_gpus_simulated") == 1.0, "metrics")
        time.sleep(0.3)  # a status or two out (status_period_s 0.1)
        sim = steady_sim(first.config.gpus.sim, node.sim.clock, 300.0)
        # As on another machine (its own state directory: on this one the journal's lock would
        # refuse it first, naming the lock).
        elsewhere = dataclasses.replace(
            first.config, journal=dataclasses.replace(first.config.journal, enabled=False),
            audit=dataclasses.replace(first.config.audit, enabled=False))
        second = Agent(elsewhere, clock=sim.clock, backend=NvmlBackend(sim),
                       options=AgentOptions(serve_metrics=False, connect_timeout_s=WAIT_S))
        # Another process on this host (the broker's), as a second `gridtao run` would be.
        pid = mqtt_broker.pid
        assert pid is not None
        second.instance = Instance(pid=pid)
        with pytest.raises(NodeIdInUse, match=rf"node id 'twin' is already served .*"
                           rf"{first.instance.id}"):
            second.start()
        assert node.agent.island.view().event_id is None and first.lane.is_connected


def test_an_agent_with_its_process_to_itself_freezes_what_it_built_and_still_acts(
    mqtt_broker: MosquittoBroker,
) -> None:
    """``gridtao run``'s agent freezes its start-up heap out of the garbage collector (a full
    collection then scans only what came after); an agent built in a shared process, as here
    by default, freezes nothing."""
    before = gc.get_freeze_count()
    with running_node(mqtt_broker, "shared") as node:
        assert gc.get_freeze_count() == before
        assert node.agent.lane.is_connected
    try:
        with running_node(mqtt_broker, "frozen", freeze_startup_heap=True) as node:
            assert gc.get_freeze_count() > before
            with node.acks() as acks:
                node.dispatch(_shed("f1", 0.3))
                ack = _ack(acks.wait(1, WAIT_S)[0])
            assert ack["id"] == "f1" and ack["accepted"] is True
            assert max(node.limits_w()) < DEFAULT_W
    finally:
        gc.unfreeze()  # this process runs many agents


# ---------------------------------------------------------------- stale commands on the broker


def test_retained_commands_left_on_the_broker_never_act(mqtt_broker: MosquittoBroker) -> None:
    prefix = "gridtao/e2e-retained"
    mqtt_broker.publish(f"{prefix}/dispatch", json.dumps(
        {"id": "left-over", "kind": "shed", "fraction": 0.5, "duration_s": 600}).encode(),
        qos=1, retain=True)
    mqtt_broker.publish(f"{prefix}/frequency", json.dumps({"t": 0.0, "hz": 49.0}).encode(),
                        qos=1, retain=True)
    with running_node(mqtt_broker, "retained", serve=True) as node:
        time.sleep(1.0)  # any retained message would have been delivered and acted on by now
        assert node.agent.island.view().event_id is None
        assert node.limits_w() == [DEFAULT_W] * N
        assert node.count("dispatch", "accepted") == 0
        # A live command on the same topics still acts.
        with node.acks() as acks:
            node.dispatch(_shed("live", 0.3))
            assert _ack(acks.wait(1, WAIT_S)[0])["accepted"] is True


def test_a_retained_flag_on_a_delivered_message_is_not_acted_on() -> None:
    from test_intake import TOPICS, _make_rig

    rig = _make_rig()
    try:
        out = rig.intake.on_message(
            TOPICS.dispatch, json.dumps(_shed("old", 0.3)).encode(),
            received_at=rig.clock.now(), received_wall=rig.clock.wall(), retained=True)
        assert out == [] and rig.island.view().event_id is None
        assert rig.count("dispatch", "rejected") == 1
    finally:
        rig.close()


def test_the_broker_never_sends_the_agent_an_oversize_message(
    mqtt_broker: MosquittoBroker,
) -> None:
    with running_node(mqtt_broker, "oversize") as node:
        limit = node.agent.config.mqtt.max_payload_bytes
        received = node.agent.lane.dispatch_link.stats.received
        huge = b'{"id": "big", "kind": "shed", "fraction": 0.3, "pad": "' + b"x" * (
            limit + 4096) + b'"}'
        node.dispatch(huge)  # MQTT v5 Maximum Packet Size: the broker drops it for this client
        with node.acks() as acks:
            node.dispatch(_shed("after", 0.3))
            assert _ack(acks.wait(1, WAIT_S)[0])["id"] == "after"
        assert node.agent.lane.dispatch_link.stats.received == received + 1  # only the second
        assert node.count("dispatch", "rejected") == 0


def test_a_stop_that_cannot_put_a_limit_back_says_so_in_its_offline_status(
    mqtt_broker: MosquittoBroker,
) -> None:
    """A GPU that refuses the restoring write at stop: the offline status says
    ``restored: false``, so no site reads the node as holding no cap."""
    with running_node(mqtt_broker, "unrestored", serve=True) as node, node.acks() as acks:
        node.dispatch(_shed("u1", 0.3))
        acks.wait(1, WAIT_S)
        wait_for(lambda: sum(node.limits_w()) < 0.9 * N * DEFAULT_W, "the cut")
        node.sim.inject_fault(0, "no_permission")  # every write from now on
        topic = node.topics.status
    assert _cli_retained(mqtt_broker, topic) == {"node": "unrestored", "online": False,
                                                 "restored": False}
