"""The bridge's pure parts, with an injected clock and random numbers: reading an event,
mapping signals to reductions, the opt-in policy, the per-event state machine (modification,
cancellation, floods, events no longer listed) and the paced, signed outbox."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from datetime import UTC, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gridtao.clock import VirtualClock
from gridtao.config.agent import AuthConfig, AuthKey
from gridtao.openadr import (
    BridgeConfig,
    BridgeMetrics,
    DispatchOutbox,
    EventHandler,
    EventRejected,
    SiteSnapshot,
    SiteView,
    bridge_config_from_mapping,
    decide,
    dispatch_id,
    make_signer,
    parse_event,
    parse_status,
)
from gridtao.security.auth import Verifier

T0 = 1_763_900_000.0  # the virtual clock's wall time at 0
ONE_NODE = SiteSnapshot(nodes=1, it_power_w=2400, draw_w=2400, settlement_draw_w=2400,
                        deliverable_w=1500, max_it_w=2800)
THREE_NODES = SiteSnapshot(nodes=3, it_power_w=6000, draw_w=6000, settlement_draw_w=6000,
                           deliverable_w=3000, max_it_w=8400)


def config(**sections: Any) -> BridgeConfig:
    data: dict[str, Any] = {
        "vtn": {"url": "http://127.0.0.1:1/OpenADR2/Simple/2.0b", "ven_name": "site-a"},
        "policy": {"resources": ["hall-1"]},
        "mapping": {"simple_levels": [{"level": 1, "fraction": 0.1},
                                      {"level": 2, "reduction_w": 500},
                                      {"level": 3, "fraction": 0.3}]},
        "audit": {"enabled": False},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return bridge_config_from_mapping(data, source="<test>")


def raw_event(*, event_id: str = "e1", mod: int = 0, status: str = "far",
              start: float = T0 + 600, intervals: list[tuple[float, float]] | None = None,
              signal_name: str = "SIMPLE", signal_type: str = "level",
              measurement: dict[str, Any] | None = None, ramp_s: float = 0,
              recovery_s: float = 0, start_after_s: float | None = None,
              targets: list[dict[str, Any]] | None = None,
              test_event: bool = False) -> dict[str, Any]:
    """An event dict as openleadr's client hands it over; ``intervals``: (duration s, value)
    from ``start`` on."""
    from datetime import datetime

    ivs = intervals if intervals is not None else [(1800, 2)]
    at, parsed = start, []
    for k, (duration, value) in enumerate(ivs):
        parsed.append({"dtstart": datetime.fromtimestamp(at, UTC),
                       "duration": timedelta(seconds=duration), "signal_payload": value,
                       "uid": k})
        at += duration
    period: dict[str, Any] = {"dtstart": datetime.fromtimestamp(start, UTC),
                              "duration": timedelta(seconds=at - start)}
    if ramp_s:
        period["ramp_up"] = timedelta(seconds=ramp_s)
    if recovery_s:
        period["recovery"] = timedelta(seconds=recovery_s)
    if start_after_s is not None:
        period["tolerance"] = {"tolerate": {"startafter": timedelta(seconds=start_after_s)}}
    signal: dict[str, Any] = {"signal_name": signal_name, "signal_type": signal_type,
                              "signal_id": "s", "intervals": parsed}
    if measurement is not None:
        signal["measurement"] = measurement
    return {
        "event_descriptor": {"event_id": event_id, "modification_number": mod,
                             "event_status": status, "market_context": "oadr://p",
                             "test_event": test_event},
        "active_period": period, "event_signals": [signal],
        "targets": targets if targets is not None else [{"resource_id": "hall-1"}],
        "response_required": "always",
    }


KW = {"name": "powerReal", "description": "RealPower", "unit": "W", "scale": "k"}


# ---- reading events ------------------------------------------------------------------------


def test_an_event_is_read_into_unix_seconds() -> None:
    event = parse_event(raw_event(ramp_s=60, recovery_s=120, start_after_s=30,
                                  intervals=[(600, 1), (600, 3)]))
    assert (event.start_at, event.duration_s, event.ramp_s, event.recovery_s,
            event.start_after_s) == (T0 + 600, 1200, 60, 120, 30)
    assert [(iv.start_at, iv.duration_s, iv.value) for iv in event.signals[0].intervals] == [
        (T0 + 600, 600, 1.0), (T0 + 1200, 600, 3.0)]
    assert event.targets == (("resource_id", "hall-1"),)


@pytest.mark.parametrize("mutate,says", [
    (lambda e: e["event_descriptor"].pop("event_id"), "event_id must be a non-empty string"),
    (lambda e: e["event_descriptor"].update(modification_number=-1), "modification_number"),
    (lambda e: e["event_descriptor"].update(event_status="weird"), "not an OpenADR status"),
    (lambda e: e["event_signals"][0]["intervals"][0].update(signal_payload=float("nan")),
     "must be finite"),
    (lambda e: e["event_signals"][0]["intervals"][0].update(signal_payload="2"),
     "must be a number"),
    (lambda e: e["active_period"].update(duration="PT1H"), "must be a duration"),
    (lambda e: e.pop("event_signals"), "event.event_signals is missing"),
    (lambda e: e["event_signals"][0].update(measurement={**KW, "scale": "X"}),
     "not an SI scale code"),
])
def test_nonsense_is_refused_by_name(mutate: Any, says: str) -> None:
    event = raw_event()
    mutate(event)
    with pytest.raises(EventRejected, match=says):
        parse_event(event)


# ---- mapping signals -------------------------------------------------------------------------


def decided(event: dict[str, Any], site: SiteSnapshot | None = ONE_NODE, *,
            now: float = T0, delay: float = 0.0, **sections: Any) -> Any:
    return decide(parse_event(event), site=site, config=config(**sections), now=now,
                  start_delay_s=delay, ven_id="ven-7")


def test_simple_levels_map_to_the_configured_reductions() -> None:
    level_2 = decided(raw_event(intervals=[(1800, 2)], ramp_s=60, recovery_s=120))
    assert level_2.opt_in and level_2.signal == "SIMPLE level"
    (d,) = level_2.dispatches
    assert d.body("x") == {"id": "x", "kind": "dr", "start_at": T0 + 600, "duration_s": 1800,
                           "ramp_s": 60, "recovery_s": 120, "reduction_w": 500.0}
    (d3,) = decided(raw_event(intervals=[(1800, 3)])).dispatches
    assert (d3.fraction, d3.reduction_w, d3.site_reduction_w) == (0.3, None, 720.0)
    assert decided(raw_event(intervals=[(1800, 0)])).dispatches == ()


def test_watts_for_several_nodes_become_a_fraction_of_their_draw() -> None:
    (d,) = decided(raw_event(intervals=[(1800, 2)]), THREE_NODES).dispatches
    assert d.reduction_w is None and d.fraction == pytest.approx(500 / 6000)


def test_load_dispatch_delta_and_setpoint_in_scaled_watts() -> None:
    (delta,) = decided(raw_event(signal_name="LOAD_DISPATCH", signal_type="delta",
                                 intervals=[(900, -0.8)], measurement=KW)).dispatches
    assert delta.reduction_w == pytest.approx(800.0)
    (setpoint,) = decided(raw_event(signal_name="LOAD_DISPATCH", signal_type="setpoint",
                                    intervals=[(900, 2.0)], measurement=KW)).dispatches
    assert setpoint.reduction_w == pytest.approx(400.0)  # 2400 W drawn, 2 kW asked
    above = decided(raw_event(signal_name="LOAD_DISPATCH", signal_type="setpoint",
                              intervals=[(900, 3.0)], measurement=KW))
    assert above.opt_in and above.dispatches == ()
    more = decided(raw_event(signal_name="LOAD_DISPATCH", signal_type="delta",
                             intervals=[(900, 0.5)], measurement=KW))
    assert (more.opt_in, more.label) == (False, "bad_signal")
    no_unit = decided(raw_event(signal_name="LOAD_DISPATCH", signal_type="delta",
                                intervals=[(900, -0.5)]))
    assert no_unit.label == "bad_signal" and "no unit" in no_unit.reason


def test_load_control_capacity_and_percent_offset_are_fractions() -> None:
    (cap,) = decided(raw_event(signal_name="LOAD_CONTROL",
                               signal_type="x-loadControlCapacity",
                               intervals=[(900, 0.75)])).dispatches
    assert cap.fraction == pytest.approx(0.25)
    (pct,) = decided(raw_event(signal_name="LOAD_CONTROL",
                               signal_type="x-loadControlPercentOffset",
                               intervals=[(900, -20)])).dispatches
    assert pct.fraction == pytest.approx(0.2)
    assert decided(raw_event(signal_name="LOAD_CONTROL", signal_type="x-loadControlCapacity",
                             intervals=[(900, 1.5)])).label == "bad_signal"


def test_intervals_become_successive_dispatches() -> None:
    decision = decided(raw_event(intervals=[(600, 1), (600, 1), (300, 0), (600, 3)],
                                 ramp_s=30, recovery_s=90))
    first, second = decision.dispatches
    assert (first.start_at, first.duration_s, first.ramp_s, first.recovery_s) == (
        T0 + 600, 1200, 30, 0)
    assert (second.start_at, second.duration_s, second.ramp_s, second.recovery_s) == (
        T0 + 2100, 600, 0, 90)
    assert (first.fraction, second.fraction) == (0.1, 0.3)


def test_a_start_after_delay_shifts_every_dispatch() -> None:
    (d,) = decided(raw_event(start_after_s=300), delay=123.0).dispatches
    assert d.start_at == T0 + 600 + 123.0


@pytest.mark.parametrize("event,site,label", [
    (raw_event(targets=[{"resource_id": "hall-9"}]), ONE_NODE, "unknown_target"),
    (raw_event(start=T0 - 7200, intervals=[(3600, 2)]), ONE_NODE, "in_the_past"),
    (raw_event(start=T0 - 300), ONE_NODE, "in_the_past"),
    (raw_event(intervals=[(500 * 3600, 2)]), ONE_NODE, "too_long"),
    (raw_event(start=T0 + 30 * 86_400), ONE_NODE, "too_far_ahead"),
    (raw_event(intervals=[(1800, 4)]), ONE_NODE, "bad_signal"),
    (raw_event(signal_name="ELECTRICITY_PRICE", signal_type="price"), ONE_NODE,
     "unsupported_signal"),
    (raw_event(), None, "no_status"),
    (raw_event(signal_name="LOAD_DISPATCH", signal_type="delta", intervals=[(900, -1.6)],
               measurement=KW), ONE_NODE, "too_deep"),
    (raw_event(signal_name="LOAD_CONTROL", signal_type="x-loadControlCapacity",
               intervals=[(900, 0.1)]), ONE_NODE, "too_deep"),
])
def test_the_policy_opts_out_with_a_reason(event: dict[str, Any], site: SiteSnapshot | None,
                                           label: str) -> None:
    decision = decided(event, site)
    assert (decision.opt_in, decision.label, decision.dispatches) == (False, label, ())
    assert decision.reason


def test_targets_naming_this_ven_or_a_group_are_taken() -> None:
    assert decided(raw_event(targets=[{"ven_id": "ven-7"}])).opt_in
    assert decided(raw_event(targets=[{"group_id": "g"}]), policy={"groups": ["g"]}).opt_in
    assert decided(raw_event(targets=[])).opt_in


def test_a_late_start_within_the_grace_is_taken() -> None:
    assert decided(raw_event(start=T0 - 30)).opt_in


# ---- the state machine ---------------------------------------------------------------------


class Harness:
    def __init__(self, site: SiteSnapshot | None = ONE_NODE, **sections: Any) -> None:
        self.clock = VirtualClock()
        self.sent: list[dict[str, Any]] = []
        self.records: list[tuple[str, Mapping[str, object]]] = []
        self.metrics = BridgeMetrics(CollectorRegistry())
        cfg = config(**sections)
        self.outbox = DispatchOutbox(
            clock=self.clock, min_interval_s=1.5, sign=make_signer(cfg, self.clock),
            publish=lambda p: self.sent.append(json.loads(p)), on_published=lambda b: None)
        self.handler = EventHandler(
            cfg, clock=self.clock, rng=random.Random(4), site=lambda: site,
            outbox=self.outbox, audit=lambda k, f: self.records.append((k, f)),
            metrics=self.metrics)

    def flush(self) -> None:
        while (wait := self.outbox.pump()) is not None:
            self.clock.advance(wait)

    def ids(self) -> list[tuple[str, str]]:
        return [(m["kind"], m["id"]) for m in self.sent]


def test_modification_releases_and_replaces_cancellation_releases() -> None:
    h = Harness()
    assert h.handler.handle(raw_event(event_id="ev", intervals=[(1800, 2)])) == "optIn"
    h.flush()
    h.clock.advance(10)
    assert h.handler.handle(raw_event(event_id="ev", mod=1, intervals=[(1800, 3)])) == "optIn"
    h.flush()
    assert h.handler.handle(raw_event(event_id="ev", mod=1, intervals=[(1800, 3)])) == "optIn"
    h.clock.advance(10)
    assert h.handler.handle(raw_event(event_id="ev", mod=2, status="cancelled")) == "optIn"
    h.flush()
    assert h.ids() == [("dr", "oadr-ev-m0"), ("release", "oadr-ev-m0-release"),
                       ("dr", "oadr-ev-m1"), ("release", "oadr-ev-m1-release")]
    assert h.sent[1]["ref"] == "oadr-ev-m0" and h.sent[2]["fraction"] == 0.3
    assert all(m["issued_at"] >= T0 for m in h.sent)
    kinds = [k for k, _ in h.records]
    assert kinds == ["openadr_event", "openadr_decision", "openadr_event", "openadr_decision",
                     "openadr_event", "openadr_cancelled"]
    assert h.metrics.value("gridtao_openadr_events_total", {"result": "duplicate"}) == 1


def test_a_flood_of_modifications_is_refused_and_the_version_in_force_stays() -> None:
    h = Harness(policy={"min_modification_interval_s": 5})
    h.handler.handle(raw_event(event_id="ev"))
    h.flush()
    for mod in range(1, 21):
        h.clock.advance(0.5)
        assert h.handler.handle(raw_event(event_id="ev", mod=mod, intervals=[(900, 3)])) \
            == "optOut"
    h.flush()
    assert h.ids() == [("dr", "oadr-ev-m0")]
    assert h.handler.held("ev") == (0, "optIn", ("oadr-ev-m0",))
    assert h.metrics.value("gridtao_openadr_refusals_total",
                           {"reason": "modification_flood"}) == 20
    h.clock.advance(6)  # quiet for longer than the interval: the next one is taken
    assert h.handler.handle(raw_event(event_id="ev", mod=21, intervals=[(900, 3)])) == "optIn"
    h.flush()
    assert h.ids()[-2:] == [("release", "oadr-ev-m0-release"), ("dr", "oadr-ev-m21")]


def test_cuts_are_paced_and_a_queued_cut_cancelled_is_never_sent() -> None:
    h = Harness()
    h.handler.handle(raw_event(event_id="a"))
    h.handler.handle(raw_event(event_id="b"))
    assert h.outbox.pump() == pytest.approx(1.5) and h.ids() == [("dr", "oadr-a-m0")]
    h.handler.handle(raw_event(event_id="b", mod=1, status="cancelled"))
    h.flush()
    assert h.ids() == [("dr", "oadr-a-m0")]


def test_events_no_longer_listed_are_released() -> None:
    h = Harness()
    h.handler.handle(raw_event(event_id="a"))
    h.handler.handle(raw_event(event_id="b"))
    h.flush()
    h.handler.missing({"b"})
    h.flush()
    assert h.ids()[-1] == ("release", "oadr-a-m0-release")
    assert h.records[-1][1]["implicit"] is True


def test_the_start_after_delay_is_drawn_once_per_event() -> None:
    h = Harness()
    h.handler.handle(raw_event(event_id="r", start_after_s=600))
    h.flush()
    h.clock.advance(10)
    h.handler.handle(raw_event(event_id="r", mod=1, start_after_s=600, intervals=[(1800, 3)]))
    h.flush()
    starts = [m["start_at"] for m in h.sent if m["kind"] == "dr"]
    assert starts[0] == starts[1] and T0 + 600 < starts[0] <= T0 + 1200
    assert starts[0] == pytest.approx(T0 + 600 + random.Random(4).uniform(0, 600), abs=1e-3)


def test_an_unreadable_event_is_refused_counted_and_dispatches_nothing() -> None:
    h = Harness()
    bad = raw_event()
    bad["active_period"]["dtstart"] = "yesterday"
    assert h.handler.handle(bad) == "optOut"
    h.flush()
    assert h.sent == [] and h.metrics.value("gridtao_openadr_errors_total",
                                            {"reason": "bad_event"}) == 1


def test_test_events_are_answered_not_dispatched() -> None:
    h = Harness()
    assert h.handler.handle(raw_event(test_event=True)) == "optIn"
    h.flush()
    assert h.sent == []


def test_dispatch_ids_fit_the_wire() -> None:
    assert dispatch_id("oadr", "ev-1", 3, 0, 1) == "oadr-ev-1-m3"
    assert dispatch_id("oadr", "ev-1", 3, 1, 2) == "oadr-ev-1-m3-s1"
    odd = dispatch_id("p" * 32, "x/y " * 200, 2**31 - 1, 287, 288)
    assert odd.startswith("p" * 32 + "-h") and len(odd + "-release") <= 128


def test_signed_dispatches_verify_with_the_nodes_verifier(tmp_path: Any) -> None:
    import base64
    import os

    secret = tmp_path / "agg.hmac"
    secret.write_text(base64.b64encode(os.urandom(32)).decode())
    secret.chmod(0o600)
    cfg = config(signing={"mode": "hmac", "kid": "agg", "key_file": str(secret)})
    clock = VirtualClock()
    payload = make_signer(cfg, clock)({"id": "x", "kind": "release", "ref": "y"})
    verifier = Verifier.from_config(
        AuthConfig(mode="hmac", keys=(AuthKey(kid="agg", file=str(secret)),)), source="<t>")
    assert verifier is not None
    body = json.loads(payload)
    assert verifier.authenticate("dispatch", body) == "agg"
    assert body["issued_at"] == T0


# ---- the site --------------------------------------------------------------------------------


def test_node_statuses_sum_into_the_site() -> None:
    view = SiteView(max_age_s=10)
    ok = {"node": "n1", "online": True, "t": T0, "gpus": [
        {"power_w": 600.0, "default_w": 700.0}, {"power_w": 500.0, "default_w": 700.0}],
        "capacity": {"draw_w": 1100.0, "deliverable_w": 515.0, "deliverable_it_w": 500.0,
                     "settle_at": "meter"}}
    assert view.update("p/nodes/n1/status", json.dumps(ok).encode()) is not None
    assert view.update("p/nodes/n2/status", json.dumps({**ok, "node": "n2"}).encode())
    assert view.update("p/nodes/n3/status", b"{not json") is None
    assert view.update("p/nodes/n4/status", json.dumps({**ok, "node": "other"}).encode()) \
        is None
    snap = view.snapshot(T0 + 5)
    assert snap is not None
    assert (snap.nodes, snap.it_power_w, snap.deliverable_w, snap.max_it_w) == (
        2, 2200.0, 1030.0, 2800.0)
    assert snap.settlement_draw_w == pytest.approx(2 * 1100 * 1.03)
    assert view.snapshot(T0 + 60) is None  # stale
    view.update("p/nodes/n1/status", b'{"node":"n1","online":false}')
    assert view.fresh(T0)[0].node == "n2"
    assert parse_status(json.dumps({**ok, "t": float("inf")}).encode()) is None
