"""The flood bench's attackers: child processes (``gridtao.bench.flood --attack KIND``), each
with its own paho connection and interpreter, publishing junk dispatches or junk frequency
samples (``bench/flood.py``)."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from typing import Any, Literal

from gridtao.bench.agentproc import stop_process
from gridtao.bench.floodsetup import PREFIX, junk_dispatch, junk_sample, junk_signatures
from gridtao.children import module_command
from gridtao.transport.localbroker import MosquittoBroker

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
    sigs = junk_signatures(args.alg, random.Random(args.seed))
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
            module_command("gridtao.bench.flood", "--attack", kind,
             "--host", broker.host, "--port", str(broker.port), "--topic", topic,
             "--alg", alg, "--count", str(count), "--rate", str(rate), "--qos", str(qos),
             "--seed", str(1 if kind == "dispatch" else 2)),
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
