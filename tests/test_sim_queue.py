"""The simulated GPUs' work in the physics: a job that cannot wait loses what a cap holds back;
an inference server queues it, runs flat out until it has caught up, and loses work only when
what it can serve at its limit falls short of what arrives (or requests wait too long).

Virtual time, demand pinned with the simulator's oracle, no noise: every expectation is
computed from the throughput curve by hand."""

from __future__ import annotations

import time

import pytest

from gridtao.clock import VirtualClock
from gridtao.config.agent import SimConfig, SimWorkload
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.physics import MAX_BACKLOG_S
from gridtao.gpu.sim.throughput import INFERENCE_EXPONENT, TRAINING_EXPONENT, relative_rate

BUSY_W = 700.0  # the H100's largest limit: what a server with a backlog asks for
W = 1000


def _node(clock: VirtualClock, *workloads: SimWorkload) -> SimNvml:
    return SimNvml.from_config(SimConfig(count=len(workloads), noise_w=0.0,
                                         workloads=workloads), clock)


INFERENCE, TRAINING, IDLE = SimWorkload("inference"), SimWorkload("training"), SimWorkload("idle")


def _run(sim: SimNvml, clock: VirtualClock, seconds: float, step_s: float = 0.01,
         ) -> list[list[float]]:
    """Advance in steps; each GPU's true draw at every step (W)."""
    draws: list[list[float]] = [[] for _ in range(sim.count)]
    for _ in range(round(seconds / step_s)):
        clock.advance(step_s)
        for i in range(sim.count):
            draws[i].append(sim.true_power_mw(i) / W)
    return draws


def _set_limit(sim: SimNvml, index: int, watts: float) -> None:
    backend = NvmlBackend(sim)  # as the agent sets it
    try:
        backend.set_limit_mw(index, round(watts * W))
    finally:
        backend.close()


def test_a_job_that_cannot_wait_loses_what_the_curve_says_and_queues_nothing() -> None:
    clock = VirtualClock()
    sim = _node(clock, TRAINING)
    sim.set_demand_w(0, 600.0)
    _set_limit(sim, 0, 300.0)
    _run(sim, clock, 5.0)  # the clocks settle
    before = sim.work_j(0)
    _run(sim, clock, 10.0)
    after = sim.work_j(0)
    assert after.arrived_j - before.arrived_j == pytest.approx(6000.0)
    expected = 600.0 * relative_rate(0.5, TRAINING_EXPONENT) * 10.0
    assert after.served_j - before.served_j == pytest.approx(expected, rel=1e-6)
    assert after.backlog_j == 0.0


def test_a_server_under_a_cap_it_can_keep_up_with_loses_nothing_and_draws_less() -> None:
    clock = VirtualClock()
    sim = _node(clock, INFERENCE)
    sim.set_demand_w(0, 300.0)
    _run(sim, clock, 2.0)
    _set_limit(sim, 0, 250.0)  # flat out at 250 W it serves 700 * (250/700)**0.194 = 573 W
    before = sim.work_j(0)
    draws = _run(sim, clock, 20.0)[0]
    after = sim.work_j(0)
    arrived = after.arrived_j - before.arrived_j
    served = after.served_j - before.served_j
    assert arrived == pytest.approx(6000.0)
    assert served == pytest.approx(arrived - after.backlog_j + before.backlog_j, abs=1e-6)
    assert after.backlog_j < 0.02 * arrived  # it keeps up: what waits is a moment's work
    assert max(draws[50:]) <= 250.0 + 1e-3  # once the clocks followed the limit (tau 20 ms)
    # The same work at a lower power: the curve's energy per unit falls under the cap.
    assert sum(draws) / len(draws) < 300.0 - 5.0


def test_a_server_under_a_deep_cap_serves_flat_out_queues_the_rest_and_drops_what_waits_too_long(
) -> None:
    clock = VirtualClock()
    sim = _node(clock, INFERENCE)
    sim.set_demand_w(0, 600.0)
    _run(sim, clock, 1.0)
    _set_limit(sim, 0, 200.0)
    _run(sim, clock, 2.0)  # the ceiling settles
    before = sim.work_j(0)
    _run(sim, clock, 10.0)
    after = sim.work_j(0)
    capacity_w = BUSY_W * relative_rate(200.0 / BUSY_W, INFERENCE_EXPONENT)  # 549 W of work
    assert (after.served_j - before.served_j) / 10.0 == pytest.approx(capacity_w, rel=1e-3)
    assert after.backlog_j - before.backlog_j == pytest.approx((600.0 - capacity_w) * 10.0,
                                                               rel=1e-3)
    # Minutes later the queue is full: what waits too long is dropped, never served.
    _run(sim, clock, 20 * MAX_BACKLOG_S, step_s=0.5)
    full = sim.work_j(0)
    assert full.backlog_j == pytest.approx(MAX_BACKLOG_S * BUSY_W)
    assert full.arrived_j - full.served_j - full.backlog_j > 0.0  # dropped


def test_after_the_cap_the_server_catches_up_flat_out_then_follows_its_demand() -> None:
    clock = VirtualClock()
    sim = _node(clock, INFERENCE)
    sim.set_demand_w(0, 600.0)
    _run(sim, clock, 1.0)
    start = sim.work_j(0)
    _set_limit(sim, 0, 200.0)
    _run(sim, clock, 10.0)
    backlog = sim.work_j(0).backlog_j
    assert backlog > 100.0
    _set_limit(sim, 0, BUSY_W)
    draws = _run(sim, clock, 10.0)[0]
    end = sim.work_j(0)
    assert end.backlog_j == 0.0
    assert end.served_j - start.served_j == pytest.approx(end.arrived_j - start.arrived_j,
                                                          rel=1e-9)  # nothing lost
    assert max(draws) == pytest.approx(BUSY_W)  # the rebound: flat out while it catches up
    assert draws[-1] == pytest.approx(600.0)  # then its demand again


def test_an_idle_gpu_and_a_training_job_queue_nothing() -> None:
    clock = VirtualClock()
    sim = _node(clock, IDLE, TRAINING)
    for i in range(2):
        _set_limit(sim, i, 200.0)
    _run(sim, clock, 5.0)
    assert [sim.work_j(i).backlog_j for i in range(2)] == [0.0, 0.0]


def test_the_queue_and_the_work_counters_are_one_history_on_a_machine_wide_device() -> None:
    from gridtao.clock import MonotonicClock
    from gridtao.config.paths import sim_device_path

    cfg = SimConfig(count=1, noise_w=0.0, workloads=(INFERENCE,))
    path = sim_device_path("default")
    first = SimNvml.from_config(cfg, MonotonicClock(), device_path=path)
    second = SimNvml.from_config(cfg, MonotonicClock(), device_path=path)  # another process's
    try:
        first.set_demand_w(0, 600.0)
        _set_limit(first, 0, 200.0)
        time.sleep(0.3)  # real time: the queue builds under the cap
        theirs = second.work_j(0)
        assert theirs.backlog_j > 1.0  # the other process sees the queue the first one's cap built
        mine = first.work_j(0)  # later, from the record the second stored
        assert mine.arrived_j >= theirs.arrived_j and mine.served_j >= theirs.served_j
        for w in (theirs, mine):  # nothing dropped: what arrived was served or waits
            assert w.arrived_j == pytest.approx(w.served_j + w.backlog_j, abs=1e-6)
    finally:
        for sim in (second, first):
            assert sim.device is not None
            sim.device.close()
