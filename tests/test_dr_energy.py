"""Demand-response events in the per-event energy ledger (gridtao/app/drenergy.py): their span
(ramp, hold, recovery) and tier 2's frozen reference into an ``event_energy`` record, read by
the energy report onto the event tier 2's ``dr_state`` records tell of; and end to end, a DR
dispatch on a running agent over the real broker.

The unit tests run tier 2 (a real ``Tier2`` and ``Portfolio`` on the island test rig) in
virtual time, ticked once a second at times that fall between the schedule's edges, and feed
the energy ledger synthetic counters of a known draw every 0.5 s.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker
from conftest import IslandRig
from nodes import node_config, running, steady_sim
from trails import virtual_trail
from waiting import wait_until

from gridtao.app.drenergy import DrEventEnergy
from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import config_from_mapping
from gridtao.control.tier2.facility import FacilityModel
from gridtao.control.tier2.tracker import Tier2
from gridtao.products.portfolio import Portfolio
from gridtao.records.energy import EventEnergy
from gridtao.records.report.build import build_report
from gridtao.records.report.trail import read_trail
from gridtao.wire.messages import DrDispatch

DRAW_W = 2000.0  # what the synthetic counters count, node IT
NATURAL_W = 2400.0  # tier 2's natural draw (its reference once frozen)
ROUND_S = 0.5
CFG = config_from_mapping({"products": [{"kind": "dr", "capacity_w": 600}],
                           "tracker": {"period_s": 1.0, "reference_window_s": 2.0}},
                          source="<test dr energy>")
FACILITY = FacilityModel.from_config(CFG.facility)


class _Node:
    """Tier 2 with a DR product on the island rig, the energy ledger and the DR feed."""

    def __init__(self, rig: IslandRig) -> None:
        self.clock: VirtualClock = rig[0]
        self.portfolio = Portfolio(CFG.products, ramp_out_per_s=1.0)
        self.tier2 = Tier2(rig[1], self.portfolio, facility=CFG.facility, config=CFG.tracker,
                           clock=self.clock)
        self.tier2.start(NATURAL_W)
        self.records: list[Mapping[str, Any]] = []
        self.energy = EventEnergy(FACILITY, 2, on_event=self.records.append)
        self.feed = DrEventEnergy(self.energy, self.clock)
        self.references: list[float | None] = []
        self._next_round = self.clock.now()
        self._next_tick = self.clock.now() + 0.3  # ticks off the schedule's whole seconds

    def dispatch(self, event_id: str, *, in_s: float, ramp_s: float, hold_s: float,
                 recovery_s: float) -> float:
        """Queue a DR event whose full level is due ``in_s`` from now; its ``start_at``."""
        start_at = self.clock.wall() + in_s
        reason = self.portfolio.schedule_dr(
            DrDispatch(event_id, hold_s, start_at=start_at, ramp_s=ramp_s,
                       recovery_s=recovery_s, reduction_w=500.0),
            now_s=self.clock.now(), wall_s=self.clock.wall())
        assert reason is None
        return start_at

    def run_for(self, seconds: float) -> None:
        """Energy rounds every 0.5 s (each GPU at half of :data:`DRAW_W`), tier 2 every 1 s."""
        end = self.clock.now() + seconds
        while True:
            t = min(self._next_round, self._next_tick)
            if t > end + 1e-9:
                break
            self.clock.advance(max(0.0, t - self.clock.now()))
            if t == self._next_round:
                mj = round(t * DRAW_W / 2.0 * 1000.0)
                self.energy.feed(t, [mj, 10**12 + mj], [DRAW_W / 2 * 1000.0] * 2)
                self._next_round += ROUND_S
            else:
                self.tier2.tick(NATURAL_W)
                snapshot = self.tier2.snapshot()
                self.references.append(_float(snapshot["reference_it_w"]))
                self.feed.observe(snapshot)
                self._next_tick += 1.0
        self.clock.advance(max(0.0, end - self.clock.now()))


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _f(record: Mapping[str, Any], key: str) -> float:
    value = record[key]
    assert isinstance(value, int | float)
    return float(value)


def test_an_event_run_as_scheduled_is_measured_over_its_ramp_hold_and_recovery(
        island: IslandRig) -> None:
    node = _Node(island)
    start_at = node.dispatch("d1", in_s=5.0, ramp_s=2.0, hold_s=6.0, recovery_s=3.0)
    node.run_for(3.0)
    assert node.feed.running == frozenset() and node.records == []
    node.run_for(10.0)  # the ramp began at +3 s; the recovery ends at +14 s
    assert node.feed.running == {"d1"} and node.records == []
    node.run_for(3.0)
    (record,) = node.records
    assert record["event"] == "d1" and record["kind"] == "dr"
    assert record["method"] == "counter"
    # The schedule's span, to the millisecond, though tier 2 saw it at +3.3 s and +14.3 s.
    assert _f(record, "started_at") == pytest.approx(start_at - 2.0, abs=1e-3)
    assert _f(record, "ended_at") == pytest.approx(start_at + 9.0, abs=1e-3)
    assert _f(record, "duration_s") == pytest.approx(11.0, abs=1e-3)
    # The reference is tier 2's, frozen over the event; the draw is the counters'.
    frozen = {r for r in node.references if r is not None}
    assert frozen == {NATURAL_W}
    assert _f(record, "it_reference_j") == pytest.approx(NATURAL_W * 11.0, rel=1e-4)
    assert _f(record, "it_drawn_j") == pytest.approx(DRAW_W * 11.0, rel=1e-4)
    assert _f(record, "it_not_drawn_j") == pytest.approx((NATURAL_W - DRAW_W) * 11.0, rel=1e-3)
    assert _f(record, "meter_not_drawn_j") > _f(record, "it_not_drawn_j")
    assert node.energy.not_drawn_j()[0] == pytest.approx(_f(record, "it_not_drawn_j"))


def test_a_cancelled_event_ends_with_its_recovery_at_most_one_period_late(
        island: IslandRig) -> None:
    node = _Node(island)
    start_at = node.dispatch("d2", in_s=2.0, ramp_s=1.0, hold_s=60.0, recovery_s=2.0)
    node.run_for(4.6)
    cancel_wall = node.clock.wall()
    assert node.portfolio.cancel_dr("d2", now_s=node.clock.now())
    node.run_for(5.0)
    (record,) = node.records
    assert _f(record, "started_at") == pytest.approx(start_at - 1.0, abs=1e-3)
    true_end = cancel_wall + 2.0
    assert true_end - 1e-3 <= _f(record, "ended_at") <= true_end + 1.0
    assert _f(record, "it_drawn_j") == pytest.approx(DRAW_W * _f(record, "duration_s"),
                                                     rel=1e-4)


def test_an_event_received_mid_ramp_starts_in_the_period_tier_2_first_saw_it_in(
        island: IslandRig) -> None:
    """Not at its ramp's start, before it was received: at the tick before, at the earliest
    (its energy is all counted; before the receipt the node drew its reference)."""
    node = _Node(island)
    node.run_for(2.0)  # last tick at +1.3 s
    received = node.clock.wall()
    node.dispatch("d3", in_s=1.0, ramp_s=5.0, hold_s=2.0, recovery_s=0.0)  # ramp began -4 s
    node.run_for(6.0)
    (record,) = node.records
    assert _f(record, "started_at") == pytest.approx(received - 0.7, abs=1e-6)
    assert _f(record, "ended_at") == pytest.approx(received + 3.0, abs=1e-3)


def test_an_event_cancelled_before_its_ramp_gets_no_record(island: IslandRig) -> None:
    node = _Node(island)
    node.dispatch("d4", in_s=10.0, ramp_s=2.0, hold_s=5.0, recovery_s=0.0)
    node.run_for(3.0)
    assert node.portfolio.cancel_dr("d4", now_s=node.clock.now())
    node.run_for(20.0)
    assert node.records == [] and node.feed.running == frozenset()


def test_the_report_puts_the_energy_record_on_the_dr_event(tmp_path: Path) -> None:
    """A trail as the agent writes it: the state records at tier 2's ticks, then the energy
    record; one event, with the energy record's span and figures."""
    t0 = 1_772_323_200.0
    path = tmp_path / "audit-n1.jsonl"
    with virtual_trail(path, t0) as at:
        at(0, "agent_start", {"node": "n1", "pid": 1})
        at(10, "dr_scheduled", {"event": "d1", "start_at": t0 + 120, "duration_s": 600})
        at(10.2, "dr_state", {"event": "d1", "from": None, "to": "scheduled"})
        at(60.7, "dr_state", {"event": "d1", "from": "scheduled", "to": "ramping"})
        at(120.7, "dr_state", {"event": "d1", "from": "ramping", "to": "active"})
        at(720.7, "dr_state", {"event": "d1", "from": "active", "to": "recovering"})
        at(780.7, "dr_state", {"event": "d1", "from": "recovering", "to": "ended"})
        at(781.5, "event_energy", {
            "event": "d1", "kind": "dr", "started_at": t0 + 60, "ended_at": t0 + 780,
            "duration_s": 720.0, "method": "counter", "it_drawn_j": 1_440_000.0,
            "it_reference_j": 1_728_000.0, "it_not_drawn_j": 288_000.0,
            "meter_drawn_j": 1_600_000.0, "meter_not_drawn_j": 350_000.0})
    check, events = read_trail([path])
    assert check.intact
    (ev,) = events
    assert (ev.event_id, ev.kind, ev.source) == ("d1", "dr", "tier 2")
    assert (ev.start_s, ev.end_s, ev.why_ended) == (t0 + 60, t0 + 780, "done")
    assert ev.baseline_w == pytest.approx(2400.0)
    report = build_report(t0, t0 + 3600, histories=[], trails=[(check, events)],
                          facility=FACILITY, settle_at="meter",
                          read_back_period_s=0.5, generated_at_s=t0 + 3600)
    (entry,) = report.events
    assert entry.method == "counter"
    assert entry.it_drawn_kwh == pytest.approx(0.4)
    assert entry.it_reference_kwh == pytest.approx(0.48)
    assert entry.it_not_drawn_kwh == pytest.approx(0.08)
    assert entry.meter_not_drawn_kwh == pytest.approx(350_000 / 3.6e6)


def test_a_dr_dispatch_leaves_an_event_energy_record(mqtt_broker_session: MosquittoBroker,
                                                     tmp_path: Path) -> None:
    """A DR event on a running agent (4 simulated GPUs at 600 W; 500 W at the meter asked for
    over a 1 s ramp, a 3 s hold and a 1 s recovery): one ``event_energy`` record of kind
    ``dr`` over the schedule's span, measured from tier 2's reference, which the report puts
    on the ``dr_state`` event."""
    broker = mqtt_broker_session
    audit = tmp_path / "audit-drenergy.jsonl"
    cfg = node_config(broker, "drenergy", "gridtao/e2e-drenergy", gpus=4, audit=audit,
                      source="<test dr energy e2e>", safety={"triggers": []},
                      tracker={"period_s": 0.2, "reference_window_s": 0.5},
                      products=[{"kind": "dr", "capacity_w": 600}])
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(broker, cfg, sim, serve=True, settled_w=600.0) as node:
        wait_until(lambda: node.agent.tier2.snapshot()["natural_it_w"] is not None,
                   "tier 2's natural draw", timeout_s=20.0)
        start_at = time.time() + 1.5
        node.dispatch({"id": "dr1", "kind": "dr", "start_at": start_at, "ramp_s": 1.0,
                       "duration_s": 3.0, "recovery_s": 1.0, "reduction_w": 500})
        references: list[float] = []

        def recorded() -> bool:
            ref = node.agent.tier2.snapshot()["reference_it_w"]
            if isinstance(ref, float):
                references.append(ref)
            return any(r["kind"] == "event_energy" for r in node.audit())

        wait_until(recorded, "the DR event's event_energy record", timeout_s=30.0)
        records = node.audit()
    (rec,) = [r["fields"] for r in records if r["kind"] == "event_energy"]
    assert rec["event"] == "dr1" and rec["kind"] == "dr" and rec["method"] == "counter"
    # The schedule's span: ramp start to recovery end (wall clocks of one process).
    assert rec["started_at"] == pytest.approx(start_at - 1.0, abs=0.05)
    assert rec["ended_at"] == pytest.approx(start_at + 4.0, abs=0.05)
    assert rec["duration_s"] == pytest.approx(5.0, abs=0.05)
    # Tier 2's frozen reference (the natural 2400 W), held over the span.
    assert references and max(references) - min(references) < 1.0
    assert rec["it_reference_j"] == pytest.approx(references[0] * rec["duration_s"], rel=1e-3)
    assert references[0] == pytest.approx(2400.0, rel=0.03)
    # About 500 W at the meter (~490 W of IT) for the 3 s hold and half of it over the ramp
    # and the recovery (~1960 J); the limits rise back slowly after the recovery.
    assert 0.5 * 1960 < rec["it_not_drawn_j"] < 2.0 * 1960
    assert rec["it_not_drawn_j"] == pytest.approx(
        rec["it_reference_j"] - rec["it_drawn_j"], abs=0.2)
    assert rec["meter_not_drawn_j"] > rec["it_not_drawn_j"]
    check, events = read_trail([audit])
    assert check.intact
    (ev,) = [e for e in events if e.event_id == "dr1"]
    assert ev.source == "tier 2" and ev.energy is not None and ev.why_ended == "done"
    assert ev.start_s == rec["started_at"] and ev.end_s == rec["ended_at"]
    states = [r["fields"]["to"] for r in records
              if r["kind"] == "dr_state" and r["fields"]["event"] == "dr1"]
    assert states[-1] == "ended" and "active" in states
    assert ev.baseline_w == pytest.approx(references[0], rel=1e-3)
