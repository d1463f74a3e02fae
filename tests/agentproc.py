"""`gridtao run` as a real child process, for the tests that kill, restart and watch it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from broker import MosquittoBroker, Subscriber

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 40.0  # a cold interpreter start on a loaded 2-core machine


def write_agent_config(tmp: Path, broker: MosquittoBroker, node: str, *, prefix: str,
                       gpus: int, **extra: Any) -> Path:
    """The agent's YAML in ``tmp``: simulated GPUs, status every 0.1 s, the audit trail and a
    journal (0.2 s heartbeat) in ``tmp``; top-level sections in ``extra`` replace these."""
    cfg: dict[str, Any] = {
        "gpus": {"backend": "sim", "sim": {"count": gpus}},
        "mqtt": {"port": broker.port, "node_id": node, "prefix": prefix,
                 "status_period_s": 0.1, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
        "audit": {"enabled": True, "path": str(tmp / "audit.jsonl")},
        "journal": {"enabled": True, "path": str(tmp / "journal.json"), "heartbeat_s": 0.2},
    } | extra
    path = tmp / f"{node}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def spawn_agent(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """``gridtao --config cfg run``, its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridtao", "--config", str(cfg), "--log-level", "info", "run"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def agent_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put spawned agents in; any still running at the end is SIGKILLed."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)


def status_wait(sub: Subscriber, pred: Callable[[dict[str, Any]], bool], what: str,
                start: int = 0) -> dict[str, Any]:
    """The first status payload from message ``start`` on that satisfies ``pred``."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for m in list(sub.messages)[start:]:
            p: dict[str, Any] = json.loads(m.payload)
            if pred(p):
                return p
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
