"""A fleet of simulated nodes over one real Mosquitto on loopback, and the site coordinator.

``gridtao bench fleet [--nodes N[,N...]] [--trials K] [--frequency-s S] [--workers W]
[--gpus G] [--status-period-s P] [--writer-threads] [--max-queued-messages Q] [--no-site]
[--json FILE] [--markdown FILE]`` starts, for each N (default 10, 100 and 1000), a fresh
Mosquitto on 127.0.0.1 (``set_tcp_nodelay true``) and N simulated nodes dealt to W worker
processes (default: one per 250 nodes, at most one per core; bench/fleetworker.py). Each node
has three broker connections of its own, as the agent's island has (dispatches and frequency
each received on the agent's own parser, bench/fleetrecv.py; acks and status on a third), and
runs the agent's intake, guard and safety island on G
simulated GPUs (bench/fleetnode.py); it acks on ``{prefix}/nodes/{node}/ack`` and publishes its
retained status, with ``capacity``, every P seconds. Then, in this order:

1. **broker fan-out** (the baseline): N plain paho subscribers in the same worker layout, no
   gridtao code; K messages (QoS 1), each timed from publish to the last subscriber's receipt;
2. **publish -> every node commanded**: K ``shed`` dispatches (30 %, 0.3 s, QoS 1) on
   ``{prefix}/dispatch``, each timed from publish to the last node's ``commanded_at`` (the
   island's stamp when the node's last driver call returned), the next one once every node is
   idle again;
3. **frequency fan-out**: samples on ``{prefix}/frequency`` at 10 Hz (QoS 0, near 50 Hz: no
   trigger fires) for S seconds, each timed from publish to the first and to the last node's
   receipt; a sample some node never got is lost;
4. **the site coordinator** (``gridtao site --config FILE``, bench/fleetsite.py) in its own
   process on the same broker: K dispatches again (each lasting 10 s and released once the
   site has acked it), timed to every node commanded, and ``site_ack_after_last_node_ms``: the
   site ack's receipt minus the last node ack's receipt, both seen by subscribers in this
   process; the coordinator's CPU and memory. Without the coordinator in the installation the
   bench says so and stops (``--no-site`` measures the rest).

Every time is the Unix clock of this one machine (``time.time()`` in every process); delays are
in ms. CPU is user + system time from ``/proc/<pid>/stat`` over each phase, in % of one core;
memory is the peak resident set (``VmHWM``), MiB. All nodes share the machine's cores with the
broker, the coordinator and this process: a figure is what the whole fleet costs one machine,
not what one node's own machine would show.

JSON (``--json``): one N gives one run's object; several give ``{"nodes": [N, ...], "runs":
[run, ...]}``; either way with ``reference`` and the provenance (``date``, ``machine``,
``commit``, ``software``, ``dependencies``, ``broker``, ``command``). A run's headline keys
come first: ``nodes``, ``publish_to_all_commanded_ms``, ``broker_fanout_ms``,
``site_ack_after_last_node_ms`` (each ``{"p50", "p99"}``; the last null with ``--no-site``),
``ratio_to_broker_fanout``, ``frequency_publish_to_all_received_ms``,
``frequency_lost_samples``, ``every_node_commanded_every_trial``; then the details per phase
(``broker_fanout``, ``dispatch``, ``frequency``, ``site``, each statistic ``{"p50", "p99",
"max"}``, null where nothing was measured; ``dispatch`` and ``frequency`` also give every
trial's or sample's figure in ``series_ms``), ``cpu`` per phase and ``peak_rss_mib``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gridtao.bench import fleetsite
from gridtao.bench.fleetproc import (
    PREFIX,
    READY_TIMEOUT_S,
    TRIAL_TIMEOUT_S,
    Fleet,
    Meter,
    peak_rss_mib,
    raise_fd_limit,
)
from gridtao.bench.fleetproc import stats as _stats
from gridtao.bench.fleetreport import markdown
from gridtao.bench.fleetworker import FIRST_STATUS_S
from gridtao.bench.render import check_outputs, write_outputs
from gridtao.telemetry.runinfo import provenance
from gridtao.transport.localbroker import MosquittoBroker, Publisher

SHED_FRACTION = 0.3
SHED_DURATION_S = 0.3
RELEASE_RATE_PER_S = 20.0  # ramp-out in 50 ms, so a trial ends well before the next
FREQUENCY_HZ = 10.0
GAP_S = 0.2  # between a trial's end (every node idle) and the next publish
MAX_TRIAL_RATE_HZ = 2.0
NODES_PER_WORKER = 250
MAX_WORKERS = 4
FDS_PER_NODE = 4  # three node connections, and a plain subscriber in phase 1

#: Context only, never this bench's baseline (another machine, another harness).
REFERENCE = {
    "what": "Mosquitto 2.0 fanning one message out to 1,000 subscribers",
    "mean_ms": 5.7,
    "source": "EMQ, open MQTT benchmark (c5.4xlarge)",
}


def node_config(port: int, gpus: int) -> dict[str, Any]:
    """Every node's configuration (``mqtt.node_id`` is set per node): the defaults but for
    simulated GPUs private to the process whose physics is cheap (a steady draw, one reading a
    second, no noise, driver calls that take no time), a 50 ms ramp-out, back-to-back cuts
    allowed, and nothing written to disk or served over HTTP."""
    return {
        "gpus": {"backend": "sim", "sim": {
            "count": gpus, "device": None, "workload": "idle", "noise_w": 0.0,
            "refresh_ms": 1000.0, "set_latency_ms": 0.0, "read_latency_ms": 0.0}},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": PREFIX},
        "safety": {"release_rate_per_s": RELEASE_RATE_PER_S},
        "limits": {"min_event_interval_s": 0.0},
        "metrics": {"enabled": False}, "audit": {"enabled": False},
        "journal": {"enabled": False}, "history": {"enabled": False},
    }


def broker_fanout(fleet: Fleet, pub: Publisher, nodes: int, trials: int) -> dict[str, Any]:
    """Phase 1: N plain subscribers, ``trials`` QoS 1 messages; publish -> last receipt, ms."""
    topic = f"{PREFIX}/bench/fanout"
    fleet.ask("plain", topic, "plain_ready", READY_TIMEOUT_S)
    sent: dict[bytes, float] = {}
    lat: list[float] = []
    for k in range(trials):
        payload = f"fanout {k} {uuid.uuid4().hex}".encode()
        sent[payload] = pub.send(topic, payload, qos=1)
        try:
            got = fleet.pushes(payload, False, TRIAL_TIMEOUT_S)
            lat.append((max(g[0][1] for g in got) - sent[payload]) * 1000.0)
        except TimeoutError:
            pass  # counted below, from what the subscribers saw
        time.sleep(GAP_S)
    seen = fleet.ask("plain_close", None, "plain_closed", READY_TIMEOUT_S)
    lost = sum(1 for p in sent if sum(s.get(p, [0])[0] for s in seen) < nodes)
    return {"ms": _stats(lat), "messages": trials, "lost": lost}


def dispatches(fleet: Fleet, pub: Publisher, nodes: int, trials: int, tag: str,
               observe: Callable[[str, float], None] | None = None,
               duration_s: float = SHED_DURATION_S, release: bool = False) -> dict[str, Any]:
    """Phase 2 (and 4): ``trials`` shed dispatches of ``duration_s``, each timed to every node
    commanded; ``observe(event_id, published_at)`` once every node answered; ``release``:
    then end the event with a release dispatch. At most ``MAX_TRIAL_RATE_HZ`` trials a second
    (the nodes' dispatch rate limit, ``limits.dispatch_rate_per_s``, counts both)."""
    commanded: list[float] = []
    received: list[float] = []
    spread: list[float] = []
    incomplete: list[dict[str, Any]] = []
    topic = f"{PREFIX}/dispatch"
    for k in range(trials):
        begun = time.monotonic()
        event_id = f"fleet-{tag}-{k}-{uuid.uuid4().hex[:6]}"
        payload = json.dumps({"id": event_id, "kind": "shed", "fraction": SHED_FRACTION,
                              "duration_s": duration_s}, separators=(",", ":")).encode()
        sent = pub.send(topic, payload, qos=1)
        got = fleet.pushes(payload, True, TRIAL_TIMEOUT_S)
        n_recv = sum(int(g[0][0]) for g in got)
        n_cmd = sum(int(g[0][1]) for g in got)
        if n_cmd < nodes:
            refusals = [r for g in got for r in g[1]][:3]
            incomplete.append({"event": event_id, "received": n_recv, "commanded": n_cmd,
                               "refusals": refusals})
        else:
            last = max(g[0][3] for g in got)
            commanded.append((last - sent) * 1000.0)
            received.append((max(g[0][2] for g in got) - sent) * 1000.0)
            spread.append((last - min(g[0][4] for g in got)) * 1000.0)
        if observe is not None:
            observe(event_id, sent)
        if release:
            pub.send(topic, json.dumps({"id": f"{event_id}.end", "kind": "release",
                                        "ref": event_id}).encode(), qos=1)
        fleet.ask("settle", None, "settled", TRIAL_TIMEOUT_S)
        time.sleep(max(GAP_S, begun + 1.0 / MAX_TRIAL_RATE_HZ - time.monotonic()))
    return {"publish_to_all_commanded_ms": _stats(commanded),
            "publish_to_all_received_ms": _stats(received),
            "first_to_last_commanded_ms": _stats(spread),
            "trials": trials, "all_commanded_trials": len(commanded),
            "incomplete": incomplete,
            "series_ms": [round(x, 2) for x in commanded]}


def frequency(fleet: Fleet, pub: Publisher, nodes: int, seconds: float) -> dict[str, Any]:
    """Phase 3: samples at 10 Hz for ``seconds``; publish -> last node's receipt, ms."""
    rng = random.Random(7)
    sent: dict[bytes, float] = {}
    t0 = time.monotonic()
    for i in range(max(1, round(seconds * FREQUENCY_HZ))):
        time.sleep(max(0.0, t0 + i / FREQUENCY_HZ - time.monotonic()))
        payload = json.dumps({"t": round(time.time(), 3), "hz": round(
            50.0 + rng.uniform(-0.03, 0.03), 3)}, separators=(",", ":")).encode()
        sent[payload] = pub.send(f"{PREFIX}/frequency", payload, qos=0)
    time.sleep(1.0)
    seen = fleet.ask("frequency", None, "frequency", READY_TIMEOUT_S)
    lat: list[float] = []
    first: list[float] = []
    lost = missing = refused = 0
    for payload, at in sent.items():
        counts = [s[payload] for s in seen if payload in s]
        got = sum(int(c[0]) for c in counts)
        refused += got - sum(int(c[1]) for c in counts)
        missing += nodes - got
        if counts:
            first.append((min(c[3] for c in counts) - at) * 1000.0)
        if got < nodes:
            lost += 1
        else:
            lat.append((max(c[2] for c in counts) - at) * 1000.0)
    return {"publish_to_all_received_ms": _stats(lat),
            "publish_to_first_received_ms": _stats(first), "rate_hz": FREQUENCY_HZ,
            "samples": len(sent), "lost_samples": lost, "deliveries_missing": missing,
            "refused": refused, "series_ms": [round(x, 2) for x in lat]}


def run_one(nodes: int, *, trials: int, frequency_s: float, workers: int, gpus: int,
            status_period_s: float, writer_threads: bool, site: bool,
            max_queued: int | None, progress: Callable[[str], None]) -> dict[str, Any]:
    """Every phase for ``nodes`` nodes, on a broker and worker processes of their own."""
    workers = min(workers, nodes)
    limit = raise_fd_limit(FDS_PER_NODE * nodes + 256)
    with tempfile.TemporaryDirectory(prefix="gridtao-fleet-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker", extra_conf=[
            f"max_queued_messages {max_queued}"] if max_queued is not None else [])
        broker.start()
        fleet: Fleet | None = None
        try:
            assert broker.pid is not None
            fleet = Fleet(broker.port, PREFIX, nodes, workers, node_config(broker.port, gpus),
                          status_period_s, writer_threads)
            meter = Meter(broker, fleet.pids)
            result: dict[str, Any] = {
                "nodes": nodes, "workers": workers, "gpus_per_node": gpus, "trials": trials,
                "links_per_node": 2, "status_period_s": status_period_s,
                "writer_threads": writer_threads, "open_files_limit": limit,
                "broker_max_queued_messages": max_queued,
                "sim": node_config(broker.port, gpus)["gpus"]["sim"]}
            progress(f"fleet: {nodes} nodes on {workers} worker processes")
            with Publisher(broker.host, broker.port) as pub:
                meter.phase("broker_fanout", lambda: result.__setitem__(
                    "broker_fanout", broker_fanout(fleet, pub, nodes, trials)))
            t0 = time.monotonic()
            fleet.ask("nodes", None, "nodes_ready", READY_TIMEOUT_S)
            result["nodes_up_s"] = round(time.monotonic() - t0, 2)
            time.sleep(FIRST_STATUS_S + status_period_s * 1.5)  # every node's status is out
            with Publisher(broker.host, broker.port) as pub:
                meter.phase("dispatch", lambda: result.__setitem__(
                    "dispatch", dispatches(fleet, pub, nodes, trials, "nodes")))
                meter.phase("frequency", lambda: result.__setitem__(
                    "frequency", frequency(fleet, pub, nodes, frequency_s)))
            if site:
                progress("fleet: the site coordinator")
                result["site"] = fleetsite.measure_site(
                    broker, nodes, status_period_s,
                    lambda pub, observe: dispatches(fleet, pub, nodes, trials, "site", observe,
                                                    fleetsite.EVENT_S, release=True),
                    meter, Path(tmp))
            else:
                result["site"] = {"skipped": "--no-site"}
            result["cpu"] = meter.phases
            result["peak_rss_mib"] = {"broker": round(peak_rss_mib(broker.pid), 1),
                                      "workers": [round(peak_rss_mib(p), 1) for p in fleet.pids]}
        finally:
            if fleet is not None:
                fleet.close()
            broker.stop()
    return summarise(result)


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    """The headline figures at the top of a run's result, and the ratio to the baseline."""
    ours = r["dispatch"]["publish_to_all_commanded_ms"]
    base = r["broker_fanout"]["ms"]
    site = r["site"].get("site_ack_after_last_node_ms")
    return {
        "nodes": r["nodes"],
        "publish_to_all_commanded_ms": {"p50": ours["p50"], "p99": ours["p99"]},
        "broker_fanout_ms": {"p50": base["p50"], "p99": base["p99"]},
        "site_ack_after_last_node_ms": None if site is None else {
            "p50": site["p50"], "p99": site["p99"]},
        "ratio_to_broker_fanout": {q: _ratio(ours[q], base[q]) for q in ("p50", "p99")},
        "frequency_publish_to_all_received_ms": {
            q: r["frequency"]["publish_to_all_received_ms"][q] for q in ("p50", "p99")},
        "frequency_lost_samples": r["frequency"]["lost_samples"],
        "every_node_commanded_every_trial": not r["dispatch"]["incomplete"],
    } | r


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 2)


def auto_workers(nodes: int) -> int:
    """Worker processes for ``nodes`` nodes: one per ``NODES_PER_WORKER`` nodes, at most one
    per core (more only trade one another's time slices) and at most ``MAX_WORKERS``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1, math.ceil(nodes / NODES_PER_WORKER)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gridtao bench fleet", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", default="10,100,1000",
                   help="simulated nodes, or several: 10,100,1000 (default), one run each")
    p.add_argument("--trials", type=int, default=30,
                   help="dispatches timed per phase, and baseline messages (default 30)")
    p.add_argument("--frequency-s", type=float, default=10.0,
                   help="seconds of 10 Hz frequency samples (default 10)")
    p.add_argument("--workers", type=int, default=0,
                   help=f"worker processes (default: one per {NODES_PER_WORKER} nodes, at most "
                        f"one per core and {MAX_WORKERS})")
    p.add_argument("--gpus", type=int, default=2, help="simulated GPUs per node (default 2)")
    p.add_argument("--status-period-s", type=float, default=1.0,
                   help="seconds between a node's statuses (default 1, mqtt.status_period_s)")
    p.add_argument("--writer-threads", action="store_true",
                   help="start each island's per-GPU writer threads, as the agent does "
                        "(default: each node writes its GPUs in turn on its own thread)")
    p.add_argument("--max-queued-messages", type=int, default=None, metavar="N",
                   help="Mosquitto's max_queued_messages (default: Mosquitto's own, 1000; 0: "
                        "no limit): the QoS 1 messages a subscriber may have waiting")
    p.add_argument("--no-site", action="store_true", help="leave the site coordinator out")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the Markdown section to FILE")
    args = p.parse_args(argv)
    try:
        counts = [int(x) for x in str(args.nodes).split(",") if x.strip()]
    except ValueError:
        p.error(f"--nodes: a number or numbers separated by commas, got {args.nodes!r}")
    if not counts or any(not 1 <= n <= 5000 for n in counts):
        p.error("--nodes: each count must be in 1..5000")
    if not 1 <= args.trials <= 1000 or not 1 <= args.gpus <= 8 or args.frequency_s <= 0 \
            or not 0 <= args.workers <= 16 or not 0.1 <= args.status_period_s <= 60 \
            or (args.max_queued_messages is not None and args.max_queued_messages < 0):
        p.error("--trials 1..1000, --gpus 1..8, --frequency-s > 0, --workers 0..16, "
                "--status-period-s 0.1..60, --max-queued-messages >= 0")
    check_outputs(args, p)  # before the run, not after it
    runs = []
    try:
        if not args.no_site:
            fleetsite.check_available()
        for n in counts:
            runs.append(run_one(n, trials=args.trials, frequency_s=args.frequency_s,
                                workers=args.workers or auto_workers(n), gpus=args.gpus,
                                status_period_s=args.status_period_s,
                                writer_threads=args.writer_threads, site=not args.no_site,
                                max_queued=args.max_queued_messages,
                                progress=lambda line: print(line, file=sys.stderr)))
    except (RuntimeError, TimeoutError) as e:  # FleetError, CoordinatorMissing, a dead child
        print(f"gridtao: error: bench fleet: {e}", file=sys.stderr)
        return 2
    result: dict[str, Any] = runs[0] if len(runs) == 1 else {"nodes": counts, "runs": runs}
    result["reference"] = REFERENCE
    words = list(sys.argv[1:] if argv is None else argv)
    result |= provenance("gridtao bench fleet " + shlex.join(words))
    write_outputs(args, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
