"""The site in the reserve market: pooled bids from the nodes' plans, awards split back.

Each node's tier 3 publishes what it can offer per product and market time unit (MTU), W at
the settlement point (retained ``{prefix}/nodes/{node}/plan``). A market takes bids in steps
and from a minimum size (Fingrid: 0.1 MW steps, FCR-N from 0.1 MW, FCR-D from 1 MW), far above
one node, so the site pools them: per product and MTU, the sum over nodes, rounded *down* to the
bid step (never offering what the nodes did not) and zero below the minimum bid. An award for
the site (``{prefix}/site/award``, the node award's format) is split back in proportion to each
node's offer in that MTU, and no node is awarded more than it offered. The plan also carries
the nodes' forecasts of their natural IT draw summed per quantile: a sum of p10s is below the
p10 of the sum (the nodes do not all dip together), so it errs on the safe side for reserves.

Pure functions and plain data; power in W, times in Unix seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gridtao.config.site import MarketConfig
from gridtao.site.view import NodeView
from gridtao.wire.awards import Award

__all__ = ["SitePlan", "node_awards", "pool_offers", "split_award"]


@dataclass(frozen=True)
class SitePlan:
    """Pooled offers on one MTU grid: ``offers_w`` the bids (stepped), ``pooled_w`` the raw
    sums, ``by_node`` each node's offers aligned on the site's grid (0 where it has none)."""

    start_s: int
    mtu_s: int
    offers_w: Mapping[str, list[float]]
    pooled_w: Mapping[str, list[float]]
    by_node: Mapping[str, Mapping[str, list[float]]]
    forecast_w: Mapping[str, list[float]]

    def body(self, site: str, made_at: float, market: MarketConfig) -> dict[str, object]:
        """The retained ``{prefix}/site/plan`` payload."""
        return {"site": site, "made_at": round(made_at, 3), "start": self.start_s,
                "mtu_s": self.mtu_s, "bid_step_w": market.bid_step_w,
                "offers_w": {k: [round(x, 1) for x in v] for k, v in self.offers_w.items()},
                "pooled_w": {k: [round(x, 1) for x in v] for k, v in self.pooled_w.items()},
                "forecast_w": {k: [round(x, 1) for x in v] for k, v in self.forecast_w.items()},
                "nodes": sorted(self.by_node)}


def pool_offers(nodes: Mapping[str, NodeView], market: MarketConfig) -> SitePlan | None:
    """The site's bids from the nodes' plans (None when no node has one). Plans on another
    MTU length than most nodes' are left out (a market has one)."""
    planned = {n: v for n, v in nodes.items()
               if v.offers_w and v.plan_start is not None and v.plan_mtu_s}
    if not planned:
        return None
    mtu = int(Counter(int(v.plan_mtu_s or 0) for v in planned.values()).most_common(1)[0][0])
    planned = {n: v for n, v in planned.items() if int(v.plan_mtu_s or 0) == mtu}
    start = int(min(v.plan_start or 0.0 for v in planned.values()))
    length = max(int(((v.plan_start or 0.0) - start) // mtu) + len(series)
                 for v in planned.values() for series in v.offers_w.values())
    kinds = {str(p.get("name") or p.get("kind")): str(p.get("kind"))
             for v in planned.values() for p in v.products}
    by_node: dict[str, dict[str, list[float]]] = {}
    pooled: dict[str, list[float]] = {}
    forecast: dict[str, list[float]] = {}
    for node, view in sorted(planned.items()):
        shift = int(((view.plan_start or 0.0) - start) // mtu)
        for quantile, values in view.forecast_w.items():
            summed = forecast.setdefault(quantile, [0.0] * length)
            for k, w in enumerate(values[:length - shift]):
                summed[shift + k] += w or 0.0
        aligned = by_node.setdefault(node, {})
        for product, series in view.offers_w.items():
            row = aligned.setdefault(product, [0.0] * length)
            total = pooled.setdefault(product, [0.0] * length)
            for k, w in enumerate(series):
                if w is not None and w > 0:
                    row[shift + k] = w
                    total[shift + k] += w
    offers: dict[str, list[float]] = {}
    for product, sums in pooled.items():
        floor = market.min_bid_for(product, kinds.get(product))
        stepped = [math.floor(w / market.bid_step_w + 1e-9) * market.bid_step_w for w in sums]
        offers[product] = [w if w >= floor and w > 0 else 0.0 for w in stepped]
    return SitePlan(start, mtu, offers, pooled, by_node, forecast)


def split_award(award: Award, plan: SitePlan) -> dict[str, dict[str, list[float | None]]]:
    """Per node, per product it offered, the capacity awarded per MTU on the award's grid:
    the site's award in proportion to the node's offer in that MTU, at most that offer
    (None where the award says nothing)."""
    if award.mtu_s != plan.mtu_s:
        raise ValueError(f"the award's MTU ({award.mtu_s} s) is not the plan's "
                         f"({plan.mtu_s} s)")
    out: dict[str, dict[str, list[float | None]]] = {}
    for product, series in award.capacity_w.items():
        pooled = plan.pooled_w.get(product)
        for node, offers in plan.by_node.items():
            mine = offers.get(product)
            if mine is None:
                continue
            row: list[float | None] = []
            for k, site_w in enumerate(series):
                j = (award.start_s - plan.start_s) // plan.mtu_s + k
                if site_w is None:
                    row.append(None)
                    continue
                offered = mine[j] if 0 <= j < len(mine) else 0.0
                total = pooled[j] if pooled is not None and 0 <= j < len(pooled) else 0.0
                share = site_w * offered / total if total > 0 else 0.0
                row.append(math.floor(min(share, offered)))
            out.setdefault(node, {})[product] = row
    return out


def node_awards(award: Award, shares: Mapping[str, dict[str, list[float | None]]],
                wall: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each node's award body (unsigned), in node order, for the shares :func:`split_award`
    gave it: the site award's id, issue time (``wall`` when it had none), start and MTU, and
    the node it is for (signed with it, so no other node takes it)."""
    issued = award.issued_at if award.issued_at is not None else wall
    for node, capacity in sorted(shares.items()):
        yield node, {"id": award.id, "node": node, "issued_at": issued,
                     "start": award.start_s, "mtu_s": award.mtu_s, "capacity_w": capacity}
