"""Rate and bound limits (gridtao.security.bounds, through the guard and the intake) in virtual
time, over the real safety island and simulated GPUs: a flood or a misconfigured aggregator
cannot hold the GPUs at their minimum, and every refusal is acked with its reason and counted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gridtao.clock import VirtualClock
from gridtao.config.agent import (
    Config,
    ConfigError,
    FrequencyTrigger,
    LimitsConfig,
    SimConfig,
    config_from_mapping,
)
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.hotpath.intake import Intake, Outgoing
from gridtao.hotpath.rejections import RejectionGate
from gridtao.products.frequency import FrequencyMonitor, level_key
from gridtao.safety.island import SafetyIsland
from gridtao.security.bounds import (
    FLOOR,
    IN_FLIGHT,
    INTERVAL,
    MAX_REDUCTION,
    Admitted,
    DispatchBounds,
    Rejection,
    TokenBucket,
)
from gridtao.security.guard import Guard
from gridtao.telemetry.metrics import Metrics
from gridtao.wire import messages as wire

W = 1000
DEMAND_W = (600, 500, 650, 450)  # 2200 W drawn; defaults sum to 2800 W, minimums to 800 W
DEFAULT_TOTAL_MW = 4 * 700 * W
TOPICS = wire.Topics("gridtao/test-limits", "node-l")
TRIGGERS = (FrequencyTrigger(hz=49.5, reduction_fraction=0.3, min_hold_s=1.0, recovery_s=0.5),)


# ---------------------------------------------------------------- token bucket


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(10.4)  # 0.8 token
    assert bucket.take(10.5)  # 1.0 token
    assert not bucket.take(10.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # refills to burst


def test_token_bucket_ignores_time_going_backwards() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    assert bucket.take(5.0)
    assert not bucket.take(4.0)
    assert not bucket.take(5.5)
    assert bucket.take(6.0)


# ---------------------------------------------------------------- bounds, one by one


def _bounds(draw_mw: float = 2_200_000.0, config: LimitsConfig | None = None) -> DispatchBounds:
    return DispatchBounds(config or LimitsConfig(), default_total_mw=DEFAULT_TOTAL_MW,
                          draw_total_mw=lambda: draw_mw)


def _shed(event_id: str, fraction: float, duration_s: float = 60.0) -> wire.ShedDispatch:
    return wire.ShedDispatch(event_id, fraction, duration_s, None)


def _cap(event_id: str, node_w: float, duration_s: float = 60.0) -> wire.CapDispatch:
    return wire.CapDispatch(event_id, node_w, duration_s, None)


def test_a_cut_longer_than_the_island_holds_any_event_is_refused_up_front() -> None:
    """safety.max_event_s tighter than limits.max_event_duration_s: a shed or cap asked for
    longer is refused with the reason (it would be accepted and ended early); a demand-response
    event, which tier 2 runs and the island never holds, is not."""
    b = DispatchBounds(LimitsConfig(), default_total_mw=DEFAULT_TOTAL_MW,
                       draw_total_mw=lambda: 2_200_000.0, island_max_event_s=600.0)
    for msg in (_shed("long", 0.1, duration_s=601.0), _cap("long", 2000.0, duration_s=601.0)):
        verdict = b.check(msg, now_s=0.0, in_flight=0)
        assert isinstance(verdict, Rejection) and verdict.label == "max_duration"
        assert "600 s the safety island holds any event (safety.max_event_s)" in verdict.reason
    assert isinstance(b.check(_shed("ok", 0.1, duration_s=600.0), now_s=0.0, in_flight=0),
                      Admitted)
    dr = wire.DrDispatch("dr", 1800.0, reduction_w=500.0)
    assert not isinstance(b.check(dr, now_s=0.0, in_flight=0), Rejection)


def test_each_bound_refuses_with_its_reason() -> None:
    b = _bounds(config=LimitsConfig(max_reduction_fraction=0.5, min_node_fraction=0.3,
                                    max_event_duration_s=600, max_events_in_flight=2,
                                    min_event_interval_s=5))
    cases: list[tuple[wire.Dispatch, int, str, str]] = [
        (_shed("a", 0.6), 0, MAX_REDUCTION, "fraction 0.6 exceeds the node's "
         "max_reduction_fraction 0.5"),
        (_cap("b", 800), 0, FLOOR, "node_w 800 W is below the node's floor 840 W "
         "(limits.min_node_fraction 0.3 of the default 2800 W)"),
        (_shed("c", 0.3, duration_s=601), 0, "max_duration", "duration_s 601 s exceeds"),
        (_shed("d", 0.3), 2, IN_FLIGHT, "2 events already active (limit 2)"),
    ]
    for msg, in_flight, label, words in cases:
        verdict = b.check(msg, now_s=0.0, in_flight=in_flight)
        assert isinstance(verdict, Rejection), msg
        assert verdict.label == label and words in verdict.reason, verdict
    assert b.check(_cap("ok", 840), now_s=0.0, in_flight=1) == Admitted(None, None)
    b.accepted(_cap("ok", 840), now_s=0.0)
    verdict = b.check(_shed("e", 0.1), now_s=4.0, in_flight=1)
    assert isinstance(verdict, Rejection) and verdict.label == INTERVAL
    assert "last cut accepted 4.000 s ago" in verdict.reason
    assert b.check(_shed("e", 0.1), now_s=5.0, in_flight=1) == Admitted(0.1, None)
    # Releases only give power back: no bound applies.
    release = wire.ReleaseDispatch("r", "ok", None)
    assert b.check(release, now_s=4.0, in_flight=99) == Admitted(None, None)


def test_a_shed_is_stopped_at_the_floor_or_refused_when_nothing_is_left() -> None:
    b = _bounds(draw_mw=1_200_000.0,
                config=LimitsConfig(max_reduction_fraction=0.8, min_node_fraction=0.3))
    verdict = b.check(_shed("s", 0.5), now_s=0.0, in_flight=0)
    assert isinstance(verdict, Admitted) and verdict.fraction is not None
    assert verdict.fraction == pytest.approx(0.3)
    assert verdict.note == "shed limited to 0.300 (asked 0.5) by the node's floor 840 W"
    assert 1_200_000.0 * (1 - verdict.fraction) == pytest.approx(b.floor_mw)
    at_floor = _bounds(draw_mw=840_000.0, config=LimitsConfig(min_node_fraction=0.3))
    refused = at_floor.check(_shed("s", 0.2), now_s=0.0, in_flight=0)
    assert isinstance(refused, Rejection) and refused.label == FLOOR
    assert "already at the floor 840 W" in refused.reason


def test_triggers_deeper_than_the_max_reduction_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_mapping({"limits": {"max_reduction_fraction": 0.2}}, source="c.yaml")
    assert str(e.value) == (
        "c.yaml: safety.triggers[2].reduction_fraction: 0.3 exceeds "
        "limits.max_reduction_fraction 0.2"
    )


# ---------------------------------------------------------------- the intake with its guard


@dataclass
class Rig:
    clock: VirtualClock
    sim: SimNvml
    backend: NvmlBackend
    island: SafetyIsland
    intake: Intake
    registry: CollectorRegistry
    guard: Guard

    def readings(self) -> list[float]:
        return [float(self.backend.instant_power_mw(i)) for i in range(len(DEMAND_W))]

    def limits_mw(self) -> list[int]:
        return [self.backend.enforced_limit_mw(i) for i in range(len(DEMAND_W))]

    def send(self, topic: str, body: dict[str, Any]) -> list[Outgoing]:
        return self.intake.on_message(topic, json.dumps(body).encode(),
                                      received_at=self.clock.now(),
                                      received_wall=self.clock.wall())

    def dispatch(self, body: dict[str, Any]) -> dict[str, Any]:
        (out,) = self.send(TOPICS.dispatch, body)
        ack: dict[str, Any] = json.loads(out.payload)
        return ack

    def advance(self, seconds: float, step_s: float = 0.05) -> None:
        t_end = self.clock.now() + seconds
        while self.clock.now() < t_end - 1e-9:
            self.clock.advance(min(step_s, t_end - self.clock.now()))
            self.island.update_draw(self.readings())  # as tier 1 does
            self.island.tick()
            self.intake.on_tick()

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def make_rig(limits: dict[str, Any] | None = None) -> Rig:
    cfg: Config = config_from_mapping({"limits": limits or {}})
    clock = VirtualClock(100.0)
    sim = SimNvml.from_config(
        SimConfig(count=len(DEMAND_W), noise_w=0.0, set_latency_ms=0.0, read_latency_ms=0.0,
                  seed=5),
        clock,
    )
    for i, w in enumerate(DEMAND_W):
        sim.set_demand_w(i, w)
    clock.advance(2.0)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.5, max_event_s=600.0)
    island.start()
    registry = CollectorRegistry()
    readings = [float(backend.instant_power_mw(i)) for i in range(len(DEMAND_W))]
    island.update_draw(readings)
    for trig in TRIGGERS:
        island.arm(level_key(trig), 1.0 - trig.reduction_fraction)
    basis = island.basis_total_mw
    guard = Guard.from_config(cfg, node_id="node-l",
                              default_total_mw=float(island.envelope.default_total_mw),
                              draw_total_mw=basis, wall=clock.wall, registry=registry)
    guard.open()
    intake = Intake(island, TOPICS, clock=clock, monitor=FrequencyMonitor(TRIGGERS),
                    max_payload_bytes=4096, metrics=Metrics(registry),
                    # Every refusal acked: these tests read each reason (test_flood.py checks
                    # the reject-ack budget itself).
                    guard=guard, rejections=RejectionGate(ack_burst=1_000_000))
    return Rig(clock, sim, backend, island, intake, registry, guard)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = make_rig()
    try:
        yield r
    finally:
        r.guard.close()
        r.island.close()
        r.backend.close()


def _shed_body(event_id: str, fraction: float = 0.8, duration_s: float = 600) -> dict[str, Any]:
    return {"id": event_id, "kind": "shed", "fraction": fraction, "duration_s": duration_s}


def test_a_burst_of_1000_sheds_acts_once_and_never_below_the_floor(rig: Rig) -> None:
    floor_mw = 0.3 * DEFAULT_TOTAL_MW  # the default limits.min_node_fraction
    acks = [rig.dispatch(_shed_body(f"flood-{k}")) for k in range(1000)]
    accepted = [a for a in acks if a["accepted"]]
    assert [a["id"] for a in accepted] == ["flood-0"]
    # The first shed asked 80 % of 2200 W (440 W): stopped at the floor, and said so.
    assert "by the node's floor 840 W" in accepted[0]["reason"]
    # ... and in fields an aggregator can add up: 1360 W delivered of the 1760 W asked.
    assert accepted[0]["deliverable_w"] == pytest.approx(2200 - 840, abs=2)
    assert accepted[0]["shortfall_w"] == pytest.approx(0.8 * 2200 - (2200 - 840), abs=2)
    reasons = [a["reason"] for a in acks[1:]]
    assert sum(r.startswith("rate limit: over 5 dispatch messages/s") for r in reasons) == 980
    assert sum(r.startswith("last cut accepted 0.000 s ago") for r in reasons) == 19
    assert all(a["commanded_at"] is None for a in acks[1:])
    assert rig.value("gridtao_messages_total", topic="dispatch", result="rejected") == 999
    assert rig.value("gridtao_limit_rejections_total", topic="dispatch",
                     reason="rate_limit") == 980
    assert rig.value("gridtao_limit_rejections_total", topic="dispatch",
                     reason="min_interval") == 19
    assert rig.value("gridtao_trigger_to_command_seconds_count") == 1
    view = rig.island.view()
    assert view.target_mw is not None and view.target_mw >= floor_mw - 1
    assert sum(rig.limits_mw()) >= floor_mw - 4 * W  # integer mW rounding per GPU


def test_the_floor_holds_on_the_draw_the_island_cuts_from(rig: Rig) -> None:
    """The bounds judge a shed on tier 1's latest reading; the island cuts from its own basis
    (the draw smoothed over ``control.basis_tau_s``), which may be lower a moment later. The
    floor is applied to the island's basis, and the ack's figures agree with each other."""
    floor_mw = 0.3 * DEFAULT_TOTAL_MW
    basis_mw = [0.9 * float(rig.backend.instant_power_mw(i)) for i in range(len(DEMAND_W))]
    rig.island.update_draw(basis_mw)  # the smoothed basis lags a rising draw
    ack = rig.dispatch(_shed_body("deep", fraction=0.75))
    assert ack["accepted"], ack
    baseline_w = sum(basis_mw) / 1000.0
    view = rig.island.view()
    assert view.target_mw == pytest.approx(floor_mw, abs=1.0)
    assert sum(rig.limits_mw()) >= floor_mw - 4 * W
    assert ack["deliverable_w"] == pytest.approx(baseline_w - 840.0, abs=0.2)
    assert ack["shortfall_w"] == pytest.approx(0.75 * baseline_w - (baseline_w - 840.0), abs=0.2)
    limited = 1.0 - 840.0 / baseline_w
    assert (f"shed limited to {limited:.3f} (asked 0.75) by the node's floor 840 W "
            "(limits.min_node_fraction)") in ack["reason"]
    # The reached ack (and a duplicate's answer after it) keeps the reason: the shortfall
    # does not go away once the node is in its band.
    reached = rig.intake.reached_ack("deep", rig.clock.wall(), 900.0)
    assert reached is not None
    assert json.loads(reached.payload)["reason"] == ack["reason"]


def test_a_shed_when_the_islands_basis_is_at_the_floor_is_refused_and_changes_nothing(
        rig: Rig) -> None:
    """The bounds judge a shed on the draw the island would cut from: a basis already at the
    floor refuses the shed, although tier 1's latest reading is well above it (the cut would
    otherwise take the GPUs down to the floor while the ack said nothing was delivered)."""
    before = rig.limits_mw()
    rig.island.update_draw([175.0 * W] * len(DEMAND_W))  # 700 W: under the 840 W floor
    ack = rig.dispatch(_shed_body("low", fraction=0.5))
    assert ack["accepted"] is False and "already at the floor" in ack["reason"], ack
    assert rig.limits_mw() == before


def test_a_sustained_flood_cuts_at_most_once_per_interval_and_holds_the_floor() -> None:
    rig = make_rig({"min_event_interval_s": 2.0, "max_events_in_flight": 3,
                    "dispatch_rate_per_s": 50, "dispatch_burst": 50})
    floor_mw = 0.3 * DEFAULT_TOTAL_MW
    try:
        accepted: list[str] = []
        lowest_mw = float("inf")
        for k in range(1000):  # 100 messages/s for 10 s, mixing every kind of deep cut
            body: dict[str, Any]
            if k % 3 == 0:
                body = _shed_body(f"s{k}", fraction=0.8)
            elif k % 3 == 1:
                body = {"id": f"c{k}", "kind": "cap", "node_w": 500 + k, "duration_s": 600}
            else:
                body = _shed_body(f"x{k}", fraction=0.95)
            ack = rig.dispatch(body)
            if ack["accepted"]:
                accepted.append(ack["id"])
            rig.advance(0.01, step_s=0.01)
            lowest_mw = min(lowest_mw, sum(rig.limits_mw()))
            view = rig.island.view()
            assert view.target_mw is None or view.target_mw >= floor_mw - 1, k
        # Cuts at t = 0, 2, 4, ... but never more than 3 active at once.
        assert len(accepted) == 3  # t = 0, 2 and 4 s; then max_events_in_flight
        assert lowest_mw >= floor_mw - 4 * W
        assert rig.value("gridtao_limit_rejections_total", topic="dispatch",
                         reason="max_reduction") > 0
        assert rig.value("gridtao_limit_rejections_total", topic="dispatch",
                         reason="in_flight") > 0
    finally:
        rig.guard.close()
        rig.island.close()
        rig.backend.close()


def test_release_is_not_held_back_by_the_interval(rig: Rig) -> None:
    assert rig.dispatch({"id": "c1", "kind": "cap", "node_w": 1500, "duration_s": 60})[
        "accepted"]
    rel = rig.dispatch({"id": "r1", "kind": "release", "ref": "c1"})
    assert rel["accepted"] is True and rel["reason"] is None
    rig.advance(0.5)
    again = rig.dispatch({"id": "c2", "kind": "cap", "node_w": 1500, "duration_s": 60})
    assert again["accepted"] is False and "last cut accepted 0.500 s ago" in again["reason"]
    rig.advance(0.6)
    assert rig.dispatch({"id": "c3", "kind": "cap", "node_w": 1500, "duration_s": 60})[
        "accepted"]


def test_a_duplicate_is_answered_with_its_ack_not_refused_by_the_interval(rig: Rig) -> None:
    first = rig.dispatch({"id": "d1", "kind": "cap", "node_w": 1500, "duration_s": 60})
    again = rig.dispatch({"id": "d1", "kind": "cap", "node_w": 1500, "duration_s": 60})
    assert first == again and first["accepted"] is True
    assert rig.value("gridtao_messages_total", topic="dispatch", result="duplicate") == 1


def test_a_frequency_flood_is_dropped_silently_and_counted(rig: Rig) -> None:
    sets = rig.sim.call_count("nvmlDeviceSetPowerManagementLimit")
    outs = [rig.send(TOPICS.frequency, {"t": rig.clock.wall(), "hz": 50.0}) for _ in range(500)]
    assert all(out == [] for out in outs)
    assert rig.value("gridtao_messages_total", topic="frequency", result="accepted") == 120
    assert rig.value("gridtao_messages_total", topic="frequency", result="rejected") == 380
    assert rig.value("gridtao_limit_rejections_total", topic="frequency",
                     reason="rate_limit") == 380
    assert rig.sim.call_count("nvmlDeviceSetPowerManagementLimit") == sets
    rig.advance(1.0)  # 60 tokens back: a real dip still triggers
    (ack,) = rig.send(TOPICS.frequency, {"t": rig.clock.wall(), "hz": 49.4})
    assert json.loads(ack.payload)["accepted"] is True


def test_scheduled_demand_response_is_refused_not_trimmed_below_the_floor() -> None:
    b = _bounds(draw_mw=2_200_000.0,
                config=LimitsConfig(max_reduction_fraction=0.5, min_node_fraction=0.3))

    def dr(**level: float) -> wire.DrDispatch:
        return wire.DrDispatch("dr1", 3600.0, start_at=None, ramp_s=60.0, recovery_s=60.0,
                               **level)

    too_deep = b.check(dr(fraction=0.6), now_s=0.0, in_flight=0)
    assert isinstance(too_deep, Rejection) and too_deep.label == MAX_REDUCTION
    below = b.check(dr(reduction_w=1500.0), now_s=0.0, in_flight=0)
    assert isinstance(below, Rejection) and below.label == FLOOR
    assert "reduction_w 1500 W would take the node from 2200 W below its floor 840 W" in (
        below.reason)
    assert b.check(dr(reduction_w=1000.0), now_s=0.0, in_flight=0) == Admitted(None, None)
    assert b.check(dr(fraction=0.5), now_s=0.0, in_flight=0) == Admitted(None, None)
    long = wire.DrDispatch("dr2", 90_000.0, fraction=0.1)
    refused = b.check(long, now_s=0.0, in_flight=0)
    assert isinstance(refused, Rejection) and refused.label == "max_duration"


def test_junk_spends_no_quota_a_genuine_dispatch_needs(rig: Rig) -> None:
    for k in range(1000):  # malformed: refused by the parser, before any quota is spent
        assert rig.dispatch({"id": f"junk-{k}", "kind": "shed"})["accepted"] is False
    ack = rig.dispatch(_shed_body("genuine"))
    assert ack["accepted"] is True, ack["reason"]
    assert rig.value("gridtao_limit_rejections_total", topic="dispatch",
                     reason="rate_limit") in (None, 0.0)


def test_when_the_gpus_minimums_stop_a_shed_above_the_node_floor_the_ack_says_so() -> None:
    """Node floor 700 W (limits.min_node_fraction 0.25) under the GPUs' summed minimums
    (800 W): one sentence, naming the floor that binds, in the figures of the ack's fields."""
    rig = make_rig({"min_node_fraction": 0.25, "max_reduction_fraction": 0.95})
    try:
        ack = rig.dispatch(_shed_body("deeper", fraction=0.9))
        assert ack["accepted"], ack
        assert ack["deliverable_w"] == pytest.approx(2200 - 800, abs=1.0)
        assert ack["shortfall_w"] == pytest.approx(0.9 * 2200 - (2200 - 800), abs=1.0)
        reason = str(ack["reason"])
        assert "by the GPUs' minimums and priority floors (800 W" in reason
        assert "1400 W of the 1980 W asked" in reason and "node's floor" not in reason
    finally:
        rig.guard.close()
        rig.island.close()
        rig.backend.close()
