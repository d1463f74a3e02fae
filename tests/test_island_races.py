"""The safety island where threads and faults interleave: a GPU unreadable at start, a limit set
from outside while tier 1 is mid-step, a trigger recorded while tier 1's write is still being
recorded. Each keeps the island's invariants: no GPU above its resting limit, and the enforced
limits it reports are the ones the GPUs hold."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import ControlConfig, SimConfig
from gridtao.control.tier1.loop import FastLoop
from gridtao.gpu.backend import GpuDriverError
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.safety.island import SafetyIsland
from gridtao.safety.writer import WriteOutcome

W = 1000  # mW per W


def _sim(clock: VirtualClock | MonotonicClock, count: int = 2) -> SimNvml:
    return SimNvml.from_config(
        SimConfig(count=count, noise_w=0.0, read_latency_ms=0, set_latency_ms=0), clock)


def _backend(clock: VirtualClock | MonotonicClock, count: int = 2) -> NvmlBackend:
    return NvmlBackend(_sim(clock, count))


def _ramping_back(clock: VirtualClock) -> tuple[NvmlBackend, SafetyIsland, FastLoop]:
    """Two GPUs demanding 650 W left at 400 W by a crashed run whose resting limits were 700 W:
    tier 1 (not yet stepped) will ramp them back up."""
    sim = _sim(clock)
    backend = NvmlBackend(sim)
    for i in range(2):
        sim.set_demand_w(i, 650.0)
        backend.set_limit_mw(i, 400 * W)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=600,
                          resting_mw=[700 * W, 700 * W])
    island.start()
    return backend, island, FastLoop(backend, island, clock=clock, config=ControlConfig())


def _run_tier_1(loop: FastLoop, clock: VirtualClock, steps: int) -> None:
    """Step tier 1 ``steps`` times in virtual time, one period apart."""
    for _ in range(steps):
        loop.step()
        clock.advance(loop.period_s)


class OneBadRead:
    """A backend whose GPU 0 fails its next instant-power read once ``armed`` (a transient
    driver error)."""

    def __init__(self, backend: NvmlBackend) -> None:
        self._backend = backend
        self.armed = False

    def instant_power_mw(self, index: int) -> int:
        if self.armed and index == 0:
            self.armed = False
            raise GpuDriverError("GPU 0: Unknown Error", index=0)
        return self._backend.instant_power_mw(index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def test_a_gpu_unreadable_at_start_is_never_raised_above_its_resting_limit() -> None:
    """The operator runs the GPUs at 500 W (default 700 W) and GPU 0's first reading fails:
    the start-up write check writes back only what it read, and tier 1 never lifts GPU 0."""
    clock = VirtualClock(100.0)
    real = _backend(clock)
    for i in range(2):
        real.set_limit_mw(i, 500 * W)
    backend = OneBadRead(real)
    found = [backend.enforced_limit_mw(i) for i in range(2)]
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=600,
                          resting_mw=found)
    loop = FastLoop(backend, island, clock=clock, config=ControlConfig())
    backend.armed = True
    island.start()  # as the agent starts: the island, then the write check
    island.probe_writes()
    try:
        for _ in range(200):  # tier 1 for 2 s, with read-backs
            loop.step()
            clock.advance(loop.period_s)
            island.refresh_enforced()
        assert [real.enforced_limit_mw(i) for i in range(2)] == [500 * W, 500 * W]
        assert island.resting_mw == (500 * W, 500 * W)
    finally:
        island.close()
        real.close()


def test_a_limit_set_from_outside_while_tier_1_steps_is_not_written_over() -> None:
    """Tier 1 ramps the GPUs back to their resting 700 W after a crash; on the ramp's last step,
    between its plan and its write, the operator sets GPU 0 to 300 W and the read-back adopts
    it: the write lands at 300 W, not 700 W."""
    clock = VirtualClock(100.0)
    backend, island, loop = _ramping_back(clock)
    real_apply = island.apply_limits
    fired: list[bool] = []

    def apply(limits: Sequence[int], generation: int) -> bool:
        if not fired and list(limits) == [700 * W, 700 * W]:
            fired.append(True)
            backend.set_limit_mw(0, 300 * W)  # nvidia-smi -i 0 -pl 300
            assert [c.resting_mw for c in island.refresh_enforced()] == [300 * W]
        return real_apply(limits, generation)

    island.apply_limits = apply  # type: ignore[method-assign,assignment]
    try:
        _run_tier_1(loop, clock, 300)
        island.refresh_enforced()
        assert fired and island.resting_mw[0] == 300 * W
        assert backend.enforced_limit_mw(0) == 300 * W
    finally:
        island.close()
        backend.close()


def test_a_trigger_recorded_while_tier_1_records_its_write_is_what_the_island_reports() -> None:
    """Tier 1's write completes, then its thread is held before it records the outcome; a
    trigger writes and records its caps meanwhile. Tier 1's older outcome, recorded last, must
    not become the limits the island reports."""
    clock = MonotonicClock()
    backend = _backend(clock)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.5, max_event_s=60)
    island.start()
    island.update_draw([600 * W, 600 * W])
    real_record = island._writes.record
    tier1_waiting, trigger_done = threading.Event(), threading.Event()

    def record(outcomes: Sequence[WriteOutcome]) -> None:
        if threading.current_thread().name == "tier1":
            tier1_waiting.set()
            trigger_done.wait(5)
        real_record(outcomes)

    island._writes.record = record  # type: ignore[method-assign]
    try:
        gen = island.view().generation
        tier1 = threading.Thread(target=island.apply_limits, args=([650 * W, 650 * W], gen),
                                 name="tier1")
        tier1.start()
        assert tier1_waiting.wait(5)
        act = island.trigger_shed("e1", 0.5)
        trigger_done.set()
        tier1.join(5)
        held = tuple(backend.enforced_limit_mw(i) for i in range(2))
        assert held == act.caps_mw
        assert island.enforced_mw() == held
    finally:
        island.close()
        backend.close()


def test_an_activation_reports_the_limits_the_gpus_hold_not_the_caps_it_computed() -> None:
    """GPU 0 rests at 400 W (the operator's), GPU 1 at 700 W, both drawing 600 W: a 1,000 W
    node cap splits into caps of which GPU 0's lies above its resting limit; it is written as
    400 W, and the activation says 400 W."""
    clock = VirtualClock(100.0)
    backend = _backend(clock)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=600,
                          resting_mw=[400 * W, 700 * W])
    island.start()
    island.update_draw([600 * W, 600 * W])
    try:
        act = island.trigger_cap("e1", 1000.0)
        held = tuple(backend.enforced_limit_mw(i) for i in range(2))
        assert act.caps_mw[0] > 400 * W  # what the split computed
        assert act.enforced_mw == held and held[0] == 400 * W
    finally:
        island.close()
        backend.close()


def test_a_tier_1_write_queued_behind_a_slow_gpu_never_lands_after_the_restore() -> None:
    """GPU 0 is slow (0.4 s a call). Tier 1 writes while an earlier write still holds GPU 0, so
    its job waits in GPU 0's queue, and tier 1 gives up waiting. The agent stops: it seals the
    island and restores the limits it found. The queued job, when its turn comes, is skipped:
    the restore is what GPU 0 keeps."""
    from gridtao.app.actuation import restore_limits

    clock = MonotonicClock()
    sim = _sim(clock)
    backend = NvmlBackend(sim)
    found = [backend.enforced_limit_mw(i) for i in range(2)]
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=60,
                          write_timeout_s=0.05)
    island.start()
    try:
        sim.inject_fault(0, "slow", delay_s=0.4)
        gen = island.view().generation
        island.apply_limits([500 * W, 500 * W], gen)  # GPU 0's worker busy for a while
        island.apply_limits([450 * W, 450 * W], gen)  # queued behind it; tier 1 moves on
        island.seal()  # the stop: tier 1 is locked out from here on
        assert not island.apply_limits([400 * W, 400 * W], gen)
        limits = [backend.power_limits(i) for i in range(2)]
        assert restore_limits(backend, [0, 1], limits, found) == 0
        time.sleep(1.5)  # the queued jobs' turn comes and goes
        assert [backend.enforced_limit_mw(i) for i in range(2)] == found
    finally:
        sim.clear_faults()
        island.close()
        backend.close()


def test_a_write_still_hung_at_the_deadline_is_reported_as_its_gpus_fault() -> None:
    """Tier 1's write to GPU 1 hangs past the island's write deadline: the GPU is reported
    faulted (its timeout outcome carries no access number, and must not be dropped as old),
    and its limit is left as last read."""
    clock = MonotonicClock()
    sim = _sim(clock)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=60,
                          write_timeout_s=0.1)
    island.start()
    before = island.enforced_mw()
    try:
        sim.inject_fault(1, "slow", delay_s=0.6, calls=1)
        island.apply_limits([500 * W, 500 * W], island.view().generation)
        assert island.write_faults() == {1: "WriteTimeout"}
        assert 1 in island.view().faulted and island.enforced_mw()[1] == before[1]
    finally:
        time.sleep(0.7)  # the hung write returns before the writer threads stop
        island.close()
        backend.close()


def test_a_write_planned_before_an_outside_limit_and_landing_after_it_is_brought_down() -> None:
    """The operator sets GPU 0 to 300 W and the island adopts it after tier 1 clamped its plan
    (700 W) but before the write lands: the write lands above the new resting limit, and tier
    1's next plans bring GPU 0 back under it."""
    clock = VirtualClock(100.0)
    backend, island, loop = _ramping_back(clock)
    real_command = backend.command_limit_mw
    fired: list[bool] = []

    def command(index: int, limit_mw: int) -> bool:
        if not fired and index == 0 and limit_mw == 700 * W:  # the ramp's last write
            fired.append(True)
            real_command(0, 300 * W)  # nvidia-smi -i 0 -pl 300, read and adopted meanwhile
            island.adopt_outside_limit(0, 400 * W, 300 * W)
        return real_command(index, limit_mw)

    backend.command_limit_mw = command  # type: ignore[method-assign]
    try:
        _run_tier_1(loop, clock, 300)
        assert fired and island.resting_mw[0] == 300 * W
        assert backend.enforced_limit_mw(0) == 300 * W
    finally:
        island.close()
        backend.close()


def test_a_write_that_failed_once_is_written_again_though_the_plan_holds_still() -> None:
    """Tier 1 ramps the GPUs back to 700 W; the driver refuses GPU 0's last step once (a
    transient error). The plan no longer moves, but tier 1 writes it again within a second:
    GPU 0 does not stay short of its resting limit."""
    clock = VirtualClock(100.0)
    backend, island, loop = _ramping_back(clock)
    real_command = backend.command_limit_mw
    refused: list[int] = []

    def command(index: int, limit_mw: int) -> bool:
        if not refused and index == 0 and limit_mw == 700 * W:
            refused.append(limit_mw)
            raise GpuDriverError("GPU 0: Unknown Error", index=0)
        return real_command(index, limit_mw)

    backend.command_limit_mw = command  # type: ignore[method-assign]
    try:
        _run_tier_1(loop, clock, 300)  # 3 s
        assert refused
        assert [backend.enforced_limit_mw(i) for i in range(2)] == [700 * W, 700 * W]
        assert island.write_faults() == {}
    finally:
        island.close()
        backend.close()


def test_a_gpu_whose_writes_keep_failing_is_retried_about_once_a_second() -> None:
    """GPU 0 refuses every write: tier 1 tries it again about once a second, not at its 100 Hz
    (a lost GPU must not be hammered), and GPU 1 reaches its resting limit regardless."""
    clock = VirtualClock(100.0)
    backend, island, loop = _ramping_back(clock)
    real_command = backend.command_limit_mw
    tries: list[float] = []

    def command(index: int, limit_mw: int) -> bool:
        if index == 0:
            tries.append(clock.now())
            raise GpuDriverError("GPU 0: Unknown Error", index=0)
        return real_command(index, limit_mw)

    backend.command_limit_mw = command  # type: ignore[method-assign]
    try:
        _run_tier_1(loop, clock, 500)  # 5 s
        late = [t for t in tries if t >= tries[0] + 1.0]
        assert 3 <= len(late) <= 6, tries  # about once a second after the first second
        assert backend.enforced_limit_mw(1) == 700 * W and 0 in island.write_faults()
    finally:
        island.close()
        backend.close()
