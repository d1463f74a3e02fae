"""The site coordinator: one per site, the layer above the nodes (docs/site.md).

It reads what every node publishes (status, tier 2 state, plans, acks), the site meter and the
aggregator's site dispatches, and answers with per-node ``cap`` orders (signed as the aggregator
signs), site acks and the site's retained status. It is never on a node's safety path: a node
keeps its events, bounds and frequency products whether or not a coordinator runs, and a
restarted coordinator takes its events back from its retained ``{prefix}/site/events`` and the
nodes' retained topics without sending anything a node has not already got.

Threads: everything here runs on the coordinator's event loop; :meth:`SiteCoordinator.snapshot`
is swapped whole for the metrics collector, which reads it from the scrape thread.
Times in Unix seconds (``clock.wall()``), power in W.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from gridtao.clock import Clock
from gridtao.config.agent import Config
from gridtao.control.tier2.facility import FacilityModel
from gridtao.security.auth import AuthRejected, Verifier
from gridtao.site.events import (
    SiteEvent,
    events_record,
    fleet_event,
    order_for_ack,
    restore_events,
    site_event,
)
from gridtao.site.guard import Duplicate, SiteGuard
from gridtao.site.market import SitePlan, node_awards, pool_offers, split_award
from gridtao.site.meter import MeterFeedback
from gridtao.site.orders import end_orders, issue_orders, plan_caps, release_body
from gridtao.site.refusals import AUTH_PREFIX, OrderAuth
from gridtao.site.status import DelayHistogram, status_body
from gridtao.site.view import SiteView
from gridtao.wire.awards import parse_award
from gridtao.wire.messages import MessageRejected, ReleaseDispatch, dispatch_terms
from gridtao.wire.site import (
    SiteCapDispatch,
    SiteShedDispatch,
    SiteTopics,
    parse_meter,
    parse_site_dispatch,
    site_payload,
)

__all__ = ["Publish", "SiteCoordinator"]

log = logging.getLogger("gridtao.site")

#: How far ahead of the site's clock a node's ``reached_at`` may be and still be taken (s).
REACHED_SKEW_S = 5.0
#: How soon after a node with an earlier order comes back the event is split again (s).
REJOIN_SPLIT_S = 0.5

#: ``publish(topic, payload, qos, retain)``: hands a message to the broker connection.
Publish = Callable[[str, bytes, int, bool], None]
#: Signs a node dispatch as the aggregator would (identity when the site signs nothing).
Sign = Callable[[dict[str, Any]], bytes]

MAX_PAYLOAD_BYTES: Final = 65_536
#: A node's cap is sent for whole seconds of what is left of the event, never less than this.
MIN_ORDER_S: Final = 1.0
#: A new split does not send a node a cap sooner than this after its last one (s), or than the
#: node's own ``limits.min_event_interval_s`` (its status says it) and ORDER_SLACK_S: a node
#: takes at most one cut per that interval (1 s by default) and refuses the next, so two events
#: re-split by one change (a node lost) would have the second one refused.
ORDER_SPACING_S: Final = 1.1
ORDER_SLACK_S: Final = 0.1
MAX_ORDER_SPACING_S: Final = 10.0
#: A started coordinator's first status waits at most this long for the retained node
#: statuses and its own events record (they come within milliseconds of subscribing): a first
#: status from an empty view would read as every node gone and no event in force.
FIRST_STATUS_WAIT_S: Final = 1.0


class SiteCoordinator:
    """See the module docstring. Feed it with :meth:`on_message` and call :meth:`tick`
    periodically (every 0.1 s or so); it publishes through ``publish``."""

    def __init__(self, config: Config, *, clock: Clock, publish: Publish, sign: Sign,
                 verifier: Verifier | None,
                 instance: Mapping[str, object] | None = None) -> None:
        self.cfg = config.site
        #: Who this coordinator is (transport/instance.py), in its retained status: a second
        #: coordinator of the site refuses to start while this one is alive.
        self.instance = dict(instance) if instance is not None else None
        self.auth = config.auth
        self.topics = SiteTopics(config.mqtt.prefix)
        self.clock = clock
        self._publish = publish
        self._sign = sign
        self.view = SiteView(expected=self.cfg.nodes, stale_s=self.cfg.node_stale_s)
        self.meter = MeterFeedback(FacilityModel.from_config(config.facility), self.cfg.meter)
        self.events: dict[str, SiteEvent] = {}
        # (node dispatch id, node) -> site event id: every node of a generation gets one id.
        self._by_dispatch: dict[tuple[str, str], str] = {}
        self.guard = SiteGuard(config.auth, verifier)
        self.order_auth = OrderAuth(self.cfg.signing)
        self.plan: SitePlan | None = None
        self._plan_dirty = False
        self._next_plan = 0.0
        self._started_at = clock.wall()
        self._next_status = self._started_at + FIRST_STATUS_WAIT_S
        self._record_seen = False  # its own retained events record came (or none will)
        self._reported: set[str] = set()  # nodes whose status came (site.nodes are pre-known)
        self._next_rebalance: dict[str, float] = {}
        self._last_order: dict[str, float] = {}  # node -> when it was last sent a cap
        self._events_dirty = False
        self.counts: dict[str, int] = {}
        self.ack_delays = DelayHistogram()  # from each (re)split to its site ack
        self.snapshot: dict[str, Any] = {}

    # ---- input ---------------------------------------------------------------------------

    def command_subscriptions(self) -> list[tuple[str, int]]:
        """What the site acts on: dispatches, awards, acks, the meter, its own record."""
        t = self.topics
        return [(t.dispatch, 1), (t.award, 1), (t.fleet_dispatch, 1), (t.meter, 0),
                (t.nodes("ack"), 1), (self.events_topic, 1)]

    def state_subscriptions(self) -> list[tuple[str, int]]:
        """The nodes' periodic state, all retained. QoS 0: a status a second from every node
        is most of what the site receives, a PUBACK for each would double it, and a lost one
        is replaced within a status period."""
        t = self.topics
        return [(t.nodes("status"), 0), (t.nodes("tracker"), 0), (t.nodes("plan"), 0)]

    @property
    def events_topic(self) -> str:
        return f"{self.topics.prefix}/site/events"

    def on_message(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """One message from the broker (any subscription)."""
        wall = self.clock.wall()
        t = self.topics
        if topic == t.meter:
            self._on_meter(payload, wall)
        elif topic == t.dispatch:
            if retained:
                self._count("site_dispatch_retained_ignored")
            else:
                self._on_site_dispatch(payload, wall)
        elif topic == t.fleet_dispatch:
            if not retained:
                self._on_fleet_dispatch(payload, wall)
        elif topic == t.award:
            if not retained:
                self._on_site_award(payload, wall)
        elif topic == self.events_topic:
            self._on_events_record(payload, wall)
        else:
            where = t.node_of(topic)
            if where is not None:
                self._on_node(where[0], where[1], payload)

    def _decode(self, payload: bytes) -> dict[str, Any] | None:
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        return body if isinstance(body, dict) else None

    def _on_node(self, node: str, leaf: str, payload: bytes) -> None:
        body = self._decode(payload)
        if body is None:
            self._count(f"node_{leaf}_malformed")
            return
        if leaf == "status":
            self._reported.add(node)
            self.view.on_status(node, body)
            self.order_auth.on_status(node, body.get("auth"))
        elif leaf == "tracker":
            self.view.on_tracker(node, body)
        elif leaf == "plan":
            self.view.on_plan(node, body)
            self._plan_dirty = True
        elif leaf == "ack":
            self._on_node_ack(node, body)

    def _on_node_ack(self, node: str, body: Mapping[str, Any]) -> None:
        ident = body.get("id")
        if not isinstance(ident, str):
            return
        found = order_for_ack(self.events, self._by_dispatch, node, ident)
        if found is not None:
            event, order = found
            order.on_ack(body)
            event.touched = True
            if event.kind != "fleet":  # the retained record keeps answers and times
                self._events_dirty = True
            event.held = event.held or order.answer == "accepted"
            if order.answer == "rejected" and event.kind != "fleet":
                self.order_auth.on_refusal(node, order.reason)

    def _on_meter(self, payload: bytes, wall: float) -> None:
        try:
            reading = parse_meter(payload, max_bytes=MAX_PAYLOAD_BYTES)
        except MessageRejected as e:
            self._count("meter_rejected")
            log.warning("meter reading refused: %s", e.reason)
            return
        if abs(reading.t - wall) > self.cfg.meter.stale_s:
            self._count("meter_stale")
            return
        self.meter.observe(reading, self._site_it_w(wall))

    # ---- site dispatch -------------------------------------------------------------------

    def _refuse(self, ident: str | None, reason: str, wall: float) -> None:
        self._count("site_dispatch_rejected")
        log.warning("site dispatch %s refused: %s", ident, reason)
        self._ack({"id": ident, "accepted": False, "reason": reason, "received_at": wall,
                   "commanded_at": None, "reached_at": None, "site": self.cfg.id})

    def _on_site_dispatch(self, payload: bytes, wall: float) -> None:
        try:
            msg = parse_site_dispatch(payload, max_bytes=MAX_PAYLOAD_BYTES)
            self.guard.check(payload, msg.id, msg.issued_at, dispatch_terms(msg), wall)
        except MessageRejected as e:
            self._refuse(e.event_id, e.reason, wall)
            return
        except AuthRejected as e:  # worded as a node words it
            self._refuse(msg.id, f"{AUTH_PREFIX} {e.reason}", wall)
            return
        except Duplicate:
            # A retry (its ack lost, or a refusal it doubts): answered with the event's state.
            self._count("site_dispatch_duplicate")
            held = self.events.get(msg.id)
            if held is not None:
                self._ack(self._ack_body(held, wall))
            return
        if isinstance(msg, ReleaseDispatch):
            self._release(msg.id, msg.ref, wall)
            return
        if msg.duration_s > self.cfg.max_event_s:
            self._refuse(msg.id, f"duration_s {msg.duration_s:g} s exceeds the site's limit "
                         f"{self.cfg.max_event_s:g} s", wall)
            return
        self._count("site_dispatch_accepted")
        self._start(msg, wall)

    def _on_site_award(self, payload: bytes, wall: float) -> None:
        """The market's answer to the site's bids: split into signed per-node awards."""
        plan = self.plan
        products = sorted(plan.offers_w) if plan is not None else []
        try:
            award = parse_award(payload, max_bytes=MAX_PAYLOAD_BYTES, products=products)
            self.guard.check(payload, award.id, award.issued_at,
                             ("award", award.start_s, award.mtu_s,
                              tuple(sorted(award.capacity_w.items()))), wall)
            if plan is None:
                raise MessageRejected("the site has no plan to award (no node has published "
                                      "one)", award.id)
            shares = split_award(award, plan)
        except (MessageRejected, ValueError) as e:
            ident = e.event_id if isinstance(e, MessageRejected) else None
            self._refuse(ident, e.reason if isinstance(e, MessageRejected) else str(e), wall)
            return
        except AuthRejected as e:
            self._refuse(None, f"{AUTH_PREFIX} {e.reason}", wall)
            return
        except Duplicate:
            return
        for node, body in node_awards(award, shares, wall):
            self._publish(self.topics.node(node, "award"), self._sign(body), 1, False)
        self._count("site_awards_split")
        self._ack({"id": award.id, "accepted": True, "reason": None, "received_at": wall,
                   "commanded_at": None, "reached_at": None, "site": self.cfg.id,
                   "kind": "award",  # the nodes the award went to, as in every site ack
                   "nodes": {"accepted": sorted(shares), "rejected": {}, "missing": [],
                             "offline": []}})

    def _start(self, msg: SiteCapDispatch | SiteShedDispatch, wall: float) -> None:
        it_w = self._site_it_w(wall)
        reference = it_w if msg.at == "it" else self.meter.site_meter_w(it_w, wall)
        # every node drawing, offline ones too: the reference counts them at their last draw
        event = site_event(msg, reference_w=reference, wall=wall, draws_w={
            v.node: v.draw_w for v in self.view.nodes.values() if v.draw_w is not None})
        self.events[event.id] = event
        log.info("site event %s: %s at %s, %.0f W -> %.0f W for %.0f s", event.id, event.kind,
                 event.at, reference, event.target_w or 0.0, msg.duration_s)
        self._split(event, wall, first=True)

    def _on_fleet_dispatch(self, payload: bytes, wall: float) -> None:
        """A dispatch the aggregator sent to every node: gather their acks into a site ack."""
        body = self._decode(payload)
        if body is None or not isinstance(body.get("id"), str) or body.get("kind") == "release":
            return
        if body["id"] not in self.events:
            self.events[body["id"]] = fleet_event(body, wall, reference_w=self._site_it_w(wall),
                                                  nodes=[v.node for v in self.view.online(wall)])

    def _on_events_record(self, payload: bytes, wall: float) -> None:
        """The site's own retained record of its events: taken back once, at start."""
        self._record_seen = True
        if self.events:
            return
        for event in restore_events(self._decode(payload), wall):
            self.events[event.id] = event
            # Not re-split before every node has had a status period to be seen again: a
            # split from half a view would move shares that need not move.
            self._next_rebalance[event.id] = self._started_at + self.cfg.node_stale_s
            self.guard.remember(event.id, event.terms)
            for node, order in event.orders.items():
                self._by_dispatch[(order.dispatch_id, node)] = event.id

    # ---- splitting -----------------------------------------------------------------------

    def _it_budget(self, event: SiteEvent, wall: float) -> float:
        assert event.target_w is not None
        if event.at == "it":
            return event.target_w
        return self.meter.it_budget_w(event.target_w, wall)

    def _split(self, event: SiteEvent, wall: float, *, first: bool = False) -> None:
        if not first:
            # A node sent a cap under ORDER_SPACING_S ago would refuse this one: the split
            # waits, before anything of the event (its offline list) is touched.
            nodes = set(event.orders) | {v.node for v in self.view.online(wall)}
            spaced = max((self._last_order.get(n, -math.inf) + self._spacing_s(n)
                          for n in nodes), default=-math.inf)
            if wall < spaced:
                self._next_rebalance[event.id] = spaced
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
            self._by_dispatch[(body["id"], node)] = event.id
            self._send(node, body)
        self._release_old(event, wall)
        self._next_rebalance[event.id] = wall + self.cfg.rebalance_s
        self._events_dirty = True

    def _release_old(self, event: SiteEvent, wall: float) -> None:
        """End the orders of earlier generations, each when its node is online to hear it and
        has accepted its new order (an offline node's order stays in force there until it
        comes back or runs out; one that refused the new split keeps holding its old one). A
        node back online after the split was made without it (offline then) keeps its old
        order until the next split, made soon, gives it a share: it is never left uncapped
        between the two. A node the split left out while online (a GPU fault) is released."""
        for node in [n for n in event.unreleased if self.view.is_online(n, wall)]:
            if node not in event.orders and node in event.offline:  # back since the split
                due = wall + REJOIN_SPLIT_S
                if self._next_rebalance.get(event.id, due) > due:
                    self._next_rebalance[event.id] = due
                continue
            if not event.releasable(node):
                continue
            for ident in event.unreleased.pop(node):
                self._send(node, release_body(ident))
            self._events_dirty = True  # a restarted coordinator must not end them again

    def _forget(self, event_id: str, releases: Iterable[tuple[str, dict[str, Any]]] = ()
                ) -> None:
        """The event is over: drop it and the map from its orders' ids, and send ``releases``
        (node, release body) to end its orders at the nodes."""
        for node, body in releases:
            self._send(node, body)
        self.events.pop(event_id, None)
        self._next_rebalance.pop(event_id, None)
        self._by_dispatch = {k: v for k, v in self._by_dispatch.items() if v != event_id}
        self._events_dirty = True

    def _send(self, node: str, body: dict[str, Any]) -> None:
        if body.get("kind") == "cap":
            self._last_order[node] = self.clock.wall()
        self._publish(self.topics.node(node, "dispatch"), self._sign(body), 1, False)
        self._count("node_dispatches_sent")

    def _release(self, release_id: str, ref: str, wall: float) -> None:
        event = self.events.get(ref)
        if event is None or event.kind == "fleet":
            self._refuse(release_id, f"no site event {ref!r} in force", wall)
            return
        self._forget(ref, end_orders(event))
        log.info("site event %s released by %s", ref, release_id)
        # Sent with the release orders; commanded_at null as in a node's release ack (the
        # nodes' ramp-out writes the limits, not the release)
        self._ack({"id": release_id, "accepted": True, "reason": None, "received_at": wall,
                   "commanded_at": None, "reached_at": None, "site": self.cfg.id, "ref": ref})

    # ---- periodic ------------------------------------------------------------------------

    def tick(self) -> None:
        """Acks due, expiries, rebalancing, the retained status: call every ~0.1 s."""
        wall = self.clock.wall()
        for event in list(self.events.values()):
            if wall >= event.until:
                if event.phase == "answering":  # a short event still gets its site ack
                    self._advance(event, wall, ended=True)
                self._forget(event.id)
                continue
            self._advance(event, wall)
            if event.refused():  # acked as refused; nothing holds it (events.py)
                log.warning("site event %s ended: every node refused it", event.id)
                # earlier generations' orders are ended (this one's were refused); the
                # aggregator's own dispatch (fleet) is the nodes' to end
                self._forget(event.id, () if event.kind == "fleet"
                             else end_orders(event, orders=False))
                continue
            if (event.kind != "fleet" and event.phase != "answering"
                    and wall >= self._next_rebalance.get(event.id, 0.0)
                    and event.until - wall > MIN_ORDER_S):
                self._next_rebalance[event.id] = wall + self.cfg.rebalance_s
                if self.view.online(wall):  # none: the site is blind, not the nodes gone
                    self._split(event, wall)
            if event.unreleased:
                self._release_old(event, wall)
        if self._events_dirty:
            self._events_dirty = False
            self._publish(self.events_topic, site_payload(
                events_record(self.cfg.id, self.events.values(), wall)), 1, True)
        if self._plan_dirty and wall >= self._next_plan:
            self._plan_dirty, self._next_plan = False, wall + 1.0  # plans come hourly
            self.plan = pool_offers(self.view.nodes, self.cfg.market)
            if self.plan is not None:
                self._publish(self.topics.plan, site_payload(
                    self.plan.body(self.cfg.id, wall, self.cfg.market)), 1, True)
        if wall >= self._next_status or (self._first_view_in() and not self.snapshot):
            self._next_status = wall + self.cfg.status_period_s
            self._publish_status(wall)

    def _spacing_s(self, node: str) -> float:
        """How long after its last cap ``node`` takes another (s)."""
        view = self.view.nodes.get(node)
        said = None if view is None else view.cut_interval_s
        if said is None:
            return ORDER_SPACING_S
        # Bounded: a node status is anyone's message on the broker, and one saying an hour
        # would hold every re-split of every event that reaches the node.
        return min(MAX_ORDER_SPACING_S, max(ORDER_SPACING_S, said + ORDER_SLACK_S))

    def _first_view_in(self) -> bool:
        """Before the first status: the events record and a status of every node the site
        expects (``site.nodes``; else of one node at least) are in (else the first status
        waits for FIRST_STATUS_WAIT_S)."""
        expected = set(self.cfg.nodes)
        heard = expected <= self._reported if expected else bool(self._reported)
        return heard and self._record_seen

    def _ack_body(self, event: SiteEvent, wall: float) -> dict[str, Any]:
        """The event's site ack now. The hints on the nodes' signature refusals are about the
        site's own signing: not for a fleet event, which the aggregator signed."""
        return event.ack_body(self.cfg.id, measured_w=self._measured(event, wall),
                              hint=self.order_auth.hint if event.kind != "fleet"
                              else lambda _reason: None)

    def _advance(self, event: SiteEvent, wall: float, *, ended: bool = False) -> None:
        """Send the site acks that are due (``ended``: the event is over: ack now, naming
        the nodes that have not answered)."""
        since = event.phase_since
        for due in event.advance(wall, self.cfg.ack_deadline_s, ended=ended):
            self._ack(self._ack_body(event, wall))
            if due == "answered":
                self.ack_delays.observe(wall - since)
                for order in event.orders.values():
                    self._count("node_answers_" + (order.answer or "missing"))

    def _measured(self, event: SiteEvent, wall: float) -> float:
        it_w = self._site_it_w(wall)
        return it_w if event.at == "it" else self.meter.site_meter_w(it_w, wall)

    def _site_it_w(self, wall: float) -> float:
        """The site's IT power: online nodes as measured, offline ones at the draw last known
        (an offline node may be drawing all it can: never counted as zero). A node measured
        in its band after its last status (its ack's ``reached_power_w``: a node reaches its
        band well within one status period) counts at that power."""
        reached = self._reached_power_w()
        total = 0.0
        for v in self.view.nodes.values():
            newer = reached.get(v.node)
            # Newer than its status, and not from the future (a stamp beyond the site's clock
            # and the nodes' skew would pin the node at that power for the whole event).
            if newer is not None and (v.t is None or newer[0] > v.t) \
                    and newer[0] <= wall + REACHED_SKEW_S:
                total += newer[1]
            else:
                total += v.draw_w or 0.0
        return total

    def _reached_power_w(self) -> dict[str, tuple[float, float]]:
        """Per node, the latest ``(reached_at, reached_power_w)`` of its accepted orders in the
        events held (node time, W)."""
        out: dict[str, tuple[float, float]] = {}
        for event in self.events.values():
            for o in event.orders.values():
                if o.answer != "accepted" or o.reached_at is None or o.reached_power_w is None:
                    continue
                seen = out.get(o.node)
                if seen is None or o.reached_at > seen[0]:
                    out[o.node] = (o.reached_at, o.reached_power_w)
        return out

    def _ack(self, body: dict[str, Any]) -> None:
        self._publish(self.topics.ack, site_payload(body), 1, False)

    def _publish_status(self, wall: float) -> None:
        body = status_body(self.cfg.id, self.view, self.meter, self.events.values(),
                           it_w=self._site_it_w(wall), wall=wall)
        if self.instance is not None:
            body["instance"] = self.instance
        self.snapshot = body
        self._publish(self.topics.status, site_payload(body), 1, True)

    def offline_payload(self) -> bytes:
        """The site status's last will."""
        return site_payload({"site": self.cfg.id, "online": False})

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
