"""Where receive -> command goes: the safety island's write fan-out, in-process, no broker.

``python -m gridtao.bench.fanout [--gpus N] [--triggers N] [--json FILE]`` times, on simulated
GPUs in real time (driver call ``gpus.sim.set_latency_ms``):

* ``one_write_ms``: one ``set_limit_mw`` (driver call + read-back), the unit of work;
* ``parallel_ms``: :meth:`SafetyIsland.trigger_shed` with its per-GPU writer threads (what the
  agent does on a trigger: caps from the draw, every GPU written, read back, latched);
  ``parallel_commanded_ms``: the same triggers up to ``commanded_at`` (the last driver call
  returned, before the read-backs: what the ack reports);
* ``sequential_ms``: the same trigger with the writers not started, so the island writes the
  GPUs one after another on the calling thread (the baseline, measured in the same run);
* ``cpu_per_write_us``: Python CPU per write with the driver latency set to zero, i.e. the part
  of a write that holds the GIL.

The gap between ``parallel_ms`` and ``one_write_ms`` is thread wake-ups and GIL hand-offs: on a
2-vCPU VM it, not the driver calls, dominates receive -> command (BENCHMARKS.md).

``bare_threads_ms``: the same driver calls on bare Python threads, no gridtao code and no
simulated GPU (:mod:`gridtao.bench.barethreads`): what thread wake-ups and interpreter hand-offs
cost on the host, a reference beside ``parallel_commanded_ms`` (not a floor: the island's
submitting thread writes as many GPUs as no worker has taken yet).

``shared``: ``one_write_ms``, ``cpu_per_write_us`` and ``parallel_commanded_ms`` again on the
machine-wide simulated device (a private one, destroyed after), where every call also locks and
stores the GPU's record (gridtao/gpu/sim/shared.py): what the simulator's shared state costs on
top of the in-process GPUs, measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gridtao.app.options import GIL_SWITCH_INTERVAL_S
from gridtao.app.simdevice import private_device
from gridtao.bench.barethreads import bare_fanout
from gridtao.bench.latency import run_info
from gridtao.clock import MonotonicClock
from gridtao.config.agent import SimConfig
from gridtao.config.paths import sim_device_path
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.shared import DeviceFile
from gridtao.safety.island import SafetyIsland
from gridtao.telemetry.report import percentiles

SHED_FRACTION = 0.3
DRAW_MW = 600_000.0


def _backend(sim: SimConfig, device: Path | None) -> NvmlBackend:
    return NvmlBackend(SimNvml.from_config(sim, MonotonicClock(), device_path=device))


def _island(gpus: int, sim: SimConfig, *, parallel: bool,
            device: Path | None = None) -> tuple[SafetyIsland, NvmlBackend]:
    clock = MonotonicClock()
    backend = _backend(sim, device)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=1000.0, max_event_s=600.0)
    if parallel:
        island.start()
    island.update_draw([DRAW_MW] * gpus)
    return island, backend


def time_triggers(
    gpus: int, triggers: int, sim: SimConfig, *, parallel: bool, device: Path | None = None
) -> tuple[list[float], list[float]]:
    """Wall time of ``triggers`` shed triggers, ms, and of each up to its ``commanded_at``;
    each trigger released and ended before the next."""
    island, backend = _island(gpus, sim, parallel=parallel, device=device)
    clock = MonotonicClock()  # the island's clock: time.monotonic
    out: list[float] = []
    commanded: list[float] = []
    safety_log = logging.getLogger("gridtao.safety")
    level = safety_log.level
    if not parallel:  # the island warns on every batch written in turn: that is the baseline
        safety_log.setLevel(logging.ERROR)
    try:
        for k in range(triggers):
            t0 = clock.now()
            act = island.trigger_shed(f"fanout-{k}", SHED_FRACTION)
            out.append((clock.now() - t0) * 1000.0)
            commanded.append((act.commanded_at - t0) * 1000.0)
            island.release(f"fanout-{k}")
            time.sleep(0.005)  # release ramp: 1000 x the reduction per s, over in 1 ms
            island.tick()
            time.sleep(0.005)
    finally:
        safety_log.setLevel(level)
        island.close()
        backend.close()
    return out, commanded


def time_calls(call: Callable[[int], object], n: int) -> list[float]:
    """Wall time of ``call(k)`` for k in range(n), ms."""
    out = []
    for k in range(n):
        t0 = time.perf_counter()
        call(k)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _calls(gpus: int, triggers: int, sim: SimConfig, device: Path | None
           ) -> tuple[list[float], list[float]]:
    """One write's wall time with the configured latency, and with none (its CPU), ms."""
    backend = _backend(sim, device)
    one = time_calls(lambda k: backend.set_limit_mw(0, 500_000 + (k % 2) * 1000), triggers)
    backend.close()
    fast = dataclasses.replace(sim, set_latency_ms=0.0, read_latency_ms=0.0)
    backend = _backend(fast, device)
    cpu = time_calls(lambda k: backend.set_limit_mw(k % gpus, 500_000 + (k // gpus % 2) * 1000),
                     triggers * gpus)
    backend.close()
    return one, cpu


def run(gpus: int, triggers: int, sim: SimConfig) -> dict[str, Any]:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as the agent runs
    one, cpu = _calls(gpus, triggers, sim, None)
    parallel, parallel_commanded = time_triggers(gpus, triggers, sim, parallel=True)
    sequential, _ = time_triggers(gpus, triggers, sim, parallel=False)
    bare = bare_fanout(gpus, triggers, sim.set_latency_ms / 1000.0)
    with private_device("bench-fanout") as name:
        device = sim_device_path(name)
        shared_one, shared_cpu = _calls(gpus, triggers, sim, device)
        DeviceFile.destroy(device)  # the fast calls' device had no latency: start afresh
        _, shared_commanded = time_triggers(gpus, triggers, sim, parallel=True, device=device)
    result: dict[str, Any] = {
        "gpus": gpus, "triggers": triggers, "set_latency_ms": sim.set_latency_ms,
        "switch_interval_s": GIL_SWITCH_INTERVAL_S,
        "one_write_ms": percentiles(one),
        "cpu_per_write_us": {k: v * 1000.0 for k, v in percentiles(cpu).items()},
        "parallel_ms": percentiles(parallel),
        "parallel_commanded_ms": percentiles(parallel_commanded),
        "sequential_ms": percentiles(sequential),
        "bare_threads_ms": percentiles(bare),
        "shared": {
            "one_write_ms": percentiles(shared_one),
            "cpu_per_write_us": {k: v * 1000.0 for k, v in percentiles(shared_cpu).items()},
            "parallel_commanded_ms": percentiles(shared_commanded),
        },
    }
    result["sequential_vs_parallel_p50"] = (result["sequential_ms"]["p50"]
                                            / result["parallel_ms"]["p50"])
    result["shared_vs_in_process_commanded_p50"] = (
        result["shared"]["parallel_commanded_ms"]["p50"]
        / result["parallel_commanded_ms"]["p50"])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gridtao.bench.fanout",
                                description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, default=8, help="simulated GPUs (default 8)")
    p.add_argument("--triggers", type=int, default=200,
                   help="triggers timed per mode (default 200)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.gpus < 1 or args.triggers < 1:
        p.error("--gpus and --triggers must be >= 1")
    result = run(args.gpus, args.triggers, SimConfig(count=args.gpus))
    result |= run_info("gridtao.bench.fanout", argv)
    for key in ("one_write_ms", "parallel_ms", "parallel_commanded_ms", "sequential_ms",
                "bare_threads_ms"):
        s = result[key]
        print(f"{key:21s} p50 {s['p50']:.3f}  p99 {s['p99']:.3f}  max {s['max']:.3f}")
    c = result["cpu_per_write_us"]
    print(f"cpu_per_write_us      p50 {c['p50']:.1f}  p99 {c['p99']:.1f}")
    print(f"sequential / parallel at p50: {result['sequential_vs_parallel_p50']:.2f}x")
    sh = result["shared"]
    print(f"shared device: one write p50 {sh['one_write_ms']['p50']:.3f} ms, cpu per write "
          f"p50 {sh['cpu_per_write_us']['p50']:.1f} us, commanded p50 "
          f"{sh['parallel_commanded_ms']['p50']:.3f} p99 {sh['parallel_commanded_ms']['p99']:.3f}"
          f" ms ({result['shared_vs_in_process_commanded_p50']:.2f}x in-process at p50)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
