"""The prequalification report's content without running a bench: the tolerance band follows
the requirement (FCR-N's upward -1000 W, the 50 % step), time compression is stated, the DR
wording says what was averaged and what was asked, and the Markdown has what a TSO
application needs (identity, measurement setup, time scale, SIMULATED, figures, JSON)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from gridtao.config.agent import load_config
from gridtao.prequal import figures, plans, shapes
from gridtao.prequal import report as rep
from gridtao.prequal import rules as pr
from gridtao.prequal.scoring import Trace
from gridtao.prequal.writeup import SIMULATED_BANNER, summary_markdown

CAP = 1000.0
DT = 0.05


def test_the_band_follows_the_requirement_in_its_direction() -> None:
    lo, hi = figures._band([-1000.0, 500.0, 1000.0, 0.0], CAP)
    assert lo == pytest.approx([-1200.0, 475.0, 950.0, -50.0])
    assert hi == pytest.approx([-950.0, 600.0, 1200.0, 200.0])


def test_time_compression_is_stated_per_hold() -> None:
    ramps = shapes.fcr_d_ramps(0.1)
    assert "hold at 49.5 Hz: 30 s of the TSO's 300 s" in ramps.shortened
    assert shapes.fcr_d_ramps(1.0).shortened == ()
    steps = shapes.fcr_n_steps(0.1)
    assert steps.shortened == tuple(f"hold at {hz:g} Hz: 20 s of the TSO's 60 s"
                                    for hz in (49.95, 50.0, 49.9, 50.1, 50.0))
    spec = pr.ProductSpec("dr", CAP)
    [dr] = plans.test_plans("dr", spec, 0.05)
    assert any("settlement interval 15 s of 300 s" in s for s in dr.shape.shortened)


def test_dr_wording_says_what_was_averaged_and_asked() -> None:
    # A 500 W event held 10 s (9 s scored after its 1 s allowance), 15 s settlement intervals.
    ev = pr.DrWindow("dr-b", start_s=5.0, ramp_s=1.0, duration_s=10.0, recovery_s=3.0,
                     amount_w=500.0, interval_s=15.0)
    t = [k * DT for k in range(800)]
    req = pr.required_dr(t, [ev])
    tr = Trace(t, [50.0] * len(t), req, req, req)
    rules = {r.name: r for r in pr.score_dr(tr, [ev])}
    assert "worst of 1 mean(s) over 9 s (settlement interval 15 s)" in rules["hold@dr-b"].detail
    assert "required 500 W reduction" in rules["steady_state@dr-b"].detail
    assert "100 %" not in rules["steady_state@dr-b"].detail
    whole = pr.DrWindow("a", 5.0, 1.0, 31.0, 3.0, 500.0, interval_s=15.0)
    req = pr.required_dr(t, [whole])
    tr = Trace(t, [50.0] * len(t), req, req, req)
    held = {r.name: r for r in pr.score_dr(tr, [whole])}["hold@a"]
    assert "worst of 2 interval mean(s) of 15 s" in held.detail


def fcr_n_result() -> rep.TestResult:
    spec = pr.ProductSpec("fcr-n", CAP)
    [steps, _] = plans.test_plans("fcr-n", spec, 0.1)
    t = [k * DT for k in range(round(steps.duration_s / DT))]
    hz = [steps.shape.hz[min(len(steps.shape.hz) - 1, int(x / steps.shape.dt_s))] for x in t]
    delivered = [pr.required_fcr_n(f, CAP) for f in hz]
    return rep.score_samples(spec, steps, t, hz, delivered, delivered, None)


def test_the_summary_has_what_an_application_needs(tmp_path: Path) -> None:
    res = fcr_n_result()
    assert res.passed
    config = load_config(None)
    config = dataclasses.replace(config, gpus=dataclasses.replace(config.gpus, backend="sim"))
    pcfg = plans.product_config(config, "fcr-n", capacity_w=CAP, time_scale=0.1)
    args = argparse.Namespace(product="fcr-n", site="Site A", resource="unit-7",
                              meter="meter 42")
    text = summary_markdown(config, args, pcfg, [res], datetime.datetime(2026, 12, 1),
                            "gridtao prequalify --product fcr-n", time_scale=0.1,
                            steady_fraction=0.88, figures={"steps": ["steps.png"]})
    for needle in ("(SIMULATED)", SIMULATED_BANNER, "| Site | Site A |",
                   "| Resource | unit-7 |", "| Meter | meter 42 |", "## Measurement setup",
                   "| power | per-GPU instant power through NVML, 20 Hz (simulated GPUs) |",
                   "| time source |", "## Time scale",
                   "- steps: hold at 50.1 Hz: 20 s of the TSO's 60 s", "![steps](steps.png)",
                   "[results.json](results.json)", "| steady_state@50.10Hz#3 |"):
        assert needle in text, needle
    real = dataclasses.replace(config, gpus=dataclasses.replace(config.gpus, backend="nvml"))
    text = summary_markdown(real, args, pcfg, [res], datetime.datetime(2026, 12, 1), "x",
                            time_scale=1.0, steady_fraction=None, figures={})
    assert "SIMULATED" not in text and "real GPUs (NVML)" in text


def test_the_json_carries_what_was_shortened() -> None:
    body = json.loads(json.dumps(rep.summary_json("fcr-n", [fcr_n_result()])))
    [test] = body["tests"]
    assert test["shortened"][0] == "hold at 49.95 Hz: 20 s of the TSO's 60 s"
    assert "reference_w" not in test  # scored from samples: no recording to describe


def test_the_test_plot_draws_on_a_result_scored_from_samples(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = rep.plot(fcr_n_result(), tmp_path / "steps.png", product="fcr-n",
                       capacity_w=CAP, simulated=True, time_scale=0.1)
    assert written == [tmp_path / "steps.png"]
    assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("product", "has_hz"), [("fcr-n", True), ("dr", False)])
def test_only_a_frequency_product_s_plot_has_a_frequency_axis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, product: str, has_hz: bool) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    close = plt.close

    def note_axes(fig: Any) -> None:
        labels.extend(a.get_ylabel() for a in fig.axes)
        close(fig)

    monkeypatch.setattr(plt, "close", note_axes)
    rep.plot(fcr_n_result(), tmp_path / "t.png", product=product, capacity_w=CAP)
    assert "power reduction (W)" in labels
    assert ("frequency (Hz)" in labels) == has_hz
