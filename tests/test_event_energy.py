"""The per-event energy ledger (gridtao/records/energy.py): energy drawn during an event against
the simulator's true power, the counter's resets and GPUs without one, the reference and the
meter through the facility model; and end to end, a shed's ``event_energy`` audit record.

The unit tests run in virtual time on in-process simulated GPUs, reading the counters every
0.5 s as the read-back thread does, and integrate the simulator's true power themselves in
5 ms steps (midpoint rule) as the reference.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker
from nodes import node_config, running, steady_sim
from prometheus_client import CollectorRegistry
from waiting import wait_until

from gridtao.clock import MonotonicClock, VirtualClock
from gridtao.config.agent import SimConfig
from gridtao.control.tier2.facility import FacilityModel
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.records.audit_verify import read_records
from gridtao.records.energy import EventEnergy
from gridtao.telemetry.collectors import EventEnergyCollector

WAIT_S = 15.0  # s: for a real agent's acks

N = 2
ROUND_S = 0.5
STEP_S = 0.005
FACILITY = FacilityModel(losses_fraction=0.05, cop=4.0, cooling_tau_s=60.0, fixed_w=100.0)
# Counters as read in a round: (monotonic s, per-GPU mJ or None) -> what the ledger is fed.
Tamper = Callable[[float, list[int | None]], list[int | None]]


class _Run:
    """Simulated GPUs in virtual time, an :class:`EventEnergy` fed every :data:`ROUND_S`, and
    the true energy integrated alongside."""

    def __init__(self, workload: str = "training", *, tamper: Tamper | None = None,
                 demand_w: float | None = None) -> None:
        self.clock = VirtualClock()
        self.sim = SimNvml.from_config(SimConfig(
            count=N, workload=workload,  # type: ignore[arg-type]
            noise_w=0.0, set_latency_ms=0.0, read_latency_ms=0.0, device=None), self.clock)
        if demand_w is not None:
            for i in range(N):
                self.sim.set_demand_w(i, demand_w)
        self.backend = NvmlBackend(self.sim)
        self.records: list[Mapping[str, object]] = []
        self.ledger = EventEnergy(FACILITY, N, on_event=self.records.append)
        self.tamper = tamper
        self.true_j = 0.0  # the integral of the true node power since the start
        self._next_round = 0.0
        self._read()

    def _read(self) -> None:
        t = self.clock.now()
        mj: list[int | None] = [self.backend.energy_mj(i) for i in range(N)]
        if self.tamper is not None:
            mj = self.tamper(t, mj)
        self.ledger.feed(t, mj, [float(self.backend.instant_power_mw(i)) for i in range(N)])

    def run_until(self, t_s: float) -> None:
        """Advance to ``t_s`` in steps, integrating true power, reading every round."""
        while self.clock.now() < t_s - 1e-9:
            dt = min(STEP_S, t_s - self.clock.now())
            self.clock.advance(dt / 2)
            self.true_j += sum(self.sim.true_power_mw(i) for i in range(N)) / 1000.0 * dt
            self.clock.advance(dt / 2)
            if self.clock.now() >= self._next_round + ROUND_S - 1e-9:
                self._next_round += ROUND_S
                self._read()

    def event(self, t0: float, t1: float, baseline_w: float, *,
              during: Callable[[], None] | None = None) -> tuple[Mapping[str, object], float]:
        """An event from ``t0`` to ``t1`` (``during`` runs half way through); its record and
        the true energy drawn over it."""
        self.run_until(t0)
        before = self.true_j
        self.ledger.event_started("e1", "shed", t0_s=t0, wall0_s=self.clock.wall(),
                                  baseline_mw=baseline_w * 1000.0)
        if during is not None:
            self.run_until((t0 + t1) / 2)
            during()
        self.run_until(t1)
        drawn = self.true_j - before
        self.ledger.event_ended("e1", t1_s=t1, wall1_s=self.clock.wall())
        assert self.records == []  # not before a round after the end
        self.run_until(t1 + 3 * ROUND_S)
        (record,) = self.records
        return record, drawn


def _f(record: Mapping[str, object], key: str) -> float:
    value = record[key]
    assert isinstance(value, (int, float))
    return float(value)


def test_drawn_energy_is_the_integral_of_true_power_within_one_percent() -> None:
    """A training workload (its draw swings with the iterations), capped half way through;
    the event starts and ends between rounds."""
    run = _Run()

    def cap() -> None:
        for i in range(N):
            run.backend.set_limit_mw(i, 350_000)

    record, true_j = run.event(3.2, 18.7, baseline_w=1400.0, during=cap)
    assert record["method"] == "counter"
    assert record["duration_s"] == pytest.approx(15.5)
    assert _f(record, "it_drawn_j") == pytest.approx(true_j, rel=0.01)
    assert record["event"] == "e1" and record["kind"] == "shed"
    assert _f(record, "ended_at") - _f(record, "started_at") == pytest.approx(15.5)


def test_a_counter_that_goes_back_falls_back_to_power_for_that_round() -> None:
    """A driver reload at t = 9.1 s: GPU 0's counter restarts near zero."""
    def reload(t: float, mj: list[int | None]) -> list[int | None]:
        offset = mj[0]
        assert offset is not None
        return [offset - 10**9 if t >= 9.1 else offset, *mj[1:]]

    run = _Run("inference", tamper=reload)
    record, true_j = run.event(2.0, 16.0, baseline_w=1400.0)
    assert record["method"] == "mixed"  # that round's GPU 0 from power, the rest counters
    assert _f(record, "it_drawn_j") == pytest.approx(true_j, rel=0.01)


def test_a_counter_that_wraps_through_2_64_is_counted_through_the_wrap() -> None:
    """GPU 0 (drawing 600 W) has its counter offset to pass 2^64 (NVML's unsigned 64-bit mJ)
    9 s after the first reading: every round is still measured by counter, within 1 % of the
    true energy."""
    top = 1 << 64
    first: list[int] = []
    seen: list[int] = []

    def near_top(t: float, mj: list[int | None]) -> list[int | None]:
        value = mj[0]
        assert value is not None
        first[:] = first or [value]
        seen.append((value - first[0] + top - 9 * 600_000) % top)
        return [seen[-1], *mj[1:]]

    run = _Run(tamper=near_top, demand_w=600.0)
    record, true_j = run.event(2.0, 16.0, baseline_w=1400.0)
    assert any(b < a for a, b in itertools.pairwise(seen))  # it wrapped
    assert record["method"] == "counter"
    assert _f(record, "it_drawn_j") == pytest.approx(true_j, rel=0.01)


def test_gpus_without_a_counter_are_integrated_from_power() -> None:
    """Power read twice a second integrates a steady draw, capped half way, within 1 %; an
    inference load's bursts between the readings within 5 % (the counter's 1 % needs a
    counter)."""
    def none(t: float, mj: list[int | None]) -> list[int | None]:
        return [None, *mj[1:]]

    def neither(t: float, mj: list[int | None]) -> list[int | None]:
        return [None] * N

    for tamper, method in ((none, "mixed"), (neither, "power")):
        run = _Run(tamper=tamper, demand_w=600.0)

        def cap(run: _Run = run) -> None:
            for i in range(N):
                run.backend.set_limit_mw(i, 400_000)

        record, true_j = run.event(1.3, 13.8, baseline_w=1400.0, during=cap)
        assert record["method"] == method
        assert _f(record, "it_drawn_j") == pytest.approx(true_j, rel=0.01)
        assert _f(record, "it_drawn_j") < 0.9 * 1200.0 * 12.5  # the cap shows
        bursty = _Run("inference", tamper=tamper)
        record, true_j = bursty.event(1.3, 13.8, baseline_w=1400.0)
        assert record["method"] == method
        assert _f(record, "it_drawn_j") == pytest.approx(true_j, rel=0.05)


def test_not_drawn_is_the_reference_less_the_drawn_at_the_gpus_and_at_the_meter() -> None:
    """Steady draw P below a reference R for D s: at the meter, losses follow at once and
    cooling falls from R/COP toward P/COP through its lag (closed form)."""
    run = _Run(demand_w=300.0)
    registry = CollectorRegistry()
    EventEnergyCollector(run.ledger.not_drawn_j, registry=registry)
    p_w, r_w, d_s = N * 300.0, 1000.0, 40.0
    record, true_j = run.event(5.0, 5.0 + d_s, baseline_w=r_w)
    assert _f(record, "it_drawn_j") == pytest.approx(p_w * d_s, rel=0.005)
    assert _f(record, "it_drawn_j") == pytest.approx(true_j, rel=0.01)
    assert _f(record, "it_reference_j") == pytest.approx(r_w * d_s)
    assert _f(record, "it_not_drawn_j") == pytest.approx(
        _f(record, "it_reference_j") - _f(record, "it_drawn_j"), abs=0.2)
    tau, cop = FACILITY.cooling_tau_s, FACILITY.cop
    cooling_j = p_w / cop * d_s + (r_w - p_w) / cop * tau * (1 - math.exp(-d_s / tau))
    meter_j = (p_w * FACILITY.losses_factor + FACILITY.fixed_w) * d_s + cooling_j
    assert _f(record, "meter_drawn_j") == pytest.approx(meter_j, rel=0.005)
    meter_reference_j = FACILITY.steady_meter_w(r_w) * d_s
    assert _f(record, "meter_not_drawn_j") == pytest.approx(meter_reference_j - meter_j,
                                                            rel=0.01)
    # More is saved at the meter than at the GPUs (losses, and the cooling shed so far).
    assert _f(record, "meter_not_drawn_j") > _f(record, "it_not_drawn_j") * 1.05
    for at, key in (("it", "it_not_drawn_j"), ("meter", "meter_not_drawn_j")):
        assert registry.get_sample_value("gridtao_event_energy_not_drawn_joules_total",
                                         {"at": at}) == pytest.approx(_f(record, key), abs=0.1)


def test_an_event_that_drew_more_than_its_reference_adds_nothing_to_the_counter() -> None:
    run = _Run("inference")
    record, _ = run.event(1.0, 11.0, baseline_w=10.0)  # far below the real draw
    assert _f(record, "it_not_drawn_j") < 0
    assert run.ledger.not_drawn_j() == (0.0, 0.0)


def test_a_start_and_an_end_handed_over_after_later_rounds_are_still_exact() -> None:
    """Two GPUs at exactly 1000 W each (counters +500 J a round): the lane may hand an event's
    start or end over after the read-back thread has already fed rounds past it."""
    records: list[Mapping[str, object]] = []
    ledger = EventEnergy(FACILITY, N, on_event=records.append)

    def feed(k: int) -> None:
        ledger.feed(k * ROUND_S, [k * 500_000, 10**12 + k * 500_000], [1e6, 1e6])

    for k in range(8):  # up to t = 3.5 s
        feed(k)
    ledger.event_started("late", "cap", t0_s=2.2, wall0_s=100.0, baseline_mw=3e6)
    for k in range(8, 23):  # up to t = 11 s
        feed(k)
    ledger.event_ended("late", t1_s=10.1, wall1_s=107.9)
    assert records == []
    feed(23)
    (record,) = records
    assert record["duration_s"] == pytest.approx(7.9)
    assert record["method"] == "counter"
    assert _f(record, "it_drawn_j") == pytest.approx(2000.0 * 7.9, abs=0.1)
    assert _f(record, "it_not_drawn_j") == pytest.approx(1000.0 * 7.9, abs=0.1)


def test_overlapping_events_name_each_other_and_the_node_total_counts_each_moment_once() -> None:
    """Two GPUs at exactly 1000 W each against a 3000 W reference: FFR's first level from 2 to
    10 s, its second (deeper, the same baseline) from 4 to 8 s. Each record is its own view, 1000
    W not drawn over its span, and names the other; the node's total counts 2 to 10 s once,
    not the 4 s they share twice. A later event, after a gap, starts a run of its own."""
    records: list[Mapping[str, object]] = []
    ledger = EventEnergy(FACILITY, N, on_event=records.append)

    def feed(k: int) -> None:
        ledger.feed(k * ROUND_S, [k * 500_000, k * 500_000], [1e6, 1e6])

    feed(0)
    for k in range(1, 41):  # 0.5 s rounds up to 20 s
        t = k * ROUND_S
        if t == 2.0:
            ledger.event_started("l1", "frequency", t0_s=2.0, wall0_s=102.0, baseline_mw=3e6)
        if t == 4.0:
            ledger.event_started("l2", "frequency", t0_s=4.0, wall0_s=104.0, baseline_mw=3e6)
        if t == 8.0:
            ledger.event_ended("l2", t1_s=8.0, wall1_s=108.0)
        if t == 10.0:
            ledger.event_ended("l1", t1_s=10.0, wall1_s=110.0)
        if t == 14.0:
            ledger.event_started("s1", "shed", t0_s=14.0, wall0_s=114.0, baseline_mw=3e6)
        if t == 16.0:
            ledger.event_ended("s1", t1_s=16.0, wall1_s=116.0)
        feed(k)
    by_id = {r["event"]: r for r in records}
    assert by_id["l1"]["overlapped"] == ["l2"] and by_id["l2"]["overlapped"] == ["l1"]
    assert "overlapped" not in by_id["s1"]
    assert _f(by_id["l1"], "it_not_drawn_j") == pytest.approx(1000.0 * 8.0, abs=0.1)
    assert _f(by_id["l2"], "it_not_drawn_j") == pytest.approx(1000.0 * 4.0, abs=0.1)
    # 2-10 s and 14-16 s, each once: 1000 W x 10 s, not 1000 W x 14 s.
    assert ledger.not_drawn_j()[0] == pytest.approx(1000.0 * 10.0, abs=0.1)


def test_a_shed_leaves_an_event_energy_record(mqtt_broker_session: MosquittoBroker,
                                              tmp_path: Path) -> None:
    broker = mqtt_broker_session
    cfg = node_config(broker, "energy", "gridtao/e2e-energy", gpus=4,
                      audit=tmp_path / "audit.jsonl", source="<test energy>",
                      safety={"release_rate_per_s": 1.0}, limits={"min_event_interval_s": 0.0})
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(broker, cfg, sim, serve=True, settled_w=600.0) as node:
        node.dispatch({"id": "s1", "kind": "shed", "fraction": 0.3, "duration_s": 4.0})
        records: list[dict[str, Any]] = []

        def recorded() -> bool:
            records[:] = [r for r in node.audit() if r["kind"] == "event_energy"]
            return bool(records)

        wait_until(recorded, "the event_energy record", timeout_s=30.0)
        time.sleep(0.1)
        not_drawn = {at: node.value("gridtao_event_energy_not_drawn_joules_total", at=at)
                     for at in ("it", "meter")}
        started = next(r for r in node.audit() if r["kind"] == "event_started")["fields"]
    (rec,) = records
    f = rec["fields"]
    assert f["event"] == "s1" and f["kind"] == "shed" and f["method"] == "counter"
    # Held 4 s, then the 1 s ramp-out; the island ends it on a tier 1 tick.
    assert 4.5 <= f["duration_s"] <= 8.0
    assert f["ended_at"] - f["started_at"] == pytest.approx(f["duration_s"], abs=0.01)
    assert f["it_reference_j"] == pytest.approx(
        started["baseline_mw"] / 1000.0 * f["duration_s"], rel=1e-3)
    assert f["it_not_drawn_j"] == pytest.approx(f["it_reference_j"] - f["it_drawn_j"], abs=0.2)
    # 30 % of 2400 W for most of the event (tier 1 holds the draw a little under the target;
    # the ramp-out gives some back): between 10 % and half the reference not drawn.
    assert 0.1 * f["it_reference_j"] < f["it_not_drawn_j"] < 0.5 * f["it_reference_j"]
    assert f["meter_not_drawn_j"] > f["it_not_drawn_j"]
    assert f["meter_drawn_j"] > f["it_drawn_j"]
    assert not_drawn == {"it": pytest.approx(f["it_not_drawn_j"], abs=0.1),
                         "meter": pytest.approx(f["meter_not_drawn_j"], abs=0.1)}


def test_an_event_held_at_stop_is_acked_as_ended_and_gets_its_energy_record(
        mqtt_broker_session: MosquittoBroker, tmp_path: Path) -> None:
    broker = mqtt_broker_session
    audit = tmp_path / "audit.jsonl"
    cfg = node_config(broker, "stopping", "gridtao/e2e-stop", gpus=4, audit=audit,
                      source="<test stop>")
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(broker, cfg, sim, serve=True, settled_w=600.0) as node, node.acks() as acks:
        node.dispatch({"id": "long", "kind": "shed", "fraction": 0.3, "duration_s": 120.0})
        acks.wait(1, WAIT_S)
        time.sleep(1.0)  # held a while, then the agent is stopped mid-event
        node.agent.close()

        def ended_ack() -> bool:
            return any(json.loads(m.payload).get("ended_at") is not None
                       for m in list(acks.messages))

        wait_until(ended_ack, "the ack of the event the stop ended", timeout_s=WAIT_S)
        bodies = [json.loads(m.payload) for m in list(acks.messages)]
    ended = next(b for b in bodies if b.get("ended_at") is not None)
    assert ended["id"] == "long" and "the agent stopped" in ended["reason"]
    records = read_records([str(audit)])
    kinds = [(r["kind"], r["fields"].get("event")) for r in records]
    assert ("event_ended", "long") in kinds
    (energy,) = [r["fields"] for r in records if r["kind"] == "event_energy"]
    assert energy["event"] == "long" and 0.9 <= energy["duration_s"] <= 10.0
    assert energy["it_not_drawn_j"] > 0.0
    assert kinds.index(("event_ended", "long")) < kinds.index(("agent_stop", None))


def test_without_audit_or_journal_events_still_end_in_the_energy_counter(
        mqtt_broker_session: MosquittoBroker) -> None:
    """Nothing records decisions (audit and journal off): the energy ledger still hears of each
    event's end, so the not-drawn counter counts it."""
    broker = mqtt_broker_session
    cfg = node_config(broker, "unrecorded", "gridtao/e2e-unrecorded", gpus=4,
                      source="<test unrecorded energy>", journal={"enabled": False},
                      safety={"release_rate_per_s": 1.0}, limits={"min_event_interval_s": 0.0})
    cfg = dataclasses.replace(cfg, audit=dataclasses.replace(cfg.audit, enabled=False))
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(broker, cfg, sim, serve=True, settled_w=600.0) as node:
        assert not node.agent.ledger.active
        node.dispatch({"id": "u1", "kind": "shed", "fraction": 0.3, "duration_s": 2.0})
        wait_until(lambda: node.value("gridtao_event_energy_not_drawn_joules_total",
                                      at="it") > 0.0,
                   "the event's energy not drawn counted", timeout_s=30.0)
        # 30 % of 2400 W for about 2 s, and its ramp-out: about 1.4-2.5 kJ.
        assert 500.0 < node.value("gridtao_event_energy_not_drawn_joules_total", at="it") < 4000.0
