"""gridtao.hotpath.intake.Intake in virtual time: the real safety island over simulated GPUs (the
real NVML backend code), no broker. Acks are checked as a wire-contract-v1 client sees them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gridtao.clock import VirtualClock
from gridtao.config.agent import FrequencyTrigger, SimConfig
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.hotpath.intake import Intake, Outgoing
from gridtao.products.frequency import FrequencyMonitor, level_key
from gridtao.safety.island import Activation, SafetyIsland
from gridtao.telemetry.metrics import Metrics
from gridtao.wire import messages as wire

W = 1000  # mW per W
DEMAND_W = (600, 500, 650, 450)
BASELINE_MW = sum(DEMAND_W) * W
MIN_MW, DEFAULT_MW = 200 * W, 700 * W  # H100 SXM profile
RATE_PER_S = 0.2
MAX_PAYLOAD = 4096
SET = "nvmlDeviceSetPowerManagementLimit"
TOPICS = wire.Topics("gridtao/test-intake", "node-a")
TRIGGERS = (
    FrequencyTrigger(hz=49.7, reduction_fraction=0.1, min_hold_s=1.0, recovery_s=0.5),
    FrequencyTrigger(hz=49.5, reduction_fraction=0.3, min_hold_s=1.0, recovery_s=0.5),
)


@dataclass
class Rig:
    clock: VirtualClock
    sim: SimNvml
    backend: NvmlBackend
    island: SafetyIsland
    intake: Intake
    registry: CollectorRegistry
    activations: list[Activation] = field(default_factory=list)

    def close(self) -> None:
        self.island.close()
        self.backend.close()

    def limits(self) -> list[int]:
        return [self.backend.enforced_limit_mw(i) for i in range(len(DEMAND_W))]

    def sets(self) -> int:
        return self.sim.call_count(SET)

    def count(self, topic: str, result: str) -> float:
        value = self.registry.get_sample_value(
            "gridtao_messages_total", {"topic": topic, "result": result}
        )
        return value or 0.0

    def send(self, topic: str, payload: bytes | dict[str, object]) -> list[Outgoing]:
        raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        return self.intake.on_message(
            topic, raw, received_at=self.clock.now(), received_wall=self.clock.wall()
        )

    def dispatch(self, payload: bytes | dict[str, object]) -> dict[str, object]:
        out = self.send(TOPICS.dispatch, payload)
        assert len(out) == 1, out
        assert out[0].topic == TOPICS.ack and out[0].qos == 1 and not out[0].retain
        ack: dict[str, object] = json.loads(out[0].payload)
        return ack

    def frequency(self, hz: float) -> list[Outgoing]:
        return self.send(TOPICS.frequency, {"t": self.clock.wall(), "hz": hz})

    def advance(self, seconds: float, step_s: float = 0.05) -> list[dict[str, Any]]:
        """Let virtual time pass with the island ticking as tier 1 would; the acks the
        intake's ticks published meanwhile."""
        out: list[dict[str, Any]] = []
        t_end = self.clock.now() + seconds
        while self.clock.now() < t_end - 1e-9:
            self.clock.advance(min(step_s, t_end - self.clock.now()))
            self.island.tick()
            out += [json.loads(o.payload) for o in self.intake.on_tick()]
        return out


def _make_rig(*, max_event_s: float = 600.0) -> Rig:
    clock = VirtualClock(100.0)
    cfg = SimConfig(
        count=len(DEMAND_W), noise_w=0.0, set_latency_ms=0.0, read_latency_ms=0.0, seed=3
    )
    sim = SimNvml.from_config(cfg, clock)
    for i, w in enumerate(DEMAND_W):
        sim.set_demand_w(i, w)
    clock.advance(2.0)  # draw settles at the demand
    backend = NvmlBackend(sim)
    island = SafetyIsland(
        backend, clock=clock, release_rate_per_s=RATE_PER_S, max_event_s=max_event_s
    )
    island.start()
    island.update_draw([backend.instant_power_mw(i) for i in range(len(DEMAND_W))])
    for trig in TRIGGERS:
        island.arm(level_key(trig), 1.0 - trig.reduction_fraction)
    registry = CollectorRegistry()
    activations: list[Activation] = []
    intake = Intake(
        island,
        TOPICS,
        clock=clock,
        monitor=FrequencyMonitor(TRIGGERS),
        max_payload_bytes=MAX_PAYLOAD,
        metrics=Metrics(registry),
        on_activation=activations.append,
    )
    return Rig(clock, sim, backend, island, intake, registry, activations)


def open_rig() -> Iterator[Rig]:
    """The ``rig`` fixture's body; other modules register it as theirs with
    ``pytest.fixture(open_rig, name="rig")``."""
    r = _make_rig()
    try:
        yield r
    finally:
        r.close()


rig_fixture = pytest.fixture(open_rig, name="rig")


def _shed(event_id: str, fraction: float = 0.3, duration_s: float = 60.0) -> dict[str, object]:
    return {"id": event_id, "kind": "shed", "fraction": fraction, "duration_s": duration_s,
            "issued_at": 1_763_900_000.0}


def _in_envelope(limits: list[int]) -> bool:
    return all(MIN_MW <= x <= DEFAULT_MW for x in limits)


# ---------------------------------------------------------------- frequency


def test_frequency_at_the_armed_level_writes_caps_and_acks(rig: Rig) -> None:
    assert rig.frequency(49.8) == []
    assert rig.limits() == [DEFAULT_MW] * 4
    t_recv = rig.clock.wall()
    out = rig.frequency(49.7)
    assert len(out) == 1 and out[0].topic == TOPICS.ack
    ack = json.loads(out[0].payload)
    assert ack["accepted"] is True and ack["reason"] is None
    assert ack["id"].startswith("ffr-49.70-")
    assert ack["received_at"] == t_recv <= ack["commanded_at"]
    assert ack["reached_at"] is None
    assert ack["source"] == "frequency" and ack["hz"] == 49.7
    limits = rig.limits()
    assert _in_envelope(limits)
    assert sum(limits) == pytest.approx(0.9 * BASELINE_MW, abs=4 * W)
    assert all(lim < DEFAULT_MW for lim in limits)
    assert [a.event_id for a in rig.activations] == [ack["id"]]
    assert rig.intake.active_events == [ack["id"]]
    assert rig.count("frequency", "accepted") == 2
    assert rig.registry.get_sample_value("gridtao_trigger_to_command_seconds_count") == 1


def test_frequency_event_is_not_retriggered_then_recovers_and_ramps_out(rig: Rig) -> None:
    (first,) = rig.frequency(49.65)
    event_id = json.loads(first.payload)["id"]
    sets = rig.sets()
    for _ in range(5):
        rig.advance(0.1)
        assert rig.frequency(49.62) == []  # still below: no new event, no new writes
    assert rig.sets() == sets
    assert rig.intake.active_events == [event_id]
    # Back to nominal: released after recovery_s (0.5 s) and min_hold_s (1 s) both elapsed.
    rig.frequency(50.0)
    rig.advance(0.45)
    assert not rig.island.view().releasing
    rig.advance(0.1)
    view = rig.island.view()
    assert view.event_id == event_id and view.releasing
    assert rig.intake.active_events == []
    rig.advance(2.0 / RATE_PER_S + 0.1)  # ramp, then the tail to the resting limits
    assert rig.island.view().event_id is None
    assert rig.limits() == [DEFAULT_MW] * 4


def test_deeper_level_fires_its_own_deeper_cut(rig: Rig) -> None:
    rig.frequency(49.65)
    shallow = rig.limits()
    (deep_ack,) = rig.frequency(49.45)
    assert json.loads(deep_ack.payload)["id"].startswith("ffr-49.50-")
    deep = rig.limits()
    assert sum(deep) == pytest.approx(0.7 * BASELINE_MW, abs=4 * W)
    assert all(d <= s for d, s in zip(deep, shallow, strict=True))
    assert len(rig.intake.active_events) == 2


def test_bad_frequency_samples_are_counted_never_acked_or_acted_on(rig: Rig) -> None:
    sets = rig.sets()
    for payload in (b"{", b'{"t": 1, "hz": NaN}', b'{"t": 1, "hz": 30}', b'{"hz": 49.1}'):
        assert rig.send(TOPICS.frequency, payload) == []
    assert rig.count("frequency", "rejected") == 4
    assert rig.sets() == sets and rig.island.view().event_id is None


def test_unarmed_level_fires_nothing() -> None:
    r = _make_rig()
    try:
        r.island.disarm(level_key(TRIGGERS[0]))
        sets = r.sets()
        assert r.frequency(49.65) == []
        assert r.sets() == sets and r.intake.active_events == []
    finally:
        r.island.close()
        r.backend.close()


def test_unknown_topic_is_ignored(rig: Rig) -> None:
    assert rig.send("gridtao/test-intake/other", _shed("x")) == []
    assert rig.island.view().event_id is None


# ---------------------------------------------------------------- dispatch


def test_shed_cuts_by_the_fraction_of_draw(rig: Rig) -> None:
    t_recv = rig.clock.wall()
    ack = rig.dispatch(_shed("s1", fraction=0.3))
    assert ack == {
        "id": "s1", "accepted": True, "reason": None, "received_at": t_recv,
        "commanded_at": ack["commanded_at"], "reached_at": None,
    }
    assert isinstance(ack["commanded_at"], float) and ack["commanded_at"] >= t_recv
    limits = rig.limits()
    assert _in_envelope(limits)
    assert sum(limits) == pytest.approx(0.7 * BASELINE_MW, abs=4 * W)
    (act,) = rig.activations
    assert act.kind == "shed" and act.target_mw == pytest.approx(0.7 * BASELINE_MW)
    assert rig.count("dispatch", "accepted") == 1


def test_cap_holds_the_node_at_node_w(rig: Rig) -> None:
    ack = rig.dispatch({"id": "c1", "kind": "cap", "node_w": 1500, "duration_s": 30})
    assert ack["accepted"] is True
    limits = rig.limits()
    assert _in_envelope(limits)
    assert sum(limits) == pytest.approx(1500 * W, abs=4 * W)
    assert rig.island.view().ceiling_total_mw == pytest.approx(1500 * W, abs=4 * W)


def test_a_dispatch_naming_this_node_is_acted_on(rig: Rig) -> None:
    ack = rig.dispatch({"id": "c1", "kind": "cap", "node_w": 1500, "duration_s": 30,
                        "node": TOPICS.node})
    assert ack["accepted"] is True
    assert sum(rig.limits()) == pytest.approx(1500 * W, abs=4 * W)
    refused = rig.dispatch({"id": "c2", "kind": "cap", "node_w": 1200, "duration_s": 30,
                            "node": "node-b"})
    assert refused["accepted"] is False
    assert refused["reason"] == "addressed to node 'node-b', not this node ('node-a')"


def test_duration_ends_the_event_through_the_ramp(rig: Rig) -> None:
    rig.dispatch(_shed("d1", fraction=0.5, duration_s=2.0))
    rig.advance(1.9)
    assert not rig.island.view().releasing
    rig.advance(0.15)
    view = rig.island.view()
    assert view.event_id == "d1" and view.releasing
    assert view.target_mw is not None and view.target_mw < 0.55 * BASELINE_MW  # no jump
    rig.advance(2.0 / RATE_PER_S + 0.1)  # ramp, then the tail to the resting limits
    assert rig.island.view().event_id is None
    assert rig.limits() == [DEFAULT_MW] * 4


def test_release_ramps_out_at_the_release_rate(rig: Rig) -> None:
    rig.dispatch(_shed("r1", fraction=0.5))
    target_mw = 0.5 * BASELINE_MW
    reduction_mw = BASELINE_MW - target_mw
    rig.advance(3.0)
    ack = rig.dispatch({"id": "r1-end", "kind": "release", "ref": "r1"})
    assert ack["accepted"] is True and ack["id"] == "r1-end"
    t_release = rig.clock.now()
    assert rig.intake.active_events == []
    seen: list[tuple[float, float, float]] = []
    while rig.island.view().event_id == "r1":
        view = rig.island.view()
        assert view.target_mw is not None and view.ceiling_total_mw is not None
        seen.append((rig.clock.now() - t_release, view.target_mw, view.ceiling_total_mw))
        rig.advance(0.25)
    assert len(seen) >= int(1.0 / RATE_PER_S / 0.25) - 1
    rate_mw = RATE_PER_S * reduction_mw  # W/s, the ramp's and the tail's
    for dt, tgt, ceiling in seen:
        expected = target_mw + rate_mw * dt  # on past the baseline: the tail
        assert tgt == pytest.approx(expected, rel=1e-6)
        assert ceiling <= expected + 4 * W  # the ceiling rises no faster than the target
        assert ceiling <= 4 * DEFAULT_MW  # and never above the resting limits
    ended_after_s = rig.clock.now() - t_release
    tail_s = (4 * DEFAULT_MW - BASELINE_MW) / rate_mw
    assert 1.0 / RATE_PER_S + tail_s <= ended_after_s <= 1.0 / RATE_PER_S + tail_s + 0.3
    assert rig.limits() == [DEFAULT_MW] * 4


def test_release_of_an_unknown_event_is_rejected(rig: Rig) -> None:
    ack = rig.dispatch({"id": "x-end", "kind": "release", "ref": "nope"})
    assert ack["accepted"] is False and "nope" in str(ack["reason"])
    assert rig.count("dispatch", "rejected") == 1


def test_write_failures_are_named_in_an_accepted_ack(rig: Rig) -> None:
    rig.sim.inject_fault(1, "no_permission")
    ack = rig.dispatch(_shed("f1", fraction=0.3))
    assert ack["accepted"] is True
    assert "gpu 1" in str(ack["reason"])
    limits = rig.limits()
    assert limits[1] == DEFAULT_MW  # the failed one
    assert all(lim < DEFAULT_MW for k, lim in enumerate(limits) if k != 1)


# ---------------------------------------------------------------- rejections

BIG = "x" * (MAX_PAYLOAD + 1)
REJECTED: dict[str, tuple[bytes, str | None]] = {
    "bad-json": (b'{"id": "j1", "kind": "shed", ', None),
    "not-utf8": (b'{"id": "\xff\xfe"}', None),
    "array": (b'[{"id": "a1"}]', None),
    "fraction-string": (b'{"id":"t1","kind":"shed","fraction":"0.3","duration_s":5}', "t1"),
    "duration-bool": (b'{"id":"t2","kind":"shed","fraction":0.3,"duration_s":true}', "t2"),
    "id-number": (b'{"id":5,"kind":"shed","fraction":0.3,"duration_s":5}', None),
    "kind-number": (b'{"id":"t3","kind":3,"fraction":0.3,"duration_s":5}', "t3"),
    "fraction-nan": (b'{"id":"n1","kind":"shed","fraction":NaN,"duration_s":5}', None),
    "node-w-inf": (b'{"id":"n2","kind":"cap","node_w":Infinity,"duration_s":5}', None),
    "duration-1e999": (b'{"id":"n3","kind":"shed","fraction":0.3,"duration_s":1e999}', "n3"),
    "fraction-zero": (b'{"id":"o1","kind":"shed","fraction":0,"duration_s":5}', "o1"),
    "fraction-over-one": (b'{"id":"o2","kind":"shed","fraction":1.5,"duration_s":5}', "o2"),
    "fraction-negative": (b'{"id":"o3","kind":"shed","fraction":-0.2,"duration_s":5}', "o3"),
    "watts-negative": (b'{"id":"w1","kind":"cap","node_w":-100,"duration_s":5}', "w1"),
    "watts-zero": (b'{"id":"w2","kind":"cap","node_w":0,"duration_s":5}', "w2"),
    "watts-huge": (b'{"id":"w3","kind":"cap","node_w":1e12,"duration_s":5}', "w3"),
    "duration-negative": (b'{"id":"u1","kind":"cap","node_w":900,"duration_s":-1}', "u1"),
    "unknown-kind": (b'{"id":"k1","kind":"boost","fraction":0.3,"duration_s":5}', "k1"),
    "missing-kind": (b'{"id":"k2","fraction":0.3,"duration_s":5}', "k2"),
    "missing-id": (b'{"kind":"shed","fraction":0.3,"duration_s":5}', None),
    "empty-id": (b'{"id":"","kind":"shed","fraction":0.3,"duration_s":5}', ""),
    "missing-fraction": (b'{"id":"m1","kind":"shed","duration_s":5}', "m1"),
    "missing-duration": (b'{"id":"m2","kind":"cap","node_w":900}', "m2"),
    "release-no-ref": (b'{"id":"m3","kind":"release"}', "m3"),
    # A body bound to another node (its signature covers the name) replayed to this one.
    "another-node": (b'{"id":"n1","kind":"cap","node_w":900,"duration_s":5,"node":"node-b"}',
                     "n1"),
    "node-not-an-id": (b'{"id":"n2","kind":"cap","node_w":900,"duration_s":5,"node":7}', "n2"),
    "oversize": (
        json.dumps({"id": "big", "kind": "shed", "fraction": 0.3, "duration_s": 5,
                    "pad": BIG}).encode(),
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_dispatch_acks_with_a_reason_and_changes_nothing(rig: Rig, case: str) -> None:
    payload, event_id = REJECTED[case]
    before = rig.limits()
    sets = rig.sets()
    generation = rig.island.view().generation
    ack = rig.dispatch(payload)
    assert ack["accepted"] is False
    assert isinstance(ack["reason"], str) and ack["reason"]
    assert ack["id"] == event_id
    assert ack["commanded_at"] is None and ack["reached_at"] is None
    assert rig.count("dispatch", "rejected") == 1
    assert rig.count("dispatch", "accepted") == 0
    assert rig.sets() == sets and rig.limits() == before
    assert rig.island.view().generation == generation
    assert rig.island.view().event_id is None and rig.activations == []


def test_rejected_id_can_be_sent_again_correctly(rig: Rig) -> None:
    assert rig.dispatch(REJECTED["fraction-over-one"][0])["accepted"] is False
    assert rig.dispatch(_shed("o2", fraction=0.2))["accepted"] is True


# ---------------------------------------------------------------- idempotency


def test_duplicate_id_is_acted_on_once_and_the_same_ack_resent(rig: Rig) -> None:
    (first,) = rig.send(TOPICS.dispatch, _shed("dup", fraction=0.3))
    limits, sets = rig.limits(), rig.sets()
    generation = rig.island.view().generation
    rig.advance(0.5)
    (again,) = rig.send(TOPICS.dispatch, _shed("dup", fraction=0.3))
    # Same id, different body: not the same request; refused, and the first event stands.
    (changed,) = rig.send(TOPICS.dispatch, _shed("dup", fraction=0.9))
    assert again.payload == first.payload
    assert json.loads(changed.payload)["accepted"] is False
    assert rig.limits() == limits and rig.sets() == sets
    assert rig.island.view().generation == generation
    assert len(rig.activations) == 1
    assert rig.count("dispatch", "accepted") == 1
    assert rig.count("dispatch", "duplicate") == 1
    assert rig.count("dispatch", "rejected") == 1


def test_duplicate_after_the_event_ended_does_not_restart_it(rig: Rig) -> None:
    (first,) = rig.send(TOPICS.dispatch, _shed("once", fraction=0.3, duration_s=1.0))
    rig.advance(1.0 + 2.0 / RATE_PER_S + 0.2)  # ramp and tail
    assert rig.island.view().event_id is None
    sets = rig.sets()
    (again,) = rig.send(TOPICS.dispatch, _shed("once", fraction=0.3, duration_s=1.0))
    assert again.payload == first.payload
    assert rig.island.view().event_id is None and rig.sets() == sets


def test_duplicate_release_is_idempotent(rig: Rig) -> None:
    rig.dispatch(_shed("e", fraction=0.4))
    rig.advance(1.0)
    release: dict[str, object] = {"id": "e-end", "kind": "release", "ref": "e"}
    first = rig.dispatch(release)
    rig.advance(1.0)
    target = rig.island.view().target_mw
    assert rig.dispatch(release) == first
    assert rig.island.view().target_mw == target  # the ramp was not restarted
    assert rig.count("dispatch", "duplicate") == 1


# ---------------------------------------------------------------- second ack, expiry


def test_reached_ack_repeats_the_times_and_adds_reached_at(rig: Rig) -> None:
    first = rig.dispatch(_shed("ra", fraction=0.3))
    rig.advance(0.2)
    out = rig.intake.reached_ack("ra", rig.clock.wall())
    assert out is not None and out.topic == TOPICS.ack
    second = json.loads(out.payload)
    assert second["id"] == "ra" and second["accepted"] is True
    assert second["received_at"] == first["received_at"]
    assert second["commanded_at"] == first["commanded_at"]
    assert second["reached_at"] == pytest.approx(rig.clock.wall())
    assert rig.intake.reached_ack("no-such-event", rig.clock.wall()) is None
    assert rig.intake.activation_time("ra") is not None


def test_once_reached_every_later_ack_says_so(rig: Rig) -> None:
    """A duplicate after the target was reached, and the ack of the event's end at stop,
    carry ``reached_at``: an aggregator reading the latest ack never loses the proof."""
    rig.dispatch(_shed("rb", fraction=0.3))
    rig.advance(0.2)
    reached = rig.clock.wall()
    out = rig.intake.reached_ack("rb", reached, 3456.78)
    assert out is not None and json.loads(out.payload)["reached_power_w"] == 3456.8
    rig.advance(0.5)
    again = rig.dispatch(_shed("rb", fraction=0.3))
    assert again["reached_at"] == pytest.approx(reached) and again["reached_power_w"] == 3456.8
    (ended,) = [json.loads(o.payload) for o in rig.intake.end_all("the agent stopped")]
    assert ended["id"] == "rb" and ended["ended_at"] is not None
    assert ended["reached_at"] == pytest.approx(reached) and ended["reached_power_w"] == 3456.8


def test_island_expiry_clears_the_intakes_record() -> None:
    r = _make_rig(max_event_s=10.0)
    try:
        r.dispatch(_shed("long", fraction=0.3, duration_s=3600))
        r.advance(10.1)
        assert r.island.view().releasing
        # The ramp, then the tail up to the resting limits at the same rate.
        tail_s = (4 * DEFAULT_MW - BASELINE_MW) / (RATE_PER_S * 0.3 * BASELINE_MW)
        acks = r.advance(1.0 / RATE_PER_S + tail_s + 0.1)
        assert r.island.view().event_id is None
        assert r.intake.active_events == []
        # The sender is told its event ended early, and why.
        (ended,) = acks
        assert ended["id"] == "long" and ended["accepted"] is True
        assert "safety.max_event_s" in ended["reason"]
        assert r.clock.wall() - 0.2 <= ended["ended_at"] <= r.clock.wall()
        assert r.limits() == [DEFAULT_MW] * 4
        ack = r.dispatch({"id": "late", "kind": "release", "ref": "long"})
        assert ack["accepted"] is False
    finally:
        r.island.close()
        r.backend.close()


@pytest.mark.parametrize("t", [0.0, 1e18, -1.0])
def test_a_sample_dated_far_from_the_node_clock_never_acts(t: float) -> None:
    rig = _make_rig()
    intake = Intake(rig.island, TOPICS, clock=rig.clock, monitor=FrequencyMonitor(TRIGGERS),
                    max_payload_bytes=MAX_PAYLOAD, metrics=Metrics(CollectorRegistry()),
                    max_sample_skew_s=5.0)
    try:
        out = intake.on_message(TOPICS.frequency, json.dumps({"t": t, "hz": 49.0}).encode(),
                                received_at=rig.clock.now(), received_wall=rig.clock.wall())
        assert out == [] and rig.island.view().event_id is None
        fresh = intake.on_message(
            TOPICS.frequency, json.dumps({"t": rig.clock.wall() - 1.0, "hz": 49.0}).encode(),
            received_at=rig.clock.now(), received_wall=rig.clock.wall())
        assert fresh and rig.island.view().event_id is not None  # a current sample still acts
    finally:
        rig.close()


def test_an_event_held_again_after_a_crash_is_acked_when_its_shortened_hold_ends(
        rig: Rig) -> None:
    """Its sender was told the duration it asked (say 120 s); recovery holds it for at most
    journal.max_capped_after_crash_s, so its end is said, with the reason."""
    act = rig.island.trigger_cap("k1", 2000.0)
    wall = rig.clock.wall()
    rig.intake.adopt("k1", "shed", ends_at=rig.clock.now() + 1.0, received_wall=wall - 30.0,
                     commanded_wall=act.commanded_wall)
    acks = rig.advance(1.2)
    (ended,) = [a for a in acks if a.get("id") == "k1"]
    assert ended["accepted"] is True and ended["ended_at"] is not None
    assert ended["recovered"] is True and "after the agent's restart" in ended["reason"]
