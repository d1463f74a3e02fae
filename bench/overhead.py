"""What the agent costs its host: CPU and memory of an idle ``gridtao run``, against a bare loop.

``python -m gridtao.bench.overhead [--gpus N] [--seconds S] [--json FILE]`` starts a real
Mosquitto on loopback and, one after the other for the same ``S`` seconds, two processes on the
same simulated GPUs (``gpus.sim`` of the default configuration, real time):

* ``gridtao run`` with nothing to do: tier 1 at ``control.fast_hz``, tier 2, the island lane,
  the retained status every ``mqtt.status_period_s``, the watchdog, metrics served on a free
  loopback port;
* the baseline: a bare loop that only reads every GPU's instant power through the same NVML
  backend at the same rate (:func:`poll_loop`), i.e. what any controller of that rate pays before
  it decides anything.

CPU is the process's user + system time over the window (``/proc/<pid>/stat``), as a percentage
of one core; memory is its resident set at the end (``VmRSS``). The simulated GPUs run inside
both processes, so both numbers include the simulator's share of every read (a real driver's
calls cost less Python): the ratio is the honest figure. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gridtao.app.simdevice import private_device
from gridtao.bench.agentproc import AgentProcess, stop_process
from gridtao.bench.latency import run_info
from gridtao.children import module_command
from gridtao.config.agent import Config
from gridtao.transport.localbroker import MosquittoBroker, Subscriber, free_port

READY_TIMEOUT_S = 60.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _measure(proc: subprocess.Popen[bytes], seconds: float) -> dict[str, float]:
    """CPU % of one core over ``seconds`` from now, and the RSS at the end, of ``proc``."""
    c0, t0 = _cpu_s(proc.pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = _cpu_s(proc.pid), time.monotonic()
    if proc.poll() is not None:
        raise RuntimeError(f"process {proc.pid} exited during the measurement")
    return {"cpu_percent": 100.0 * (c1 - c0) / (t1 - t0), "rss_mib": _rss_mib(proc.pid)}


def _agent_yaml(config: Config, port: int, gpus: int, workdir: Path) -> dict[str, Any]:
    sim = dataclasses.asdict(config.gpus.sim) | {"count": gpus}
    plain: dict[str, Any] = json.loads(json.dumps({
        "gpus": {"backend": "sim", "sim": sim},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": "gridtao/overhead",
                 "node_id": "overhead"},
        "control": dataclasses.asdict(config.control),
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        # As in the published runs (and no files in the state directory); the minute history,
        # on by default, is part of an idle agent's cost: in the bench's folder.
        "audit": {"enabled": False}, "journal": {"enabled": False},
        "history": {"path": str(workdir / "history.sqlite3")},
    }))
    return plain


def measure_agent(config: Config, *, gpus: int, seconds: float, workdir: Path) -> dict[str, float]:
    with MosquittoBroker(workdir / "mosquitto") as broker:
        cfg_path = workdir / "agent.yaml"
        cfg_path.write_text(yaml.safe_dump(_agent_yaml(config, broker.port, gpus, workdir)))
        status = "gridtao/overhead/nodes/overhead/status"
        with Subscriber(broker.host, broker.port, status) as sub:
            agent = AgentProcess(cfg_path, busy_load=0.0, log_path=workdir / "agent.log")
            try:
                sub.wait(1, timeout=READY_TIMEOUT_S)  # online: started, connected, serving
                time.sleep(1.0)  # past start-up work (first readings, arming)
                return _measure(agent.proc, seconds)
            finally:
                agent.stop()


def measure_poll_loop(config: Config, *, gpus: int, seconds: float) -> dict[str, float]:
    proc = subprocess.Popen(
        module_command("gridtao.bench.overhead", "--poll-loop", "--gpus", str(gpus),
         "--hz", str(config.control.fast_hz), "--device", str(config.gpus.sim.device)),
        stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the poll loop did not start")
        time.sleep(1.0)
        return _measure(proc, seconds)
    finally:
        stop_process(proc)


def poll_loop(gpus: int, hz: float, device: str) -> None:
    """The baseline: read every GPU's instant power ``hz`` times a second, forever, from the
    simulated device ``device`` (as the agent reads it)."""
    from gridtao.clock import MonotonicClock
    from gridtao.config.agent import SimConfig
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml

    clock = MonotonicClock()
    from gridtao.config.paths import sim_device_path

    backend = NvmlBackend(SimNvml.from_config(SimConfig(count=gpus), clock,
                                              device_path=sim_device_path(device)))
    period = 1.0 / hz
    print("ready", flush=True)
    next_t = time.monotonic()
    while True:
        for i in range(gpus):
            backend.instant_power_mw(i)
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))


def run(config: Config, *, gpus: int, seconds: float) -> dict[str, Any]:
    with private_device("bench-overhead") as device:
        sim = dataclasses.replace(config.gpus.sim, device=device)
        config = dataclasses.replace(config, gpus=dataclasses.replace(config.gpus, sim=sim))
        with tempfile.TemporaryDirectory(prefix="gridtao-overhead-") as tmp:
            agent = measure_agent(config, gpus=gpus, seconds=seconds, workdir=Path(tmp))
        poll = measure_poll_loop(config, gpus=gpus, seconds=seconds)
    return {
        "gpus": gpus, "seconds": seconds, "fast_hz": config.control.fast_hz,
        "agent": agent, "poll_loop": poll,
        # None: the baseline's CPU was below the kernel's tick accounting (a too short run).
        "cpu_ratio": (agent["cpu_percent"] / poll["cpu_percent"]
                      if poll["cpu_percent"] > 0 else None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gridtao.bench.overhead",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--gpus", type=int, default=8, help="simulated GPUs (default 8)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="how long each process is measured (default 20)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--poll-loop", action="store_true", help=argparse.SUPPRESS)  # the baseline
    p.add_argument("--device", default="default", help=argparse.SUPPRESS)
    p.add_argument("--hz", type=float, default=100.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gpus < 1 or args.seconds <= 0 or args.hz <= 0:
        p.error("--gpus must be >= 1, --seconds and --hz > 0")
    if args.poll_loop:
        poll_loop(args.gpus, args.hz, args.device)
        return 0
    result = run(Config(), gpus=args.gpus, seconds=args.seconds)
    result |= run_info("gridtao.bench.overhead", argv)
    for name in ("agent", "poll_loop"):
        m = result[name]
        print(f"{name:10s} CPU {m['cpu_percent']:5.1f} % of a core   RSS {m['rss_mib']:6.1f} MiB")
    print(f"agent / poll loop CPU: {result['cpu_ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
