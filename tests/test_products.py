"""Grid products on hand-made frequency traces (pure, virtual time): FFR activation, hold,
ramp-out and 15 min re-arm; ERCOT 59.85 Hz; FCR-D dynamic and static (60 s deactivation,
1 %/s ramp-down, under the 2.5 %/s limit); FCR-N both ways; DR scheduling, overlap and
cancel; the product monitor."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Literal

import pytest

from gridtao.config.agent import FrequencyTrigger, ProductConfig
from gridtao.products.base import FrequencyProduct, ProductState
from gridtao.products.catalog import make_product, required_trace
from gridtao.products.dr import DrSchedule
from gridtao.products.frequency import Activate, Release
from gridtao.products.portfolio import Portfolio, ProductMonitor, product_key
from gridtao.products.proportional import FcrDUp, FcrN
from gridtao.products.step import FcrDUpStatic, StepProduct, ffr_activation_s
from gridtao.wire.messages import DrDispatch

CAP = 1000.0


def feed(product: FrequencyProduct, trace: Sequence[tuple[float, float]]) -> list[float]:
    """Feed ``(t, hz)`` samples; return the requirement after each."""
    return [product.required_reduction_w(hz, t) for t, hz in trace]


def state(product: StepProduct | FcrDUpStatic) -> ProductState:
    """The product's state now. Read through a call because mypy keeps an earlier
    ``assert p.state == ...`` narrowing across the calls that move the state machine on."""
    return product.state


def ffr(*, threshold_hz: float | None = None, support: Literal["short", "long"] = "short",
        debounce_samples: int | None = None) -> StepProduct:
    cfg = ProductConfig(kind="ffr", capacity_w=CAP, threshold_hz=threshold_hz, support=support)
    if debounce_samples is not None:
        cfg = dataclasses.replace(cfg, debounce_samples=debounce_samples)
    p = make_product(cfg, ramp_out_per_s=0.2)
    assert isinstance(p, StepProduct)
    return p


# ---- Nordic FFR --------------------------------------------------------------------------------


def test_ffr_defaults_follow_the_threshold_table() -> None:
    assert [ffr_activation_s(hz) for hz in (49.7, 49.6, 49.5)] == [1.3, 1.0, 0.7]
    p = ffr(threshold_hz=49.5)
    assert (p.threshold_hz, p.full_activation_s, p.support_s, p.rearm_s) == (49.5, 0.7, 5.0, 900)
    assert ffr(support="long").support_s == 30.0


def test_ffr_step_hold_ramp_out_and_rearm() -> None:
    p = ffr(threshold_hz=49.5)
    # 10 Hz samples: the 2-sample debounce would cost 100 ms > 10 % of 0.7 s, so the first
    # sample at the threshold fires at once.
    assert feed(p, [(0.0, 50.0), (0.1, 49.8), (0.2, 49.51)]) == [0, 0, 0]
    assert p.required_reduction_w(49.5, 0.3) == CAP and state(p) == "active"
    assert p.activated_at_s == 0.3 and p.status().full_due_s == pytest.approx(1.0)
    # Held for the 5 s support even though frequency recovers at once.
    t = 0.4
    while t < 5.25:
        assert p.required_reduction_w(50.0, t) == CAP
        t += 0.1
    # Ramp-out at 20 %/s of capacity from 5.3 s: zero after 5 s more.
    assert p.required_reduction_w(None, 5.3) == pytest.approx(CAP)
    assert state(p) == "ramping"
    assert p.required_reduction_w(None, 6.3) == pytest.approx(0.8 * CAP)
    assert p.required_reduction_w(None, 7.8) == pytest.approx(0.5 * CAP)
    assert p.required_reduction_w(None, 10.3) == 0.0 and state(p) == "rearming"
    # Not available again for 15 min after the ramp-out ended: a new dip is ignored.
    assert p.required_reduction_w(49.4, 300.0) == 0.0 and state(p) == "rearming"
    assert p.required_reduction_w(49.4, 10.3 + 900.0) == 0.0  # still low: no re-arm yet
    assert p.required_reduction_w(50.0, 911.0) == 0.0 and state(p) == "armed"
    assert p.required_reduction_w(49.45, 912.0) == CAP and p.activated_at_s == 912.0


def test_ffr_debounce_waits_one_sample_when_the_budget_allows() -> None:
    p = ffr(threshold_hz=49.5)  # 0.7 s budget: at most 70 ms of debounce
    # 50 Hz samples (20 ms): the second consecutive low sample confirms.
    assert feed(p, [(0.00, 50.0), (0.02, 49.45), (0.04, 49.45)]) == [0, 0, CAP]
    p = ffr(threshold_hz=49.5)
    # A single low sample between normal ones is a glitch: never fires.
    assert feed(p, [(0.00, 50.0), (0.02, 49.3), (0.04, 50.0), (0.06, 49.9)]) == [0, 0, 0, 0]
    # The stream stalls after one low sample: the crossing counts once its allowance is over.
    p = ffr(threshold_hz=49.5)
    assert feed(p, [(0.00, 50.0), (0.02, 49.45)]) == [0, 0]
    assert p.required_reduction_w(None, 0.08) == 0
    assert p.required_reduction_w(None, 0.095) == CAP and p.activated_at_s == 0.095
    # debounce_samples 1: every low sample fires at once.
    p = ffr(threshold_hz=49.5, debounce_samples=1)
    assert feed(p, [(0.00, 50.0), (0.02, 49.45)]) == [0, CAP]


def test_ffr_long_support_and_abort() -> None:
    p = ffr(support="long")
    feed(p, [(0.0, 49.6)])
    assert p.required_reduction_w(None, 29.9) == CAP
    assert p.required_reduction_w(None, 30.0) == CAP and state(p) == "ramping"
    p = ffr()
    feed(p, [(0.0, 49.6)])
    p.abort()  # ended elsewhere (island expiry, a release dispatch)
    assert state(p) == "rearming" and p.required_reduction_w(None, 1.0) == 0.0


# ---- ERCOT FFR (60 Hz) -------------------------------------------------------------------------


def test_ercot_ffr_59_85_hz_in_250_ms() -> None:
    p = make_product(ProductConfig(kind="ercot-ffr", capacity_w=CAP), ramp_out_per_s=0.2)
    assert isinstance(p, StepProduct)
    assert (p.threshold_hz, p.full_activation_s, p.support_s) == (59.85, 0.25, 900.0)
    # 100 Hz samples: 25 ms of debounce allowed, one 10 ms confirmation sample fits.
    assert feed(p, [(0.00, 60.0), (0.01, 59.86), (0.02, 59.85), (0.03, 59.84)]) == [0, 0, 0, CAP]
    assert p.required_reduction_w(None, 899.0) == CAP
    assert p.required_reduction_w(None, 900.13) == pytest.approx(0.98 * CAP)  # from 900.03


# ---- FCR-D up ----------------------------------------------------------------------------------


def test_fcr_d_dynamic_is_linear_49_9_to_49_5() -> None:
    p = FcrDUp("fcrd", CAP, median_samples=1)
    assert feed(p, [(0, 50.0), (1, 49.9), (2, 49.8), (3, 49.7), (4, 49.5), (5, 49.0)]) == (
        pytest.approx([0, 0, 250, 500, 1000, 1000]))
    assert p.status().state == "active" and p.status().full_due_s == pytest.approx(2 + 7.5)
    assert p.required_reduction_w(50.0, 6) == 0 and p.status().state == "idle"


def test_fcr_d_median_filter_ignores_one_spike() -> None:
    p = FcrDUp("fcrd", CAP)  # median of 3: one sample of delay, spikes rejected
    out = feed(p, [(0.0, 50.0), (0.1, 50.0), (0.2, 49.5), (0.3, 50.0), (0.4, 49.7), (0.5, 49.7)])
    assert out == pytest.approx([0, 0, 0, 0, 500, 500])


def test_fcr_d_static_deactivates_only_after_60_s_above_49_9() -> None:
    p = FcrDUpStatic("static", CAP, threshold_hz=49.7)
    assert feed(p, [(0.0, 50.0), (0.1, 49.8)]) == [0, 0]  # above the threshold: nothing
    # 10 Hz samples, 0.25 s of debounce allowed: a second low sample confirms.
    assert feed(p, [(0.2, 49.7), (0.3, 49.65)]) == [0, CAP]
    assert feed(p, [(10.0, 49.85), (20.0, 49.95)]) == [CAP, CAP]  # above 49.9 from 20 s
    assert feed(p, [(50.0, 49.88)]) == [CAP]  # dipped under 49.9: the 60 s start over
    assert feed(p, [(51.0, 49.95), (110.0, 49.95)]) == [CAP, CAP]
    assert p.required_reduction_w(None, 111.0) == CAP and state(p) == "ramping"  # 60 s at 111
    assert p.required_reduction_w(None, 161.0) == pytest.approx(0.5 * CAP)  # 1 %/s
    assert feed(p, [(140.0, 49.6)]) == [CAP]  # a new dip: full again
    assert state(p) == "active" and p.activated_at_s == 140.0
    feed(p, [(141.0, 50.0)])
    assert p.required_reduction_w(None, 201.0 + 100.0) == 0.0 and state(p) == "armed"


# ---- FCR-N -------------------------------------------------------------------------------------


def test_fcr_n_both_directions() -> None:
    p = FcrN("fcrn", CAP, median_samples=1)
    trace = [(0, 50.0), (1, 49.95), (2, 49.9), (3, 49.8), (4, 50.05), (5, 50.1), (6, 50.3)]
    assert feed(p, trace) == pytest.approx([0, 500, 1000, 1000, -500, -1000, -1000])
    assert p.required_reduction_w(None, 7) == pytest.approx(-1000)  # holds between samples


def test_required_trace_replays_a_product() -> None:
    samples = [(0.0, 50.0), (1.0, 49.6), (2.0, 50.0)]
    out = required_trace(ffr(), samples, [0.5, 1.0, 3.0, 6.5, 20.0])
    assert out == pytest.approx([0, CAP, CAP, 0.9 * CAP, 0])


# ---- demand response ---------------------------------------------------------------------------


def ev(ident: str, start: float, *, duration_s: float = 100.0, ramp_s: float = 0.0,
       recovery_s: float = 0.0, reduction_w: float | None = 400.0,
       fraction: float | None = None) -> DrDispatch:
    return DrDispatch(ident, duration_s, start_at=start, ramp_s=ramp_s, recovery_s=recovery_s,
                      reduction_w=reduction_w, fraction=fraction)


def test_dr_ramp_hold_recovery_and_overlap() -> None:
    s = DrSchedule(1000.0)
    # Received at monotonic 10 s = Unix 1000 s: start_at 1100 is monotonic 110.
    assert s.add(ev("a", 1100.0, ramp_s=20.0, recovery_s=40.0), now_s=10.0, wall_s=1000.0) is None
    assert s.add(ev("b", 1150.0, reduction_w=700.0, duration_s=20.0), now_s=10.0,
                 wall_s=1000.0) is None
    at = [s.required_reduction_w(t, 5000.0) for t in (89.0, 100.0, 110.0, 159.0, 160.0, 185.0)]
    assert at == pytest.approx([0, 200, 400, 400, 700, 400])  # b binds while it runs
    assert s.required_reduction_w(220.0, 5000.0) == pytest.approx(300)  # a recovering
    assert [st for _, st in s.events(220.0)] == ["recovering"]
    assert s.required_reduction_w(250.0, 5000.0) == 0 and s.events(250.0) == []


def test_dr_events_resolve_in_start_order_not_arrival_order() -> None:
    s = DrSchedule(1000.0)
    s.add(ev("late", 300.0), now_s=0.0, wall_s=0.0)
    s.add(ev("early", 100.0, reduction_w=250.0), now_s=0.0, wall_s=0.0)
    assert [e.event_id for e, _ in s.events(0.0)] == ["early", "late"]
    assert s.required_reduction_w(150.0, 0.0) == 250.0
    assert s.required_reduction_w(350.0, 0.0) == 400.0
    assert [e.event_id for e, _ in s.events(350.0)] == ["late"]


def test_dr_cancel_before_and_during() -> None:
    s = DrSchedule(1000.0)
    s.add(ev("a", 100.0, recovery_s=10.0), now_s=0.0, wall_s=0.0)
    s.add(ev("b", 500.0), now_s=0.0, wall_s=0.0)
    assert s.holds("b", 40.0)
    assert s.cancel("b", now_s=50.0) and "b" not in s and not s.holds("b", 50.0)
    assert s.required_reduction_w(120.0, 0.0) == 400.0
    assert s.cancel("a", now_s=120.0) and not s.holds("a", 121.0)  # recovering, not held
    assert s.required_reduction_w(125.0, 0.0) == pytest.approx(200.0)  # recovery from 400
    assert s.required_reduction_w(130.0, 0.0) == 0.0
    assert not s.cancel("a", now_s=131.0) and not s.cancel("nope", now_s=131.0)


def test_dr_fraction_refusals_and_capacity() -> None:
    s = DrSchedule(1000.0)
    assert s.add(ev("f", 0.0, reduction_w=None, fraction=0.5), now_s=0.0, wall_s=0.0) is None
    assert s.required_reduction_w(1.0, 1200.0) == 600.0
    assert s.required_reduction_w(2.0, 4000.0) == 1000.0  # never above the enrolled capacity
    assert "exceeds the enrolled" in (s.add(ev("big", 0.0, reduction_w=1500.0), now_s=0.0,
                                            wall_s=0.0) or "")
    assert "already scheduled" in (s.add(ev("f", 0.0), now_s=0.0, wall_s=0.0) or "")
    assert "already over" in (s.add(ev("old", -500.0), now_s=0.0, wall_s=0.0) or "")


# ---- portfolio and monitor ---------------------------------------------------------------------


def test_monitor_fires_step_products_through_island_keys() -> None:
    portfolio = Portfolio([ProductConfig(kind="ffr", capacity_w=CAP, threshold_hz=49.5),
                           ProductConfig(kind="fcr-d-up", capacity_w=500.0, median_samples=1)],
                          ramp_out_per_s=0.5)
    changes: list[float] = []
    mon = ProductMonitor([FrequencyTrigger(hz=49.0)], portfolio, on_change=changes.append)
    assert mon.on_sample(49.7, 0.0, wall_s=1000.0) == []
    assert portfolio.proportional_reduction_w(0.0) == pytest.approx(250.0)
    assert changes == [0.0]
    acts = mon.on_sample(49.5, 0.1, wall_s=1000.1)
    assert acts == [Activate(product_key("ffr"), "ffr-1000100-1", 49.5)]
    assert changes == [0.0]  # the commitment waits for the tick after a step fires
    assert mon.active_event_ids == ["ffr-1000100-1"]
    assert mon.on_tick(5.0) == [] and changes[-1] == 5.0
    assert mon.on_tick(5.1) == [Release(product_key("ffr"), "ffr-1000100-1")]
    mon.forget("ffr-1000100-1")  # the intake's release: not an abort
    assert portfolio.step[0].state == "ramping"
    # Raw safety triggers still work beside the products.
    out = mon.on_sample(48.9, 6.0, wall_s=1006.0)
    assert [type(a) for a in out] == [Activate] and out[0].level_key == "freq:49.00"


def test_a_step_product_confirmed_by_time_is_stamped_on_the_samples_wall_clock() -> None:
    # One low sample, then the stream stalls past the debounce budget and a tick fires the
    # product: its id carries the Unix ms of that tick (monotonic 0.2 s is Unix 1000.2 s
    # here), not 0, so ids stay unique across restarts.
    portfolio = Portfolio([ProductConfig(kind="ffr", capacity_w=CAP, threshold_hz=49.5)],
                          ramp_out_per_s=0.5)
    mon = ProductMonitor([], portfolio)
    mon.on_sample(50.0, 0.0, wall_s=1000.0)
    mon.on_sample(50.0, 0.02, wall_s=1000.02)  # a 50 Hz stream: the next sample is due soon
    assert mon.on_sample(49.4, 0.04, wall_s=1000.04) == []  # one low sample: not confirmed
    acts = [a for a in mon.on_tick(0.2) if isinstance(a, Activate)]  # the stream stalled
    assert [a.event_id for a in acts] == ["ffr-1000200-1"]


def test_monitor_forget_aborts_an_activation_ended_elsewhere() -> None:
    portfolio = Portfolio([ProductConfig(kind="ffr", capacity_w=CAP)], ramp_out_per_s=0.2)
    mon = ProductMonitor([], portfolio)
    (act,) = mon.on_sample(49.6, 0.0, wall_s=0.0)
    mon.forget(act.event_id)
    assert portfolio.step[0].state == "rearming" and mon.active_event_ids == []


def test_monitor_dr_needs_enrolment() -> None:
    mon = ProductMonitor([], Portfolio([], ramp_out_per_s=0.2))
    assert "not enrolled" in (mon.schedule_dr(ev("a", 0.0), now_s=0.0, wall_s=0.0) or "")
    assert not mon.cancel_dr("a", now_s=0.0)


# ---- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "message"), [
    ({"products": [{"kind": "ffr", "capacity_w": 100}]},
     "safety.triggers: frequency products and raw safety.triggers would both cut"),
    ({"safety": {"triggers": []}, "products": [{"kind": "ffr"}]},
     "products[0].capacity_w: required key is missing"),
    ({"safety": {"triggers": []}, "products": [{"kind": "ffr", "capacity_w": 1},
                                               {"kind": "ffr", "capacity_w": 2}]},
     "products[1].name: two products are named 'ffr'"),
    ({"safety": {"triggers": [], "release_rate_per_s": 0.5},
      "products": [{"kind": "ffr", "capacity_w": 1}]},
     "safety.release_rate_per_s: short-support FFR ramps out at most 20 %/s"),
    ({"products": [{"kind": "dr", "capacity_w": 1, "baseline_w": 5}]},
     "products[0].baseline_w: only fcr-n runs at a baseline"),
    ({"products": [{"kind": "dr", "capacity_w": 1}, {"kind": "dr", "capacity_w": 2,
                                                      "name": "dr2"}]},
     "products: enrol demand response (kind dr) at most once"),
    ({"tracker": {"priorities": [{"gpus": [1], "priority": "flexible", "floor_w": 10}]}},
     "tracker.priorities[0].floor_w: only critical GPUs have a floor"),
    ({"products": [{"kind": "fcr-x", "capacity_w": 1}]}, "products[0].kind: must be one of"),
])
def test_config_rules(data: dict[str, object], message: str) -> None:
    from gridtao.config.agent import ConfigError, config_from_mapping

    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_mapping(data)


def test_example_products_config_loads() -> None:
    from pathlib import Path

    from gridtao.config.agent import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "products.yaml")
    portfolio = Portfolio(cfg.products, ramp_out_per_s=cfg.safety.release_rate_per_s)
    assert [p.kind for p in portfolio.step] == ["ffr"] and portfolio.dr is not None


def test_a_silent_feed_ends_fcr_d_and_a_raw_level_by_their_rules(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One 49.6 Hz sample, then nothing: FCR-D must not hold its cut for ever."""
    portfolio = Portfolio([ProductConfig(kind="fcr-d-up", capacity_w=1000.0, median_samples=1)],
                          ramp_out_per_s=0.2)
    trig = FrequencyTrigger(hz=49.7, reduction_fraction=0.1, min_hold_s=1.0, recovery_s=0.5)
    mon = ProductMonitor([trig], portfolio, stale_after_s=5.0)
    (act,) = mon.on_sample(49.6, 0.0, wall_s=0.0)
    assert portfolio.proportional_reduction_w(0.0) == pytest.approx(750.0)
    assert mon.sample_age_s(3.0) == 3.0 and not mon.stale
    for k in range(1, 101):  # the lane ticks at 20 Hz for 5 s
        assert mon.on_tick(k * 0.05) == []
    assert portfolio.proportional_reduction_w(5.0) == pytest.approx(750.0)  # not stale yet
    released = [a for k in range(101, 141) for a in mon.on_tick(k * 0.05)]
    assert mon.stale and "frequency feed stale" in caplog.text
    assert portfolio.proportional_reduction_w(7.0) == 0.0
    assert released == [Release("freq:49.70", act.event_id)]
    mon.on_sample(50.0, 8.0, wall_s=8.0)
    assert not mon.stale and mon.sample_age_s(8.0) == 0.0


def test_a_feed_that_never_sent_a_sample_is_stale_too(caplog: pytest.LogCaptureFixture) -> None:
    portfolio = Portfolio([ProductConfig(kind="ffr", capacity_w=CAP)], ramp_out_per_s=0.2)
    mon = ProductMonitor([], portfolio, stale_after_s=5.0)
    for k in range(0, 101):  # 5 s of lane ticks from the start, no sample
        mon.on_tick(k * 0.05)
    assert not mon.stale
    mon.on_tick(5.1)
    assert mon.stale and "no sample since start" in caplog.text
    mon.on_sample(50.0, 6.0, wall_s=6.0)
    assert not mon.stale


def test_a_silent_ercot_feed_is_taken_for_60_hz() -> None:
    portfolio = Portfolio([ProductConfig(kind="ercot-ffr", capacity_w=CAP, support_s=1.0)],
                          ramp_out_per_s=0.5)
    mon = ProductMonitor([], portfolio, stale_after_s=2.0)
    (act,) = mon.on_sample(59.8, 0.0, wall_s=0.0)
    out = [a for k in range(1, 200) for a in mon.on_tick(k * 0.05)]
    assert out == [Release(product_key("ercot-ffr"), act.event_id)]
    assert portfolio.step[0].state != "active"
