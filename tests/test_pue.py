"""Facility model, the PUE-aware tier 2 against naive trackers, and Tier2 on a real island
(simulated GPUs, virtual time)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from gridtao.bench.pue import Scenario, run_pue_bench
from gridtao.cli.main import main
from gridtao.clock import VirtualClock
from gridtao.config.agent import (
    ConfigError,
    FacilityConfig,
    GpuPriority,
    ProductConfig,
    TrackerConfig,
)
from gridtao.control.tier2.facility import Facility, FacilityModel, MeterTracker
from gridtao.control.tier2.tracker import Tier2, floors_w
from gridtao.products.portfolio import Portfolio, ProductMonitor, product_key
from gridtao.safety.island import SafetyIsland
from gridtao.wire.messages import DrDispatch

MODEL = FacilityModel(losses_fraction=0.03, cop=4.5, cooling_tau_s=120.0)
W = 1000


def test_meter_falls_by_losses_at_once_and_cooling_follows() -> None:
    plant = Facility(MODEL, 4000.0)
    before = plant.meter_w
    assert before == pytest.approx(4000 * (1.03 + 1 / 4.5))
    after_1s = plant.step(3000.0, 1.0)
    drop_now = 1000 * 1.03 + 1000 / 4.5 * (1 - math.exp(-1 / 120))
    assert before - after_1s == pytest.approx(drop_now)
    assert before - plant.step(3000.0, 119.0) == pytest.approx(
        1000 * 1.03 + 1000 / 4.5 * (1 - math.exp(-1)))
    assert before - plant.step(3000.0, 3600.0) == pytest.approx(1000 * (1.03 + 1 / 4.5))
    assert MODEL.steady_pue(4000.0) == pytest.approx(1.03 + 1 / 4.5)


def test_meter_tracker_cuts_less_it_as_cooling_follows() -> None:
    tracker = MeterTracker(MODEL, 4000.0, 0.0)
    tracker.start(0.0, 4000.0)
    first = tracker.it_reduction_w(1000.0)
    assert first == pytest.approx(1000 / 1.03)
    it = 4000.0 - first
    t = 0.0
    for _ in range(3600):  # hold the IT cut the tracker asks for, observing every second
        t += 1.0
        tracker.observe(t, it)
        it = 4000.0 - tracker.it_reduction_w(1000.0)
    assert tracker.it_reduction_w(1000.0) == pytest.approx(1000 / (1.03 + 1 / 4.5), rel=1e-3)


def test_aware_tracker_holds_the_meter_with_less_it_than_the_naive_ones() -> None:
    scenarios = [Scenario(name="short", duration_s=30.0),
                 Scenario(name="dr", duration_s=900.0, ramp_s=30.0, recovery_s=60.0)]
    result = run_pue_bench(FacilityConfig(), scenarios=scenarios)
    short, dr = ({r["strategy"]: r for r in res["strategies"]} for res in result["results"])
    for rows in (short, dr):
        aware, naive, losses = rows["pue-aware"], rows["annual-pue"], rows["losses-only"]
        # The aware tracker meets the meter commitment throughout...
        assert aware["worst_under_pct"] < 2.0 and aware["mean_abs_error_pct"] < 1.0
        assert abs(aware["excess_it_shed_pct"]) < 1.0
        # ...dividing by the annual PUE falls short while cooling has not followed...
        assert naive["worst_under_pct"] > 15.0 and naive["time_short_5pct_pct"] > 5.0
        # ...and the divisor that does meet it from the first second sheds IT for nothing.
        assert losses["worst_under_pct"] < 2.0
        assert losses["mean_it_shed_w"] > aware["mean_it_shed_w"]
    assert dr["losses-only"]["excess_it_shed_pct"] > 10.0
    assert dr["losses-only"]["mean_it_shed_w"] > 1.1 * dr["pue-aware"]["mean_it_shed_w"]
    # Over a 30 s cut cooling barely moves: all of the naive tracker's deficit stays.
    assert short["annual-pue"]["time_short_5pct_pct"] > 90.0


def test_model_mismatch_is_reported_not_hidden() -> None:
    result = run_pue_bench(FacilityConfig(), scenarios=[Scenario(duration_s=900.0)],
                           plant_tau_s=300.0)
    aware = result["results"][0]["strategies"][0]
    assert aware["strategy"] == "pue-aware" and aware["worst_under_pct"] > 2.0


def test_bench_pue_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pue.json"
    assert main(["bench", "pue", "--scenario", "short", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| pue-aware |" in text and "| annual-pue |" in text
    data = json.loads(out.read_text())
    assert [r["strategy"] for r in data["results"][0]["strategies"]] == [
        "pue-aware", "annual-pue", "losses-only"]
    assert main(["bench", "pue", "--reduction-w", "0"]) == 2


# ---- Tier2 on a real island ----------------------------------------------------------------


N = 4
#: The ``island`` fixture (conftest.py): a 4-GPU node at 600 W each, on a virtual clock.
IslandRig = tuple[VirtualClock, SafetyIsland]


def _tier2(isl: SafetyIsland, clock: VirtualClock, products: list[ProductConfig], *,
           margin_fraction: float = 0.0,  # exact arithmetic; the margin has its own test
           reference_window_s: float | None = None,
           priorities: tuple[GpuPriority, ...] = ()) -> tuple[Tier2, ProductMonitor]:
    config = TrackerConfig(margin_fraction=margin_fraction, priorities=priorities)
    if reference_window_s is not None:
        config = dataclasses.replace(config, reference_window_s=reference_window_s)
    portfolio = Portfolio(products, ramp_out_per_s=0.2)
    tier2 = Tier2(isl, portfolio, facility=FacilityConfig(), clock=clock, config=config)
    mon = ProductMonitor([], portfolio, on_change=tier2.update)
    tier2.start(2400.0)
    return tier2, mon


def test_tier2_fcr_d_commitment_follows_cooling(island: IslandRig) -> None:
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="fcr-d-up", capacity_w=600.0,
                                                    median_samples=1)])
    assert isl.view().commitment_mw is None
    mon.on_sample(49.7, clock.now(), wall_s=clock.wall())  # 50 % of 600 W at the meter
    target = isl.view().commitment_mw
    assert target == pytest.approx((2400 - 300 / 1.03) * W)
    for _ in range(600):  # ten minutes with the IT at the target: cooling follows
        clock.advance(1.0)
        tier2.tick(tier2.it_target_w or 0.0)
    later = isl.view().commitment_mw
    assert later == pytest.approx((2400 - 300 / (1.03 + 1 / 4.5)) * W, rel=2e-3)
    snap = tier2.snapshot()
    assert snap["reduction_w"] == 300.0 and snap["reference_it_w"] == 2400.0
    assert snap["products"] == [{"name": "fcr-d-up", "kind": "fcr-d-up", "state": "active",
                                 "capacity_w": 600.0, "required_w": 300.0}]
    json.dumps(snap)
    mon.on_sample(50.0, clock.now(), wall_s=clock.wall())
    assert isl.view().commitment_mw is None and tier2.it_target_w is None


def test_tier2_arms_ffr_as_an_it_reduction_and_sets_floors(island: IslandRig) -> None:
    clock, isl = island
    _tier2(isl, clock, [ProductConfig(kind="ffr", capacity_w=515.0)],
           priorities=(GpuPriority(gpus=(0,), floor_w=550.0),))
    assert isl.view().floors_mw == (550 * W, 200 * W, 200 * W, 200 * W)
    act = isl.trigger_armed(product_key("ffr"), "e1")
    assert act is not None and act.target_mw == pytest.approx((2400 - 500) * W)
    assert act.caps_mw[0] >= 550 * W


def test_tier2_aims_the_margin_above_every_commitment(island: IslandRig) -> None:
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="fcr-d-up", capacity_w=600.0,
                                                    median_samples=1),
                                      ProductConfig(kind="ffr", capacity_w=515.0)],
                        margin_fraction=0.05)
    mon.on_sample(49.75, clock.now(), wall_s=clock.wall())  # above FFR's 49.7 Hz threshold
    assert isl.view().commitment_mw == pytest.approx((2400 - 225 * 1.05 / 1.03) * W)
    assert tier2.snapshot()["reduction_w"] == pytest.approx(225.0)  # the commitment, not the aim
    mon.on_sample(50.0, clock.now(), wall_s=clock.wall())
    # Step products are hard caps at the capacity itself: the margin is not added to them.
    act = isl.trigger_armed(product_key("ffr"), "e1")
    assert act is not None and act.target_mw == pytest.approx((2400 - 500) * W)
    # Ramp-out: the product's rate (0.2 here) of the capacity, not of the cut.
    assert isl.release("e1")
    clock.advance(1.0)
    isl.tick()
    ramped = isl.view().target_mw
    assert ramped is not None
    assert ramped - act.target_mw == pytest.approx(0.2 * 500 * W, rel=1e-3)


def test_tier2_arms_step_products_from_the_natural_draw_not_the_draw_now(island: IslandRig) -> None:
    clock, isl = island
    _tier2(isl, clock, [ProductConfig(kind="ffr", capacity_w=515.0)])
    isl.update_draw([700 * W] * N)  # a burst at the moment of the trigger
    isl.rearm()
    act = isl.trigger_armed(product_key("ffr"), "e1")
    assert act is not None
    assert act.baseline_mw == pytest.approx(2400 * W)
    assert act.target_mw == pytest.approx((2400 - 500) * W)


def test_tier2_reference_after_a_long_cut_is_the_draw_before_it(island: IslandRig) -> None:
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="fcr-d-up", capacity_w=600.0,
                                                    median_samples=1)],
                        reference_window_s=3.5)
    for k in range(10):  # a bursty natural draw: 2300 / 2500 W, mean 2400 W
        clock.advance(1.0)
        tier2.tick(2300.0 if k % 2 else 2500.0)
    mon.on_sample(49.7, clock.now(), wall_s=clock.wall())
    assert tier2.snapshot()["reference_it_w"] == pytest.approx(2400.0)
    for _ in range(60):  # a cut far longer than the window
        clock.advance(1.0)
        tier2.tick(2100.0)
    mon.on_sample(50.0, clock.now(), wall_s=clock.wall())
    clock.advance(1.0)
    tier2.tick(2500.0)  # recovering: not yet natural
    mon.on_sample(49.7, clock.now(), wall_s=clock.wall())
    assert tier2.snapshot()["reference_it_w"] == pytest.approx(2400.0)


def test_tier2_second_activation_counts_cooling_an_earlier_cut_still_sheds(
        island: IslandRig) -> None:
    """The meter commitment is measured from what the site would draw without any cut, so a
    second activation soon after a first must not take the still-low cooling as its reference:
    the meter (a plant driven by the IT power tier 2 asks for) falls by exactly the reduction."""
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="fcr-d-up", capacity_w=600.0,
                                                    median_samples=1)])
    plant = Facility(MODEL, 2400.0)
    reference_meter = plant.meter_w

    def hold(seconds: int) -> None:
        for _ in range(seconds):
            it = tier2.it_target_w or 2400.0
            clock.advance(1.0)
            plant.step(it, 1.0)
            tier2.tick(it)

    mon.on_sample(49.7, clock.now(), wall_s=clock.wall())
    hold(120)
    mon.on_sample(50.0, clock.now(), wall_s=clock.wall())
    hold(5)
    assert plant.cooling_w < MODEL.steady_cooling_w(2400.0) - 20.0  # still depressed
    mon.on_sample(49.7, clock.now(), wall_s=clock.wall())
    for _ in range(3):
        hold(1)
        assert reference_meter - plant.meter_w == pytest.approx(300.0, abs=1.0)


def test_tier2_fcr_n_baseline_after_enrolment_window(island: IslandRig) -> None:
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="fcr-n", capacity_w=206.0,
                                                   median_samples=1)],
                        reference_window_s=5.0)
    mon.on_sample(49.95, clock.now(), wall_s=clock.wall())
    assert isl.view().commitment_mw is None  # still measuring the natural draw
    products = tier2.snapshot()["products"]
    assert isinstance(products, list)
    assert products[0]["state"] == "enrolling"
    for _ in range(8):
        clock.advance(1.0)
        tier2.tick(2400.0)
    baseline = 2400.0 - 206.0 / 1.03
    assert tier2.snapshot()["fcr_n_baseline_w"] == pytest.approx(baseline, abs=0.1)
    mon.on_sample(50.0, clock.now(), wall_s=clock.wall())
    # Just after enrolment the cooling of the old 2400 W still shows on the meter, which the
    # tracker offsets with a lower IT target; it fades with the cooling lag.
    enrolled = isl.view().commitment_mw
    assert enrolled is not None and enrolled < baseline * W - 10 * W
    for _ in range(1200):
        clock.advance(1.0)
        tier2.tick(tier2.it_target_w or 0.0)
    assert isl.view().commitment_mw == pytest.approx(baseline * W, rel=1e-3)
    mon.on_sample(50.1, clock.now(), wall_s=clock.wall())  # high frequency: draw more
    assert isl.view().commitment_mw == pytest.approx((baseline + 200.0) * W, rel=1e-3)
    mon.on_sample(49.9, clock.now(), wall_s=clock.wall())
    assert isl.view().commitment_mw == pytest.approx((baseline - 200.0) * W, rel=1e-3)


def test_tier2_runs_a_dr_event_from_the_queue(island: IslandRig) -> None:
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="dr", capacity_w=1000.0)])
    msg = DrDispatch("d1", 60.0, start_at=clock.wall() + 10.0, ramp_s=10.0,
                     reduction_w=515.0)
    assert mon.schedule_dr(msg, now_s=clock.now(), wall_s=clock.wall()) is None
    mon.on_tick(clock.now())
    assert isl.view().commitment_mw is None
    clock.advance(5.0)
    mon.on_tick(clock.now())
    assert isl.view().commitment_mw == pytest.approx((2400 - 257.5 / 1.03) * W, rel=1e-3)
    clock.advance(5.0)
    mon.on_tick(clock.now())
    assert isl.view().commitment_mw == pytest.approx((2400 - 500) * W, rel=1e-3)
    assert mon.cancel_dr("d1", now_s=clock.now())
    mon.on_tick(clock.now())
    assert isl.view().commitment_mw is None
    assert tier2.snapshot()["dr"] == []


def test_floors_reject_unknown_gpus() -> None:
    assert floors_w((), 4) is None
    assert floors_w((GpuPriority(gpus=(1,), priority="flexible"),), 4) is None
    with pytest.raises(ConfigError, match="GPU 7 does not exist"):
        floors_w((GpuPriority(gpus=(7,), floor_w=100.0),), 4)


def test_tier2_cooling_starts_settled_at_the_first_window_not_one_reading(
        island: IslandRig) -> None:
    """A training node's first reading can be a burst (or a dip): the cooling estimate the
    FCR-N baseline's first steps are cut against must not inherit it for minutes."""
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="fcr-n", capacity_w=515.0,
                                                    median_samples=1)])
    tier2.start(3000.0)  # a burst at start; the natural draw is 2400 W
    for _ in range(5):
        clock.advance(1.0)
        tier2.tick(2400.0)
    snap = tier2.snapshot()
    assert snap["fcr_n_baseline_w"] == pytest.approx(2400.0 - 500.0)
    assert snap["cooling_w"] == pytest.approx(2400.0 / 4.5, rel=1e-3)
    mon.on_sample(49.95, clock.now(), wall_s=clock.wall())  # half the capacity: 257.5 W
    plant = MeterTracker(MODEL, 2400.0, clock.now())
    plant.start_steady(1900.0)
    expected = 1900.0 - plant.it_reduction_w(257.5)
    assert isl.view().commitment_mw == pytest.approx(expected * W, rel=1e-4)


def test_tier2_reference_after_a_cut_keeps_the_draw_before_it_until_new_samples_replace_it(
        island: IslandRig) -> None:
    """The window is the last ``reference_window_s`` of uncut time: the first sample after a
    long cut joins the draw before it rather than replacing it (a training node's one-second
    average after a cut is off its mean by ~100 W)."""
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="fcr-d-up", capacity_w=600.0,
                                                    median_samples=1)],
                        reference_window_s=5.0)
    natural = [2500.0 if k % 2 == 0 else 2300.0 for k in range(10)]  # mean 2400 W
    for watts in natural:
        clock.advance(1.0)
        tier2.tick(watts)
    mon.on_sample(49.7, clock.now(), wall_s=clock.wall())
    for _ in range(60):
        clock.advance(1.0)
        tier2.tick(tier2.it_target_w or 0.0)
    mon.on_sample(50.0, clock.now(), wall_s=clock.wall())
    for watts in (2500.0, 2500.0, 2600.0):  # settling (not natural yet), then one burst
        clock.advance(1.0)
        tier2.tick(watts)
    mon.on_sample(49.7, clock.now(), wall_s=clock.wall())
    # The five seconds of uncut time before the cut's end (2300, 2500, 2300, 2500, 2300 W
    # and the sample at the window's edge) and the new one: not the burst alone.
    expected = (2300.0 + 2500.0 + 2300.0 + 2500.0 + 2300.0 + 2600.0) / 6
    assert tier2.snapshot()["reference_it_w"] == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize(("low", "high", "extra"), [
    (2400.0, 2400.0, 0.0),  # steady: the configured margin
    (2390.0, 2410.0, 0.5 * 10.0 * 1.03 / 300.0),  # half the 1-s spread at the meter per watt
    (2300.0, 2500.0, 0.05),  # at most the configured margin again
])
def test_tier2_aims_above_a_bursty_nodes_spread(island: IslandRig, low: float, high: float,
                                                extra: float) -> None:
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="fcr-d-up", capacity_w=600.0,
                                                    median_samples=1)],
                        margin_fraction=0.05, reference_window_s=4.0)
    for k in range(12):
        clock.advance(1.0)
        tier2.tick(high if k % 2 else low)
    reference = tier2.snapshot()["natural_it_w"]
    assert isinstance(reference, float)
    mon.on_sample(49.7, clock.now(), wall_s=clock.wall())  # 300 W at the meter
    # (within 0.5 W: the cooling the alternating draw sheds against its mean)
    assert isl.view().commitment_mw == pytest.approx(
        (reference - 300.0 * (1.05 + extra) / 1.03) * W, abs=500.0)


def test_tier2_draws_more_with_the_configured_margin_only(island: IslandRig) -> None:
    """Above 50 Hz FCR-N asks the node to draw more, which it can only do as far as its jobs'
    demand goes: a higher aim on a bursty node would lift the bursts, not the dips."""
    clock, isl = island
    tier2, mon = _tier2(isl, clock, [ProductConfig(kind="fcr-n", capacity_w=515.0,
                                                    median_samples=1)],
                        margin_fraction=0.05)
    for k in range(5):  # the enrolment window: 2300, 2500, 2300 W of natural 1-s averages
        clock.advance(1.0)
        tier2.tick(2500.0 if k % 2 else 2300.0)
    assert tier2.snapshot()["fcr_n_baseline_w"] is not None
    mon.on_sample(50.05, clock.now(), wall_s=clock.wall())  # draw 257.5 W more
    raised = isl.view().commitment_mw
    mon.on_sample(49.95, clock.now(), wall_s=clock.wall())  # cut 257.5 W
    cut = isl.view().commitment_mw
    assert raised is not None and cut is not None
    # The cooling already shed is the same for both (no tick between): the targets are apart
    # by the two aims alone, 5 % over upward and 10 % (the bursty node's) over downward.
    assert (raised - cut) / W == pytest.approx(257.5 * (1.05 + 1.10) / 1.03, abs=0.01)
