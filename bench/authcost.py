"""Keys for the latency bench's ``--auth`` runs, and the cost of verifying one message.

The verify cost is what the island's thread spends per signed dispatch before the GPUs are
touched: decode the payload, rebuild the canonical bytes, check the signature
(:meth:`gridtao.security.auth.Verifier.authenticate`), timed call by call with ``perf_counter_ns``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridtao.security import auth
from gridtao.telemetry.report import percentiles

KID = "bench"


@dataclass(frozen=True)
class BenchKey:
    alg: auth.Alg
    signing: auth.SigningKey
    verify_file: Path  # what the agent's auth.keys[].file points at

    def sign(self, body: dict[str, Any]) -> bytes:
        return auth.sign_payload(body, self.signing, KID, self.alg, topic="dispatch")

    def agent_config(self, workdir: Path) -> dict[str, Any]:
        return {"mode": self.alg, "keys": [{"kid": KID, "file": str(self.verify_file)}],
                "replay_store": str(workdir / "replay.jsonl")}


def make_key(alg: auth.Alg, workdir: Path) -> BenchKey:
    """A fresh key in ``workdir`` (a temporary folder: bench keys are never kept)."""
    if alg == "hmac":
        secret = secrets.token_bytes(32)
        path = workdir / "bench.hmac"
        path.write_text(base64.b64encode(secret).decode())
        path.chmod(0o600)
        return BenchKey(alg, secret, path)
    private = Ed25519PrivateKey.generate()
    path = workdir / "bench.pub"
    path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return BenchKey(alg, private, path)


def verify_cost_us(alg: auth.Alg, workdir: Path, *, n: int = 2000) -> dict[str, float]:
    """p50/p99/max microseconds to decode and verify one signed shed dispatch."""
    folder = workdir / f"verify-cost-{alg}"  # apart from the agent's own bench key
    folder.mkdir(exist_ok=True)
    key = make_key(alg, folder)
    verifier = auth.Verifier(alg, {KID: (auth.load_verify_key(key.verify_file, alg),
                                         frozenset({"dispatch"}))})
    payload = key.sign({"id": "cost", "kind": "shed", "fraction": 0.3, "duration_s": 30})
    samples: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        verifier.authenticate("dispatch", json.loads(payload))
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    return percentiles(samples)
