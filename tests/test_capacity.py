"""What the node can deliver, against what it is enrolled for: computed, logged, exported, and
acked honestly when an activation asks for more."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from test_intake import (
    DEMAND_W,
    Rig,
    open_rig,
)

from gridtao.config.grid import FacilityConfig, ProductConfig
from gridtao.control.capacity import CapacityWatch, enrolled_w, node_capacity

W = 1000
rig_fixture = pytest.fixture(open_rig, name="rig")  # test_intake's rig


def test_deliverable_is_draw_above_the_floors_counted_at_the_settlement_point() -> None:
    draw = [600 * W, 500 * W, 150 * W]  # the last GPU draws under its 200 W floor
    floors = [200 * W, 300 * W, 200 * W]
    it = node_capacity(draw, floors, facility=FacilityConfig(settle_at="it"), enrolled=900.0)
    assert it.floor_w == 200 + 300 + 150 and it.deliverable_it_w == 400 + 200 + 0
    assert it.deliverable_w == 600 and it.short_w == 300
    meter = node_capacity(draw, floors, facility=FacilityConfig(losses_fraction=0.05),
                          enrolled=900.0)
    assert meter.deliverable_w == pytest.approx(600 * 1.05)


def test_only_frequency_products_count_toward_the_enrolment() -> None:
    products = [ProductConfig(kind="ffr", capacity_w=1000.0),
                ProductConfig(kind="fcr-d-up", capacity_w=500.0),
                ProductConfig(kind="dr", capacity_w=2000.0)]
    assert enrolled_w(products) == 1500.0


def test_the_watch_says_once_when_short_and_once_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gridtao.capacity")
    watch = CapacityWatch()
    fac = FacilityConfig(settle_at="it")
    short = node_capacity([644 * W], [200 * W], facility=fac, enrolled=1000.0)
    for _ in range(5):
        watch.update(short)
    assert watch.short
    assert caplog.text.count("enrolled for 1000 W") == 1
    assert "short by 556 W" in caplog.text
    watch.update(node_capacity([1200 * W], [200 * W], facility=fac, enrolled=1000.0))
    assert watch.short  # 1000 W covers it only at the line: not announced as back yet
    watch.update(node_capacity([1300 * W], [200 * W], facility=fac, enrolled=1000.0))
    assert not watch.short and caplog.text.count("deliver its enrolment again") == 1


def test_the_watch_says_nothing_of_a_draw_an_event_holds_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node held down by an activation has little left to cut by design: that is not a
    shortfall of its enrolment, during the event nor while its GPUs climb back after it."""
    caplog.set_level(logging.INFO, logger="gridtao.capacity")
    watch = CapacityWatch()
    fac = FacilityConfig(settle_at="it")
    natural = node_capacity([2000 * W], [200 * W], facility=fac, enrolled=1000.0)
    capped = node_capacity([700 * W], [200 * W], facility=fac, enrolled=1000.0)
    watch.update(natural)
    for _ in range(3):
        watch.update(capped, event_active=True)
    watch.update(capped)  # the event just ended: the GPUs are still under their caps
    assert not watch.short and "enrolled for" not in caplog.text
    watch.update(natural)
    watch.update(capped)  # a node that is short on its own is said to be, as before
    assert watch.short and caplog.text.count("enrolled for 1000 W") == 1


def test_only_an_event_that_can_cut_holds_the_draw_down(rig: Rig) -> None:
    """What the controller tells the watch (gridtao/app/periodic.py): an event holds the draw
    down when it froze the island's basis. A cap far above the draw cuts nothing and freezes
    nothing, so a node short of its enrolment under it is still said to be."""
    high = sum(DEMAND_W) * 2
    rig.dispatch({"id": "high", "kind": "cap", "node_w": high, "duration_s": 60})
    view = rig.island.view()
    assert view.active_event_ids == ("high",) and view.basis_total_mw is None
    rig.dispatch({"id": "cut", "kind": "shed", "fraction": 0.2, "duration_s": 60})
    assert rig.island.view().basis_total_mw is not None


def test_a_cut_deeper_than_the_floor_is_acked_with_what_the_node_can_deliver(rig: Rig) -> None:
    floor_mw = float(rig.island.envelope.min_total_mw)  # 4 x 200 W
    ack = rig.dispatch({"id": "deep", "kind": "shed", "fraction": 0.9, "duration_s": 60})
    asked_w = 0.9 * sum(DEMAND_W)
    can_w = sum(DEMAND_W) - floor_mw / W
    assert ack["accepted"] is True
    assert ack["deliverable_w"] == pytest.approx(can_w, abs=1.0)
    assert ack["shortfall_w"] == pytest.approx(asked_w - can_w, abs=1.0)
    assert (f"by the GPUs' minimums and priority floors ({floor_mw / W:.0f} W, every GPU at its "
            f"lowest): {can_w:.0f} W of the {asked_w:.0f} W asked") in str(ack["reason"])
    view = rig.island.view()
    assert view.target_mw is not None and view.target_mw >= floor_mw


def test_an_armed_reduction_larger_than_the_node_never_aims_below_its_floor(rig: Rig) -> None:
    # An idle node enrolled in more FFR than it draws above its floor.
    rig.island.arm_reduction("big-ffr", 3_000 * W)
    act = rig.island.trigger_armed("big-ffr", "ffr-1")
    assert act is not None
    floor_mw = float(rig.island.envelope.min_total_mw)
    assert act.target_mw == floor_mw and act.shortfall_mw == pytest.approx(
        floor_mw - (sum(DEMAND_W) * W - 3_000 * W))
    assert rig.island.view().target_mw == floor_mw


def test_status_carries_capacity_and_metrics_export_it(tmp_path: Path) -> None:
    from gridtao.app.agent import Agent, AgentOptions
    from gridtao.clock import VirtualClock
    from gridtao.config.agent import load_config
    from gridtao.gpu.nvml import NvmlBackend
    from gridtao.gpu.sim.nvml import SimNvml
    from gridtao.wire import messages as wire

    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({
        "gpus": {"sim": {"count": 2}}, "metrics": {"enabled": False},
        "audit": {"enabled": False}, "journal": {"enabled": False},
        "facility": {"settle_at": "it"}, "safety": {"triggers": []},
        "products": [{"kind": "ffr", "capacity_w": 1000.0}]}))
    cfg = load_config(path)
    sim = SimNvml.from_config(cfg.gpus.sim, VirtualClock(0.0))
    backend = NvmlBackend(sim)
    agent = Agent(cfg, backend=backend, clock=sim.clock,
                  options=AgentOptions(serve_metrics=False))
    try:
        cap = agent.capacity()
        reg = agent.registry
        assert reg.get_sample_value("gridtao_capacity_enrolled_watts") == 1000.0
        assert reg.get_sample_value("gridtao_capacity_deliverable_watts") == pytest.approx(
            cap.deliverable_w)
        assert reg.get_sample_value("gridtao_frequency_feed_stale") == 0.0
        agent.monitor.on_sample(49.95, sim.clock.now() - 2.0, wall_s=0.0)
        assert reg.get_sample_value("gridtao_frequency_sample_age_seconds") == pytest.approx(2.0)
        assert reg.get_sample_value("gridtao_frequency_hz") == 49.95
        body = json.loads(wire.status_payload("n", True, 0.0, None, [],
                                              extra={"capacity": cap.fields()}))
        assert body["capacity"]["enrolled_w"] == 1000.0 and body["node"] == "n"
    finally:
        agent.island.close()
        backend.close()


def test_the_node_floor_that_dispatches_stop_at_bounds_the_capacity() -> None:
    fac = FacilityConfig(settle_at="it")
    draw, floors = [600 * W] * 4, [200 * W] * 4  # GPU floors 800 W; the node floor 1680 W
    cap = node_capacity(draw, floors, facility=fac, enrolled=0.0, node_floor_mw=1_680 * W)
    assert cap.floor_w == 1680 and cap.deliverable_it_w == 720
    idle = node_capacity([300 * W] * 4, floors, facility=fac, enrolled=0.0,
                         node_floor_mw=1_680 * W)
    assert idle.deliverable_it_w == 0 and idle.floor_w == 1200  # under the floor: nothing
