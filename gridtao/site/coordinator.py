"""The site coordinator: one per site, the layer above the nodes (docs/site.md).

It reads what every node publishes (status, tier 2 state, plans, acks), the site meter and the
aggregator's site dispatches, and answers with per-node ``cap`` orders (signed as the aggregator
signs), site acks and the site's retained status. It is never on a node's safety path: a node
keeps its events, bounds and frequency products whether or not a coordinator runs, and a
restarted coordinator takes its events back from its retained ``{prefix}/site/events`` and the
nodes' retained topics without sending anything a node has not already got.

Here: the inputs routed, site events started, released, acked and expired, the retained events
record and status. The nodes' messages are taken in by :mod:`gridtao.site.nodeinputs`, the node
orders sent by :mod:`gridtao.site.sending`, the market's part by :mod:`gridtao.site.bidding`,
the site's power counted by :mod:`gridtao.site.power`, and the meter's readings checked (signed
mode) by :mod:`gridtao.site.meterauth`.

Threads: everything here runs on the coordinator's event loop; :meth:`SiteCoordinator.snapshot`
is swapped whole for the metrics collector, which reads it from the scrape thread.
Times in Unix seconds (``clock.wall()``), power in W.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from gridtao.clock import Clock
from gridtao.config.agent import Config
from gridtao.control.tier2.facility import FacilityModel
from gridtao.security.auth import AuthRejected, Verifier
from gridtao.site.bidding import SiteBidding, award_terms
from gridtao.site.events import SiteEvent, fleet_event, site_event
from gridtao.site.guard import Duplicate, SiteGuard
from gridtao.site.market import SitePlan
from gridtao.site.meter import MeterFeedback
from gridtao.site.meterauth import MeterGate
from gridtao.site.nodeinputs import MAX_PAYLOAD_BYTES, NodeInputs, decode
from gridtao.site.orders import end_orders
from gridtao.site.power import node_draws_w, site_it_w
from gridtao.site.records import events_record, take_back
from gridtao.site.refusals import AUTH_PREFIX, OrderAuth
from gridtao.site.sending import MAX_ORDER_SPACING_S as MAX_ORDER_SPACING_S  # kept importable
from gridtao.site.sending import OrderSender, Publish, Sign
from gridtao.site.signing import record_verifier
from gridtao.site.status import DelayHistogram, status_body
from gridtao.site.view import SiteView
from gridtao.wire.messages import (
    MessageRejected,
    ReleaseDispatch,
    dispatch_from,
    dispatch_terms,
)
from gridtao.wire.site import (
    SiteCapDispatch,
    SiteShedDispatch,
    SiteTopics,
    parse_site_dispatch,
    site_payload,
)

__all__ = ["Publish", "Sign", "SiteCoordinator"]

log = logging.getLogger("gridtao.site")

#: The aggregator's dispatches to every node followed at once (their acks gathered).
MAX_FLEET_EVENTS: Final = 64
#: A started coordinator's first status waits at most this long for the retained node
#: statuses and its own events record (they come within milliseconds of subscribing): a first
#: status from an empty view would read as every node gone and no event in force.
FIRST_STATUS_WAIT_S: Final = 1.0


class SiteCoordinator:
    """See the module docstring. Feed it with :meth:`on_message` and call :meth:`tick`
    periodically (every 0.1 s or so); it publishes through ``publish``."""

    def __init__(self, config: Config, *, clock: Clock, publish: Publish, sign: Sign,
                 verifier: Verifier | None,
                 instance: Mapping[str, object] | None = None,
                 own_key: Verifier | None = None) -> None:
        """``sign`` signs what the site sends with its key, ``verifier`` checks the
        aggregator's messages, ``own_key`` the site's own retained record (default: from
        ``site.signing``; gridtao/site/signing.py)."""
        self.cfg = config.site
        #: Who this coordinator is (transport/instance.py), in its retained status: a second
        #: coordinator of the site refuses to start while this one is alive.
        self.instance = dict(instance) if instance is not None else None
        #: Whether each of the site's receiving connections is up (``cmd``, ``state``), read
        #: at each status (status ``links``); None: not said (set by ``gridtao site``).
        self.links: Callable[[], Mapping[str, bool]] | None = None
        self.auth = config.auth
        self.topics = SiteTopics(config.mqtt.prefix)
        self.clock = clock
        self._publish = publish
        self.view = SiteView(expected=self.cfg.nodes, stale_s=self.cfg.node_stale_s)
        self.meter = MeterFeedback(FacilityModel.from_config(config.facility), self.cfg.meter)
        self.events: dict[str, SiteEvent] = {}
        self._sign = sign
        self._own_key = record_verifier(config) if own_key is None else own_key
        self.guard = SiteGuard(config.auth, verifier)
        self.meter_gate = MeterGate(config, verifier, max_bytes=MAX_PAYLOAD_BYTES,
                                    count=self._count)
        self.order_auth = OrderAuth(self.cfg.signing)
        self.sender = OrderSender(self.cfg, self.view, self.meter, self.events, clock=clock,
                                  topics=self.topics, publish=publish, sign=sign,
                                  count=self._count)
        self.bidding = SiteBidding(self.cfg, self.view, self.guard, topics=self.topics,
                                   publish=publish, sign=sign,
                                   refuse=functools.partial(self._refuse, kind="award"),
                                   ack=self._ack, count=self._count,
                                   max_payload_bytes=MAX_PAYLOAD_BYTES,
                                   max_future_s=config.auth.max_future_s)
        self.node_inputs = NodeInputs(view=self.view, events=self.events, sender=self.sender,
                                      bidding=self.bidding, order_auth=self.order_auth,
                                      clock=clock, count=self._count)
        self._started_at = clock.wall()
        self._next_status = self._started_at + FIRST_STATUS_WAIT_S
        self._record_seen = False  # its own retained events record came (or none will)
        self.counts: dict[str, int] = {}
        self.ack_delays = DelayHistogram()  # from each (re)split to its site ack
        self.snapshot: dict[str, Any] = {}

    @property
    def plan(self) -> SitePlan | None:
        """The site's pooled plan (its bids), None before a node has published one."""
        return self.bidding.plan

    # ---- input ---------------------------------------------------------------------------

    def command_subscriptions(self) -> list[tuple[str, int]]:
        """What the site acts on: dispatches, awards, acks, the meter, its own record."""
        return self.topics.command_subscriptions()

    def state_subscriptions(self) -> list[tuple[str, int]]:
        """The nodes' periodic state, all retained (QoS 0)."""
        return self.topics.state_subscriptions()

    @property
    def events_topic(self) -> str:
        return self.topics.events

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
                self.bidding.on_award(payload, wall)
        elif topic == self.events_topic:
            self._on_events_record(payload, wall, retained=retained)
        else:
            where = t.node_of(topic)
            if where is not None:
                self.node_inputs.on_message(where[0], where[1], payload)

    def _on_meter(self, payload: bytes, wall: float) -> None:
        # Parsed, fresh and, in signed mode, verified (site/meterauth.py).
        reading = self.meter_gate.admit(payload, wall, self.clock.now())
        if reading is not None:
            self.meter.observe(reading, self._site_it_w(wall))

    # ---- site dispatch -------------------------------------------------------------------

    def _refuse(self, ident: str | None, reason: str, wall: float, *,
                kind: str | None = None) -> None:
        """Refused, counted, logged and acked with the reason; ``kind`` (an award): what was
        refused, said in the log and the ack."""
        self._count("site_dispatch_rejected")
        log.warning("site %s %s refused: %s", kind or "dispatch", ident, reason)
        self._ack({"id": ident, "accepted": False, "reason": reason, "received_at": wall,
                   "commanded_at": None, "reached_at": None, "site": self.cfg.id}
                  | ({"kind": kind} if kind else {}))

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

    def _start(self, msg: SiteCapDispatch | SiteShedDispatch, wall: float) -> None:
        # every node drawing, offline ones too: the reference is their sum (site_it_w)
        draws_w = node_draws_w(self.view, self.events.values(), wall)
        it_w = sum(draws_w.values())
        reference = it_w if msg.at == "it" else self.meter.site_meter_w(it_w, wall)
        event = site_event(msg, reference_w=reference, wall=wall, draws_w=draws_w)
        self.events[event.id] = event
        log.info("site event %s: %s at %s, %.0f W -> %.0f W for %.0f s", event.id, event.kind,
                 event.at, reference, event.target_w or 0.0, msg.duration_s)
        self.sender.split(event, wall, first=True)

    def _on_fleet_dispatch(self, payload: bytes, wall: float) -> None:
        """A dispatch the aggregator sent to every node: gather their acks into a site ack.
        Only one the nodes could act on is followed (a valid dispatch, signed by a key they
        trust in signed mode), and at most MAX_FLEET_EVENTS at once: junk on the shared
        topic costs the site nothing."""
        body = decode(payload)
        if body is None:
            return
        try:
            msg = dispatch_from(body)
        except MessageRejected:
            return
        if isinstance(msg, ReleaseDispatch) or msg.id in self.events:
            return
        if not self.guard.authentic(body):
            self._count("fleet_dispatch_unauthenticated")
            return
        if sum(e.kind == "fleet" for e in self.events.values()) >= MAX_FLEET_EVENTS:
            self._count("fleet_dispatch_over_limit")
            return
        self.events[msg.id] = fleet_event(body, wall, reference_w=self._site_it_w(wall),
                                          nodes=[v.node for v in self.view.online(wall)
                                                 if v.hears_orders])

    def _on_events_record(self, payload: bytes, wall: float, *, retained: bool) -> None:
        """The site's own retained record of its events: taken back once, at start (before
        the first status), as gridtao/site/records.py allows. A record published later is
        never taken, nor one the broker delivers again on a reconnect."""
        if not retained or self._record_seen or self.snapshot:
            return
        self._record_seen = True
        taken = take_back(payload, wall, own_key=self._own_key, max_event_s=self.cfg.max_event_s)
        if taken.refused is not None:
            log.warning("retained events record not taken back: %s", taken.refused)
            self._count("events_record_refused")
        self.bidding.live.restore(taken.awards, wall,
                                  hold_until=self._started_at + self.cfg.node_stale_s)
        for award in taken.awards:  # a redelivery is a duplicate, not a new split
            self.guard.remember(award.id, award_terms(award))
        if self.events:
            return
        for event in taken.events:
            self.events[event.id] = event
            # Not re-split before every node has had a status period to be seen again: a
            # split from half a view would move shares that need not move.
            self.sender.restored(event, self._started_at + self.cfg.node_stale_s)
            self.guard.remember(event.id, event.terms)

    def _release(self, release_id: str, ref: str, wall: float) -> None:
        event = self.events.get(ref)
        if event is None or event.kind == "fleet":
            self._refuse(release_id, f"no site event {ref!r} in force", wall)
            return
        self.sender.forget(ref, releases := end_orders(event))
        log.info("site event %s released by %s", ref, release_id)
        # Sent with the release orders, naming their nodes; commanded_at null as in a node's
        # release ack (the nodes' ramp-out writes the limits)
        self._ack({"id": release_id, "accepted": True, "reason": None, "received_at": wall,
                   "commanded_at": None, "reached_at": None, "site": self.cfg.id, "ref": ref,
                   "nodes": {"released": sorted({node for node, _ in releases})}})

    # ---- periodic ------------------------------------------------------------------------

    def tick(self) -> None:
        """Acks due, expiries, rebalancing, the retained status: call every ~0.1 s."""
        wall = self.clock.wall()
        for event in list(self.events.values()):
            if wall >= event.until:
                if event.phase == "answering":  # a short event still gets its site ack
                    self._advance(event, wall, ended=True)
                self.sender.forget(event.id)
                continue
            self._advance(event, wall)
            if event.refused():  # acked as refused; nothing holds it (events.py)
                log.warning("site event %s ended: every node refused it", event.id)
                # earlier generations' orders are ended (this one's were refused); the
                # aggregator's own dispatch (fleet) is the nodes' to end
                self.sender.forget(event.id, () if event.kind == "fleet"
                                   else end_orders(event, orders=False))
                continue
            self.sender.rebalance(event, wall)
        if self.sender.record_stale or self.bidding.live.record_stale:
            self.sender.record_stale = self.bidding.live.record_stale = False
            # Signed with the site's key: a restart takes back only a record it wrote.
            self._publish(self.events_topic, self._sign(events_record(
                self.cfg.id, self.events.values(), wall, self.bidding.live.awards)), 1, True)
        self.bidding.tick(wall)
        if wall >= self._next_status or (self._first_view_in() and not self.snapshot):
            self._next_status = wall + self.cfg.status_period_s
            self._publish_status(wall)

    def _spacing_s(self, node: str) -> float:
        """How long after its last cap ``node`` takes another (s; :mod:`~gridtao.site.sending`)."""
        return self.sender.spacing_s(node)

    def _first_view_in(self) -> bool:
        """Before the first status: the events record and a status of every node the site
        expects (``site.nodes``; else of one node at least) are in (else the first status
        waits for FIRST_STATUS_WAIT_S)."""
        expected = set(self.cfg.nodes)
        reported = self.node_inputs.reported  # site.nodes are known before they report
        heard = expected <= reported if expected else bool(reported)
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
        """The site's IT power now (W; :func:`~gridtao.site.power.site_it_w`)."""
        return site_it_w(self.view, self.events.values(), wall)

    def _ack(self, body: dict[str, Any]) -> None:
        self._publish(self.topics.ack, site_payload(body), 1, False)

    def _publish_status(self, wall: float) -> None:
        body = status_body(self.cfg.id, self.view, self.meter, self.events.values(),
                           it_w=self._site_it_w(wall), wall=wall,
                           award=self.bidding.live.in_force(wall, self.bidding.plan))
        if self.instance is not None:
            body["instance"] = self.instance
        if self.links is not None:
            body["links"] = {name: bool(up) for name, up in self.links().items()}
        self.snapshot = body
        self._publish(self.topics.status, site_payload(body), 1, True)

    def offline_payload(self) -> bytes:
        """The site status's last will."""
        return site_payload({"site": self.cfg.id, "online": False})

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
