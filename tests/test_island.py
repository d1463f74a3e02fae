"""gridtao.safety.island and gridtao.safety.writer against the simulated GPUs.

The real NVML backend code runs under them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridtao.clock import Clock, MonotonicClock, VirtualClock
from gridtao.config.agent import SimConfig
from gridtao.gpu.backend import GpuLost, PowerLimits
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.safety.armed import ArmedTable
from gridtao.safety.envelope import Envelope
from gridtao.safety.island import SafetyIsland
from gridtao.safety.writer import ParallelWriter

W = 1000  # mW per W
N = 8
MIN_MW, DEFAULT_MW = 200 * W, 700 * W  # H100 SXM profile
DRAW_MW = [600 * W, 550 * W, 500 * W, 650 * W, 700 * W, 450 * W, 400 * W, 620 * W]
SET = "nvmlDeviceSetPowerManagementLimit"


@dataclass
class Rig:
    clock: Clock
    sim: SimNvml
    backend: NvmlBackend
    island: SafetyIsland

    def limits(self) -> list[int]:
        return [self.backend.enforced_limit_mw(i) for i in range(N)]

    def sets(self) -> int:
        return self.sim.call_count(SET)


def _rig(clock: Clock, *, set_latency_ms: float = 0.0, max_event_s: float = 60.0) -> Rig:
    cfg = SimConfig(count=N, set_latency_ms=set_latency_ms, read_latency_ms=0.0, noise_w=0.0)
    sim = SimNvml.from_config(cfg, clock)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=max_event_s)
    island.start()
    island.update_draw(DRAW_MW)
    return Rig(clock, sim, backend, island)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = _rig(VirtualClock(100.0))
    yield r
    r.island.close()
    r.backend.close()


@pytest.fixture
def real_rig() -> Iterator[Rig]:
    r = _rig(MonotonicClock(), set_latency_ms=20.0)
    yield r
    r.island.close()
    r.backend.close()


def _in_envelope(limits: list[int] | tuple[int, ...]) -> bool:
    return all(MIN_MW <= x <= DEFAULT_MW for x in limits)


# ---------------------------------------------------------------- triggers


def test_shed_writes_every_cap_and_latches(rig: Rig) -> None:
    gen0 = rig.island.view().generation
    act = rig.island.trigger_shed("e1", 0.3)
    assert act.binding and not act.errors
    assert act.baseline_mw == sum(DRAW_MW)
    assert act.target_mw == pytest.approx(0.7 * sum(DRAW_MW))
    assert sum(DRAW_MW) * 0.7 - N <= sum(act.caps_mw) <= sum(DRAW_MW) * 0.7
    assert _in_envelope(act.caps_mw)
    assert rig.limits() == list(act.caps_mw)
    assert act.commanded_at == rig.clock.now()
    view = rig.island.view()
    assert view.generation == gen0 + 1
    assert (view.event_id, view.kind, view.releasing) == ("e1", "shed", False)
    assert view.target_mw == act.target_mw
    assert view.ceiling_total_mw == sum(act.caps_mw)
    assert view.active_event_ids == ("e1",)


def test_armed_level_uses_caps_precomputed_at_rearm(rig: Rig) -> None:
    rig.island.arm("49.5", 0.7)
    armed_from = sum(DRAW_MW)
    # A newer draw without rearm() does not change the precomputed caps...
    rig.island.update_draw([300 * W] * N)
    assert rig.island.trigger_armed("49.9", "nope") is None
    act = rig.island.trigger_armed("49.5", "f1")
    assert act is not None and act.kind == "frequency" and act.level == "49.5"
    assert act.baseline_mw == armed_from
    assert rig.limits() == list(act.caps_mw)


def test_rearm_follows_latest_draw(rig: Rig) -> None:
    rig.island.arm("49.5", 0.7)
    rig.island.update_draw([300 * W] * N)
    rig.island.rearm()
    act = rig.island.trigger_armed("49.5", "f1")
    assert act is not None
    assert act.baseline_mw == 300 * W * N
    assert list(act.caps_mw) == [210 * W] * N


def test_rearm_on_the_same_basis_keeps_the_levels_but_new_floors_recompute_them() -> None:
    gpu = PowerLimits(min_mw=MIN_MW, max_mw=DEFAULT_MW, default_mw=DEFAULT_MW)
    table = ArmedTable(Envelope([gpu, gpu]))
    draw = (600.0 * W, 400.0 * W)
    table.arm("49.5", draw, 0.5)
    level = table.get("49.5")
    table.rearm(tuple(draw))  # an equal basis: nothing to recompute
    assert table.get("49.5") is level
    # The same basis with floors: the split changes, so the level is recomputed.
    table.rearm(draw, Envelope([gpu, gpu]).with_floors([450 * W, 0]))
    floored = table.get("49.5")
    assert floored is not level and floored is not None and floored.caps_mw[0] >= 450 * W
    table.rearm((500.0 * W, 400.0 * W))  # a new basis: recomputed
    moved = table.get("49.5")
    assert moved is not None and moved.baseline_mw == 900 * W


def test_cap_below_draw_and_below_minimums(rig: Rig) -> None:
    act = rig.island.trigger_cap("c1", 3000)
    assert act.target_mw == 3000 * W
    assert 3000 * W - N <= sum(rig.limits()) <= 3000 * W
    deeper = rig.island.trigger_cap("c2", 100)  # below 8 x 200 W: every GPU at its minimum
    assert deeper.binding
    assert rig.limits() == [MIN_MW] * N
    assert rig.island.view().ceiling_total_mw == MIN_MW * N


def test_cap_above_draw_still_bounds_the_node(rig: Rig) -> None:
    act = rig.island.trigger_cap("c1", 5000)  # node draws 4.47 kW now
    assert 5000 * W - N <= sum(act.caps_mw) <= 5000 * W
    assert _in_envelope(act.caps_mw)
    assert rig.island.view().ceiling_total_mw == sum(act.caps_mw)
    assert rig.limits() == list(act.caps_mw)


def test_duplicate_event_id_is_idempotent(rig: Rig) -> None:
    act = rig.island.trigger_shed("e1", 0.3)
    sets, gen = rig.sets(), rig.island.view().generation
    rig.island.update_draw([700 * W] * N)
    assert rig.island.trigger_shed("e1", 0.5) is act
    assert rig.island.trigger_cap("e1", 100) is act
    assert rig.sets() == sets
    assert rig.island.view().generation == gen


def test_deeper_level_deepens_and_shallower_is_not_binding(rig: Rig) -> None:
    rig.island.arm("49.7", 0.9)
    rig.island.arm("49.5", 0.7)
    shallow = rig.island.trigger_armed("49.7", "f-49.7")
    assert shallow is not None
    deep = rig.island.trigger_armed("49.5", "f-49.5")
    assert deep is not None and deep.binding
    assert deep.baseline_mw == shallow.baseline_mw  # cut from the same pre-event draw
    assert all(d <= s for d, s in zip(deep.caps_mw, shallow.caps_mw, strict=True))
    assert rig.limits() == list(deep.caps_mw)
    sets = rig.sets()
    # A shallower request while the deep cut holds is latched but writes nothing.
    later = rig.island.trigger_shed("s1", 0.05)
    assert not later.binding
    assert rig.sets() == sets
    view = rig.island.view()
    assert view.event_id == "f-49.5"
    assert set(view.active_event_ids) == {"f-49.7", "f-49.5", "s1"}


# ---------------------------------------------------------------- tier 1 under the latch


def test_apply_limits_clamps_into_envelope_without_event(rig: Rig) -> None:
    gen = rig.island.view().generation
    limits = [900 * W, 0, 450 * W, 300 * W, 700 * W, 650 * W, 500 * W, 350 * W]
    assert rig.island.apply_limits(limits, gen)
    assert rig.limits() == [DEFAULT_MW, MIN_MW, *limits[2:]]


def test_latch_refuses_a_raise_above_the_ceiling(rig: Rig) -> None:
    act = rig.island.trigger_shed("e1", 0.3)
    view = rig.island.view()
    assert view.ceiling_total_mw is not None
    assert rig.island.apply_limits([DEFAULT_MW] * N, view.generation)
    limits = rig.limits()
    assert sum(limits) <= view.ceiling_total_mw
    assert _in_envelope(limits)
    assert sum(limits) <= sum(act.caps_mw)


def test_stale_generation_is_refused(rig: Rig) -> None:
    gen = rig.island.view().generation
    act = rig.island.trigger_shed("e1", 0.3)
    sets = rig.sets()
    assert not rig.island.apply_limits([DEFAULT_MW] * N, gen)
    assert rig.sets() == sets
    assert rig.limits() == list(act.caps_mw)


def test_trigger_during_tier1_write_wins(real_rig: Rig) -> None:
    """A trigger landing while tier 1's writes are on their way leaves every GPU at its cap."""
    rig = real_rig
    gen = rig.island.view().generation
    started = threading.Event()
    result: list[bool] = []

    def tier1() -> None:
        started.set()
        result.append(rig.island.apply_limits([650 * W] * N, gen))

    t = threading.Thread(target=tier1)
    t.start()
    started.wait()
    act = rig.island.trigger_shed("e1", 0.5)
    t.join()
    assert rig.limits() == list(act.caps_mw)
    # Whether tier 1 got in first (True) or was refused (False) depends on scheduling; either
    # way it never overwrote the caps. Its next plan from the old generation is refused.
    assert len(result) == 1
    assert not rig.island.apply_limits([650 * W] * N, gen)


# ---------------------------------------------------------------- release and expiry


def test_release_ramp_rate_is_exact_in_virtual_time(rig: Rig) -> None:
    clock = rig.clock
    assert isinstance(clock, VirtualClock)
    act = rig.island.trigger_shed("e1", 0.3)
    reduction = act.baseline_mw - act.target_mw
    ceiling0 = sum(act.caps_mw)
    gen = rig.island.view().generation
    assert rig.island.release("e1")
    assert not rig.island.release("nope")
    clock.advance(2.5)  # 20 %/s: halfway after 2.5 s
    rig.island.tick()
    view = rig.island.view()
    assert view.releasing and view.event_id == "e1"
    assert view.target_mw == pytest.approx(act.target_mw + reduction / 2)
    assert view.ceiling_total_mw == pytest.approx(ceiling0 + reduction / 2)
    assert view.generation == gen  # a rising ceiling does not invalidate tier 1's plan
    clock.advance(2.4)
    rig.island.tick()
    assert rig.island.view().event_id == "e1"
    assert rig.limits() == list(act.caps_mw)  # the island itself does not write the ramp
    clock.advance(0.1)  # 5 s: the reduction is given back; the tail goes on at the same rate
    rig.island.tick()
    view = rig.island.view()
    assert view.event_id == "e1" and view.releasing
    assert view.target_mw == pytest.approx(act.baseline_mw)
    assert view.ceiling_total_mw == pytest.approx(ceiling0 + reduction)
    rest = N * DEFAULT_MW
    tail_s = (rest - ceiling0 - reduction) / (0.2 * reduction)
    clock.advance(tail_s / 2)
    rig.island.tick()
    view = rig.island.view()
    assert view.ceiling_total_mw == pytest.approx(ceiling0 + reduction * (1 + 0.1 * tail_s))
    assert view.target_mw == pytest.approx(act.baseline_mw + 0.1 * tail_s * reduction)
    assert rig.limits() == list(act.caps_mw)
    clock.advance(tail_s / 2 - 0.01)
    rig.island.tick()
    view = rig.island.view()
    assert view.event_id == "e1"
    assert view.ceiling_total_mw is not None and rest - view.ceiling_total_mw < 0.01 * 0.25 * rest
    clock.advance(0.01)  # the ceiling is at the resting total: event over, limits written
    rig.island.tick()
    view = rig.island.view()
    assert (view.event_id, view.target_mw, view.ceiling_total_mw) == (None, None, None)
    assert view.generation == gen + 1
    assert rig.limits() == [DEFAULT_MW] * N


def test_a_cap_that_can_cut_nothing_leaves_armed_levels_on_the_live_draw(rig: Rig) -> None:
    """A cap at or above every resting limit is latched (acked, released, timed) but can never
    lower a GPU: armed levels keep following the draw while it lasts, and the first event that
    can cut freezes the basis from then on."""
    clock = rig.clock
    assert isinstance(clock, VirtualClock)
    rig.island.arm("49.7", 0.9)
    vacuous = rig.island.trigger_cap("site-cap", N * DEFAULT_MW / W + 100.0)
    assert not vacuous.binding and rig.island.view().event_id == "site-cap"
    risen = [d + 50 * W for d in DRAW_MW]  # the load grows during the hour-long cap
    rig.island.update_draw(risen)
    rig.island.rearm()
    level = rig.island.trigger_armed("49.7", "f1")
    assert level is not None and level.binding
    assert level.baseline_mw == pytest.approx(sum(risen))  # not the draw when the cap came
    assert level.target_mw == pytest.approx(0.9 * sum(risen))
    # The trip cut the draw: armed levels and later events now cut from the draw before it.
    rig.island.update_draw([0.8 * d for d in risen])
    rig.island.rearm()
    assert rig.island.trigger_shed("s1", 0.05).baseline_mw == pytest.approx(sum(risen))
    # Once nothing that can cut is left (the vacuous cap still is), the basis is live again.
    for event_id in ("f1", "s1"):
        rig.island.release(event_id)
    for _ in range(50):  # the ramps out (within the rig's 60 s event limit)
        clock.advance(1.0)
        rig.island.tick()
    assert rig.island.view().active_event_ids == ("site-cap",)
    live = [d - 20 * W for d in DRAW_MW]
    rig.island.update_draw(live)
    rig.island.rearm()
    again = rig.island.trigger_armed("49.7", "f2")
    assert again is not None and again.baseline_mw == pytest.approx(sum(live))


def test_a_step_product_s_release_tail_keeps_its_own_rate(rig: Rig) -> None:
    """A step product (its own ramp-out rate, the TSO's limit) ramps on past its baseline up
    to the resting limits at that rate, never faster, and ends without a step."""
    clock = rig.clock
    assert isinstance(clock, VirtualClock)
    rate = 100 * W  # mW/s
    rig.island.arm_reduction("ffr", 500 * W, release_mw_per_s=rate)
    act = rig.island.trigger_armed("ffr", "f1")
    assert act is not None
    rig.island.release("f1")
    rest = N * DEFAULT_MW
    last = rig.island.view().ceiling_total_mw
    assert last is not None
    steps = 0
    while rig.island.view().event_id == "f1":
        clock.advance(0.1)
        rig.island.tick()
        ceiling = rig.island.view().ceiling_total_mw
        if ceiling is None:
            break
        assert ceiling - last <= rate * 0.1 + 1 and ceiling <= rest
        last, steps = ceiling, steps + 1
    # 500 W back, then the tail from the draw (4470 W) to the resting 5600 W, all at 100 W/s.
    assert steps == pytest.approx((500 * W + rest - sum(DRAW_MW)) / rate / 0.1, abs=2)
    assert rest - last <= rate * 0.1 + 1  # the end's write of the resting limits is no step
    assert rig.limits() == [DEFAULT_MW] * N


def test_max_event_s_releases_automatically() -> None:
    clock = VirtualClock()
    rig = _rig(clock, max_event_s=10.0)
    try:
        rig.island.trigger_cap("c1", 3000)
        clock.advance(9.9)
        rig.island.tick()
        assert not rig.island.view().releasing
        clock.advance(0.1)
        rig.island.tick()
        assert rig.island.view().releasing
        clock.advance(5.0)  # the reduction is back; the tail to the resting limits goes on
        rig.island.tick()
        assert rig.island.view().event_id == "c1"
        clock.advance(5.0)
        rig.island.tick()
        assert rig.island.view().event_id is None
        assert rig.limits() == [DEFAULT_MW] * N
    finally:
        rig.island.close()
        rig.backend.close()


def test_overlapping_events_end_in_turn(rig: Rig) -> None:
    clock = rig.clock
    assert isinstance(clock, VirtualClock)
    deep = rig.island.trigger_shed("deep", 0.3)
    shallow = rig.island.trigger_shed("shallow", 0.1)
    assert not shallow.binding
    rig.island.release("deep")
    clock.advance(10.0)  # ramp and tail
    rig.island.tick()
    view = rig.island.view()
    assert view.event_id == "shallow"
    assert view.ceiling_total_mw == sum(shallow.caps_mw)
    assert rig.limits() == list(deep.caps_mw)  # a non-last end writes nothing; tier 1 raises
    rig.island.release("shallow")
    clock.advance(5.0)  # tail at 0.2 x 447 W/s from 4470 to 5600 W: 12.6 s more
    rig.island.tick()
    assert rig.island.view().active_event_ids == ("shallow",)
    clock.advance(13.0)
    rig.island.tick()
    assert rig.island.view().active_event_ids == ()
    assert rig.limits() == [DEFAULT_MW] * N


def test_release_of_cap_event_above_draw_ends_at_once(rig: Rig) -> None:
    rig.island.trigger_cap("c1", 6000)
    rig.island.release("c1")
    rig.island.tick()
    assert rig.island.view().event_id is None
    assert rig.limits() == [DEFAULT_MW] * N


# ---------------------------------------------------------------- faults


def test_lost_gpu_during_trigger_others_still_capped(rig: Rig) -> None:
    rig.sim.inject_fault(3, "lost")
    act = rig.island.trigger_shed("e1", 0.3)
    assert set(act.errors) == {3}
    assert isinstance(act.errors[3], GpuLost)
    for i in range(N):
        if i != 3:
            assert rig.backend.enforced_limit_mw(i) == act.caps_mw[i]
    assert rig.island.view().faulted == (3,)
    rig.sim.clear_faults()
    view = rig.island.view()
    assert rig.island.apply_limits(list(act.caps_mw), view.generation)
    assert rig.island.view().faulted == ()


def test_parallel_writes_overlap(real_rig: Rig) -> None:
    """8 writes of 20 ms each finish well within 4 x 20 ms: they run at the same time."""
    t0 = time.monotonic()
    act = real_rig.island.trigger_shed("e1", 0.3)
    assert not act.errors
    assert act.commanded_at - t0 < 4 * 0.020
    assert real_rig.limits() == list(act.caps_mw)


def test_writer_runs_jobs_in_order_and_checks_guard_under_lock(real_rig: Rig) -> None:
    writer = ParallelWriter(real_rig.backend, N)
    writer.start()
    try:
        real_rig.sim.inject_fault(0, "slow", delay_s=0.3, calls=1)
        allowed = [True]
        first = writer.submit([300 * W] * N)  # GPU 0's worker is busy with this for >= 0.3 s
        second = writer.submit([400 * W] * N, guard=lambda _gpu: allowed[0])
        allowed[0] = False  # e.g. a trigger bumped the generation: GPU 0's queued job skips
        third = writer.submit([250 * W] * N)
        out1, out2, out3 = (b.wait(2.0) for b in (first, second, third))
        assert all(o.ok for o in out1)
        assert out2[0].skipped and out2[0].enforced_mw is None
        assert all(o.ok and o.enforced_mw == 250 * W for o in out3)
        assert real_rig.limits() == [250 * W] * N  # the last submitted write landed last
    finally:
        writer.close()


def test_concurrent_duplicate_trigger_writes_once(real_rig: Rig) -> None:
    sets = real_rig.sets()
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(real_rig.island.trigger_shed("e1", 0.3)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] is results[1]
    assert real_rig.sets() == sets + N


def test_writer_times_out_a_hung_gpu_but_writes_the_others(real_rig: Rig) -> None:
    writer = ParallelWriter(real_rig.backend, N, timeout_s=0.1)
    writer.start()
    try:
        real_rig.sim.inject_fault(5, "slow", delay_s=0.5, calls=1)
        out = writer.write_all([300 * W] * N)
        assert out[5].error is not None and out[5].enforced_mw is None
        assert all(o.ok for i, o in enumerate(out) if i != 5)
    finally:
        writer.close()


def test_commanded_when_the_last_driver_call_returned_not_after_read_backs() -> None:
    """Set calls of 1 ms and read-backs of 5 ms, two GPUs written in turn (no writer threads):
    GPU 1 set, read, GPU 0 set -> every limit in force at t0 + 7 ms; GPU 0's read-back ends at
    t0 + 12 ms. ``commanded_at`` is the former, in clock and in Unix time."""
    clock = VirtualClock(100.0)
    cfg = SimConfig(count=2, set_latency_ms=1.0, read_latency_ms=5.0, noise_w=0.0)
    backend = NvmlBackend(SimNvml.from_config(cfg, clock))
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=60.0)
    island.update_draw([600 * W, 600 * W])
    t0, wall0 = clock.now(), clock.wall()
    act = island.trigger_shed("e1", 0.3)
    assert not act.errors
    assert act.commanded_at == pytest.approx(t0 + 0.007)
    assert act.commanded_wall == pytest.approx(wall0 + 0.007)
    assert clock.now() == pytest.approx(t0 + 0.012)
    backend.close()


def test_batch_counts_skipped_and_failed_writes_as_returned(real_rig: Rig) -> None:
    writer = ParallelWriter(real_rig.backend, N, clock=real_rig.clock)
    writer.start()
    try:
        real_rig.sim.inject_fault(2, "no_permission")
        skipped = writer.submit([300 * W] * N, guard=lambda _gpu: False)
        assert all(o.skipped for o in skipped.wait(2.0))
        assert skipped.commanded is not None
        failed = writer.submit([300 * W] * N)
        out = failed.wait(2.0)
        assert out[2].error is not None and all(o.ok for i, o in enumerate(out) if i != 2)
        assert failed.commanded is not None
        assert failed.commanded[0] <= real_rig.clock.now()
    finally:
        writer.close()


def test_a_waiter_is_woken_by_the_last_write_not_by_the_deadline(real_rig: Rig) -> None:
    """wait() called while a worker's write is still running returns when that write does,
    with its outcome: the batch makes its wake-up event only for such a waiter."""
    writer = ParallelWriter(real_rig.backend, N, timeout_s=30.0)
    writer.start()
    try:
        real_rig.sim.inject_fault(3, "slow", delay_s=0.2, calls=1)
        batch = writer.submit([300 * W] * N)  # the workers write; GPU 3's call lasts 0.2 s
        t0 = time.monotonic()
        out = batch.wait(30.0)
        # Woken by the write (0.2 s), not by the deadline (30 s): the margin is wide enough for
        # any loaded machine, and a lost wake-up would take the whole 30 s.
        assert time.monotonic() - t0 < 15.0
        assert all(o.ok for o in out)
        assert batch.wait(0.0) == out  # complete: later waits answer at once, the same
    finally:
        writer.close()


def test_hung_gpu_leaves_the_batch_uncommanded(real_rig: Rig) -> None:
    writer = ParallelWriter(real_rig.backend, N, timeout_s=0.1, clock=real_rig.clock)
    writer.start()
    try:
        real_rig.sim.inject_fault(5, "slow", delay_s=0.5, calls=1)
        batch = writer.submit([300 * W] * N)
        batch.wait(0.1)
        assert batch.commanded is None  # GPU 5's driver call has not returned
    finally:
        writer.close()


def test_writes_work_in_turn_without_threads(rig: Rig) -> None:
    rig.island.trigger_shed("e1", 0.3)
    rig.island.close()
    rig.island.restore_defaults()  # at shutdown, after the writer threads stopped
    assert rig.limits() == [DEFAULT_MW] * N


# ---------------------------------------------------------------- safe states


def test_safe_state_default_keeps_the_grid_s_events_and_returns_to_defaults_after(
        rig: Rig) -> None:
    act = rig.island.trigger_shed("e1", 0.3)
    rig.island.enter_safe_state("default")
    view = rig.island.view()
    # The shed goes on: the island holds it without a controller; tier 1 is locked out.
    assert view.event_id == "e1" and view.safe_mode == "default"
    assert sum(rig.limits()) <= sum(act.caps_mw) + N
    assert not rig.island.apply_limits([DEFAULT_MW] * N, view.generation)
    # It ends by its own ramp, then every GPU is at its default.
    rig.island.release("e1")
    assert isinstance(rig.clock, VirtualClock)
    rig.clock.advance(10.0)  # 0.2 /s release: 5 s, then the tail to the resting limits
    rig.island.tick()
    assert rig.island.view().event_id is None
    assert rig.limits() == [DEFAULT_MW] * N
    assert rig.island.leave_safe_state()
    assert rig.island.view().safe_mode is None and rig.island.view().event_id is None
    assert rig.island.apply_limits([500 * W] * N, rig.island.view().generation)


def test_leaving_a_minimum_safe_state_ramps_back(rig: Rig) -> None:
    rig.island.enter_safe_state("minimum")
    assert rig.limits() == [MIN_MW] * N
    assert rig.island.leave_safe_state()
    view = rig.island.view()
    assert view.safe_mode is None and view.event_id == "safe-state-exit-1"
    assert sum(rig.limits()) <= N * MIN_MW + N  # no jump: latched where the GPUs were
    assert isinstance(rig.clock, VirtualClock)
    rig.clock.advance(2.0)  # 40 % of the way back at 0.2 /s
    rig.island.tick()
    ceiling = rig.island.view().ceiling_total_mw
    assert ceiling is not None and N * MIN_MW < ceiling < N * DEFAULT_MW
    rig.clock.advance(6.0)  # the ramp, then the tail up to the resting limits
    rig.island.tick()
    assert rig.island.view().event_id is None
    assert not rig.island.leave_safe_state()  # nothing to leave twice


def test_leaving_a_minimum_safe_state_with_an_event_in_force_ramps_up_to_its_caps(
        rig: Rig) -> None:
    """The minimum held the GPUs under the event's caps: leaving must not step them up to the
    caps (a load step of the node's whole gap), but ramp there at the release rate."""
    act = rig.island.trigger_shed("e1", 0.3)
    rig.island.enter_safe_state("minimum")
    assert rig.limits() == [MIN_MW] * N
    assert rig.island.leave_safe_state()
    ceiling = rig.island.view().ceiling_total_mw
    assert ceiling is not None and ceiling <= N * MIN_MW + N  # latched where the GPUs were
    assert isinstance(rig.clock, VirtualClock)
    rig.clock.advance(1.0)  # 20 % of the way at 0.2 /s
    rig.island.tick()
    ceiling = rig.island.view().ceiling_total_mw
    assert ceiling is not None and N * MIN_MW < ceiling < sum(act.caps_mw)
    rig.clock.advance(8.0)  # the exit ramp is over: the event's own caps bind again
    rig.island.tick()
    view = rig.island.view()
    assert view.event_id == "e1" and view.ceiling_total_mw == pytest.approx(
        sum(act.caps_mw), abs=N)


def test_leaving_a_minimum_safe_state_ramps_back_when_the_gpus_draw_under_it(
        rig: Rig) -> None:
    """In the minimum safe state the GPUs draw at (or under) their minimum: the exit's cap cuts
    nothing below that draw, and must still ramp, not end in one step of the limits."""
    rig.island.enter_safe_state("minimum")
    rig.island.update_draw([MIN_MW - 5 * W] * N)  # held there, drawing a little under
    assert rig.island.leave_safe_state()
    assert isinstance(rig.clock, VirtualClock)
    rig.clock.advance(0.01)
    rig.island.tick()
    assert rig.island.view().event_id == "safe-state-exit-1"
    assert sum(rig.limits()) <= N * MIN_MW + N  # no step to the resting limits
    rig.clock.advance(2.5)  # half the tail (the whole of it at 0.2 /s: 5 s)
    rig.island.tick()
    ceiling = rig.island.view().ceiling_total_mw
    assert ceiling is not None and N * MIN_MW < ceiling < N * DEFAULT_MW
    rig.clock.advance(3.0)
    rig.island.tick()
    assert rig.island.view().event_id is None and rig.limits() == [DEFAULT_MW] * N


def test_safe_state_hold_keeps_limits_and_locks_out_tier1(rig: Rig) -> None:
    gen = rig.island.view().generation
    held = [500 * W, 600 * W, 300 * W, 700 * W, 400 * W, 500 * W, 650 * W, 200 * W]
    assert rig.island.apply_limits(held, gen)
    rig.island.enter_safe_state("hold")
    view = rig.island.view()
    assert view.safe_mode == "hold"
    assert not rig.island.apply_limits([DEFAULT_MW] * N, view.generation)
    assert rig.limits() == held
    # A trigger still cuts, never above the held limits; its end returns to them.
    act = rig.island.trigger_shed("e1", 0.3)
    assert rig.limits() == [min(c, h) for c, h in zip(act.caps_mw, held, strict=True)]
    rig.island.release("e1")
    assert isinstance(rig.clock, VirtualClock)
    rig.clock.advance(5.0)
    rig.island.tick()
    assert rig.limits() == held
    assert rig.island.clear_safe_state()
    assert not rig.island.clear_safe_state()
    assert rig.island.apply_limits([DEFAULT_MW] * N, rig.island.view().generation)


def test_safe_state_minimum(rig: Rig) -> None:
    rig.island.enter_safe_state("minimum")
    assert rig.limits() == [MIN_MW] * N
    view = rig.island.view()
    assert view.safe_mode == "minimum"
    assert not rig.island.apply_limits([DEFAULT_MW] * N, view.generation)
    rig.island.trigger_shed("e1", 0.1)
    assert rig.limits() == [MIN_MW] * N
    with pytest.raises(ValueError):
        rig.island.enter_safe_state("off")  # type: ignore[arg-type]


def test_bad_inputs_are_rejected(rig: Rig) -> None:
    with pytest.raises(ValueError):
        rig.island.update_draw([1.0] * (N - 1))
    with pytest.raises(ValueError):
        rig.island.trigger_shed("e1", 1.5)
    with pytest.raises(ValueError):
        rig.island.trigger_cap("e1", float("nan"))
    with pytest.raises(ValueError):
        rig.island.arm("x", -0.1)
    with pytest.raises(ValueError):
        rig.island.apply_limits([1] * 3, rig.island.view().generation)
    assert rig.island.view().event_id is None


# ---------------------------------------------------------------- random operation sequences

_ops = st.one_of(
    st.tuples(st.just("draw"), st.lists(st.integers(0, 800 * W), min_size=N, max_size=N)),
    st.tuples(st.just("shed"), st.sampled_from("abc"), st.floats(0, 1)),
    st.tuples(st.just("cap"), st.sampled_from("abc"), st.floats(0, 7000)),
    st.tuples(st.just("release"), st.sampled_from("abc")),
    st.tuples(st.just("advance"), st.floats(0, 4)),
    st.tuples(st.just("apply"), st.lists(st.integers(0, 900 * W), min_size=N, max_size=N)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ops, min_size=1, max_size=25))
def test_any_sequence_keeps_limits_in_envelope_and_under_ceiling(
    ops: list[tuple[Any, ...]],
) -> None:
    clock = VirtualClock()
    rig = _rig(clock)
    try:
        for op in ops:
            kind = op[0]
            if kind == "draw":
                rig.island.update_draw(op[1])
            elif kind == "shed":
                rig.island.trigger_shed(op[1], op[2])
            elif kind == "cap":
                rig.island.trigger_cap(op[1], op[2])
            elif kind == "release":
                rig.island.release(op[1])
            elif kind == "advance":
                clock.advance(op[1])
                rig.island.tick()
            else:
                rig.island.apply_limits(op[1], rig.island.view().generation)
            limits = rig.limits()
            assert _in_envelope(limits)
            # Ceilings only rise by ramping, and a trigger that lowers it writes its caps: so
            # the enforced limits are under the ceiling at every moment, not just after writes.
            ceiling = rig.island.view().ceiling_total_mw
            assert ceiling is None or sum(limits) <= ceiling
        view = rig.island.view()
        if view.event_id is None:
            assert view.ceiling_total_mw is None and view.target_mw is None
    finally:
        rig.island.close()
        rig.backend.close()
