"""A site event: what was asked of the site, each node's order, and what the nodes answered.

Two kinds share one record:
- a *site* event (``site_cap`` / ``site_shed`` on ``{prefix}/site/dispatch``): the coordinator
  splits it into per-node ``cap`` orders and moves shares between nodes as they come and go;
- a *fleet* event (a dispatch sent straight to every node on ``{prefix}/dispatch``): the
  coordinator sends nothing, and only gathers the nodes' acks into one site ack.

States of an event, each published as a site ack:
- ``answering``: orders sent; ends when every node with an order has answered, or at the ack
  deadline (those that did not are ``missing``) -> first ack -> ``reaching``;
- ``reaching``: ends when every accepting node has reported its ``reached_at`` -> second ack
  -> ``held``;
- ``held``: until the event's end or a release; a new split (rebalance) goes back to
  ``answering`` with the next generation.

An event whose every order was refused (or that had no node to ask: :meth:`SiteEvent.refused`)
is over once acked (``accepted: false``), whatever generation it was in: the coordinator
forgets it. One that some nodes accepted is held by those, and rebalanced as any other: a node
that refused keeps its share of the split (left unheld, and named in the ack) and is asked again
with the next generation. One with nodes that have not answered waits for them: a late
acceptance holds it, and is acked.

Times in Unix seconds, power in W. Not thread-safe: the coordinator's loop owns it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gridtao.wire.messages import NODE_W_MAX, dispatch_terms
from gridtao.wire.site import SettleAt, SiteCapDispatch, SiteShedDispatch

__all__ = ["NodeOrder", "SiteEvent", "fleet_event", "order_for_ack", "site_event"]

log = logging.getLogger("gridtao.site")

Phase = Literal["answering", "reaching", "held"]


@dataclass
class NodeOrder:
    """One node's part of an event: ``dispatch_id`` as the node knows it, ``node_w`` its cap
    (None for a fleet event, where the node got the aggregator's own dispatch)."""

    node: str
    dispatch_id: str
    node_w: float | None
    answer: Literal["accepted", "rejected"] | None = None
    reason: str | None = None
    commanded_at: float | None = None
    reached_at: float | None = None
    #: The node's measured IT power when it reached its band (W; its ack's
    #: ``reached_power_w``): newer than its last status for up to a status period.
    reached_power_w: float | None = None
    #: False while the order waits to be sent (the node took another cap too recently): a
    #: restarted coordinator drops it, and its next split gives that node a share again.
    sent: bool = True

    def on_ack(self, body: Mapping[str, Any]) -> None:
        """A node's ack for this order (the first one, then the one with ``reached_at``). A
        refusal that says the event stands (``in_force``), or that comes after the node
        accepted, answers another message sent with this id (a retry with other terms, junk,
        a replay), never this order: it changes nothing."""
        accepted = body.get("accepted") is True
        if not accepted and (body.get("in_force") is True or self.answer == "accepted"):
            return
        self.answer = "accepted" if accepted else "rejected"
        reason = body.get("reason")
        self.reason = reason if isinstance(reason, str) else None
        for key in ("commanded_at", "reached_at"):
            value = body.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(self, key, float(value))
        # Counted into the site's power: only a node's plausible watts (a node ack is anyone's
        # message on the broker; NaN would stop the site's status).
        power = body.get("reached_power_w")
        if isinstance(power, (int, float)) and not isinstance(power, bool) \
                and math.isfinite(power) and 0.0 <= power <= NODE_W_MAX:
            self.reached_power_w = float(power)

    def persisted(self) -> dict[str, Any]:
        """What a restarted coordinator needs of the order: its id and cap, the node's answer
        and its times (a duplicate's ack then says what was commanded and reached)."""
        body = {"id": self.dispatch_id, "node_w": self.node_w, "answer": self.answer,
                "reason": self.reason, "commanded_at": self.commanded_at,
                "reached_at": self.reached_at}
        return body if self.sent else body | {"sent": False}


@dataclass
class SiteEvent:
    """See the module docstring. ``reference_w``: the site's power at ``at`` when the event
    arrived; ``target_w``: where the site is held (None for a fleet event); ``requested_w``: the
    reduction asked, W at ``at`` (a shed's ``reduction_w``, or its ``fraction`` of
    ``reference_w``; what a cap asks below ``reference_w``, 0 when the site is already under
    it; None for a fleet event); ``draws_w``: each node's draw when the event arrived (what the
    split assumes it would draw uncapped); ``shortfall_w``: what the nodes cannot give of
    ``requested_w``, W at ``at``, as of the last split."""

    id: str
    kind: Literal["site_cap", "site_shed", "fleet"]
    at: SettleAt
    received_at: float
    until: float
    reference_w: float
    target_w: float | None
    requested_w: float | None = None
    draws_w: dict[str, float] = field(default_factory=dict)
    generation: int = 0
    orders: dict[str, NodeOrder] = field(default_factory=dict)
    phase: Phase = "answering"
    phase_since: float = 0.0
    touched: bool = True  # an answer came in since the acks due were last looked at
    #: The nodes' answers as the last site ack gave them (a late one makes an ``update``).
    acked_answers: tuple[tuple[str, str | None], ...] = ()
    shortfall_w: float = 0.0
    offline: tuple[str, ...] = ()
    #: Of ``offline``, the nodes whose stop put back every limit (status ``restored``).
    stopped: tuple[str, ...] = ()
    #: node -> dispatch ids of earlier generations still to be released there (sent when the
    #: node is online and has accepted its order of this generation, or has none: a node that
    #: refused the new split keeps holding its earlier order)
    unreleased: dict[str, list[str]] = field(default_factory=dict)
    #: What the request asked (``dispatch_terms``), kept across a restart so that a retry of
    #: it is known as one (None: a record written before it was kept, or a fleet event).
    terms: tuple[object, ...] | None = None
    #: Some node accepted an order of this event, in any generation: nodes hold it, so a later
    #: split that every node refuses does not end it.
    held: bool = False

    def order_id(self) -> str:
        """The dispatch id of this generation's orders: the event's own id first, then
        ``<id>~<generation>`` (a node refuses one id with new terms)."""
        return self.id if self.generation == 0 else f"{self.id}~{self.generation}"

    def answered(self) -> bool:
        return all(o.answer is not None for o in self.orders.values())

    def reached(self) -> bool:
        accepted = [o for o in self.orders.values() if o.answer == "accepted"]
        return bool(accepted) and all(o.reached_at is not None for o in accepted)

    def refused(self) -> bool:
        """Acked, no node ever accepted an order of it, and every node with an order refused
        it (or none had one): nothing holds the event and nothing will, so it is over (the
        module docstring)."""
        return not self.held and self.phase != "answering" and all(
            o.answer == "rejected" for o in self.orders.values())

    def releasable(self, node: str) -> bool:
        """Whether ``node``'s orders of earlier generations may end: it accepted its order of
        this generation, or has none in it."""
        order = self.orders.get(node)
        return order is None or order.answer == "accepted"

    def advance(self, wall: float, ack_deadline_s: float, *, ended: bool = False
                ) -> list[Literal["answered", "update", "reached"]]:
        """Move through the phases (module docstring) and say which site acks are now due, in
        order: ``answered`` (every node answered, the deadline passed, or ``ended``: the event
        is over), ``update`` (a node answered after the site's ack had named it missing: the
        site acks again, so an acceptance that holds the event is never left unsaid) and
        ``reached`` (every accepting node reached). Answers are looked at again only when one
        came in (``touched``), so a thousand orders are not walked every tick."""
        due: list[Literal["answered", "update", "reached"]] = []
        touched, self.touched = self.touched, False
        if self.phase == "answering" and (
                ended or wall - self.phase_since >= ack_deadline_s
                or (touched and self.answered())):
            due.append("answered")
            self.acked_answers = self._answers()
            self.phase, self.phase_since, touched = "reaching", wall, True
        elif self.phase in ("reaching", "held") and touched \
                and self._answers() != self.acked_answers:
            due.append("update")
            self.acked_answers = self._answers()
            if self.phase == "held" and not self.reached():
                self.phase, self.phase_since = "reaching", wall  # its reached ack is still owed
        if self.phase == "reaching" and touched and (self.reached() or not any(
                o.answer == "accepted" for o in self.orders.values())):
            if self.reached():
                due.append("reached")
            self.phase, self.phase_since = "held", wall
        return due

    def _answers(self) -> tuple[tuple[str, str | None], ...]:
        return tuple(sorted((o.node, o.answer) for o in self.orders.values()))

    def ack_body(self, site: str, *, measured_w: float | None,
                 hint: Callable[[str | None], str | None] = lambda reason: None
                 ) -> dict[str, Any]:
        """The site ack: the node ack's keys, then who answered what and the site's measured
        reduction (``measured_w``: the site's power at ``at`` now). ``hint``: what the site
        adds, in its reason, to a node's reason for refusing (None: nothing)."""
        orders = self.orders.values()
        accepted = sorted(o.node for o in orders if o.answer == "accepted")
        rejected = {o.node: o.reason for o in sorted(orders, key=lambda o: o.node)
                    if o.answer == "rejected"}
        missing = sorted(o.node for o in orders if o.answer is None)
        commanded = [o.commanded_at for o in orders
                     if o.answer == "accepted" and o.commanded_at is not None]
        reached = self.reached()
        reasons = []
        for n, r in rejected.items():
            extra = hint(r)
            reasons.append(f"{n} refused: {r}" + (f" ({extra})" if extra else ""))
        if missing:
            reasons.append(f"no answer from {', '.join(missing)}")
        if not self.orders:
            reasons.append("no node was online to take a share")
        holding = [n for n in rejected if n in self.unreleased]
        if holding and self.held and self.generation > 0:
            reasons.append(f"{', '.join(holding)} refused this split and hold their earlier "
                           "orders")
        # The cuts ordered of nodes that do not hold them (refused, or not answered yet): the
        # site is that far from its target however well the others do.
        unheld = {o.node: max(0.0, self.draws_w.get(o.node, o.node_w) - o.node_w)
                  for o in orders if o.answer != "accepted" and o.node_w is not None}
        if any(w > 0.5 for w in unheld.values()):
            reasons.append("cuts not held: " + ", ".join(
                f"{n} {w:.0f} W" for n, w in sorted(unheld.items()) if w > 0.5) + " (IT)")
        if self.shortfall_w > 0.5:
            reasons.append(f"the nodes can give {self.shortfall_w:.0f} W less than the "
                           f"{self.requested_w or 0.0:.0f} W asked")
        gone = [n for n in self.offline if n not in self.stopped]
        if gone:
            # The two figures part here: a node that went away may still hold its caps (a
            # killed agent's stay on its GPUs until it restarts), which the meter sees.
            reasons.append(f"offline: {', '.join(gone)}, each counted at its last draw in "
                           "the split and in shortfall_w; caps held there may still be in "
                           "force, and in the measured reduction_w")
        if self.stopped:
            reasons.append(f"stopped: {', '.join(self.stopped)}, limits put back (no cap held "
                           "there), each counted at its last draw in the split")
        if self.kind == "site_cap" and self.target_w is not None \
                and self.reference_w <= self.target_w:
            reasons.append(f"the site is already under the cap ({self.reference_w:.0f} W at "
                           f"{self.at}, cap {self.target_w:.0f} W): nothing is cut, a rise "
                           "is held")
        return {
            # An event nodes hold stands, whatever one split's answers (``held``).
            "id": self.id, "accepted": bool(accepted) or self.held,
            "reason": "; ".join(reasons) or None,
            "received_at": self.received_at,
            "commanded_at": max(commanded) if commanded else None,
            "reached_at": max(o.reached_at for o in orders if o.reached_at is not None
                              and o.answer == "accepted") if reached else None,
            "site": site, "kind": self.kind, "at": self.at, "generation": self.generation,
            "nodes": {"accepted": accepted, "rejected": rejected, "missing": missing,
                      "offline": list(self.offline)},
            "requested_w": _r(self.requested_w), "target_w": _r(self.target_w),
            "reduction_w": _r(None if measured_w is None else self.reference_w - measured_w),
            "shortfall_w": round(self.shortfall_w, 1),
            "unheld_w": round(math.fsum(unheld.values()), 1),
        }

    def persisted(self) -> dict[str, Any]:
        """What a restarted coordinator needs to take the event back unchanged."""
        return {"id": self.id, "kind": self.kind, "at": self.at, "received_at": self.received_at,
                "until": self.until, "reference_w": self.reference_w, "target_w": self.target_w,
                "requested_w": self.requested_w, "draws_w": self.draws_w,
                "generation": self.generation,
                "orders": {n: o.persisted() for n, o in self.orders.items()},
                "unreleased": self.unreleased,
                "terms": None if self.terms is None else list(self.terms)}

    @classmethod
    def restored(cls, body: Mapping[str, Any], now: float) -> SiteEvent:
        """An event from :meth:`persisted` (raises KeyError/TypeError/ValueError when the
        record is not one). Its acks were sent by the coordinator that made it: ``held``."""
        event = cls(
            id=str(body["id"]), kind=body["kind"], at=body["at"],
            received_at=float(body["received_at"]), until=float(body["until"]),
            reference_w=float(body["reference_w"]),
            target_w=None if body["target_w"] is None else float(body["target_w"]),
            requested_w=_restored_requested(body),
            draws_w={str(k): float(v) for k, v in dict(body["draws_w"]).items()},
            generation=int(body["generation"]), phase="held", phase_since=now, held=True,
            unreleased={str(n): [str(i) for i in ids]
                        for n, ids in dict(body.get("unreleased") or {}).items()},
        )
        if event.kind not in ("site_cap", "site_shed", "fleet") or event.at not in ("it",
                                                                                    "meter"):
            raise ValueError(f"not a site event: kind {event.kind!r}, at {event.at!r}")
        for node, order in dict(body["orders"]).items():
            if order.get("sent") is False:  # never reached its node: the next split sends one
                continue
            w = order["node_w"]
            # A record written before answers were kept: taken as accepted, as it was then.
            answer = order.get("answer", "accepted")
            if answer not in ("accepted", "rejected", None):
                raise ValueError(f"order of {node!r}: answer {answer!r}")
            event.orders[str(node)] = NodeOrder(
                str(node), str(order["id"]), None if w is None else float(w), answer=answer,
                reason=str(order["reason"]) if order.get("reason") is not None else None,
                commanded_at=_time_or_none(order.get("commanded_at")),
                reached_at=_time_or_none(order.get("reached_at")))
        terms = body.get("terms")
        if isinstance(terms, list) and terms:  # JSON made the pairs lists: tuples again
            event.terms = tuple(tuple(t) if isinstance(t, list) else t for t in terms)
        event.acked_answers = event._answers()  # acked by the coordinator that made it
        return event


def _time_or_none(value: object) -> float | None:
    """A time of a record (Unix s) or None; raises ValueError when it is neither."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value):
        raise ValueError(f"not a time: {value!r}")
    return float(value)


def _restored_requested(body: Mapping[str, Any]) -> float | None:
    """``requested_w`` of a record (one written before it was kept: what the target asks)."""
    if body.get("requested_w") is not None:
        return float(body["requested_w"])
    if body["target_w"] is None:
        return None
    return max(0.0, float(body["reference_w"]) - float(body["target_w"]))


def site_event(msg: SiteCapDispatch | SiteShedDispatch, *, reference_w: float, wall: float,
               draws_w: Mapping[str, float]) -> SiteEvent:
    """A new site event for ``msg``, arriving at ``wall`` when the site's power at ``msg.at``
    is ``reference_w`` and the nodes draw ``draws_w``: its target (never below 0 W) and the
    reduction it asks (``requested_w``, as asked, even beyond what the site draws)."""
    if isinstance(msg, SiteCapDispatch):
        target, requested = msg.site_w, max(0.0, reference_w - msg.site_w)
    elif msg.reduction_w is not None:
        target, requested = reference_w - msg.reduction_w, msg.reduction_w
    else:
        requested = reference_w * (msg.fraction or 0.0)
        target = reference_w - requested
    kind: Literal["site_cap", "site_shed"] = (
        "site_cap" if isinstance(msg, SiteCapDispatch) else "site_shed")
    return SiteEvent(id=msg.id, kind=kind, at=msg.at, received_at=wall,
                     until=wall + msg.duration_s, reference_w=reference_w,
                     target_w=max(0.0, target), requested_w=requested, phase_since=wall,
                     draws_w=dict(draws_w), terms=dispatch_terms(msg))


def fleet_event(body: Mapping[str, Any], wall: float, *, reference_w: float,
                nodes: Iterable[str]) -> SiteEvent:
    """The record of a dispatch the aggregator sent to every node (``body``, with a string
    ``id``), seen at ``wall``: one order per node online then, to gather their acks."""
    ident = str(body["id"])
    duration = body.get("duration_s")
    until = wall + (float(duration) if isinstance(duration, (int, float)) else 0.0)
    event = SiteEvent(id=ident, kind="fleet", at="it", received_at=wall, until=until,
                      reference_w=reference_w, target_w=None, phase_since=wall)
    for node in nodes:
        event.orders[node] = NodeOrder(node, ident, None)
    return event


def order_for_ack(events: dict[str, SiteEvent], by_dispatch: Mapping[tuple[str, str], str],
                  node: str, ident: str) -> tuple[SiteEvent, NodeOrder] | None:
    """The event and order a node's ack with id ``ident`` answers, or None: an ack for an
    order of an earlier generation, or for nothing the site knows. ``by_dispatch`` maps
    (node dispatch id, node) to the site event id. A fleet event's node acks carry its own
    id; a node that came online after the fleet event was seen gets an order on its first
    ack (added to the event)."""
    found = by_dispatch.get((ident, node))
    if found is None:
        event = events.get(ident)
        if event is None or event.kind != "fleet":
            return None
        order = event.orders.get(node)
        if order is None:
            order = event.orders[node] = NodeOrder(node, ident, None)
        return event, order
    event = events.get(found)
    order = None if event is None else event.orders.get(node)
    if event is None or order is None or order.dispatch_id != ident:
        return None
    return event, order


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
