"""Fuzzing: the wire parser alone (random bytes, structured JSON, mutated valid messages), and
the whole agent as a real process behind a real broker under thousands of generated payloads.

Properties: the parser returns a valid message or raises ``MessageRejected`` (nothing else); the
agent stays up, acks every dispatch exactly once, rejects what the parser rejects, changes no
limit for a rejected message, keeps its memory bounded, and still acts on a valid dispatch.
The fast variants run in ``make test``; ``make soak`` (``-m soak``) runs the long ones.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from broker import MosquittoBroker, Subscriber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridtao.records.audit_verify import read_records, verify_files
from gridtao.transport.localbroker import Publisher
from gridtao.wire import messages as wire

REPO = Path(__file__).resolve().parent.parent
MAX_BYTES = 4096
N = 2
DEFAULT_W = 700.0
HARMLESS_HZ = 49.8  # above every default trigger level plus its hysteresis
START_WAIT_S = 40.0  # a cold interpreter start on a loaded 2-core machine
WAIT_S = 30.0

# ---- strategies ------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
numbers = (
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20)
    | st.sampled_from([0, 1, -1, 0.5, 1e-300, 5e10, 1e999, 49.7, 50.0, 700]) | json_values
)
ids = st.text(max_size=140) | json_values
dispatch_dicts = st.fixed_dictionaries({}, optional={
    "id": ids,
    "kind": st.sampled_from(["shed", "cap", "release", "dr", "boost", ""]) | json_values,
    "fraction": numbers, "node_w": numbers, "duration_s": numbers, "ref": ids,
    "issued_at": numbers, "sig": json_values, "kid": json_values, "extra": json_values,
})
frequency_dicts = st.fixed_dictionaries({}, optional={
    "t": numbers, "hz": numbers, "sig": json_values, "extra": json_values,
})

VALID = [
    b'{"id": "v1", "kind": "shed", "fraction": 0.3, "duration_s": 30, "issued_at": 1763900000}',
    b'{"id": "v2", "kind": "cap", "node_w": 3000, "duration_s": 600}',
    b'{"id": "v3", "kind": "release", "ref": "v1"}',
    b'{"t": 1763900000.12, "hz": 49.68}',
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message with a few bytes flipped, inserted or deleted."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert" or not data:
            data[pos:pos] = bytes([draw(st.integers(0, 255))])
        elif op == "flip":
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        else:
            del data[min(pos, len(data) - 1)]
    return bytes(data)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


payloads = st.one_of(
    st.binary(max_size=300),
    dispatch_dicts.map(_dumps),
    frequency_dicts.map(_dumps),
    json_values.map(_dumps),
    mutated(),
    st.sampled_from([b"[" * 5000, b'{"id": "big", "pad": "' + b"x" * 5000 + b'"}',
                     b"\xff\xfe{}", b"", b"null", b'{"id": "\\ud800"}']),
)

FAST = settings(max_examples=300, deadline=None, database=None, derandomize=True)
SOAK = settings(max_examples=20_000, deadline=None, database=None)

# ---- the parser alone ------------------------------------------------------------------------


def _check_dispatch(payload: bytes) -> None:
    try:
        msg = wire.parse_dispatch(payload, max_bytes=MAX_BYTES)
    except wire.MessageRejected as e:
        assert isinstance(e.reason, str) and e.reason
        return
    data = json.loads(payload)  # accepted: it was a JSON object, and the result agrees with it
    assert isinstance(data, dict) and data["kind"] == type(msg).KIND and msg.id == data["id"]
    assert isinstance(msg.id, str) and 0 < len(msg.id) <= wire.ID_MAX_CHARS
    for name in ("fraction", "node_w", "duration_s", "issued_at"):
        value = getattr(msg, name, None)
        if value is not None:
            assert isinstance(value, float) and math.isfinite(value)
            assert value == data[name]
    if isinstance(msg, wire.ShedDispatch):
        assert 0 < msg.fraction <= 1 and 0 < msg.duration_s <= wire.DURATION_MAX_S
    elif isinstance(msg, wire.CapDispatch):
        assert 0 < msg.node_w <= wire.NODE_W_MAX


def _check_frequency(payload: bytes) -> None:
    try:
        sample = wire.parse_frequency(payload, max_bytes=MAX_BYTES)
    except wire.MessageRejected as e:
        assert e.reason
        return
    assert wire.HZ_MIN <= sample.hz <= wire.HZ_MAX and math.isfinite(sample.t) and sample.t >= 0


@FAST
@given(payloads)
def test_parser_accepts_or_rejects_cleanly(payload: bytes) -> None:
    _check_dispatch(payload)
    _check_frequency(payload)


@FAST
@given(dispatch_dicts)
def test_rejections_name_the_event_when_they_can(data: dict[str, Any]) -> None:
    try:
        wire.parse_dispatch(_dumps(data), max_bytes=MAX_BYTES)
    except wire.MessageRejected as e:
        try:
            valid_json = len(json.dumps(data, allow_nan=False)) <= MAX_BYTES
        except ValueError:  # NaN or Infinity somewhere: not JSON, nothing can be read
            valid_json = False
        if valid_json and isinstance(data.get("id"), str):
            assert e.event_id == data["id"]
        else:
            assert e.event_id is None


def test_deep_nesting_is_rejected_even_without_a_size_limit() -> None:
    with pytest.raises(wire.MessageRejected, match="nested too deeply"):
        wire.parse_dispatch(b"[" * 200_000, max_bytes=10**6)


@pytest.mark.soak
@pytest.mark.timeout(900)
@SOAK
@given(payloads)
def test_parser_soak(payload: bytes) -> None:
    _check_dispatch(payload)
    _check_frequency(payload)


# ---- the agent process under a flood ---------------------------------------------------------


def _harmless(topic: str, payload: bytes) -> bool:
    """True when the agent must reject ``payload`` (or, for a frequency sample above every
    trigger level, accept it without acting): nothing here may move a limit."""
    if topic == "dispatch":
        try:
            wire.parse_dispatch(payload, max_bytes=MAX_BYTES)
        except wire.MessageRejected:
            return True
        return False
    try:
        sample = wire.parse_frequency(payload, max_bytes=MAX_BYTES)
    except wire.MessageRejected:
        return True
    return sample.hz >= HARMLESS_HZ


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    broker: MosquittoBroker
    prefix: str
    node: str
    audit: Path
    log: Path

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    @property
    def acks_topic(self) -> str:
        return f"{self.prefix}/nodes/{self.node}/ack"

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/nodes/{self.node}/status"


@contextmanager
def agent_process(broker: MosquittoBroker, tmp: Path, node: str) -> Iterator[AgentProcess]:
    prefix = f"gridtao/fuzz-{node}"
    cfg = {
        "gpus": {"backend": "sim", "sim": {"count": N}},
        "mqtt": {"port": broker.port, "node_id": node, "prefix": prefix,
                 "status_period_s": 0.1, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
        # The rate limits and the reject-ack budget have their own tests: here every payload
        # must reach the parser, and every refusal is acked (the batches wait for the acks).
        "limits": {"dispatch_rate_per_s": 10_000, "dispatch_burst": 100_000,
                   "frequency_rate_per_s": 100_000, "frequency_burst": 100_000,
                   "min_event_interval_s": 0, "reject_ack_burst": 1_000_000,
                   "reject_record_burst": 1_000_000},
        "audit": {"enabled": True, "path": str(tmp / "audit.jsonl"), "fsync": "never",
                  "rotate_bytes": 4 * 1024 * 1024},
    }
    path = tmp / "fuzz.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    log = tmp / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridtao", "--config", str(path), "run"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        yield AgentProcess(proc, broker, prefix, node, tmp / "audit.jsonl", log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Flood:
    """Sends generated payloads to the agent and checks each batch."""

    def __init__(self, agent: AgentProcess, acks: Subscriber, status: Subscriber) -> None:
        self.agent = agent
        self.acks = acks
        self.status = status
        self.pub = Publisher(agent.broker.host, agent.broker.port)
        self.dispatches = 0
        self.frequencies = 0
        self.batches = 0

    def send(self, batch: list[tuple[str, bytes]]) -> None:
        for topic, payload in batch:
            qos = 1 if topic == "dispatch" else 0
            self.pub.send(self.agent.topic(topic), payload, qos=qos)
            if topic == "dispatch":
                self.dispatches += 1
            else:
                self.frequencies += 1
        # A last invalid dispatch with a known id: its ack means the batch was handled.
        self.batches += 1
        marker = f"end-of-batch-{self.batches}"
        self.pub.send(self.agent.topic("dispatch"), _dumps({"id": marker}), qos=1)
        self.dispatches += 1
        acks = self.acks.wait(self.dispatches, WAIT_S)
        assert json.loads(acks[-1].payload)["id"] == marker, "acks out of order or extra"
        assert all(json.loads(m.payload)["accepted"] is False for m in acks[-len(batch) - 1:])
        assert self.agent.proc.poll() is None, self.agent.log.read_text(errors="replace")

    def close(self) -> None:
        self.pub.close()


harmless_batches = st.lists(
    st.tuples(st.sampled_from(["dispatch", "frequency"]), payloads).filter(
        lambda tp: _harmless(*tp)),
    min_size=10, max_size=40,
)


def _fuzz_agent(broker: MosquittoBroker, tmp: Path, node: str, examples: int) -> None:
    with agent_process(broker, tmp, node) as agent, \
            Subscriber(broker.host, broker.port, agent.acks_topic) as acks, \
            Subscriber(broker.host, broker.port, agent.status_topic) as status:
        deadline = time.monotonic() + START_WAIT_S
        while not any(json.loads(m.payload).get("online") for m in list(status.messages)):
            assert agent.proc.poll() is None, agent.log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the agent never came online"
            time.sleep(0.05)
        flood = Flood(agent, acks, status)
        try:
            flood.send([("dispatch", VALID[0][:-1]), ("frequency", b"{}")] * 50)  # warm-up
            rss0 = _rss_kb(agent.proc.pid)
            seen_status = len(status.messages)

            @settings(max_examples=examples, deadline=None, database=None,
                      derandomize=examples < 1000,
                      suppress_health_check=[HealthCheck.filter_too_much,
                                             HealthCheck.too_slow])
            @given(harmless_batches)
            def batch(msgs: list[tuple[str, bytes]]) -> None:
                flood.send(msgs)

            batch()
            rss1 = _rss_kb(agent.proc.pid)
            # Nothing moved: every status during the flood shows no event and default limits.
            during = [json.loads(m.payload) for m in list(status.messages)[seen_status:]]
            assert during and all(p["online"] and p["event"] is None for p in during)
            assert all(g["limit_w"] == DEFAULT_W for p in during for g in p["gpus"])
            # Still serving: a valid dispatch after the flood is acted on.
            flood.pub.send(agent.topic("dispatch"), _dumps(
                {"id": "after-flood", "kind": "cap", "node_w": 700, "duration_s": 30}), qos=1)
            ack = json.loads(acks.wait(flood.dispatches + 1, WAIT_S)[-1].payload)
            assert ack["id"] == "after-flood" and ack["accepted"] is True, ack
        finally:
            flood.close()
        os.kill(agent.proc.pid, signal.SIGTERM)
        assert agent.proc.wait(WAIT_S) == 0, agent.log.read_text(errors="replace")
    sent = flood.dispatches + flood.frequencies
    growth_kb = rss1 - rss0
    print(f"fuzz: {sent} payloads ({flood.dispatches} dispatches) in {flood.batches} batches; "
          f"agent RSS {rss0} kB -> {rss1} kB ({growth_kb:+d} kB)")
    # Allocator slack, plus far less than any per-message leak (a kept 1 kB payload each).
    bound_kb = 4 * 1024 + sent // 10
    assert growth_kb < bound_kb, f"agent RSS grew {growth_kb} kB (bound {bound_kb} kB)"
    files = sorted(tmp.glob("audit.jsonl*"), key=lambda p: (p.name == "audit.jsonl", p.name))
    assert verify_files(files).ok
    records = read_records(files)
    verdicts = [r["fields"] for r in records if r["kind"] == "message"]
    assert sum(1 for v in verdicts if v["topic"] == "dispatch") == flood.dispatches + 1
    started = [r["fields"]["event"] for r in records if r["kind"] == "event_started"]
    assert started == ["after-flood"]  # no rejected message started anything
    assert not [r for r in records if r["kind"] == "gap"]
    log = agent.log.read_text(errors="replace")
    assert "Traceback" not in log, log


def test_agent_survives_a_flood_of_bad_messages(
    mqtt_broker_session: MosquittoBroker, tmp_path: Path
) -> None:
    _fuzz_agent(mqtt_broker_session, tmp_path, "fuzz-fast", examples=12)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_agent_soak_thousands_of_bad_messages(
    mqtt_broker_session: MosquittoBroker, tmp_path: Path
) -> None:
    _fuzz_agent(mqtt_broker_session, tmp_path, "fuzz-soak", examples=400)
