"""`python -m gridtao --config FILE run` as a real process: serve, a signal, restore, offline.

Everything here is observed as the grid side would: acks and the retained status over MQTT,
and the process's exit status and log (tests/test_machine_gpus.py looks at the machine's
simulated GPUs themselves).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from broker import MosquittoBroker, Subscriber, publish

from gridtao.cli import main as cli
from gridtao.security import auth

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 30.0  # a cold interpreter start on a loaded 2-core machine
N = 4
CAP_W = 1200  # well under what 4 training H100s draw


def _payloads(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in list(sub.messages)]


def _wait(sub: Subscriber, pred: Any, what: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in _payloads(sub):
            if pred(p):
                return p
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; got {_payloads(sub)[-5:]}")


def write_config(broker: MosquittoBroker, tmp: Path, node: str, **extra: Any) -> Path:
    """The agent's YAML file (rewritten in place by a test that reloads it)."""
    cfg = {
        "gpus": {"backend": "sim", "sim": {"count": N}},
        "mqtt": {"port": broker.port, "node_id": node, "prefix": f"gridtao/proc-{node}",
                 "status_period_s": 0.1, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
    } | extra
    cfg_path = tmp / f"{node}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return cfg_path


@contextmanager
def agent_process(
    broker: MosquittoBroker, tmp: Path, node: str, **extra: Any
) -> Iterator[subprocess.Popen[bytes]]:
    cfg_path = write_config(broker, tmp, node, **extra)
    log_path = tmp / f"{node}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridtao", "--config", str(cfg_path), "--log-level", "info",
             "run"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _log(tmp: Path, node: str) -> str:
    return (tmp / f"{node}.log").read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_restores_limits_and_leaves_an_offline_status(
    mqtt_broker: MosquittoBroker, tmp_path: Path, sig: signal.Signals
) -> None:
    node = sig.name.lower()
    prefix = f"gridtao/proc-{node}"
    status_topic = f"{prefix}/nodes/{node}/status"
    ack_topic = f"{prefix}/nodes/{node}/ack"
    with Subscriber(mqtt_broker.host, mqtt_broker.port, status_topic) as status, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, ack_topic) as acks, \
            agent_process(mqtt_broker, tmp_path, node) as proc:
        first = _wait(status, lambda p: p.get("online") is True, "the agent's online status")
        assert first["node"] == node and len(first["gpus"]) == N
        assert all(g["limit_w"] == g["default_w"] for g in first["gpus"])

        dispatch = {"id": "p1", "kind": "cap", "node_w": CAP_W, "duration_s": 600}
        publish(mqtt_broker.host, mqtt_broker.port, f"{prefix}/dispatch",
                json.dumps(dispatch).encode())
        ack = json.loads(acks.wait(1, WAIT_S)[0].payload)
        assert ack["id"] == "p1" and ack["accepted"] is True
        _wait(
            status,
            lambda p: p.get("event") == "p1"
            and sum(g["limit_w"] for g in p["gpus"]) <= CAP_W + 0.01,
            "a status showing the cap",
        )

        os.kill(proc.pid, sig)
        assert proc.wait(WAIT_S) == 0, _log(tmp_path, node)
        final = _wait(status, lambda p: p.get("online") is False, "the offline status")
        assert final == {"node": node, "online": False, "restored": True}
        seen = _payloads(status)
        last_online = [p for p in seen[: seen.index(final)] if p.get("online")][-1]
        # Up to the signal the node was holding the cap.
        assert last_online["event"] == "p1"
        assert sum(g["limit_w"] for g in last_online["gpus"]) <= CAP_W + 0.01

    # What a client connecting later finds: the retained offline status.
    (retained,) = mqtt_broker.collect(status_topic, 1, timeout=WAIT_S)
    assert json.loads(retained.payload) == {"node": node, "online": False, "restored": True}
    log = _log(tmp_path, node)
    assert "limits restored" in log, log
    assert "could not restore" not in log, log
    assert "Traceback" not in log, log


def test_what_the_agent_writes_is_readable_by_its_user_alone(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    # Whatever umask it was started with (a container has no systemd unit to set one).
    node = "private"
    records = {"audit": {"path": str(tmp_path / "audit.jsonl")},
               "journal": {"path": str(tmp_path / "journal.json")}}
    previous = os.umask(0o022)
    try:
        with Subscriber(mqtt_broker.host, mqtt_broker.port,
                        f"gridtao/proc-{node}/nodes/{node}/status") as status, \
                agent_process(mqtt_broker, tmp_path, node, **records) as proc:
            _wait(status, lambda p: p.get("online") is True, "the agent's online status")
            for name in ("audit.jsonl", "journal.json"):
                mode = (tmp_path / name).stat().st_mode & 0o777
                assert mode & 0o077 == 0, f"{name}: mode {mode:o}"
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(WAIT_S) == 0, _log(tmp_path, node)
    finally:
        os.umask(previous)


def test_a_killed_agent_is_reported_offline_by_its_last_will(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    node = "killed"
    status_topic = f"gridtao/proc-{node}/nodes/{node}/status"
    with Subscriber(mqtt_broker.host, mqtt_broker.port, status_topic) as status, \
            agent_process(mqtt_broker, tmp_path, node) as proc:
        _wait(status, lambda p: p.get("online") is True, "the agent's online status")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
        final = _wait(status, lambda p: p.get("online") is False, "the last will")
        assert final == {"node": node, "online": False}


def _signing_auth(tmp: Path, kid: str) -> dict[str, Any]:
    return {"mode": "ed25519", "require_signed_frequency": False,
            "keys": [{"kid": kid, "file": str(tmp / f"{kid}.pub"), "topics": ["dispatch"]}],
            "replay_store": str(tmp / "replay.jsonl")}


def _sign(tmp: Path, kid: str, body: dict[str, Any]) -> bytes:
    key = auth.load_signing_key(tmp / f"{kid}.key", "ed25519")
    return auth.sign_payload(body | {"issued_at": time.time()}, key, kid, "ed25519")


def test_sighup_rotates_the_signing_key_and_keeps_the_event(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    node = "hup"
    prefix = f"gridtao/proc-{node}"
    for kid in ("old", "new"):
        assert cli.main(["keygen", "--alg", "ed25519", "--out", str(tmp_path / kid)]) == 0
    dispatch, host, port = f"{prefix}/dispatch", mqtt_broker.host, mqtt_broker.port
    with Subscriber(host, port, f"{prefix}/nodes/{node}/status") as status, \
            Subscriber(host, port, f"{prefix}/nodes/{node}/ack") as acks, \
            agent_process(mqtt_broker, tmp_path, node, auth=_signing_auth(tmp_path, "old")) as proc:
        _wait(status, lambda p: p.get("online") is True, "the agent's online status")
        cap = {"id": "p1", "kind": "cap", "node_w": CAP_W, "duration_s": 600}
        publish(host, port, dispatch, _sign(tmp_path, "old", cap))
        assert _wait(acks, lambda a: a["id"] == "p1", "p1's ack")["accepted"] is True

        def hup_until(line: str) -> str:
            os.kill(proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + WAIT_S
            while line not in _log(tmp_path, node) and time.monotonic() < deadline:
                time.sleep(0.05)
            return _log(tmp_path, node)

        # A key file that is not there: refused, named, and nothing changes.
        write_config(mqtt_broker, tmp_path, node, auth=_signing_auth(tmp_path, "missing"))
        log = hup_until("reload refused")
        assert "reload refused, nothing changed" in log and "missing.pub" in log, log
        write_config(mqtt_broker, tmp_path, node, auth=_signing_auth(tmp_path, "new"))
        log = hup_until("reloaded")
        assert "added new, removed old" in log, log

        end = {"kind": "release", "ref": "p1"}
        publish(host, port, dispatch,
                _sign(tmp_path, "old", end | {"id": "e-old"}))
        refused = _wait(acks, lambda a: a["id"] == "e-old", "the old key's refusal")
        assert refused["accepted"] is False and "unknown key id 'old'" in refused["reason"]
        # Still holding: the reload did not end the event or restore the limits.
        held = _wait(status, lambda p: p.get("event") == "p1", "a status with p1")
        assert sum(g["limit_w"] for g in held["gpus"]) <= CAP_W + 0.01
        publish(host, port, dispatch,
                _sign(tmp_path, "new", end | {"id": "e-new"}))
        assert _wait(acks, lambda a: a["id"] == "e-new", "the new key's ack")["accepted"] is True

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0, _log(tmp_path, node)
    assert "Traceback" not in _log(tmp_path, node)


def test_a_paused_agent_resumes_holding_its_event_without_a_safe_state(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """SIGSTOP for longer than the watchdog's timeout (a VM pause), then SIGCONT: the whole
    process was paused, the controller with it, so no safe state trips, the cap in force is
    still held, and the agent keeps serving."""
    node = "paused"
    prefix = f"gridtao/proc-{node}"
    status_topic = f"{prefix}/nodes/{node}/status"
    with Subscriber(mqtt_broker.host, mqtt_broker.port, status_topic) as status, \
            Subscriber(mqtt_broker.host, mqtt_broker.port, f"{prefix}/nodes/{node}/ack") as acks, \
            agent_process(mqtt_broker, tmp_path, node,
                          safety={"watchdog_timeout_s": 1.0, "safe_state": "minimum"}
                          ) as proc:
        _wait(status, lambda p: p.get("online") is True, "the agent's online status")
        publish(mqtt_broker.host, mqtt_broker.port, f"{prefix}/dispatch", json.dumps(
            {"id": "held", "kind": "cap", "node_w": CAP_W, "duration_s": 600}).encode())
        assert json.loads(acks.wait(1, WAIT_S)[0].payload)["accepted"] is True
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(3.0)  # three watchdog timeouts
        os.kill(proc.pid, signal.SIGCONT)
        seen = len(status.messages)
        time.sleep(3.0)  # let it run again for a while
        after = _payloads(status)[seen:]
        assert after and all(p.get("event") == "held" for p in after if p.get("online"))
        last = after[-1]
        assert sum(g["limit_w"] for g in last["gpus"]) <= CAP_W + 0.01
        # Not every GPU at its minimum: the safe state never tripped.
        assert any(g["limit_w"] > g["min_w"] + 1 for g in last["gpus"]), last
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0, _log(tmp_path, node)
    log = _log(tmp_path, node)
    # Which thread runs first on resume is the scheduler's choice: either tier 1 beats first,
    # or the watchdog notices it was paused too ("was paused for"); never a safe state.
    assert "entering safe state" not in log, log
    assert "Traceback" not in log, log
