"""Trigger-to-target latency bench: real Mosquitto, the agent in its own process, simulated GPUs
in real time, and two baselines measured in the same run on the same simulator.

For every trigger (a ``shed`` dispatch of 30 %) it records, in Unix seconds on this machine:
publish time (bench), receive time (agent, ``received_at``), all-limits-commanded time
(``commanded_at``) and the time measured node power entered the target band (``reached_at``,
measured by the agent's response meter through NVML instant power, the operator's path).

The simulated hardware response is explicit: a first-order cap-down lag ``tau`` enters a band
of 5 % of the reduction after ``tau * ln(20)``, and the instant reading refreshes every
``refresh_ms``, so the floor is ``tau * ln(20) + refresh_ms`` (defaults: 60 + 20 = 80 ms).

``backend="nvml"`` runs the same bench on this machine's GPUs: the agent, both baselines and
the readings use the real driver (every GPU it shows), the sequential baseline calls the real
``nvidia-smi -i N -pl W``, and every limit is put back to what it was before the bench. The
hardware response then has no closed form; it is the measured command -> target time. Callers
must have the operator's consent to write limits (``gridtao bench latency --allow-actuation``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from gridtao.app.simdevice import private_device
from gridtao.bench.authcost import BenchKey, make_key, verify_cost_us
from gridtao.bench.baselines import (
    BaselineNode,
    Timing,
    run_polling_1s,
    run_sequential_subprocess,
)
from gridtao.children import module_command
from gridtao.config.agent import Config
from gridtao.security.auth import Alg
from gridtao.telemetry.report import percentiles
from gridtao.telemetry.runinfo import machine_description, provenance
from gridtao.transport.localbroker import MosquittoBroker, Publisher, Subscriber

Backend = Literal["sim", "nvml"]

SHED_FRACTION = 0.3
SETTLE_S = 2.5  # between triggers: 0.4 s event + recovery of the draw and of the cut basis


def hardware_response_ms(config: Config) -> dict[str, float]:
    """The simulator's closed-form response (real GPUs have none: see ``command_to_target_ms``)."""
    sim = config.gpus.sim
    settle = sim.cap_down_ms * math.log(1.0 / config.control.band_fraction)
    return {"cap_down_tau_ms": sim.cap_down_ms, "refresh_ms": sim.refresh_ms,
            "settle_to_band_ms": settle, "floor_ms": settle + sim.refresh_ms}


PLANNER_PERIOD_S = 10.0  # the shortest round period the configuration allows


def _planner_config(workdir: Path, gpus: int) -> dict[str, Any]:
    """Tier 3 running in the agent through the bench: two weeks of synthetic history, fresh
    illustrative signals, a demand-response enrolment (scheduled, so the raw frequency
    triggers stay the only frequency response) and a round every ``PLANNER_PERIOD_S``, so
    several rounds (history read, forecast, HiGHS solve) overlap the measured triggers."""
    from gridtao.app.demo_plan import demo_signals
    from gridtao.history import HistoryStore
    from gridtao.history.synth import synthetic_minutes

    now = time.time()
    with HistoryStore.open(workdir / "history.sqlite3") as store:
        store.write(synthetic_minutes(int(now) // 60 * 60 - 14 * 86_400, 14, gpus=gpus))
    (workdir / "signals.json").write_text(json.dumps(demo_signals(now)))
    return {"products": [{"kind": "dr", "capacity_w": 1500.0}],
            "history": {"path": str(workdir / "history.sqlite3")},
            "planner": {"enabled": True, "period_s": PLANNER_PERIOD_S,
                        "signals_file": str(workdir / "signals.json")}}


def _agent_config(config: Config, port: int, gpus: int, *, workdir: Path,
                  key: BenchKey | None = None, backend: Backend = "sim",
                  planner: bool = False, island_alone: bool = False) -> dict[str, Any]:
    """The agent's YAML: the caller's config on a bench broker, fast release between triggers,
    and the bench key when ``key`` is given (dispatches must then be signed). On ``nvml`` the
    agent must be able to write limits (``require_actuation``): a bench of a node that cannot
    is refused at start, not measured as if it had cut. ``island_alone``: tier 1 at 1 Hz, so
    the island's threads have the interpreter nearly to themselves (the emulated split)."""
    sim = dataclasses.asdict(config.gpus.sim) | {"count": gpus}
    control = dataclasses.asdict(config.control) | ({"fast_hz": 1.0} if island_alone else {})
    # The minute history in the bench's folder, not the machine's state directory (the
    # planner's own history, when planning, replaces it).
    extra: dict[str, Any] = {"history": {"path": str(workdir / "history.sqlite3")}}
    if key is not None:
        extra["auth"] = key.agent_config(workdir)
    if planner:
        extra |= _planner_config(workdir, gpus)
    gpus_section: dict[str, Any] = {"backend": "sim", "sim": sim} if backend == "sim" else {
        "backend": "nvml", "require_actuation": True}
    return _plain(extra | {
        "gpus": gpus_section,
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": "gridtao/bench", "node_id": "bench"},
        "safety": {"release_rate_per_s": 20.0, "triggers": [
            dataclasses.asdict(t) for t in config.safety.triggers]},
        "control": control,
        "metrics": {"enabled": False},
        # As in the published runs: the trigger path alone, no files in the state directory.
        "audit": {"enabled": False}, "journal": {"enabled": False},
        # Triggers come every ~0.6 s here, faster than a real aggregator would be allowed to.
        "limits": {"min_event_interval_s": 0.0},
    })


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """Tuples (config sequences) as lists: yaml.safe_dump writes only plain types."""
    plain: dict[str, Any] = json.loads(json.dumps(data))
    return plain


class AgentProcess:
    """``gridtao run`` in a child process; stopped with SIGTERM (it restores its limits).

    ``busy_load``: keep the agent's controller loop that busy (``--busy-load``), or, with
    ``load_elsewhere``, a separate process at the same duty cycle: the load of a controller
    that does not share the island's interpreter (the emulated split, see ``--island-alone``).
    """

    def __init__(self, cfg_path: Path, *, busy_load: float, log_path: Path,
                 load_elsewhere: bool = False) -> None:
        args = module_command("gridtao", "--config", str(cfg_path), "run")
        if busy_load > 0 and not load_elsewhere:
            args += ["--busy-load", str(busy_load)]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self.burner = (subprocess.Popen([sys.executable, "-c", _BURNER, str(busy_load)])
                       if busy_load > 0 and load_elsewhere else None)

    def stop(self) -> int:
        if self.burner is not None:
            stop_process(self.burner)
        rc = stop_process(self.proc)
        self._log.close()
        return rc


# Python busy for the given fraction of every 10 ms, like the controller loop's --busy-load.
_BURNER = """
import sys, time
busy = float(sys.argv[1])
while True:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.01 * busy:
        pass
    time.sleep(0.01 * (1 - busy))
"""


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM ``proc`` (a bench child), SIGKILL it after 15 s; its exit status."""
    proc.terminate()
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_online(broker: MosquittoBroker, topic: str, pid: int, *, timeout_s: float) -> None:
    """Wait for the retained status of the agent with ``pid`` saying it is online. Any status
    will not do: the one left on the broker by the phase before (the same node id) arrives
    first, and a dispatch sent before this agent subscribed would be lost."""
    deadline = time.monotonic() + timeout_s
    with Subscriber(broker.host, broker.port, topic) as status:
        seen = 0
        while True:
            for message in status.messages[seen:]:
                body = json.loads(message.payload)
                if body.get("online") is True and (body.get("instance") or {}).get("pid") == pid:
                    return
            seen = len(status.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{topic}: agent pid {pid} not online after {timeout_s:g} s")
            status.wait(seen + 1, timeout=left)


def measure_gridtao(
    broker: MosquittoBroker, cfg_path: Path, workdir: Path, *, triggers: int, busy_load: float,
    progress: Callable[[str], None], key: BenchKey | None = None, load_elsewhere: bool = False,
) -> dict[str, list[float]]:
    prefix = "gridtao/bench"
    ack_topic, status_topic = f"{prefix}/nodes/bench/ack", f"{prefix}/nodes/bench/status"
    name = "under_load" if busy_load > 0 else "idle"
    agent = AgentProcess(cfg_path, busy_load=busy_load, log_path=workdir / f"agent-{name}.log",
                         load_elsewhere=load_elsewhere)
    out: dict[str, list[float]] = {k: [] for k in (
        "publish_to_command_ms", "receive_to_command_ms", "trigger_to_target_ms",
        "publish_to_receive_ms", "command_to_target_ms")}
    try:
        wait_online(broker, status_topic, agent.proc.pid, timeout_s=30.0)
        time.sleep(1.0)  # let tier 1 take a few readings and arm the island
        with Subscriber(broker.host, broker.port, ack_topic) as acks, \
                Publisher(broker.host, broker.port) as pub:
            for k in range(triggers):
                event_id = f"lat-{busy_load}-{k}"
                before = len(acks.messages)
                body = {"id": event_id, "kind": "shed", "fraction": SHED_FRACTION,
                        "duration_s": 0.35, "issued_at": time.time()}
                # Signing is the aggregator's cost: done before the publish time is taken.
                payload = key.sign(body) if key is not None else json.dumps(body).encode()
                sent = pub.send(f"{prefix}/dispatch", payload, qos=1)
                got = _wait_ack(acks, before, event_id, timeout_s=10.0)
                first, reached = got[0], got[-1].get("reached_at")
                out["publish_to_command_ms"].append((first["commanded_at"] - sent) * 1e3)
                out["receive_to_command_ms"].append(
                    (first["commanded_at"] - first["received_at"]) * 1e3)
                out["publish_to_receive_ms"].append((first["received_at"] - sent) * 1e3)
                if reached is not None:
                    out["trigger_to_target_ms"].append((reached - sent) * 1e3)
                    # The simulated GPUs' own share: from every limit in force to the band.
                    out["command_to_target_ms"].append((reached - first["commanded_at"]) * 1e3)
                # The event lasts 0.35 s and ramps out in 0.05 s; then let the draw climb back
                # (cap-up ~250 ms) and the smoothed cut basis (control.basis_tau_s) settle, so
                # every trigger starts from a node at its natural draw.
                time.sleep(SETTLE_S)
                if (k + 1) % 10 == 0:
                    progress(f"  gridtao ({name}): {k + 1}/{triggers}")
    finally:
        rc = agent.stop()
        if rc != 0:
            raise RuntimeError(f"agent exited with {rc}; see {workdir}/agent-{name}.log")
    return out


def _wait_ack(sub: Subscriber, start: int, event_id: str, *, timeout_s: float
              ) -> list[dict[str, Any]]:
    """The first ack of ``event_id`` and, if it comes, the one with ``reached_at``."""
    deadline = time.monotonic() + timeout_s
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        mine = [json.loads(m.payload) for m in sub.messages[start:]]
        mine = [a for a in mine if a.get("id") == event_id]
        if mine and not mine[0].get("accepted"):
            raise RuntimeError(f"agent rejected {event_id}: {mine[0].get('reason')}")
        if any(a.get("reached_at") is not None for a in mine):
            return mine
        time.sleep(0.002)
    if mine:
        return mine
    raise TimeoutError(f"no ack for {event_id}")


def measure_broker_hop(broker: MosquittoBroker, n: int) -> list[float]:
    """Publish -> a plain paho subscriber's callback, ms: the transport floor on this machine."""
    topic = "bench/hop"
    hops: list[float] = []
    with Subscriber(broker.host, broker.port, topic) as sub, \
            Publisher(broker.host, broker.port) as pub:
        for k in range(n):
            before = len(sub.messages)
            sent = pub.send(topic, b'{"hop":%d}' % k, qos=1)
            sub.wait(before + 1, timeout=5.0)
            hops.append((sub.received_wall[before] - sent) * 1e3)
            time.sleep(0.01)
    return hops


def _baseline(timings: Sequence[Timing]) -> dict[str, Any]:
    return {
        "triggers": len(timings),
        "publish_to_command_ms": percentiles([(t.commanded - t.published) * 1e3 for t in timings]),
        "trigger_to_target_ms": percentiles(
            [(t.reached - t.published) * 1e3 for t in timings if t.reached is not None]),
    }


def run_latency_bench(
    config: Config, *, triggers: int, gpus: int, baseline_triggers: int | None = None,
    progress: Callable[[str], None] = print, auth: Alg | None = None, backend: Backend = "sim",
    planner: bool = False, island_alone: bool = False,
) -> dict[str, Any]:
    """Run the bench; with ``auth``, the agent requires dispatches signed with that algorithm
    (a key made in the temporary folder) and the per-message verify cost is measured too.
    ``backend="nvml"`` writes limits to this machine's GPUs (all of them; ``gpus`` is then
    ignored) and restores them: only with the operator's consent. Raises ``GpuError`` (before
    anything runs) when the driver or ``nvidia-smi`` is missing. ``island_alone`` emulates the
    island in a process of its own: tier 1 at 1 Hz in the agent, and the load phase's busy
    loop in a separate process instead of the agent's controller loop."""
    base_n = baseline_triggers if baseline_triggers is not None else max(3, min(triggers, 10))
    with private_device("bench-latency") as device:
        # The agent and both baselines drive one set of GPUs, one after the other.
        sim_cfg = dataclasses.replace(config.gpus.sim, count=gpus, device=device)
        config = dataclasses.replace(config, gpus=dataclasses.replace(config.gpus, sim=sim_cfg))
        # Opened first: on real GPUs it records the limits to restore and proves the driver is
        # there.
        node = BaselineNode(sim_cfg, band_fraction=config.control.band_fraction, backend=backend)
        gpus = len(node.indices)
        try:
            measured = _measure_all(config, node, triggers=triggers, gpus=gpus, base_n=base_n,
                                    progress=progress, auth=auth, backend=backend,
                                    planner=planner, island_alone=island_alone)
        finally:
            node.close()
    result = _result(config, measured, triggers=triggers, gpus=gpus, auth=auth, backend=backend)
    result["planner"] = {"enabled": True, "period_s": PLANNER_PERIOD_S} if planner else None
    result["layout"] = "island_alone_emulated" if island_alone else "one_process"
    return result


def _measure_all(
    config: Config, node: BaselineNode, *, triggers: int, gpus: int, base_n: int,
    progress: Callable[[str], None], auth: Alg | None, backend: Backend, planner: bool,
    island_alone: bool = False,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gridtao-bench-") as tmp:
        workdir = Path(tmp)
        with MosquittoBroker(workdir) as broker:
            cfg_path = workdir / "agent.yaml"
            key = make_key(auth, workdir) if auth is not None else None
            cfg_path.write_text(yaml.safe_dump(_agent_config(
                config, broker.port, gpus, workdir=workdir, key=key, backend=backend,
                planner=planner, island_alone=island_alone)))
            kind = "simulated GPUs" if backend == "sim" else "GPUs of this machine (NVML)"
            progress(f"broker 127.0.0.1:{broker.port}; {gpus} {kind}; {triggers} triggers"
                     + (f"; dispatches signed ({auth})" if auth else ""))
            hop = measure_broker_hop(broker, max(triggers, 20))
            idle = measure_gridtao(broker, cfg_path, workdir, triggers=triggers, busy_load=0.0,
                                   progress=progress, key=key)
            loaded = measure_gridtao(broker, cfg_path, workdir, triggers=triggers, busy_load=0.9,
                                     progress=progress, key=key, load_elsewhere=island_alone)
            verify = {alg: verify_cost_us(alg, workdir) for alg in ("ed25519", "hmac")} if (
                auth is not None) else None

            pub = Publisher(broker.host, broker.port)

            def shed_publisher(topic: str, tag: str) -> Callable[[int], float]:
                def send(k: int) -> float:
                    return pub.send(topic, json.dumps(
                        {"id": f"{tag}-{k}", "kind": "shed", "fraction": SHED_FRACTION,
                         "duration_s": 1.0}).encode(), qos=1)
                return send

            try:
                progress(f"  baseline sequential_subprocess: {base_n} triggers")
                seq = run_sequential_subprocess(
                    node, broker.host, broker.port, "baseline/seq/dispatch",
                    shed_publisher("baseline/seq/dispatch", "seq"), base_n)
                progress(f"  baseline polling_1s: {base_n} triggers")
                poll = run_polling_1s(
                    node, broker.host, broker.port, "baseline/poll/dispatch",
                    shed_publisher("baseline/poll/dispatch", "poll"), base_n)
            finally:
                pub.close()
    return {"hop": hop, "idle": idle, "loaded": loaded, "verify": verify, "seq": seq,
            "poll": poll}


def _result(config: Config, m: dict[str, Any], *, triggers: int, gpus: int, auth: Alg | None,
            backend: Backend) -> dict[str, Any]:
    idle, loaded, verify, seq, poll = m["idle"], m["loaded"], m["verify"], m["seq"], m["poll"]
    result: dict[str, Any] = {
        "triggers": triggers,
        "gpus": gpus,
        "backend": backend,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "simulated_hardware_response": (
            hardware_response_ms(config) if backend == "sim" else None),
        "broker_hop_ms": percentiles(m["hop"]),
        "auth": None if auth is None else {"alg": auth, "verify_us": verify},
        **{k: percentiles(v) for k, v in idle.items()},
        "under_load": {k: percentiles(v) for k, v in loaded.items()},
        "baselines": {"sequential_subprocess": _baseline(seq), "polling_1s": _baseline(poll)},
        "samples": {"idle": idle, "under_load": loaded},
    }
    result["ratios"] = {
        f"{name}_vs_gridtao_p50_publish_to_command": (
            result["baselines"][name]["publish_to_command_ms"]["p50"]
            / result["publish_to_command_ms"]["p50"])
        for name in ("sequential_subprocess", "polling_1s")
    }
    result["targets"] = judge_targets(result)
    return result


PUBLISH_TO_COMMAND_P99_MAX_MS = 2.0
TARGET_WITHIN_HARDWARE_MS = 5.0
MIN_SPEEDUP_VS_SEQUENTIAL = 20.0
#: Fewer triggers than this and a p99 is only the largest of a handful: not judged.
MIN_TRIGGERS_TO_JUDGE_P99 = 20


def judge_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The three latency targets (BENCHMARKS.md, "Trigger-to-target latency"), each with its
    limit, the measured value(s) and ``met``.

    Trigger -> target is judged against the hardware response measured in the same run
    (``command_to_target_ms``: every limit in force -> node power in the band, the simulated
    GPUs' share, which varies with where the training load was when the cut landed); the
    closed-form floor of ``simulated_hardware_response`` is reported beside it.
    """
    idle, loaded = result["publish_to_command_ms"]["p99"], (
        result["under_load"]["publish_to_command_ms"]["p99"])
    hw_p99 = result["command_to_target_ms"]["p99"]
    t2t = result["trigger_to_target_ms"]["p99"]
    loaded_hw_p99 = result["under_load"]["command_to_target_ms"]["p99"]
    loaded_t2t = result["under_load"]["trigger_to_target_ms"]["p99"]
    speedup = result["ratios"]["sequential_subprocess_vs_gridtao_p50_publish_to_command"]
    # met: None when too few triggers ran for a p99 to mean anything (said in the report).
    judged = result["triggers"] >= MIN_TRIGGERS_TO_JUDGE_P99
    targets = {
        "publish_to_command_p99_ms": {
            "limit": PUBLISH_TO_COMMAND_P99_MAX_MS, "idle": idle, "under_load": loaded,
            "transport_floor_p99": result["broker_hop_ms"]["p99"],
            "met": max(idle, loaded) <= PUBLISH_TO_COMMAND_P99_MAX_MS,
        },
        "trigger_to_target_p99_ms": {
            "limit": hw_p99 + TARGET_WITHIN_HARDWARE_MS, "value": t2t,
            "hardware_response_p99": hw_p99,
            # The simulator's closed form; real GPUs have only the measured response.
            "hardware_floor": (result["simulated_hardware_response"] or {}).get("floor_ms"),
            "met": t2t <= hw_p99 + TARGET_WITHIN_HARDWARE_MS,
            # Not part of the target as stated (idle machine); reported so nobody has to ask.
            "under_load": {
                "limit": loaded_hw_p99 + TARGET_WITHIN_HARDWARE_MS, "value": loaded_t2t,
                "met": loaded_t2t <= loaded_hw_p99 + TARGET_WITHIN_HARDWARE_MS,
            },
        },
        "speedup_vs_sequential_subprocess_p50": {
            "limit": MIN_SPEEDUP_VS_SEQUENTIAL, "value": speedup,
            "met": speedup >= MIN_SPEEDUP_VS_SEQUENTIAL,
        },
    }
    if not judged:
        for target in (targets["publish_to_command_p99_ms"], targets["trigger_to_target_p99_ms"],
                       targets["trigger_to_target_p99_ms"]["under_load"]):
            target |= {"met": None, "min_triggers": MIN_TRIGGERS_TO_JUDGE_P99}
    return targets


def run_info(module: str, argv: Sequence[str] | None) -> dict[str, Any]:
    """Provenance of a ``python -m`` harness run (:func:`~gridtao.telemetry.runinfo.provenance`)."""
    return provenance(f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv))
