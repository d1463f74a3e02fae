"""Acceptance: a real VTN (openleadr's OpenADRServer on loopback), a real Mosquitto, a real
gridtao agent process on simulated GPUs enrolled in demand response and verifying Ed25519
signatures, and the bridge as ``gridtao openadr`` in its own process.

The bridge registers; the VTN sends a SIMPLE level-2 event with a ramp, modifies it to level 3
while it is active, then cancels it. The node must show the ramp (its tracker topic: the event
``ramping`` before ``active``), cut its measured GPU power (status ``gpus[].power_w``) by each
version's reduction, and go back after the cancellation; the dispatch topic must carry exactly
dr m0, release m0, dr m1, release m1, each signed; the VTN must hear optIn for every version and
receive usage reports whose values follow the cut. Event times are seconds long.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import REPO, agent_processes, spawn_agent, status_wait, write_agent_config
from broker import MosquittoBroker, Subscriber
from test_openadr_vtn import RESOURCE, Vtn, bridge_mapping, run_async, until, wire_problems

from gridtao.cli import main as cli
from gridtao.records.audit_verify import verify_files

pytestmark = pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")

GPUS = 2
DEMAND_W = 600.0  # each simulated GPU draws this, steadily (a one-row trace)
NATURAL_W = GPUS * DEMAND_W
LEVEL_2_W, LEVEL_3_W = 300.0, 450.0
PREFIX = "gridtao/oadr-e2e"
NODE = "n1"


def it_power(status: dict[str, Any]) -> float:
    return float(sum(g["power_w"] for g in status.get("gpus", [])))


def payloads(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in list(sub.messages)]


@pytest.mark.timeout(150)
def test_register_event_ramp_modify_cancel_and_report(mqtt_broker: MosquittoBroker,
                                                      tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    assert cli.main(["keygen", "--alg", "ed25519", "--out", str(keys / "agg")]) == 0
    trace = tmp_path / "steady.csv"
    trace.write_text(f"t_s,watts\n0,{DEMAND_W}\n1,{DEMAND_W}\n")
    agent_cfg = write_agent_config(
        tmp_path, mqtt_broker, NODE, prefix=PREFIX, gpus=GPUS,
        products=[{"kind": "dr", "capacity_w": 800}],
        safety={"triggers": [], "release_rate_per_s": 1.0},
        facility={"settle_at": "it"},
        tracker={"period_s": 0.2, "reference_window_s": 1.0},
        auth={"mode": "ed25519", "require_signed_frequency": False,
              "keys": [{"kid": "agg", "file": str(keys / "agg.pub"), "topics": ["dispatch"]}]},
    )
    steady = yaml.safe_load(agent_cfg.read_text())
    steady["gpus"]["sim"].update(workload="trace", trace_csv=str(trace), noise_w=0.0)
    agent_cfg.write_text(yaml.safe_dump(steady))
    topics = {name: f"{PREFIX}/nodes/{NODE}/{name}" for name in ("status", "ack", "tracker")}
    with agent_processes() as procs, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, topics["status"]) as status, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, topics["ack"]) as acks, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, topics["tracker"]) as tracker, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, f"{PREFIX}/dispatch") as dispatch:
        procs.append(spawn_agent(agent_cfg, tmp_path / "agent.log"))
        status_wait(status, lambda s: s.get("online") is True
                    and abs(it_power(s) - NATURAL_W) < 30, "the node online at its draw")

        def latest_power() -> float:
            return it_power(json.loads(status.messages[-1].payload))

        def acked(dispatch_id: str) -> dict[str, Any] | None:
            for m in list(acks.messages):
                ack: dict[str, Any] = json.loads(m.payload)
                if ack.get("id") == dispatch_id:
                    return ack
            return None

        def dr_states(dispatch_id: str) -> list[str]:
            seen: list[str] = []
            for m in list(tracker.messages):
                for entry in json.loads(m.payload).get("dr", []):
                    if entry["id"] == dispatch_id and (not seen or seen[-1] != entry["state"]):
                        seen.append(entry["state"])
            return seen

        async def scenario() -> None:
            vtn = Vtn()
            await vtn.start()
            bridge_cfg = tmp_path / "openadr.yaml"
            bridge_cfg.write_text(yaml.safe_dump(bridge_mapping(
                mqtt_broker, vtn.url, PREFIX, tmp_path,
                vtn={"poll_s": 0.3},
                policy={"min_modification_interval_s": 1},
                mapping={"simple_levels": [{"level": 1, "reduction_w": 150},
                                           {"level": 2, "reduction_w": LEVEL_2_W},
                                           {"level": 3, "reduction_w": LEVEL_3_W}]},
                dispatch={"min_interval_s": 1.5},
                signing={"mode": "ed25519", "kid": "agg", "key_file": str(keys / "agg.key")},
                metrics={"port": 0})))
            with open(tmp_path / "bridge.log", "ab") as log:
                bridge = subprocess.Popen(
                    [sys.executable, "-m", "gridtao", "openadr", "--config", str(bridge_cfg),
                     "--log-level", "info"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            try:
                await _drive(vtn, bridge)
            finally:
                if bridge.poll() is None:
                    os.kill(bridge.pid, signal.SIGTERM)
                    for _ in range(200):
                        if bridge.poll() is not None:
                            break
                        await asyncio.sleep(0.05)
                await vtn.stop()
                if bridge.poll() is None:
                    bridge.kill()
            assert bridge.wait(10) == 0, (tmp_path / "bridge.log").read_text()[-3000:]

        async def _drive(vtn: Vtn, bridge: subprocess.Popen[bytes]) -> None:
            def alive(cond: Callable[[], bool]) -> Callable[[], bool]:
                def check() -> bool:
                    assert bridge.poll() is None, (tmp_path / "bridge.log").read_text()[-3000:]
                    return cond()
                return check

            await until(alive(lambda: vtn.registrations == ["site-a"]), "registration", 40)
            await until(alive(lambda: len(vtn.reports.get("it_power", [])) >= 2),
                        "usage reports before the event")
            # The node has the dispatch about 0.3 s after this, well before its 2 s ramp-in.
            start = time.time() + 4.0
            event_id = vtn.add_event(intervals=[(start, 40.0, 2)], ramp_s=2.0, recovery_s=1.0,
                                     target={"resource_id": RESOURCE})
            m0, m1 = f"oadr-{event_id}-m0", f"oadr-{event_id}-m1"
            await until(alive(lambda: (acked(m0) or {}).get("accepted") is True),
                        "the node accepting the level-2 event")
            assert acked(m0)["scheduled"] is True  # type: ignore[index]
            await until(alive(lambda: time.time() > start + 1
                              and latest_power() < NATURAL_W - LEVEL_2_W * 0.85),
                        "node power cut by the level-2 reduction")
            states = dr_states(m0)  # the node ramped in before the start, then held
            assert "ramping" in states and states.index("ramping") < states.index("active"), \
                states
            assert latest_power() > NATURAL_W - LEVEL_2_W * 1.25

            vtn.modify(event_id, 3)
            await until(alive(lambda: (acked(m1) or {}).get("accepted") is True),
                        "the node accepting the modification")
            await until(alive(lambda: latest_power() < NATURAL_W - LEVEL_3_W * 0.85),
                        "node power cut by the level-3 reduction")
            assert latest_power() > NATURAL_W - LEVEL_3_W * 1.25
            # The VTN's usage reports are the node's measured power: the cut shows in them.
            await until(alive(lambda: min(v for _, v in vtn.reports["it_power"])
                              < NATURAL_W - LEVEL_3_W * 0.85), "the cut in the usage reports")

            vtn.cancel(event_id)
            await until(alive(lambda: any(p.get("ref") == m1 for p in payloads(dispatch))),
                        "the release of the modification")
            await until(alive(lambda: latest_power() > NATURAL_W - 40),
                        "node power back after the cancellation")
            report_count = len(vtn.reports["it_power"])
            await until(alive(lambda: len(vtn.reports["it_power"]) > report_count + 1),
                        "usage reports after the event")
            assert [opt for e, opt in vtn.opts if e == event_id] == ["optIn"] * 3

            sent = payloads(dispatch)
            assert [(p["kind"], p["id"]) for p in sent] == [
                ("dr", m0), ("release", f"{m0}-release"), ("dr", m1),
                ("release", f"{m1}-release")]
            assert all(p["kid"] == "agg" and p["sig"] for p in sent)
            assert [wire_problems("Dispatch", p) for p in sent] == [[]] * 4
            assert (sent[0]["start_at"], sent[0]["duration_s"], sent[0]["ramp_s"],
                    sent[0]["recovery_s"], sent[0]["reduction_w"]) == (
                pytest.approx(start, abs=1e-3), 40.0, 2.0, 1.0, LEVEL_2_W)
            assert sent[2]["reduction_w"] == LEVEL_3_W
            assert vtn.reports["it_power"][-1][1] > NATURAL_W - 40  # and the recovery

        run_async(scenario)

    audit = tmp_path / "openadr-audit.jsonl"
    result = verify_files([audit])
    assert result.ok, result.reason
    kinds = [json.loads(line)["kind"] for line in audit.read_text().splitlines()]
    for kind in ("openadr_start", "openadr_registered", "openadr_decision",
                 "openadr_published", "openadr_node_ack", "openadr_cancelled", "openadr_stop"):
        assert kind in kinds, kind


def test_a_bad_bridge_configuration_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bridge.yaml"
    bad.write_text("vtn:\n  url: http://127.0.0.1:1/x\n  ven_name: a\npolicy:\n"
                   "  max_duration_s: -5\n")
    done = subprocess.run([sys.executable, "-m", "gridtao", "openadr", "--config", str(bad)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"gridtao: error: {bad}: policy.max_duration_s: must be "
                                   ">= 1, got -5")
    missing = subprocess.run([sys.executable, "-m", "gridtao", "openadr"], cwd=REPO,
                             capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items()
                                  if k != "GRIDTAO_OPENADR_CONFIG"})
    assert missing.returncode == 2 and "--config FILE is required" in missing.stderr
