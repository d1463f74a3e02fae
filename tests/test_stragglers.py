"""One slow GPU must not slow tier 1 for the others (gridtao/control/stragglers.py).

Real clock: a slow driver call is a real wait. The assertion is a concurrency property (the loop
keeps stepping while one GPU's reads take 0.3 s), with a wide margin, not a speed benchmark.
"""

from __future__ import annotations

import threading
import time

from gridtao.clock import MonotonicClock
from gridtao.config.agent import ControlConfig, SimConfig
from gridtao.control.tier1.loop import FastLoop
from gridtao.control.tier1.stragglers import Stragglers
from gridtao.gpu.backend import GpuLost
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.safety.island import SafetyIsland


def test_a_slow_gpu_is_read_off_the_loop_until_it_is_fast_again() -> None:
    clock = MonotonicClock()
    sim = SimNvml.from_config(SimConfig(count=4, noise_w=0.0), clock)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=600)
    island.start()
    beats: list[float] = []
    loop = FastLoop(backend, island, clock=clock, config=ControlConfig(),
                    heartbeat=lambda: beats.append(time.monotonic()))
    stop = threading.Event()
    thread = loop.start_thread(stop)
    try:
        sim.inject_fault(0, "slow", delay_s=0.3)
        time.sleep(1.5)
        during = len(beats)
        # Without the quarantine the loop would manage one step per 0.3 s read: about 5.
        assert during > 40, f"tier 1 made only {during} steps with one slow GPU"
        # ... and the status says which GPU is slow, instead of a null fault.
        assert loop.read_faults == ("GpuSlow", None, None, None)
        sim.set_demand_w(0, 333.0)
        sim.clear_faults()
        deadline = time.monotonic() + 3.0
        # The quarantined GPU's probe may bring the new reading a moment before a fast read
        # takes it back on the loop: wait for both.
        def healed() -> bool:
            faults: tuple[str | None, ...] = loop.read_faults
            return loop.draw_mw[0] <= 340_000 and faults == (None,) * 4

        while time.monotonic() < deadline and not healed():
            time.sleep(0.05)
        # Back on the loop: its readings follow the GPU again, and the fault is gone.
        assert abs(loop.draw_mw[0] - 333_000) < 10_000
        faults: tuple[str | None, ...] = loop.read_faults
        assert faults == (None,) * 4
    finally:
        stop.set()
        thread.join(5.0)
        island.close()
        backend.close()


def test_fast_reads_never_quarantine_and_failing_probes_keep_the_old_value() -> None:
    clock = MonotonicClock()
    calls: list[int] = []

    def read(i: int) -> int:
        calls.append(i)
        raise GpuLost("gone", index=i)

    s = Stragglers(read, 2, clock=clock, slow_s=0.05)
    try:
        s.observe(0, 0.01)
        assert not s.quarantined(0)
        s.observe(1, 0.5)
        assert s.quarantined(1)
        time.sleep(0.2)
        assert calls and set(calls) == {1}
        assert s.take_latest_mw(1) is None  # a failed probe read never invents a value
        assert s.quarantined(1)
    finally:
        s.close()
