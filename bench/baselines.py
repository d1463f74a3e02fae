"""The two baselines the latency bench measures in the same run, on the same simulator.

- ``sequential_subprocess``: what GridPilot's public kit does. On a trigger, one subprocess per
  GPU, in sequence, each starting an interpreter, initialising NVML and setting one limit (the
  stand-in for ``nvidia-smi -i N -pl W``; see ``bench/setlimit.py``). The simulated GPU changes
  when each subprocess has returned, as a real one would when ``nvidia-smi`` exits.
- ``polling_1s``: a loop that reads the latest request from the broker once a second (the
  cadence of OpenLEADR-style polling and of GridPilot's 1 s tier 1), then sets the limits
  in-process.

Both listen on the same broker as gridtao, on the same (machine-wide) simulated GPUs, and
measure the same quantities: publish -> all limits commanded, and publish -> measured node power
in the target band (read through the same NVML path). On real GPUs (``backend="nvml"``) they
drive this machine's GPUs, the sequential one through the real ``nvidia-smi``, and put every
limit back to what it was when the node was opened.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gridtao.children import module_command
from gridtao.config.agent import GpusConfig, SimConfig
from gridtao.control.response import band_mw
from gridtao.gpu import GpuUnavailable, open_backend


@dataclass(frozen=True)
class Timing:
    """One trigger, Unix seconds: published by the bench, commanded and reached by the baseline."""

    published: float
    commanded: float
    reached: float | None


class BaselineNode:
    """A naive node: GPUs (simulated, or this machine's with ``backend="nvml"``) plus a strategy
    that turns a shed request into limits. ``resting_mw``: each GPU's enforced limit when the
    node was opened, what :meth:`restore` puts back."""

    def __init__(self, sim_cfg: SimConfig, *, band_fraction: float,
                 backend: Literal["sim", "nvml"] = "sim") -> None:
        self.backend = open_backend(GpusConfig(backend=backend, sim=sim_cfg))
        self.real = backend == "nvml"
        if self.real and shutil.which("nvidia-smi") is None:
            self.backend.close()
            raise GpuUnavailable("nvidia-smi is not on PATH: the sequential baseline runs it")
        self.indices = [d.index for d in self.backend.devices()]
        self.resting_mw = {i: self.backend.enforced_limit_mw(i) for i in self.indices}
        self.band_fraction = band_fraction
        self.sim_cfg = sim_cfg

    def node_mw(self) -> float:
        return float(sum(self.backend.instant_power_mw(i) for i in self.indices))

    def caps_for(self, fraction: float) -> tuple[float, list[int]]:
        """Caps cutting each GPU's current reading by ``fraction`` (within its bounds)."""
        caps = []
        baseline = 0.0
        for i in self.indices:
            draw = self.backend.instant_power_mw(i)
            baseline += draw
            lim = self.backend.power_limits(i)
            ceiling = min(lim.default_mw, self.resting_mw[i])
            caps.append(int(min(max(draw * (1 - fraction), lim.min_mw), ceiling)))
        return baseline, caps

    def wait_reached(self, baseline_mw: float, target_mw: float, timeout_s: float = 5.0
                     ) -> float | None:
        band = band_mw(baseline_mw, target_mw, self.band_fraction)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.node_mw() <= target_mw + band:
                return time.time()
            time.sleep(0.001)
        return None

    def restore(self) -> None:
        for i in self.indices:
            self.backend.set_limit_mw(i, self.resting_mw[i])

    def close(self) -> None:
        self.restore()
        self.backend.close()


def set_limit_subprocess(node: BaselineNode, index: int, limit_mw: int) -> None:
    """One ``nvidia-smi -i N -pl W``: on real GPUs that very command; on simulated ones a fresh
    interpreter that opens the machine's simulated device and sets the limit there, where the
    node (and every other process) sees it, as with a real GPU."""
    watts = f"{limit_mw / 1000:.0f}"
    if node.real:
        subprocess.run(["nvidia-smi", "-i", str(index), "-pl", watts],
                       check=True, stdout=subprocess.DEVNULL)
        return
    if node.sim_cfg.device is None:
        raise ValueError("the sequential baseline needs the machine-wide simulated device "
                         "(gpus.sim.device): a subprocess cannot reach in-process GPUs")
    subprocess.run(
        module_command("gridtao.bench.setlimit", "--device", node.sim_cfg.device,
         "-i", str(index), "-pl", watts),
        check=True, stdout=subprocess.DEVNULL,
    )


class _Listener:
    """A paho subscriber that keeps the latest dispatch (and optionally calls back)."""

    def __init__(self, host: str, port: int, topic: str,
                 on_message: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.latest: dict[str, Any] | None = None
        self._on = on_message
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"baseline-{id(self)}")
        self._client.on_message = self._message
        self._client.connect(host, port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()

    def _message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        self.latest = data
        if self._on is not None:
            self._on(data)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def run_sequential_subprocess(
    node: BaselineNode, host: str, port: int, topic: str,
    publish: Callable[[int], float], triggers: int,
) -> list[Timing]:
    """Trigger ``triggers`` times; each time run one subprocess per GPU, in sequence."""
    results: list[Timing] = []
    done = threading.Event()
    pending: dict[str, float] = {}

    def on_message(msg: dict[str, Any]) -> None:
        fraction = float(msg["fraction"])
        baseline, caps = node.caps_for(fraction)
        for i, cap in zip(node.indices, caps, strict=True):
            set_limit_subprocess(node, i, cap)
        commanded = time.time()
        reached = node.wait_reached(baseline, sum(caps))
        results.append(Timing(pending.pop(str(msg["id"])), commanded, reached))
        done.set()

    listener = _Listener(host, port, topic, on_message)
    try:
        time.sleep(0.3)
        for k in range(triggers):
            done.clear()
            pending[f"seq-{k}"] = publish(k)
            done.wait(timeout=60.0)
            node.restore()
            time.sleep(0.5)
    finally:
        listener.close()
    return results


def run_polling_1s(
    node: BaselineNode, host: str, port: int, topic: str,
    publish: Callable[[int], float], triggers: int, *, period_s: float = 1.0,
) -> list[Timing]:
    """Trigger ``triggers`` times against a loop that looks at the latest request every second."""
    listener = _Listener(host, port, topic)
    stop = threading.Event()
    results: list[Timing] = []
    published: dict[str, float] = {}
    seen: set[str] = set()

    def poll() -> None:
        while not stop.wait(period_s):
            msg = listener.latest
            if msg is None or str(msg["id"]) in seen:
                continue
            seen.add(str(msg["id"]))
            baseline, caps = node.caps_for(float(msg["fraction"]))
            for i, cap in zip(node.indices, caps, strict=True):
                node.backend.set_limit_mw(i, cap)
            commanded = time.time()
            reached = node.wait_reached(baseline, sum(caps))
            results.append(Timing(published[str(msg["id"])], commanded, reached))

    poller = threading.Thread(target=poll, name="baseline-poll", daemon=True)
    poller.start()
    try:
        time.sleep(0.3)
        for k in range(triggers):
            n = len(results)
            published[f"poll-{k}"] = publish(k)
            deadline = time.monotonic() + 3 * period_s + 5.0
            while len(results) == n and time.monotonic() < deadline:
                time.sleep(0.01)
            node.restore()
            # Spread publish times over the polling phase so the wait is sampled fairly.
            time.sleep(0.3 + (k * 0.37) % period_s)
    finally:
        stop.set()
        poller.join(timeout=5.0)
        listener.close()
    return results
