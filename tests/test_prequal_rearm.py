"""Deactivation and re-arm tests (gridtao/prequal/rearm.py): the second activation is scored
with the first's rules, on responses with known answers (pure scoring, no agent)."""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable

import pytest

from gridtao.config.agent import Config, ProductConfig, load_config
from gridtao.prequal import compliance, plans, rearm
from gridtao.prequal import report as rep
from gridtao.prequal.rules import ProductSpec
from gridtao.prequal.scoring import RuleResult
from gridtao.prequal.shapes import STATIC_RAMP_DOWN_S
from gridtao.prequal.writeup import product_rows

CAP = 1000.0
DT = 0.05


def plan_of(product: str, *, config_rearm_s: float | None = None) -> tuple[
        plans.TestPlan, ProductSpec]:
    config = load_config(None)
    if config_rearm_s is not None:
        entry = ProductConfig(kind="ffr", capacity_w=CAP, rearm_s=config_rearm_s)
        config = dataclasses.replace(config, products=(entry,))
    pcfg = plans.product_config(config, product, capacity_w=CAP, time_scale=0.1)
    spec = plans.spec_of(pcfg)
    [plan] = [p for p in plans.test_plans(product, spec, 0.1,
                                          rearm_s=plans.rearm_times(config, pcfg))
              if p.name == "rearm"]
    return plan, spec


def scored(product: str, respond: Callable[[float, float], float]) -> dict[str, RuleResult]:
    """Score a response ``respond(t, required)`` (W) to the product's re-arm test."""
    plan, spec = plan_of(product)
    shape = plan.shape
    t = [k * DT for k in range(round(shape.duration_s / DT))]
    hz = [shape.hz[min(len(shape.hz) - 1, round(x / shape.dt_s - 0.5))] for x in t]
    zeros = [0.0] * len(t)
    required = rep.score_samples(spec, plan, t, hz, zeros, zeros, None).trace.required_w
    delivered = [respond(x, r) for x, r in zip(t, required, strict=True)]
    res = rep.score_samples(spec, plan, t, hz, delivered, delivered, None)
    return {r.name: r for r in res.rules}


def follows(_t: float, required: float) -> float:
    """2 % over what is required (its ramps read 2 % over the limits they are drawn at)."""
    return 1.02 * required


#: The rule each product's activation stands or falls by.
CORE = {"ffr": "full_activation_time", "fcr-d-up": "power_7.5s",
        "fcr-d-up-static": "activation_time"}


def test_ffr_rearm_waits_the_rearm_time_shortened_and_stated() -> None:
    plan, spec = plan_of("ffr")
    marks = plan.shape.marks
    wait = marks["rearm_event"] - marks["event"]
    assert wait == pytest.approx(spec.support_s + rearm.RAMP_OUT_ALLOWANCE_S + 90.0
                                 + rearm.REARM_MARGIN_S)
    assert plan.shape.shortened == ("re-arm time: 90 s of the product's 900 s",)
    configured, _ = plan_of("ffr", config_rearm_s=200.0)
    assert configured.shape.shortened == ("re-arm time: 20 s of the product's 200 s",)


@pytest.mark.parametrize("product", ["ffr", "fcr-d-up", "fcr-d-up-static"])
def test_both_activations_are_scored_with_the_same_rules(product: str) -> None:
    rules = scored(product, follows)
    once = [n for n in rules if not n.endswith("#2")]
    assert [n + "#2" for n in once] == [n for n in rules if n.endswith("#2")]
    core = CORE[product]
    assert rules[core].passed and rules[core + "#2"].passed
    assert rules[core + "#2"].value == pytest.approx(rules[core].value, abs=0.05)


@pytest.mark.parametrize("product", ["ffr", "fcr-d-up", "fcr-d-up-static"])
def test_a_product_that_does_not_respond_again_fails_the_second_activation(
        product: str) -> None:
    plan, _ = plan_of(product)
    first = next(m for m in rearm.SECOND if m in plan.shape.marks)
    second = plan.shape.marks[rearm.SECOND[first]]
    rules = scored(product, lambda t, r: follows(t, r) if t < second - 0.5 else 0.0)
    core = CORE[product]
    assert rules[core].passed
    assert not rules[core + "#2"].passed and rules[core + "#2"].value is None


def test_fcr_d_second_activation_at_half_power_fails_its_steady_state() -> None:
    plan, _ = plan_of("fcr-d-up")
    second = plan.shape.marks["rearm_dynamic"]
    rules = scored("fcr-d-up", lambda t, r: follows(t, r) if t < second else 0.5 * r)
    assert rules["steady_state@49.00Hz"].passed
    bad = rules["steady_state@49.00Hz#2"]
    assert not bad.passed and bad.value == pytest.approx(-50.0, abs=1.0)


def test_only_the_rearm_tests_are_scored_as_rearm_tests() -> None:
    config = load_config(None)
    for product in ("ffr", "fcr-d-up", "fcr-d-up-static", "fcr-n", "ercot-ffr", "dr"):
        pcfg = plans.product_config(config, product, capacity_w=CAP, time_scale=0.1)
        for plan in plans.test_plans(product, plans.spec_of(pcfg), 0.1,
                                     rearm_s=plans.rearm_times(config, pcfg)):
            assert rearm.is_rearm(plan.shape) == (plan.name == "rearm"), (product, plan.name)


def recorded(product: str, it_at: Callable[[float, float], float]) -> tuple[
        plans.TestPlan, ProductSpec, compliance.Recording, Config]:
    """A recording of the product's re-arm test whose IT power is ``it_at(t, required)`` (W),
    spread over two GPUs, sampled at the bench's 20 Hz with the shape's frequency as sent,
    settled at the GPUs (no meter model between)."""
    plan, spec = plan_of(product)
    config = load_config(None)
    config = dataclasses.replace(
        config, facility=dataclasses.replace(config.facility, settle_at="it"))
    shape = plan.shape
    sent = [(k * shape.dt_s, f) for k, f in enumerate(shape.hz)]
    t = [k * DT for k in range(round(shape.duration_s / DT))]
    hz = [sent[bisect.bisect_right(sent, (x, math.inf)) - 1][1] for x in t]  # as measure()
    zeros = [0.0] * len(t)
    required = rep.score_samples(spec, plan, t, hz, zeros, zeros, None).trace.required_w
    it = [it_at(x, r) for x, r in zip(t, required, strict=True)]
    rec = compliance.Recording(t_s=t, gpu_w=[(w / 2, w / 2) for w in it],
                               limit_w=[1400.0] * len(t), target_w=[None] * len(t), sent=sent)
    return plan, spec, rec, config


@pytest.mark.parametrize("product", ["ffr", "fcr-d-up", "fcr-d-up-static"])
def test_the_second_activation_is_measured_from_the_power_just_before_it(
        product: str) -> None:
    """The node draws 250 W less after the first activation (its load changed, or the meter's
    cooling has not climbed back): the second activation, delivering exactly what is
    required from there, is scored as delivering it. With the first reference for both, the
    250 W would count as a quarter of the capacity delivered on top."""
    window = rearm.reference_windows(plan_of(product)[0].shape)[1]
    split = window.applies_from_s
    plan, spec, rec, config = recorded(product, lambda t, r: (
        5000.0 if t < window.start_s else 4750.0) - r)
    m = compliance.measure(rec, plan, config, plans.product_config(
        config, product, capacity_w=CAP, time_scale=0.1))
    assert [r.it_w for r in m.references] == pytest.approx([5000.0, 4750.0])
    assert m.reference_at(split - 0.01).w == pytest.approx(5000.0)
    assert m.reference_at(split).w == pytest.approx(4750.0)
    result = rep.score_test(spec, plan, m, config)
    rules = {r.name: r for r in result.rules}
    over = rules["over_delivery#2"]
    assert over.passed and over.value is not None and over.value < 1.0
    tr = result.trace
    exact = [abs(d - r) < 1e-6 for t, d, r in zip(tr.t_s, tr.delivered_w, tr.required_w,
                                                    strict=True)
             if not window.start_s <= t < split]
    assert all(exact)  # between the load's change and the second part, -250 W: not scored


def test_each_reference_window_is_at_nominal_frequency_with_nothing_required() -> None:
    for product in ("ffr", "fcr-d-up", "fcr-d-up-static"):
        plan, spec = plan_of(product)
        shape = plan.shape
        windows = rearm.reference_windows(shape)
        assert len(windows) == 2
        t = [k * DT for k in range(round(shape.duration_s / DT))]
        hz = [shape.hz[min(len(shape.hz) - 1, round(x / shape.dt_s - 0.5))] for x in t]
        zeros = [0.0] * len(t)
        required = rep.score_samples(spec, plan, t, hz, zeros, zeros, None).trace.required_w
        for w in windows:
            inside = [k for k, x in enumerate(t) if w.start_s <= x < w.end_s]
            assert inside, (product, w)
            assert all(required[k] == 0.0 for k in inside), (product, w)
            assert all(abs(hz[k] - 50.0) < 0.01 for k in inside), (product, w)


def test_the_reference_window_of_the_second_static_step_starts_after_the_ramp_down() -> None:
    plan, _ = plan_of("fcr-d-up-static")
    marks = plan.shape.marks
    window = rearm.reference_windows(plan.shape)[1]
    assert window.start_s >= marks["recover"] + 60.0 + STATIC_RAMP_DOWN_S


def test_a_report_states_the_rearm_time_configured_and_the_one_tested() -> None:
    entry = ProductConfig(kind="ffr", capacity_w=CAP, rearm_s=900.0)
    config = dataclasses.replace(load_config(None), products=(entry,))
    pcfg = plans.product_config(config, "ffr", capacity_w=CAP, time_scale=0.1)
    fields = plans.product_fields(config, pcfg)
    assert fields["rearm_s"] == 900.0
    assert fields["rearm_s_tested"] == pcfg.rearm_s == 90.0


def test_a_report_states_ercot_support_as_enrolled_and_as_tested() -> None:
    """ERCOT's 15 min support is held 18 s at time scale 0.02: the report says both, never
    the shortened one as if it were the product's."""
    config = load_config(None)
    pcfg = plans.product_config(config, "ercot-ffr", capacity_w=CAP, time_scale=0.02)
    fields = plans.product_fields(config, pcfg)
    assert fields["support_s"] == plans.ERCOT_SUPPORT_S
    assert fields["support_s_tested"] == pcfg.support_s == 18.0
    rows = dict(product_rows(config, pcfg, plans.spec_of(pcfg)))
    assert rows["support duration"] == "900 s (the tests hold 18 s: shortened by the time scale)"
    # Configured, it is held as configured: nothing shortened, nothing more to say.
    entry = ProductConfig(kind="ercot-ffr", capacity_w=CAP, support_s=30.0)
    own = dataclasses.replace(config, products=(entry,))
    pcfg = plans.product_config(own, "ercot-ffr", capacity_w=CAP, time_scale=0.02)
    assert plans.product_fields(own, pcfg)["support_s"] == 30.0
    assert "support_s_tested" not in plans.product_fields(own, pcfg)
    assert dict(product_rows(own, pcfg, plans.spec_of(pcfg)))["support duration"] == "30 s"


@pytest.mark.parametrize("product", ["dr", "fcr-n", "fcr-d-up"])
def test_a_report_states_only_the_keys_the_product_reads(product: str) -> None:
    config = load_config(None)
    pcfg = plans.product_config(config, product, capacity_w=CAP, time_scale=0.1)
    fields = plans.product_fields(config, pcfg)
    assert fields["kind"] == product and fields["capacity_w"] == CAP
    for step_only in ("rearm_s", "rearm_s_tested", "support", "debounce_samples",
                      "threshold_hz"):
        assert step_only not in fields
    assert ("median_samples" in fields) == (product != "dr")
