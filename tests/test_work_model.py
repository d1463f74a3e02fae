"""gridtao/work/model.py (the learned work model) and gridtao/app/workmodel.py (its place in
the agent: fed from the work sources, installed as tier 1's split)."""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gridtao.app.workmodel import WorkAwareCuts, rate_of
from gridtao.clock import VirtualClock
from gridtao.config.agent import Config, ControlConfig, SimConfig, config_from_mapping
from gridtao.control.tier1.loop import FastLoop
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.throughput import INFERENCE_EXPONENT, TRAINING_EXPONENT
from gridtao.safety.island import SafetyIsland
from gridtao.work.model import (
    MIN_EXPONENT,
    MIN_SAMPLES,
    PowerLawFit,
    WorkModel,
    WorkModelCollector,
    lost_work_factor,
    prior_exponent,
)
from gridtao.work.node import NodeWork
from gridtao.work.sources import SourceSnapshot, SourceSpec


@pytest.mark.parametrize(("exponent", "scale", "through_origin"),
                         [(0.3, 1.0, True), (0.194, 2.5, False), (0.8, 40.0, False)])
def test_the_fit_recovers_a_known_exponent_from_noisy_samples(
        exponent: float, scale: float, through_origin: bool) -> None:
    rng = random.Random(7)
    fit = PowerLawFit()
    for _ in range(300):
        x = rng.uniform(0.4, 1.0)
        assert fit.add(x, scale * x**exponent * math.exp(rng.gauss(0.0, 0.03)))
    result = fit.fit(through_origin=through_origin)
    assert result is not None
    assert result.exponent == pytest.approx(exponent, abs=4 * result.exponent_std)
    assert result.exponent_std < 0.02
    assert result.scale == pytest.approx(scale, rel=0.05)
    assert result.residual_std == pytest.approx(0.03, rel=0.2)
    assert result.samples == 300


def test_the_fit_stays_increasing_and_concave() -> None:
    rising, falling = PowerLawFit(), PowerLawFit()
    for x in (0.5, 0.6, 0.7, 0.8, 0.9):
        rising.add(x, x**1.7)  # convex: clipped to a straight line
        falling.add(x, x**-0.5)  # decreasing: clipped to the flattest increasing curve
    assert (r := rising.fit()) is not None and r.exponent == 1.0
    assert (f := falling.fit()) is not None and f.exponent == MIN_EXPONENT
    assert PowerLawFit().fit() is None
    flat = PowerLawFit()
    for _ in range(10):
        flat.add(0.8, 0.9)
    assert flat.fit(through_origin=False) is None  # no spread in power: nothing to say
    assert not flat.add(0.0, 1.0) and not flat.add(1.0, math.nan)


def _feed(model: WorkModel, name: str, exponent: float, events: int,
          rng: random.Random, t0: float = 0.0) -> int:
    """Free windows at a wandering demand, then a limited one under a cap, ``events`` times:
    returns how many pairs the model took."""
    t, taken = t0, 0
    for _ in range(events):
        demand = rng.uniform(300.0, 650.0)
        for _ in range(12):
            t += 5.0
            model.observe(name, t, demand, demand / 3.5, limited=False)
        x = rng.uniform(0.5, 0.95)
        t += 5.0
        rate = demand / 3.5 * x**exponent * math.exp(rng.gauss(0.0, 0.01))
        taken += model.observe(name, t, demand * x, rate, limited=True)
    return taken


def test_a_group_carries_its_free_draw_per_gpu_while_its_reference_is_fresh() -> None:
    model = WorkModel([("llm", [0, 1], "vllm"), ("train", [2], "custom")],
                      max_reference_age_s=60.0)
    assert [c.free_w for c in model.curves()] == [0.0, 0.0]  # nothing seen yet
    assert [c.queued for c in model.curves()] == [True, False]  # an inference server queues
    model.observe("llm", 5.0, 800.0, 200.0, limited=False)  # two GPUs drawing 800 W free
    model.observe("train", 5.0, 600.0, 6.0, limited=False)
    llm, train = model.per_gpu(3)[0], model.per_gpu(3)[2]
    assert llm is not None and llm.free_w == pytest.approx(400.0)  # per GPU
    assert train is not None and train.free_w == pytest.approx(600.0)
    model.observe("llm", 10.0, 400.0, 100.0, limited=False)  # an exponential mean
    assert model.curves()[0].free_w == pytest.approx((800.0 + 0.25 * (400.0 - 800.0)) / 2)
    assert model.per_gpu(4)[3] is None  # in no group
    # A reference older than the model keeps says no more what the job draws: back to none.
    model.observe("llm", 100.0, 300.0, 90.0, limited=True, limit_w=320.0)
    assert model.curves()[0].free_w == 0.0


def test_a_group_learns_its_curve_from_limited_windows_only() -> None:
    model = WorkModel([("batch", [0, 1], "custom"), ("train", [2], "custom")])
    assert model.exponents(4) == (TRAINING_EXPONENT,) * 3 + (None,)
    rng = random.Random(3)
    assert _feed(model, "batch", 0.45, MIN_SAMPLES - 1, rng) == MIN_SAMPLES - 1
    curve = {c.name: c for c in model.curves()}["batch"]
    assert curve.from_prior and curve.samples == MIN_SAMPLES - 1  # not enough yet
    assert curve.fit is not None and curve.fit.exponent == pytest.approx(0.45, abs=0.05)
    assert model.exponents(4)[0] == TRAINING_EXPONENT
    _feed(model, "batch", 0.45, 30, rng, t0=10_000.0)
    curve = {c.name: c for c in model.curves()}["batch"]
    assert not curve.from_prior and curve.exponent == pytest.approx(0.45, abs=0.03)
    assert model.exponents(4)[:2] == (curve.exponent,) * 2
    assert model.exponents(4)[2] == TRAINING_EXPONENT  # other groups keep their priors


def test_a_queued_server_keeps_its_prior_and_shows_its_fit() -> None:
    """Under a limit an inference server serves its arrivals while it keeps up: its windows
    are not points of its curve, so the same windows that teach a custom counter its curve
    leave the server at its prior."""
    model = WorkModel([("llm", [0], "vllm")])
    _feed(model, "llm", 0.45, 50, random.Random(3))
    (curve,) = model.curves()
    assert curve.queued and curve.from_prior and curve.exponent == INFERENCE_EXPONENT
    assert curve.fit is not None and curve.fit.exponent == pytest.approx(0.45, abs=0.03)
    registry = CollectorRegistry()
    WorkModelCollector(model, registry=registry)
    labels = {"gpu": "0", "source": "llm"}
    assert registry.get_sample_value("gridtao_work_model_prior", labels) == 1.0
    assert registry.get_sample_value("gridtao_work_model_exponent_std", labels) == pytest.approx(
        curve.fit.exponent_std)


def test_natural_swings_and_stale_references_teach_nothing() -> None:
    model = WorkModel([("llm", [0], "vllm")], max_reference_age_s=60.0)
    for k in range(100):  # demand moves power and work together: not the curve of a cut
        demand = 200.0 + 4.0 * k
        assert not model.observe("llm", float(k), demand, demand / 3.5, limited=False)
    assert not model.observe("llm", 500.0, 300.0, 50.0, limited=True)  # reference too old
    assert model.observe("llm", 501.0, 400.0, 100.0, limited=False) is False
    assert model.observe("llm", 502.0, 300.0, 95.0, limited=True)
    assert not model.observe("llm", 503.0, 400.0, 100.0, limited=True)  # no power taken
    assert not model.observe("nobody", 504.0, 300.0, 95.0, limited=True)
    assert {c.name: c for c in model.curves()}["llm"].samples == 1


def test_the_fits_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "work-model-n1.json"
    model = WorkModel([("llm", [0], "vllm"), ("train", [1], "custom")])
    _feed(model, "llm", 0.6, 40, random.Random(5))
    model.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = WorkModel([("llm", [0], "vllm"), ("train", [1], "custom")])
    assert again.load(path) == 2
    # The fits come back; the free draw is measured afresh (the reference is not kept).
    assert model.curves()[0].free_w > 0.0
    assert again.curves() == tuple(replace(c, free_w=0.0) for c in model.curves())
    other = WorkModel([("llm", [0], "custom")])  # the same name, another kind: not taken
    assert other.load(path) == 0 and other.curves()[0].from_prior
    assert WorkModel([("llm", [0], "vllm")]).load(tmp_path / "missing.json") == 0


def test_an_unreadable_file_leaves_the_priors(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "work-model.json"
    for text in ("{not json", json.dumps({"format": 99, "groups": {}}),
                 json.dumps({"format": 1, "groups": {"llm": {"kind": "vllm", "gpus": [0],
                                                             "stats": {"n": "x"}}}})):
        path.write_text(text)
        model = WorkModel([("llm", [0], "vllm")])
        assert model.load(path) == 0
        assert model.exponents(1) == (INFERENCE_EXPONENT,)
    assert "starting from the priors" in caplog.text


def test_the_gauges_say_what_each_gpu_uses() -> None:
    registry = CollectorRegistry()
    model = WorkModel([("llm", [0, 1], "custom")])
    WorkModelCollector(model, registry=registry)
    labels = {"gpu": "1", "source": "llm"}
    assert registry.get_sample_value("gridtao_work_model_exponent", labels) == \
        pytest.approx(TRAINING_EXPONENT)
    assert registry.get_sample_value("gridtao_work_model_prior", labels) == 1.0
    assert registry.get_sample_value("gridtao_work_model_samples", labels) == 0.0
    assert math.isnan(registry.get_sample_value("gridtao_work_model_exponent_std", labels) or 0)
    assert _feed(model, "llm", 0.5, 30, random.Random(9)) == 30
    assert registry.get_sample_value("gridtao_work_model_prior", labels) == 0.0
    assert registry.get_sample_value("gridtao_work_model_samples", labels) == 30.0
    assert (registry.get_sample_value("gridtao_work_model_log_residual_std", labels) or 1) < 0.05


def test_priors_by_kind() -> None:
    for kind in ("vllm", "sglang", "tgi", "nim", "inference", "trace"):
        assert prior_exponent(kind) == INFERENCE_EXPONENT
    for kind in ("custom", "training"):
        assert prior_exponent(kind) == TRAINING_EXPONENT


def test_the_rate_of_a_source() -> None:
    vllm = SourceSpec("llm", "http://x", "vllm", (0,))
    snap = SourceSnapshot(vllm, "ok", rates={("a", "generation"): 10.0, ("b", "generation"): 5.0,
                                             ("a", "prompt"): 99.0})
    assert rate_of(snap) == 15.0
    assert rate_of(SourceSnapshot(vllm, "down", rates=snap.rates)) is None
    custom = SourceSpec("job", "http://x", "custom", (1,), counters=("samples_total", "x"))
    assert rate_of(SourceSnapshot(custom, "ok", rates={("", "samples"): 3.0})) == 3.0
    assert rate_of(SourceSnapshot(custom, "ok")) is None


CLOCK = VirtualClock()


def _parts(config: Config) -> tuple[NodeWork, FastLoop, SafetyIsland]:
    clock = CLOCK
    backend = NvmlBackend(SimNvml.from_config(SimConfig(count=2, device=None), clock))
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.2, max_event_s=3600)
    loop = FastLoop(backend, island, clock=clock, config=ControlConfig())
    work = NodeWork(config.work, registry=CollectorRegistry())
    return work, loop, island


def _config(tmp_path: Path, allocation: str, sources: list[dict[str, object]]) -> Config:
    return config_from_mapping({"control": {"allocation": allocation},
                                "journal": {"path": str(tmp_path / "journal.json")},
                                "work": {"sources": sources, "cpu_power": {"enabled": False}}})


def test_the_agent_installs_the_split_only_when_asked_and_able(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source: dict[str, object] = {"name": "llm", "url": "http://127.0.0.1:9/metrics",
                                 "kind": "vllm", "gpus": [0]}
    cfg = _config(tmp_path, "proportional", [source])
    parts = _parts(cfg)
    cuts = WorkAwareCuts(cfg, *parts, node_id="n1", registry=CollectorRegistry(), clock=CLOCK)
    assert cuts.model is None and parts[1].split is None
    assert cuts.lost_work_factor() is None  # no model: the planner keeps its configured value
    cuts.close()
    with caplog.at_level(logging.INFO, logger="gridtao.work.model"):
        cfg = _config(tmp_path, "work-aware", [])
        parts = _parts(cfg)
        cuts = WorkAwareCuts(cfg, *parts, node_id="n1", registry=CollectorRegistry(),
                             clock=CLOCK)
        assert cuts.model is None and parts[1].split is None
        assert "lists no work: cuts are split proportionally" in caplog.text
        cuts.close()
        cfg = _config(tmp_path, "work-aware", [source])
        registry = CollectorRegistry()
        parts = _parts(cfg)
        cuts = WorkAwareCuts(cfg, *parts, node_id="n1", registry=registry, clock=CLOCK)
        assert cuts.model is not None and parts[1].split is not None
        assert "no work source names GPU(s) 1" in caplog.text
        assert "no fits saved yet" in caplog.text  # the first start: nothing to take
    first = cuts.curves()[0]
    assert first is not None and cuts.curves()[1] is None
    assert first.free_mw == 0.0 and first.queued  # no free window seen yet
    # For the planner: GPU 0 at the inference prior, GPU 1 in no group (all its work).
    draws = [d / 1000.0 for d in parts[1].draw_mw]
    assert cuts.lost_work_factor() == pytest.approx(
        lost_work_factor([INFERENCE_EXPONENT, None], draws, depth=0.4))
    cuts.model.observe("llm", 5.0, 420.0, 120.0, limited=False)
    first = cuts.curves()[0]
    assert first is not None and first.free_mw == pytest.approx(420_000.0)  # mW per GPU
    # Its arrivals known, the server's knee lies far below a 40 % cut: only GPU 1 costs.
    assert cuts.lost_work_factor() == pytest.approx(draws[1] / sum(draws))
    assert registry.get_sample_value("gridtao_work_model_exponent",
                                     {"gpu": "0", "source": "llm"}) == INFERENCE_EXPONENT
    cuts.close()
    assert parts[1].split is None
    assert (tmp_path / "work-model-n1.json").exists()  # saved beside the journal


def test_the_share_of_work_a_watt_shed_costs_weighs_each_gpu_by_its_draw() -> None:
    """A training GPU (exponent 1/3) and a GPU in no group, each drawing 600 W, cut by 40 %: the
    first loses (1 - 0.6 ** (1/3)) / 0.4 of its full-speed work per share of energy, the other
    (cautiously) all of it; the node, their mean."""
    trained = (1.0 - 0.6 ** (1.0 / 3.0)) / 0.4
    assert lost_work_factor([1.0 / 3.0, None], [600.0, 600.0], depth=0.4) == pytest.approx(
        (trained + 1.0) / 2.0)
    # Small cuts cost the exponent; deeper ones more (the curve is concave).
    assert lost_work_factor([0.2], [500.0], depth=0.001) == pytest.approx(0.2, rel=0.01)
    deep = lost_work_factor([0.2], [500.0], depth=0.5)
    assert deep is not None and deep > 0.2
    assert lost_work_factor([None, None], [600.0, 600.0], depth=0.4) is None
    assert lost_work_factor([0.3], [0.0], depth=0.4) is None
    with pytest.raises(ValueError, match="depth"):
        lost_work_factor([0.3], [600.0], depth=0.0)


def test_a_queued_server_costs_only_the_part_of_a_cut_below_its_knee() -> None:
    """An inference server drawing 500 W whose knee is 400 W, cut by 10 % (to 450 W): nothing
    lost; by 40 % (to 300 W): what a job asking for 400 W loses at 300 W, per share shed."""
    assert lost_work_factor([0.2], [500.0], depth=0.1, knee_w=[400.0]) == 0.0
    assert lost_work_factor([0.2], [500.0], depth=0.4, knee_w=[400.0]) == pytest.approx(
        (1.0 - 0.75 ** 0.2) / 0.4)
    # A knee at or above the draw changes nothing.
    assert lost_work_factor([0.2], [500.0], depth=0.4, knee_w=[700.0]) == lost_work_factor(
        [0.2], [500.0], depth=0.4)
    with pytest.raises(ValueError, match="one knee"):
        lost_work_factor([0.2], [500.0], depth=0.4, knee_w=[])


def test_the_planner_values_lost_work_from_the_learned_curves() -> None:
    """The configured value is that of full-speed work; an IT W·h shed costs the share the
    curves say it loses, and the plan says so."""
    from gridtao.app.planning import plan_settings, with_learned_work

    config = config_from_mapping({"planner": {"lost_work_eur_per_mwh": 200.0},
                                  "products": [{"kind": "dr", "capacity_w": 600}]},
                                 source="<test>")
    base = plan_settings(config, floor_w=1000.0)
    learned = with_learned_work(base, 0.25)
    assert learned.options["lost_work_eur_wh"] == pytest.approx(200.0 / 1e6 * 0.25)
    assert base.options["lost_work_eur_wh"] == pytest.approx(200.0 / 1e6)
    (note,) = learned.notes
    assert "50 EUR/MWh" in note and "0.25" in note
