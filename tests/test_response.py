"""gridtao.control.response.ResponseMeter: when measured node power enters the target band."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from gridtao.clock import Clock, MonotonicClock, VirtualClock
from gridtao.config.agent import SimConfig
from gridtao.control.response import Reached, ResponseMeter, band_mw
from gridtao.gpu.backend import GpuInfo, GpuTimeout
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml

W = 1000
N = 4
DEMAND_W = 600
BASELINE_MW = N * DEMAND_W * W


@dataclass
class Rig:
    clock: Clock
    sim: SimNvml
    backend: NvmlBackend
    meter: ResponseMeter
    reached: list[Reached]

    def cap_all(self, watts: int) -> None:
        for i in range(N):
            self.backend.set_limit_mw(i, watts * W)


def _rig(clock: Clock, *, timeout_s: float = 30.0) -> Rig:
    cfg = SimConfig(count=N, noise_w=0.0, set_latency_ms=0.0, read_latency_ms=0.0)
    sim = SimNvml.from_config(cfg, clock)
    for i in range(N):
        sim.set_demand_w(i, DEMAND_W)
    if isinstance(clock, VirtualClock):
        clock.advance(2.0)
    backend = NvmlBackend(sim)
    reached: list[Reached] = []
    meter = ResponseMeter(
        backend, clock=clock, on_reached=reached.append, band_fraction=0.05, timeout_s=timeout_s
    )
    return Rig(clock, sim, backend, meter, reached)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = _rig(VirtualClock(50.0))
    yield r
    r.meter.close()
    r.backend.close()


def test_band_is_a_fraction_of_the_reduction_with_a_floor() -> None:
    assert band_mw(2_400_000, 1_800_000, 0.05) == pytest.approx(30_000)
    assert band_mw(1_800_000, 2_400_000, 0.05) == pytest.approx(30_000)
    assert band_mw(2_000_000, 2_000_000, 0.05) == 1000.0


def test_nothing_to_do_without_watches(rig: Rig) -> None:
    assert rig.meter.poll_once() == []
    assert rig.meter.node_power_mw() == pytest.approx(BASELINE_MW)


def test_reports_once_when_power_enters_the_band(rig: Rig) -> None:
    clock = rig.clock
    assert isinstance(clock, VirtualClock)
    target_mw = 0.75 * BASELINE_MW  # 1800 W; band 30 W above it
    rig.meter.watch("e1", baseline_mw=BASELINE_MW, target_mw=target_mw)
    assert rig.meter.poll_once() == []  # still at 2400 W
    rig.cap_all(450)
    t_cap = clock.now()
    done: list[Reached] = []
    while not done:
        clock.advance(0.002)
        done = rig.meter.poll_once()
        assert clock.now() - t_cap < 1.0, "never reached the band"
    (r,) = done
    assert r.event_id == "e1" and r.target_mw == target_mw
    assert r.node_power_mw <= target_mw + 0.05 * (BASELINE_MW - target_mw)
    # Not earlier than the physics allows: the instant reading must have moved most of the way.
    assert r.node_power_mw < 0.8 * BASELINE_MW
    assert r.reached_at == clock.now() and r.reached_wall == clock.wall()
    assert rig.reached == [r]
    clock.advance(0.1)
    assert rig.meter.poll_once() == []  # reported once, then dropped


def test_just_above_the_band_is_not_reached(rig: Rig) -> None:
    target_mw = 0.75 * BASELINE_MW
    rig.meter.watch("e1", baseline_mw=BASELINE_MW, target_mw=target_mw)
    rig.cap_all(460)  # 1840 W settles 40 W over the target: outside the 30 W band
    assert isinstance(rig.clock, VirtualClock)
    for _ in range(50):
        rig.clock.advance(0.02)
        assert rig.meter.poll_once() == []
    rig.cap_all(455)  # 1820 W: inside
    rig.clock.advance(0.5)
    assert [r.event_id for r in rig.meter.poll_once()] == ["e1"]


def test_band_is_one_sided_overdelivery_counts(rig: Rig) -> None:
    rig.meter.watch("deep", baseline_mw=BASELINE_MW, target_mw=0.9 * BASELINE_MW)
    rig.cap_all(300)  # far below the target
    assert isinstance(rig.clock, VirtualClock)
    rig.clock.advance(0.5)
    (r,) = rig.meter.poll_once()
    assert r.event_id == "deep" and r.node_power_mw < 0.6 * BASELINE_MW


def test_several_watches_are_reported_independently(rig: Rig) -> None:
    assert isinstance(rig.clock, VirtualClock)
    rig.meter.watch("shallow", baseline_mw=BASELINE_MW, target_mw=0.9 * BASELINE_MW)
    rig.meter.watch("deep", baseline_mw=BASELINE_MW, target_mw=0.5 * BASELINE_MW)
    rig.cap_all(540)
    rig.clock.advance(0.5)
    assert [r.event_id for r in rig.meter.poll_once()] == ["shallow"]
    rig.cap_all(300)
    rig.clock.advance(0.5)
    assert [r.event_id for r in rig.meter.poll_once()] == ["deep"]


def test_timeout_drops_the_watch() -> None:
    clock = VirtualClock(0.0)
    r = _rig(clock, timeout_s=1.0)
    try:
        r.meter.watch("slow", baseline_mw=BASELINE_MW, target_mw=0.5 * BASELINE_MW)
        clock.advance(0.9)
        assert r.meter.poll_once() == []
        clock.advance(0.2)
        assert r.meter.poll_once() == []  # expired: dropped, not reported
        r.cap_all(250)
        clock.advance(1.0)
        assert r.meter.poll_once() == [] and r.reached == []
    finally:
        r.meter.close()
        r.backend.close()


def test_a_lost_gpu_does_not_stop_the_measurement(rig: Rig) -> None:
    assert isinstance(rig.clock, VirtualClock)
    # 1824 W target, 28.8 W band: the three GPUs left (1800 W) are inside it.
    rig.meter.watch("e", baseline_mw=BASELINE_MW, target_mw=0.76 * BASELINE_MW)
    rig.sim.inject_fault(3, "lost")
    assert rig.meter.node_power_mw() == pytest.approx(0.75 * BASELINE_MW)
    (r,) = rig.meter.poll_once()
    assert r.event_id == "e"


class FlakyBackend:
    """A backend whose instant reads of GPU ``index`` time out while ``failing`` is set."""

    def __init__(self, inner: NvmlBackend, index: int) -> None:
        self._inner = inner
        self._index = index
        self.failing = True

    def devices(self) -> Sequence[GpuInfo]:
        return self._inner.devices()

    def instant_power_mw(self, index: int) -> int:
        if self.failing and index == self._index:
            raise GpuTimeout("read timed out", index=index)
        return self._inner.instant_power_mw(index)


def test_a_transient_read_error_is_no_sample_not_zero_watts(rig: Rig) -> None:
    assert isinstance(rig.clock, VirtualClock)
    flaky = FlakyBackend(rig.backend, 3)
    reached: list[Reached] = []
    meter = ResponseMeter(
        flaky, clock=rig.clock, on_reached=reached.append  # type: ignore[arg-type]
    )
    meter.watch("e", baseline_mw=BASELINE_MW, target_mw=0.76 * BASELINE_MW)
    assert meter.node_power_mw() is None
    assert meter.poll_once() == []  # 1800 W from three GPUs would have looked reached
    flaky.failing = False
    assert meter.poll_once() == []  # 2400 W: honestly not reached
    rig.cap_all(450)
    rig.clock.advance(0.5)
    assert [r.event_id for r in meter.poll_once()] == ["e"]


def test_thread_reports_in_real_time() -> None:
    r = _rig(MonotonicClock())
    got = threading.Event()
    reached: list[Reached] = []

    def on_reached(x: Reached) -> None:
        reached.append(x)
        got.set()

    meter = ResponseMeter(r.backend, clock=r.clock, on_reached=on_reached, period_s=0.002)
    try:
        meter.start()
        for _ in range(200):  # let the demand override settle in real time
            if meter.node_power_mw() == pytest.approx(BASELINE_MW, abs=5 * W):
                break
            r.clock.sleep(0.01)
        t0 = r.clock.now()
        meter.watch("rt", baseline_mw=BASELINE_MW, target_mw=0.8 * BASELINE_MW)
        r.cap_all(480)
        assert got.wait(10.0), "the meter thread never reported"
        (x,) = reached
        assert x.event_id == "rt" and x.reached_at >= t0
    finally:
        meter.close()
        r.meter.close()
        r.backend.close()
