"""The site events' node orders on the wire: when each event is split, and what is sent.

:class:`OrderSender` sends an event's split when it arrives and at every rebalance that moves a
share (:func:`~gridtao.site.orders.plan_caps` decides the caps), spaced per node so that a node
takes its new cap (it takes at most one cut per its ``limits.min_event_interval_s``: a re-split
waits until every node may take its cap; a new event's first split goes at once to the nodes
that may, and to each other node as soon as it may), releases
the orders of earlier generations once that is safe, and ends an event's orders at its nodes.
It signs and publishes each node dispatch, keeps which event each node dispatch id belongs to,
and says when the retained events record is out of date; the coordinator publishes that record.

Threads: the coordinator's event loop only. Times in Unix seconds (``clock.wall()``), power in
W (IT).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Final

from gridtao.clock import Clock
from gridtao.config.site import SiteConfig
from gridtao.site.events import SiteEvent
from gridtao.site.meter import MeterFeedback
from gridtao.site.orders import issue_orders, plan_caps, release_body
from gridtao.site.view import SiteView
from gridtao.wire.site import SiteTopics

__all__ = ["MAX_ORDER_SPACING_S", "MIN_ORDER_S", "ORDER_SLACK_S", "ORDER_SPACING_S",
           "REJOIN_SPLIT_S", "OrderSender", "Publish", "Sign"]

log = logging.getLogger("gridtao.site")

#: ``publish(topic, payload, qos, retain)``: hands a message to the broker connection.
Publish = Callable[[str, bytes, int, bool], None]
#: Signs a node dispatch as the aggregator would (identity when the site signs nothing).
Sign = Callable[[dict[str, Any]], bytes]

#: How soon after a node with an earlier order comes back the event is split again (s).
REJOIN_SPLIT_S = 0.5
#: A node's cap is sent for whole seconds of what is left of the event, never less than this.
MIN_ORDER_S: Final = 1.0
#: A new split does not send a node a cap sooner than this after its last one (s), or than the
#: node's own ``limits.min_event_interval_s`` (its status says it) and ORDER_SLACK_S: a node
#: takes at most one cut per that interval (1 s by default) and refuses the next, so two events
#: re-split by one change (a node lost) would have the second one refused.
ORDER_SPACING_S: Final = 1.1
ORDER_SLACK_S: Final = 0.1
MAX_ORDER_SPACING_S: Final = 10.0


class OrderSender:
    """See the module docstring. ``events``: the coordinator's events held (shared, not
    copied: :meth:`forget` drops an event from it); ``count``: the coordinator's counters."""

    def __init__(self, cfg: SiteConfig, view: SiteView, meter: MeterFeedback,
                 events: dict[str, SiteEvent], *, clock: Clock, topics: SiteTopics,
                 publish: Publish, sign: Sign, count: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.view = view
        self.meter = meter
        self.events = events
        self.clock = clock
        self.topics = topics
        self._publish = publish
        self._sign = sign
        self._count = count
        # (node dispatch id, node) -> site event id: every node of a generation gets one id.
        self.by_dispatch: dict[tuple[str, str], str] = {}
        self.next_rebalance: dict[str, float] = {}
        self._last_order: dict[str, float] = {}  # node -> when it was last sent a cap
        # event id -> node -> (when, body): a first split's orders held for a node sent
        # another event's cap too recently to take this one yet.
        self._deferred: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}
        #: The retained events record no longer says what the events hold.
        self.record_stale = False

    def restored(self, event: SiteEvent, not_before: float) -> None:
        """An event taken back from the retained record: its orders' ids known again, and not
        re-split before ``not_before``."""
        self.next_rebalance[event.id] = not_before
        for node, order in event.orders.items():
            self.by_dispatch[(order.dispatch_id, node)] = event.id

    def _it_budget(self, event: SiteEvent, wall: float) -> float:
        assert event.target_w is not None
        if event.at == "it":
            return event.target_w
        return self.meter.it_budget_w(event.target_w, wall)

    def rebalance(self, event: SiteEvent, wall: float) -> None:
        """The event's periodic look (every tick while it is in force): a new split when its
        rebalance is due, and the release of earlier orders that are now safe to end."""
        if (event.kind != "fleet" and event.phase != "answering"
                and wall >= self.next_rebalance.get(event.id, 0.0)
                and event.until - wall > MIN_ORDER_S):
            self.next_rebalance[event.id] = wall + self.cfg.rebalance_s
            if self.view.online(wall):  # none: the site is blind, not the nodes gone
                self.split(event, wall)
        self._send_deferred(event, wall)
        if event.unreleased:
            self.release_old(event, wall)

    def _send_deferred(self, event: SiteEvent, wall: float) -> None:
        """Send the first split's orders held for nodes that may now take them (for what is
        left of the event), unless a later split has replaced them."""
        held = self._deferred.get(event.id)
        if not held:
            return
        for node, (due, body) in list(held.items()):
            # Another cap may have gone to the node since (another event's held order, or a
            # re-split): due again one interval after that one.
            due = max(due, self._last_order.get(node, -math.inf) + self.spacing_s(node))
            if wall < due:
                held[node] = (due, body)
                continue
            del held[node]
            order = event.orders.get(node)
            if order is not None and order.dispatch_id == body["id"]:
                order.sent = True
                self.record_stale = True
                self.send(node, body | {"duration_s": max(MIN_ORDER_S,
                                                          round(event.until - wall))})
        if not held:
            del self._deferred[event.id]

    def split(self, event: SiteEvent, wall: float, *, first: bool = False) -> None:
        if not first:
            # A node sent a cap under ORDER_SPACING_S ago would refuse this one: the split
            # waits, before anything of the event (its offline list) is touched.
            nodes = set(event.orders) | {v.node for v in self.view.online(wall)}
            spaced = max((self._last_order.get(n, -math.inf) + self.spacing_s(n)
                          for n in nodes), default=-math.inf)
            if wall < spaced:
                self.next_rebalance[event.id] = spaced
                return
        caps = plan_caps(event, self.view, self._it_budget(event, wall), wall,
                         at_w=lambda it_w: self.meter.power_at(event.at, it_w, wall),
                         margin=self.cfg.margin_fraction,
                         rebalance_min_w=self.cfg.rebalance_min_w, first=first)
        if caps is None:
            return
        bodies = issue_orders(event, caps, wall, first=first, min_order_s=MIN_ORDER_S)
        if not first:
            log.info("site event %s: new split (generation %d)", event.id, event.generation)
        for node, body in bodies:
            self.by_dispatch[(body["id"], node)] = event.id
            due = self._last_order.get(node, -math.inf) + self.spacing_s(node)
            if first and wall < due:
                # Sent now, it would be refused (another event's cap reached the node under
                # its interval ago): held until the node takes it, the rest sent at once.
                self._deferred.setdefault(event.id, {})[node] = (due, body)
                event.orders[node].sent = False
                continue
            self.send(node, body)
        self.release_old(event, wall)
        self.next_rebalance[event.id] = wall + self.cfg.rebalance_s
        self.record_stale = True

    def release_old(self, event: SiteEvent, wall: float) -> None:
        """End the orders of earlier generations, each when its node is online to hear it and
        has accepted its new order (an offline node's order stays in force there until it
        comes back or runs out; one that refused the new split keeps holding its old one). A
        node back online after the split was made without it (offline then) keeps its old
        order until the next split, made soon, gives it a share: it is never left uncapped
        between the two. A node the split left out while online (a GPU fault) is released;
        one left out because it could not hear orders, once it can."""
        for node in [n for n in event.unreleased if self.view.hears_orders(n, wall)]:
            if node not in event.orders and node in event.offline:  # back since the split
                due = wall + REJOIN_SPLIT_S
                if self.next_rebalance.get(event.id, due) > due:
                    self.next_rebalance[event.id] = due
                continue
            if not event.releasable(node):
                continue
            for ident in event.unreleased.pop(node):
                self.send(node, release_body(ident))
            self.record_stale = True  # a restarted coordinator must not end them again

    def forget(self, event_id: str, releases: Iterable[tuple[str, dict[str, Any]]] = ()
               ) -> None:
        """The event is over: drop it and the map from its orders' ids, and send ``releases``
        (node, release body) to end its orders at the nodes."""
        for node, body in releases:
            self.send(node, body)
        self.events.pop(event_id, None)
        self.next_rebalance.pop(event_id, None)
        self._deferred.pop(event_id, None)
        self.by_dispatch = {k: v for k, v in self.by_dispatch.items() if v != event_id}
        self.record_stale = True

    def send(self, node: str, body: dict[str, Any]) -> None:
        """Sign and send ``body`` to ``node``'s own inbox, naming the node in it: the
        signature then binds the order to that node, which alone acts on it (another node
        refuses its bytes replayed on its own topic)."""
        if body.get("kind") == "cap":
            self._last_order[node] = self.clock.wall()
        signed = self._sign({**body, "node": node})
        self._publish(self.topics.node(node, "dispatch"), signed, 1, False)
        self._count("node_dispatches_sent")

    def spacing_s(self, node: str) -> float:
        """How long after its last cap ``node`` takes another (s)."""
        view = self.view.nodes.get(node)
        said = None if view is None else view.cut_interval_s
        if said is None:
            return ORDER_SPACING_S
        # Bounded: a node status is anyone's message on the broker, and one saying an hour
        # would hold every re-split of every event that reaches the node.
        return min(MAX_ORDER_SPACING_S, max(ORDER_SPACING_S, said + ORDER_SLACK_S))
