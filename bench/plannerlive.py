"""How a site's pooled capacity is delivered by its nodes: the award split one way or another.

``gridtao bench planner --nodes N`` judges a site's plan on the site's summed draw, as if the
capacity armed on each node always followed where the room is. The site coordinator does that
by moving shares off nodes short of room every ``site.market.resplit_s``
(gridtao/site/resplit.py). :func:`delivery` measures what that is worth on the bench's nodes:
each hour's stacked down-capacity (IT W) is split over the nodes in proportion to their own
forecast headroom (the first split, by offer), and each minute every node delivers what its
room allows of its share, its room being its minute's mean draw above its floor. Three ways:

- ``pooled``: the site's summed room against the award (what the bench's strategies assume);
- ``live``: shares moved each minute, from the rooms of the minute before, by the
  coordinator's own :func:`gridtao.site.pooling.cover_deficits` (a lag of a minute where the
  coordinator's is ``resplit_s``: on the pessimistic side);
- ``static``: the first split held all the hour (``resplit_s: 0``).

Each gives the hours with a minute short by more than ``TOLERANCE`` of the hour's award, the
energy short and the energy awarded (W-h, IT). Nodes' capacities are not modelled (each may
take any share).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from gridtao.site.pooling import cover_deficits
from gridtao.tier3 import Forecast

__all__ = ["TOLERANCE", "add_delivery", "delivery"]

FloatArray = npt.NDArray[np.float64]

#: A minute counts short when the nodes cover less than the award by more than this share.
TOLERANCE = 0.01
MIN_MOVE_W = 50.0  # the coordinator's default site.rebalance_min_w


def delivery(down_it_w: FloatArray, node_mean_w: FloatArray, node_floor_w: float,
             forecasts: Sequence[Forecast]) -> dict[str, dict[str, float]]:
    """The three ways of the module docstring for one day: ``down_it_w`` the site's stacked
    down-capacity per hour (IT W), ``node_mean_w`` each node's minute means (nodes x 1440),
    ``node_floor_w`` one node's floor, ``forecasts`` each node's own forecast for the day."""
    rooms = np.maximum(0.0, node_mean_w - node_floor_w)  # nodes x minutes
    names = [f"n{i}" for i in range(len(rooms))]
    anyone = {"p": dict.fromkeys(names, math.inf)}  # capacities not modelled
    out = {way: {"short_hours": 0, "short_wh": 0.0, "awarded_wh": 0.0}
           for way in ("pooled", "live", "static")}
    for hour in range(24):
        award = float(down_it_w[hour])
        if award <= 0.0:
            continue
        for way in out:
            out[way]["awarded_wh"] += award  # an hour of it
        head = np.array([max(0.0, float(f.p10_w[hour]) - node_floor_w) for f in forecasts])
        first = award * (head / head.sum() if head.sum() > 0 else np.full(len(head),
                                                                           1 / len(head)))
        live = {"p": dict(zip(names, first.tolist(), strict=True))}
        short = {way: 0.0 for way in out}
        worst = {way: 0.0 for way in out}
        for minute in range(hour * 60, hour * 60 + 60):
            room = rooms[:, minute]
            got = {"pooled": min(award, float(room.sum())),
                   "static": float(np.minimum(first, room).sum()),
                   "live": sum(min(live["p"][n], float(r)) for n, r in zip(names, room,
                                                                            strict=True))}
            for way, w in got.items():
                short[way] += (award - w) / 60.0
                worst[way] = max(worst[way], award - w)
            # the coordinator moves shares on the rooms it saw: this minute's, for the next
            live, _ = cover_deficits(live, dict(zip(names, room.tolist(), strict=True)),
                                     anyone, min_move_w=MIN_MOVE_W)
            live = {"p": live["p"]}
        for way in out:
            out[way]["short_wh"] += short[way]
            if worst[way] > TOLERANCE * award:
                out[way]["short_hours"] += 1
    return out


def add_delivery(into: dict[str, dict[str, dict[str, float]]], name: str,
                 found: Mapping[str, Mapping[str, float]]) -> None:
    """Add one strategy's :func:`delivery` figures (per way) to the running totals ``into``
    (strategy -> way -> figure)."""
    for way, figures in found.items():
        total = into.setdefault(name, {}).setdefault(way, {})
        for key, value in figures.items():
            total[key] = total.get(key, 0.0) + value
