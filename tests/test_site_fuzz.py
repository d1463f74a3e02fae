"""Fuzzing the site in the market: random node statuses, plans and site awards, with time
passing, fed to a coordinator in virtual time.

Properties: nothing raises; every share the site keeps is a finite number of watts >= 0; every
node award it sends parses as a node would parse it, names that node, lists only products that
node's plans listed (a node's enrolment: the site pools plans at most once a second, so an award
may still follow the plan before), and gives none of them more than the node's configured
capacity where its plans say it.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_site import PREFIX, Harness

from gridtao.wire.awards import parse_award
from gridtao.wire.messages import NODE_W_MAX

NODES = ("n1", "n2", "n3")
PRODUCTS = ("ffr", "fcr-n")
HOUR = 3600

# Mostly plausible watts, now and then an odd one.
plausible = st.floats(min_value=0.0, max_value=5e3, allow_nan=False)
odd = st.one_of(st.floats(min_value=-1e3, max_value=1e4, allow_nan=False),
                st.sampled_from([1e308, -1e308, 5e7, NODE_W_MAX]), st.none())
watts = st.one_of(plausible, plausible, plausible, odd)
series = st.lists(watts, min_size=1, max_size=5)


@st.composite
def _plan_step(draw: st.DrawFn) -> tuple[str, Any]:
    """A plan to start from: the next steps then have something to pool and award."""
    return draw(_step(kind="plan"))


#: Each node's configured capacity per product (None: its plans do not say it); a node never
#: offers more than it.
capacities = st.fixed_dictionaries({n: st.fixed_dictionaries(
    {p: st.one_of(st.none(), st.floats(0.0, 5e3)) for p in PRODUCTS}) for n in NODES})


@st.composite
def _step(draw: st.DrawFn, kind: str | None = None) -> tuple[str, Any]:
    kind = kind or draw(st.sampled_from(["status", "status", "plan", "award", "award", "award",
                                         "tick", "tick", "offline", "ack"]))
    node = draw(st.sampled_from(NODES))
    if kind == "status":
        return kind, (node, draw(watts), draw(watts), draw(st.booleans()))
    if kind == "plan":
        products = draw(st.lists(st.sampled_from(PRODUCTS), min_size=1, max_size=2,
                                 unique=True))
        return kind, (node, draw(st.sampled_from([0, 0, 1, -1, 3])),
                      draw(st.sampled_from([3600, 3600, 3600, 900, 0, 7])),
                      {p: draw(series) for p in products},

                      {q: draw(series) for q in ("p10_w", "p50_w", "p90_w")
                       if draw(st.integers(0, 3))}, draw(watts))
    if kind == "award":
        products = draw(st.lists(st.sampled_from(PRODUCTS), min_size=1, max_size=2,
                                 unique=True))
        return kind, (draw(st.sampled_from([0, 0, 1, -2])), {p: draw(series) for p in products},
                      draw(st.one_of(st.none(), st.floats(-1e4, 1e4), st.just(1e300))))
    if kind == "tick":
        return kind, draw(st.floats(0.0, 30.0))
    return kind, node


def _json(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
examples = st.lists(_plan_step(), min_size=2, max_size=4), st.lists(
    _step(), min_size=1, max_size=25), st.floats(0.0, 1.0), capacities


@settings(max_examples=300, deadline=None, suppress_health_check=SLOW)
@given(*examples)
def test_the_site_in_the_market_never_breaks_nor_sends_what_a_node_refuses(
        first: list[tuple[str, Any]], then: list[tuple[str, Any]], rho: float,
        configured: dict[str, dict[str, float | None]]) -> None:
    _run(first, then, rho, configured)


@pytest.mark.soak
@pytest.mark.timeout(1800)
@settings(max_examples=20_000, deadline=None, suppress_health_check=SLOW)
@given(*examples)
def test_the_site_in_the_market_soak(
        first: list[tuple[str, Any]], then: list[tuple[str, Any]], rho: float,
        configured: dict[str, dict[str, float | None]]) -> None:
    _run(first, then, rho, configured)


def _run(first: list[tuple[str, Any]], then: list[tuple[str, Any]], rho: float,
         configured: dict[str, dict[str, float | None]]) -> None:
    """One example: the properties of the module docstring."""
    steps = [*first, ("tick", 1.0), *then]
    h = Harness(market={"bid_step_w": 10, "min_bid_w": 0, "min_bids": [],
                        "pooling_correlation": rho, "resplit_s": 1.0})
    hour = int(h.clock.wall()) // HOUR * HOUR
    listed: dict[str, set[str]] = {n: set() for n in NODES}
    for kind, args in steps:
        wall = h.clock.wall()
        if kind == "status":
            node, draw_w, floor_w, event = args
            h.c.on_message(f"{PREFIX}/nodes/{node}/status", _json({
                "node": node, "online": True, "t": wall, "event": "e" if event else None,
                "capacity": {"draw_w": draw_w, "floor_w": floor_w,
                             "deliverable_w": None if draw_w is None or floor_w is None
                             else draw_w - floor_w, "enrolled_w": 0}}))
        elif kind == "plan":
            node, shift, mtu, offers, forecast, floor = args
            capacity = {p: c for p in offers if (c := configured[node][p]) is not None}
            offers = {p: [w if w is None or p not in capacity else min(w, capacity[p])
                          for w in row] for p, row in offers.items()}
            body = {"node": node, "made_at": wall, "start": hour + shift * HOUR, "mtu_s": mtu,
                    "offers_w": offers, "capacity_w": capacity, "forecast_w": forecast,
                    "floor_w": floor}
            listed[node] |= set(offers)
            h.c.on_message(f"{PREFIX}/nodes/{node}/plan", _json(body))
        elif kind == "award":
            shift, capacity, issued = args
            body = {"id": f"a{len(h.sent)}", "start": hour + shift * HOUR, "mtu_s": HOUR,
                    "capacity_w": capacity}
            if issued is not None:
                body["issued_at"] = wall + issued
            h.c.on_message(f"{PREFIX}/site/award", _json(body))
        elif kind == "tick":
            h.clock.advance(args)
            h.c.tick()
        elif kind == "offline":
            h.status(args, 1000.0, online=False)
        else:
            h.c.on_message(f"{PREFIX}/nodes/{args}/ack", _json(
                {"id": None, "kind": "award", "accepted": False, "reason": "fuzz"}))
        h.c.tick()
        for (_, _), shares in h.c.bidding.live._sent.items():
            assert all(math.isfinite(w) and w >= 0.0 for w in shares.values()), shares
    for topic, body, _ in h.sent:
        if not topic.endswith("/award") or "/nodes/" not in topic:
            continue
        node = topic.split("/")[2]
        award = parse_award(json.dumps(body).encode(), max_bytes=1 << 20,
                            products=sorted(listed[node]))
        assert award.node == node
        for product, values in award.capacity_w.items():
            cap = configured[node][product]
            if cap is not None:
                assert all(v is None or v <= cap + 1e-6 for v in values), (product, values, cap)
