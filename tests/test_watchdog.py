"""gridtao.safety.watchdog: expiry in virtual time, re-arming, and the real checking thread."""

from __future__ import annotations

import threading

import pytest

from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import SimConfig
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.safety.island import SafetyIsland
from gridtao.safety.watchdog import Watchdog


def _counting(clock: VirtualClock, timeout_s: float = 3.0) -> tuple[Watchdog, list[float]]:
    calls: list[float] = []
    return Watchdog(timeout_s, clock=clock, on_expire=lambda: calls.append(clock.now())), calls


def test_expires_once_after_timeout_without_heartbeat() -> None:
    clock = VirtualClock()
    dog, calls = _counting(clock)
    clock.advance(3.0)
    assert not dog.check()  # exactly at the timeout is still alive
    clock.advance(0.001)
    assert dog.check()
    assert dog.expired
    clock.advance(10.0)
    assert not dog.check()
    assert calls == [3.001]
    assert dog.expiries == 1


def _run_for(clock: VirtualClock, dog: Watchdog, seconds: float) -> bool:
    """The checker's thread over ``seconds``: a check every period; True if one expired."""
    fired = False
    steps = round(seconds / dog.period_s)
    for _ in range(steps):
        clock.advance(dog.period_s)
        fired = dog.check() or fired
    return fired


def test_heartbeats_keep_it_alive_and_rearm_it() -> None:
    clock = VirtualClock()
    dog, calls = _counting(clock)
    for _ in range(10):
        assert not _run_for(clock, dog, 2.75)
        dog.heartbeat()
    assert calls == []
    assert _run_for(clock, dog, 3.5)
    dog.heartbeat()
    assert not dog.expired
    assert _run_for(clock, dog, 3.5)
    assert dog.expiries == 2


def test_a_paused_process_is_not_a_dead_controller() -> None:
    clock = VirtualClock()
    recovered: list[float] = []
    dog = Watchdog(3.0, clock=clock, on_expire=lambda: None,
                   on_recover=lambda: recovered.append(clock.now()))
    assert not _run_for(clock, dog, 1.0)
    dog.heartbeat()
    clock.advance(10.0)  # SIGSTOP: neither the controller nor the checker ran
    assert not dog.check()  # the checker notices it slept too: no expiry on resume
    assert dog.pauses == 1 and not dog.expired
    dog.heartbeat()  # the controller's first step after the resume
    assert not _run_for(clock, dog, 2.0)
    # A controller that does not come back after the pause is still caught, one timeout on.
    assert _run_for(clock, dog, 3.5) and dog.expiries == 1
    assert recovered == []
    dog.heartbeat()
    assert recovered == [clock.now()] and not dog.expired


def test_failing_action_is_logged_and_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    clock = VirtualClock()
    attempts: list[int] = []

    def boom() -> None:
        attempts.append(1)
        raise RuntimeError("boom")

    dog = Watchdog(1.0, clock=clock, on_expire=boom)
    clock.advance(2.0)
    assert dog.check()
    assert not dog.check()
    assert attempts == [1]
    assert "expiry action failed" in caplog.text


def test_rejects_bad_timeouts() -> None:
    with pytest.raises(ValueError):
        Watchdog(0.0, clock=VirtualClock(), on_expire=lambda: None)
    with pytest.raises(ValueError):
        Watchdog(1.0, clock=VirtualClock(), on_expire=lambda: None, period_s=0.0)


def test_thread_calls_check_on_its_own() -> None:
    fired = threading.Event()
    dog = Watchdog(0.05, clock=MonotonicClock(), on_expire=fired.set, period_s=0.01)
    dog.start()
    dog.start()  # idempotent
    try:
        assert fired.wait(5.0)
    finally:
        dog.close()
        dog.close()
    assert dog.expiries == 1


def test_expiry_puts_the_island_in_its_safe_state() -> None:
    clock = VirtualClock()
    sim = SimNvml.from_config(SimConfig(count=4, set_latency_ms=0, read_latency_ms=0), clock)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=60)
    island.start()
    try:
        dog = Watchdog(3.0, clock=clock, on_expire=lambda: island.enter_safe_state("minimum"))
        island.trigger_shed("e1", 0.2)
        clock.advance(3.5)
        assert dog.check()
        assert [backend.enforced_limit_mw(i) for i in range(4)] == [200_000] * 4
        assert island.view().safe_mode == "minimum"
    finally:
        island.close()
        backend.close()


def test_a_heartbeat_racing_the_expiry_leaves_the_safe_state_once_it_is_in_force() -> None:
    """The controller beats again (from its own thread) after the checker has decided on an
    expiry but before the island's safe state is in force: the recovery waits for it, and the
    node leaves the safe state instead of staying in it for good."""
    clock = VirtualClock(100.0)
    backend = NvmlBackend(SimNvml.from_config(
        SimConfig(count=2, noise_w=0.0, read_latency_ms=0, set_latency_ms=0), clock))
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.5, max_event_s=60)
    island.start()
    island.update_draw([600_000, 600_000])
    beats: list[threading.Thread] = []
    dog: Watchdog

    def expire() -> None:
        beat = threading.Thread(target=dog.heartbeat, name="tier1")
        beats.append(beat)
        beat.start()
        # The heartbeat has re-armed the watchdog (it saw the expiry) before the safe state.
        for _ in range(500):
            if not dog.expired:
                break
            threading.Event().wait(0.01)
        assert not dog.expired
        island.enter_safe_state("minimum")

    def recover() -> None:  # NodeParts._watchdog_recovered (app/compose.py)
        island.leave_safe_state()

    dog = Watchdog(1.0, clock=clock, on_expire=expire, on_recover=recover)
    try:
        dog.check()
        clock.advance(0.6)
        dog.check()
        clock.advance(0.6)  # the controller is late by 1.2 s
        assert dog.check()
        beats[0].join(5.0)
        assert not beats[0].is_alive()
        for _ in range(100):  # the controller beats on for 10 s
            clock.advance(0.1)
            dog.heartbeat()
            dog.check()
            island.tick()
        assert island.view().safe_mode is None
        assert [backend.enforced_limit_mw(i) for i in range(2)] == [700_000, 700_000]
    finally:
        island.close()
        backend.close()
