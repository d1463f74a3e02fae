"""The simulator's work: the throughput model and ``gridtao sim serve-work``
scraped with gridtao's own work scraper (gridtao/work/).

The server runs as a child process on the test's own machine-wide device (conftest gives each
test its own run directory, which the child inherits). Demand is pinned with the simulator's
oracle so the expected rates are known; rates are compared over seconds-long windows with a
generous tolerance, and nothing asserts how fast anything runs.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gridtao.cli import main as cli
from gridtao.clock import MonotonicClock
from gridtao.config.agent import SimConfig
from gridtao.config.paths import sim_device_path
from gridtao.gpu import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.throughput import (
    CALIBRATION_ENERGY_SAVED,
    CALIBRATION_LATENCY_INCREASE,
    CALIBRATION_POWER_RATIO,
    IDLE,
    INFERENCE,
    INFERENCE_EXPONENT,
    PROMPT_TOKENS_PER_GENERATED,
    TRAINING,
    ThroughputModel,
    model_for,
    relative_rate,
    work_rate,
)
from gridtao.work.sources import SourceSnapshot, SourceSpec, WorkScraper

REPO = Path(__file__).resolve().parent.parent
W = 1000
WINDOW_S = 3.0  # each rate is measured over this long


# -- the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [INFERENCE, TRAINING], ids=["inference", "training"])
def test_the_curve_is_one_at_full_demand_increasing_and_concave(model: ThroughputModel) -> None:
    xs = [i / 100 for i in range(101)]
    rs = [relative_rate(x, model.exponent) for x in xs]
    assert rs[0] == 0.0 and rs[-1] == 1.0
    assert all(b > a for a, b in itertools.pairwise(rs))  # strictly increasing
    # Concave: every chord lies under the curve; the work lost per watt grows as the cap deepens.
    for i in range(1, 100):
        assert rs[i] >= (rs[i - 1] + rs[i + 1]) / 2 - 1e-12
    losses = [rs[i + 1] - rs[i] for i in range(100)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(losses))
    # Unhindered, the rate is the demand's worth of work; drawing above demand adds nothing.
    assert work_rate(600.0, 600.0, model) == pytest.approx(600.0 / model.joules_per_unit)
    assert work_rate(650.0, 600.0, model) == work_rate(600.0, 600.0, model)
    assert work_rate(0.0, 0.0, model) == 0.0 and work_rate(0.0, 600.0, model) == 0.0


def test_the_inference_curve_reproduces_its_calibration_point() -> None:
    # Samsi et al. 2023: a 250 -> 175 W cap saved ~23 % of the energy for ~6-7 % more latency.
    assert CALIBRATION_ENERGY_SAVED == 0.23 and CALIBRATION_LATENCY_INCREASE == 0.065
    x = CALIBRATION_POWER_RATIO
    r = relative_rate(x)
    assert x == pytest.approx(0.723, abs=5e-4)
    assert pytest.approx(0.194, abs=5e-4) == INFERENCE_EXPONENT
    assert 1.0 / r - 1.0 == pytest.approx(0.065, abs=1e-9)  # the latency added
    assert 1.0 - x / r == pytest.approx(0.23, abs=1e-9)  # the energy per token saved
    # Clipping only the peaks costs little; a deep cap costs more.
    assert relative_rate(0.9) > 0.97 and relative_rate(0.3) < 0.8
    # Training (compute-bound) loses more work than inference at every cap.
    assert all(relative_rate(x / 10, TRAINING.exponent) < relative_rate(x / 10)
               for x in range(1, 10))


def test_each_workload_has_its_model_and_an_idle_gpu_does_no_work() -> None:
    assert model_for("inference") is INFERENCE and model_for("trace") is INFERENCE
    assert model_for("training") is TRAINING and model_for("idle") is IDLE
    assert work_rate(80.0, 80.0, IDLE) == 0.0
    with pytest.raises(ValueError, match="unknown workload"):
        model_for("mining")
    for exponent in (0.0, 1.5):
        with pytest.raises(ValueError, match="concave"):
            ThroughputModel("tokens", exponent, 1.0)
    with pytest.raises(ValueError, match="joules_per_unit"):
        ThroughputModel("tokens", 0.5, 0.0)


# -- the server --------------------------------------------------------------------------------


def _device(cfg: SimConfig) -> SimNvml:
    return SimNvml.from_config(cfg, MonotonicClock(), device_path=sim_device_path("default"))


@contextmanager
def _serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``gridtao sim serve-work --port 0 ARGS`` as a child; yields it and its URL. Stopped with
    SIGTERM at the end if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridtao", "sim", "serve-work", "--port", "0", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if not line.startswith("serving http://"):
            proc.wait(timeout=30)
            raise AssertionError(f"no server: {line!r} {proc.stderr.read()!r}")
        yield proc, line.split()[1]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _rate(scraper: WorkScraper, key: tuple[str, str]) -> tuple[float, SourceSnapshot]:
    """The rate of ``key`` over the next :data:`WINDOW_S` seconds."""
    first = scraper.scrape("sim")
    assert first.health == "ok", first.reason
    time.sleep(WINDOW_S)
    snap = scraper.scrape("sim")
    assert snap.health == "ok", snap.reason
    assert snap.values[key] > first.values[key]  # the counter moves
    return snap.rates[key], snap


def _limit_pids(sim: SimNvml) -> list[int]:
    """Who last set each GPU's limit (0: nobody)."""
    device = sim.device
    assert device is not None
    pids = []
    for i in range(sim.count):
        device.lock(i)
        try:
            pids.append(device.read(i).limit_pid)
        finally:
            device.unlock(i)
    return pids


def test_tokens_follow_the_model_and_fall_by_what_it_says_under_a_deep_cap() -> None:
    sim = _device(SimConfig(count=2, workload="inference", noise_w=0.0))
    agent = NvmlBackend(sim)  # the agent: sets limits on the machine's GPUs
    try:
        demand_w = 600.0
        for i in range(2):
            sim.set_demand_w(i, demand_w)  # pinned, so the expected rates are known
        with _serving("--model", "m1") as (proc, url):
            scraper = WorkScraper([SourceSpec("sim", url, "vllm", gpus=(0, 1), timeout_s=10.0)])
            generated = ("m1", "generation")
            free, snap = _rate(scraper, generated)
            assert free == pytest.approx(2 * demand_w / INFERENCE.joules_per_unit, rel=0.06)
            assert snap.values[("m1", "prompt")] == pytest.approx(
                PROMPT_TOKENS_PER_GENERATED * snap.values[generated])
            assert _limit_pids(sim) == [0, 0]  # the server read the GPUs, set nothing

            cap_w = 200.0  # the H100's lowest limit: a third of the demand
            for i in range(2):
                agent.set_limit_mw(i, int(cap_w * W))
            time.sleep(0.5)  # the clocks settle under the new limit, the queue builds
            capped, _ = _rate(scraper, generated)
            # A server whose requests wait runs flat out (700 W asked) under the cap: it serves
            # 700 / 600 * (200 / 700) ** 0.194 = 0.915 of what arrives, the rest queues.
            expected = 700.0 / demand_w * relative_rate(cap_w / 700.0)
            assert capped / free == pytest.approx(expected, abs=0.03)
            assert capped / free < 0.95
            assert _limit_pids(sim) == [os.getpid(), os.getpid()]  # only the agent's

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert proc.stderr is not None and proc.stderr.read() == ""
        assert scraper.scrape("sim").health == "down"  # it stopped listening
    finally:
        agent.close()
        assert sim.device is not None
        sim.device.close()


def test_a_training_device_serves_samples_and_stops_on_sigint() -> None:
    sim = _device(SimConfig(count=2, workload="training", noise_w=0.0))
    try:
        sim.set_demand_w(1, 500.0)
        with _serving("--gpus", "1") as (proc, url):  # kind custom: a training device
            spec = SourceSpec("sim", url, "custom", gpus=(1,), timeout_s=10.0,
                              counters=("gridtao_sim_training_samples_total",))
            rate, _ = _rate(WorkScraper([spec]), ("", "gridtao_sim_training_samples"))
            assert rate == pytest.approx(500.0 / TRAINING.joules_per_unit, rel=0.06)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
    finally:
        assert sim.device is not None
        sim.device.close()


def test_the_server_exits_1_when_its_gpus_are_lost() -> None:
    sim = _device(SimConfig(count=2, workload="inference"))
    assert sim.device is not None
    sim.device.close()
    with _serving() as (proc, _):
        # a driver reload under the server (which holds the device: --force)
        assert cli.main(["sim", "destroy", "--force"]) == 0
        assert proc.wait(timeout=30) == 1
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert err.count("\n") == 1 and "sampling the GPUs failed" in err, err


@pytest.mark.parametrize("args,says", [
    (["--device", "../x"], "--device: must be a name"),
    (["--device", "nosuch"], "no simulated device at"),
    (["--gpus", "0,2"], "--gpus: the device has GPUs 0-1; got 0,2"),
    (["--gpus", "1,1"], "--gpus: the device has GPUs 0-1"),
    (["--gpus", "one"], "--gpus: expected GPU indices"),
    (["--gpus", "-1"], "--gpus: expected GPU indices"),
    (["--port", "70000"], "--port: must be 0-65535"),
    (["--kind", "vllm"], "use --kind custom"),
])
def test_a_bad_device_or_option_gives_one_line_and_exit_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str],
) -> None:
    sim = _device(SimConfig(count=2, workload="training"))
    try:
        assert cli.main(["sim", "serve-work", *args]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1 and says in captured.err, captured.err
    finally:
        assert sim.device is not None
        sim.device.close()


def test_the_device_given_before_the_action_is_used(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--device", "other", "serve-work"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sim-other.gpus" in err, err


def test_a_mixed_device_serves_each_kind_of_work_on_its_own_gpus() -> None:
    from gridtao.config.agent import SimWorkload
    from gridtao.gpu.sim.workserver import SimWork, WorkCollector, WorkServerError

    sim = _device(SimConfig(count=3, noise_w=0.0, workloads=(
        SimWorkload("inference"), SimWorkload("idle"), SimWorkload("training"))))
    path = sim_device_path("default")
    try:
        with pytest.raises(WorkServerError, match=r"different work \(idle on GPUs 1; "
                           r"inference on GPUs 0; training on GPUs 2\): serve each kind"):
            SimWork(path)
        tokens = SimWork(path, gpus=(0, 1))  # an idle GPU beside an inference one: tokens
        samples = SimWork(path, gpus=(2,))
        try:
            assert (tokens.kind, samples.kind) == ("vllm", "custom")
            demands = (600.0, 80.0, 500.0)
            for i, demand_w in enumerate(demands):
                sim.set_demand_w(i, demand_w)
            backend = NvmlBackend(sim)
            deadline = time.monotonic() + 30.0
            while any(abs(backend.instant_power_mw(i) / W - d) > 1.0  # the draw settles
                      for i, d in enumerate(demands)):
                assert time.monotonic() < deadline, "the simulated draw never settled"
                time.sleep(0.05)
            backend.close()
            for work in (tokens, samples):
                work.sample()
            time.sleep(1.0)
            for work in (tokens, samples):
                work.sample()  # the rate: over the second between the two reads
            _, token_rate = tokens.totals()
            _, sample_rate = samples.totals()
            # The idle GPU does no work, whatever it draws; each GPU has its own model.
            assert token_rate == pytest.approx(600.0 / INFERENCE.joules_per_unit, rel=0.02)
            assert sample_rate == pytest.approx(500.0 / TRAINING.joules_per_unit, rel=0.02)
            names = [m.name for m in WorkCollector(samples).collect()]
            assert names == ["gridtao_sim_training_samples"]
        finally:
            tokens.close()
            samples.close()
    finally:
        assert sim.device is not None
        sim.device.close()
