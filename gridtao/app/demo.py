"""`gridtao demo`: the whole product on one machine in about a minute.

Starts Mosquitto on a free loopback port, an agent on 8 simulated H100s (real time), then acts as
the grid: publishes a frequency dip to 49.45 Hz (crossing the armed FFR levels one by one) and,
once that event has ramped out, a ``shed`` dispatch. It listens like any wire-contract-v1 client
(acks and status), prints a timeline and a latency summary, and writes a PNG of node power
against target and frequency. The GPUs are simulated on the machine, on a device of the demo's
own (``demo-<pid>``, never one an agent may run on; gone at the end): mid-event the demo runs
``gridtao gpus --sim-device`` in a process of its own and prints what it sees. Its records
(audit trail, journal, minute history) go to its output folder. Then tier 3: the
plan for the next day from synthetic history and illustrative prices (demo_plan.py), as a table
and ``plan.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gridtao.app.agent import Agent, AgentOptions
from gridtao.app.serve import serving
from gridtao.app.simdevice import private_device
from gridtao.children import module_command
from gridtao.clock import MonotonicClock
from gridtao.config.agent import Config
from gridtao.config.paths import sim_device_path
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.transport.localbroker import MosquittoBroker, Publisher, Subscriber, publish
from gridtao.wire.messages import Topics

log = logging.getLogger("gridtao.app.demo")


@dataclass
class Sample:
    t_s: float
    node_w: float
    target_w: float | None
    hz: float | None


class Recorder:
    """Samples measured node power (through NVML, as an operator would) and the target."""

    def __init__(self, agent: Agent, period_s: float = 0.01) -> None:
        self._agent = agent
        self._period_s = period_s
        self.samples: list[Sample] = []
        self.hz: float | None = 50.0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="demo-recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        backend = self._agent.backend
        indices = [d.index for d in backend.devices()]
        while not self._stop.wait(self._period_s):
            node_mw = sum(backend.instant_power_mw(i) for i in indices)
            target = self._agent.island.view().target_mw
            self.samples.append(Sample(time.monotonic() - self._t0, node_mw / 1000.0,
                                       None if target is None else target / 1000.0, self.hz))


def _frequency_profile(t_s: float) -> float:
    """50 Hz, a fall at 0.25 Hz/s (a large trip) to 49.45 Hz, held 3 s, recovery at 0.2 Hz/s."""
    fall_start, nadir_hz, hold_s = 1.0, 49.45, 3.0
    fall_s = (50.0 - nadir_hz) / 0.25
    if t_s < fall_start:
        return 50.0
    if t_s < fall_start + fall_s:
        return 50.0 - 0.25 * (t_s - fall_start)
    if t_s < fall_start + fall_s + hold_s:
        return nadir_hz
    return min(50.0, nadir_hz + 0.2 * (t_s - fall_start - fall_s - hold_s))


def run_demo(config: Config, *, out_dir: Path, duration_scale: float = 1.0) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    # Simulated GPUs of the demo's own, on the machine (so another shell can watch them), never
    # those an agent on this machine may be running on; gone with the demo.
    if config.gpus.sim.device is None:
        return _run(config, out_dir, duration_scale, None)
    with private_device("demo") as device:
        return _run(config, out_dir, duration_scale, device)


def _run(config: Config, out_dir: Path, duration_scale: float, device: str | None) -> int:
    # Named as the agent names its own (history-<node>.sqlite3), so `gridtao report energy`
    # calls the demo's node by one name in every table.
    history = out_dir.resolve() / "history-demo-node.sqlite3"
    for stale in (history, history.with_name(history.name + "-wal"),
                  history.with_name(history.name + "-shm")):
        stale.unlink(missing_ok=True)  # an earlier demo's GPUs, not this one's
    with tempfile.TemporaryDirectory(prefix="gridtao-demo-") as tmp, \
            MosquittoBroker(Path(tmp)) as broker:
        cfg = dataclasses.replace(
            config,
            mqtt=dataclasses.replace(config.mqtt, port=broker.port, node_id="demo-node"),
            metrics=dataclasses.replace(config.metrics, port=0),
            gpus=dataclasses.replace(config.gpus, backend="sim", sim=dataclasses.replace(
                config.gpus.sim, device=device)),
            # The demo's grid sends frequency only around its dip; its silence is not a fault.
            safety=dataclasses.replace(config.safety, frequency_stale_s=3600.0),
            # The demo's records stay with its output, not in the machine's state directory.
            audit=dataclasses.replace(config.audit, path=str(out_dir.resolve() / "audit.jsonl")),
            journal=dataclasses.replace(config.journal,
                                        path=str(out_dir.resolve() / "journal.json")),
            history=dataclasses.replace(config.history, path=str(history)),
        )
        clock = MonotonicClock()
        sim = SimNvml.from_config(cfg.gpus.sim, clock, device_path=None if device is None
                                  else sim_device_path(device))
        agent = Agent(cfg, clock=clock, backend=NvmlBackend(sim),
                      options=AgentOptions(serve_metrics=False))
        return _drive(agent, broker, out_dir, duration_scale)


def _drive(agent: Agent, broker: MosquittoBroker, out_dir: Path, scale: float) -> int:
    topics: Topics = agent.topics
    recorder = Recorder(agent)
    acks: list[dict[str, object]] = []
    try:
        with Subscriber(broker.host, broker.port, topics.ack) as ack_sub:
            agent.start()
            # The controller loop (status, tier 2) in a thread of its own.
            with serving(agent, name="demo-controller"):
                recorder.start()
                try:
                    acks = _play_grid(agent, broker, recorder, ack_sub, scale)
                finally:
                    recorder.stop()
    finally:
        # On any failure too: the agent restores the limits it found and goes offline.
        agent.close()
    from gridtao.telemetry import plotting
    from gridtao.telemetry.report import plot_timeline, summarise_acks

    print(summarise_acks(acks))
    if plotting.available():
        png = out_dir / "demo.png"
        plot_timeline(recorder.samples, png, title="gridtao demo: 8 simulated H100 SXM")
        print(f"plot: {png}")
    else:
        print(f"no plot: {plotting.INSTALL_HINT}")
    print("all limits restored to their resting values; agent offline")
    from gridtao.app.demo_plan import show_plan

    show_plan(agent.config, agent.gpu_limits, agent.gpu_indices, out_dir)
    return 0


def _play_grid(agent: Agent, broker: MosquittoBroker, recorder: Recorder,
               ack_sub: Subscriber, scale: float) -> list[dict[str, object]]:
    """The frequency dip, then a shed dispatch; returns the acks heard."""
    topics = agent.topics
    t0 = time.monotonic()
    print(f"gridtao demo: broker 127.0.0.1:{broker.port}, node {agent.node_id}, "
          f"{len(agent.backend.devices())} simulated GPUs")
    _sleep_until(t0, 1.0)
    baseline = recorder.samples[-1].node_w if recorder.samples else float("nan")
    print(f"[{time.monotonic() - t0:6.2f} s] draw now {baseline:.0f} W (the training load "
          "swings by some 300 W: each cut is measured from the draw smoothed over "
          f"{agent.config.control.basis_tau_s:g} s where it lands, its baseline in the audit "
          "trail); frequency dip to 49.45 Hz begins")
    # Frequency from a meter at 10 Hz, following the profile, over one connection.
    t_f = 0.0
    with Publisher(broker.host, broker.port) as meter:
        while t_f < 12.0 * scale:
            hz = _frequency_profile(t_f / scale)
            recorder.hz = hz
            meter.send(topics.frequency,
                       json.dumps({"t": time.time(), "hz": round(hz, 3)}).encode(), qos=0)
            t_f += 0.1
            _sleep_until(t0, 1.0 + t_f)
    _wait_idle(agent, timeout_s=15.0)
    # Let the draw climb back (cap-up is slow) so the shed is cut from the natural draw.
    time.sleep(2.0)
    print(f"[{time.monotonic() - t0:6.2f} s] frequency event over; "
          "dispatching shed 25 % for 4 s")
    shed = {"id": "demo-shed-1", "kind": "shed", "fraction": 0.25,
            "duration_s": 4.0 * scale, "issued_at": time.time()}
    publish(broker.host, broker.port, topics.dispatch, json.dumps(shed).encode(), qos=1)
    time.sleep(1.5 * scale)
    device = agent.config.gpus.sim.device
    if device is not None:
        print(f"[{time.monotonic() - t0:6.2f} s] mid-event, `gridtao gpus` in another process "
              f"sees the demo's GPUs (while the demo runs, `gridtao gpus --sim-device {device} "
              "--watch 0.5` in another shell shows them live; the demo's device goes with it):")
        print(_gpus_elsewhere(device))
    _wait_idle(agent, timeout_s=20.0)
    time.sleep(0.5)
    return [json.loads(m.payload) for m in list(ack_sub.messages)]


def _gpus_elsewhere(device: str) -> str:
    """``gridtao gpus`` on the demo's simulated device, run as a separate process."""
    done = subprocess.run(module_command("gridtao", "gpus", "--sim-device", device),
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return f"(gridtao gpus failed: {done.stderr.strip()})"
    return done.stdout.rstrip()


def _sleep_until(t0: float, at_s: float) -> None:
    delay = t0 + at_s - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _wait_idle(agent: Agent, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if agent.island.view().event_id is None:
            return
        time.sleep(0.05)
    log.warning("event still active after %.0f s", timeout_s)
