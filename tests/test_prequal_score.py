"""`gridtao prequalify score` on hand-made and doctored recordings: each finding of the
independent re-scoring fails here, through the command an operator runs on their own CSV,
and bad input is one line and exit 2.

The recordings are made on the bench's own plans (same product, test and options), sampled at
20 Hz like the bench's recorder, with the frequency the plan sends."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from gridtao.cli.main import main
from gridtao.config.agent import ProductConfig, load_config
from gridtao.prequal import plans, shapes
from gridtao.prequal import rules as pr
from gridtao.prequal import scoring as sc
from gridtao.prequal.scoring import Trace
from gridtao.products.catalog import make_product, required_trace

CAP = 1000.0
DT = 0.05


def plan_of(product: str, test: str, *, time_scale: float = 0.1,
            sines: plans.SineOptions | None = None) -> plans.TestPlan:
    """The bench's plan for ``--product product --test test`` at these options."""
    cfg = plans.product_config(load_config(None), product, capacity_w=CAP,
                               time_scale=time_scale)
    [plan] = [p for p in plans.test_plans(product, plans.spec_of(cfg), time_scale, sines)
              if p.name == test]
    return plan


def sent_hz(shape: shapes.Shape, t: float) -> float:
    """The frequency last sent at ``t`` (held per sample, as the bench logs it)."""
    return shape.hz[min(len(shape.hz) - 1, max(0, math.floor(t / shape.dt_s + 1e-9)))]


def write(path: Path, shape: shapes.Shape, delivered: Callable[[float, float], float], *,
          limit: Callable[[float], float] | None = None, end_s: float | None = None) -> Path:
    """A recording: ``delivered(t, hz)`` in W at every 50 ms sample, the bench's columns."""
    end = shape.duration_s if end_s is None else end_s
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "hz", "required_w", "delivered_w", "delivered_it_w", "meter_w",
                    "it_w", "it_target_w", "limit_w"])
        for k in range(round(end / DT) + 1):
            t = k * DT
            hz = sent_hz(shape, t)
            d = delivered(t, hz)
            w.writerow([f"{t:.3f}", f"{hz:.4f}", "", f"{d:.1f}", f"{d / 1.03:.1f}", "", "", "",
                        f"{limit(t) if limit else 5600.0:.1f}"])
    return path


def score(capsys: pytest.CaptureFixture[str], *argv: str
          ) -> tuple[int, dict[str, dict[str, object]]]:
    """Run ``prequalify score ... --json -``; the exit status and the rules by name."""
    rc = main(["prequalify", "score", *argv, "--json", "-"])
    body = json.loads(capsys.readouterr().out)
    return rc, {str(r["name"]): r for r in body["rules"]}


# ---- FCR-N: steady state per direction, as a share of what is required --------------------------


def fcr_n_delivery(short_up: float) -> Callable[[float, float], float]:
    """Exactly what FCR-N requires, but short by ``short_up`` where it asks to draw more."""
    def delivered(_t: float, hz: float) -> float:
        req = pr.required_fcr_n(hz, CAP)
        return req * (1.0 - short_up) if req < 0 else req
    return delivered


def test_fcr_n_upward_shortfall_of_18_percent_fails_and_is_no_over_delivery(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of("fcr-n", "steps")
    ok = write(tmp_path / "ok.csv", plan.shape, fcr_n_delivery(0.0))
    rc, rules = score(capsys, "--product", "fcr-n", "--test", "steps", str(ok))
    assert rc == 0 and all(r["passed"] for r in rules.values())

    short = write(tmp_path / "short.csv", plan.shape, fcr_n_delivery(0.18))
    rc, rules = score(capsys, "--product", "fcr-n", "--test", "steps", str(short))
    up = rules["steady_state@50.10Hz#3"]
    assert rc == 1 and up["passed"] is False
    assert up["value"] == pytest.approx(-18.0, abs=0.3)  # of the 1000 W asked, not mirrored
    assert "increase (drawing more)" in str(up["detail"])
    assert rules["over_delivery"]["passed"] is True
    assert float(rules["over_delivery"]["value"]) < 1.0  # type: ignore[arg-type]
    # The other levels are untouched.
    assert all(r["passed"] for n, r in rules.items() if n != "steady_state@50.10Hz#3")


def test_fcr_n_half_step_is_judged_on_the_half_required() -> None:
    # At 49.95 Hz (500 W asked) a 40 W shortfall is -8 % of what is asked: a fail, where a
    # share of capacity (-4 %) would have passed.
    t = [k * DT for k in range(400)]
    hz = [49.95] * len(t)
    req = [pr.required_fcr_n(f, CAP) for f in hz]
    tr = Trace(t, hz, req, [r - 40.0 for r in req], [r - 40.0 for r in req])
    rule = sc.steady_state(tr, a_s=5.0, b_s=15.0, capacity_w=CAP)
    assert not rule.passed and rule.value == pytest.approx(-8.0)


# ---- FFR: the whole ramp-out, a last step included ----------------------------------------------


def ffr_delivery(event_s: float, *, rate_pct: float, step_at_pct: float
                 ) -> Callable[[float, float], float]:
    """Full 0.3 s after the event, held 5.5 s, ramped out at ``rate_pct`` %/s down to
    ``step_at_pct`` % of capacity, where the rest is let go in one step."""
    full, end = event_s + 0.3, event_s + 0.3 + 5.5

    def delivered(t: float, _hz: float) -> float:
        if t < full:
            return 0.0
        level = 1.0 - max(0.0, t - end) * rate_pct / 100.0
        return CAP * level if level > step_at_pct / 100.0 else 0.0
    return delivered


def test_ffr_release_step_that_breaks_20_percent_per_s_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_of("ffr", "step-49.7Hz")
    event = plan.shape.marks["event"]
    gentle = write(tmp_path / "gentle.csv", plan.shape,
                   ffr_delivery(event, rate_pct=18.0, step_at_pct=0.0))
    rc, rules = score(capsys, "--product", "ffr", "--test", "step-49.7Hz", str(gentle))
    assert rc == 0 and rules["ramp_out_rate"]["value"] == pytest.approx(18.0, abs=0.3)

    stepped = write(tmp_path / "stepped.csv", plan.shape,
                    ffr_delivery(event, rate_pct=16.0, step_at_pct=25.0))
    rc, rules = score(capsys, "--product", "ffr", "--test", "step-49.7Hz", str(stepped))
    ramp = rules["ramp_out_rate"]
    assert rc == 1 and ramp["passed"] is False
    # The 1 s mean falls from 33 % (the last second of the ramp into the 25 % step) to 0,
    # not the 16 %/s of the slice before the step.
    assert ramp["value"] == pytest.approx(33.0, abs=0.5)


def test_a_recording_whose_frequency_never_steps_is_not_scored_as_the_step_test(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The requirement follows the recorded frequency: a perfect-looking delivery over a
    frequency that stays at 50 Hz (or only reaches 49.65 Hz, scored at 49.6 Hz) is not a
    recording of the step test, whatever its power shows."""
    plan = plan_of("ffr", "step-49.7Hz")
    event = plan.shape.marks["event"]
    path = write(tmp_path / "flat.csv", plan.shape, ffr_delivery(event, rate_pct=18.0,
                                                                 step_at_pct=0.0))
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0], *(r.replace(",49.6500,", ",50.0000,")
                                          for r in rows[1:])]) + "\n")
    rc = main(["prequalify", "score", "--product", "ffr", "--test", "step-49.7Hz", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and "reaches the 49.7 Hz threshold never (lowest 50.000 Hz)" in err, err
    stepped = write(tmp_path / "stepped.csv", plan.shape,
                    ffr_delivery(event, rate_pct=18.0, step_at_pct=0.0))
    rc = main(["prequalify", "score", "--product", "ffr", "--threshold-hz", "49.6",
               str(stepped)])
    err = capsys.readouterr().err
    assert rc == 2 and "49.6 Hz threshold never (lowest 49.650 Hz)" in err, err


def test_ffr_thresholds_are_the_ffr_levels(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "compliance", "--product", "ffr", "--threshold-hz", "55",
                 "--list"]) == 2
    assert "not below the grid's nominal 50 Hz" in capsys.readouterr().err
    assert main(["bench", "compliance", "--product", "ffr", "--threshold-hz", "49.4",
                 "--list"]) == 2
    assert "not one of the TSO's activation levels for ffr (49.7, 49.6, 49.5 Hz)" in \
        capsys.readouterr().err


def test_the_ffr_levels_the_configuration_accepts_are_those_with_an_activation_time() -> None:
    from gridtao.config.kinds import KINDS
    from gridtao.products.base import FFR_ACTIVATION_S

    assert sorted(KINDS["ffr"].threshold_levels) == sorted(FFR_ACTIVATION_S)


def test_ffr_ramp_out_rule_reads_the_step_on_a_trace() -> None:
    spec = pr.ProductSpec("ffr", CAP, 49.7, 5.0)
    t = [k * DT for k in range(round(20 / DT) + 1)]
    deliver = ffr_delivery(2.0, rate_pct=16.0, step_at_pct=25.0)
    d = [deliver(x, 50.0) for x in t]
    tr = Trace(t, [50.0] * len(t), pr.required_step(t, spec, 2.0), d, d)
    rules = {r.name: r for r in pr.score_step(spec, tr, event_s=2.0)}
    assert not rules["ramp_out_rate"].passed
    assert rules["ramp_out_rate"].value == pytest.approx(33.0, abs=0.5)


# ---- normal frequency: stationary, its spread, glitches that must not activate ------------------


def test_normal_frequency_starts_stationary_has_its_spread_and_glitches() -> None:
    shape = plan_of("ffr", "normal").shape
    lead = round(shape.marks["lead_end"] / shape.dt_s)
    body = [f - 50.0 for f in shape.hz[lead:]]
    glitch_free = [x for k, x in enumerate(body)
                   if not any(a <= (lead + k) * shape.dt_s < b for a, b, _ in shape.glitches)]
    assert shape.hz[0] != 50.0  # drawn from the stationary distribution, not nominal
    rms = math.sqrt(sum(x * x for x in glitch_free) / len(glitch_free))
    assert rms == pytest.approx(0.040, rel=0.15)
    assert len(body) * shape.dt_s >= 300.0  # ten correlation times
    assert f"RMS {rms * 1000:.0f} mHz" in shape.title
    # Single samples below the threshold and a 100 ms dip, away from the ends.
    assert len(shape.glitches) == 3
    for a, b, low in shape.glitches:
        assert b - a == pytest.approx(0.1) and low < 49.7
        assert min(shape.hz[round(a / shape.dt_s):round(b / shape.dt_s)]) == pytest.approx(low)


def test_the_ffr_product_does_not_fire_on_the_glitches() -> None:
    shape = plan_of("ffr", "normal").shape
    product = make_product(ProductConfig(kind="ffr", capacity_w=CAP, threshold_hz=49.7),
                           ramp_out_per_s=0.18)
    t = shape.times_s()
    required = required_trace(product, list(zip(t, shape.hz, strict=True)),
                              [x + 0.05 for x in t])
    assert max(required) == 0.0


def test_normal_is_judged_from_the_enforced_limits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shape = plan_of("ffr", "normal").shape
    quiet = write(tmp_path / "quiet.csv", shape, lambda t, hz: 150.0 * math.sin(t))
    rc, rules = score(capsys, "--product", "ffr", "--test", "normal", str(quiet))
    assert rc == 0 and rules["no_false_activation"]["value"] == 0.0
    glitch_at = shape.glitches[0][0]
    fired = write(tmp_path / "fired.csv", shape, lambda t, hz: 0.0,
                  limit=lambda t: 4600.0 if glitch_at <= t < glitch_at + 6.0 else 5600.0)
    rc, rules = score(capsys, "--product", "ffr", "--test", "normal", str(fired))
    assert rc == 1 and rules["no_false_activation"]["value"] == pytest.approx(100.0)


def test_a_normal_recording_without_its_glitches_is_not_scored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The test judges the glitches it sends (dips below the threshold that must not
    activate): a flat 50 Hz recording of it proves nothing, and is refused, not passed."""
    shape = plan_of("ffr", "normal").shape
    flat = dataclasses.replace(shape, hz=tuple(50.0 for _ in shape.hz))
    rec = write(tmp_path / "flat.csv", flat, lambda t, hz: 0.0)
    assert main(["prequalify", "score", "--product", "ffr", "--test", "normal", str(rec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never shows the glitch at t=" in err, err
    # A logger slower than the glitches last cannot show them: not held against it.
    pr.check_glitches([0.0, 1.0, 2.0], [50.0, 50.0, 50.0], plans.spec_of(
        plans.product_config(load_config(None), "ffr", capacity_w=None, time_scale=0.1,
                             threshold_hz=None)), shape.glitches, "normal")  # no refusal


# ---- bad input: one line, exit 2 ----------------------------------------------------------------


@pytest.mark.parametrize(("content", "needle"), [
    (None, "cannot read it"),
    ("t_s,hz\n0,50\n", "missing column(s) delivered_w"),
    ("t_s,hz,delivered_w\n0,50,1\n0.05,fifty,2\n", "line 3: column hz: 'fifty' is not a number"),
    ("t_s,hz,delivered_w\n0,50,1\n0,50,2\n", "line 3: t_s 0 does not increase"),
    ("t_s,hz,delivered_w\n0,50,1\n0.05,50,nan\n", "column delivered_w: 'nan' is not finite"),
    ("t_s,hz,delivered_w\n0,50,1\n1,50,1\n", "covers 0-1 s; test step-49.7Hz runs 0-20 s"),
    (b"\xff\xfe\x00binary", "not a text CSV file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          content: str | bytes | None, needle: str) -> None:
    path = tmp_path / "rec.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    rc = main(["prequalify", "score", "--product", "ffr", "--test", "step-49.7Hz", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_truncated_line_and_test_all_are_said_plainly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "rec.csv"
    rec.write_text("t_s,hz,delivered_w\n0,50,1\n0.05,50\n")
    assert main(["prequalify", "score", "--product", "ffr", "--test", "step-49.7Hz",
                 str(rec)]) == 2
    assert "line 3: 2 fields, the header has 3" in capsys.readouterr().err
    rec.write_text("t_s,hz,delivered_w,note\n0,50,1,a\n0.05,50,2\n")  # an unused column short
    assert main(["prequalify", "score", "--product", "ffr", "--test", "step-49.7Hz",
                 str(rec)]) == 2
    assert "fields" not in capsys.readouterr().err  # refused for its length, not its fields
    assert main(["prequalify", "score", "--product", "ffr", "--test", "all", str(rec)]) == 2
    assert "name it (one of step-49.7Hz, large-trip, normal, rearm)" in capsys.readouterr().err
    assert main(["prequalify", "score", "--product", "ffr", "--test", "nope", str(rec)]) == 2
    assert "choose from step-49.7Hz, large-trip, normal, rearm)" in capsys.readouterr().err


def test_unknown_test_and_missing_limits_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "rec.csv"
    rec.write_text("t_s,hz,delivered_w\n0,50,1\n")
    assert main(["prequalify", "score", "--product", "ffr", "--test", "nope", str(rec)]) == 2
    assert "no test 'nope'" in capsys.readouterr().err
    assert main(["prequalify", "score", "--product", "ffr", "--test", "step-49.5Hz",
                 str(rec)]) == 2
    assert "needs --threshold-hz" in capsys.readouterr().err
    shape = plan_of("ffr", "normal").shape
    bare = tmp_path / "bare.csv"
    with bare.open("w") as f:
        f.write("t_s,hz,delivered_w\n")
        for k in range(round(shape.duration_s / DT) + 1):
            f.write(f"{k * DT:.3f},50,0\n")
    assert main(["prequalify", "score", "--product", "ffr", "--test", "normal", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "no limit_w" in err and err.count("\n") == 1
