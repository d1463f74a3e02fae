"""The site's view of its nodes, built from what they publish (no call to any node).

Each node's retained ``status`` (online, draw, floor, capacity, GPU faults) and ``tracker``
(products and their states) and ``plan`` (tier 3's offers) land here as they arrive; a
restarted coordinator gets them all back from the broker at once. Pure state: the coordinator
feeds it on its event loop thread and the metrics collector reads :meth:`SiteView.summary`
snapshots from the scrape thread (a snapshot is a new dict, built whole, then swapped in).

Power in W (IT: at the GPUs, as the nodes measure it), times in Unix seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gridtao.wire.awards import AWARD_MAX_MTUS, MTU_CHOICES_S
from gridtao.wire.messages import NODE_W_MAX

__all__ = ["NodeView", "SiteView"]


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _watts(value: object) -> float | None:
    """A node's power figure: a number in ``[0, NODE_W_MAX]``, else None."""
    number = _num(value)
    return number if number is not None and 0.0 <= number <= NODE_W_MAX else None


#: Statuses in a row saying the dispatch connection is down before a node is taken as deaf.
DEAF_STATUSES = 2


@dataclass
class NodeView:
    """What the site knows of one node. ``t``: the node's own time of its last status."""

    node: str
    online: bool = False
    #: Offline after a clean stop that put back every limit it changed (its status said
    #: ``restored: true``), not gone (its last will): it holds no cap.
    stopped_clean: bool = False
    #: How many statuses in a row said the node's dispatch connection is down (``links``).
    deaf_statuses: int = 0
    #: How long the node wants between two cuts (its status ``limits``), s; None: not said.
    cut_interval_s: float | None = None
    t: float | None = None
    draw_w: float | None = None
    floor_w: float | None = None
    deliverable_w: float | None = None
    enrolled_w: float | None = None
    faults: tuple[str, ...] = ()
    event: str | None = None
    products: tuple[Mapping[str, Any], ...] = ()
    offers_w: Mapping[str, list[float | None]] = field(default_factory=dict)
    forecast_w: Mapping[str, list[float | None]] = field(default_factory=dict)
    plan_start: float | None = None
    plan_mtu_s: float | None = None
    #: The node's IT floor its plan was made with, W; None: not said.
    plan_floor_w: float | None = None
    #: Per product, the most the node may be awarded (its configured capacity), W at the
    #: settlement point; a product missing here may be awarded at most what it offered.
    plan_capacity_w: Mapping[str, float] = field(default_factory=dict)

    @property
    def hears_orders(self) -> bool:
        """False once :data:`DEAF_STATUSES` statuses in a row said the node's dispatch
        connection is down: it is up (awards reach it on its status connection, and frequency
        products fire on their own) but cannot hear an event's orders, so events split around
        it. One such status is a reconnect under way, not yet a reason to move anything."""
        return self.deaf_statuses < DEAF_STATUSES

    def headroom_w(self) -> float:
        """IT power the node can still shed (draw above its floor), 0 when unknown."""
        if self.draw_w is None or self.floor_w is None:
            return 0.0
        return max(0.0, self.draw_w - self.floor_w)

    def plan_end(self) -> float:
        """When the node's plan ends (Unix s; its longest series), -inf without one."""
        if self.plan_start is None or not self.plan_mtu_s:
            return -math.inf
        n = max((len(v) for v in self.offers_w.values()), default=0)
        return self.plan_start + n * self.plan_mtu_s

    def offer_now(self, product: str, wall: float) -> float | None:
        """Tier 3's offer for ``product`` in the market time unit holding ``wall``."""
        if self.plan_start is None or not self.plan_mtu_s or product not in self.offers_w:
            return None
        k = math.floor((wall - self.plan_start) / self.plan_mtu_s)
        series = self.offers_w[product]
        return series[k] if 0 <= k < len(series) else None


class SiteView:
    """Every node the site has heard of, plus those it expects (``expected``: listed in
    ``site.nodes``, reported missing until they speak). ``stale_s``: a node whose last status
    is older is counted offline (its retained status may be all that is left of it)."""

    def __init__(self, *, expected: Iterable[str] = (), stale_s: float) -> None:
        self.stale_s = stale_s
        self.nodes: dict[str, NodeView] = {n: NodeView(n) for n in expected}

    def _node(self, node: str) -> NodeView:
        view = self.nodes.get(node)
        if view is None:
            view = self.nodes[node] = NodeView(node)
        return view

    def on_status(self, node: str, body: Mapping[str, Any]) -> None:
        """A node's status payload (``online: false`` is its last will)."""
        view = self._node(node)
        view.online = body.get("online") is True
        view.stopped_clean = not view.online and body.get("restored") is True
        view.t = _num(body.get("t")) or view.t
        if not view.online:
            return
        links = body.get("links")
        deaf = isinstance(links, Mapping) and links.get("dispatch") is False
        view.deaf_statuses = view.deaf_statuses + 1 if deaf else 0
        event = body.get("event")
        view.event = event if isinstance(event, str) else None
        limits = body.get("limits")
        interval = _num(limits.get("min_event_interval_s")) if isinstance(limits, Mapping) \
            else None
        view.cut_interval_s = interval if interval is not None and 0 <= interval <= 86_400 \
            else None
        capacity = body.get("capacity")
        gpus = body.get("gpus")
        if isinstance(capacity, Mapping):
            # a node's own figures, each within a node's bound (an odd one: not known)
            view.draw_w = _watts(capacity.get("draw_w"))
            view.floor_w = _watts(capacity.get("floor_w"))
            view.deliverable_w = _watts(capacity.get("deliverable_w"))
            view.enrolled_w = _watts(capacity.get("enrolled_w"))
        elif isinstance(gpus, list):  # a node without the capacity extension: its GPUs' sum
            powers = [_watts(g.get("power_w")) for g in gpus if isinstance(g, Mapping)]
            view.draw_w = sum(p for p in powers if p is not None)
            view.floor_w = None
        view.faults = tuple(str(g["fault"]) for g in gpus or ()
                            if isinstance(g, Mapping) and g.get("fault")) \
            if isinstance(gpus, list) else ()

    def on_tracker(self, node: str, body: Mapping[str, Any]) -> None:
        """A node's tier 2 state: its products and their states."""
        products = body.get("products")
        if isinstance(products, list):
            self._node(node).products = tuple(p for p in products if isinstance(p, Mapping))

    def on_plan(self, node: str, body: Mapping[str, Any]) -> None:
        """A node's tier 3 plan: offers per product and market time unit."""
        view = self._node(node)
        offers = body.get("offers_w")
        view.plan_start, view.plan_mtu_s = _num(body.get("start")), _num(body.get("mtu_s"))
        if view.plan_mtu_s not in MTU_CHOICES_S:  # not a plan the site can pool
            view.plan_start = view.plan_mtu_s = None
        view.offers_w = ({str(k): [_watts(x) for x in v[:AWARD_MAX_MTUS]]
                          for k, v in offers.items() if isinstance(v, list)}
                         if isinstance(offers, Mapping) else {})
        forecast = body.get("forecast_w")
        view.forecast_w = ({str(k): [_watts(x) for x in v[:AWARD_MAX_MTUS]]
                            for k, v in forecast.items() if isinstance(v, list)}
                           if isinstance(forecast, Mapping) else {})
        view.plan_floor_w = _watts(body.get("floor_w"))
        capacity = body.get("capacity_w")
        view.plan_capacity_w = ({str(k): w for k, v in capacity.items()
                                 if (w := _watts(v)) is not None}
                                if isinstance(capacity, Mapping) else {})

    def is_online(self, node: str, wall: float) -> bool:
        view = self.nodes.get(node)
        if view is None or not view.online or view.t is None:
            return False
        return wall - view.t <= self.stale_s

    def hears_orders(self, node: str, wall: float) -> bool:
        """``node`` is online and can hear an event's orders (:attr:`NodeView.hears_orders`)."""
        return self.is_online(node, wall) and self.nodes[node].hears_orders

    def online(self, wall: float) -> list[NodeView]:
        return [v for n, v in sorted(self.nodes.items()) if self.is_online(n, wall)]

    def it_w(self, wall: float) -> float:
        """The site's IT power: the online nodes' draw, W."""
        return sum(v.draw_w or 0.0 for v in self.online(wall))

    def capacity_w(self, wall: float) -> dict[tuple[str, str], float]:
        """``(product, kind) -> W`` over online nodes: ``enrolled`` (capacity in force),
        ``armed`` (in force and ready or acting: not idle, waiting or enrolling) and
        ``offered`` (tier 3's offer for this market time unit)."""
        out: dict[tuple[str, str], float] = {}
        for view in self.online(wall):
            for p in view.products:
                name, cap = str(p.get("name") or p.get("kind")), _num(p.get("capacity_w")) or 0.0
                out[(name, "enrolled")] = out.get((name, "enrolled"), 0.0) + cap
                if p.get("state") not in ("idle", "waiting", "enrolling"):
                    out[(name, "armed")] = out.get((name, "armed"), 0.0) + cap
            for name in view.offers_w:
                offer = view.offer_now(name, wall)
                if offer is not None:
                    out[(name, "offered")] = out.get((name, "offered"), 0.0) + offer
        return out

    def summary(self, wall: float) -> dict[str, Any]:
        """The node part of the site's status: counts, power, and one entry per node."""
        online = {v.node for v in self.online(wall)}
        return {
            "nodes_online": len(online),
            "nodes_offline": len(self.nodes) - len(online),
            "nodes_deaf": sum(1 for n in online if not self.nodes[n].hears_orders),
            "it_w": round(self.it_w(wall), 1),
            "deliverable_w": round(sum((self.nodes[n].deliverable_w or 0.0) for n in online), 1),
            "nodes": {
                n: {"online": n in online, "hears_orders": v.hears_orders,
                    "draw_w": v.draw_w, "floor_w": v.floor_w, "event": v.event,
                    "faults": list(v.faults)}
                for n, v in sorted(self.nodes.items())
            },
        }
