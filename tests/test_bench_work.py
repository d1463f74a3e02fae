"""``gridtao bench work`` (bench/work.py) and the mixed node it runs on: simulated GPUs with a
workload each (``gpus.sim.workloads``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from gridtao.bench import work
from gridtao.cli import main as cli
from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import ConfigError, SimConfig, SimWorkload, config_from_mapping
from gridtao.config.paths import sim_device_path
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.shared import DeviceMismatch


def test_a_short_run_compares_both_allocations_at_the_same_delivered_watts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "work.json"
    assert cli.main(["bench", "work", "--hold-s", "6", "--gap-s", "2", "--sheds", "0.2",
                     "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    allocations = data["allocations"]
    for name in ("proportional", "work-aware", "work-aware-learned"):
        a = allocations[name]
        for key in ("delivered_w", "work_lost_fraction", "tokens_lost", "samples_lost"):
            assert isinstance(a[key], float), (name, key)
        assert a["delivered_w"] > 0 and 0 < a["work_lost_fraction"] < 1
        assert a["max_response_s"] is not None
    prop, aware = allocations["proportional"], allocations["work-aware"]
    assert abs(aware["delivered_w"] - prop["delivered_w"]) <= 0.02 * prop["delivered_w"]
    assert aware["calibration"]["runs"] >= 1
    assert set(data["same_request"]) == set(allocations)
    assert data["circularity"] and data["clock"] == "virtual"
    for key in ("machine", "date", "commit"):
        assert key in data
    assert [f["gpu"] for f in data["learned_fit"]] == list(range(8))
    printed = capsys.readouterr().out
    assert "same delivered reduction" in printed and "simulator's throughput model" in printed


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--sheds", "0.2,x"], ["--sheds", "1.5"], ["--hold-s", "0"]):
        with pytest.raises(SystemExit) as e:
            work.main(argv)
        assert e.value.code == 2
    assert "--sheds" in capsys.readouterr().err


def _mean_demand_w(sim: SimNvml, index: int, clock: VirtualClock, seconds: float) -> float:
    values = []
    for _ in range(int(seconds / 0.01)):
        values.append(sim.demand_w(index))
        clock.advance(0.01)
    return statistics.fmean(values)


def test_each_gpu_runs_its_own_workload() -> None:
    clock = VirtualClock()
    workloads = (SimWorkload("inference", 1.0), SimWorkload("inference", 0.25),
                 SimWorkload("training"), SimWorkload("idle"))
    sim = SimNvml.from_config(SimConfig(count=4, device=None, workloads=workloads), clock)
    assert sim.workloads == workloads
    means = [_mean_demand_w(sim, i, clock, 20.0) for i in range(4)]
    assert means[1] < 0.6 * means[0]  # a quarter of the load above idle
    assert 500 < means[2] < 650 and means[3] < 100
    # Without a list every GPU runs gpus.sim.workload, as before.
    plain = SimNvml.from_config(SimConfig(count=2, device=None, workload="idle"), VirtualClock())
    assert plain.workloads == (SimWorkload("idle"),) * 2


def test_the_same_seed_gives_the_same_streams_with_or_without_a_list() -> None:
    a_clock, b_clock = VirtualClock(), VirtualClock()
    a = SimNvml.from_config(SimConfig(count=2, device=None, workload="training"), a_clock)
    b = SimNvml.from_config(SimConfig(count=2, device=None,
                                      workloads=(SimWorkload("training"),) * 2), b_clock)
    assert [_mean_demand_w(a, 1, a_clock, 3.0)] == [_mean_demand_w(b, 1, b_clock, 3.0)]


@pytest.mark.parametrize(("workloads", "key", "reason"), [
    ([{"kind": "training"}], "gpus.sim.workloads", "one per GPU"),
    ([{"kind": "training", "load": 0.5}, {"kind": "inference"}], "gpus.sim.workloads[0].load",
     "only inference takes a load"),
    ([{"kind": "trace"}, {"kind": "inference"}], "gpus.sim.trace_csv", "required"),
    ([{"kind": "inference", "load": 0}, {"kind": "inference"}], "gpus.sim.workloads[0].load",
     ">= 0.01"),
])
def test_a_bad_list_is_refused_naming_the_key(workloads: list[dict[str, object]], key: str,
                                              reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_mapping({"gpus": {"sim": {"count": 2, "workloads": workloads}}},
                            source="t.yaml")
    assert f"t.yaml: {key}:" in str(e.value) and reason in str(e.value)


def test_a_machine_wide_device_records_its_workloads() -> None:
    mixed = SimConfig(count=2, noise_w=0.0, workloads=(SimWorkload("inference", 0.5),
                                                       SimWorkload("training")))
    path = sim_device_path("mixed")
    SimNvml.from_config(mixed, MonotonicClock(), device_path=path)
    SimNvml.from_config(mixed, MonotonicClock(), device_path=path)  # the same: opens
    again = SimNvml.open_existing(path, MonotonicClock())
    assert again is not None and again.workloads == mixed.workloads
    for other in (SimConfig(count=2, noise_w=0.0),
                  SimConfig(count=2, noise_w=0.0, workloads=(SimWorkload("inference", 0.6),
                                                              SimWorkload("training")))):
        with pytest.raises(DeviceMismatch) as e:
            SimNvml.from_config(other, MonotonicClock(), device_path=path)
        assert e.value.key == "gpus.sim.workloads"
    # A device without a list records none: devices made before the list existed still open.
    plain = sim_device_path("plain")
    SimNvml.from_config(SimConfig(count=2), MonotonicClock(), device_path=plain)
    info = SimNvml.open_existing(plain, MonotonicClock())
    assert info is not None and info.device is not None
    assert "workloads" not in info.device.info.params
