"""From a site event to node orders: who takes part, and each node's cap. Pure functions.

The coordinator calls :func:`plan_caps` when an event arrives and at every rebalance, and
sends what it returns; this module decides, it sends nothing. Power in W (IT), times in Unix s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gridtao.site.events import NodeOrder, SiteEvent
from gridtao.site.split import NodeShare, split_budget
from gridtao.site.view import SiteView

__all__ = ["end_orders", "issue_orders", "plan_caps", "release_body", "shares"]


def shares(event: SiteEvent, view: SiteView, wall: float) -> list[NodeShare]:
    """Every node the event counts: its draw when the event arrived (a node that joined since:
    its draw now, remembered in ``event.draws_w``), its floor, and whether it can take a cap
    (online and hearing orders, no GPU fault, a floor known). Nodes never seen drawing are
    left out."""
    out = []
    for node, node_view in sorted(view.nodes.items()):
        online = view.is_online(node, wall)
        draw = event.draws_w.get(node)
        if draw is None:
            if not online or node_view.draw_w is None:
                continue
            draw = event.draws_w[node] = node_view.draw_w  # joined mid-event: as it is now
        able = (online and node_view.hears_orders and not node_view.faults
                and node_view.floor_w is not None)
        out.append(NodeShare(node, draw, node_view.floor_w or draw, able))
    return out


def plan_caps(event: SiteEvent, view: SiteView, budget_w: float, wall: float, *,
              at_w: Callable[[float], float], margin: float, rebalance_min_w: float,
              first: bool) -> dict[str, float] | None:
    """Each taking-part node's cap for ``budget_w`` of site IT power, or None when this is a
    rebalance (not ``first``) and no node's share moved by more than ``rebalance_min_w`` nor
    any node came or went. Sets the event's ``offline`` and ``shortfall_w``: what the nodes
    cannot give of the reduction asked (``event.requested_w``, W at ``event.at``) once every
    node holds its cap; ``at_w`` turns the site's IT power into its power at ``event.at``."""
    counted = shares(event, view, wall)
    split = split_budget(budget_w, counted, margin=margin)
    after_w = at_w(sum(s.draw_w for s in counted) - split.cut_w)
    given_w = event.reference_w - after_w
    event.shortfall_w = max(0.0, (event.requested_w or 0.0) - given_w)
    event.offline = tuple(s.node for s in counted if not view.is_online(s.node, wall))
    event.stopped = tuple(n for n in event.offline
                          if n in view.nodes and view.nodes[n].stopped_clean)
    if not first:
        changed = set(event.orders) ^ set(split.caps_w) or any(
            abs((event.orders[n].node_w or 0.0) - w) > rebalance_min_w
            for n, w in split.caps_w.items())
        if not changed:
            return None
    return {node: round(cap, 1) for node, cap in sorted(split.caps_w.items())}


def issue_orders(event: SiteEvent, caps: dict[str, float], wall: float, *, first: bool,
                 min_order_s: float) -> list[tuple[str, dict[str, Any]]]:
    """Make ``caps`` the event's orders (a new generation unless ``first``): each node's
    ``cap`` body to send, for the whole seconds left of the event (at least ``min_order_s``).
    The orders they replace are queued in ``event.unreleased``; the event goes back to
    ``answering``."""
    if not first:
        event.generation += 1
    old = event.orders
    event.orders = {}
    remaining = max(min_order_s, round(event.until - wall))
    ident = event.order_id()
    bodies = []
    for node, cap in caps.items():
        event.orders[node] = NodeOrder(node, ident, cap)
        bodies.append((node, {"id": ident, "kind": "cap", "node_w": cap,
                              "duration_s": remaining}))
    for node, order in old.items():  # ended once the new caps are in force
        if order.answer != "rejected":  # a refused order holds nothing at its node
            event.unreleased.setdefault(node, []).append(order.dispatch_id)
    event.phase, event.phase_since, event.touched = "answering", wall, True
    return bodies


def end_orders(event: SiteEvent, *, orders: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """The releases that end ``event`` at its nodes: every order of this generation that a
    node did not refuse (a refused order holds nothing there; ``orders`` False: none, as when
    every node refused its order) and every earlier one not yet released. Empties
    ``event.unreleased``."""
    out = [(node, release_body(order.dispatch_id))
           for node, order in (event.orders.items() if orders else ())
           if order.answer != "rejected"]
    out += [(node, release_body(ident)) for node, idents in event.unreleased.items()
            for ident in idents]
    event.unreleased = {}
    return out


def release_body(ident: str) -> dict[str, Any]:
    """The node dispatch that ends order ``ident`` (its own id: ``<ident>.end``)."""
    return {"id": f"{ident}.end", "kind": "release", "ref": ident}
