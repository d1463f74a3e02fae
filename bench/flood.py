"""Genuine triggers under a flood of junk: real Mosquitto, the agent in its own process, the
attackers in processes of their own, and an idle baseline measured in the same run.

Target (judged by :func:`judge_targets`; BENCHMARKS.md, "Flood"):

    Under a 20,000-message flood of invalid dispatches and a 10,000 samples/s storm of invalid
    frequency, a genuine FFR trigger is commanded within 50 ms p99 of publish, a genuine signed
    dispatch within 100 ms p99, and every genuine ack is delivered. The agent's peak resident
    memory during the flood stays under 100 MiB.

``gridtao bench flood [--triggers N] [--dispatch-junk N] [--frequency-junk-rate R] [--json FILE]
[--markdown FILE]`` runs, against one Mosquitto on 127.0.0.1 and one ``gridtao run`` (8 simulated
GPUs in real time, ``auth.mode: ed25519``, two keys: ``aggregator`` may sign dispatches only,
``meter`` frequency only):

1. **idle**: ``N`` genuine FFR triggers and ``N`` genuine signed ``shed`` dispatches, alternated,
   nothing else on the broker;
2. **flood**: the same sequence again while two attacker processes (each its own paho connection
   and its own interpreter, so neither shares a GIL with the measuring code) publish

   * ``--dispatch-junk`` invalid dispatches as fast as the broker takes them, at QoS 1 by default
     (``--dispatch-junk-qos``; the topic's contract), a third each: malformed JSON, a
     well-formed ``shed`` without a signature, and a well-formed ``shed`` signed as
     ``aggregator`` with a random signature (the dearest: a full verification);
   * invalid frequency samples at ``--frequency-junk-rate`` per second, QoS 0 (the topic's
     contract), for the whole flood phase (as long as its genuine sequence takes), a third
     each: malformed, an unsigned dip to 49.0 Hz, a dip signed as ``meter`` with a random
     signature.

   A subscriber that reads more slowly than messages arrive makes Mosquitto queue up to its
   ``max_queued_messages`` (default 1000) per client and drop the rest, QoS 1 included; the
   report counts its "Outgoing messages are being dropped" warnings.

A genuine **FFR trigger** is a grid dip as a meter reports it: the bench's meter publishes a
signed sample every ``METER_PERIOD_S`` (50 ms, nominal 50.0 Hz) throughout; a trigger switches it
to 49.4 Hz (the first dip sample at once) until the agent's ack arrives, then back to 50.0 Hz so
the event recovers. Its latency is publish of the *first* dip sample -> ``commanded_at`` of the
``ffr-`` ack, matched by the ack's ``sample_t`` (the firing sample's own ``t``), so a first
sample the broker dropped counts against the agent, not for it. A genuine **dispatch** is a
signed ``shed`` of 30 % for 0.35 s (QoS 1), matched by id, sent once: the bench's aggregator
does not retry, so a dispatch the broker or the agent drops shows as never acked.

Measured per trigger, in ms, Unix clock of this one machine: ``publish_to_command`` (the target),
``publish_to_receive`` (the broker and the agent's socket: where a backlog waits) and
``receive_to_command`` (the agent's inbox and lane). Counted: each genuine trigger's first ack
and its ``reached_at`` ack (a second ack once measured power is in the band), acks still
arriving within ``DRAIN_S`` after the flood count as delivered (late); reject acks seen; any
accepted activation that no genuine trigger explains (a forgery getting through: must be 0).
From the agent's audit trail after the run: how many junk messages the agent actually handled
per topic, records lost (``gap``; the counts are then lower bounds), and when it handled its
last junk dispatch (so each genuine trigger is known to have met the junk backlog or not).
Memory: the agent's ``VmRSS`` sampled every 50 ms per phase and ``VmHWM`` (its peak since start)
at the end; CPU: the agent's user + system time per phase as % of one core. The attackers
report what rate they achieved: on a small machine they share its cores with the agent and the
broker, which the report states.

Settings that differ from the defaults, and why (everything else, ``limits.*`` rates and the
reject-ack budget included, is the default):

* ``gpus.backend: sim`` (8 GPUs), ``mqtt``: the bench broker, prefix ``gridtao/flood``;
* ``auth``: ``ed25519`` (``--auth hmac`` possible) with the two bench keys made in the run's
  temporary folder; ``require_signed_frequency: true`` (the default, stated);
* ``safety.triggers``: one level, 49.5 Hz, reduction 0.3, ``min_hold_s`` 0.3, ``recovery_s``
  0.2 (default: three Nordic levels held >= 5 s), and ``safety.release_rate_per_s: 20``
  (default 0.2: a 5 s ramp-out): events short enough for 2 x N triggers in a few minutes;
* ``limits.min_event_interval_s: 0`` (default 1): genuine cuts come about a second apart;
* ``metrics.enabled: false``: nothing scrapes it, and no fixed port to collide on;
* audit trail and journal ON (the defaults) in a temporary ``STATE_DIRECTORY``: their cost
  under a flood is part of what is measured.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gridtao.app.simdevice import private_device
from gridtao.bench.authcost import BenchKey, make_key
from gridtao.bench.latency import stop_process
from gridtao.bench.render import write_outputs
from gridtao.config.agent import Config
from gridtao.security import auth
from gridtao.telemetry.report import percentiles
from gridtao.telemetry.runinfo import provenance
from gridtao.transport.localbroker import MosquittoBroker, Publisher, Subscriber

Kind = Literal["ffr", "dispatch"]
Phase = Literal["idle", "flood"]

PREFIX = "gridtao/flood"
NODE = "flood"
AGGREGATOR_KID = "aggregator"
METER_KID = "meter"

TRIGGER_HZ = 49.5
DIP_HZ = 49.4
NOMINAL_HZ = 50.0
REDUCTION = 0.3
MIN_HOLD_S = 0.3
RECOVERY_S = 0.2
RELEASE_RATE_PER_S = 20.0
METER_PERIOD_S = 0.05  # a 20 Hz meter, well inside limits.frequency_rate_per_s (60)
SHED_FRACTION = 0.3
SHED_DURATION_S = 0.35
# After a trigger's first ack: wait for its reached_at ack this long (pumping the meter) ...
REACHED_WAIT_S = 1.5
# ... and leave the node this long after the event's end: the ramp-out (50 ms) and the draw
# climbing back (cap-up time constant 250 ms), so each trigger starts from a node at its draw.
SETTLE_S = 0.4
# The first ack's wait during the sequence: 10 to 20 times the targets, so a trigger that missed
# them by that much does not hold up the run; an ack arriving later still counts (late).
ACK_TIMEOUT_S = 1.0
DRAIN_S = 10.0  # after the flood, for acks still on their way
READY_TIMEOUT_S = 60.0
RSS_PERIOD_S = 0.05

FFR_P99_MAX_MS = 50.0
DISPATCH_P99_MAX_MS = 100.0
RSS_PEAK_MAX_MIB = 100.0

TARGET = ("Under a 20,000-message flood of invalid dispatches and a 10,000 samples/s storm of "
          "invalid frequency, a genuine FFR trigger is commanded within 50 ms p99 of publish, a "
          "genuine signed dispatch within 100 ms p99, and every genuine ack is delivered; the "
          "agent's peak RSS during the flood stays under 100 MiB.")

MEASURES = ("publish_to_command_ms", "publish_to_receive_ms", "receive_to_command_ms")


# ---- keys and payloads -------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """The aggregator's (dispatch only) and the meter's (frequency only) signing keys."""

    aggregator: BenchKey
    meter: BenchKey

    def dispatch(self, body: dict[str, Any]) -> bytes:
        return auth.sign_payload(body, self.aggregator.signing, AGGREGATOR_KID,
                                 self.aggregator.alg, topic="dispatch")

    def sample(self, t: float, hz: float) -> bytes:
        return auth.sign_payload({"t": t, "hz": hz}, self.meter.signing, METER_KID,
                                 self.meter.alg, topic="frequency")

    def agent_config(self) -> dict[str, Any]:
        return {
            "mode": self.aggregator.alg,
            "keys": [
                {"kid": AGGREGATOR_KID, "file": str(self.aggregator.verify_file),
                 "topics": ["dispatch"]},
                {"kid": METER_KID, "file": str(self.meter.verify_file), "topics": ["frequency"]},
            ],
            "require_signed_frequency": True,
        }


def make_keys(alg: auth.Alg, workdir: Path) -> Keys:
    folders = workdir / "keys-aggregator", workdir / "keys-meter"
    for folder in folders:
        folder.mkdir()
    return Keys(make_key(alg, folders[0]), make_key(alg, folders[1]))


def agent_yaml(port: int, gpus: int, keys: Keys, device: str | None = None) -> dict[str, Any]:
    """The agent's configuration (the module docstring lists what differs from the defaults);
    ``device``: the simulated device (default: the default one)."""
    sim = dataclasses.asdict(Config().gpus.sim) | {"count": gpus}
    if device is not None:
        sim["device"] = device
    plain: dict[str, Any] = json.loads(json.dumps({
        "gpus": {"backend": "sim", "sim": sim},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": PREFIX, "node_id": NODE},
        "auth": keys.agent_config(),
        "safety": {"release_rate_per_s": RELEASE_RATE_PER_S, "triggers": [
            {"hz": TRIGGER_HZ, "reduction_fraction": REDUCTION, "min_hold_s": MIN_HOLD_S,
             "recovery_s": RECOVERY_S}]},
        "limits": {"min_event_interval_s": 0.0},
        "metrics": {"enabled": False},
    }))
    return plain


def _junk_signatures(alg: str, rng: random.Random, n: int = 256) -> list[str]:
    """Random signatures of the right length: each costs the agent a full verification."""
    size = 64 if alg == "ed25519" else 32
    return [base64.b64encode(rng.randbytes(size)).decode() for _ in range(n)]


def junk_dispatch(k: int, sigs: Sequence[str], now: float) -> bytes:
    """The k-th invalid dispatch: malformed, unsigned, or signed with a random signature."""
    kind = k % 3
    if kind == 0:
        return b'{"id": "junk-%d", "kind": "shed", "fraction": 0.8' % k
    body: dict[str, Any] = {"id": f"junk-{k}", "kind": "shed", "fraction": 0.8,
                            "duration_s": 3600, "issued_at": now}
    if kind == 2:
        body |= {"kid": AGGREGATOR_KID, "sig": sigs[k % len(sigs)]}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def junk_sample(k: int, sigs: Sequence[str], now: float) -> bytes:
    """The k-th invalid frequency sample: malformed, an unsigned dip, or a dip signed with a
    random signature (a forged dip that must never fire)."""
    kind = k % 3
    if kind == 0:
        return b'{"t": %.6f, "hz": "low"}' % now
    if kind == 1:
        return b'{"hz":49.0,"t":%.6f}' % now
    return b'{"hz":49.0,"kid":"%s","sig":"%s","t":%.6f}' % (
        METER_KID.encode(), sigs[k % len(sigs)].encode(), now)


# ---- attackers (child processes) -----------------------------------------------------------------


def _attacker_client(host: str, port: int) -> Any:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{os.getpid()}",
                         protocol=paho.MQTTv5)
    client.connect(host, port, keepalive=30)
    deadline = time.monotonic() + 10.0
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise TimeoutError(f"attacker: no CONNACK from {host}:{port}")
        client.loop(timeout=0.05)
    return client


def paho_error(rc: int) -> str:
    import paho.mqtt.client as paho

    return str(paho.error_string(rc))


def _control() -> tuple[threading.Event, threading.Event]:
    """``go`` when the parent writes a line, ``stop`` when it closes our stdin."""
    go, stop = threading.Event(), threading.Event()

    def read() -> None:
        for _line in sys.stdin:
            go.set()
        go.set()
        stop.set()

    threading.Thread(target=read, daemon=True).start()
    return go, stop


def attack(args: argparse.Namespace) -> int:
    """An attacker process: ``dispatch`` sends ``count`` junk dispatches as fast as it can,
    ``frequency`` sends junk samples at ``rate``/s until stdin closes. Prints one JSON line:
    what it sent, over how long (s), and its achieved rate (messages/s)."""
    client = _attacker_client(args.host, args.port)
    sigs = _junk_signatures(args.alg, random.Random(args.seed))
    go, stop = _control()
    print("ready", flush=True)
    while not go.is_set():  # keepalive while the idle phase runs (the broker drops a silent one)
        client.loop(timeout=0.1)
    started = time.time()
    t0 = time.monotonic()
    sent = 0
    error: str | None = None
    if args.attack == "dispatch":
        infos = []
        for k in range(args.count):
            info = client.publish(args.topic, junk_dispatch(k, sigs, time.time()), qos=args.qos)
            if info.rc != 0:
                error = f"publish failed: {paho_error(info.rc)}"
                break
            infos.append(info)
            sent += 1
            if k % 16 == 0:  # PUBACKs, keepalive; QoS 1 messages past the in-flight window
                client.loop(timeout=0.0)
            if stop.is_set():
                break
        deadline = time.monotonic() + 60.0
        while error is None and infos and time.monotonic() < deadline:
            if client.loop(timeout=0.01) != 0:
                error = "the broker closed the connection"
            elif all(i.rc == 0 and i.is_published() for i in infos[-50:]):
                break
    else:
        k = 0  # samples due so far, sent or skipped
        while not stop.is_set() and error is None:
            due = int((time.monotonic() - t0) * args.rate)
            # Catch up at most a second's worth at once: a starved attacker stays an attacker
            # at the stated rate, not a burst (the summary's rate says what it achieved).
            k = max(k, due - int(args.rate))
            while k < due:
                rc = client.publish(args.topic, junk_sample(k, sigs, time.time()), qos=0).rc
                if rc != 0:
                    error = f"publish failed: {paho_error(rc)}"
                    break
                k += 1
                sent += 1
            if client.loop(timeout=0.0) != 0 and error is None:
                error = "the broker closed the connection"
            time.sleep(0.001)
    elapsed = time.monotonic() - t0
    print(json.dumps({"sent": sent, "seconds": elapsed, "started_at": started,
                      "rate_per_s": sent / elapsed if elapsed > 0 else None,
                      "error": error}), flush=True)
    stop.wait(5.0 if args.attack == "dispatch" else 0.0)
    client.disconnect()
    return 0


class Attacker:
    """One attacker child process (this module with ``--attack``)."""

    def __init__(self, kind: Literal["dispatch", "frequency"], broker: MosquittoBroker,
                 alg: str, *, count: int = 0, rate: float = 0.0, qos: int = 0) -> None:
        topic = f"{PREFIX}/{kind}"
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridtao.bench.flood", "--attack", kind,
             "--host", broker.host, "--port", str(broker.port), "--topic", topic,
             "--alg", alg, "--count", str(count), "--rate", str(rate), "--qos", str(qos),
             "--seed", str(1 if kind == "dispatch" else 2)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.summary: dict[str, Any] | None = None

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the {self.kind} attacker did not start")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def finish(self) -> dict[str, Any]:
        """Tell it to stop (stdin closed), read its summary, reap it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        line = self.proc.stdout.readline()
        if self.proc.poll() is None:
            stop_process(self.proc)
        self.summary = json.loads(line) if line.strip() else {"sent": None}
        return self.summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc)


# ---- the agent process ---------------------------------------------------------------------------


class Agent:
    """``gridtao run`` in a child process with its own state directory; stopped with SIGTERM."""

    def __init__(self, cfg_path: Path, state_dir: Path, log_path: Path) -> None:
        env = dict(os.environ, STATE_DIRECTORY=str(state_dir), GRIDTAO_NO_NVML="1")
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridtao", "--config", str(cfg_path), "run"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def status_kib(self, key: str) -> int:
        """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``), KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {key} for pid {self.proc.pid}")

    def cpu_s(self) -> float:
        """User + system CPU seconds so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        rc = stop_process(self.proc)
        self._log.close()
        return rc


class RssSampler:
    """The agent's ``VmRSS`` every ``RSS_PERIOD_S``, the peak kept per phase (MiB)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self.phase = "start"
        self.peak_mib: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_PERIOD_S):
            try:
                mib = self._agent.status_kib("VmRSS") / 1024.0
            except (OSError, RuntimeError):
                return  # the agent exited
            phase = self.phase
            self.peak_mib[phase] = max(self.peak_mib.get(phase, 0.0), mib)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


# ---- the genuine side ----------------------------------------------------------------------------


class AckBook:
    """Every ack the node sent, decoded, with this side's receive time."""

    def __init__(self, sub: Subscriber) -> None:
        self._sub = sub
        self._seen = 0
        self.acks: list[dict[str, Any]] = []

    def update(self) -> None:
        messages = self._sub.messages
        while self._seen < len(messages):
            msg = messages[self._seen]
            ack = json.loads(msg.payload)
            ack["_seen_at"] = self._sub.received_wall[self._seen]
            self.acks.append(ack)
            self._seen += 1


class Meter:
    """The genuine frequency meter: a signed sample every ``METER_PERIOD_S`` at ``hz``."""

    def __init__(self, pub: Publisher, keys: Keys) -> None:
        self._pub = pub
        self._keys = keys
        self._topic = f"{PREFIX}/frequency"
        self._due = 0.0
        self._last_t = 0.0
        self.hz = NOMINAL_HZ

    def send(self) -> tuple[float, float]:
        """Publish one sample at ``hz`` now: (publish time, its ``t``), Unix s."""
        t = max(time.time(), self._last_t + 1e-6)  # t must increase strictly per key
        self._last_t = t
        payload = self._keys.sample(t, self.hz)  # signing is the meter's cost: before the clock
        sent = self._pub.send(self._topic, payload, qos=0)
        self._due = time.monotonic() + METER_PERIOD_S
        return sent, t

    def pump(self) -> tuple[float, float] | None:
        """Send a sample if one is due (else None)."""
        return self.send() if time.monotonic() >= self._due else None


@dataclass
class Trigger:
    """One genuine trigger and what came back for it."""

    kind: Kind
    phase: Phase
    index: int
    sent: float  # Unix s: the publish of the dispatch, or of the first dip sample
    event_id: str | None = None  # the dispatch id; for FFR, the ack's id once matched
    dip_t: list[float] = field(default_factory=list)  # FFR: t of every dip sample sent
    first: dict[str, Any] | None = None
    reached: dict[str, Any] | None = None

    def matches(self, ack: dict[str, Any]) -> bool:
        if self.kind == "dispatch":
            return ack.get("id") == self.event_id
        if self.event_id is not None:
            return ack.get("id") == self.event_id
        return (str(ack.get("id", "")).startswith("ffr-") and ack.get("accepted") is True
                and ack.get("sample_t") in self.dip_t)

    def take(self, ack: dict[str, Any]) -> None:
        if self.first is None:
            self.first = ack
            self.event_id = str(ack.get("id"))
        if ack.get("reached_at") is not None and self.reached is None:
            self.reached = ack

    def measures(self) -> dict[str, float] | None:
        """ms from publish (this side's clock) to the agent's receive and command."""
        first = self.first
        if first is None or not first.get("accepted") or first.get("commanded_at") is None:
            return None
        received, commanded = float(first["received_at"]), float(first["commanded_at"])
        return {"publish_to_command_ms": (commanded - self.sent) * 1e3,
                "publish_to_receive_ms": (received - self.sent) * 1e3,
                "receive_to_command_ms": (commanded - received) * 1e3}


class Genuine:
    """The aggregator and the meter: genuine triggers, one at a time, and their acks."""

    def __init__(self, pub: Publisher, book: AckBook, keys: Keys) -> None:
        self._pub = pub
        self._keys = keys
        self.book = book
        self.meter = Meter(pub, keys)
        self.triggers: list[Trigger] = []
        self._consumed = 0

    def settle(self, seconds: float) -> None:
        self.until(lambda: False, seconds)

    def until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Keep the meter going and read acks until ``done()`` or the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.meter.pump()
            self.match()
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def match(self) -> None:
        """Give each new ack to the genuine trigger it belongs to."""
        self.book.update()
        acks = self.book.acks
        while self._consumed < len(acks):
            ack = acks[self._consumed]
            self._consumed += 1
            for trig in reversed(self.triggers):
                if trig.matches(ack):
                    trig.take(ack)
                    break

    def ffr(self, phase: Phase, k: int) -> Trigger:
        """A dip until the agent acks it, then nominal until the event has ended."""
        self.meter.hz = DIP_HZ
        sent, t = self.meter.send()
        trig = Trigger("ffr", phase, k, sent, dip_t=[t])
        self.triggers.append(trig)
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while trig.first is None and time.monotonic() < deadline:
            got = self.meter.pump()
            if got is not None:
                trig.dip_t.append(got[1])
            self.match()
            time.sleep(0.001)
        self.meter.hz = NOMINAL_HZ
        if trig.first is not None:
            self.until(lambda: trig.reached is not None, REACHED_WAIT_S)
        # Held min_hold_s, recovered after recovery_s of nominal samples, then a 50 ms ramp.
        self.settle(max(MIN_HOLD_S, RECOVERY_S) + SETTLE_S)
        return trig

    def dispatch(self, phase: Phase, k: int) -> Trigger:
        """A signed shed of 30 % for 0.35 s, then until it has ended."""
        event_id = f"genuine-{phase}-{k}"
        payload = self._keys.dispatch({"id": event_id, "kind": "shed",
                                       "fraction": SHED_FRACTION, "duration_s": SHED_DURATION_S})
        self.meter.pump()
        sent = self._pub.send(f"{PREFIX}/dispatch", payload, qos=1)
        trig = Trigger("dispatch", phase, k, sent, event_id=event_id)
        self.triggers.append(trig)
        if self.until(lambda: trig.first is not None, ACK_TIMEOUT_S):
            self.until(lambda: trig.reached is not None, REACHED_WAIT_S)
        self.settle(SHED_DURATION_S + SETTLE_S)
        return trig

    def sequence(self, phase: Phase, n: int, progress: Callable[[str], None]) -> None:
        for k in range(n):
            self.ffr(phase, k)
            self.dispatch(phase, k)
            if (k + 1) % 10 == 0 or k + 1 == n:
                progress(f"  {phase}: {k + 1}/{n} FFR triggers and dispatches")

    def missing(self) -> int:
        """Acks still owed: each trigger's first ack and its reached_at ack."""
        return sum((t.first is None) + (t.reached is None) for t in self.triggers)


# ---- the agent's own record of the flood -------------------------------------------------------


def audit_counts(state_dir: Path) -> dict[str, Any]:
    """From the agent's audit trail (every file, rotated ones included): messages rejected per
    topic, records lost to a full queue (``gap``), and the Unix time of the last dispatch
    rejection (when the agent was through the junk dispatch backlog)."""
    rejected = {"dispatch": 0, "frequency": 0}
    lost = unrecorded = 0
    last_dispatch_reject: float | None = None
    for path in sorted(state_dir.glob("audit-*")):
        with path.open("rb") as f:
            for line in f:
                if b'"kind":"gap"' in line:
                    lost += int(json.loads(line)["fields"]["dropped"])
                    continue
                if b'"kind":"rejections_unrecorded"' in line:
                    # Refusals past the audit budget: counted, not recorded one by one.
                    unrecorded += int(json.loads(line)["fields"]["count"])
                    continue
                if b'"result":"rejected"' not in line:
                    continue
                if b'"topic":"frequency"' in line:
                    rejected["frequency"] += 1
                elif b'"topic":"dispatch"' in line:
                    rejected["dispatch"] += 1
                    t = json.loads(line)["t"]
                    last_dispatch_reject = t if last_dispatch_reject is None else max(
                        last_dispatch_reject, t)
    return {"rejected": rejected, "unrecorded": unrecorded, "records_lost": lost,
            "last_dispatch_rejected_at": last_dispatch_reject}


def broker_drop_lines(broker: MosquittoBroker) -> int:
    """Mosquitto's "Outgoing messages are being dropped" warnings: junk (or worse, genuine
    messages) it threw away because a subscriber's queue was full."""
    return sum(1 for line in broker.log_text().splitlines() if "being dropped" in line)


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class Options:
    triggers: int = 30
    dispatch_junk: int = 20_000
    dispatch_junk_qos: int = 1
    frequency_junk_rate: float = 10_000.0
    gpus: int = 8
    alg: auth.Alg = "ed25519"
    keep_dir: Path | None = None  # keep the broker's and agent's logs and state here


def run(opts: Options, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The idle phase, then the flood phase, on one broker and one agent process; the result
    (see :func:`main` for the JSON it becomes)."""
    with tempfile.TemporaryDirectory(prefix="gridtao-flood-") as tmp, \
            private_device("bench-flood") as device:
        workdir = Path(tmp) if opts.keep_dir is None else opts.keep_dir
        workdir.mkdir(parents=True, exist_ok=True)
        state = workdir / "state"
        state.mkdir()
        with MosquittoBroker(workdir / "mosquitto") as broker:
            keys = make_keys(opts.alg, workdir)
            cfg_path = workdir / "agent.yaml"
            cfg_path.write_text(yaml.safe_dump(agent_yaml(broker.port, opts.gpus, keys,
                                                          device)))
            progress(f"broker 127.0.0.1:{broker.port}; {opts.gpus} simulated GPUs; "
                     f"{opts.triggers} genuine triggers per kind and phase; {opts.alg}")
            measured = _measure(broker, cfg_path, state, workdir, keys, opts, progress)
            measured["audit"] = audit_counts(state)
            measured["broker_drop_warnings"] = broker_drop_lines(broker)
            measured["agent_log_lines"] = len(
                (workdir / "agent.log").read_bytes().splitlines())
    return _result(opts, measured)


def _measure(broker: MosquittoBroker, cfg_path: Path, state: Path, workdir: Path, keys: Keys,
             opts: Options, progress: Callable[[str], None]) -> dict[str, Any]:
    agent = Agent(cfg_path, state, workdir / "agent.log")
    attackers: list[Attacker] = []
    rss: RssSampler | None = None
    out: dict[str, Any] = {"phases": {}}
    try:
        with Subscriber(broker.host, broker.port, f"{PREFIX}/nodes/{NODE}/status") as status:
            status.wait(1, timeout=READY_TIMEOUT_S)  # retained online status: the agent is up
        # Started now, so their interpreters' start-up is not part of the flood phase.
        attackers = [
            Attacker("dispatch", broker, opts.alg, count=opts.dispatch_junk,
                     qos=opts.dispatch_junk_qos),
            Attacker("frequency", broker, opts.alg, rate=opts.frequency_junk_rate),
        ]
        for attacker in attackers:
            attacker.wait_ready()
        rss = RssSampler(agent)
        with Subscriber(broker.host, broker.port, f"{PREFIX}/nodes/{NODE}/ack") as acks, \
                Publisher(broker.host, broker.port) as pub:
            genuine = Genuine(pub, AckBook(acks), keys)
            genuine.settle(1.5)  # the meter's feed, tier 1's first readings, the island armed
            for phase in ("idle", "flood"):
                rss.phase = phase
                cpu0, t0, wall0 = agent.cpu_s(), time.monotonic(), time.time()
                if phase == "flood":
                    for attacker in attackers:
                        attacker.go()
                genuine.sequence(phase, opts.triggers, progress)
                seconds = time.monotonic() - t0
                cpu = 100.0 * (agent.cpu_s() - cpu0) / seconds
                out["phases"][phase] = {"seconds": seconds, "started_at": wall0,
                                        "agent_cpu_percent": cpu}
                if phase == "flood":
                    out["attack"] = {a.kind: a.finish() for a in attackers}
                    failed = [f"the {kind} attacker: {s.get('error') or 'no summary'}"
                              for kind, s in out["attack"].items()
                              if s.get("error") or s.get("sent") is None]
                    if failed:  # no flood, nothing measured under one
                        raise RuntimeError("; ".join(failed))
            rss.phase = "drain"
            progress(f"  drain: up to {DRAIN_S:.0f} s for {genuine.missing()} acks still owed")
            genuine.until(lambda: genuine.missing() == 0, DRAIN_S)
            out["vmhwm_mib"] = agent.status_kib("VmHWM") / 1024.0
            out["triggers"] = genuine.triggers
            out["acks"] = genuine.book.acks
    finally:
        if rss is not None:
            rss.close()
        for attacker in attackers:
            attacker.kill()
        died = agent.proc.poll()
        t0 = time.monotonic()
        rc = agent.stop()
    if died is not None:  # before the end of the run: nothing after that was measured
        tail = agent.log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"the agent exited with {died} during the run:\n" + "\n".join(tail))
    # Stopping may be slow (or fail) after a flood: part of the result, not a bench error.
    out["agent_stop"] = {"exit_status": rc, "seconds": time.monotonic() - t0}
    out["rss_peak_mib"] = dict(rss.peak_mib) if rss is not None else {}
    return out


# ---- the result ----------------------------------------------------------------------------------


def _stats(trigs: Sequence[Trigger]) -> dict[str, Any]:
    measured = [m for m in (t.measures() for t in trigs) if m is not None]
    out: dict[str, Any] = {k: percentiles([m[k] for m in measured]) for k in MEASURES}
    out |= {
        "triggers": len(trigs),
        "commanded": len(measured),
        "first_acks": sum(t.first is not None for t in trigs),
        "reached_acks": sum(t.reached is not None for t in trigs),
        # Accepted but nothing written: a deeper event (a late earlier trigger) held the GPUs.
        "not_binding": sum(t.first is not None and t.first.get("accepted") is True
                           and t.first.get("commanded_at") is None for t in trigs),
        "never_acked": sum(t.first is None for t in trigs),
        "refused": [str(t.first.get("reason")) for t in trigs
                    if t.first is not None and not t.first.get("accepted")],
    }
    if trigs and trigs[0].kind == "ffr":
        # 0: the first dip sample fired; more: earlier ones were lost or queued past the ack wait.
        out["dip_samples_before_firing"] = [
            t.dip_t.index(t.first["sample_t"]) for t in trigs
            if t.first is not None and t.first.get("sample_t") in t.dip_t]
    return out


def _sample(t: Trigger, junk_until: float | None) -> dict[str, Any]:
    return {"index": t.index, "id": t.event_id, "sent": t.sent,
            "first_ack": t.first is not None, "reached_ack": t.reached is not None,
            # Published before the agent had handled its last junk dispatch.
            "met_junk_dispatch_backlog": junk_until is not None and t.sent <= junk_until,
            **(t.measures() or {})}


def _result(opts: Options, m: dict[str, Any]) -> dict[str, Any]:
    trigs: list[Trigger] = m["triggers"]
    junk_until = m["audit"]["last_dispatch_rejected_at"]

    def pick(phase: str, kind: str) -> list[Trigger]:
        return [t for t in trigs if t.phase == phase and t.kind == kind]

    phases: dict[str, Any] = {}
    for phase in ("idle", "flood"):
        phases[phase] = {kind: _stats(pick(phase, kind)) for kind in ("ffr", "dispatch")}
        phases[phase] |= m["phases"][phase]
        phases[phase]["rss_peak_mib"] = m["rss_peak_mib"].get(phase)
    genuine_ids = {t.event_id for t in trigs if t.event_id is not None}
    others = [a for a in m["acks"] if a.get("id") not in genuine_ids]
    unexpected = sorted({str(a.get("id")) for a in others if a.get("accepted")})
    flood = phases["flood"]
    flood["attack"] = m["attack"]
    flood["agent_handled"] = m["audit"]
    flood["broker_drop_warnings"] = m["broker_drop_warnings"]
    flood["met_junk_dispatch_backlog"] = {
        kind: sum(junk_until is not None and t.sent <= junk_until for t in pick("flood", kind))
        for kind in ("ffr", "dispatch")}
    result: dict[str, Any] = {
        "target": TARGET,
        "gpus": opts.gpus,
        "auth": opts.alg,
        "triggers": opts.triggers,
        "dispatch_junk": opts.dispatch_junk,
        "dispatch_junk_qos": opts.dispatch_junk_qos,
        "frequency_junk_rate": opts.frequency_junk_rate,
        "idle": phases["idle"],
        "flood": flood,
        "reject_acks_seen": sum(1 for a in others if not a.get("accepted")),
        "unexpected_activations": unexpected,
        "agent_log_lines": m["agent_log_lines"],
        "agent_stop": m["agent_stop"],
        "rss": {"idle_peak_mib": m["rss_peak_mib"].get("idle"),
                "flood_peak_mib": m["rss_peak_mib"].get("flood"),
                "vmhwm_mib": m["vmhwm_mib"]},
        "ratios": {f"{kind}_p99_flood_vs_idle": _ratio(
            flood[kind]["publish_to_command_ms"]["p99"],
            phases["idle"][kind]["publish_to_command_ms"]["p99"]) for kind in ("ffr", "dispatch")},
        "samples": {phase: {kind: [_sample(t, junk_until) for t in pick(phase, kind)]
                            for kind in ("ffr", "dispatch")} for phase in ("idle", "flood")},
    }
    result["targets"] = judge_targets(result)
    return result


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 and a == a and b == b else None  # NaN != NaN: nothing measured


def judge_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The flood target, part by part (:data:`TARGET`), each with its limit, value and ``met``.
    A latency part is met only if every genuine trigger of that kind was commanded and the
    p99 over them is within the limit (a trigger never commanded is no fast one)."""
    flood = result["flood"]

    def latency(kind: str, limit: float) -> dict[str, Any]:
        s = flood[kind]
        p99 = s["publish_to_command_ms"]["p99"]
        return {"limit": limit, "value": p99, "idle": result["idle"][kind][
            "publish_to_command_ms"]["p99"], "commanded": s["commanded"],
            "triggers": s["triggers"], "met": s["commanded"] == s["triggers"] and p99 <= limit}

    expected = 2 * (flood["ffr"]["triggers"] + flood["dispatch"]["triggers"])
    delivered = sum(flood[k]["first_acks"] + flood[k]["reached_acks"] for k in ("ffr", "dispatch"))
    peak = result["rss"]["flood_peak_mib"]
    return {
        "ffr_publish_to_command_p99_ms": latency("ffr", FFR_P99_MAX_MS),
        "dispatch_publish_to_command_p99_ms": latency("dispatch", DISPATCH_P99_MAX_MS),
        "genuine_acks_delivered": {"expected": expected, "value": delivered,
                                   "met": delivered == expected},
        "rss_peak_mib": {"limit": RSS_PEAK_MAX_MIB, "value": peak, "vmhwm": result["rss"][
            "vmhwm_mib"], "met": peak is not None and peak < RSS_PEAK_MAX_MIB},
        "no_forged_activation": {"value": len(result["unexpected_activations"]),
                                 "met": not result["unexpected_activations"]},
    }


# ---- Markdown ----------------------------------------------------------------------------------


def _row(name: str, idle: dict[str, float], flood: dict[str, float], n: str) -> str:
    ratio = _ratio(flood["p99"], idle["p99"])
    return (f"| {name} | {n} | {idle['p50']:.2f} | {idle['p99']:.2f} | {idle['max']:.2f} | "
            f"{flood['p50']:.2f} | {flood['p99']:.2f} | {flood['max']:.2f} | "
            + (f"{ratio:.1f}x |" if ratio is not None else "- |"))


def _target_sizes(result: dict[str, Any]) -> bool:
    """Whether the run's flood is at least the one the target is stated for."""
    return bool(result["dispatch_junk"] >= Options.dispatch_junk
                and result["frequency_junk_rate"] >= Options.frequency_junk_rate)


def _verdict(target: dict[str, Any]) -> str:
    return "**met**" if target["met"] else "**not met**"


def markdown(result: dict[str, Any]) -> str:
    """A BENCHMARKS.md section: setup, the table flood against idle, acks, memory, verdicts."""
    idle, flood = result["idle"], result["flood"]
    att = flood["attack"]
    handled = flood["agent_handled"]
    d_att, f_att = att.get("dispatch", {}), att.get("frequency", {})

    def rate(a: dict[str, Any]) -> str:
        r = a.get("rate_per_s")
        return f"{r:,.0f}/s" if isinstance(r, (int, float)) else "?"

    lines = [
        f"### Genuine triggers under a flood ({result['gpus']} simulated GPUs, {result['auth']}, "
        f"{result['triggers']} triggers per kind)",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['machine']}",
        f"- date: {result['date']}; commit {result['commit']}; {result['broker']}",
        f"- target: {result['target']}",
        f"- flood: {d_att.get('sent')} invalid dispatches (QoS {result['dispatch_junk_qos']}, "
        f"malformed / unsigned / bad signature) sent in {d_att.get('seconds', 0):.1f} s "
        f"({rate(d_att)}); invalid frequency samples (QoS 0, same mix) at {rate(f_att)} "
        f"(asked {result['frequency_junk_rate']:,.0f}/s) for {f_att.get('seconds', 0):.0f} s; "
        f"the agent handled {handled['rejected']['dispatch']} junk dispatches and "
        f"{handled['rejected']['frequency']} junk samples one by one in the audit trail"
        + (f", and {handled.get('unrecorded', 0)} more refusals past its audit budget"
           if handled.get("unrecorded") else "")
        + (f"; {handled['records_lost']} audit records lost, so at least that many"
           if handled["records_lost"] else "")
        + f"; broker drop warnings: {flood['broker_drop_warnings']}",
        f"- genuine triggers that met the junk dispatch backlog: "
        f"{flood['met_junk_dispatch_backlog']['dispatch']} dispatches, "
        f"{flood['met_junk_dispatch_backlog']['ffr']} FFR triggers",
        f"- agent CPU: idle phase {idle['agent_cpu_percent']:.0f} %, flood phase "
        f"{flood['agent_cpu_percent']:.0f} % of one core; agent log: "
        f"{result['agent_log_lines']} lines in all; stopped (SIGTERM) with status "
        f"{result['agent_stop']['exit_status']} in {result['agent_stop']['seconds']:.1f} s",
        "",
        "| publish -> ... (ms) | n idle / flood | idle p50 | idle p99 | idle max | flood p50 "
        "| flood p99 | flood max | p99 flood/idle |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"publish_to_command_ms": "command", "publish_to_receive_ms": "agent receives",
             "receive_to_command_ms": "(receive -> command)"}
    for kind, label in (("ffr", "FFR trigger"), ("dispatch", "signed dispatch")):
        n = f"{idle[kind]['commanded']} / {flood[kind]['commanded']}"
        for key in MEASURES:
            lines.append(_row(f"{label}: {names[key]}", idle[kind][key], flood[kind][key], n))
    lines += ["", "Genuine acks (first ack / `reached_at` ack, of triggers; never acked; "
              "accepted but not binding, i.e. a late earlier event already held the GPUs):"]
    for phase in ("idle", "flood"):
        parts = [f"{kind} {result[phase][kind]['first_acks']} / "
                 f"{result[phase][kind]['reached_acks']} of {result[phase][kind]['triggers']}"
                 f" (never acked {result[phase][kind]['never_acked']}, not binding "
                 f"{result[phase][kind]['not_binding']})"
                 for kind in ("ffr", "dispatch")]
        lines.append(f"- {phase}: " + "; ".join(parts))
    rss = result["rss"]
    lines += [
        f"- reject acks seen during the run: {result['reject_acks_seen']}; accepted "
        f"activations no genuine trigger explains: {len(result['unexpected_activations'])}",
        "",
        f"Agent memory (VmRSS sampled every {RSS_PERIOD_S * 1000:.0f} ms): idle peak "
        f"{rss['idle_peak_mib']:.1f} MiB, flood peak {rss['flood_peak_mib']:.1f} MiB, VmHWM "
        f"at the end {rss['vmhwm_mib']:.1f} MiB.",
        "",
        "Targets, judged by `gridtao.bench.flood.judge_targets`"
        + ("" if _target_sizes(result) else
           f" at this run's smaller flood ({result['dispatch_junk']:,} dispatches, "
           f"{result['frequency_junk_rate']:,.0f} samples/s): not verdicts on the target, "
           "which is stated for 20,000 and 10,000/s")
        + ":",
    ]
    t = result["targets"]
    for key, label in (("ffr_publish_to_command_p99_ms", "FFR publish -> command p99"),
                       ("dispatch_publish_to_command_p99_ms", "dispatch publish -> command p99")):
        x = t[key]
        lines.append(f"- {label} <= {x['limit']:.0f} ms under the flood: {x['value']:.1f} ms "
                     f"(idle {x['idle']:.1f} ms; {x['commanded']} of {x['triggers']} "
                     f"commanded): {_verdict(x)}")
    acks = t["genuine_acks_delivered"]
    lines.append(f"- every genuine ack delivered under the flood: {acks['value']} of "
                 f"{acks['expected']}: {_verdict(acks)}")
    mem = t["rss_peak_mib"]
    lines.append(f"- agent RSS peak during the flood < {mem['limit']:.0f} MiB: "
                 f"{mem['value']:.1f} MiB: {_verdict(mem)}")
    forged = t["no_forged_activation"]
    lines.append(f"- no activation from junk: {forged['value']}: {_verdict(forged)}")
    return "\n".join(lines) + "\n"


# ---- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gridtao bench flood",
        description="Genuine FFR triggers and signed dispatches under a flood of invalid "
                    "dispatches and frequency samples, against an idle baseline in the same run "
                    "(a real Mosquitto on 127.0.0.1, the agent in its own process).")
    p.add_argument("--triggers", type=int, default=30,
                   help="genuine FFR triggers and genuine dispatches per phase (default 30 each)")
    p.add_argument("--dispatch-junk", type=int, default=20_000,
                   help="invalid dispatches sent as fast as possible (default 20000)")
    p.add_argument("--dispatch-junk-qos", type=int, choices=(0, 1), default=1,
                   help="QoS of the junk dispatches (default 1, the dispatch topic's)")
    p.add_argument("--frequency-junk-rate", type=float, default=10_000.0,
                   help="invalid frequency samples per second during the flood (default 10000)")
    p.add_argument("--gpus", type=int, default=8, help="simulated GPUs (default 8)")
    p.add_argument("--auth", choices=("ed25519", "hmac"), default="ed25519",
                   help="signature algorithm of the genuine senders (default ed25519)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write a BENCHMARKS.md section to FILE")
    p.add_argument("--keep-dir", metavar="DIR", type=Path,
                   help="keep the broker's and the agent's logs, configuration and state "
                        "(audit trail) in DIR instead of a temporary folder")
    # An attacker child process (started by the bench itself).
    p.add_argument("--attack", choices=("dispatch", "frequency"), help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--topic", default="", help=argparse.SUPPRESS)
    p.add_argument("--alg", default="ed25519", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--qos", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.attack:
        if args.host != "127.0.0.1":
            p.error("attackers only ever point at 127.0.0.1")
        return attack(args)
    if not 1 <= args.triggers <= 1000 or not 1 <= args.gpus <= 64:
        p.error("--triggers must be in 1..1000 and --gpus in 1..64")
    if args.dispatch_junk < 0 or args.frequency_junk_rate < 0:
        p.error("--dispatch-junk and --frequency-junk-rate must be >= 0")
    if args.keep_dir is not None and args.keep_dir.exists() and any(args.keep_dir.iterdir()):
        p.error(f"--keep-dir {args.keep_dir}: not empty (its audit trail would be counted)")
    opts = Options(triggers=args.triggers, dispatch_junk=args.dispatch_junk,
                   dispatch_junk_qos=args.dispatch_junk_qos,
                   frequency_junk_rate=args.frequency_junk_rate, gpus=args.gpus, alg=args.auth,
                   keep_dir=args.keep_dir)
    try:
        result = run(opts, progress=lambda line: print(line, file=sys.stderr))
    except RuntimeError as e:  # an attacker or the agent failed: the run measured nothing
        print(f"gridtao: error: bench flood: {e}", file=sys.stderr)
        return 2
    words = list(sys.argv[1:] if argv is None else argv)
    result |= provenance("gridtao bench flood " + shlex.join(words))
    text = markdown(result)
    write_outputs(args, result, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
