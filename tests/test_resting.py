"""Limits return to where the operator had them, not to the hardware default.

An operator may run GPUs below their default limit (e.g. 500 W on a 700 W H100) before gridtao
starts. Events cut below that; when they end, neither the island nor tier 1 may raise a GPU
above it. Virtual time over the simulator.
"""

from __future__ import annotations

from gridtao.clock import VirtualClock
from gridtao.config.agent import ControlConfig, SimConfig
from gridtao.control.tier1.loop import FastLoop
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.safety.island import SafetyIsland

W = 1000
OPERATOR_MW = 500 * W


def _run(loop: FastLoop, clock: VirtualClock, seconds: float) -> None:
    end = clock.now() + seconds
    while clock.now() < end:
        loop.step()
        clock.advance(loop.period_s)


def test_events_end_at_the_operators_limits_not_the_defaults() -> None:
    clock = VirtualClock()
    sim = SimNvml.from_config(
        SimConfig(count=4, noise_w=0.0, read_latency_ms=0, set_latency_ms=0), clock)
    for i in range(4):
        sim.set_demand_w(i, 650.0)
    backend = NvmlBackend(sim)
    for i in range(4):
        backend.set_limit_mw(i, OPERATOR_MW)
    found = [backend.enforced_limit_mw(i) for i in range(4)]
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=1.0, max_event_s=600,
                          resting_mw=found)
    island.start()
    try:
        loop = FastLoop(backend, island, clock=clock, config=ControlConfig())
        _run(loop, clock, 1.0)
        # No event: tier 1 leaves the operator's limits alone (it would raise toward 700 W).
        assert [backend.enforced_limit_mw(i) for i in range(4)] == found
        act = island.trigger_shed("e1", 0.3)
        assert all(cap < OPERATOR_MW for cap in act.caps_mw)
        _run(loop, clock, 1.0)
        assert island.release("e1")
        _run(loop, clock, 3.0)  # 1 s ramp-out at 100 %/s, then settle
        assert island.view().event_id is None
        assert [backend.enforced_limit_mw(i) for i in range(4)] == found
        # A default safe state goes back to the same place, once the event in force has
        # ended (the island holds it without a controller).
        island.trigger_shed("e2", 0.3)
        island.enter_safe_state("default")
        assert island.view().event_id == "e2"
        assert island.release("e2")
        clock.advance(1.5)  # the 1 s ramp-out
        island.tick()
        assert island.view().event_id is None
        assert [backend.enforced_limit_mw(i) for i in range(4)] == found
    finally:
        island.close()
        backend.close()


def test_without_resting_limits_the_defaults_are_the_resting_point() -> None:
    clock = VirtualClock()
    sim = SimNvml.from_config(SimConfig(count=2, read_latency_ms=0, set_latency_ms=0), clock)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=1.0, max_event_s=600)
    assert island.resting_mw == (700 * W, 700 * W)
    backend.close()
