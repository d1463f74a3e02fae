"""The flood bench's fixed settings, its signing keys, the agent's configuration and the junk
payloads (``bench/flood.py`` says what each is for)."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gridtao.bench.authcost import BenchKey, make_key
from gridtao.config.agent import Config
from gridtao.security import auth

Kind = Literal["ffr", "dispatch"]
Phase = Literal["idle", "flood"]

PREFIX = "gridtao/flood"
NODE = "flood"
#: The nice value deploy/systemd/gridtao-agent.service runs the agent at (``Nice=``).
AGENT_NICE = -10
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


def junk_signatures(alg: str, rng: random.Random, n: int = 256) -> list[str]:
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


@dataclass
class Options:
    """One run's sizes (``gridtao bench flood --help``)."""

    triggers: int = 30
    dispatch_junk: int = 20_000
    dispatch_junk_qos: int = 1
    frequency_junk_rate: float = 10_000.0
    gpus: int = 8
    alg: auth.Alg = "ed25519"
    keep_dir: Path | None = None  # keep the broker's and agent's logs and state here
    #: The agent's nice value: the systemd unit's (deploy/systemd/gridtao-agent.service) by
    #: default; 0 runs it as a plain process, as the bench's runs before this option did.
    agent_nice: int = AGENT_NICE
