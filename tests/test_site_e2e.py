"""The site coordinator end to end: real agent processes, a real broker, the real `gridtao site`.

Each node's GPUs are a machine-wide simulated device of its own, so the test reads what the
GPUs really draw and enforce from outside every process, as a meter or `nvidia-smi` would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import REPO, WAIT_S, agent_processes, spawn_agent, write_agent_config
from broker import MosquittoBroker, Subscriber, publish
from prometheus_client import CollectorRegistry
from waiting import wait_until

from gridtao.clock import MonotonicClock
from gridtao.config.agent import load_config
from gridtao.config.paths import sim_device_path
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.history import HistoryStore, MinuteRow
from gridtao.security.auth import load_signing_key, sign_payload
from gridtao.site.serve import run_site

GPUS = 2
DAY_S = 86_400


def _agent(tmp: Path, broker: MosquittoBroker, node: str, prefix: str, *,
           steady_w: float | None = None) -> subprocess.Popen[bytes]:
    """An agent on its own simulated device: a training load, or with ``steady_w`` every GPU
    asking that much all the time (a constant trace)."""
    folder = tmp / node
    folder.mkdir()
    cfg = write_agent_config(folder, broker, node, prefix=prefix, gpus=GPUS)
    body = yaml.safe_load(cfg.read_text())
    body["gpus"]["sim"] |= {"device": node, "workload": "training", "noise_w": 1.0}
    if steady_w is not None:
        trace = folder / "steady.csv"
        trace.write_text(f"t_s,watts\n0,{steady_w}\n3600,{steady_w}\n")
        body["gpus"]["sim"] |= {"workload": "trace", "trace_csv": str(trace)}
    body["mqtt"]["status_period_s"] = 0.25
    cfg.write_text(yaml.safe_dump(body))
    return spawn_agent(cfg, folder / "agent.log")


def _site_config(tmp: Path, broker: MosquittoBroker, prefix: str, nodes: list[str],
                 **site: Any) -> Path:
    path = tmp / f"site-{len(list(tmp.glob('site-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"port": broker.port, "prefix": prefix, "reconnect_min_s": 0.05,
                 "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
        "facility": {"losses_fraction": 0.03, "cop": 4.5},
        "site": {"id": "site-1", "nodes": nodes, "node_stale_s": 2.0,
                 "status_period_s": 0.25} | site}))
    return path


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gridtao", *args], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def _devices(nodes: list[str]) -> Iterator[dict[str, SimNvml]]:
    clock = MonotonicClock()
    found: dict[str, SimNvml] = {}
    deadline = time.monotonic() + WAIT_S
    while len(found) < len(nodes) and time.monotonic() < deadline:
        for n in nodes:
            if n not in found:
                sim = SimNvml.open_existing(sim_device_path(n), clock)
                if sim is not None:
                    sim.nvmlInit()
                    found[n] = sim
        time.sleep(0.1)
    assert len(found) == len(nodes), f"devices of {set(nodes) - set(found)} never appeared"
    yield found


def _true_w(sim: SimNvml) -> float:
    return sum(sim.true_power_mw(i) for i in range(sim.count)) / 1000.0


def _limits_mw(sim: SimNvml) -> list[int]:
    return [sim.nvmlDeviceGetEnforcedPowerLimit(sim.nvmlDeviceGetHandleByIndex(i))
            for i in range(sim.count)]


def _wait(sub: Subscriber, topic: str, pred: Callable[[dict[str, Any]], bool], what: str,
          timeout: float = WAIT_S, start: int = 0) -> dict[str, Any]:
    """The first message on ``topic`` from message ``start`` on that satisfies ``pred``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in list(sub.messages)[start:]:
            if m.topic == topic:
                body: dict[str, Any] = json.loads(m.payload)
                if pred(body):
                    return body
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _mean(read: Callable[[], float], seconds: float) -> float:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(read())
        time.sleep(0.05)
    return sum(samples) / len(samples)


def test_a_site_cap_is_split_held_through_a_killed_node_and_a_coordinator_restart(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    prefix, nodes = "e2e/site", ["n1", "n2", "n3"]
    with Subscriber(mqtt_broker.host, mqtt_broker.port, f"{prefix}/#") as sub, \
            agent_processes() as procs:
        agents = {n: _agent(tmp_path, mqtt_broker, n, prefix) for n in nodes}
        procs += agents.values()
        site_cfg = _site_config(tmp_path, mqtt_broker, prefix, nodes)
        site = _spawn(["--config", str(site_cfg), "site"], tmp_path / "site.log")
        procs.append(site)
        status = _wait(sub, f"{prefix}/site/status", lambda b: b.get("nodes_online") == 3
                       and all(v["draw_w"] for v in b["nodes"].values()), "3 nodes online")
        with _devices(nodes) as gpus:
            natural = {n: _true_w(gpus[n]) for n in nodes}
            site_w = round(0.75 * status["it_w"])
            publish(mqtt_broker.host, mqtt_broker.port, f"{prefix}/site/dispatch", json.dumps(
                {"id": "cap-1", "kind": "site_cap", "site_w": site_w, "at": "it",
                 "duration_s": 120}).encode())
            ack = _wait(sub, f"{prefix}/site/ack", lambda b: b["id"] == "cap-1", "site ack")
            assert ack["nodes"]["accepted"] == nodes and ack["accepted"] is True
            _wait(sub, f"{prefix}/site/ack", lambda b: b["reached_at"] is not None,
                  "site reached")
            held = _mean(lambda: sum(_true_w(g) for g in gpus.values()), 1.5)
            assert held <= site_w * 1.03, (held, site_w)  # measured on the GPUs, not reported

            # SIGKILL n3: its GPUs stay capped; its share moves to n1 and n2, which must now
            # hold the site while n3 is counted at its draw before the event (it may restart)
            n3_limits = _limits_mw(gpus["n3"])
            os.kill(agents["n3"].pid, signal.SIGKILL)
            agents["n3"].wait(10)
            moved = _wait(sub, f"{prefix}/site/ack", lambda b: b["id"] == "cap-1"
                          and b["generation"] >= 1, "the split moved off n3")
            assert moved["nodes"]["offline"] == ["n3"] and moved["nodes"]["accepted"] == [
                "n1", "n2"]
            assert _limits_mw(gpus["n3"]) == n3_limits  # the dead node's caps outlive it
            _wait(sub, f"{prefix}/site/ack", lambda b: b["generation"] >= 1
                  and b["reached_at"] is not None, "n1 and n2 reached their new caps")
            time.sleep(1.0)
            two = _mean(lambda: _true_w(gpus["n1"]) + _true_w(gpus["n2"]), 1.5)
            assert two + natural["n3"] <= site_w * 1.03, (two, natural["n3"], site_w)

            # The coordinator dies and comes back mid-event: no node changes its limits
            before = {n: _limits_mw(gpus[n]) for n in ("n1", "n2")}
            site.send_signal(signal.SIGKILL)
            site.wait(10)
            start = len(sub.messages)
            again = _spawn(["--config", str(site_cfg), "site"], tmp_path / "site2.log")
            procs.append(again)
            _wait(sub, f"{prefix}/site/status", lambda b: b.get("nodes_online") == 2 and any(
                e["id"] == "cap-1" for e in b.get("events", ())), "the event taken back")
            time.sleep(3.0)  # longer than a rebalance period
            sent = [m for m in list(sub.messages)[start:]
                    if m.topic.startswith(f"{prefix}/nodes/") and m.topic.endswith("/dispatch")]
            assert sent == []
            after = {n: _limits_mw(gpus[n]) for n in ("n1", "n2")}
            for n in before:  # tier 1 trims within its band; a new cap would move far more
                assert all(abs(a - b) <= 60_000 for a, b in zip(after[n], before[n],
                                                                strict=True)), (n, before, after)


def _meter_run(sub: Subscriber, broker: MosquittoBroker, prefix: str,
               event: str, target_w: float) -> float:
    start = len(sub.messages)
    publish(broker.host, broker.port, f"{prefix}/site/dispatch", json.dumps(
        {"id": event, "kind": "site_cap", "site_w": target_w, "at": "meter",
         "duration_s": 60}).encode())
    _wait(sub, f"{prefix}/site/ack", lambda b: b["id"] == event, f"site ack of {event}",
          start=start)
    time.sleep(6.0)  # two or three meter corrections (a steady load settles within them)
    start = len(sub.messages)
    time.sleep(6.0)
    readings = [json.loads(m.payload)["w"] for m in list(sub.messages)[start:]
                if m.topic == f"{prefix}/meter"]
    publish(broker.host, broker.port, f"{prefix}/site/dispatch", json.dumps(
        {"id": f"{event}-end", "kind": "release", "ref": event}).encode())
    assert len(readings) >= 5
    return float(sum(readings)) / len(readings)


def test_meter_feedback_meets_a_meter_commitment_the_wrong_model_alone_misses(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    prefix, nodes = "e2e/meter", ["m1", "m2"]
    with Subscriber(mqtt_broker.host, mqtt_broker.port, f"{prefix}/#") as sub, \
            agent_processes() as procs:
        # A steady load: the meter's mean then shows the model's error, not the bursts of a
        # training load under its caps (which moved it by a couple of percent run to run).
        procs += [_agent(tmp_path, mqtt_broker, n, prefix, steady_w=600.0) for n in nodes]
        with _devices(nodes):  # the meter reads them: wait until every agent made its own
            meter_cfg = _site_config(tmp_path, mqtt_broker, prefix, nodes)
            # the real facility loses 8 % where the site's model says 3 %
            procs.append(_spawn(["--config", str(meter_cfg), "sim", "meter", "--devices",
                                 ",".join(nodes), "--losses", "0.08", "--cooling-tau", "1",
                                 "--period", "0.25"], tmp_path / "meter.log"))
            metered = {}
            for feedback in (False, True):
                cfg = _site_config(tmp_path, mqtt_broker, prefix, nodes,
                                   meter={"feedback": feedback, "tau_s": 1.0})
                start = len(sub.messages)
                site = _spawn(["--config", str(cfg), "site"], tmp_path / f"site-{feedback}.log")
                procs.append(site)
                status = _wait(sub, f"{prefix}/site/status", lambda b: b.get("nodes_online") == 2
                               and b.get("meter_w") is not None and not b.get("events"),
                               "site with meter", start=start)
                target = round(0.8 * status["meter_w"])
                event = f"meter-{'on' if feedback else 'off'}"
                metered[feedback] = _meter_run(sub, mqtt_broker, prefix, event, target)
                error = _wait(sub, f"{prefix}/site/status",
                              lambda b: b.get("meter_model_error") is not None, "model error",
                              start=len(sub.messages))
                # 1.302 / 1.252 - 1 = 4.0 % at steady state; the cooling lag and the nodes'
                # status reports, a fraction of a second apart from the readings, add up to 3 %
                assert 0.02 < error["meter_model_error"] < 0.09
                site.send_signal(signal.SIGTERM)
                site.wait(10)
                metered[feedback] /= target
                time.sleep(2.0)  # the nodes ramp back before the next run
            # Met within a percent with the feedback, missed by the model's error without.
            assert metered[True] <= 1.01, metered
            assert metered[False] > 1.0, metered  # the model's 4 % error, uncorrected
            assert metered[False] - metered[True] > 0.01, metered


def test_the_site_logs_one_line_when_it_stops(
    mqtt_broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(_site_config(tmp_path, mqtt_broker, "e2e/stop", []))
    stop = asyncio.Event()

    async def run_then_stop() -> int:
        site = asyncio.ensure_future(run_site(config, stop=stop))
        await asyncio.sleep(0.5)
        stop.set()
        return await site

    with caplog.at_level(logging.INFO, logger="gridtao.site"):
        assert asyncio.run(run_then_stop()) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "gridtao.site"]
    assert lines[-1] == "site site-1 stopped", lines


def test_the_site_says_which_broker_connection_is_up(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """``gridtao_broker_connected{link}`` for the site's three connections: the two it listens
    on (cmd, state) and the one it publishes on (out), which starts once cmd is subscribed; the
    status's ``links`` says the two it listens on."""
    config = load_config(_site_config(tmp_path, mqtt_broker, "e2e/links", []))
    registry = CollectorRegistry()
    stop = asyncio.Event()
    seen: dict[str, float | None] = {}

    def connected(link: str) -> float | None:
        return registry.get_sample_value("gridtao_broker_connected", {"link": link})

    async def run_then_stop() -> int:
        site = asyncio.ensure_future(run_site(config, stop=stop, registry=registry))
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not all(
                connected(link) == 1.0 for link in ("out", "cmd", "state")):
            await asyncio.sleep(0.05)
        seen.update({link: connected(link) for link in ("out", "cmd", "state")})
        while time.monotonic() < deadline and not any(  # its first status waits for its view
                json.loads(m.payload).get("online") for m in list(st.messages)):
            await asyncio.sleep(0.05)
        stop.set()
        return await site

    with Subscriber(mqtt_broker.host, mqtt_broker.port, "e2e/links/site/status") as st:
        assert asyncio.run(run_then_stop()) == 0
    assert seen == {"out": 1.0, "cmd": 1.0, "state": 1.0}
    statuses = [json.loads(m.payload) for m in st.messages]
    online = [b for b in statuses if b.get("online") is True]
    assert online and all(set(b["links"]) == {"cmd", "state"} for b in online)
    assert online[-1]["links"] == {"cmd": True, "state": True}


def test_a_hangup_neither_stops_nor_changes_the_site(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """``kill -HUP`` (what a reload sends) is logged and ignored: the process stays up (Python's
    default for SIGHUP would end it) and stops cleanly on SIGTERM after."""
    log = tmp_path / "site.log"
    path = _site_config(tmp_path, mqtt_broker, "e2e/hup", [])
    site = _spawn(["site", "--config", str(path)], log)
    try:
        wait_until(lambda: "coordinating under" in log.read_text("utf-8", "replace"),
                   "the site up", timeout_s=30.0)
        site.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP" in log.read_text("utf-8", "replace"), "the SIGHUP logged",
                   timeout_s=10.0)
        time.sleep(0.5)
        assert site.poll() is None, log.read_text("utf-8", "replace")
        site.send_signal(signal.SIGTERM)
        assert site.wait(30) == 0, log.read_text("utf-8", "replace")
    finally:
        if site.poll() is None:
            site.kill()
            site.wait(10)


def signed_site_keys(tmp: Path) -> dict[str, Path]:
    """Fresh HMAC secrets: the aggregator's (``agg``) and the site's own (``site``)."""
    keys = {}
    for kid in ("agg", "site"):
        keys[kid] = tmp / f"{kid}.key"
        keys[kid].write_text(base64.b64encode(os.urandom(32)).decode())
        keys[kid].chmod(0o600)
    return keys


def planning_agent(tmp: Path, broker: MosquittoBroker, node: str, prefix: str,
                   keys: Mapping[str, Path] | None, *, steady_w: float | None = None,
                   **extra: Any) -> subprocess.Popen[bytes]:
    """An agent whose tier 3 plans from 14 days of a steady 1200 W history (room to offer) and
    offers FFR (400 W enrolled) at 20 EUR/MW/h, taking awards signed with the site's key
    (``keys``; None: unsigned mode); ``steady_w``: every GPU asks that much all the time (else
    the simulator's default load); ``extra``: further top-level sections."""
    folder = tmp / node
    folder.mkdir()
    now = time.time()
    history = folder / "history.sqlite3"
    first = int(now) // 60 * 60 - 14 * DAY_S
    with HistoryStore.open(history) as store:
        store.write([MinuteRow(first + 60 * k, 1200.0, 1190.0, 1200.0 * 60, 1400.0, 0.0)
                     for k in range(14 * 1440)])
    signals = folder / "signals.json"
    signals.write_text(json.dumps({
        "version": 1, "issued_at": now, "source": "test", "start": int(now) // 3600 * 3600,
        "mtu_s": 3600, "reserve_price_eur_per_mw_h": {"ffr": [20.0] * 48}}))
    gpus: dict[str, Any] = {"backend": "sim", "sim": {"count": GPUS, "device": node}}
    if steady_w is not None:
        trace = folder / "steady.csv"
        trace.write_text(f"t_s,watts\n0,{steady_w}\n3600,{steady_w}\n")
        gpus["sim"] |= {"workload": "trace", "trace_csv": str(trace), "noise_w": 0.0}
    cfg = write_agent_config(
        folder, broker, node, prefix=prefix, gpus=GPUS, safety={"triggers": []},
        products=[{"kind": "ffr", "capacity_w": 400, "threshold_hz": 49.5}],
        history={"path": str(history)},
        planner={"enabled": True, "signals_file": str(signals)}, **extra,
        **({} if keys is None else {
            "auth": {"mode": "hmac", "keys": [{"kid": "site", "file": str(keys["site"])}]}}))
    body = yaml.safe_load(cfg.read_text())
    body["gpus"] = gpus
    cfg.write_text(yaml.safe_dump(body))
    return spawn_agent(cfg, folder / "agent.log")


def signed_site_config(tmp: Path, broker: MosquittoBroker, prefix: str, nodes: list[str],
                       keys: Mapping[str, Path], **market: Any) -> Path:
    """A signed-mode site taking the aggregator's key, signing with its own; 10 W bid steps."""
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"port": broker.port, "prefix": prefix, "reconnect_min_s": 0.05},
        "metrics": {"enabled": False},
        "auth": {"mode": "hmac", "keys": [{"kid": "agg", "file": str(keys["agg"])}]},
        "site": {"id": "s1", "nodes": nodes, "status_period_s": 0.2, "ack_deadline_s": 5.0,
                 "signing": {"mode": "hmac", "kid": "site", "file": str(keys["site"])},
                 "market": {"bid_step_w": 10, "min_bid_w": 10, "min_bids": []} | market}}))
    return path


def test_a_signed_site_award_reaches_a_real_agent_split_from_its_own_plan(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Signed mode end to end: the agent plans from its history and publishes its plan, the
    site pools it into its bids, the aggregator's signed site award is split, signed with the
    site's key and sent to the node, which verifies it, accepts it and says so."""
    prefix, node = "e2e/award", "n1"
    keys = signed_site_keys(tmp_path)
    site_cfg = signed_site_config(tmp_path, mqtt_broker, prefix, [node], keys)
    with agent_processes() as procs, mqtt_broker.subscriber(f"{prefix}/#") as sub:
        procs.append(planning_agent(tmp_path, mqtt_broker, node, prefix, keys))
        procs.append(_spawn(["--config", str(site_cfg), "site"], tmp_path / "site.log"))
        plan = _wait(sub, f"{prefix}/site/plan",
                     lambda d: any(max(v) > 0 for v in d.get("offers_w", {}).values()),
                     "the site's plan pooled from the node's")
        offered = plan["offers_w"]["ffr"]
        k = next(i for i, w in enumerate(offered) if w > 0)
        start = plan["start"] + k * plan["mtu_s"]
        award_w = offered[k]
        body = {"id": "a1", "start": start, "mtu_s": plan["mtu_s"],
                "capacity_w": {"ffr": [award_w]}}
        raw = sign_payload(body, load_signing_key(keys["agg"], "hmac"), "agg", "hmac",
                           topic="dispatch")
        publish(mqtt_broker.host, mqtt_broker.port, f"{prefix}/site/award", raw, qos=1)
        node_award = _wait(sub, f"{prefix}/nodes/{node}/award", lambda d: True,
                           "the node's share of the award")
        assert node_award["capacity_w"]["ffr"] == [award_w] and node_award["kid"] == "site"
        ack = _wait(sub, f"{prefix}/nodes/{node}/ack",
                    lambda d: d.get("kind") == "award", "the node's ack of its award")
        assert ack["accepted"] is True, ack
        site_ack = _wait(sub, f"{prefix}/site/ack",
                         lambda d: d["id"] == "a1" and d["nodes"]["accepted"],
                         "the site's ack listing the node")
        assert site_ack["accepted"] is True and site_ack["nodes"]["accepted"] == [node]
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            assert p.wait(WAIT_S) == 0


def test_a_second_coordinator_of_a_site_is_refused_while_the_first_lives(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    log = tmp_path / "site.log"
    path = _site_config(tmp_path, mqtt_broker, "e2e/twice", [])
    site = _spawn(["site", "--config", str(path)], log)
    try:
        with Subscriber(mqtt_broker.host, mqtt_broker.port, "e2e/twice/site/status") as status:
            wait_until(lambda: any(json.loads(m.payload).get("instance")
                                   for m in list(status.messages)),
                       "the first coordinator's status", timeout_s=30.0)
        second = subprocess.run([sys.executable, "-m", "gridtao", "site", "--config",
                                 str(path)], cwd=REPO, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is already coordinated by a running coordinator" in lines[0]
        assert f"(pid {site.pid} on " in lines[0]
        assert site.poll() is None
        site.send_signal(signal.SIGTERM)
        assert site.wait(30) == 0
    finally:
        if site.poll() is None:
            site.kill()
            site.wait(10)
