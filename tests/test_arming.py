"""Tier 3's hand-over: awards parsed and filed by MTU, capacities applied at MTU boundaries,
a change never landing in the middle of an activation. Virtual time; no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from broker import MosquittoBroker
from nodes import node_config, running, steady_sim

from gridtao.app.arming import Arming, AwardBook
from gridtao.clock import MonotonicClock
from gridtao.config.agent import config_from_mapping
from gridtao.products.portfolio import Portfolio
from gridtao.wire.awards import parse_award
from gridtao.wire.messages import MessageRejected

PRODUCTS = ["ffr", "fcr-d-up", "dr"]


def _award(event_id: str, start: int, caps: dict[str, list[float | None]],
           mtu: int = 3600) -> bytes:
    return json.dumps({"id": event_id, "start": start, "mtu_s": mtu,
                       "capacity_w": caps}).encode()


def test_an_award_covers_its_mtus_and_the_newest_wins() -> None:
    book = AwardBook()
    book.add(parse_award(_award("a", 7200, {"ffr": [100, 200], "dr": [None, 50]}),
                         max_bytes=4096, products=PRODUCTS))
    assert book.capacities_at(7199.9) == {}
    assert book.capacities_at(7200.0) == {"ffr": 100.0}
    assert book.capacities_at(10_799.0) == {"ffr": 100.0}
    assert book.capacities_at(10_800.0) == {"ffr": 200.0, "dr": 50.0}
    assert book.capacities_at(14_400.0) == {}
    book.add(parse_award(_award("b", 10_800, {"ffr": [0]}), max_bytes=4096,
                         products=PRODUCTS))
    assert book.capacities_at(10_800.0) == {"ffr": 0.0, "dr": 50.0}


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "not JSON"),
    (_award("x", 3601, {"ffr": [1]}), "MTU boundary"),
    (_award("x", 3600, {"ffr": [1]}, mtu=60), "'mtu_s' must be one of"),
    (_award("x", 3600, {"fcr-n": [1]}), "'fcr-n' is not enrolled"),
    (_award("x", 3600, {"ffr": [-1]}), "must be watts"),
    (_award("x", 3600, {"ffr": []}), "list of 1.."),
    (json.dumps({"start": 0, "mtu_s": 900, "capacity_w": {"ffr": [1]}}).encode(), "'id'"),
    (b"[" * 2000 + b"]" * 2000, "not JSON"),  # nested past the parser's recursion limit
    (_award("x", 3600 * 10**20, {"ffr": [1]}), "is not a date"),
])
def test_bad_awards_are_refused_with_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(MessageRejected) as e:
        parse_award(body, max_bytes=8192, products=PRODUCTS)
    assert reason in e.value.reason


def _portfolio() -> Portfolio:
    cfg = config_from_mapping({"safety": {"triggers": []}, "products": [
        {"kind": "ffr", "capacity_w": 400, "threshold_hz": 49.5, "support": "long",
         "support_s": 3.0, "rearm_s": 0},
        {"kind": "dr", "capacity_w": 600}]}, source="<test>")
    return Portfolio(cfg.products, ramp_out_per_s=0.5)


def test_capacities_follow_the_award_and_fall_back_to_the_configuration() -> None:
    portfolio = _portfolio()
    book = AwardBook()
    changes: list[tuple[str, float, float, str]] = []
    arming = Arming(portfolio, book, unawarded="configured",
                    on_change=lambda *c: changes.append(c))
    book.add(parse_award(_award("a", 3600, {"ffr": [150], "dr": [0]}), max_bytes=4096,
                         products=["ffr", "dr"]))
    assert arming.apply(3599.0, 0.0).armed_w == {"ffr": 400.0, "dr": 600.0}
    state = arming.apply(3600.0, 1.0)
    assert state.armed_w == {"ffr": 150.0, "dr": 0.0} and state.source["ffr"] == "award"
    assert changes == [("ffr", 400.0, 150.0, "award"), ("dr", 600.0, 0.0, "award")]
    # The hour after the award: back to the configured capacities.
    assert arming.apply(7200.0, 2.0).armed_w == {"ffr": 400.0, "dr": 600.0}


def test_a_market_node_arms_only_what_was_awarded() -> None:
    """``planner.unawarded: zero``: from the start, every MTU no award covers arms nothing; an
    awarded MTU arms its award; after it, nothing again."""
    portfolio = _portfolio()
    book = AwardBook()
    changes: list[tuple[str, float, float, str]] = []
    arming = Arming(portfolio, book, unawarded="zero", on_change=lambda *c: changes.append(c))
    state = arming.apply(3000.0, 0.0)
    assert state.armed_w == {"ffr": 0.0, "dr": 0.0} == portfolio.capacities()
    assert state.source == {"ffr": "unawarded", "dr": "unawarded"}
    book.add(parse_award(_award("a", 3600, {"ffr": [150]}), max_bytes=4096,
                         products=["ffr", "dr"]))
    state = arming.apply(3600.0, 1.0)
    assert state.armed_w == {"ffr": 150.0, "dr": 0.0} and state.source["ffr"] == "award"
    assert arming.apply(7200.0, 2.0).armed_w == {"ffr": 0.0, "dr": 0.0}
    assert changes == [("ffr", 400.0, 0.0, "unawarded"), ("dr", 600.0, 0.0, "unawarded"),
                       ("ffr", 0.0, 150.0, "award"), ("ffr", 150.0, 0.0, "unawarded")]


def test_by_default_a_product_keeps_its_configuration_until_its_first_award() -> None:
    """``auto``: nothing awarded yet, the configuration holds (existing setups unchanged); once
    FFR is awarded, an MTU no award covers arms no FFR, while DR, never awarded, keeps its
    configured capacity."""
    portfolio = _portfolio()
    book = AwardBook()
    arming = Arming(portfolio, book)
    assert arming.apply(3000.0, 0.0).armed_w == {"ffr": 400.0, "dr": 600.0}
    book.add(parse_award(_award("a", 7200, {"ffr": [150], "dr": [None]}), max_bytes=4096,
                         products=["ffr", "dr"]))
    state = arming.apply(3600.0, 1.0)  # before the awarded MTU: FFR is in the market now
    assert state.armed_w == {"ffr": 0.0, "dr": 600.0}
    assert state.source == {"ffr": "unawarded", "dr": "config"}
    assert arming.apply(7200.0, 2.0).armed_w == {"ffr": 150.0, "dr": 600.0}
    assert arming.apply(10_800.0, 3.0).armed_w == {"ffr": 0.0, "dr": 600.0}


def test_a_change_waits_for_the_activation_to_end() -> None:
    portfolio = _portfolio()
    book = AwardBook()
    arming = Arming(portfolio, book)
    (ffr,) = portfolio.step
    for t in (0.0, 0.01):
        portfolio.on_sample(49.4, t)  # two samples below 49.5 Hz: FFR activates
    assert ffr.state == "active"
    book.add(parse_award(_award("a", 0, {"ffr": [100]}), max_bytes=4096,
                         products=["ffr", "dr"]))
    state = arming.apply(10.0, 0.5)
    assert state.pending_w == {"ffr": 100.0} and ffr.capacity_w == 400.0
    assert ffr.required_at(0.5) == 400.0  # delivered as it started
    portfolio.on_tick(3.0)  # support over: ramping out at 0.5/s, still the old capacity
    assert portfolio.statuses()[0].state == "ramping"
    assert arming.apply(11.0, 3.5).pending_w == {"ffr": 100.0}
    portfolio.on_tick(5.1)  # ramp-out done
    state = arming.apply(12.0, 5.1)
    assert state.pending_w == {} and ffr.capacity_w == 100.0


def test_a_product_awarded_nothing_never_fires() -> None:
    portfolio = _portfolio()
    book = AwardBook()
    book.add(parse_award(_award("a", 0, {"ffr": [0]}), max_bytes=4096, products=["ffr", "dr"]))
    Arming(portfolio, book).apply(10.0, 0.0)
    for t in (0.0, 0.01, 0.02):
        assert portfolio.on_sample(49.0, t) == []
    assert portfolio.step[0].state == "armed"


def test_a_replayed_older_award_never_overrides_a_newer_one() -> None:
    book = AwardBook()
    newer = json.dumps({"id": "new", "issued_at": 2000.0, "start": 3600, "mtu_s": 3600,
                        "capacity_w": {"ffr": [300]}}).encode()
    older = json.dumps({"id": "old", "issued_at": 1000.0, "start": 3600, "mtu_s": 3600,
                        "capacity_w": {"ffr": [50]}}).encode()
    book.add(parse_award(newer, max_bytes=4096, products=PRODUCTS))
    book.add(parse_award(older, max_bytes=4096, products=PRODUCTS))  # arrives last
    assert book.capacities_at(3600.0) == {"ffr": 300.0}


def test_an_award_above_the_configured_capacity_is_refused() -> None:
    from gridtao.app.arming import take_award
    from gridtao.security.guard import Guard

    cfg = config_from_mapping({"safety": {"triggers": []}}, source="<test>")
    guard = Guard.from_config(cfg, node_id="n", default_total_mw=1e6,
                              draw_total_mw=lambda: 1e6, wall=lambda: 0.0)
    book = AwardBook()
    verdict = take_award(_award("big", 3600, {"ffr": [400, 401]}), guard=guard, book=book,
                         products={"ffr": 400.0}, max_bytes=4096)
    assert not verdict.accepted and verdict.reason is not None
    assert "401 W exceeds the product's configured capacity 400 W" in verdict.reason
    assert len(book) == 0
    ok = take_award(_award("ok", 3600, {"ffr": [400, None]}), guard=guard, book=book,
                    products={"ffr": 400.0}, max_bytes=4096)
    assert ok.accepted and book.capacities_at(3600.0) == {"ffr": 400.0}


def test_an_award_for_another_node_or_under_a_used_id_is_refused() -> None:
    from gridtao.app.arming import take_award
    from gridtao.security.guard import Guard

    cfg = config_from_mapping({"safety": {"triggers": []}}, source="<test>")
    guard = Guard.from_config(cfg, node_id="n", default_total_mw=1e6,
                              draw_total_mw=lambda: 1e6, wall=lambda: 0.0)
    book = AwardBook()

    def award(event_id: str, node: str, watts: float) -> bytes:
        return json.dumps({"id": event_id, "node": node, "start": 3600, "mtu_s": 3600,
                           "capacity_w": {"ffr": [watts]}}).encode()

    def take(payload: bytes) -> tuple[bool, str | None]:
        verdict = take_award(payload, guard=guard, book=book, products={"ffr": 400.0},
                             max_bytes=4096, node_id="n")
        return verdict.accepted, verdict.reason

    # Node m's award (its bytes, signature and all) replayed on node n's topic.
    assert take(award("a1", "m", 400)) == (
        False, "addressed to node 'm', not this node ('n')")
    assert take(award("a2", "n", 100)) == (True, None)
    assert take(award("a2", "n", 100)) == (True, None)  # a retry: taken again
    accepted, reason = take(award("a2", "n", 400))
    assert not accepted and reason is not None and "reused with a different body" in reason
    assert book.capacities_at(3600.0) == {"ffr": 100.0}


def test_a_market_node_s_first_capacities_are_audited_in_its_own_run(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    """``unawarded: zero``: the capacities taken down at start are recorded after this run's
    ``agent_start``, not before it (where a reader of the trail would take them for the end of
    the run before), and the product arms nothing."""
    cfg = node_config(mqtt_broker, "zero", "gridtao/e2e-zero", gpus=2,
                      audit=tmp_path / "audit.jsonl", source="<test unawarded zero>",
                      safety={"triggers": []}, planner={"unawarded": "zero"},
                      products=[{"kind": "ffr", "capacity_w": 300, "threshold_hz": 49.5}])
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(mqtt_broker, cfg, sim) as node:
        assert node.agent.portfolio.capacities() == {"ffr": 0.0}
        kinds = [r["kind"] for r in node.audit()]
    assert kinds.index("agent_start") < kinds.index("capacity")


def test_a_huge_publish_on_the_award_topic_never_reaches_the_agent(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    """The controller's connection tells the broker the largest packet it takes (MQTT v5
    Maximum Packet Size): a 2 MiB publish on the award topic is never delivered (it would
    otherwise be read whole into memory before its size is checked), a normal award is."""
    from waiting import wait_until

    cfg = node_config(mqtt_broker, "big", "gridtao/e2e-big-award", gpus=2,
                      audit=tmp_path / "audit.jsonl", source="<test big award>",
                      safety={"triggers": []},
                      products=[{"kind": "ffr", "capacity_w": 300, "threshold_hz": 49.5}])
    sim = steady_sim(cfg.gpus.sim, MonotonicClock(), 600.0)
    with running(mqtt_broker, cfg, sim, serve=True) as node, node.acks() as acks:
        wait_until(lambda: node.agent.status_link.is_connected, "the controller's connection",
                   timeout_s=10.0)
        node.send(node.topics.award, b'{"id": "huge", "pad": "' + b"x" * (2 << 20) + b'"}')
        node.send(node.topics.award, {"id": "small", "start": 3600, "mtu_s": 3600,
                                      "capacity_w": {"ffr": [100]}})
        first = json.loads(acks.wait(1, 10.0)[0].payload)
    assert first["id"] == "small" and first["accepted"] is True
