"""What pooling nodes adds: the site's draw forecast from its nodes', and shares of a total.

A node's p10 is the draw it stays above nine hours in ten. The site's p10 is not the sum of
its nodes' p10s: the nodes do not all dip at once, so the sum's p10 sits higher, and the
capacity a site can offer from the same nodes is larger than the sum of what each could offer
alone. How much larger depends on how the nodes' draws move together.

:func:`pooled_quantiles` takes each node's forecast as its p50 and its spreads below (p50 - p10)
and above (p90 - p50), and combines the spreads with one correlation ``rho`` between every two
nodes: spread of the sum = sqrt((1 - rho) * sum(s_i^2) + rho * (sum s_i)^2). For spreads that
are normal this is exact (the variance of a sum of equally correlated terms); ``rho`` = 1 (the
nodes move as one) gives back the sum of the p10s, ``rho`` = 0 (independent) the most pooling.

:func:`proportional_fill` shares a total in proportion to weights, none above its cap, what a
capped one cannot take going to the others: used to split an award back over the nodes (by
offer, or by live headroom) without ever giving a node more than it may be awarded.

Pure functions; power in W.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["QuantileSet", "cover_deficits", "pooled_quantiles", "pooling_gain",
           "proportional_fill", "whole_watts"]

#: One node's forecast for one market time unit: ``p10_w``, ``p50_w``, ``p90_w`` (W, IT; any
#: may be missing).
QuantileSet = Mapping[str, float]


def _combine(spreads: Sequence[float], rho: float) -> float:
    squares = math.fsum(s * s for s in spreads)
    total = math.fsum(spreads)
    return math.sqrt(max(0.0, (1.0 - rho) * squares + rho * total * total))


def pooled_quantiles(nodes: Sequence[QuantileSet], rho: float) -> dict[str, float]:
    """The site's quantiles for one MTU from its nodes' (``rho`` in [0, 1]). Where a node
    lacks its p50, the spreads cannot be told apart from levels: each quantile is then the plain
    sum of the nodes' that have it (for the p10, the safe side)."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    if not nodes:
        return {}
    if not all("p50_w" in q for q in nodes):
        keys = {k for q in nodes for k in q}
        return {k: math.fsum(q[k] for q in nodes if k in q) for k in sorted(keys)}
    out = {"p50_w": math.fsum(q["p50_w"] for q in nodes)}
    if all("p10_w" in q for q in nodes):
        out["p10_w"] = out["p50_w"] - _combine(
            [max(0.0, q["p50_w"] - q["p10_w"]) for q in nodes], rho)
    if all("p90_w" in q for q in nodes):
        out["p90_w"] = out["p50_w"] + _combine(
            [max(0.0, q["p90_w"] - q["p50_w"]) for q in nodes], rho)
    return out


def pooling_gain(site_p10_w: float, node_p10_w: Sequence[float],
                 node_floor_w: Sequence[float]) -> float:
    """How many times the nodes' own headroom (p10 above floor, summed) the site's is
    (``site_p10_w`` above the summed floors); at least 1, and 1 when the nodes have none."""
    own = math.fsum(max(0.0, p - f) for p, f in zip(node_p10_w, node_floor_w, strict=True))
    if own <= 0.0:
        return 1.0
    return max(1.0, (site_p10_w - math.fsum(node_floor_w)) / own)


def proportional_fill(total: float, weights: Mapping[str, float],
                      caps: Mapping[str, float]) -> dict[str, float]:
    """``total`` shared in proportion to ``weights`` (> 0 to take part), none above its cap
    (a key missing from ``caps``: no cap); what the capped cannot take goes to the rest in the
    same proportions. The shares sum to ``total`` unless every taker is full."""
    shares = {k: 0.0 for k in weights}
    open_ = {k for k, w in weights.items()
             if 0.0 < w < math.inf and caps.get(k, math.inf) > 0.0}  # NaN fails both
    left = max(0.0, total)
    while left > 1e-9 and open_:
        weight = math.fsum(weights[k] for k in open_)
        full: set[str] = set()
        given = 0.0
        for k in sorted(open_):
            room = caps.get(k, math.inf) - shares[k]
            take = min(room, left * weights[k] / weight)
            shares[k] += take
            given += take
            if take >= room - 1e-9:
                full.add(k)
        left -= given
        if not full:
            break
        open_ -= full
    return shares


def cover_deficits(shares: Mapping[str, Mapping[str, float]], room: Mapping[str, float],
                   caps: Mapping[str, Mapping[str, float]], *, min_move_w: float
                   ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Shares (product -> node -> W) moved off the nodes that cannot carry them, as little as
    needed: a node whose shares, all products stacked, exceed its ``room`` by more than
    ``min_move_w``, or a share above the node's cap for that product (``caps``; a node missing
    there may not be given more than it holds), gives the excess up, and it goes to nodes with
    room to spare in proportion to that spare, none above its cap or its spare. What no node
    can take goes back where it came from, except what was above a cap. A node missing from
    ``room`` (in an event: its capped draw says nothing of its room) neither gives nor takes.

    Returns the new shares and, per product, what stayed unplaced (only where some did)."""
    new = {p: dict(s) for p, s in shares.items()}
    nodes = {n for s in new.values() for n in s} | set(room)
    given: dict[str, dict[str, float]] = {p: {} for p in new}  # product -> node -> W given up
    unplaced: dict[str, float] = {}
    for p, s in new.items():  # above a cap (the node's capacity fell, or it left the plan)
        for n, w in s.items():
            cap = caps.get(p, {}).get(n, w)
            if n in room and w > cap + 1e-9:
                unplaced[p] = unplaced.get(p, 0.0) + (w - cap)
                s[n] = cap
    stacked = {n: sum(s.get(n, 0.0) for s in new.values()) for n in nodes}
    for n in nodes:
        excess = stacked[n] - room.get(n, math.inf)
        if excess > min_move_w and stacked[n] > 0.0:
            for p, s in new.items():
                part = excess * s.get(n, 0.0) / stacked[n]
                if part > 0.0:
                    s[n] -= part
                    given[p][n] = part
            stacked[n] -= excess
    if not any(given.values()) and not unplaced:
        return {p: dict(s) for p, s in shares.items()}, {}
    spare = {n: room[n] - stacked[n] for n in nodes if n in room and not _gave(given, n)}
    for p in sorted(new):
        moving = sum(given[p].values()) + unplaced.pop(p, 0.0)
        takers = {n: max(0.0, spare.get(n, 0.0)) for n in caps.get(p, {}) if n in spare}
        limits = {n: min(takers[n], caps[p][n] - new[p].get(n, 0.0)) for n in takers}
        placed = proportional_fill(moving, takers, limits)
        for n, w in placed.items():
            if w > 0.0:  # a node given nothing is not made a holder of the product
                new[p][n] = new[p].get(n, 0.0) + w
                spare[n] -= w
        left = moving - sum(placed.values())
        back = sum(given[p].values())
        for n, w in given[p].items():  # what no one could take goes back where it came from
            new[p][n] += min(left, back) * w / back if back > 0 else 0.0
        if left - back > 1e-6:
            unplaced[p] = left - back
    return new, unplaced


def _gave(given: Mapping[str, Mapping[str, float]], node: str) -> bool:
    """Whether ``node`` gave up some share of any product."""
    return any(node in g for g in given.values())


def whole_watts(shares: Mapping[str, float], caps: Mapping[str, float]) -> dict[str, float]:
    """``shares`` in whole watts that sum to their own total rounded down (largest remainders
    first, none above its cap rounded down; a key missing from ``caps``: no cap), so nodes
    armed in whole watts still hold what was awarded."""
    total = math.floor(math.fsum(shares.values()) + 1e-6)
    out = {k: float(math.floor(w + 1e-6)) for k, w in shares.items()}
    left = total - int(sum(out.values()))
    for k in sorted(shares, key=lambda k: (-(shares[k] - out[k]), k)):
        if left <= 0:
            break
        cap = caps.get(k)
        if cap is None or out[k] + 1.0 <= math.floor(cap + 1e-6):
            out[k] += 1.0
            left -= 1
    return out
