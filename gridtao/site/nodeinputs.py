"""What the nodes publish, taken into the site coordinator's books (docs/site.md).

Each node's retained status, tier 2 state and plan, and its acks to what the site sent it (cap
orders, award shares). A node's message is never an order to the site: it moves the site's view
of the node, the answers recorded on the site's events, and which award shares the node holds.

Threads: the coordinator's event loop only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from gridtao.clock import Clock
from gridtao.site.bidding import SiteBidding
from gridtao.site.events import SiteEvent, order_for_ack
from gridtao.site.refusals import OrderAuth
from gridtao.site.sending import OrderSender
from gridtao.site.view import SiteView
from gridtao.wire.messages import MessageRejected, decode_object

__all__ = ["MAX_PAYLOAD_BYTES", "NodeInputs", "decode"]

log = logging.getLogger("gridtao.site")

#: The largest message the site reads from a node, the aggregator or the meter (its own
#: retained events record has a limit of its own: ``records.MAX_RECORD_BYTES``).
MAX_PAYLOAD_BYTES: Final = 65_536


def decode(payload: bytes) -> dict[str, Any] | None:
    """A JSON object as the nodes decode one (size, duplicate keys, no NaN or infinity), or
    None."""
    try:
        return decode_object(payload, max_bytes=MAX_PAYLOAD_BYTES)
    except MessageRejected:
        return None


class NodeInputs:
    """The nodes' messages (``{prefix}/node/{node}/{leaf}``) into the site's view, events and
    award books. ``reported``: the nodes whose status has come since start."""

    def __init__(self, *, view: SiteView, events: dict[str, SiteEvent], sender: OrderSender,
                 bidding: SiteBidding, order_auth: OrderAuth, clock: Clock,
                 count: Callable[[str], None]) -> None:
        self.view = view
        self.events = events
        self.sender = sender
        self.bidding = bidding
        self.order_auth = order_auth
        self.clock = clock
        self._count = count
        self.reported: set[str] = set()

    def on_message(self, node: str, leaf: str, payload: bytes) -> None:
        """One message of ``node`` on its ``leaf`` topic (status, tracker, plan, ack)."""
        body = decode(payload)
        if body is None:
            self._count(f"node_{leaf}_malformed")
            return
        if leaf == "status":
            seen = self.view.nodes.get(node)
            came_back = seen is not None and seen.t is not None and not seen.online
            self.reported.add(node)
            self.view.on_status(node, body)
            self.order_auth.on_status(node, body.get("auth"))
            if came_back and self.view.nodes[node].online:  # a restarted agent holds no award
                self.bidding.live.acks.forget(node)
                self.bidding.live.resend(node, self.clock.wall(), self.bidding.plan)
        elif leaf == "tracker":
            self.view.on_tracker(node, body)
        elif leaf == "plan":
            self.view.on_plan(node, body)
            self.bidding.live.acks.forget(node)  # what it refused, it may take now
            self.bidding.on_node_plan()
        elif leaf == "ack":
            self._on_ack(node, body)

    def _on_ack(self, node: str, body: Mapping[str, Any]) -> None:
        ident = body.get("id")
        if body.get("kind") == "award":  # its id may be null: an award it could not read
            accepted = body.get("accepted")
            if not isinstance(accepted, bool):
                return  # not an ack the contract knows
            ours = self.bidding.live.acks.on_ack(node, ident, accepted)
            if not accepted:
                self._count("node_award_refused")
                log.warning("node %s refused its award %s: %s%s", node, ident,
                            body.get("reason"), "; what it was sent in it is counted short"
                            if ours else " (not matched to an award this site sent it)")
            return
        if not isinstance(ident, str):
            return
        found = order_for_ack(self.events, self.sender.by_dispatch, node, ident)
        if found is None:
            return
        event, order = found
        order.on_ack(body)
        event.touched = True
        if event.kind != "fleet":  # the retained record keeps answers and times
            self.sender.record_stale = True
        event.held = event.held or order.answer == "accepted"
        if order.answer == "rejected" and event.kind != "fleet":
            self.order_auth.on_refusal(node, order.reason)
