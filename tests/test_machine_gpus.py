"""Real agent processes on the machine's simulated GPUs, checked from outside the agent.

The GPUs are the machine's (``gpus.sim.device``), so the test opens them itself, as an operator
would with ``nvidia-smi``: what a SIGKILLed agent leaves behind, what a restart does with it,
what stopping restores, and an operator's own limit, which the agent must neither fight nor undo.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from agentproc import REPO, WAIT_S, agent_processes, spawn_agent, status_wait, write_agent_config
from broker import MosquittoBroker, Subscriber, publish
from waiting import wait_until

from gridtao.clock import MonotonicClock
from gridtao.config.agent import SimConfig
from gridtao.config.paths import sim_device_path
from gridtao.gpu import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.records.audit_verify import read_records

N = 4
W = 1000
DEFAULT_MW = 700 * W
CAP_W = 1200  # well under what 4 training H100s draw


def _config(tmp: Path, broker: MosquittoBroker, node: str, **extra: Any) -> Path:
    return write_agent_config(tmp, broker, node, prefix=f"gridtao/mg-{node}", gpus=N, **extra)


def _gpus() -> NvmlBackend:
    """The machine's GPUs as any other process sees them."""
    return NvmlBackend(SimNvml.from_config(SimConfig(count=N), MonotonicClock(),
                                           device_path=sim_device_path("default")))


def _limits(gpus: NvmlBackend) -> list[int]:
    return [gpus.enforced_limit_mw(i) for i in range(N)]


def _dispatch(broker: MosquittoBroker, node: str, body: dict[str, object]) -> None:
    publish(broker.host, broker.port, f"gridtao/mg-{node}/dispatch", json.dumps(body).encode())


def test_a_sigkilled_agent_leaves_the_gpus_capped_and_its_restart_holds_then_restores(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    node = "mg-kill"
    cfg = _config(tmp_path, mqtt_broker, node)
    log = tmp_path / "agent.log"
    with Subscriber(mqtt_broker.host, mqtt_broker.port,
                    f"gridtao/mg-{node}/nodes/{node}/status") as status, agent_processes() as procs:
        procs.append(spawn_agent(cfg, log))
        status_wait(status, lambda p: p.get("online") is True, "the first run online")
        _dispatch(mqtt_broker, node, {"id": "k1", "kind": "cap", "node_w": CAP_W,
                                      "duration_s": 600})
        status_wait(status, lambda p: p.get("event") == "k1", "the cap")
        gpus = _gpus()
        wait_until(lambda: sum(_limits(gpus)) <= CAP_W * W, "the cap on the GPUs",
                   timeout_s=WAIT_S)
        time.sleep(0.5)  # more than a journal heartbeat
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        # From outside: the agent is gone, its caps are not.
        time.sleep(0.5)
        assert sum(_limits(gpus)) <= CAP_W * W
        assert sum(gpus.average_power_mw(i) for i in range(N)) <= (CAP_W + 20) * W
        mark = len(status.messages)
        procs.append(spawn_agent(cfg, log))
        status_wait(status, lambda p: p.get("online") is True and p.get("event") == "k1",
                    "the restarted run holding k1 again", mark)
        assert sum(_limits(gpus)) <= CAP_W * W
        os.kill(procs[1].pid, signal.SIGTERM)
        assert procs[1].wait(WAIT_S) == 0
        assert _limits(gpus) == [DEFAULT_MW] * N  # stopping put back what the first run found
    text = log.read_text(errors="replace")
    assert "held events again" in text and "Traceback" not in text, text


def test_a_restart_after_the_crash_bound_releases_the_gpus_at_once(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    node = "mg-bound"
    bound_s = 2.0
    cfg = _config(tmp_path, mqtt_broker, node,
                  journal={"enabled": True, "path": str(tmp_path / "journal.json"),
                           "heartbeat_s": 0.2, "max_capped_after_crash_s": bound_s})
    log = tmp_path / "agent.log"
    with Subscriber(mqtt_broker.host, mqtt_broker.port,
                    f"gridtao/mg-{node}/nodes/{node}/status") as status, agent_processes() as procs:
        procs.append(spawn_agent(cfg, log))
        status_wait(status, lambda p: p.get("online") is True, "the first run online")
        _dispatch(mqtt_broker, node, {"id": "b1", "kind": "cap", "node_w": CAP_W,
                                      "duration_s": 600})
        gpus = _gpus()
        wait_until(lambda: sum(_limits(gpus)) <= CAP_W * W, "the cap", timeout_s=WAIT_S)
        time.sleep(0.5)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        time.sleep(bound_s + 0.5)
        assert sum(_limits(gpus)) <= CAP_W * W  # nobody released them meanwhile
        procs.append(spawn_agent(cfg, log))
        wait_until(lambda: _limits(gpus) == [DEFAULT_MW] * N,
                   "the restarted run restoring the limits", timeout_s=WAIT_S)
        mark = len(status.messages)
        status_wait(status, lambda p: p.get("online") is True and p.get("event") is None,
                    "no event held", mark)
        os.kill(procs[1].pid, signal.SIGTERM)
        assert procs[1].wait(WAIT_S) == 0
    kinds = [r["kind"] for r in read_records([tmp_path / "audit.jsonl"])]
    assert "recovery" in kinds


def test_an_operators_limit_is_adopted_not_fought_nor_undone(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    node = "mg-operator"
    cfg = _config(tmp_path, mqtt_broker, node)
    log = tmp_path / "agent.log"
    operator_mw = 500 * W
    with Subscriber(mqtt_broker.host, mqtt_broker.port,
                    f"gridtao/mg-{node}/nodes/{node}/status") as status, agent_processes() as procs:
        procs.append(spawn_agent(cfg, log))
        status_wait(status, lambda p: p.get("online") is True, "the agent online")
        gpus = _gpus()
        gpus.set_limit_mw(0, operator_mw)  # nvidia-smi -i 0 -pl 500, in another shell
        status_wait(status, lambda p: p.get("online") is True
                    and p["gpus"][0]["limit_w"] == 500.0, "the agent seeing the new limit")
        time.sleep(1.5)  # several read-back rounds: the agent writes nothing back
        assert gpus.enforced_limit_mw(0) == operator_mw
        # An event caps under it; its release goes back to the operator's limit, not higher.
        _dispatch(mqtt_broker, node, {"id": "o1", "kind": "shed", "fraction": 0.3,
                                      "duration_s": 600})
        status_wait(status, lambda p: p.get("event") == "o1", "the shed")
        assert gpus.enforced_limit_mw(0) <= operator_mw
        _dispatch(mqtt_broker, node, {"id": "o1-end", "kind": "release", "ref": "o1"})
        wait_until(lambda: _limits(gpus) == [operator_mw] + [DEFAULT_MW] * (N - 1),
                   "the release back to the operator's limit", timeout_s=WAIT_S)
        os.kill(procs[0].pid, signal.SIGTERM)
        assert procs[0].wait(WAIT_S) == 0
        assert _limits(gpus) == [operator_mw] + [DEFAULT_MW] * (N - 1)  # not undone at stop
    records = read_records([tmp_path / "audit.jsonl"])
    (change,) = [r["fields"] for r in records if r["kind"] == "limit_changed_outside"]
    assert change["gpu"] == 0 and change["from_mw"] == DEFAULT_MW
    assert change["to_mw"] == operator_mw
    assert "changed outside the agent" in log.read_text(errors="replace")


def test_gridtao_gpus_in_another_shell_agrees_with_the_agent(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    node = "mg-look"
    cfg = _config(tmp_path, mqtt_broker, node)
    log = tmp_path / "agent.log"
    with Subscriber(mqtt_broker.host, mqtt_broker.port,
                    f"gridtao/mg-{node}/nodes/{node}/status") as status, agent_processes() as procs:
        procs.append(spawn_agent(cfg, log))
        status_wait(status, lambda p: p.get("online") is True, "the agent online")
        _dispatch(mqtt_broker, node, {"id": "l1", "kind": "cap", "node_w": CAP_W,
                                      "duration_s": 600})
        status_wait(status, lambda p: p.get("event") == "l1"
                    and sum(g["limit_w"] for g in p["gpus"]) <= CAP_W, "the cap")
        time.sleep(1.0)  # tier 1 settles; read-backs every ~0.5 s
        mark = len(status.messages)
        shown = subprocess.run([sys.executable, "-m", "gridtao", "--config", str(cfg), "gpus",
                                "--json"], cwd=REPO, capture_output=True, text=True,
                               timeout=60, check=False)
        assert shown.returncode == 0, shown.stderr
        rows = json.loads(shown.stdout)
        reported = status_wait(status, lambda p: p.get("online") is True, "a fresh status",
                                mark)
        # Limits: what the GPUs enforce, seen alike from both sides (tier 1 may have moved a
        # limit by a few watts between the two looks).
        for row, gpu in zip(rows, reported["gpus"], strict=True):
            assert abs(row["limit_w"] - gpu["limit_w"]) <= 25.0
        assert sum(r["limit_w"] for r in rows) <= CAP_W + 0.01
        # Power: both under the cap, from one set of GPUs.
        assert sum(r["avg_power_w"] for r in rows) <= CAP_W + 20
        os.kill(procs[0].pid, signal.SIGTERM)
        assert procs[0].wait(WAIT_S) == 0


def test_a_second_agent_on_the_same_gpus_is_refused_whatever_its_node_id(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    node = "mg-one"
    cfg = _config(first, mqtt_broker, node)
    other = _config(second, mqtt_broker, "mg-two")
    with Subscriber(mqtt_broker.host, mqtt_broker.port,
                    f"gridtao/mg-{node}/nodes/{node}/status") as status, agent_processes() as procs:
        procs.append(spawn_agent(cfg, first / "agent.log"))
        status_wait(status, lambda p: p.get("online") is True, "the agent online")
        refused = subprocess.run([sys.executable, "-m", "gridtao", "--config", str(other),
                                  "run"], cwd=REPO, capture_output=True, text=True,
                                 timeout=60, check=False)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gridtao: error: GPU 0 ("), lines
        assert f"another gridtao agent on this machine (pid {procs[0].pid}, node {node})" \
            in lines[0]
        # The refused agent recorded nothing and touched nothing.
        assert not (second / "audit.jsonl").exists() and not (second / "journal.json").exists()
        assert procs[0].poll() is None
        os.kill(procs[0].pid, signal.SIGTERM)
        assert procs[0].wait(WAIT_S) == 0
    # Once the first has stopped, the GPUs are free for the second.
    with agent_processes() as procs:
        procs.append(spawn_agent(other, second / "agent.log"))
        wait_until(lambda: "agent mg-two up:" in (second / "agent.log").read_text(),
                   "the second agent up", timeout_s=WAIT_S)
        os.kill(procs[0].pid, signal.SIGTERM)
        assert procs[0].wait(WAIT_S) == 0


def test_a_start_that_fails_late_lets_the_gpus_and_the_journal_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A constructor that fails after claiming the GPUs and locking the journal (here the
    planner's part) gives both back: the next agent on the same GPUs and node id starts."""
    import gridtao.app.compose as compose_module
    from gridtao.app.agent import Agent, AgentOptions
    from gridtao.config.agent import config_from_mapping

    cfg = config_from_mapping({
        "gpus": {"backend": "sim", "sim": {"count": N}},
        "mqtt": {"port": 1, "node_id": "late"},
        "metrics": {"enabled": False},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "journal": {"path": str(tmp_path / "journal.json")},
    }, source="<test late failure>")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("the planner's history could not be opened")

    with monkeypatch.context() as patched:
        patched.setattr(compose_module, "NodePlanning", broken)
        with pytest.raises(OSError, match="history could not be opened"):
            Agent(cfg, options=AgentOptions(serve_metrics=False))
    again = Agent(cfg, options=AgentOptions(serve_metrics=False))
    again.close()
