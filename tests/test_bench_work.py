"""``gridtao bench work`` (bench/work.py) and the mixed node it runs on: simulated GPUs with a
workload each (``gpus.sim.workloads``)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

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
    assert "(same delivered interpolated)" in printed
    interpolated = data["comparison"]["work-aware"]["same_delivered_interpolated"]
    if all(aware["at_goal"]["bracketed"]):
        assert interpolated["delivered_ratio"] == pytest.approx(1.0)
    assert len(aware["at_goal"]["work_lost_gpu_s"]) == len(aware["at_goal"]["bracketed"]) == 1
    assert 0 < aware["at_goal"]["work_lost_fraction"] < 1


def _hold(delivered_w: float, lost_gs: float, done_gs: float = 100.0) -> dict[str, Any]:
    return {"delivered_w": delivered_w, "work_lost_gpu_s": lost_gs, "work_done_gpu_s": done_gs}


def test_the_benchs_work_sources_cover_each_gpu_once_with_the_training_job_as_one() -> None:
    from gridtao.bench.worknode import MIXED_NODE, SOURCES, mixed_node_model

    gpus = sorted(g for _, idx, _ in SOURCES for g in idx)
    assert gpus == list(range(len(MIXED_NODE)))
    for _, idx, kind in SOURCES:
        assert {MIXED_NODE[g].kind for g in idx} == {kind}
    model = mixed_node_model()
    train = model.per_gpu(8)[4]
    assert train is not None and train.gpus == (4, 5, 6, 7) and not train.queued
    assert [c.name for c in model.curves()] == ["0", "1", "2", "3", "train"]


def test_the_work_lost_at_the_goal_is_interpolated_between_the_runs_around_it() -> None:
    runs = [{"holds": [_hold(900.0, 9.0), _hold(500.0, 5.0)]},
            {"holds": [_hold(1100.0, 13.0), _hold(520.0, 6.0)]},
            {"holds": [_hold(1200.0, 20.0), _hold(560.0, 8.0)]}]
    at = work.at_goals(runs, [1000.0, 600.0])
    # Shed 0: halfway between the runs at 900 W and 1100 W; shed 1: every run fell short, so
    # the nearest (560 W) stands, not an extrapolation.
    assert at["work_lost_gpu_s"] == pytest.approx([11.0, 8.0])
    assert at["bracketed"] == [True, False]
    assert at["work_lost_fraction"] == pytest.approx(19.0 / 200.0)
    assert at["delivered_w"] == pytest.approx((1000.0 + 560.0) / 2)  # the nearest, not the goal
    exact = work.at_goals([{"holds": [_hold(1000.0, 7.0)]}], [1000.0])
    assert exact["work_lost_gpu_s"] == [7.0] and exact["bracketed"] == [True]


def _report(capsys: pytest.CaptureFixture[str], record: dict[str, Any]) -> dict[str, Any]:
    """``gridtao report energy`` (JSON) on a recorded run, its window the whole minutes."""
    capsys.readouterr()
    frm = math.floor(record["from_s"] / 60) * 60
    to = math.ceil(record["to_s"] / 60) * 60
    assert cli.main(["report", "energy", "--from", str(frm), "--to", str(to), "--format",
                     "json", "--history", record["history"], "--audit", record["audit"]]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def test_the_report_of_a_recorded_run_reproduces_the_benchs_figures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 30 % shed held 20 s after 220 s of warm-up (four reference minutes before the shed's
    minute), recorded as the agent records; the report on that history and trail against the
    bench's own figures, the simulator's truth. Energy (node, GPUs, the event, per token and
    per sample) within 1 %; work lost within 3 of the report's own standard deviations of
    the bench's loss over the same whole minutes (the report's span): for the training job
    within 5 % of the bench's loss from the trigger to the end of the release ramp, for the
    inference server (whose requests wait for it) none."""
    out = tmp_path / "work.json"
    assert cli.main(["bench", "work", "--proportional-only", "--sheds", "0.3", "--hold-s", "20",
                     "--gap-s", "40", "--warmup-s", "220", "--record", str(tmp_path / "rec"),
                     "--json", str(out)]) == 0
    bench = json.loads(out.read_text())
    assert set(bench["allocations"]) == {"proportional"} and bench["comparison"] == {}
    record = bench["allocations"]["proportional"]["record"]
    doc = _report(capsys, record)
    (node,) = doc["nodes"]
    assert node["node"] == "bench-proportional" and not node["gaps"]
    assert node["total"]["it_kwh"] == pytest.approx(record["it_kwh"], rel=0.01)
    gpus = {g["index"]: g["total"] for g in doc["per_gpu"]["gpus"]}
    assert len(gpus) == 8
    for g in record["gpus"]:
        assert gpus[g["index"]]["energy_kwh"] == pytest.approx(g["energy_kwh"], rel=0.01)
        assert gpus[g["index"]]["method"] == "counter"
    per_unit = {(u["source"], u["unit"]): u for u in doc["work"]["per_unit"]}
    assert len(per_unit) == len(record["per_unit"]) == 2
    for truth in record["per_unit"]:
        u = per_unit[(truth["source"], truth["unit"])]
        assert u["units"] == pytest.approx(truth["units"], rel=0.01)
        assert u["joules_per_unit"] == pytest.approx(truth["joules_per_unit"], rel=0.01)
    (event,) = doc["events"]
    (truth,) = record["events"]
    assert event["id"] == truth["id"] and event["method"] == "counter"
    assert event["start_s"] == pytest.approx(truth["start_s"], abs=1e-3)
    assert event["end_s"] == pytest.approx(truth["end_s"], abs=1e-3)
    assert event["it_drawn_kwh"] == pytest.approx(truth["it_drawn_kwh"], rel=0.01)
    hold = bench["allocations"]["proportional"]["holds"][0]
    assert truth["tokens_lost"] == hold["tokens_lost"] and truth["samples_lost"] > 0
    # The inference server's requests waited and it caught up: at most what still waited when
    # the release ramp ended is lost there, and nothing over the whole minutes.
    assert 0.0 <= truth["tokens_lost"] < 1.0
    assert truth["tokens_lost_in_minutes"] == pytest.approx(0.0, abs=1e-6)
    lost = {s["unit"]: s for s in event["work_lost"]["sources"]}
    assert set(lost) == {"token", "samples"} and event["work_lost"]["unavailable"] == []
    for unit, key in (("token", "tokens"), ("samples", "samples")):
        item, in_minutes = lost[unit], truth[f"{key}_lost_in_minutes"]
        assert item["reference_minutes"] == 4
        assert abs(item["lost"] - in_minutes) <= 3 * item["lost_std"], (unit, item, in_minutes)
    assert truth["samples_lost_in_minutes"] == pytest.approx(truth["samples_lost"], rel=0.05)
    # The steady training job's loss is measured closely: its spread is small.
    assert lost["samples"]["lost_std"] < 0.1 * truth["samples_lost"]


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
