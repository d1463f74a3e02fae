"""The simulator: physics acceptance in virtual time, workloads, faults, pynvml fidelity."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pynvml
import pytest

from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import ConfigError, SimConfig, SimWorkload
from gridtao.gpu.sim.nvml import SimHandle, SimNvml

H100_TDP_W = 700.0


def make_sim(**overrides: Any) -> tuple[SimNvml, VirtualClock]:
    clock = VirtualClock()
    sim = SimNvml.from_config(dataclasses.replace(SimConfig(), **overrides), clock)
    sim.nvmlInit()
    return sim, clock


def instant_mw(sim: SimNvml, handle: object) -> int:
    field = sim.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_POWER_INSTANT])[0]
    assert field.nvmlReturn == pynvml.NVML_SUCCESS
    return int(field.value.uiVal)


def steady_650(sim: SimNvml, clock: VirtualClock) -> object:
    sim.set_demand_w(0, 650.0)
    clock.advance(2.0)
    return sim.nvmlDeviceGetHandleByIndex(0)


# -- physics acceptance ------------------------------------------------------------------------


def test_cap_down_reaches_target_within_response() -> None:
    sim, clock = make_sim()
    h = steady_650(sim, clock)
    assert abs(instant_mw(sim, h) - 650_000) < 15_000
    sim.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    t_set = clock.now()
    clock.advance(0.001)
    assert instant_mw(sim, h) > 600_000  # the reading lags: last refresh was before the cap
    response_s = 5 * 0.020 + 0.020  # 5 time constants of cap_down plus one refresh
    clock.advance(t_set + 5 * 0.020 - clock.now())
    assert sim.true_power_mw(0) <= 300_000 * 1.05
    clock.advance(t_set + response_s - clock.now())
    for _ in range(500):
        assert abs(instant_mw(sim, h) - 300_000) <= 300_000 * 0.05
        clock.advance(0.002)


def test_average_lags_the_instant_reading() -> None:
    sim, clock = make_sim()
    h = steady_650(sim, clock)
    sim.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    clock.advance(0.1)
    assert sim.nvmlDeviceGetPowerUsage(h) > 550_000  # H100: a 1 s average
    clock.advance(1.1)
    assert abs(sim.nvmlDeviceGetPowerUsage(h) - 300_000) <= 300_000 * 0.05


def test_cap_up_is_slower_than_cap_down() -> None:
    sim, clock = make_sim(noise_w=0.0)
    h = steady_650(sim, clock)

    def time_to(pred: Any) -> float:
        t0 = clock.now()
        while not pred(sim.true_power_mw(0)):
            clock.advance(0.001)
            assert clock.now() - t0 < 5.0
        return clock.now() - t0

    sim.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    down_s = time_to(lambda mw: mw <= 335_000)  # 90 % of the 350 W step
    clock.advance(1.0)
    sim.nvmlDeviceSetPowerManagementLimit(h, 700_000)
    up_s = time_to(lambda mw: mw >= 615_000)
    assert 0.03 < down_s < 0.07  # tau 20 ms: 20 ms * ln(400/35) = 49 ms
    assert up_s > 5 * down_s
    assert 0.3 < up_s < 0.5  # tau 250 ms: 250 ms * ln(400/85) = 387 ms


def test_energy_counter_is_the_integral_of_true_power() -> None:
    sim, clock = make_sim()  # training: swings every step
    h = sim.nvmlDeviceGetHandleByIndex(3)
    e0 = sim.nvmlDeviceGetTotalEnergyConsumption(h)
    t0 = clock.now()
    integral_mj = 0.0
    dt = 0.0005
    for k in range(8000):  # 4 s with two cap changes
        if k == 2000:
            sim.nvmlDeviceSetPowerManagementLimit(h, 350_000)
        if k == 5000:
            sim.nvmlDeviceSetPowerManagementLimit(h, 700_000)
        p = sim.true_power_mw(3)
        clock.advance(dt)
        integral_mj += (p + sim.true_power_mw(3)) / 2 * dt
    integral_mj += sim.true_power_mw(3) * (clock.now() + 0.00002 - t0 - 8000 * dt)
    e1 = sim.nvmlDeviceGetTotalEnergyConsumption(h)
    assert integral_mj > 4 * 300_000
    assert abs((e1 - e0) - integral_mj) <= 0.01 * integral_mj


def test_reading_holds_between_refreshes() -> None:
    sim, clock = make_sim(refresh_ms=20.0, noise_w=3.0)
    h = sim.nvmlDeviceGetHandleByIndex(0)
    stamps: list[int] = []
    values: list[int] = []
    for _ in range(400):
        f = sim.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_POWER_INSTANT])[0]
        if not stamps or f.timestamp != stamps[-1]:
            stamps.append(int(f.timestamp))
            values.append(int(f.value.uiVal))
        else:
            assert f.value.uiVal == values[-1]  # same sample, same value
        clock.advance(0.001)
    gaps_us = np.diff(stamps)
    assert len(gaps_us) >= 18
    assert np.all(np.abs(gaps_us - 20_000) <= 1)
    assert len(set(values)) > len(values) // 2  # each refresh is a fresh (noisy) sample


def test_starts_at_steady_state_of_its_workload() -> None:
    sim, _ = make_sim(workload="idle")
    for i in range(sim.count):
        h = sim.nvmlDeviceGetHandleByIndex(i)
        assert 65_000 <= instant_mw(sim, h) <= 95_000
        assert 70_000 <= sim.nvmlDeviceGetPowerUsage(h) <= 90_000
    sim, _ = make_sim(workload="training")
    h = sim.nvmlDeviceGetHandleByIndex(0)
    assert sim.nvmlDeviceGetPowerUsage(h) > 0.5 * H100_TDP_W * 1000


# -- workloads ---------------------------------------------------------------------------------


def sample_true_w(sim: SimNvml, clock: VirtualClock, index: int, seconds: float,
                  step_s: float) -> np.ndarray:
    out = np.empty(round(seconds / step_s))
    for k in range(out.size):
        out[k] = sim.true_power_mw(index) / 1000
        clock.advance(step_s)
    return out


def test_training_swings_in_the_communication_band() -> None:
    step_s = 0.005
    traces = []
    for i in range(4):
        sim, clock = make_sim(seed=11)
        w = sample_true_w(sim, clock, i, 30.0, step_s)
        traces.append(w)
        assert 0.78 * H100_TDP_W < w.mean() < 0.9 * H100_TDP_W
        low = w < 0.7 * H100_TDP_W
        starts = np.flatnonzero(low[1:] & ~low[:-1])
        ends = np.flatnonzero(~low[1:] & low[:-1])
        rate_hz = starts.size / 30.0
        assert 0.2 <= rate_hz <= 3.0
        durations = [(e - s) * step_s for s, e in zip(starts, ends[ends > starts[0]], strict=False)]
        assert min(durations) >= 0.04 and max(durations) <= 0.31
        assert 0.45 * H100_TDP_W < w.min() < 0.62 * H100_TDP_W
        spectrum = np.abs(np.fft.rfft(w - w.mean()))
        freqs = np.fft.rfftfreq(w.size, step_s)
        assert 0.2 <= freqs[np.argmax(spectrum)] <= 3.0
    # Different GPUs are not in lockstep.
    assert abs(np.corrcoef(traces[0], traces[1])[0, 1]) < 0.5


def test_inference_is_bursty_between_30_and_100_percent() -> None:
    sim, clock = make_sim(workload="inference")
    w = sample_true_w(sim, clock, 0, 30.0, 0.005)
    assert w.min() >= 0.29 * H100_TDP_W and w.max() <= H100_TDP_W
    assert np.percentile(w, 10) < 0.45 * H100_TDP_W
    assert np.percentile(w, 90) > 0.7 * H100_TDP_W
    assert np.count_nonzero(np.diff(w)) / 30.0 > 2.0  # several bursts a second


def test_idle_draws_70_to_90_w() -> None:
    sim, clock = make_sim(workload="idle")
    w = sample_true_w(sim, clock, 5, 10.0, 0.01)
    assert w.min() >= 70.0 and w.max() <= 90.0


def test_trace_workload_loops_a_csv(tmp_path: Path) -> None:
    csv = tmp_path / "trace.csv"
    csv.write_text("t_s,gpu0,gpu1\n0,100,400\n0.5,300,200\n1.0,500,600\n")
    sim, clock = make_sim(workload="trace", trace_csv=str(csv), count=3)
    expected = {0: [100, 300, 500], 1: [400, 200, 600], 2: [100, 300, 500]}
    for lap in range(3):
        for row in range(3):
            for gpu, watts in expected.items():
                assert sim.demand_w(gpu) == watts[row], (lap, row, gpu)
            clock.advance(0.5)
    single = tmp_path / "single.csv"
    single.write_text("0,100\n1,200\n")
    sim, clock = make_sim(workload="trace", trace_csv=str(single))
    seen = {sim.demand_w(i) for i in range(8)}
    assert seen <= {100.0, 200.0} and len(seen) == 2  # shared trace, random phases


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("t_s,watts\n", "no data rows"),
        ("0,100\n0,200\n", "line 2"),
        ("0,100\n1,abc\n", "line 2"),
        ("0,100\n1,-5\n", "line 2"),
        ("0,100,5\n1,200\n", "line 2"),
    ],
)
def test_bad_trace_is_a_config_error(tmp_path: Path, text: str, reason: str) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(ConfigError, match=reason) as exc:
        make_sim(workload="trace", trace_csv=str(csv))
    assert "gpus.sim.trace_csv" in str(exc.value) and str(csv) in str(exc.value)
    with pytest.raises(ConfigError, match=r"gpus\.sim\.trace_csv"):
        make_sim(workload="trace")
    with pytest.raises(ConfigError, match="cannot read"):
        make_sim(workload="trace", trace_csv=str(tmp_path / "missing.csv"))


def test_same_seed_same_run_other_seed_differs() -> None:
    def run(seed: int) -> list[int]:
        sim, clock = make_sim(seed=seed)
        hs = [sim.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
        out = []
        for _ in range(50):
            out += [instant_mw(sim, h) for h in hs]
            clock.advance(0.013)
        return out

    assert run(4) == run(4)
    assert run(4) != run(5)


def test_profiles() -> None:
    for profile, lo, hi, usage_is_average in (
        ("h100-sxm", 200_000, 700_000, True),
        ("a100-sxm", 100_000, 400_000, False),
        ("v100-sxm2", 100_000, 300_000, False),
    ):
        sim, clock = make_sim(profile=profile)
        h = sim.nvmlDeviceGetHandleByIndex(0)
        assert sim.nvmlDeviceGetPowerManagementLimitConstraints(h) == [lo, hi]
        assert sim.nvmlDeviceGetPowerManagementDefaultLimit(h) == hi
        assert sim.nvmlDeviceGetEnforcedPowerLimit(h) == hi
        clock.advance(0.005)
        usage = sim.nvmlDeviceGetPowerUsage(h)
        assert (usage == instant_mw(sim, h)) is not usage_is_average


# -- pynvml fidelity -----------------------------------------------------------------------------


def test_field_values_are_real_pynvml_structures() -> None:
    sim, clock = make_sim()
    h = sim.nvmlDeviceGetHandleByIndex(2)
    values = sim.nvmlDeviceGetFieldValues(
        h, [pynvml.NVML_FI_DEV_POWER_INSTANT, (pynvml.NVML_FI_DEV_POWER_AVERAGE, 0), 1]
    )
    assert len(values) == 3 and isinstance(values[0], pynvml.c_nvmlFieldValue_t)
    inst, avg, other = values
    assert inst.fieldId == 186 and avg.fieldId == 185 and other.fieldId == 1
    for f in (inst, avg):
        assert f.nvmlReturn == pynvml.NVML_SUCCESS
        assert f.valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
        assert 300_000 < f.value.uiVal <= 700_000
    assert other.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert abs(inst.timestamp / 1e6 - clock.wall()) <= 0.021  # µs of wall time, <= 1 refresh old
    assert avg.value.uiVal == sim.nvmlDeviceGetPowerUsage(h)


def test_calls_need_init_and_shutdown_is_counted() -> None:
    sim = SimNvml(VirtualClock())
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        sim.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        sim.nvmlShutdown()
    sim.nvmlInit()
    sim.nvmlInit()
    h = sim.nvmlDeviceGetHandleByIndex(7)
    sim.nvmlShutdown()
    assert sim.nvmlDeviceGetCount() == 8
    sim.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        sim.nvmlDeviceGetPowerUsage(h)
    assert sim.call_count("nvmlInit") == 2 and sim.call_count("nvmlShutdown") == 3


def test_bad_handles_and_limits_raise_like_nvml() -> None:
    sim, _ = make_sim()
    other, _ = make_sim()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        sim.nvmlDeviceGetHandleByIndex(8)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        sim.nvmlDeviceGetName(other.nvmlDeviceGetHandleByIndex(0))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        sim.nvmlDeviceGetName(SimHandle(0, 0))
    h = sim.nvmlDeviceGetHandleByIndex(0)
    for bad in (199_999, 700_001):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            sim.nvmlDeviceSetPowerManagementLimit(h, bad)
    with pytest.raises(TypeError):
        sim.nvmlDeviceSetPowerManagementLimit(h, 300_000.0)  # type: ignore[arg-type]
    assert sim.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000
    assert getattr(sim, "NVML_FI_DEV_POWER_INSTANT") == 186  # noqa: B009 - not in the class' types
    assert getattr(sim, "NVMLError_GpuIsLost") is pynvml.NVMLError_GpuIsLost  # noqa: B009
    assert not hasattr(sim, "nvmlDeviceSetPowerManagementLimit_v2")  # it ignores errors


def test_names_and_uuids() -> None:
    sim, _ = make_sim()
    hs = [sim.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
    assert {sim.nvmlDeviceGetName(h) for h in hs} == {"NVIDIA H100 80GB HBM3"}
    uuids = [sim.nvmlDeviceGetUUID(h) for h in hs]
    assert len(set(uuids)) == 8 and all(u.startswith("GPU-") and len(u) == 40 for u in uuids)
    assert isinstance(sim.nvmlSystemGetDriverVersion(), str)


# -- faults --------------------------------------------------------------------------------------


def test_fault_lost() -> None:
    sim, _ = make_sim()
    h = sim.nvmlDeviceGetHandleByIndex(1)
    sim.inject_fault(1, "lost")
    calls: list[Callable[[], object]] = [
        lambda: sim.nvmlDeviceGetHandleByIndex(1),
        lambda: sim.nvmlDeviceGetPowerUsage(h),
        lambda: sim.nvmlDeviceGetFieldValues(h, [186]),
        lambda: sim.nvmlDeviceGetEnforcedPowerLimit(h),
        lambda: sim.nvmlDeviceGetTotalEnergyConsumption(h),
        lambda: sim.nvmlDeviceSetPowerManagementLimit(h, 300_000),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call()
    assert instant_mw(sim, sim.nvmlDeviceGetHandleByIndex(0)) > 0  # other GPUs unaffected
    sim.clear_faults()
    assert sim.nvmlDeviceGetPowerUsage(h) > 0


def test_fault_limited_number_of_calls() -> None:
    sim, _ = make_sim()
    h = sim.nvmlDeviceGetHandleByIndex(0)
    sim.inject_fault(0, "lost", calls=2)
    for _ in range(2):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            sim.nvmlDeviceGetPowerUsage(h)
    assert sim.nvmlDeviceGetPowerUsage(h) > 0


def test_fault_no_permission_blocks_only_writes() -> None:
    sim, _ = make_sim()
    h = sim.nvmlDeviceGetHandleByIndex(0)
    sim.inject_fault(0, "no_permission")
    with pytest.raises(pynvml.NVMLError_NoPermission):
        sim.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    assert sim.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000
    assert instant_mw(sim, h) > 0


def test_fault_not_supported() -> None:
    sim, _ = make_sim()
    h = sim.nvmlDeviceGetHandleByIndex(0)
    sim.inject_fault(0, "not_supported")
    inst, avg = sim.nvmlDeviceGetFieldValues(h, [186, 185])
    assert inst.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert avg.nvmlReturn == pynvml.NVML_SUCCESS
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    assert sim.nvmlDeviceGetPowerUsage(h) > 0


def test_fault_slow_takes_time() -> None:
    sim, clock = make_sim(read_latency_ms=0.0, set_latency_ms=0.0)
    h = sim.nvmlDeviceGetHandleByIndex(0)
    sim.inject_fault(0, "slow", delay_s=0.25, calls=1)
    t0 = clock.now()
    sim.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    assert clock.now() - t0 == pytest.approx(0.25)
    t0 = clock.now()
    sim.nvmlDeviceSetPowerManagementLimit(h, 400_000)
    assert clock.now() == t0
    with pytest.raises(ValueError):
        sim.inject_fault(0, "melted")  # type: ignore[arg-type]


def test_call_latency_is_charged_to_the_clock() -> None:
    sim, clock = make_sim(read_latency_ms=0.5, set_latency_ms=3.0)
    h = sim.nvmlDeviceGetHandleByIndex(0)
    t0 = clock.now()
    sim.nvmlDeviceGetPowerUsage(h)
    assert clock.now() - t0 == pytest.approx(0.0005)
    t0 = clock.now()
    sim.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    assert clock.now() - t0 == pytest.approx(0.003)
    assert sim.call_count("nvmlDeviceSetPowerManagementLimit") == 1
    assert sim.call_count("nvmlDeviceSetPowerManagementLimit", 1) == 0


class BarrierClock(MonotonicClock):
    """Real time, but every sleep waits until ``parties`` callers are sleeping at once."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)

    def sleep(self, seconds: float) -> None:
        self.barrier.wait()


def test_parallel_sets_on_different_gpus_sleep_concurrently() -> None:
    clock = BarrierClock(8)
    # A long latency, so every set call still has latency left to sleep (on the barrier).
    cfg = dataclasses.replace(SimConfig(), read_latency_ms=0.0, set_latency_ms=1000.0)
    sim = SimNvml.from_config(cfg, clock)
    sim.nvmlInit()
    handles = [sim.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:  # a lock held across the latency would starve the barrier and break it
            sim.nvmlDeviceSetPowerManagementLimit(handles[i], 300_000 + i * 1000)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [sim.nvmlDeviceGetEnforcedPowerLimit(h) for h in handles] == [
        300_000 + i * 1000 for i in range(8)
    ]


class RecordingClock(MonotonicClock):
    """Real time; records the sleeps asked of it instead of sleeping."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_real_time_latency_sleeps_only_what_the_call_has_not_used() -> None:
    clock = RecordingClock()
    cfg = dataclasses.replace(SimConfig(), read_latency_ms=0.02, set_latency_ms=5.0)
    sim = SimNvml.from_config(cfg, clock)
    sim.nvmlInit()
    h = sim.nvmlDeviceGetHandleByIndex(0)
    for _ in range(20):
        instant_mw(sim, h)
    assert clock.sleeps == []  # a 20 µs leftover is below what time.sleep can honour
    sim.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    assert len(clock.sleeps) == 1 and 0 < clock.sleeps[0] <= 0.005


def test_a_daily_shape_makes_inference_follow_the_time_of_day() -> None:
    import datetime as dt

    from gridtao.gpu.sim.daily import DailyShape

    def mean_demand(hour_utc: int, shape: Literal["none", "default"]) -> float:
        # A Wednesday, so no weekend factor; the shape is read on the simulated wall clock.
        wall = dt.datetime(2026, 12, 2, hour_utc, tzinfo=dt.UTC).timestamp()
        return _mean_demand(SimConfig(count=4, workload="inference", seed=1,
                                      daily_shape=shape), wall, 600)

    shape = DailyShape.default()
    night, afternoon = (shape.at(dt.datetime(2026, 12, 2, h, tzinfo=dt.UTC).timestamp())
                        for h in (3, 15))
    assert night < afternoon
    assert mean_demand(3, "default") < 0.8 * mean_demand(15, "default")
    # Without a shape the hour makes no difference beyond the workload's own randomness.
    flat_night, flat_afternoon = mean_demand(3, "none"), mean_demand(15, "none")
    assert abs(flat_night - flat_afternoon) < 0.1 * flat_afternoon


def test_a_custom_daily_shape_and_its_time_zone_come_from_the_configuration() -> None:
    """``daily_shape: custom``: the configured levels (busy only from 09:00 to 17:00, local),
    read in local time ``daily_tz_offset_h`` hours east of UTC."""
    import datetime as dt

    levels = tuple(1.0 if 9 <= h < 17 else 0.0 for h in range(24))

    def mean_demand(hour_utc: int, offset_h: float) -> float:
        wall = dt.datetime(2026, 12, 2, hour_utc, 30, tzinfo=dt.UTC).timestamp()
        return _mean_demand(SimConfig(count=2, workload="inference", seed=1,
                                      daily_shape="custom", daily_levels=levels,
                                      daily_tz_offset_h=offset_h), wall, 200)

    idle = mean_demand(3, 0.0)  # 03:30 UTC, local = UTC: no load above idle
    busy = mean_demand(11, 0.0)
    assert idle < 0.5 * busy
    # 03:30 UTC is 11:30 at UTC+8: busy there.
    assert mean_demand(3, 8.0) == pytest.approx(busy, rel=0.2)


def _mean_demand(config: SimConfig, wall_s: float, steps: int) -> float:
    """The simulated GPUs' summed demand (W), averaged over ``steps`` half seconds of virtual
    time from the Unix time ``wall_s``."""
    clock = VirtualClock(wall_offset=wall_s)
    sim = SimNvml.from_config(config, clock)
    total = 0.0
    for _ in range(steps):
        clock.advance(0.5)
        total += sum(sim.demand_w(i) for i in range(config.count))
    return total / steps


def test_training_in_step_dips_every_gpu_together() -> None:
    """One synchronous data-parallel job: every training GPU's dips land together, so the
    node swings by their sum; apart, the steps are out of phase and the node's swing
    averages out. Other workloads keep their own streams."""
    step_s, seconds = 0.01, 30.0

    def node(**overrides: Any) -> tuple[np.ndarray, np.ndarray]:
        sim, clock = make_sim(count=4, seed=3, **overrides)
        out = np.empty((round(seconds / step_s), sim.count))
        for k in range(out.shape[0]):
            out[k] = [sim.demand_w(i) for i in range(sim.count)]
            clock.advance(step_s)
        return out, out.sum(axis=1)

    apart, apart_sum = node()
    together, together_sum = node(training_in_step=True)
    assert all(np.array_equal(together[:, 0], together[:, i]) for i in range(1, 4))
    assert abs(np.corrcoef(apart[:, 0], apart[:, 1])[0, 1]) < 0.5
    # four GPUs in step swing about twice (sqrt 4) as much as four apart
    assert together_sum.std() > 1.5 * apart_sum.std()
    mixed, _ = node(training_in_step=True, workloads=(
        SimWorkload("training"), SimWorkload("training"), SimWorkload("inference"),
        SimWorkload("inference")))
    assert np.array_equal(mixed[:, 0], mixed[:, 1])
    assert not np.array_equal(mixed[:, 2], mixed[:, 3])
