"""The site in the reserve market: pooled bids from the nodes' plans, awards split back.

Each node's tier 3 publishes what it can offer per product and market time unit (MTU), W at
the settlement point (retained ``{prefix}/nodes/{node}/plan``), with its forecast draw, its
floor and each product's configured capacity. A market takes bids in steps and from a minimum
size (Fingrid: 0.1 MW steps, FCR-N from 0.1 MW, FCR-D from 1 MW), far above one node, so the
site pools them: per product and MTU, the sum of the nodes' offers, raised by the pooling gain
(the site's headroom over its forecast p10 against the nodes' own; :mod:`gridtao.site.pooling`:
1, no raise, at the default ``pooling_correlation`` of 1), never above what the offering nodes
may be awarded, rounded *down* to the bid step and zero below the minimum bid. An award for the
site (``{prefix}/site/award``, the node award's format) is split back in proportion to each
node's offer in that MTU; a node is awarded at most its configured capacity (or, where its plan
does not say it, its offer), and what a full node cannot take goes to the others. The plan also
carries the site's forecast quantiles, pooled the same way.

Pure functions and plain data; power in W, times in Unix seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gridtao.config.site import MarketConfig
from gridtao.site.pooling import (
    QuantileSet,
    pooled_quantiles,
    pooling_gain,
    proportional_fill,
    whole_watts,
)
from gridtao.site.view import NodeView
from gridtao.wire.awards import Award

__all__ = ["MAX_AHEAD_S", "AwardSplit", "SitePlan", "node_awards", "pool_offers", "split_award"]

#: A node's plan starting further ahead is not pooled (markets clear a day or two ahead).
MAX_AHEAD_S = 7 * 86_400


@dataclass(frozen=True)
class SitePlan:
    """Pooled offers on one MTU grid: ``offers_w`` the bids (stepped), ``pooled_w`` the sums of
    the nodes' own offers, ``by_node`` each node's offers aligned on the site's grid (0 where it
    has none), ``caps_w`` the most each node may be awarded per product (its configured
    capacity, where its plan says it; else its offer in each MTU), ``forecast_w`` the site's
    draw quantiles (pooled) and ``gain`` per product and MTU the pooling gain of the nodes
    offering it there (1: none; the products' raised bids together stay within the gain of all
    the nodes offering)."""

    start_s: int
    mtu_s: int
    offers_w: Mapping[str, list[float]]
    pooled_w: Mapping[str, list[float]]
    by_node: Mapping[str, Mapping[str, list[float]]]
    forecast_w: Mapping[str, list[float]]
    gain: Mapping[str, list[float]] = field(default_factory=dict)
    caps_w: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def most_w(self, node: str, product: str, k: int) -> float:
        """The most ``node`` may be awarded of ``product`` in MTU ``k`` of the plan: its
        configured capacity where its plan said it (the node refuses more, whatever it
        offered), else its offer."""
        return _most(self.by_node.get(node, {}).get(product, []), k,
                     self.caps_w.get(node, {}).get(product))

    def body(self, site: str, made_at: float, market: MarketConfig) -> dict[str, object]:
        """The retained ``{prefix}/site/plan`` payload."""
        return {"site": site, "made_at": round(made_at, 3), "start": self.start_s,
                "mtu_s": self.mtu_s, "bid_step_w": market.bid_step_w,
                "offers_w": {k: [round(x, 1) for x in v] for k, v in self.offers_w.items()},
                "pooled_w": {k: [round(x, 1) for x in v] for k, v in self.pooled_w.items()},
                "forecast_w": {k: [round(x, 1) for x in v] for k, v in self.forecast_w.items()},
                "pooling": {"correlation": market.pooling_correlation,
                            "gain": {k: [round(g, 4) for g in v] for k, v in self.gain.items()}},
                "nodes": sorted(self.by_node)}


def _most(offers: list[float], k: int, capacity: float | None) -> float:
    """:meth:`SitePlan.most_w` from a node's offers of a product and its capacity (None: not
    said)."""
    if capacity is not None:
        return capacity
    return offers[k] if 0 <= k < len(offers) else 0.0


def _aligned(series: list[float | None], shift: int, length: int) -> list[float | None]:
    out: list[float | None] = [None] * length
    for k, w in enumerate(series[:max(0, length - shift)]):
        out[shift + k] = w
    return out


def pool_offers(nodes: Mapping[str, NodeView], market: MarketConfig,
                wall: float | None = None) -> SitePlan | None:
    """The site's bids from the nodes' plans (None when no node has one). Plans on another
    MTU length than most nodes' are left out (a market has one). Per MTU, the nodes' offers
    are summed, raised by the pooling gain (:mod:`gridtao.site.pooling`; 1 unless
    ``market.pooling_correlation`` < 1 and every node said its floor), kept within what the
    offering nodes may be awarded, and stepped. With ``wall``, a plan already over then (a
    node gone for days leaves its retained plan), or starting more than ``MAX_AHEAD_S`` later,
    is left out."""
    planned = {n: v for n, v in nodes.items()
               if v.offers_w and v.plan_start is not None and v.plan_mtu_s
               and (wall is None or (wall < v.plan_end() and v.plan_start < wall + MAX_AHEAD_S))}
    if not planned:
        return None
    mtu = int(Counter(int(v.plan_mtu_s or 0) for v in planned.values()).most_common(1)[0][0])
    planned = {n: v for n, v in sorted(planned.items()) if int(v.plan_mtu_s or 0) == mtu}
    start = int(min(v.plan_start or 0.0 for v in planned.values()))
    shifts = {n: int(((v.plan_start or 0.0) - start) // mtu) for n, v in planned.items()}
    length = max(shifts[n] + len(series)
                 for n, v in planned.items() for series in v.offers_w.values())
    kinds = {str(p.get("name") or p.get("kind")): str(p.get("kind"))
             for v in planned.values() for p in v.products}
    by_node = {n: {p: [w if w is not None and w > 0 else 0.0
                       for w in _aligned(series, shifts[n], length)]
                   for p, series in v.offers_w.items()} for n, v in planned.items()}
    caps = {n: {p: w for p, w in v.plan_capacity_w.items() if p in by_node[n]}
            for n, v in planned.items()}
    pooled: dict[str, list[float]] = {}
    for rows in by_node.values():
        for product, row in rows.items():
            total = pooled.setdefault(product, [0.0] * length)
            for k, w in enumerate(row):
                total[k] += w
    quantiles = {n: {q: _aligned(s, shifts[n], length) for q, s in v.forecast_w.items()}
                 for n, v in planned.items()}
    floors = {n: v.plan_floor_w for n, v in planned.items()}
    rho = market.pooling_correlation

    def at(k: int, among: Iterable[str]) -> list[QuantileSet]:
        return [q for n in among
                if (q := {name: x for name, s in quantiles[n].items() if (x := s[k]) is not None})]

    def gain_at(k: int, among: list[str]) -> float:
        """The pooling gain of the nodes ``among`` in MTU ``k`` (1 unless each said its p10
        and its floor)."""
        here = at(k, among)
        if len(here) != len(among) or any(floors[n] is None for n in among) \
                or any("p10_w" not in q for q in here):
            return 1.0
        site = pooled_quantiles(here, rho)
        if "p10_w" not in site:
            return 1.0
        return pooling_gain(site["p10_w"], [q["p10_w"] for q in here],
                            [floors[n] or 0.0 for n in among])

    forecast: dict[str, list[float]] = {}
    for k in range(length):
        for q, w in pooled_quantiles(at(k, planned), rho).items():
            forecast.setdefault(q, [0.0] * length)[k] = w
    gain: dict[str, list[float]] = {}
    raised: dict[str, list[float]] = {}
    for product, sums in pooled.items():
        offering = [[n for n, rows in by_node.items() if rows.get(product, [0.0] * length)[k] > 0]
                    for k in range(length)]
        gain[product] = [gain_at(k, among) if among else 1.0 for k, among in enumerate(offering)]
        room = [sum(_most(by_node[n][product], k, caps[n].get(product)) for n in among)
                for k, among in enumerate(offering)]
        raised[product] = [min(w * g, r) for w, g, r in
                           zip(sums, gain[product], room, strict=True)]
    for k in range(length):  # all products stacked: within the pooled room of their nodes
        among = sorted({n for n, rows in by_node.items() if any(r[k] > 0 for r in rows.values())})
        plain = sum(pooled[p][k] for p in pooled)
        allowed = plain * (gain_at(k, among) if among else 1.0)
        extra = sum(raised[p][k] for p in pooled) - plain
        if extra > 0.0 and plain + extra > allowed:
            for p in pooled:
                raised[p][k] = pooled[p][k] + (raised[p][k] - pooled[p][k]) * (
                    max(0.0, allowed - plain) / extra)
    offers: dict[str, list[float]] = {}
    for product, values in raised.items():
        floor = market.min_bid_for(product, kinds.get(product))
        stepped = [math.floor(w / market.bid_step_w + 1e-9) * market.bid_step_w
                   for w in values]
        offers[product] = [w if w >= floor and w > 0 else 0.0 for w in stepped]
    return SitePlan(start, mtu, offers, pooled, by_node, forecast, gain, caps)


class AwardSplit(NamedTuple):
    """What :func:`split_award` makes of an award: ``shares`` per node, per product it is
    enrolled in, the capacity per MTU on the award's grid (None where the award says nothing);
    ``unplaced_w`` per product, per MTU, what no node could be given (every node full, or none
    enrolled), only for products where some was."""

    shares: dict[str, dict[str, list[float | None]]]
    unplaced_w: dict[str, list[float]]


def split_award(award: Award, plan: SitePlan) -> AwardSplit:
    """The site's award split over its nodes: per MTU in proportion to each node's offer in
    it, or, in an MTU where no node offered (the current hour, before any plan covered it), to
    what each node may be awarded; none above what the node may be awarded, and what a full
    node cannot take goes to the others."""
    if award.mtu_s != plan.mtu_s:
        raise ValueError(f"the award's MTU ({award.mtu_s} s) is not the plan's "
                         f"({plan.mtu_s} s)")
    out: dict[str, dict[str, list[float | None]]] = {}
    unplaced: dict[str, list[float]] = {}
    for product, series in award.capacity_w.items():
        offering = {n: rows[product] for n, rows in plan.by_node.items() if product in rows}
        for node in offering:
            out.setdefault(node, {})[product] = []
        left: list[float] = []
        for k, site_w in enumerate(series):
            j = (award.start_s - plan.start_s) // plan.mtu_s + k
            caps = {n: plan.most_w(n, product, j) for n in offering}
            offers = {n: row[j] if 0 <= j < len(row) else 0.0 for n, row in offering.items()}
            weights = offers if sum(offers.values()) > 0.0 else caps
            filled = whole_watts(proportional_fill(site_w or 0.0, weights, caps), caps)
            for node, share in filled.items():
                out[node][product].append(None if site_w is None else share)
            left.append(max(0.0, (site_w or 0.0) - sum(filled.values())))
        if any(w > 0.5 for w in left):
            unplaced[product] = [round(w, 1) for w in left]
    return AwardSplit(out, unplaced)


def node_awards(award: Award, shares: Mapping[str, dict[str, list[float | None]]],
                issued: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each node's award body (unsigned), in node order, for the shares :func:`split_award`
    gave it: the site award's id, start and MTU, the site's issue time, and the node it is for
    (signed with it, so no other node takes it)."""
    for node, capacity in sorted(shares.items()):
        yield node, {"id": award.id, "node": node, "issued_at": issued,
                     "start": award.start_s, "mtu_s": award.mtu_s, "capacity_w": capacity}
