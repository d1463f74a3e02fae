"""The site coordinator's parts in virtual time: split, view, meter feedback, events, acks."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridtao.clock import VirtualClock
from gridtao.config.agent import Config, ConfigError, config_from_mapping
from gridtao.config.site import MeterConfig, SiteConfig, SiteSigningConfig
from gridtao.control.tier2.facility import FacilityModel
from gridtao.security.auth import Verifier, load_signing_key, sign_payload
from gridtao.site.coordinator import MAX_FLEET_EVENTS, SiteCoordinator
from gridtao.site.meter import MeterFeedback
from gridtao.site.refusals import OrderAuth
from gridtao.site.serve import signer
from gridtao.site.split import NodeShare, split_budget
from gridtao.wire.messages import MessageRejected, decode_object
from gridtao.wire.site import MeterReading, meter_from, parse_site_dispatch

PREFIX = "p"


def test_split_shares_the_cut_by_headroom_and_never_crosses_a_floor() -> None:
    nodes = [NodeShare("a", 1000, 400), NodeShare("b", 1000, 800), NodeShare("c", 500, 100)]
    split = split_budget(2000, nodes)
    assert sum(split.caps_w.values()) == pytest.approx(2000)
    # a has 600 W of headroom, b 200, c 400: 500 W cut takes 5/12 of each headroom
    assert split.caps_w == pytest.approx({"a": 750, "b": 1000 - 200 * 5 / 12,
                                          "c": 500 - 400 * 5 / 12})
    deep = split_budget(500, nodes, margin=0.1)
    assert deep.shortfall_w == pytest.approx(2500 - 500 - 0.9 * 1200)
    for n in nodes:
        assert deep.caps_w[n.node] >= n.floor_w


def test_split_counts_a_node_that_cannot_take_a_cap_at_its_draw() -> None:
    nodes = [NodeShare("a", 1000, 400), NodeShare("gone", 1000, 400, able=False)]
    split = split_budget(1500, nodes)
    assert "gone" not in split.caps_w
    assert split.caps_w["a"] == pytest.approx(500)  # the whole cut on the node that is there


def test_split_with_room_to_spare_caps_above_the_draw() -> None:
    split = split_budget(3000, [NodeShare("a", 1000, 400), NodeShare("b", 1000, 400)])
    assert split.cut_w == 0 and split.caps_w == pytest.approx({"a": 1500, "b": 1500})


def test_site_messages_parse_and_refuse_with_reasons() -> None:
    cap = parse_site_dispatch(b'{"id":"s","kind":"site_cap","site_w":5e3,"at":"meter",'
                              b'"duration_s":60}', max_bytes=4096)
    assert (cap.id, cap.site_w, cap.at) == ("s", 5000.0, "meter")  # type: ignore[union-attr]
    for bad, words in [
        (b'{"id":"s","kind":"site_cap","site_w":-1,"duration_s":6}', "site_w"),
        (b'{"id":"s","kind":"site_shed","duration_s":6}', "exactly one"),
        (b'{"id":"s","kind":"site_cap","site_w":1,"at":"moon","duration_s":6}', "'at'"),
        (b'{"id":"s","kind":"nuke"}', "unknown kind"),
    ]:
        with pytest.raises(MessageRejected, match=words) as e:
            parse_site_dispatch(bad, max_bytes=4096)
        assert e.value.event_id == "s"
    with pytest.raises(MessageRejected, match="'w'"):
        meter_from(decode_object(b'{"t":1,"w":"high"}', max_bytes=100))


def test_meter_feedback_learns_the_model_error_and_corrects_the_budget() -> None:
    model = FacilityModel(losses_fraction=0.03, cop=4.5)
    feedback = MeterFeedback(model, MeterConfig(tau_s=0.0))
    it = 10_000.0
    real = it * (1.08 + 1 / 4.5)  # 8 % losses where the model says 3 %
    feedback.observe(MeterReading(100.0, real), it)
    error = feedback.model_error(100.0)
    assert error == pytest.approx(real / model.steady_meter_w(it) - 1)
    budget = feedback.it_budget_w(real * 0.8, 100.0)
    assert budget * (1.08 + 1 / 4.5) == pytest.approx(real * 0.8)  # meets it with real losses
    off = MeterFeedback(model, MeterConfig(feedback=False, tau_s=0.0))
    off.observe(MeterReading(100.0, real), it)
    assert off.model_error(100.0) == pytest.approx(error)  # reported, not applied
    assert off.it_budget_w(real * 0.8, 100.0) > budget
    assert feedback.ratio(100.0 + 11.0) == 1.0  # a stale meter: the model alone


class Harness:
    """A coordinator in virtual time; what it publishes lands in ``sent``."""

    def __init__(self, **site: Any) -> None:
        self.clock = VirtualClock()
        self.sent: list[tuple[str, dict[str, Any], bool]] = []
        config = config_from_mapping({"mqtt": {"prefix": PREFIX},
                                      "site": {"id": "s", "nodes": ["n1", "n2", "n3"]} | site})
        self.c = SiteCoordinator(config, clock=self.clock, publish=self._publish,
                                 sign=lambda b: json.dumps(b).encode(), verifier=None)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.sent.append((topic, json.loads(payload), retain))

    def status(self, node: str, draw: float, floor: float = 400.0, *, online: bool = True,
               fault: str | None = None, auth: dict[str, Any] | None = None,
               interval_s: float | None = None, links: dict[str, bool] | None = None) -> None:
        body = {"node": node, "online": online, "t": self.clock.wall(), "event": None,
                "gpus": [{"index": 0, "power_w": draw, "limit_w": 700, "default_w": 700,
                          "min_w": 200, "max_w": 700, "fault": fault}],
                "capacity": {"draw_w": draw, "floor_w": floor, "deliverable_w": draw - floor,
                             "enrolled_w": 0.0}}
        if auth is not None:
            body["auth"] = auth
        if interval_s is not None:
            body["limits"] = {"min_event_interval_s": interval_s}
        if links is not None:
            body["links"] = links
        self.c.on_message(f"{PREFIX}/nodes/{node}/status", json.dumps(body).encode())

    def send(self, topic: str, body: dict[str, Any]) -> None:
        self.c.on_message(topic, json.dumps(body).encode())

    def ack(self, node: str, ident: str, *, accepted: bool = True, reached: bool = False,
            power_w: float | None = None) -> None:
        now = self.clock.wall()
        body: dict[str, Any] = {
            "id": ident, "accepted": accepted, "reason": None if accepted else "no",
            "received_at": now, "commanded_at": now if accepted else None,
            "reached_at": now if reached else None}
        if power_w is not None:
            body["reached_power_w"] = power_w
        self.send(f"{PREFIX}/nodes/{node}/ack", body)

    def take(self, suffix: str) -> list[dict[str, Any]]:
        out = [b for t, b, _ in self.sent if t.endswith(suffix)]
        self.sent = [s for s in self.sent if not s[0].endswith(suffix)]
        return out

    def orders(self) -> dict[str, dict[str, Any]]:
        got = {t.split("/")[2]: b for t, b, _ in self.sent if t.endswith("/dispatch")
               and b["kind"] == "cap"}
        self.sent = [s for s in self.sent if not (s[0].endswith("/dispatch")
                                                   and s[1]["kind"] == "cap")]
        return got


def test_site_cap_is_split_acked_and_moved_off_a_node_that_goes() -> None:
    h = _site_capped_on_three("e", 2400, 60)
    first = h.orders()
    assert set(first) == {"n1", "n2", "n3"} and {o["id"] for o in first.values()} == {"e"}
    assert all(o["node"] == n for n, o in first.items())  # bound to its node, signed so
    assert sum(o["node_w"] for o in first.values()) <= 2400 + 0.5
    h.ack("n1", "e")
    h.ack("n2", "e", accepted=False)
    h.c.tick()
    assert h.take("site/ack") == []  # n3 has not answered and the deadline is 2 s away
    h.clock.advance(2.1)
    h.c.tick()
    (ack,) = h.take("site/ack")
    assert ack["nodes"] == {"accepted": ["n1"], "rejected": {"n2": "no"}, "missing": ["n3"],
                            "offline": []}
    assert ack["accepted"] is True and "n2 refused" in ack["reason"]
    h.ack("n1", "e", reached=True)
    h.c.tick()
    (reached,) = h.take("site/ack")
    assert reached["reached_at"] is not None
    # n3 dies (its last will); the next rebalance moves its share to n1 and n2
    h.c.on_message(f"{PREFIX}/nodes/n3/status", b'{"node":"n3","online":false}')
    for n in ("n1", "n2"):
        h.status(n, 800.0)
    h.clock.advance(2.0)
    h.c.tick()
    second = h.orders()
    assert set(second) == {"n1", "n2"} and {o["id"] for o in second.values()} == {"e~1"}
    # n3 counted at its draw before the event (1000 W): n1 and n2 hold 1400 W between them
    assert sum(o["node_w"] for o in second.values()) <= 1400 + 0.5
    # Each node's earlier order ends once it accepted its new one; n2 refused "e", so it has
    # nothing to end, and dead n3 is not sent to.
    for n in ("n1", "n2"):
        h.ack(n, "e~1")
    h.c.tick()
    releases = [(t.split("/")[2], b["ref"]) for t, b, _ in h.sent
                if t.endswith("/dispatch") and b["kind"] == "release"]
    assert releases == [("n1", "e")]


def test_a_restarted_coordinator_takes_its_events_back_without_sending_anything() -> None:
    h = _site_capped_on_three("e", 2400, 60)
    h.c.tick()
    (record,) = [b for t, b, retain in h.sent if t.endswith("site/events") and retain]
    before = h.orders()
    again = Harness()
    again.c.on_message(f"{PREFIX}/site/events", json.dumps(record).encode(), retained=True)
    for _ in range(30):
        for n in ("n1", "n2", "n3"):
            again.status(n, 1000.0 * 0.8)  # capped now; the split keeps the draws of the start
        again.clock.advance(0.5)
        again.c.tick()
    assert again.orders() == {}  # the same split: nothing re-sent, no node changes
    assert again.c.events["e"].orders["n1"].node_w == before["n1"]["node_w"]
    # the same id with other terms is refused; the same request again is a duplicate, answered
    # with the event's state (the retained record keeps what it asked)
    again.send(f"{PREFIX}/site/dispatch", {"id": "e", "kind": "site_cap", "site_w": 100,
                                           "duration_s": 60})
    assert "id 'e' was used" in again.take("site/ack")[0]["reason"]
    again.send(f"{PREFIX}/site/dispatch", {"id": "e", "kind": "site_cap", "site_w": 2400,
                                           "duration_s": 60})
    (state,) = again.take("site/ack")
    assert state["accepted"] is True and state["id"] == "e"
    assert again.orders() == {}  # acted on once


def test_a_fleet_dispatch_gets_one_site_ack_and_a_release_ends_a_site_event() -> None:
    h = Harness(ack_deadline_s=1.0)
    for n in ("n1", "n2"):
        h.status(n, 1000.0)
    h.send(f"{PREFIX}/dispatch", {"id": "f", "kind": "shed", "fraction": 0.2,
                                  "duration_s": 30})
    assert h.orders() == {}  # the aggregator reached the nodes itself
    h.ack("n1", "f", reached=True)
    h.ack("n2", "f", reached=True)
    h.c.tick()
    acks = h.take("site/ack")
    assert acks[0]["nodes"]["accepted"] == ["n1", "n2"] and acks[-1]["reached_at"] is not None
    h.send(f"{PREFIX}/site/dispatch", {"id": "s", "kind": "site_shed", "reduction_w": 300,
                                       "duration_s": 30})
    assert sum(1000 - o["node_w"] for o in h.orders().values()) >= 300 - 0.5
    h.send(f"{PREFIX}/site/dispatch", {"id": "r", "kind": "release", "ref": "s"})
    releases = [b for t, b, _ in h.sent if t.endswith("/dispatch") and b["kind"] == "release"]
    assert {r["ref"] for r in releases} == {"s"} and "s" not in h.c.events
    h.send(f"{PREFIX}/site/dispatch", {"id": "r2", "kind": "release", "ref": "s"})
    assert h.take("site/ack")[-1]["accepted"] is False


def _split_over_three(body: dict[str, Any]) -> tuple[Harness, dict[str, dict[str, Any]]]:
    """A coordinator with nodes n1..n3 drawing 1000 W each, ``body`` sent as a site dispatch,
    and the orders it split it into."""
    h = Harness(ack_deadline_s=1.0)
    for n in ("n1", "n2", "n3"):
        h.status(n, 1000.0)
    h.send(f"{PREFIX}/site/dispatch", body)
    return h, h.orders()


def test_the_reached_ack_measures_the_reduction_from_the_nodes_reached_power() -> None:
    # Nodes reach their band within a status period: the site's reached ack takes each
    # node's measured power from its reached ack, not from its status of before the cut.
    h, orders = _split_over_three({"id": "s", "kind": "site_shed", "reduction_w": 600,
                                    "at": "it", "duration_s": 30})
    h.clock.advance(0.05)
    for n, order in orders.items():
        h.ack(n, order["id"])
    h.clock.advance(0.05)
    for n, order in orders.items():
        h.ack(n, order["id"], reached=True, power_w=order["node_w"] - 10.0)
    h.c.tick()
    reached = [a for a in h.take("site/ack") if a["reached_at"] is not None]
    assert reached, "no reached ack"
    assert reached[-1]["reduction_w"] == pytest.approx(3000.0 - sum(
        o["node_w"] - 10.0 for o in orders.values()), abs=0.1)
    assert reached[-1]["reduction_w"] >= 600.0
    # A status newer than the reached ack is what counts from then on.
    h.clock.advance(1.0)
    for n in ("n1", "n2", "n3"):
        h.status(n, 900.0)
    assert h.c._site_it_w(h.clock.wall()) == pytest.approx(2700.0)


def test_a_node_ack_with_implausible_reached_power_changes_nothing() -> None:
    h, orders = _split_over_three({"id": "s", "kind": "site_shed", "reduction_w": 600,
                                    "at": "it", "duration_s": 30})
    now = h.clock.wall()
    for (n, order), (power, at) in zip(sorted(orders.items()), [
            (float("nan"), now), (-5.0, now), (300.0, now + 3600.0)], strict=True):
        h.send(f"{PREFIX}/nodes/{n}/ack", {  # json.dumps writes a NaN as the bare NaN
            "id": order["id"], "accepted": True, "reason": None, "received_at": now,
            "commanded_at": now, "reached_at": at, "reached_power_w": power})
    # None counted (a NaN, a negative, one from an hour ahead): the statuses stand.
    assert h.c._site_it_w(h.clock.wall()) == pytest.approx(3000.0)
    h.clock.advance(2.0)
    h.c.tick()  # the status is published (a NaN used to stop it)
    assert h.take("site/status")


def test_a_late_acceptance_is_acked_and_its_reached_ack_still_comes() -> None:
    """Every node silent past the ack deadline: the site acks 'no answer'. The nodes then
    accept and hold the event: the site acks again (accepted), then once they reach."""
    h, orders = _split_over_three({"id": "y1", "kind": "site_cap", "site_w": 2500,
                                    "at": "it", "duration_s": 60})
    h.clock.advance(1.5)
    h.c.tick()
    (first,) = h.take("site/ack")
    assert first["accepted"] is False and "no answer from n1, n2, n3" in first["reason"]
    for n, order in orders.items():
        h.ack(n, order["id"])
    h.c.tick()
    (late,) = h.take("site/ack")
    assert late["accepted"] is True and late["nodes"]["accepted"] == ["n1", "n2", "n3"]
    assert late["reached_at"] is None
    for n, order in orders.items():
        h.ack(n, order["id"], reached=True, power_w=order["node_w"])
    h.c.tick()
    (reached,) = h.take("site/ack")
    assert reached["accepted"] is True and reached["reached_at"] is not None


def _plan(h: Harness, node: str, start: int, offers: dict[str, list[float]],
          p10: list[float]) -> None:
    h.send(f"{PREFIX}/nodes/{node}/plan", {"node": node, "made_at": 0, "start": start,
                                           "mtu_s": 3600, "offers_w": offers,
                                           "forecast_w": {"p10_w": p10}})


def test_the_site_pools_node_offers_into_bids_and_splits_an_award_back() -> None:
    h = Harness(market={"bid_step_w": 1000, "min_bid_w": 2000,
                        "min_bids": [{"product": "fcr-d-up", "w": 5000}]})
    start = int(h.clock.wall()) // 3600 * 3600 + 3600  # the next hour: plans start there
    _plan(h, "n1", start, {"ffr": [1500, 1500, 400], "fcr-d-up": [2000, 2000, 2000]},
          [3000, 3100, 3200])
    _plan(h, "n2", start + 3600, {"ffr": [1200, 100], "fcr-d-up": [2000, 2000]}, [2500, 2600])
    h.c.tick()
    (plan,) = h.take("site/plan")
    assert plan["start"] == start and plan["mtu_s"] == 3600
    # ffr pooled 1500 / 2700 / 500 W: steps of 1 kW, nothing under the 2 kW minimum
    assert plan["offers_w"]["ffr"] == [0, 2000, 0]
    # fcr-d-up pooled 2000 / 4000 / 4000: under its own 5 kW minimum every hour
    assert plan["offers_w"]["fcr-d-up"] == [0, 0, 0]
    assert plan["forecast_w"] == {"p10_w": [3000, 5600, 5800]}  # on the site's hours
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start + 3600, "mtu_s": 3600,
                                    "capacity_w": {"ffr": [2000, None]}})
    awards = {t.split("/")[2]: b for t, b, _ in h.sent if t.endswith("/award")}
    # 2000 W of 2700 W offered: each node in proportion, never more than it offered
    assert awards["n1"]["capacity_w"]["ffr"] == [1111, None]
    assert awards["n2"]["capacity_w"]["ffr"] == [889, None]  # whole watts summing to 2000
    assert awards["n1"]["issued_at"] is not None
    assert awards["n1"]["node"] == "n1" and awards["n2"]["node"] == "n2"
    (ack,) = h.take("site/ack")
    assert ack["accepted"] is True and ack["nodes"]["accepted"] == ["n1", "n2"]
    h.send(f"{PREFIX}/site/award", {"id": "a2", "start": start, "mtu_s": 3600,
                                    "capacity_w": {"afrr": [1000]}})
    (refused,) = h.take("site/ack")
    assert refused["accepted"] is False and "afrr" in refused["reason"]


def _hmac_site(tmp_path: Path, *, site_kid: str) -> tuple[Config, Path]:
    """A signed-mode site: the aggregator's key ``agg`` and the site's own (``site_kid``)
    are one HMAC secret, generated here (its file returned too)."""
    secret = tmp_path / "agg.key"
    secret.write_text(base64.b64encode(os.urandom(32)).decode())
    secret.chmod(0o600)
    config = config_from_mapping({
        "mqtt": {"prefix": PREFIX},
        "auth": {"mode": "hmac", "keys": [{"kid": "agg", "file": str(secret)}]},
        "site": {"nodes": ["n1"], "signing": {"mode": "hmac", "kid": site_kid,
                                              "file": str(secret)}}})
    return config, secret


def test_signed_mode_refuses_an_unsigned_site_dispatch_and_signs_node_orders(
    tmp_path: Path,
) -> None:
    config, secret = _hmac_site(tmp_path, site_kid="agg")
    h = Harness()
    h.c = SiteCoordinator(config, clock=h.clock, publish=h._publish, sign=signer(config),
                          verifier=Verifier.from_config(config.auth, source=config.source))
    h.status("n1", 1000.0)
    body = {"id": "s", "kind": "site_cap", "site_w": 800, "duration_s": 30}
    h.send(f"{PREFIX}/site/dispatch", body)
    (ack,) = h.take("site/ack")
    # worded as a node words it
    assert ack["accepted"] is False and ack["reason"].startswith("auth: unsigned")
    assert h.orders() == {}
    key = load_signing_key(secret, "hmac")
    h.c.on_message(f"{PREFIX}/site/dispatch", sign_payload(
        body, key, "agg", "hmac", topic="dispatch", now=h.clock.wall()))
    (raw,) = [p for t, p, _ in h.sent if t == f"{PREFIX}/nodes/n1/dispatch"]
    verifier = Verifier.from_config(config.auth, source=config.source)
    assert verifier is not None and verifier.authenticate("dispatch", raw) == "agg"
    assert raw["node_w"] >= 800 * 0.99 - 1 and raw["issued_at"] is not None
    assert raw["node"] == "n1"  # under the signature


def test_a_node_reporting_a_gpu_fault_loses_its_share_and_gets_it_back_when_well() -> None:
    h = _site_capped_on_three("e", 2400, 60)
    assert set(h.orders()) == {"n1", "n2", "n3"}
    h.status("n2", 1000.0, fault="GpuLost")
    for n in ("n1", "n3"):
        h.status(n, 800.0)
    h.clock.advance(2.1)
    h.c.tick()
    moved = h.orders()
    assert set(moved) == {"n1", "n3"}
    assert sum(o["node_w"] for o in moved.values()) <= 2400 - 1000 + 0.5  # n2 at its draw
    releases = [b["ref"] for t, b, _ in h.sent if t.endswith("n2/dispatch")]
    assert releases == ["e"]  # n2 is online: its old cap is released now
    h.sent.clear()
    for n in ("n1", "n2", "n3"):
        h.status(n, 800.0)
    h.clock.advance(2.1)
    h.c.tick()
    assert set(h.orders()) == {"n1", "n2", "n3"}


def test_a_node_that_cannot_hear_orders_takes_no_share_until_it_can() -> None:
    """Up (its status arrives) but its dispatch connection down in two statuses running: the
    site moves its event share to the others and sends it nothing it could not hear (its old
    cap stays until it can); one such status is a reconnect, not a reason to move. Heard
    again, it takes a share again."""
    h = _site_capped_on_three("e", 2400, 60)
    assert set(h.orders()) == {"n1", "n2", "n3"}
    deaf = {"island": True, "dispatch": False, "frequency": True}
    hearing = deaf | {"dispatch": True}

    def statuses(n2: dict[str, bool]) -> None:
        h.status("n2", 1000.0, links=n2)
        for n in ("n1", "n3"):
            h.status(n, 800.0, links=hearing)
        h.clock.advance(2.1)
        h.c.tick()

    statuses(deaf)  # one status: a reconnect under way
    assert not [t for t, _, _ in h.sent if t.endswith("/dispatch")]
    statuses(deaf)
    assert set(h.orders()) == {"n1", "n3"}
    assert not [b for t, b, _ in h.sent if t.endswith("n2/dispatch")]  # it would not hear it
    from prometheus_client import CollectorRegistry

    from gridtao.site.metrics import register

    status = h.take("site/status")[-1]
    n2 = status["nodes"]["n2"]
    assert n2["online"] is True and n2["hears_orders"] is False
    assert status["nodes_deaf"] == 1 and status["nodes_online"] == 3
    registry = CollectorRegistry()
    register(h.c, registry)
    assert registry.get_sample_value("gridtao_site_nodes", {"state": "deaf"}) == 1.0
    h.sent.clear()
    for _ in range(2):
        statuses(hearing)
    assert set(h.orders()) == {"n1", "n2", "n3"}
    status = h.take("site/status")[-1]
    assert status["nodes"]["n2"]["hears_orders"] is True and status["nodes_deaf"] == 0


def test_a_node_back_online_keeps_its_old_order_until_its_new_share_is_sent() -> None:
    h, first = _split_over_three({"id": "e", "kind": "site_cap", "site_w": 2400,
                                  "duration_s": 60})
    for n, order in first.items():
        h.ack(n, order["id"])
    h.status("n3", 800.0, online=False)  # its last will: gone, its cap in force there
    for n in ("n1", "n2"):
        h.status(n, 800.0)
    h.clock.advance(2.1)
    h.c.tick()
    moved = h.orders()
    assert set(moved) == {"n1", "n2"}  # n3's share moved; n3 listed offline
    for n, order in moved.items():
        h.ack(n, order["id"])
    h.c.tick()
    h.sent.clear()
    h.status("n3", 800.0)  # back
    h.c.tick()
    # Not released before its new share: the node would run uncapped in between.
    assert not [b for t, b, _ in h.sent if t.endswith("n3/dispatch")]
    h.clock.advance(0.6)
    for n in ("n1", "n2", "n3"):
        h.status(n, 800.0)
    h.c.tick()
    # n1 and n2 had their caps 0.6 s ago: they would refuse another (one cut a second), so
    # the split waits, and n3 keeps its old order meanwhile.
    assert not [b for t, b, _ in h.sent if t.endswith("n3/dispatch")]
    h.clock.advance(0.6)
    h.c.tick()
    sent = [b for t, b, _ in h.sent if t.endswith("n3/dispatch")]
    assert [b["kind"] for b in sent] == ["cap"], sent  # the new share first
    h.ack("n3", sent[0]["id"])
    h.c.tick()
    assert [b["kind"] for t, b, _ in h.sent if t.endswith("n3/dispatch")] == ["cap", "release"]


def test_a_refused_share_is_named_and_counted_as_not_held() -> None:
    h, orders = _split_over_three({"id": "c2", "kind": "site_cap", "site_w": 2400,
                                   "at": "it", "duration_s": 60})
    for n, order in orders.items():
        h.ack(n, order["id"], accepted=n != "n2")
    h.c.tick()
    (ack,) = h.take("site/ack")
    cut = 1000.0 - orders["n2"]["node_w"]
    assert ack["accepted"] is True and ack["nodes"]["rejected"] == {"n2": "no"}
    assert ack["unheld_w"] == pytest.approx(cut, abs=0.1)
    assert f"cuts not held: n2 {cut:.0f} W (IT)" in ack["reason"]
    assert "earlier orders" not in ack["reason"]  # n2 never held one


def test_an_event_shorter_than_the_ack_deadline_still_gets_its_site_ack() -> None:
    h = Harness(ack_deadline_s=5.0)
    for n in ("n1", "n2"):
        h.status(n, 1000.0)
    h.send(f"{PREFIX}/dispatch", {"id": "f", "kind": "shed", "fraction": 0.1, "duration_s": 1})
    h.ack("n1", "f")
    h.clock.advance(1.5)
    h.c.tick()
    (ack,) = h.take("site/ack")
    assert ack["nodes"]["accepted"] == ["n1"] and ack["nodes"]["missing"] == ["n2"]
    assert "f" not in h.c.events


def test_an_event_every_node_refused_ends_and_a_partly_refused_one_is_held() -> None:
    h = Harness(max_event_s=86_400)
    for n in ("n1", "n2"):
        h.status(n, 1000.0)
    h.send(f"{PREFIX}/site/dispatch", {"id": "s2", "kind": "site_shed", "fraction": 0.1,
                                       "at": "meter", "duration_s": 7200})
    assert set(h.orders()) == {"n1", "n2"}
    for n in ("n1", "n2"):
        h.ack(n, "s2", accepted=False)
    h.c.tick()
    (ack,) = h.take("site/ack")
    assert ack["accepted"] is False and ack["nodes"]["rejected"] == {"n1": "no", "n2": "no"}
    assert "s2" not in h.c.events  # forgotten: no status entry, no rebalance, no release
    h.clock.advance(1.0)  # the first status: once the view had its time to come in
    h.c.tick()
    assert h.c.snapshot["events"] == [] and h.take("site/events")[-1]["events"] == []
    for n in ("n1", "n2"):
        h.status(n, 900.0)
    h.clock.advance(2.5)
    h.c.tick()
    assert h.orders() == {} and h.c.snapshot["events"] == []
    h.send(f"{PREFIX}/site/dispatch", {"id": "r", "kind": "release", "ref": "s2"})
    (refused,) = h.take("site/ack")
    assert refused["accepted"] is False and "no site event 's2'" in refused["reason"]
    # one node accepts, one refuses: the event is held by the one that accepted
    h.send(f"{PREFIX}/site/dispatch", {"id": "s3", "kind": "site_shed", "fraction": 0.1,
                                       "duration_s": 600})
    h.ack("n1", "s3")
    h.ack("n2", "s3", accepted=False)
    h.c.tick()
    (ack,) = h.take("site/ack")
    assert ack["accepted"] is True and ack["nodes"]["accepted"] == ["n1"]
    h.clock.advance(1.0)
    h.c.tick()
    assert [e["id"] for e in h.c.snapshot["events"]] == ["s3"] and "s3" in h.c.events


def test_the_site_refuses_by_default_an_event_longer_than_a_default_node_takes() -> None:
    h = Harness()
    h.status("n1", 1000.0)
    h.send(f"{PREFIX}/site/dispatch", {"id": "s2", "kind": "site_shed", "fraction": 0.1,
                                       "at": "meter", "duration_s": 7200})
    (ack,) = h.take("site/ack")
    assert ack["accepted"] is False and "limit 3600 s" in ack["reason"]
    assert h.orders() == {} and "s2" not in h.c.events


def _answered(h: Harness, event: str) -> dict[str, Any]:
    for n in ("n1", "n2"):
        h.ack(n, event)
    h.c.tick()
    (ack,) = h.take("site/ack")
    return ack


def test_the_site_ack_states_the_reduction_asked_and_what_the_nodes_cannot_give() -> None:
    h = Harness()
    for n in ("n1", "n2"):
        h.status(n, 1000.0)  # 600 W of headroom each, 2 % of it kept as margin
    can_give = 2 * 600 * 0.98
    h.send(f"{PREFIX}/site/dispatch", {"id": "big", "kind": "site_shed", "reduction_w": 1e5,
                                       "at": "it", "duration_s": 60})
    ack = _answered(h, "big")
    assert ack["requested_w"] == 100_000.0 and ack["target_w"] == 0.0
    assert ack["shortfall_w"] == pytest.approx(100_000 - can_give, abs=0.2)
    assert f"{100_000 - can_give:.0f} W less than the 100000 W asked" in ack["reason"]
    h.send(f"{PREFIX}/site/dispatch", {"id": "rb", "kind": "release", "ref": "big"})
    h.sent.clear()
    # at the meter: what the nodes cannot give, in W at the meter (the model's, no reading)
    model = h.c.meter.model
    per_it = model.steady_meter_w(1.0) - model.fixed_w
    h.send(f"{PREFIX}/site/dispatch", {"id": "m", "kind": "site_shed", "reduction_w": 1e5,
                                       "at": "meter", "duration_s": 60})
    ack = _answered(h, "m")
    assert ack["requested_w"] == 100_000.0
    assert ack["shortfall_w"] == pytest.approx(100_000 - can_give * per_it, abs=0.5)
    h.send(f"{PREFIX}/site/dispatch", {"id": "rm", "kind": "release", "ref": "m"})
    h.sent.clear()
    # a reduction the nodes can give: none short, at the GPUs or at the meter
    for ident, at in (("f-it", "it"), ("f-meter", "meter")):
        h.send(f"{PREFIX}/site/dispatch", {"id": ident, "kind": "site_shed", "fraction": 0.2,
                                           "at": at, "duration_s": 60})
        ack = _answered(h, ident)
        assert ack["shortfall_w"] == 0.0 and ack["reason"] is None, ack
        reference = 2000.0 if at == "it" else model.steady_meter_w(2000.0)
        assert ack["requested_w"] == pytest.approx(0.2 * reference, abs=0.1)
        h.send(f"{PREFIX}/site/dispatch", {"id": f"r-{ident}", "kind": "release",
                                           "ref": ident})
        h.sent.clear()
    # a cap above the site's draw asks for no reduction, and the ack says so
    h.send(f"{PREFIX}/site/dispatch", {"id": "high", "kind": "site_cap", "site_w": 2079,
                                       "at": "it", "duration_s": 60})
    ack = _answered(h, "high")
    assert ack["requested_w"] == 0.0 and ack["shortfall_w"] == 0.0
    assert ack["accepted"] is True and "already under the cap" in ack["reason"]


def test_release_and_award_acks_carry_no_commanded_at() -> None:
    h = Harness()
    h.status("n1", 1000.0)
    h.send(f"{PREFIX}/site/dispatch", {"id": "e", "kind": "site_cap", "site_w": 800,
                                       "duration_s": 60})
    h.send(f"{PREFIX}/site/dispatch", {"id": "r", "kind": "release", "ref": "e"})
    (ack,) = h.take("site/ack")
    # as a node's release ack: the nodes' ramp-out writes the limits, not the release
    assert ack["accepted"] is True and ack["ref"] == "e" and ack["commanded_at"] is None
    hour = int(h.clock.wall()) // 3600 * 3600 + 3600
    _plan(h, "n1", hour, {"ffr": [300_000]}, [1000])
    h.c.tick()
    h.send(f"{PREFIX}/site/award", {"id": "a", "start": hour, "mtu_s": 3600,
                                    "capacity_w": {"ffr": [200_000]}})
    (award,) = h.take("site/ack")
    assert award["accepted"] is True and award["commanded_at"] is None
    # the nodes it went to, in the shape of every site ack's (docs/asyncapi.yaml, SiteAck)
    assert award["nodes"] == {"accepted": ["n1"], "rejected": {}, "missing": [], "offline": []}


def test_a_node_refusing_the_sites_orders_for_auth_is_named_once_and_in_the_ack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    for n in ("n1", "n2"):
        h.status(n, 1000.0)
    unsigned = "auth: unsigned: field 'sig' is missing"
    for event in ("e1", "e2"):
        h.send(f"{PREFIX}/site/dispatch", {"id": event, "kind": "site_cap", "site_w": 1800,
                                           "duration_s": 60})
        h.ack("n1", event)
        h.send(f"{PREFIX}/nodes/n2/ack", {"id": event, "accepted": False, "reason": unsigned,
                                          "received_at": h.clock.wall(), "commanded_at": None,
                                          "reached_at": None})
        h.c.tick()
        (ack,) = h.take("site/ack")
        assert ack["nodes"]["rejected"] == {"n2": unsigned}  # the node's own reason
        assert "n2 refused: " + unsigned + " (the node requires signed dispatches and the " \
            "site signs none" in ack["reason"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                and "n2" in r.getMessage()]
    assert len(warnings) == 1 and "site.signing" in warnings[0]  # once per node


def test_a_node_whose_status_says_it_will_refuse_the_sites_orders_is_named_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The node status says what a dispatch must carry: the site warns before any order."""
    h = Harness()
    h.status("n1", 1000.0, auth={"mode": "none"})
    h.status("n2", 1000.0, auth={"mode": "ed25519", "dispatch_kids": ["agg1"]})
    h.status("n2", 1000.0, auth={"mode": "ed25519", "dispatch_kids": ["agg1"]})
    h.status("n3", 1000.0, auth={"bogus": True})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # n2 only, and once
    assert "node n2 will refuse the site's orders" in warnings[0]
    assert "site.signing" in warnings[0]
    # A site that signs: a node that does not list its key is named, one that does is not.
    signed = OrderAuth(SiteSigningConfig(mode="ed25519", kid="site1", file="k"))
    signed.on_status("n4", {"mode": "ed25519", "dispatch_kids": ["agg1", "site1"]})
    signed.on_status("n5", {"mode": "ed25519", "dispatch_kids": ["agg1"]})
    assert signed.warned == {"n5"}


SITE_YAML = Path(__file__).resolve().parent.parent / "configs" / "site.yaml"


def _same_as_default(data: Any, default: Any, key: str) -> None:
    """``data`` (parsed YAML) states ``default`` exactly, every dataclass field included."""
    if dataclasses.is_dataclass(default):
        assert isinstance(data, dict), key
        names = {f.name for f in dataclasses.fields(default)}
        assert set(data) == names, f"{key}: configs/site.yaml lacks {sorted(names - set(data))}"\
            f", has unknown {sorted(set(data) - names)}"
        for name in names:
            _same_as_default(data[name], getattr(default, name), f"{key}.{name}")
    elif isinstance(default, tuple):
        assert isinstance(data, list) and len(data) == len(default), key
        for i, (value, d) in enumerate(zip(data, default, strict=True)):
            _same_as_default(value, d, f"{key}[{i}]")
    else:
        assert data == default and type(data) is type(default), \
            f"{key}: configs/site.yaml has {data!r}, the built-in default is {default!r}"


def test_configs_site_yaml_states_every_site_key_with_its_builtin_default() -> None:
    data = yaml.safe_load(SITE_YAML.read_text(encoding="utf-8"))
    _same_as_default(data["site"], SiteConfig(), "site")
    assert config_from_mapping(data).site == SiteConfig()


def test_a_node_offline_when_the_event_arrives_is_counted_at_its_last_draw() -> None:
    h = Harness()
    for n in ("n1", "n2"):
        h.status(n, 1000.0)
    h.c.on_message(f"{PREFIX}/nodes/n2/status", b'{"node":"n2","online":false}')
    h.send(f"{PREFIX}/site/dispatch", {"id": "e", "kind": "site_cap", "site_w": 1500,
                                       "at": "it", "duration_s": 60})
    (order,) = h.orders().values()
    assert order["node_w"] <= 500 + 0.5  # n2 may still draw its 1000 W: n1 covers it
    h.ack("n1", "e")
    h.c.tick()
    (ack,) = h.take("site/ack")
    assert ack["requested_w"] == 500.0 and ack["nodes"]["offline"] == ["n2"]
    assert "offline: n2, each counted at its last draw" in ack["reason"]


def test_a_refused_rebalance_keeps_the_event_and_the_earlier_caps_in_force() -> None:
    h = _site_capped_on_three("e", 2400, 600)
    assert set(h.orders()) == {"n1", "n2", "n3"}
    for n in ("n1", "n2", "n3"):
        h.ack(n, "e")
    h.c.tick()
    (first,) = h.take("site/ack")
    assert first["accepted"] is True
    # n3 goes offline: the next rebalance moves its share, and both nodes refuse the new caps.
    h.c.on_message(f"{PREFIX}/nodes/n3/status", b'{"node":"n3","online":false}')
    h.status("n1", 800.0)
    h.status("n2", 800.0)
    h.clock.advance(2.5)
    h.c.tick()
    second = h.orders()
    assert {o["id"] for o in second.values()} == {"e~1"}
    for n in second:
        h.ack(n, "e~1", accepted=False)
    h.c.tick()
    (ack,) = h.take("site/ack")
    assert ack["accepted"] is True and "hold their earlier orders" in ack["reason"]

    def releases() -> list[tuple[str, str]]:
        return [(t.split("/")[2], b["ref"]) for t, b, _ in h.sent
                if t.endswith("/dispatch") and b["kind"] == "release"]

    assert "e" in h.c.events and releases() == []  # the accepted caps stay at the nodes
    # n3 comes back: the next split is accepted, and only then do the earlier orders end,
    # node by node.
    h.status("n3", 1000.0)
    h.clock.advance(2.5)
    h.c.tick()
    third = h.orders()
    assert {o["id"] for o in third.values()} == {"e~2"}
    h.ack("n1", "e~2")
    h.c.tick()
    assert sorted(releases()) == [("n1", "e")]  # its refused e~1 held nothing


def test_a_signed_retry_is_a_duplicate_however_old_and_a_stale_new_request_is_refused() -> None:
    """As a node answers: a repeat of a request seen before (its terms, its signature) gets the
    event's ack however old it is; only a request that would act is judged for freshness."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gridtao.config.agent import AuthConfig
    from gridtao.security import auth
    from gridtao.security.auth import AuthRejected
    from gridtao.site.guard import Duplicate, SiteGuard

    key = Ed25519PrivateKey.generate()
    verifier = auth.Verifier("ed25519", {"agg": (key.public_key(), frozenset({"dispatch"}))})
    guard = SiteGuard(AuthConfig(), verifier)
    issued = 1_800_000_000.0
    body = {"id": "e", "kind": "site_cap", "site_w": 2400, "duration_s": 60,
            "issued_at": issued}
    payload = auth.sign_payload(body, key, "agg", "ed25519", topic="dispatch")
    guard.check(payload, "e", issued, ("e", 2400), issued + 1.0)
    with pytest.raises(Duplicate):  # 43 s later: still the same request
        guard.check(payload, "e", issued, ("e", 2400), issued + 43.0)
    late = auth.sign_payload(body | {"id": "f"}, key, "agg", "ed25519", topic="dispatch")
    with pytest.raises(AuthRejected, match="stale"):
        guard.check(late, "f", issued, ("f", 2400), issued + 43.0)
    unsigned = json.dumps(body).encode()
    with pytest.raises(AuthRejected, match="unsigned"):  # a repeat must prove its sender too
        guard.check(unsigned, "e", issued, ("e", 2400), issued + 43.0)


def test_a_release_ends_only_the_orders_nodes_hold() -> None:
    """A refused order holds nothing at its node: a release of the event ends the orders in
    force (the accepted earlier ones), never the refused ones (the node would answer 'no
    active event')."""
    h = Harness()
    _held_by_three(h, {"id": "e", "kind": "site_cap", "site_w": 2400, "duration_s": 600})
    h.c.tick()
    h.c.on_message(f"{PREFIX}/nodes/n3/status", b'{"node":"n3","online":false}')
    h.status("n1", 800.0)
    h.status("n2", 800.0)
    h.clock.advance(2.5)
    h.c.tick()
    for n in h.orders():
        h.ack(n, "e~1", accepted=False)
    h.c.tick()
    h.sent.clear()
    h.send(f"{PREFIX}/site/dispatch", {"id": "r", "kind": "release", "ref": "e"})
    ended = sorted((t.split("/")[2], b["ref"]) for t, b, _ in h.sent
                   if t.endswith("/dispatch") and b["kind"] == "release")
    assert ended == [("n1", "e"), ("n2", "e"), ("n3", "e")]  # n3's too: its cap stayed there


def test_a_node_refusing_another_message_with_the_events_id_still_holds_its_order() -> None:
    """A node refuses junk sent with an event's id (an unsigned release under that id, a
    replayed order): its refusal says the event stands (``in_force``), or comes after it
    accepted. Neither is an answer to the site's order: the release still ends it there."""
    h = Harness()
    _held_by_three(h, {"id": "e", "kind": "site_cap", "site_w": 2400, "duration_s": 600})
    h.c.tick()
    now = h.clock.wall()
    for n, extra in (("n1", {"in_force": True}), ("n2", {})):
        h.send(f"{PREFIX}/nodes/{n}/ack", {"id": "e", "accepted": False, "reason": "auth: x",
                                           "received_at": now, "commanded_at": None,
                                           "reached_at": None} | extra)
    assert all(o.answer == "accepted" for o in h.c.events["e"].orders.values())
    h.sent.clear()
    h.send(f"{PREFIX}/site/dispatch", {"id": "r", "kind": "release", "ref": "e"})
    ended = sorted(t.split("/")[2] for t, b, _ in h.sent
                   if t.endswith("/dispatch") and b["kind"] == "release")
    assert ended == ["n1", "n2", "n3"]
    (ack,) = h.take("site/ack")
    assert ack["nodes"] == {"released": ["n1", "n2", "n3"]}  # the aggregator sees where


def test_two_events_re_split_by_one_change_reach_a_node_a_second_apart() -> None:
    """A node takes one cut a second: when a node's loss re-splits two site events at once,
    the second event's new orders wait until each node can take them, instead of being sent
    at once, refused, and never sent again."""
    h = Harness()
    _held_by_three(h, {"id": "a", "kind": "site_cap", "site_w": 2700, "duration_s": 600})
    h.clock.advance(1.5)
    _held_by_three(h, {"id": "b", "kind": "site_shed", "reduction_w": 600, "duration_s": 600})
    h.c.tick()
    h.c.on_message(f"{PREFIX}/nodes/n3/status", b'{"node":"n3","online":false}')
    h.clock.advance(2.5)
    h.sent.clear()
    sent_at: dict[str, list[float]] = {"n1": [], "n2": []}
    for _ in range(12):
        h.status("n1", 900.0)
        h.status("n2", 900.0)
        h.c.tick()
        for t, b, _ in h.sent:
            node = t.split("/")[2]
            if t.endswith("/dispatch") and b["kind"] == "cap" and node in sent_at:
                sent_at[node].append(h.clock.wall())
                h.ack(node, b["id"])  # each new order accepted as it comes
        h.sent.clear()
        h.clock.advance(0.25)
    for node, times in sent_at.items():
        assert len(times) == 2, (node, times)  # both events re-split there
        assert times[1] - times[0] >= 1.0, (node, times)  # never inside the node's interval


def test_a_new_event_reaches_a_node_that_just_took_a_cap_as_soon_as_it_may() -> None:
    """Two site events 0.5 s apart: the second's orders wait at each node until its interval
    since the first's has passed (sent at once, the node would refuse it), then go for what
    is left of the event; a node with no earlier order gets its share at once."""
    h = _site_capped_on_three()
    t0 = h.clock.wall()
    assert set(h.orders()) == {"n1", "n2", "n3"}
    h.clock.advance(0.5)
    h.status("n4", 1000.0)
    h.send(f"{PREFIX}/site/dispatch", {"id": "b", "kind": "site_shed", "reduction_w": 400,
                                       "duration_s": 60})
    assert set(h.orders()) == {"n4"}  # the only node free to take a cut now
    sent: dict[str, float] = {}
    for _ in range(10):
        h.clock.advance(0.1)
        h.c.tick()
        for node, order in h.orders().items():
            sent[node] = h.clock.wall()
            assert order["id"] == "b" and order["duration_s"] == 59  # what is left of it
    assert set(sent) == {"n1", "n2", "n3"}
    for at in sent.values():  # one tick after the node's interval (1.1 s) since "a"
        assert t0 + 1.1 <= at <= t0 + 1.2 + 1e-6


def test_orders_held_for_one_node_by_two_new_events_reach_it_an_interval_apart() -> None:
    h = _site_capped_on_three()
    h.orders()
    for ident in ("b", "c"):
        h.clock.advance(0.3)
        h.send(f"{PREFIX}/site/dispatch", {"id": ident, "kind": "site_shed",
                                           "reduction_w": 300, "duration_s": 600})
    sent: dict[str, list[tuple[float, str]]] = {"n1": [], "n2": [], "n3": []}
    for _ in range(30):
        h.clock.advance(0.1)
        h.c.tick()
        for node, order in h.orders().items():
            sent[node].append((h.clock.wall(), order["id"]))
    for node, times in sent.items():
        assert [i for _, i in times] == ["b", "c"], (node, times)
        assert times[1][0] - times[0][0] >= 1.1 - 1e-6, (node, times)


def test_an_order_still_held_at_a_restart_is_sent_by_the_next_split() -> None:
    h = Harness()
    for n in ("n1", "n2"):
        h.status(n, 1000.0)
    h.send(f"{PREFIX}/site/dispatch", {"id": "a", "kind": "site_cap", "site_w": 1800,
                                       "duration_s": 600})
    h.clock.advance(0.3)
    h.status("n3", 1000.0)
    h.send(f"{PREFIX}/site/dispatch", {"id": "b", "kind": "site_shed", "reduction_w": 300,
                                       "duration_s": 600})
    h.c.tick()
    (record,) = [b for t, b, retain in h.sent if t.endswith("site/events") and retain][-1:]
    held = record["events"][-1]["orders"]
    assert held["n1"]["sent"] is False and "sent" not in held["n3"]  # n3 had it at once
    again = Harness()
    again.c.on_message(f"{PREFIX}/site/events", json.dumps(record).encode(), retained=True)
    assert set(again.c.events["b"].orders) == {"n3"}  # what never reached n1 and n2 is dropped
    got: set[str] = set()
    for _ in range(40):  # until every node has had a status period to be seen again
        for n in ("n1", "n2", "n3"):
            again.status(n, 1000.0)
        again.clock.advance(0.5)
        again.c.tick()
        got |= {node for node, o in again.orders().items() if o["id"].startswith("b")}
    assert {"n1", "n2"} <= got


def test_a_node_saying_an_hour_between_cuts_holds_a_re_split_10_s_at_most() -> None:
    """A node status is anyone's message on the broker: the interval it states is honoured
    up to MAX_ORDER_SPACING_S, so one cannot hold every re-split of every event for an hour."""
    from gridtao.site.coordinator import MAX_ORDER_SPACING_S

    h = Harness()
    h.status("n1", 1000.0, interval_s=3600.0)
    assert h.c._spacing_s("n1") == MAX_ORDER_SPACING_S == 10.0
    h.status("n2", 1000.0)
    assert h.c._spacing_s("n2") == 1.1


def test_a_node_that_says_it_takes_a_cut_every_3_s_gets_its_orders_3_s_apart() -> None:
    """The spacing is the node's own ``limits.min_event_interval_s`` when its status says
    it (plus a little), never less than the default's."""
    h = Harness()
    for n in ("n1", "n2", "n3"):
        h.status(n, 1000.0, interval_s=3.0)
    h.send(f"{PREFIX}/site/dispatch", {"id": "a", "kind": "site_cap", "site_w": 2700,
                                       "duration_s": 600})
    for n in ("n1", "n2", "n3"):
        h.ack(n, "a")
    h.c.tick()
    h.c.on_message(f"{PREFIX}/nodes/n3/status", b'{"node":"n3","online":false}')
    h.clock.advance(2.0)  # the event's rebalance is due, but n1 and n2 had a cap 2 s ago
    for n in ("n1", "n2"):
        h.status(n, 900.0, interval_s=3.0)
    h.sent.clear()
    h.c.tick()
    assert h.orders() == {}
    h.clock.advance(1.2)
    h.c.tick()
    assert set(h.orders()) == {"n1", "n2"}


def _site_capped_on_three(ident: str = "a", site_w: float = 2700,
                          duration_s: float = 600) -> Harness:
    """A site of nodes n1-n3 at 1000 W each, sent site cap ``ident``."""
    h = Harness()
    for n in ("n1", "n2", "n3"):
        h.status(n, 1000.0)
    h.send(f"{PREFIX}/site/dispatch", {"id": ident, "kind": "site_cap", "site_w": site_w,
                                       "duration_s": duration_s})
    return h


def _held_by_three(h: Harness, request: dict[str, Any]) -> None:
    """Nodes n1-n3 online at 1000 W (their status sent again), ``request`` sent to the site,
    and every node's order accepted."""
    for n in ("n1", "n2", "n3"):
        h.status(n, 1000.0)
    h.send(f"{PREFIX}/site/dispatch", request)
    for n in ("n1", "n2", "n3"):
        h.ack(n, str(request["id"]))


def test_a_restarted_coordinator_keeps_each_orders_answer_and_times() -> None:
    """A duplicate answered after a restart says what was commanded and reached (it said
    null for both: 'nothing commanded' while every node held its cap), and an order a node
    refused stays refused (a release must not end it there)."""
    h = Harness()
    for n in ("n1", "n2", "n3"):
        h.status(n, 1000.0)
    request = {"id": "e", "kind": "site_cap", "site_w": 2400, "duration_s": 60}
    h.send(f"{PREFIX}/site/dispatch", request)
    h.c.tick()  # as the coordinator's loop does: its record is written before any answer
    for n in ("n1", "n2"):
        h.ack(n, "e", reached=True)
    h.ack("n3", "e", accepted=False)
    h.c.tick()
    *_, before = h.take("site/ack")
    assert before["commanded_at"] is not None and before["reached_at"] is not None
    records = [b for t, b, retain in h.sent if t.endswith("site/events") and retain]
    again = Harness()
    again.c.on_message(f"{PREFIX}/site/events", json.dumps(records[-1]).encode(), retained=True)
    again.send(f"{PREFIX}/site/dispatch", request)
    (state,) = again.take("site/ack")
    assert (state["commanded_at"], state["reached_at"]) == (before["commanded_at"],
                                                            before["reached_at"])
    assert state["nodes"]["rejected"] == {"n3": "no"}
    again.send(f"{PREFIX}/site/dispatch", {"id": "r", "kind": "release", "ref": "e"})
    ended = sorted(t.split("/")[2] for t, b, _ in again.sent
                   if t.endswith("/dispatch") and b["kind"] == "release")
    assert ended == ["n1", "n2"]


def test_a_fleet_dispatch_refused_for_its_signature_gets_no_hint_about_the_sites_signing(
) -> None:
    """The aggregator signed (or did not sign) a fleet dispatch itself: the site's advice on
    its own site.signing would send the operator the wrong way."""
    h = Harness(ack_deadline_s=1.0)
    for n in ("n1", "n2"):
        h.status(n, 1000.0)
    h.send(f"{PREFIX}/dispatch", {"id": "f", "kind": "shed", "fraction": 0.2,
                                  "duration_s": 30})
    unsigned = "auth: unsigned: field 'sig' is missing"
    for n in ("n1", "n2"):
        h.send(f"{PREFIX}/nodes/{n}/ack", {"id": "f", "accepted": False, "reason": unsigned,
                                           "received_at": h.clock.wall(),
                                           "commanded_at": None, "reached_at": None})
    h.c.tick()
    (ack,) = h.take("site/ack")
    assert ack["reason"] == f"n1 refused: {unsigned}; n2 refused: {unsigned}"


def test_a_restarted_coordinators_first_status_waits_for_its_view() -> None:
    """A first retained status from an empty view reads as every node gone and no event in
    force: it waits for the retained node statuses and the site's own record (at most
    FIRST_STATUS_WAIT_S), then says what is in force."""
    h = Harness()
    _held_by_three(h, {"id": "e", "kind": "site_cap", "site_w": 2400, "duration_s": 600})
    h.c.tick()
    (record,) = [b for t, b, retain in h.sent if t.endswith("site/events") and retain][-1:]
    again = Harness()
    again.c.tick()
    assert again.take("site/status") == []  # nothing seen yet: nothing said
    again.c.on_message(f"{PREFIX}/site/events", json.dumps(record).encode(), retained=True)
    again.status("n1", 800.0)
    again.c.tick()
    assert again.take("site/status") == []  # the record, one node of three: not yet
    for n in ("n2", "n3"):
        again.status(n, 800.0)
    again.c.tick()
    (status,) = again.take("site/status")
    assert status["nodes_online"] == 3 and [e["id"] for e in status["events"]] == ["e"]
    # A site with no record and no node says so once the wait is over, not never.
    empty = Harness()
    empty.c.tick()
    assert empty.take("site/status") == []
    empty.clock.advance(1.0)
    empty.c.tick()
    assert empty.take("site/status")[0]["nodes_online"] == 0


def test_a_node_that_stopped_cleanly_is_said_to_hold_no_cap() -> None:
    """A clean stop's status says its limits were put back: the ack says so of that node,
    and keeps 'caps may still be in force' for a node gone by its last will."""
    h = Harness()
    _held_by_three(h, {"id": "e", "kind": "site_cap", "site_w": 2400, "duration_s": 600})
    h.c.tick()
    h.c.on_message(f"{PREFIX}/nodes/n2/status",
                   b'{"node":"n2","online":false,"restored":true}')
    h.c.on_message(f"{PREFIX}/nodes/n3/status", b'{"node":"n3","online":false}')
    h.status("n1", 800.0)
    h.clock.advance(2.5)
    h.c.tick()
    h.ack("n1", "e~1")
    h.c.tick()
    *_, ack = h.take("site/ack")
    assert "offline: n3, each counted at its last draw" in ack["reason"]
    assert "stopped: n2, limits put back (no cap held there)" in ack["reason"]
    assert ack["nodes"]["offline"] == ["n2", "n3"]


def _record(wall: float, until_s: float) -> dict[str, Any]:
    """A site events record holding one event, as another coordinator would write it."""
    h = Harness()
    for n in ("n1", "n2", "n3"):
        h.status(n, 1000.0)
    h.clock.advance(wall - h.clock.wall())
    h.send(f"{PREFIX}/site/dispatch", {"id": "x", "kind": "site_cap", "site_w": 1,
                                       "duration_s": until_s})
    h.c.tick()
    (record,) = [b for t, b, retain in h.sent if t.endswith("site/events") and retain][-1:]
    return record


def test_an_events_record_published_on_the_topic_is_never_taken() -> None:
    # Anyone may publish on {prefix}/site/events: an idle coordinator that took it would
    # sign caps for every node. Only the retained record, once, at start, is taken back.
    h = Harness()
    for n in ("n1", "n2", "n3"):
        h.status(n, 1000.0)
    record = _record(h.clock.wall(), 600.0)
    h.c.on_message(f"{PREFIX}/site/events", json.dumps(record).encode())  # live, not retained
    for _ in range(10):
        h.clock.advance(0.5)
        h.c.tick()
    assert h.c.events == {} and h.orders() == {}
    late = Harness()
    late.c.on_message(f"{PREFIX}/site/events", b'{"site": "s", "t": 0, "events": []}',
                      retained=True)
    late.c.on_message(f"{PREFIX}/site/events", json.dumps(record).encode(), retained=True)
    assert late.c.events == {}  # a record after the first is not the one the broker kept


def test_a_retained_record_delivered_again_after_the_first_status_is_not_taken() -> None:
    # No record was retained at start; one the broker delivers on a reconnect later (retained
    # again: put back by someone) is not the state this coordinator started from.
    h = Harness()
    for n in ("n1", "n2", "n3"):
        h.status(n, 1000.0)
    h.clock.advance(1.1)  # the first status waits at most FIRST_STATUS_WAIT_S for a record
    h.c.tick()
    assert h.take("site/status")
    h.c.on_message(f"{PREFIX}/site/events", json.dumps(_record(h.clock.wall(), 600.0)).encode(),
                   retained=True)
    assert h.c.events == {}


def test_a_restored_event_longer_than_the_site_takes_is_dropped() -> None:
    h = Harness(max_event_s=300.0)
    record = _record(h.clock.wall(), 60.0)
    record["events"][0]["until"] = h.clock.wall() + 3600.0  # doctored: an hour on
    h.c.on_message(f"{PREFIX}/site/events", json.dumps(record).encode(), retained=True)
    assert h.c.events == {}


def test_signed_mode_takes_back_only_a_record_the_site_signed(tmp_path: Path) -> None:
    config, _ = _hmac_site(tmp_path, site_kid="site")
    record = _record(VirtualClock().wall(), 600.0)

    def coordinator() -> SiteCoordinator:
        return SiteCoordinator(config, clock=VirtualClock(), publish=lambda *_: None,
                               sign=signer(config), verifier=None)

    forged = coordinator()
    forged.on_message(f"{PREFIX}/site/events", json.dumps(record).encode(), retained=True)
    assert forged.events == {} and forged.counts.get("events_record_refused") == 1
    own = coordinator()
    own.on_message(f"{PREFIX}/site/events", signer(config)(record), retained=True)
    assert set(own.events) == {"x"}


@pytest.mark.parametrize("payload", [
    b'{"id":"nan-1","kind":"shed","fraction":0.1,"duration_s":NaN}',
    b'{"id":"inf-1","kind":"shed","fraction":0.1,"duration_s":1e999}',
    b'{"id":"neg-1","kind":"shed","fraction":0.1,"duration_s":-5}',
    b'{"id":"big","kind":"shed","fraction":0.1,"duration_s":30,"pad":"' + b"x" * 70_000 + b'"}',
])
def test_a_fleet_dispatch_no_node_would_take_is_not_followed(payload: bytes) -> None:
    h = Harness()
    h.status("n1", 1000.0)
    h.c.on_message(f"{PREFIX}/dispatch", payload)
    h.c.tick()  # a NaN kept would stop the coordinator here (its record is strict JSON)
    assert h.c.events == {}


def test_only_so_many_fleet_dispatches_are_followed_at_once() -> None:
    h = Harness()
    h.status("n1", 1000.0)
    for k in range(MAX_FLEET_EVENTS + 5):
        h.send(f"{PREFIX}/dispatch", {"id": f"f{k}", "kind": "shed", "fraction": 0.1,
                                      "duration_s": 600})
    assert len(h.c.events) == MAX_FLEET_EVENTS
    assert h.c.counts["fleet_dispatch_over_limit"] == 5


def test_after_a_key_change_the_record_the_old_key_signed_is_taken_back_when_listed(
        tmp_path: Path) -> None:
    secrets_ = {}
    for kid in ("site-2025", "site-2026"):
        secrets_[kid] = tmp_path / f"{kid}.hmac"
        secrets_[kid].write_text(base64.b64encode(os.urandom(32)).decode())
        secrets_[kid].chmod(0o600)

    def config(kid: str, previous: list[dict[str, str]]) -> Config:
        return config_from_mapping({
            "mqtt": {"prefix": PREFIX},
            "auth": {"mode": "hmac", "keys": [{"kid": "agg", "file": str(secrets_[kid])}]},
            "site": {"nodes": ["n1"], "signing": {"mode": "hmac", "kid": kid,
                                                  "file": str(secrets_[kid]),
                                                  "previous": previous}}})

    signed_before = signer(config("site-2025", []))(_record(VirtualClock().wall(), 600.0))
    old = [{"kid": "site-2025", "file": str(secrets_["site-2025"])}]
    for previous, taken in (([], False), (old, True)):
        cfg = config("site-2026", previous)
        c = SiteCoordinator(cfg, clock=VirtualClock(), publish=lambda *_: None,
                            sign=signer(cfg), verifier=None)
        c.on_message(f"{PREFIX}/site/events", signed_before, retained=True)
        assert (set(c.events) == {"x"}) is taken
    with pytest.raises(ConfigError, match=r"site\.signing\.previous\[0\]\.kid: 'site-2026' is "
                       "named twice"):
        config("site-2026", [{"kid": "site-2026", "file": str(secrets_["site-2025"])}])


def test_a_node_that_stopped_cleanly_counts_at_its_draw_before_the_event_not_its_capped_one(
        ) -> None:
    """A clean stop put the node's limits back: the site's IT power (its status, the meter's
    model error, the measured reduction) counts it at its draw before the event, not at its
    last draw under the cap, and a restarted coordinator, which hears only the node's offline
    status, counts it so too instead of at zero. A node gone by its last will keeps its caps:
    a restarted coordinator counts it at most at the cap it accepted."""
    h = Harness()
    _held_by_three(h, {"id": "e", "kind": "site_cap", "site_w": 2400, "duration_s": 600})
    for n in ("n1", "n2", "n3"):
        h.status(n, 800.0)  # capped
    assert h.c._site_it_w(h.clock.wall()) == pytest.approx(2400.0)
    h.c.on_message(f"{PREFIX}/nodes/n2/status",
                   b'{"node":"n2","online":false,"restored":true}')
    assert h.c._site_it_w(h.clock.wall()) == pytest.approx(800.0 + 1000.0 + 800.0)
    h.c.tick()
    (record,) = [b for t, b, retain in h.sent if t.endswith("site/events") and retain][-1:]
    cap_n3 = record["events"][0]["orders"]["n3"]["node_w"]
    again = Harness()
    again.c.on_message(f"{PREFIX}/site/events", json.dumps(record).encode(), retained=True)
    again.c.on_message(f"{PREFIX}/nodes/n2/status",
                       b'{"node":"n2","online":false,"restored":true}')
    again.c.on_message(f"{PREFIX}/nodes/n3/status", b'{"node":"n3","online":false}')
    again.status("n1", 800.0)
    assert again.c._site_it_w(again.clock.wall()) == pytest.approx(800.0 + 1000.0 + cap_n3)


def test_a_new_event_splits_from_the_draws_the_site_counts() -> None:
    """A node that stopped cleanly during an event draws its natural power again: a second
    event arriving meanwhile starts from that, as the site's IT power counts it, not from the
    node's last draw under the first event's cap (its reference and its nodes' draws agree)."""
    h = Harness()
    _held_by_three(h, {"id": "e", "kind": "site_cap", "site_w": 2400, "duration_s": 600})
    for n in ("n1", "n2", "n3"):
        h.status(n, 800.0)  # capped
    h.c.on_message(f"{PREFIX}/nodes/n2/status",
                   b'{"node":"n2","online":false,"restored":true}')
    h.send(f"{PREFIX}/site/dispatch",
           {"id": "f", "kind": "site_shed", "reduction_w": 100, "duration_s": 600})
    second = h.c.events["f"]
    assert second.draws_w["n2"] == pytest.approx(1000.0)
    assert second.draws_w["n1"] == second.draws_w["n3"] == pytest.approx(800.0)
    assert sum(second.draws_w.values()) == pytest.approx(h.c._site_it_w(h.clock.wall()))


def test_the_target_metric_is_kept_per_settlement_point() -> None:
    """An IT-level cap and a meter-level cap in force together: each has its own series (the
    lowest of one is not a target of the other's power)."""
    from prometheus_client import CollectorRegistry

    from gridtao.site.metrics import register

    h = Harness()
    registry = CollectorRegistry()
    register(h.c, registry)
    _held_by_three(h, {"id": "it", "kind": "site_cap", "site_w": 2400, "duration_s": 600})
    h.send(f"{PREFIX}/site/dispatch", {"id": "m", "kind": "site_cap", "site_w": 2900,
                                       "at": "meter", "duration_s": 600})
    h.clock.advance(5.0)  # the next status period: the snapshot the collector reads
    h.c.tick()

    def target(at: str) -> float | None:
        return registry.get_sample_value("gridtao_site_target_watts", {"at": at})

    assert target("it") == pytest.approx(2400.0) and target("meter") == pytest.approx(2900.0)
