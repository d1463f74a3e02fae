"""The site's pooled forecast and bids, and the award in force split again by live room."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from test_site import PREFIX, Harness

from gridtao.config.agent import ConfigError, config_from_mapping
from gridtao.site.metrics import register
from gridtao.site.pooling import (
    cover_deficits,
    pooled_quantiles,
    pooling_gain,
    proportional_fill,
    whole_watts,
)

MTU = 3600


def test_pooled_quantiles_combine_spreads_by_correlation() -> None:
    nodes = [{"p10_w": 900.0, "p50_w": 1000.0, "p90_w": 1050.0}] * 4
    # rho 1: the nodes move as one, the site's quantiles are the sums
    assert pooled_quantiles(nodes, 1.0) == pytest.approx(
        {"p10_w": 3600.0, "p50_w": 4000.0, "p90_w": 4200.0})
    # rho 0: four independent spreads of 100 W below add as sqrt(4 * 100^2) = 200 W
    assert pooled_quantiles(nodes, 0.0) == pytest.approx(
        {"p10_w": 3800.0, "p50_w": 4000.0, "p90_w": 4100.0})
    # rho 0.5: sqrt(0.5 * 40000 + 0.5 * 160000) = sqrt(100000)
    assert pooled_quantiles(nodes, 0.5)["p10_w"] == pytest.approx(4000.0 - math.sqrt(1e5))
    # a node without a p50: no spreads to combine, the plain sums (the safe side)
    assert pooled_quantiles([{"p10_w": 900.0}, {"p10_w": 800.0, "p50_w": 1000.0}], 0.0) == \
        {"p10_w": 1700.0, "p50_w": 1000.0}
    with pytest.raises(ValueError, match="rho"):
        pooled_quantiles(nodes, 1.5)


def test_pooling_gain_is_the_sites_headroom_over_the_nodes_own() -> None:
    # nodes: p10 900 and 800 over floors 400 -> 500 + 400 = 900 W of their own
    # site p10 1900 over floors 800 -> 1100 W: a gain of 1100 / 900
    assert pooling_gain(1900.0, [900.0, 800.0], [400.0, 400.0]) == pytest.approx(1100 / 900)
    assert pooling_gain(1500.0, [900.0, 800.0], [400.0, 400.0]) == 1.0  # never below 1
    assert pooling_gain(1900.0, [300.0, 300.0], [400.0, 400.0]) == 1.0  # nothing of their own


def test_proportional_fill_gives_what_a_full_taker_cannot_take_to_the_rest() -> None:
    shares = proportional_fill(900.0, {"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 100.0})
    assert shares == pytest.approx({"a": 100.0, "b": 400.0, "c": 400.0})
    assert proportional_fill(600.0, {"a": 1.0, "b": 2.0, "z": 0.0}, {}) == pytest.approx(
        {"a": 200.0, "b": 400.0, "z": 0.0})
    # everyone full: the shares stop at the caps, the rest is left unplaced
    assert sum(proportional_fill(900.0, {"a": 1.0, "b": 1.0}, {"a": 100.0, "b": 200.0})
               .values()) == pytest.approx(300.0)


def test_whole_watts_gives_the_remainder_to_a_share_with_no_cap() -> None:
    """The largest remainder goes first; a key with no cap takes it (the fuzz found a share
    without a cap, first in line, stopping the coordinator)."""
    out = whole_watts({"n1": 49.5, "n2": 0.0, "n3": 1.5}, {"n3": 1.5})
    assert out == {"n1": 50.0, "n2": 0.0, "n3": 1.0} and sum(out.values()) == 51.0
    assert whole_watts({"a": 0.6, "b": 0.6}, {"a": 0.5}) == {"a": 0.0, "b": 1.0}


def _plan(h: Harness, node: str, start: int, offer: float, *, p10: float, p50: float,
          floor: float = 400.0, capacity: float | None = 2000.0) -> None:
    body: dict[str, Any] = {
        "node": node, "made_at": 0, "start": start, "mtu_s": MTU,
        "offers_w": {"ffr": [offer, offer]}, "floor_w": floor,
        "forecast_w": {"p10_w": [p10, p10], "p50_w": [p50, p50], "p90_w": [p50, p50]}}
    if capacity is not None:
        body["capacity_w"] = {"ffr": capacity}
    h.send(f"{PREFIX}/nodes/{node}/plan", body)


def _site(**market: Any) -> tuple[Harness, int]:
    h = Harness(market={"bid_step_w": 100, "min_bid_w": 100, "min_bids": []} | market)
    return h, int(h.clock.wall()) // MTU * MTU


def test_the_default_claims_no_pooling_and_bids_the_offers_summed() -> None:
    h, start = _site()
    for n in ("n1", "n2", "n3", "n4"):
        _plan(h, n, start, 500.0, p10=900.0, p50=1000.0)
    h.c.tick()
    (plan,) = h.take("site/plan")
    assert plan["offers_w"]["ffr"] == [2000, 2000]
    assert plan["pooling"] == {"correlation": 1.0, "gain": {"ffr": [1.0, 1.0]}}
    assert plan["forecast_w"]["p10_w"] == [3600, 3600]


def test_independent_nodes_pool_into_a_larger_bid_split_up_to_each_nodes_capacity() -> None:
    h, start = _site(pooling_correlation=0.0)
    for n in ("n1", "n2", "n3", "n4"):  # each: p10 900 W over a 400 W floor, offers 500 W
        _plan(h, n, start, 500.0, p10=900.0, p50=1000.0, capacity=600.0)
    h.c.tick()
    (plan,) = h.take("site/plan")
    # site p10 = 4000 - 200 = 3800 W, 2200 W over the floors against 2000 W of the nodes' own
    assert plan["forecast_w"]["p10_w"] == [3800, 3800]
    assert plan["pooling"]["gain"] == {"ffr": [1.1, 1.1]}
    assert plan["offers_w"]["ffr"] == [2200, 2200]
    assert plan["pooled_w"]["ffr"] == [2000, 2000]  # what the nodes offered alone
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [2200, 2200]}})
    awards = {t.split("/")[2]: b for t, b, _ in h.sent if t.endswith("/award")}
    assert {n: a["capacity_w"]["ffr"] for n, a in awards.items()} == {
        n: [550, 550] for n in ("n1", "n2", "n3", "n4")}  # above each offer, within 600 W


def test_the_pooled_bid_never_exceeds_what_the_nodes_may_be_awarded() -> None:
    h, start = _site(pooling_correlation=0.0)
    _plan(h, "n1", start, 500.0, p10=900.0, p50=1000.0, capacity=None)  # says no capacity
    _plan(h, "n2", start, 500.0, p10=900.0, p50=1000.0, capacity=520.0)
    h.c.tick()
    (plan,) = h.take("site/plan")
    assert plan["pooling"]["gain"]["ffr"][0] > 1.0
    assert plan["offers_w"]["ffr"] == [1000, 1000]  # 500 + 520, stepped down to 100 W


def _awarded_now(h: Harness, start: int, w: float) -> dict[str, list[float]]:
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [w]}})
    h.take("site/ack")
    return {t.split("/")[2]: b["capacity_w"]["ffr"] for t, b in _awards(h)}


def _awards(h: Harness) -> list[tuple[str, dict[str, Any]]]:
    out = [(t, b) for t, b, _ in h.sent if t.endswith("/award")]
    h.sent = [s for s in h.sent if not s[0].endswith("/award")]
    return out


def test_the_award_in_force_follows_the_nodes_live_room() -> None:
    h, start = _site(resplit_s=5.0)
    h.status("n1", 1400.0)  # 1000 W of room
    h.status("n2", 1400.0)
    _plan(h, "n1", start, 600.0, p10=1300.0, p50=1400.0)
    _plan(h, "n2", start, 600.0, p10=1300.0, p50=1400.0)
    h.c.tick()
    assert _awarded_now(h, start, 1200.0) == {"n1": [600], "n2": [600]}
    # n1's job ends: 100 W of room left; n2 has 1000 W
    h.clock.advance(5.0)
    h.status("n1", 500.0)
    h.status("n2", 1400.0)
    h.c.tick()
    sent = dict((t.split("/")[2], b) for t, b in _awards(h))
    # n1 gives up the 500 W it cannot carry; n2 has 400 W to spare and takes it; the 100 W no
    # one can take stays where it was
    assert sent["n1"]["capacity_w"] == {"ffr": [200]}
    assert sent["n2"]["capacity_w"] == {"ffr": [1000]}
    for node, body in sent.items():
        assert body["node"] == node and body["start"] == start and body["mtu_s"] == MTU
        # issued after the first split's node awards (issued when they were sent)
        assert body["issued_at"] >= h.clock.wall() and body["id"].startswith("a1~")
    assert h.c.counts["site_award_resplits"] == 1
    # the site's status: the award in force, and the 100 W the nodes' room lacks for it
    award = h.c.snapshot["award"]
    assert award == {"start": start, "capacity_w": {"ffr": 1200.0}, "room_w": 1100.0,
                     "short_w": 100.0}
    assert {"product": "ffr", "kind": "awarded", "w": 1200.0} in h.c.snapshot["capacity_w"]
    # nothing moved: nothing sent
    h.clock.advance(5.0)
    h.status("n1", 500.0)
    h.status("n2", 1400.0)
    h.c.tick()
    assert _awards(h) == []
    # no more often than resplit_s
    h.clock.advance(1.0)
    h.status("n1", 1400.0)
    h.c.tick()
    assert _awards(h) == []


def _two_nodes(h: Harness, start: int, **plan: Any) -> None:
    """n1 and n2 at 1400 W over 400 W floors, each planning from ``start`` to offer 600 W
    (``plan``: other :func:`_plan` arguments), and the site's plan pooled."""
    for n in ("n1", "n2"):
        h.status(n, 1400.0)
        _plan(h, n, start, 600.0, **{"p10": 1300.0, "p50": 1400.0} | plan)
    h.c.tick()


def _two_nodes_awarded(**market: Any) -> Harness:
    """Two nodes at 1400 W over 400 W floors, each offering 600 W, awarded 1200 W now."""
    h, start = _site(**market)
    _two_nodes(h, start)
    _awarded_now(h, start, 1200.0)
    return h


def _events_record(h: Harness) -> dict[str, Any]:
    """The site's last retained events record."""
    (record,) = [b for t, b, retain in h.sent if t.endswith("site/events") and retain][-1:]
    return record


def _restarted(h: Harness, record: dict[str, Any]) -> Harness:
    """A new coordinator at ``h``'s time (resplit every 5 s), the retained record first."""
    again = Harness(market={"bid_step_w": 100, "min_bid_w": 100, "min_bids": [],
                            "resplit_s": 5.0})
    again.clock.advance(h.clock.wall() - again.clock.wall())
    again.c.on_message(f"{PREFIX}/site/events", json.dumps(record).encode(), retained=True)
    return again


def test_the_live_split_holds_still_through_an_event_and_skips_an_offline_node() -> None:
    h = _two_nodes_awarded(resplit_s=5.0)
    start = int(h.clock.wall()) // MTU * MTU
    h.clock.advance(5.0)
    h.status("n1", 500.0)
    h.c.on_message(f"{PREFIX}/nodes/n2/status", (  # n2 in an event: its draw is capped
        b'{"node": "n2", "online": true, "t": %f, "event": "e1", "capacity": '
        b'{"draw_w": 900, "floor_w": 400, "deliverable_w": 500, "enrolled_w": 0}}'
        % h.clock.wall()))
    h.c.tick()
    assert _awards(h) == []  # n1 is short, but the only other node is in an event
    assert h.c.snapshot["award"]["room_w"] == 700.0  # n1's 100 W and n2's share it holds
    h.clock.advance(5.0)
    h.status("n1", 1400.0)
    h.status("n2", 1400.0, online=False)  # its last will
    h.c.tick()
    sent = dict((t.split("/")[2], b["capacity_w"]["ffr"]) for t, b in _awards(h))
    # n1 takes what its 1000 W of room allows (it is enrolled up to 2000 W); the rest stays
    # with n2 in the books, and is not sent while n2 is offline (it is when n2 is back)
    assert sent == {"n1": [1000]}
    assert h.c.bidding.live._sent[(start, "ffr")]["n2"] == 200.0
    assert h.c.snapshot["award"]["short_w"] == 200.0  # n2 offline: its share is short


def test_resplit_s_zero_never_splits_again_and_below_one_second_is_refused() -> None:
    h = _two_nodes_awarded(resplit_s=0.0)
    h.clock.advance(30.0)
    h.status("n1", 500.0)
    h.status("n2", 1400.0)
    h.c.tick()
    assert _awards(h) == []
    with pytest.raises(ConfigError, match=r"site\.market\.resplit_s"):
        config_from_mapping({"site": {"market": {"resplit_s": 0.5}}})
    with pytest.raises(ConfigError, match=r"site\.market\.pooling_correlation"):
        config_from_mapping({"site": {"market": {"pooling_correlation": 1.2}}})


def test_a_restarted_coordinator_takes_the_awards_back_and_splits_again() -> None:
    h, start = _site(resplit_s=5.0)
    _two_nodes(h, start)
    h.send(f"{PREFIX}/site/award", {"id": "a1", "issued_at": h.clock.wall(), "start": start,
                                    "mtu_s": MTU, "capacity_w": {"ffr": [1200, 1200]}})
    h.c.tick()
    record = _events_record(h)
    assert [a["id"] for a in record["awards"]] == ["a1"]
    # a new coordinator: the retained record first, then the nodes' retained plans and status
    again = _restarted(h, record)
    for n, draw in (("n1", 500.0), ("n2", 1400.0)):
        again.status(n, draw)
        _plan(again, n, start, 600.0, p10=1300.0, p50=1400.0)
    again.c.tick()
    assert _awards(again) == []  # not before every node had a status period to be seen
    again.clock.advance(5.0)
    for n, draw in (("n1", 500.0), ("n2", 1400.0)):
        again.status(n, draw)
    again.c.tick()
    resent: list[tuple[str, list[float]]] = []
    moved: list[tuple[str, list[float]]] = []
    for topic, body in _awards(again):
        (resent if "-resent~" in body["id"] else moved).append(
            (topic.split("/")[2], body["capacity_w"]["ffr"]))
    # the books rebuilt as the award came (by offer, 600 : 600, both hours) and sent to every
    # node, so the nodes and the books agree; then n1's excess over its 100 W of room moved to
    # n2's 400 W of spare
    assert sorted(resent) == [("n1", [600, 600]), ("n2", [600, 600])]
    assert sorted(moved) == [("n1", [200]), ("n2", [1000])]
    # a record of awards already over takes back nothing
    late = Harness()
    late.clock.advance(start + 2 * MTU - late.clock.wall())
    late.c.on_message(f"{PREFIX}/site/events", json.dumps(record).encode(), retained=True)
    assert late.c.bidding.live.awards == []


def test_an_award_where_no_node_offered_is_split_by_capacity_and_what_is_left_said() -> None:
    h, start = _site()
    _plan(h, "n1", start + MTU, 500.0, p10=900.0, p50=1000.0, capacity=600.0)  # from next hour
    _plan(h, "n2", start + MTU, 200.0, p10=900.0, p50=1000.0, capacity=200.0)
    h.c.tick()
    # this hour: no offers yet, so by what each may be awarded (600 : 200); next hour 1000 W is
    # more than the 800 W the two may be awarded: 200 W left, and said
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [400, 1000]}})
    sent = {t.split("/")[2]: b["capacity_w"]["ffr"] for t, b in _awards(h)}
    assert sent == {"n1": [300, 600], "n2": [100, 200]}
    (ack,) = h.take("site/ack")
    assert ack["accepted"] is True and ack["unplaced_w"] == {"ffr": [0.0, 200.0]}


def test_only_a_node_short_by_more_than_the_threshold_gives_up_its_excess() -> None:
    h = _two_nodes_awarded(resplit_s=5.0)  # 600 + 600 of 1200, 1000 W of room each
    h.clock.advance(5.0)
    h.status("n1", 1370.0)  # noise: both still carry their shares
    h.status("n2", 960.0)  # 560 W of room for 600: short by 40 W, under the 50 W threshold
    h.c.tick()
    assert _awards(h) == []
    h.clock.advance(5.0)
    h.status("n1", 1370.0)
    h.status("n2", 900.0)  # short by 100 W: just that moves, to n1's 370 W of spare
    h.c.tick()
    sent = {t.split("/")[2]: b["capacity_w"]["ffr"][0] for t, b in _awards(h)}
    assert sent == {"n1": 700, "n2": 500}


def test_the_status_counts_an_award_above_what_the_online_nodes_may_take_as_short() -> None:
    h, start = _site()
    _two_nodes(h, start, capacity=700.0)
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [1600]}})
    h.clock.advance(1.0)
    h.status("n1", 1400.0)
    h.status("n2", 1400.0)
    h.c.tick()
    # 2000 W of room, but the two may be awarded 1400 W between them
    assert h.c.snapshot["award"]["room_w"] == 2000.0
    assert h.c.snapshot["award"]["short_w"] == 200.0


def test_cover_deficits_moves_only_the_excess_and_keeps_what_no_one_can_take() -> None:
    shares = {"ffr": {"a": 600.0, "b": 600.0, "c": 300.0}, "fcr": {"a": 400.0}}
    rooms = {"a": 500.0, "b": 700.0}  # c is in an event: it neither gives nor takes
    caps = {"ffr": {"a": 1000.0, "b": 650.0, "c": 1000.0}, "fcr": {"a": 400.0, "b": 400.0}}
    new, unplaced = cover_deficits(shares, rooms, caps, min_move_w=50.0)
    # a carries 1000 W on 500 W of room: gives up 300 of ffr and 200 of fcr; b has 100 W to
    # spare, all taken by fcr (products in name order); what no one can take goes back to a
    assert new["fcr"] == pytest.approx({"a": 300.0, "b": 100.0})
    assert new["ffr"] == pytest.approx({"a": 600.0, "b": 600.0, "c": 300.0})
    assert unplaced == {}
    # nobody short: nothing moves
    same, _ = cover_deficits(shares, {"a": 2000.0, "b": 2000.0}, caps, min_move_w=50.0)
    assert same == shares
    # a share above the node's cap (its capacity fell, or it left the plan) always moves
    capped, _ = cover_deficits({"ffr": {"a": 600.0, "b": 0.0}}, {"a": 2000.0, "b": 2000.0},
                               {"ffr": {"a": 500.0, "b": 1000.0}}, min_move_w=50.0)
    assert capped == {"ffr": pytest.approx({"a": 500.0, "b": 100.0})}


def test_a_node_without_a_capacity_in_its_plan_keeps_its_share_and_takes_no_more() -> None:
    h, start = _site(resplit_s=5.0)
    _two_nodes(h, start, capacity=None)  # an older agent
    assert _awarded_now(h, start, 1200.0) == {"n1": [600], "n2": [600]}
    # the nodes plan again from the next hour on: the current hour leaves their plans
    for n in ("n1", "n2"):
        _plan(h, n, start + MTU, 600.0, p10=1300.0, p50=1400.0, capacity=None)
    h.clock.advance(5.0)
    h.status("n1", 1400.0)
    h.status("n2", 1400.0)
    h.c.tick()
    assert _awards(h) == []  # nothing zeroed


def test_a_later_market_award_wins_over_a_live_split_and_an_older_one_never_does() -> None:
    h = _two_nodes_awarded(resplit_s=5.0)
    start = int(h.clock.wall()) // MTU * MTU
    h.clock.advance(5.0)
    h.status("n1", 500.0)
    h.status("n2", 1400.0)
    h.c.tick()
    live = {t.split("/")[2]: b for t, b in _awards(h)}
    # the market's new award, issued before the live split went out but arriving after it
    h.send(f"{PREFIX}/site/award", {"id": "b", "issued_at": h.clock.wall() - 3.0,
                                    "start": start, "mtu_s": MTU, "capacity_w": {"ffr": [0]}})
    cancel = {t.split("/")[2]: b for t, b in _awards(h)}
    assert {n: b["capacity_w"]["ffr"] for n, b in cancel.items()} == {"n1": [0], "n2": [0]}
    assert all(cancel[n]["issued_at"] > live[n]["issued_at"] for n in live)
    # an award issued before "b", arriving now: what "b" says of this hour stands
    h.send(f"{PREFIX}/site/award", {"id": "old", "issued_at": h.clock.wall() - 60.0,
                                    "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [900, 900]}})
    old = {t.split("/")[2]: b["capacity_w"]["ffr"] for t, b in _awards(h)}
    assert old["n1"][0] is None and old["n2"][0] is None  # says nothing of this hour
    assert old["n1"][1] is not None  # the next hour is its to say
    h.clock.advance(1.0)
    h.c.tick()
    assert h.c.snapshot["award"]["capacity_w"] == {"ffr": 0.0}


def test_a_product_is_pooled_only_over_the_nodes_that_offer_it() -> None:
    h, start = _site(pooling_correlation=0.0)
    _plan(h, "n1", start, 500.0, p10=900.0, p50=1000.0)  # ffr alone
    for n in ("n2", "n3"):  # large, independent, offering fcr-n only
        h.send(f"{PREFIX}/nodes/{n}/plan", {
            "node": n, "made_at": 0, "start": start, "mtu_s": MTU,
            "offers_w": {"fcr-n": [1000.0, 1000.0]}, "floor_w": 400.0,
            "capacity_w": {"fcr-n": 3000.0},
            "forecast_w": {"p10_w": [2000.0] * 2, "p50_w": [3000.0] * 2, "p90_w": [3000.0] * 2}})
    h.c.tick()
    (plan,) = h.take("site/plan")
    # one node offers ffr: no pooling for it, whatever the others' spreads
    assert plan["pooling"]["gain"]["ffr"] == [1.0, 1.0]
    assert plan["offers_w"]["ffr"] == [500, 500]
    # fcr-n pools over n2 and n3: spreads of 1000 W each combine to 1414 W
    gain = (6000 - 1414.2 - 800) / (2 * 1600)
    assert plan["pooling"]["gain"]["fcr-n"] == [pytest.approx(gain, abs=1e-3)] * 2
    assert plan["offers_w"]["fcr-n"] == [2300, 2300]  # 2000 W x 1.18, stepped down


def test_a_plan_already_over_is_left_out_of_the_pool() -> None:
    h, start = _site(pooling_correlation=0.0)
    for n in ("n1", "n2"):
        _plan(h, n, start, 500.0, p10=900.0, p50=1000.0)
    _plan(h, "n3", start - 3 * 86_400, 500.0, p10=900.0, p50=1000.0)  # a node gone for days
    h.c.tick()
    (plan,) = h.take("site/plan")
    assert plan["nodes"] == ["n1", "n2"] and plan["start"] == start
    assert plan["pooling"]["gain"]["ffr"][0] > 1.0


def test_a_node_back_online_is_sent_its_shares_again_and_a_refusal_is_counted() -> None:
    h, start = _site(resplit_s=0.0)
    _two_nodes(h, start)
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [1200, 800]}})
    first = {t.split("/")[2]: b for t, b in _awards(h)}
    h.status("n1", 1400.0, online=False)  # its agent restarts: the awards it held are gone
    h.clock.advance(3.0)
    h.status("n1", 1400.0)
    (again,) = [b for t, b in _awards(h)]
    assert again["node"] == "n1" and again["start"] == start and again["mtu_s"] == MTU
    assert again["capacity_w"] == {"ffr": [600, 400]} == first["n1"]["capacity_w"]
    assert again["issued_at"] > first["n1"]["issued_at"] and again["id"].startswith("s-resent~")
    h.status("n1", 1400.0)  # still online: nothing more
    assert _awards(h) == []
    h.send(f"{PREFIX}/nodes/n1/ack", {"id": again["id"], "kind": "award", "accepted": False,
                                      "reason": "capacity_w['ffr'] 600 W exceeds ..."})
    assert h.c.counts["node_award_refused"] == 1
    registry = CollectorRegistry()
    register(h.c, registry)
    assert registry.get_sample_value("gridtao_site_node_award_refusals_total") == 1.0


def test_a_share_a_node_refused_is_counted_short_until_it_accepts_one_again() -> None:
    """A node that refuses an award the site sent it holds none of it: the status counts its
    share short (``resplit_s: 0``: no live split moves it). An ack of an id the site never
    sent that node, or one the contract does not know, changes nothing; the node accepting a
    later award for the same MTU holds its share again, and a late ack of an older award judges
    nothing."""
    h, start = _site(resplit_s=0.0)
    _two_nodes(h, start)
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [1200]}})
    sent = {t.split("/")[2]: b for t, b in _awards(h)}

    def short_after(*acks: tuple[str, dict[str, Any]]) -> float:
        for node, ack in acks:
            h.send(f"{PREFIX}/nodes/{node}/ack", {"kind": "award"} | ack)
        h.clock.advance(5.0)
        h.status("n1", 1400.0)
        h.status("n2", 1400.0)
        h.c.tick()
        return float(h.c.snapshot["award"]["short_w"])

    def restarted(node: str) -> str:
        """``node``'s agent restarts: the id of its shares sent again."""
        h.status(node, 1400.0, online=False)
        h.clock.advance(3.0)
        h.status(node, 1400.0)
        (again,) = [b for t, b in _awards(h) if t.split("/")[2] == node]
        return str(again["id"])

    assert short_after() == 0.0
    # not the site's: an id it never sent n2, an award n2 could not read (null id), and an ack
    # the contract does not know (no accepted)
    assert short_after(("n2", {"id": "forged", "accepted": False, "reason": "x"}),
                       ("n2", {"id": None, "accepted": False, "reason": "unreadable"}),
                       ("n2", {"id": sent["n2"]["id"]})) == 0.0
    assert short_after(("n2", {"id": sent["n2"]["id"], "accepted": False,
                               "reason": "no plan for this hour"})) == 600.0
    assert h.c.counts["node_award_refused"] == 3
    resent = restarted("n2")  # sent its shares again, which it takes
    assert short_after(("n2", {"id": resent, "accepted": True, "reason": None})) == 0.0
    # an id the site sent n1 only, acked by n2: nothing
    assert short_after(("n2", {"id": restarted("n1"), "accepted": False, "reason": "x"})) == 0.0
    # refused again; then a late repeat of its acceptance of the older award changes nothing
    assert short_after(("n2", {"id": restarted("n2"), "accepted": False, "reason": "x"})) == 600.0
    assert short_after(("n2", {"id": resent, "accepted": True, "reason": None})) == 600.0


def test_a_refused_share_moves_to_a_node_with_room_and_is_not_offered_back() -> None:
    """n2 refuses its 600 W: the next live split gives it to n1 as far as n1's room allows
    (400 W more), sends n2 a share of 0 and counts the 200 W no one can take short. n2
    accepting that 0 W is not taken as room for more: it is not offered the product again in
    that MTU, even when n1 falls short, until it accepts a share above 0."""
    h, start = _site(resplit_s=5.0)
    _two_nodes(h, start)
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [1200]}})
    sent = {t.split("/")[2]: b for t, b in _awards(h)}
    assert {n: b["capacity_w"]["ffr"] for n, b in sent.items()} == {"n1": [600], "n2": [600]}
    h.send(f"{PREFIX}/nodes/n2/ack", {"kind": "award", "id": sent["n2"]["id"], "accepted": False,
                                      "reason": "no plan for this hour"})
    h.clock.advance(5.0)
    h.status("n1", 1400.0)
    h.status("n2", 1400.0)
    h.c.tick()
    moved = {t.split("/")[2]: b for t, b in _awards(h)}
    assert moved["n1"]["capacity_w"] == {"ffr": [1000]}
    assert moved["n2"]["capacity_w"] == {"ffr": [0]}
    assert h.c.snapshot["award"]["short_w"] == 200.0
    h.send(f"{PREFIX}/nodes/n2/ack", {"kind": "award", "id": moved["n2"]["id"],
                                      "accepted": True, "reason": None})
    h.clock.advance(5.0)
    h.status("n1", 900.0)  # n1 short now: 500 W of room for 1000 W
    h.status("n2", 1400.0)
    h.c.tick()
    again = {t.split("/")[2]: b for t, b in _awards(h)}
    assert "n2" not in again or again["n2"]["capacity_w"] == {"ffr": [0]}
    assert h.c.snapshot["award"]["short_w"] >= 500.0


def test_a_refused_product_is_offered_again_after_a_share_a_plan_or_a_market_award() -> None:
    """The mark a refusal leaves (no more of that product in those MTUs) lifts when the node
    accepts a share above 0 of it, publishes a new plan, or a new market award is split."""
    h, start = _site(resplit_s=5.0)
    _two_nodes(h, start)
    split = h.c.bidding.live
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [1200]}})
    sent = {t.split("/")[2]: b for t, b in _awards(h)}

    def refuse_then_tick(ident: str) -> dict[str, dict[str, Any]]:
        h.send(f"{PREFIX}/nodes/n2/ack", {"kind": "award", "id": ident, "accepted": False,
                                          "reason": "x"})
        h.clock.advance(5.0)
        h.status("n1", 1400.0)
        h.status("n2", 1400.0)
        h.c.tick()
        return {t.split("/")[2]: b for t, b in _awards(h)}

    def n2_cap() -> float:
        plan = h.c.bidding.plan
        assert plan is not None
        return split._positions(start, {"ffr": 1200.0}, plan, h.clock.wall())[2]["ffr"]["n2"]

    moved = refuse_then_tick(sent["n2"]["id"])
    assert moved["n2"]["capacity_w"] == {"ffr": [0]}
    assert n2_cap() == 0.0
    # a share above 0 accepted: offered again
    split.acks.sent("n2", {"id": "more", "start": start, "mtu_s": MTU,
                           "capacity_w": {"ffr": [100.0]}}, h.clock.wall())
    assert split.acks.on_ack("n2", "more", True)
    assert n2_cap() > 0.0
    # refused again, then a new plan from it: offered again
    assert split.acks.on_ack("n2", "more", False)
    assert n2_cap() == 0.0
    _plan(h, "n2", start, 600.0, p10=1300.0, p50=1400.0)
    assert n2_cap() > 0.0
    # refused again, then a new market award for the MTU: split afresh, n2 included
    assert split.acks.on_ack("n2", "more", False)
    assert n2_cap() == 0.0
    h.send(f"{PREFIX}/site/award", {"id": "a2", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [1000]}})
    assert n2_cap() > 0.0


def test_a_node_that_cannot_hear_dispatches_keeps_its_award_shares() -> None:
    """Awards reach a node on its status connection, and frequency products fire on their
    own: a node whose dispatch connection is down keeps its shares and its room."""
    h, start = _site(resplit_s=5.0)
    _two_nodes(h, start)
    _awarded_now(h, start, 1200.0)
    deaf = {"island": True, "dispatch": False, "frequency": True}
    for _ in range(3):
        h.clock.advance(5.0)
        h.status("n1", 1400.0)
        h.status("n2", 1400.0, links=deaf)
        h.c.tick()
    assert _awards(h) == []
    assert h.c.snapshot["award"]["short_w"] == 0.0
    assert h.c.snapshot["nodes"]["n2"]["hears_orders"] is False


def _offers(h: Harness, node: str, start: int, offers: dict[str, float],
            capacity: dict[str, float]) -> None:
    h.send(f"{PREFIX}/nodes/{node}/plan", {
        "node": node, "made_at": 0, "start": start, "mtu_s": MTU, "floor_w": 400.0,
        "offers_w": {p: [w] for p, w in offers.items()}, "capacity_w": capacity,
        "forecast_w": {"p10_w": [1300.0], "p50_w": [1400.0], "p90_w": [1400.0]}})


def test_a_node_is_never_sent_a_product_its_plan_does_not_list() -> None:
    h, start = _site(resplit_s=5.0)
    for n in ("n1", "n2"):
        h.status(n, 1400.0)
        _offers(h, n, start, {"p": 300.0, "q": 300.0}, {"p": 1000.0, "q": 1000.0})
    h.status("n3", 1400.0)
    _offers(h, "n3", start, {"q": 300.0}, {"q": 1000.0})
    h.c.tick()
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"p": [600], "q": [900]}})
    _awards(h)
    h.clock.advance(5.0)
    h.status("n1", 450.0)  # 50 W of room for its 600 W
    h.status("n2", 1400.0)
    h.status("n3", 1400.0)
    h.c.tick()
    sent = {t.split("/")[2]: b["capacity_w"] for t, b in _awards(h)}
    assert sent and "p" not in sent.get("n3", {})  # n3 has no p to be sent, not even 0
    books = h.c.bidding.live._sent
    assert "n3" not in books[(start, "p")]
    assert 600 - 2 <= sum(books[(start, "p")].values()) <= 600
    assert 900 - 3 <= sum(books[(start, "q")].values()) <= 900


def test_a_new_award_sets_its_mtus_whole_so_a_node_that_left_is_not_counted() -> None:
    h, start = _site(resplit_s=5.0)
    for n in ("n1", "n2", "n3"):
        h.status(n, 1400.0)
        _offers(h, n, start, {"p": 300.0}, {"p": 1000.0})
    h.c.tick()
    h.send(f"{PREFIX}/site/award", {"id": "a1", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"p": [900]}})
    _offers(h, "n3", start, {"q": 300.0}, {"q": 1000.0})  # n3's plan drops p
    h.clock.advance(1.0)
    h.c.tick()
    h.send(f"{PREFIX}/site/award", {"id": "a2", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"p": [600]}})
    h.clock.advance(5.0)
    for n in ("n1", "n2", "n3"):
        h.status(n, 1400.0)
    h.c.tick()
    # the site's books for this hour are a2's: 300 + 300, n3's old share not counted again
    assert h.c.bidding.live._sent[(start, "p")] == {"n1": 300.0, "n2": 300.0}
    assert h.c.snapshot["award"]["short_w"] == 0.0


def test_a_restarted_coordinator_with_nodes_of_no_planned_capacity_zeroes_nothing() -> None:
    h, start = _site(resplit_s=5.0)
    _two_nodes(h, start + MTU, capacity=None)
    h.send(f"{PREFIX}/site/award", {"id": "a1", "issued_at": h.clock.wall(), "start": start,
                                    "mtu_s": MTU, "capacity_w": {"ffr": [1200, 1200]}})
    h.c.tick()
    record = _events_record(h)
    again = _restarted(h, record)
    for n in ("n1", "n2"):
        again.status(n, 450.0)
        _plan(again, n, start + MTU, 600.0, p10=1300.0, p50=1400.0, capacity=None)
    for _ in range(4):
        again.clock.advance(5.0)
        again.c.tick()
    assert all(b["capacity_w"]["ffr"] != [0.0] for _, b in _awards(again))


def test_odd_numbers_from_the_market_or_a_node_are_refused_or_bounded() -> None:
    h = _two_nodes_awarded(resplit_s=5.0)
    start = int(h.clock.wall()) // MTU * MTU
    h.send(f"{PREFIX}/site/award", {"id": "far", "issued_at": 1e300, "start": start,
                                    "mtu_s": MTU, "capacity_w": {"ffr": [100]}})
    (ack,) = h.take("site/ack")
    assert ack["accepted"] is False and "ahead" in ack["reason"] and ack["kind"] == "award"
    h.c.on_message(f"{PREFIX}/nodes/n1/status", (
        b'{"node": "n1", "online": true, "t": %f, "event": null, "capacity": '
        b'{"draw_w": 1e308, "floor_w": 400, "deliverable_w": 1e308, "enrolled_w": 0}}'
        % h.clock.wall()))
    h.clock.advance(5.0)
    h.status("n2", 450.0)
    h.c.tick()  # no overflow: n1's figures are beyond a node's bound, so not known (no room)
    assert _awards(h) == []
    award = h.c.snapshot["award"]
    assert award["room_w"] == 50.0 and award["short_w"] == 1150.0
    assert h.c.view.nodes["n1"].draw_w is None


def test_an_award_already_over_is_refused_and_shares_are_whole_watts_summing_to_it() -> None:
    h, start = _site()
    for n in ("n1", "n2", "n3"):
        _plan(h, n, start, 500.0, p10=900.0, p50=1000.0)
    h.c.tick()
    h.clock.advance(2 * MTU + 10)
    h.send(f"{PREFIX}/site/award", {"id": "old", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [100, 100]}})
    (ack,) = h.take("site/ack")
    assert ack["accepted"] is False and "over" in ack["reason"]
    h.send(f"{PREFIX}/site/award", {"id": "a", "start": start, "mtu_s": MTU,
                                    "capacity_w": {"ffr": [100, 100, 100]}})
    (ack,) = h.take("site/ack")
    assert ack["accepted"] is True
    shares = [b["capacity_w"]["ffr"][2] for _, b in _awards(h)]
    assert sorted(shares) == [33.0, 33.0, 34.0]  # 100 W in whole watts, not 99


def test_a_refusal_is_judged_while_its_own_mtu_lasts_whatever_a_later_award_s_length() -> None:
    """The ids of awards sent are pruned by each entry's own MTU end: an hourly award sent
    before a plan of 15-minute MTUs still counts a refusal until its hour is over."""
    h = Harness()
    split = h.c.bidding.live
    start = 1_800_000_000
    split.acks.sent("n1", {"id": "hourly", "start": start, "mtu_s": 3600,
                           "capacity_w": {"ffr": [100.0]}}, start - 60)
    quarter = {"id": "q1", "start": start + 900, "mtu_s": 900, "capacity_w": {"ffr": [50.0]}}
    split.acks.sent("n2", quarter, start + 1100)  # prunes: the first quarter is over
    assert split.acks.on_ack("n1", "hourly", False) is True
    later = quarter | {"id": "q2", "start": start + 3600}
    split.acks.sent("n2", later, start + 3700)  # the hour is over now: pruned
    assert split.acks.on_ack("n1", "hourly", False) is False
    assert split.acks.on_ack("n2", "q2", True) is True
