"""Signed site meter readings: the coordinator takes a reading on ``{prefix}/meter`` in signed
mode only when a key for ``meter`` signed it, fresh and later than the last from that key;
every refusal is counted and changes nothing. In virtual time, keys made at test time."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import REPO, WAIT_S, agent_processes
from broker import MosquittoBroker, Subscriber
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from gridtao.cli import main as cli
from gridtao.clock import VirtualClock
from gridtao.config.agent import config_from_mapping
from gridtao.security.auth import Verifier, sign_payload
from gridtao.site.coordinator import SiteCoordinator

PREFIX = "p"
METER = f"{PREFIX}/meter"
STALE_S = 10.0  # site.meter.stale_s: a signed reading's freshness window


@dataclass
class Rig:
    """A signed-mode site (ed25519) in virtual time: ``gw`` may sign meter readings only,
    ``agg`` has the default topics (dispatch and frequency, not meter)."""

    clock: VirtualClock
    c: SiteCoordinator
    keys: dict[str, Ed25519PrivateKey]

    def reading(self, w: float, *, dt: float = 0.0, kid: str | None = "gw",
                key: str | None = None) -> bytes:
        body = {"t": self.clock.wall() + dt, "w": w}
        if kid is None:
            return json.dumps(body).encode()
        return sign_payload(body, self.keys[key or kid], kid, "ed25519")

    def send(self, payload: bytes) -> None:
        self.c.on_message(METER, payload)

    def refused(self, reason: str) -> int:
        return self.c.counts.get(f"meter_rejected:{reason}", 0)

    def node(self, draw_w: float) -> None:
        """One node's status: the IT power a reading is set against."""
        body = {"node": "n1", "online": True, "t": self.clock.wall(), "event": None,
                "gpus": [], "capacity": {"draw_w": draw_w, "floor_w": 300.0,
                                         "deliverable_w": draw_w - 300.0, "enrolled_w": 0.0}}
        self.c.on_message(f"{PREFIX}/nodes/n1/status", json.dumps(body).encode())


def _public(tmp_path: Path, name: str, key: Ed25519PrivateKey) -> str:
    path = tmp_path / f"{name}.pub"
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(path)


def _rig(tmp_path: Path, *, wall: float = 1_763_900_000.0, **meter: Any) -> Rig:
    keys = {"gw": Ed25519PrivateKey.generate(), "agg": Ed25519PrivateKey.generate()}
    config = config_from_mapping({
        "mqtt": {"prefix": PREFIX},
        "auth": {"mode": "ed25519", "max_future_s": 2.0, "keys": [
            {"kid": "gw", "file": _public(tmp_path, "gw", keys["gw"]), "topics": ["meter"]},
            {"kid": "agg", "file": _public(tmp_path, "agg", keys["agg"])}]},
        "site": {"nodes": ["n1"], "meter": {"stale_s": STALE_S, "tau_s": 0.0} | meter}})
    clock = VirtualClock(wall_offset=wall)
    coordinator = SiteCoordinator(config, clock=clock, publish=lambda *_: None,
                                  sign=lambda b: json.dumps(b).encode(),
                                  verifier=Verifier.from_config(config.auth,
                                                                source=config.source))
    rig = Rig(clock, coordinator, keys)
    rig.node(1000.0)
    return rig


def test_signed_mode_refuses_an_unsigned_reading_and_uses_a_signed_one(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    wall = rig.clock.wall()
    rig.send(rig.reading(2000.0, kid=None))  # forged: twice the model's meter for 1 kW of IT
    assert rig.c.meter.last is None and rig.c.meter.ratio(wall) == 1.0
    assert rig.refused("unsigned") == 1 and rig.c.counts["meter_rejected"] == 1
    modelled = rig.c.meter.model.steady_meter_w(1000.0)
    rig.send(rig.reading(modelled * 1.05))
    assert rig.c.meter.last is not None and rig.c.meter.last.w == pytest.approx(modelled * 1.05)
    # the feedback moves: the site's budgets at the meter are corrected by the reading
    assert rig.c.meter.ratio(wall) == pytest.approx(1.05)
    assert rig.c.meter.model_error(wall) == pytest.approx(0.05)
    assert rig.c.counts["meter_rejected"] == 1


def test_a_reading_signed_by_a_key_not_scoped_to_meter_changes_nothing(tmp_path: Path) -> None:
    """The aggregator's key (default topics) signs dispatches, not the site's meter."""
    rig = _rig(tmp_path)
    rig.send(rig.reading(5000.0, kid="agg"))
    assert rig.refused("kid_not_allowed") == 1
    rig.send(rig.reading(5000.0, kid="stranger", key="agg"))
    assert rig.refused("unknown_kid") == 1
    tampered = json.loads(rig.reading(1300.0))
    tampered["w"] = 5000.0
    rig.send(json.dumps(tampered).encode())
    assert rig.refused("bad_signature") == 1
    assert rig.c.meter.last is None and rig.c.meter.model_error(rig.clock.wall()) is None


def test_a_replayed_or_older_reading_is_refused(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    first = rig.reading(1300.0)
    rig.send(first)
    rig.clock.advance(1.0)
    rig.send(first)  # captured and sent again
    rig.send(rig.reading(9000.0, dt=-1.5))  # signed, fresh, but older than the last taken
    assert rig.refused("replayed") == 2
    assert rig.c.meter.last is not None and rig.c.meter.last.w == 1300.0
    rig.send(rig.reading(1310.0))
    assert rig.c.meter.last.w == 1310.0 and rig.c.counts["meter_rejected"] == 2


def test_a_stale_or_future_dated_reading_is_refused(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    rig.send(rig.reading(9000.0, dt=-STALE_S - 0.5))
    assert rig.refused("stale") == 1
    rig.send(rig.reading(9000.0, dt=2.5))  # beyond auth.max_future_s
    assert rig.refused("future") == 1
    assert rig.c.meter.last is None
    rig.send(rig.reading(1300.0, dt=-STALE_S + 0.5))  # inside the window: taken
    assert rig.c.meter.last is not None and rig.c.meter.last.w == 1300.0


def test_a_reading_too_far_ahead_to_be_used_never_blocks_the_next(tmp_path: Path) -> None:
    """A reading ahead of the site's clock by more than ``stale_s`` (here under
    ``auth.max_future_s``) would never be used: it is refused before its time becomes the
    key's last, so the gateway's next, on-time reading is taken."""
    rig = _rig(tmp_path, stale_s=1.0)
    rig.send(rig.reading(9000.0, dt=1.5))
    assert rig.refused("future") == 1 and rig.c.meter.last is None
    rig.send(rig.reading(1300.0))
    assert rig.c.meter.last is not None and rig.c.meter.last.w == 1300.0
    assert rig.refused("replayed") == 0


def test_refusal_lines_are_paced_per_reason_on_the_monotonic_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A flood of one reason never hides another's line, and a wall clock set back an hour
    silences nothing: the pace is kept on the monotonic clock."""
    from gridtao.site.meterauth import LOG_INTERVAL_S

    rig = _rig(tmp_path)
    gate, wall = rig.c.meter_gate, rig.clock.wall()
    tampered = json.loads(rig.reading(1300.0))
    tampered["w"] = 5000.0
    forged = json.dumps(tampered).encode()
    with caplog.at_level(logging.WARNING, logger="gridtao.site"):
        for k in range(130):  # junk every second, a forged reading every 10 s
            assert gate.admit(b'{"t": 1, "w": "x"}', wall + k, float(k)) is None
            if k % 10 == 0:
                assert gate.admit(forged, wall + k, float(k)) is None
        lines = [r.getMessage() for r in caplog.records]
        assert sum("bad signature" in m for m in lines) == 3  # at 0, 60 and 120 s
        caplog.clear()
        # The wall clock steps back an hour; the monotonic clock goes on.
        for k in range(130, 260, 10):
            assert gate.admit(forged, wall - 3600.0 + k, float(k)) is None
        assert sum("meter reading refused" in r.getMessage() for r in caplog.records) == 2
    assert LOG_INTERVAL_S == 60.0


def test_unsigned_readings_may_be_allowed_but_signed_ones_are_still_checked(
    tmp_path: Path,
) -> None:
    rig = _rig(tmp_path, require_signed=False)
    rig.send(rig.reading(1300.0, kid=None))
    assert rig.c.meter.last is not None and rig.c.meter.last.w == 1300.0
    rig.send(rig.reading(9000.0, dt=0.1, kid="agg"))
    tampered = json.loads(rig.reading(1400.0, dt=0.2))
    tampered["w"] = 9000.0
    rig.send(json.dumps(tampered).encode())
    assert rig.refused("kid_not_allowed") == 1 and rig.refused("bad_signature") == 1
    assert rig.c.meter.last.w == 1300.0


def test_refusals_are_exported_and_logged_at_a_bounded_rate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from gridtao.site.meterauth import LOG_INTERVAL_S
    from gridtao.site.metrics import register

    rig = _rig(tmp_path)
    registry = CollectorRegistry()
    register(rig.c, registry)
    with caplog.at_level(logging.WARNING, logger="gridtao.site"):
        for _ in range(500):
            rig.send(rig.reading(9000.0, kid=None))
        rig.send(b'{"t": 1, "w": "high"}')  # another reason: a line of its own at once
        rig.clock.advance(LOG_INTERVAL_S)
        rig.send(rig.reading(9000.0, kid="agg"))
        rig.send(rig.reading(9000.0, kid=None))
    lines = [r.getMessage() for r in caplog.records if "meter reading refused" in r.getMessage()]
    assert len(lines) == 4 and all(r.exc_info is None for r in caplog.records)
    assert "unsigned" in lines[0] and "more refused" not in lines[0]
    assert "field 'w' must be a number" in lines[1]
    assert "may not sign meter" in lines[2]
    assert "unsigned" in lines[3] and "499 more refused for the same reason" in lines[3]

    def value(reason: str) -> float | None:
        return registry.get_sample_value("gridtao_site_meter_rejected_total",
                                         {"reason": reason})

    assert value("unsigned") == 501 and value("malformed") == 1
    assert value("kid_not_allowed") == 1 and value("replayed") == 0


def test_gridtao_sign_topic_meter_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = _rig(tmp_path, wall=time.time())
    key = tmp_path / "gw.key"
    key.write_bytes(rig.keys["gw"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    monkeypatch.setattr("sys.stdin", io.StringIO('{"w": 1300.5}'))
    assert cli.main(["sign", "--key", str(key), "--kid", "gw", "--topic", "meter", "-"]) == 0
    signed = capsys.readouterr().out
    assert abs(json.loads(signed)["t"] - time.time()) < 60  # stamped as it was signed
    rig.send(signed.strip().encode())
    assert rig.c.meter.last is not None and rig.c.meter.last.w == 1300.5
    assert rig.c.counts.get("meter_rejected", 0) == 0


def _wait_status(sub: Subscriber, start: int, what: str, pred: Any) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for m in list(sub.messages)[start:]:
            if m.topic == f"{PREFIX}/site/status" and pred(body := json.loads(m.payload)):
                return dict(body)
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_simulated_meter_signs_its_readings_for_a_signed_site(
    mqtt_broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`gridtao site` in signed mode over a real broker: the simulated meter's unsigned
    readings are refused, its readings signed with --key/--kid are used."""
    assert cli.main(["keygen", "--out", str(tmp_path / "gw")]) == 0
    capsys.readouterr()
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({
        "mqtt": {"port": mqtt_broker.port, "prefix": PREFIX, "reconnect_min_s": 0.05},
        "metrics": {"enabled": False},
        "auth": {"mode": "ed25519", "keys": [{"kid": "gw", "file": "gw.pub",
                                              "topics": ["meter"]}]},
        "site": {"id": "s", "status_period_s": 0.25, "node_stale_s": 2.0}}))
    gridtao = [sys.executable, "-m", "gridtao", "--config", str(site)]
    subprocess.run([*gridtao, "sim", "--device", "mtr", "create"], cwd=REPO, check=True,
                   capture_output=True, timeout=WAIT_S)
    meter = [*gridtao, "sim", "meter", "--devices", "mtr", "--period", "0.2"]
    with Subscriber(mqtt_broker.host, mqtt_broker.port, f"{PREFIX}/#") as sub, \
            agent_processes() as procs, open(tmp_path / "out.log", "ab") as log:
        procs.append(subprocess.Popen([*gridtao, "site"], cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT))
        _wait_status(sub, 0, "the site's status", lambda b: b.get("online") is True)
        procs.append(unsigned := subprocess.Popen(meter, cwd=REPO, stdout=log,
                                                  stderr=subprocess.STDOUT))
        deadline = time.monotonic() + WAIT_S
        while sum(m.topic == METER for m in list(sub.messages)) < 10:
            assert time.monotonic() < deadline, "the unsigned meter never published"
            time.sleep(0.05)
        seen = len(sub.messages)
        _wait_status(sub, seen, "a status after the unsigned readings", lambda b: True)
        unsigned.terminate()
        unsigned.wait(WAIT_S)
        statuses = [json.loads(m.payload) for m in list(sub.messages)
                    if m.topic == f"{PREFIX}/site/status"]
        assert all(b.get("meter_w") is None for b in statuses)
        start = len(sub.messages)
        procs.append(subprocess.Popen([*meter, "--key", str(tmp_path / "gw.key"), "--kid",
                                       "gw"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        status = _wait_status(sub, start, "the signed readings used",
                              lambda b: b.get("meter_w") is not None)
        assert status["meter_w"] > 0
    signed = [json.loads(m.payload) for m in list(sub.messages)[start:] if m.topic == METER]
    assert signed and all(r["kid"] == "gw" and "sig" in r for r in signed)
    assert "meter reading refused: auth: unsigned" in (tmp_path / "out.log").read_text()
