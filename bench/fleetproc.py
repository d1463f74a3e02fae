"""The bench's side of ``gridtao bench fleet``'s worker processes (bench/fleetworker.py), and
what each process costs: CPU from ``/proc/<pid>/stat`` (user + system, % of one core over a
phase), peak memory (``VmHWM``), the open-file limit a thousand connections need, and the
broker's drop warnings. Delays in ms, times in seconds.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from gridtao.bench.fleetworker import WorkerSpec, worker_main
from gridtao.telemetry.report import percentiles
from gridtao.transport.localbroker import MosquittoBroker

__all__ = ["PREFIX", "READY_TIMEOUT_S", "TRIAL_TIMEOUT_S", "Fleet", "FleetError", "Meter",
           "cpu_s", "drop_warnings", "peak_rss_mib", "raise_fd_limit", "stats"]

PREFIX = "gridtao/fleet"  # every fleet topic's, the nodes' and the site's
TRIAL_TIMEOUT_S = 30.0  # a worker's answer to a query about one trial
READY_TIMEOUT_S = 300.0  # a worker's start, and its nodes' connections


class FleetError(RuntimeError):
    """The fleet could not be brought up or stopped answering (the message says which)."""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(needed: int) -> int:
    """Raise this process's (and so its children's) open-file limit to ``needed`` if the hard
    limit allows; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        top = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        soft = top
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise FleetError(f"{needed} open files needed, the hard limit is {hard}: raise it "
                         "(ulimit -Hn, or LimitNOFILE) or run fewer nodes")
    return int(soft)


class Fleet:
    """The worker processes and their pipes. Messages a worker pushes unasked (a dispatch or
    a plain message every one of its clients received) are kept by payload until taken."""

    def __init__(self, port: int, prefix: str, nodes: int, workers: int,
                 config: dict[str, Any], status_period_s: float, writer_threads: bool) -> None:
        """``nodes`` nodes (ids ``n00000``...) dealt round-robin to ``workers`` processes, each
        node configured by ``config`` (``mqtt.node_id`` set per node)."""
        ids = [f"n{k:05d}" for k in range(nodes)]
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[BaseProcess] = []
        self.pushed: dict[bytes, list[Any]] = {}
        for w in range(workers):
            spec = WorkerSpec("127.0.0.1", port, prefix, tuple(ids[w::workers]), config,
                              status_period_s, writer_threads)
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(spec, theirs),
                               name=f"fleet-worker-{w}", daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(proc)
        for k in range(workers):
            self._recv(k, "hello", READY_TIMEOUT_S)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def _recv(self, k: int, kind: str, timeout_s: float, payload: bytes | None = None) -> Any:
        deadline = time.monotonic() + timeout_s
        pipe = self.pipes[k]
        while True:
            if payload is not None and payload in self.pushed and \
                    self.pushed[payload][k] is not None:
                return self.pushed[payload][k]
            left = deadline - time.monotonic()
            if left <= 0 or not pipe.poll(left):
                raise TimeoutError(f"worker {k}: no {kind} within {timeout_s:.0f} s")
            try:
                msg = pipe.recv()
            except EOFError:
                raise FleetError(f"worker {k} exited (exit code "
                                 f"{self.procs[k].exitcode})") from None
            if msg[0] in ("dispatch", "plain_seen"):
                slot = self.pushed.setdefault(msg[1], [None] * len(self.pipes))
                slot[k] = msg[2:]
            elif msg[0] == kind and payload is None:
                return msg[1]

    def ask(self, command: str, arg: Any, reply: str, timeout_s: float) -> list[Any]:
        """Send ``command`` to every worker and return each one's ``reply``."""
        for pipe in self.pipes:
            pipe.send((command, arg))
        return [self._recv(k, reply, timeout_s) for k in range(len(self.pipes))]

    def pushes(self, payload: bytes, query: bool, timeout_s: float) -> list[Any]:
        """Every worker's push for ``payload``; on a timeout, ask (``query``) or raise."""
        out: list[Any] = []
        for k in range(len(self.pipes)):
            try:
                out.append(self._recv(k, "push", timeout_s, payload))
            except TimeoutError:
                if not query:
                    raise
                self.pipes[k].send(("query", payload))
                out.append(self._recv(k, "push", TRIAL_TIMEOUT_S, payload))
        self.pushed.pop(payload, None)
        return out

    def close(self) -> None:
        for k, pipe in enumerate(self.pipes):
            if self.procs[k].is_alive():
                try:
                    pipe.send(("stop", None))
                    self._recv(k, "stopped", 30.0)
                except (OSError, TimeoutError, FleetError):
                    pass
            self.procs[k].join(10.0)
            if self.procs[k].is_alive():
                self.procs[k].kill()
                self.procs[k].join(5.0)
            pipe.close()


def drop_warnings(broker: MosquittoBroker) -> int:
    """Mosquitto's "Outgoing messages are being dropped" warnings so far: a subscriber's queue
    (``max_queued_messages``) overflowed and messages to it were lost, QoS 1 included."""
    return sum(1 for line in broker.log_text().splitlines() if "being dropped" in line)


class Meter:
    """Per phase: CPU of the broker, the workers, this process and (when running) the
    coordinator, in % of one core, and the broker's drop warnings."""

    def __init__(self, broker: MosquittoBroker, worker_pids: Sequence[int]) -> None:
        assert broker.pid is not None
        self.broker = broker
        self.pids = {"broker": [broker.pid], "workers": list(worker_pids),
                     "bench": [os.getpid()]}
        self.phases: dict[str, dict[str, float]] = {}

    def phase(self, name: str, body: Callable[[], None],
              extra: dict[str, int] | None = None) -> None:
        pids = self.pids | {k: [v] for k, v in (extra or {}).items()}
        before = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
        drops = drop_warnings(self.broker)
        t0 = time.monotonic()
        body()
        wall = time.monotonic() - t0
        self.phases[name] = {"wall_s": round(wall, 2)} | {
            f"{k}_cpu_pct": round(100.0 * (sum(cpu_s(p) for p in v) - before[k]) / wall, 1)
            for k, v in pids.items()} | {
            "broker_drop_warnings": drop_warnings(self.broker) - drops}


def stats(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max, ms (None for each when nothing was measured: JSON has no NaN)."""
    return {k: round(v, 3) if math.isfinite(v) else None for k, v in percentiles(values).items()}


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (``VmHWM``) of process ``pid``, MiB (NaN if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
