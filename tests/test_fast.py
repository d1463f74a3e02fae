"""Tier 1 on simulated H100s and the real safety island, in virtual time.

The simulator's true draw (``sim.true_power_mw``) is the oracle; the loop only sees the noisy,
20 ms-refreshed instant readings, as on hardware.
"""

from __future__ import annotations

import itertools
import statistics
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from gridtao.clock import VirtualClock
from gridtao.config.agent import ControlConfig, SimConfig
from gridtao.control.tier1.loop import FastLoop, StepResult, node_error_stats
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.safety.island import SafetyIsland
from gridtao.telemetry.metrics import Metrics

H100_MIN_MW, H100_DEFAULT_MW = 200_000, 700_000


@dataclass
class Rig:
    clock: VirtualClock
    sim: SimNvml
    backend: NvmlBackend
    island: SafetyIsland
    loop: FastLoop
    metrics: Metrics
    beats: list[float] = field(default_factory=list)
    next_t: float = 0.0

    def tick(self) -> StepResult:
        """One step, then advance virtual time to the next 100 Hz slot (the simulated driver
        calls already moved the clock by their latencies)."""
        r = self.loop.step()
        self.next_t += self.loop.period_s
        now = self.clock.now()
        if self.next_t > now:
            self.clock.advance(self.next_t - now)
        return r

    def run(self, seconds: float) -> list[StepResult]:
        end = self.clock.now() + seconds
        out = []
        while self.clock.now() < end:
            out.append(self.tick())
        return out

    def true_node_mw(self) -> float:
        return sum(self.sim.true_power_mw(i) for i in range(self.sim.count))

    def enforced_mw(self) -> list[int]:
        return [self.backend.enforced_limit_mw(i) for i in range(self.sim.count)]


def make_rig(seed: int = 0, *, count: int = 8, preset_limit_mw: int | None = None,
             dry_run: bool = False) -> Rig:
    clock = VirtualClock()
    sim = SimNvml.from_config(SimConfig(count=count, seed=seed), clock)
    backend = NvmlBackend(sim, dry_run=dry_run)
    if preset_limit_mw is not None:
        for i in range(count):
            backend.set_limit_mw(i, preset_limit_mw)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=3600,
                          dry_run=dry_run)
    island.start()
    metrics = Metrics(CollectorRegistry())
    beats: list[float] = []
    loop = FastLoop(
        backend,
        island,
        clock=clock,
        config=ControlConfig(),
        metrics=metrics,
        heartbeat=lambda: beats.append(clock.now()),
    )
    return Rig(clock, sim, backend, island, loop, metrics, beats, clock.now())


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = make_rig()
    yield r
    r.island.close()


def check_invariants(results: list[StepResult]) -> None:
    for r in results:
        assert all(H100_MIN_MW <= lim <= H100_DEFAULT_MW for lim in r.limits_mw)
        if r.ceiling_mw is not None:
            assert sum(r.limits_mw) <= r.ceiling_mw + 1e-6


def track(rig: Rig, seconds: float) -> tuple[list[float], list[float], list[StepResult]]:
    """Step for ``seconds``; the true node power and target at each step with a target."""
    actual: list[float] = []
    target: list[float] = []
    results: list[StepResult] = []
    end = rig.clock.now() + seconds
    while rig.clock.now() < end:
        r = rig.tick()
        results.append(r)
        if r.target_mw is not None:
            actual.append(rig.true_node_mw())
            target.append(r.target_mw)
    return actual, target, results


# ---------------------------------------------------------------- no event


def test_no_target_keeps_defaults_and_beats_every_step(rig: Rig) -> None:
    results = rig.run(2.0)
    assert len(rig.beats) == len(results) >= 190
    assert all(r.limits_mw == (H100_DEFAULT_MW,) * 8 for r in results)
    assert all(r.target_mw is None and r.budget_mw is None for r in results)
    assert not any(r.wrote for r in results)
    assert rig.enforced_mw() == [H100_DEFAULT_MW] * 8


def test_limits_found_low_at_start_rise_to_defaults_at_the_raise_rate() -> None:
    rig = make_rig(preset_limit_mw=400_000)
    try:
        assert rig.loop.limits_mw == (400_000,) * 8
        results = rig.run(3.0)
        max_raise_mw_per_s = ControlConfig().max_raise_w_per_s * 1000
        prev_sum, prev_t = 8 * 400_000, results[0].t_s - rig.loop.period_s
        for r in results:
            assert sum(r.limits_mw) - prev_sum <= max_raise_mw_per_s * (r.t_s - prev_t) + 8
            assert all(a >= b for a, b in zip(r.limits_mw, results[0].limits_mw, strict=True))
            prev_sum, prev_t = sum(r.limits_mw), r.t_s
        # 8 x 300 W at 2000 W/s: 1.2 s
        assert results[-1].limits_mw == (H100_DEFAULT_MW,) * 8
        assert rig.enforced_mw() == [H100_DEFAULT_MW] * 8
        check_invariants(results)
    finally:
        rig.island.close()


# ---------------------------------------------------------------- acceptance: shed tracking


@pytest.mark.parametrize("seed", [0, 1])
def test_shed_30_percent_tracks_target_within_3_percent(seed: int) -> None:
    rig = make_rig(seed)
    try:
        before = rig.run(1.0)
        act = rig.island.trigger_shed("e1", 0.3)
        assert act.target_mw == pytest.approx(0.7 * act.baseline_mw)
        settle = rig.run(1.0)
        actual, target, results = track(rig, 20.0)
        mae, p95 = node_error_stats(actual, target)
        assert mae < 0.03, f"mean abs error {mae:.4f}"
        assert p95 < 0.06, f"p95 error {p95:.4f}"
        # the ceiling is a hard bound: true power never above it beyond sensor-level noise
        ceiling = results[-1].ceiling_mw
        assert ceiling is not None
        assert max(actual) <= ceiling * 1.01
        check_invariants(settle + results)
        assert len(rig.beats) == len(before) + len(settle) + len(results)
        assert all(H100_MIN_MW <= x <= H100_DEFAULT_MW for x in rig.enforced_mw())
        assert sum(rig.enforced_mw()) <= ceiling
    finally:
        rig.island.close()


def test_watts_of_a_light_gpu_go_to_the_others(rig: Rig) -> None:
    rig.run(1.0)
    rig.island.trigger_shed("e1", 0.3)
    rig.run(2.0)
    equal_share = rig.loop.limits_mw[1]
    rig.sim.set_demand_w(0, 300.0)
    rig.run(2.0)  # a peak-hold window plus settling
    actual, target, results = track(rig, 5.0)
    limits = results[-1].limits_mw
    # GPU 0 keeps its draw plus headroom; the others share what it freed
    assert 300_000 < limits[0] < 340_000
    assert min(limits[1:]) > equal_share + 10_000
    assert sum(limits) == pytest.approx(results[-1].ceiling_mw, abs=8)
    mae, _ = node_error_stats(actual, target)
    assert mae < 0.03
    check_invariants(results)


def test_release_ramp_followed_then_defaults(rig: Rig) -> None:
    rig.run(1.0)
    act = rig.island.trigger_shed("e1", 0.3)
    rig.run(3.0)
    assert rig.island.release("e1")
    actual, target, results = track(rig, 4.9)  # 20 %/s: the ramp takes 5 s
    ramp = [r for r in results if r.target_mw is not None]
    assert ramp[-1].target_mw is not None and ramp[-1].target_mw > act.target_mw
    # limits follow the ramping ceiling upward, within the write deadband (1 W per GPU)
    for r in ramp:
        assert r.ceiling_mw is not None
        assert r.ceiling_mw - 8_000 - 1 <= sum(r.limits_mw) <= r.ceiling_mw
    assert sum(ramp[-1].limits_mw) > sum(ramp[0].limits_mw) + 0.5 * (
        act.baseline_mw - act.target_mw
    )
    # measured power follows the ramp, behind it by the firmware's cap-up lag at most
    mean_rel = statistics.fmean(a / t - 1 for a, t in zip(actual, target, strict=True))
    assert -0.08 < mean_rel <= 0.01
    check_invariants(results)
    # The tail: the ceiling goes on up to the resting limits at the same rate and tier 1's
    # limits with it, so the island's final write of the resting limits is no step.
    tail = rig.run(6.0)
    check_invariants(tail)
    held = [r for r in tail if r.ceiling_mw is not None]
    assert held and held[-1].ceiling_mw is not None
    assert 8 * H100_DEFAULT_MW - sum(held[-1].limits_mw) < 0.2 * (
        act.baseline_mw - act.target_mw) * 0.02 + 8_000
    assert tail[-1].target_mw is None
    assert tail[-1].limits_mw == (H100_DEFAULT_MW,) * 8
    assert rig.enforced_mw() == [H100_DEFAULT_MW] * 8


# ---------------------------------------------------------------- faults and safe states


def test_lost_gpu_does_not_stop_the_loop(rig: Rig) -> None:
    rig.run(1.0)
    rig.island.trigger_shed("e1", 0.3)
    rig.run(2.0)
    beats_before = len(rig.beats)
    rig.sim.inject_fault(3, "lost")
    actual, target, results = track(rig, 5.0)
    assert len(rig.beats) - beats_before == len(results)
    assert all(r.read_errors == 1 for r in results)
    lost_errors = rig.metrics.registry.get_sample_value(
        "gridtao_gpu_errors_total", {"gpu": "3", "kind": "GpuLost"}
    )
    assert lost_errors == len(results)
    # the stale GPU keeps its limit; the node keeps tracking on the others
    assert len({r.limits_mw[3] for r in results}) == 1
    mae, _ = node_error_stats(actual, target)
    assert mae < 0.03
    check_invariants(results)
    # and a GPU that comes back rejoins the plan
    rig.sim.clear_faults()
    results = rig.run(1.0)
    assert results[-1].read_errors == 0


def test_readings_failing_on_every_gpu_never_raise(rig: Rig) -> None:
    for i in range(8):
        rig.sim.inject_fault(i, "lost")
    results = rig.run(0.5)
    assert all(r.read_errors == 8 for r in results)
    assert len(rig.beats) == len(results)


def test_safe_state_hold_locks_tier1_out_then_resumes(rig: Rig) -> None:
    rig.run(0.5)
    rig.island.trigger_shed("e1", 0.3)
    rig.run(1.0)
    rig.island.enter_safe_state("minimum")
    results = rig.run(1.0)
    assert not any(r.wrote for r in results)
    assert results[-1].limits_mw == (H100_MIN_MW,) * 8
    assert rig.enforced_mw() == [H100_MIN_MW] * 8
    rig.island.restore_defaults()
    rig.island.clear_safe_state()
    results = rig.run(0.5)
    assert results[-1].target_mw is None
    assert results[-1].limits_mw == (H100_DEFAULT_MW,) * 8


def test_deeper_trigger_mid_event_resyncs_to_the_new_ceiling(rig: Rig) -> None:
    rig.run(1.0)
    first = rig.island.trigger_shed("e1", 0.2)
    rig.run(1.0)
    second = rig.island.trigger_shed("e2", 0.4)
    assert second.target_mw < first.target_mw
    results = rig.run(2.0)
    assert results[0].ceiling_mw == pytest.approx(sum(second.caps_mw))
    check_invariants(results)
    assert sum(rig.enforced_mw()) <= sum(second.caps_mw)


# ---------------------------------------------------------------- metrics, re-arming, runner


def test_metrics_follow_the_loop(rig: Rig) -> None:
    results = rig.run(0.5)
    reg = rig.metrics.registry
    assert reg.get_sample_value("gridtao_fast_loop_seconds_count") == len(results)
    assert reg.get_sample_value("gridtao_gpu_default_limit_watts", {"gpu": "7"}) == 700.0
    power = reg.get_sample_value("gridtao_node_power_watts")
    assert power == pytest.approx(results[-1].node_power_mw / 1000)
    assert reg.get_sample_value("gridtao_event_active") == 0.0
    rig.island.trigger_shed("e1", 0.3)
    results = rig.run(0.2)
    assert reg.get_sample_value("gridtao_event_active") == 1.0
    target = results[-1].target_mw
    assert target is not None
    assert reg.get_sample_value("gridtao_node_target_watts") == pytest.approx(target / 1000)
    assert reg.get_sample_value("gridtao_gpu_power_limit_watts", {"gpu": "0"}) == pytest.approx(
        results[-1].limits_mw[0] / 1000
    )


def test_armed_levels_are_rearmed_from_fresh_draw(rig: Rig) -> None:
    rig.island.arm("49.5", 0.7)
    rig.run(1.0)
    rig.sim.set_demand_w(0, 250.0)  # the node's draw falls; armed caps must follow
    rig.run(2.5)  # the cut basis is the draw smoothed over control.basis_tau_s (0.5 s)
    act = rig.island.trigger_armed("49.5", "f1")
    assert act is not None
    assert act.baseline_mw == pytest.approx(rig.true_node_mw(), rel=0.15)
    assert act.caps_mw[0] < 260_000


def test_run_forever_paces_at_fast_hz_in_virtual_time(rig: Rig) -> None:
    stop = threading.Event()
    beats: list[float] = []

    def stop_after_200() -> None:
        beats.append(rig.clock.now())
        if len(beats) >= 200:
            stop.set()

    loop = FastLoop(rig.backend, rig.island, clock=rig.clock, config=ControlConfig(),
                    heartbeat=stop_after_200)
    t0 = rig.clock.now()
    loop.run_forever(stop)
    assert len(beats) == 200
    elapsed = rig.clock.now() - t0
    assert elapsed == pytest.approx(200 * loop.period_s, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < 1.5 * loop.period_s


def test_constructor_rejects_bad_periods(rig: Rig) -> None:
    with pytest.raises(ValueError):
        FastLoop(rig.backend, rig.island, clock=rig.clock, config=ControlConfig(),
                 rearm_period_s=0.0)


def test_error_stats() -> None:
    mae, p95 = node_error_stats([90.0, 110.0, 100.0, 100.0], [100.0] * 4)
    assert mae == pytest.approx(0.05)
    assert p95 == pytest.approx(0.1)
    with pytest.raises(ValueError):
        node_error_stats([], [])


def test_reported_limits_are_the_enforced_ones_when_the_driver_refuses(rig: Rig) -> None:
    rig.run(0.5)
    rig.sim.inject_fault(0, "not_supported")  # reads work, every set-limit call is refused
    rig.island.trigger_shed("e1", 0.4)
    results = rig.run(1.0)
    reg = rig.metrics.registry
    enforced = reg.get_sample_value("gridtao_gpu_power_limit_watts", {"gpu": "0"})
    planned = reg.get_sample_value("gridtao_gpu_power_limit_planned_watts", {"gpu": "0"})
    assert enforced == H100_DEFAULT_MW / 1000 == rig.enforced_mw()[0] / 1000
    assert planned is not None and planned < enforced
    assert rig.island.enforced_mw()[0] == H100_DEFAULT_MW
    assert results[-1].limits_mw[0] < H100_DEFAULT_MW  # what tier 1 planned, not what holds


def test_read_back_shows_another_process_change_and_the_energy_counters(rig: Rig) -> None:
    from prometheus_client import CollectorRegistry

    from gridtao.app.readback import ReadBack
    from gridtao.telemetry.collectors import EnergyCollector

    reader = ReadBack(rig.backend, rig.island, range(8))
    registry = CollectorRegistry()
    EnergyCollector(lambda: reader.energy_mj, tuple(range(8)), registry=registry)
    assert registry.get_sample_value("gridtao_gpu_energy_joules_total", {"gpu": "0"}) is None
    rig.run(0.2)
    rig.backend.set_limit_mw(3, 500_000)  # behind the agent's back (nvidia-smi -pl, say)
    assert rig.island.enforced_mw()[3] == H100_DEFAULT_MW  # not seen yet
    reader.read()
    assert rig.island.enforced_mw()[3] == 500_000
    first = registry.get_sample_value("gridtao_gpu_energy_joules_total", {"gpu": "0"})
    assert first is not None and first > 0
    rig.run(1.0)
    reader.read()
    later = registry.get_sample_value("gridtao_gpu_energy_joules_total", {"gpu": "0"})
    assert later is not None and later > first
    assert later == pytest.approx(rig.backend.energy_mj(0) / 1000.0, rel=0.05)


def test_a_dry_run_plans_open_loop_instead_of_winding_down_to_the_minimums() -> None:
    # The draw never answers a cap that is not written: with the integral on, the planned
    # limits would fall every step until every GPU sat at its minimum.
    rig = make_rig(3, dry_run=True)
    try:
        rig.run(1.0)
        act = rig.island.trigger_shed("e1", 0.3)
        results = rig.run(20.0)
        planned = [sum(r.limits_mw) for r in results[-100:]]
        assert min(planned) >= 0.98 * act.target_mw, (min(planned), act.target_mw)
        check_invariants(results)
        assert rig.sim.call_count("nvmlDeviceSetPowerManagementLimit") == 0
        assert rig.true_node_mw() > act.target_mw  # nothing was cut: the draw is the load's
    finally:
        rig.island.close()
