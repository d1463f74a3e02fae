"""The site's IT power as the coordinator counts it, from the nodes' statuses and acks.

Pure functions over the site view and the events held; the coordinator calls them on its event
loop (an event's reference and measured power, the meter's feedback, the site status). Power in
W (IT), times in Unix seconds (node times as the nodes stamp them).
"""

from __future__ import annotations

from collections.abc import Iterable

from gridtao.site.events import SiteEvent
from gridtao.site.view import SiteView

__all__ = ["REACHED_SKEW_S", "node_draws_w", "reached_power_w", "site_it_w"]

#: How far ahead of the site's clock a node's ``reached_at`` may be and still be taken (s).
REACHED_SKEW_S = 5.0


def site_it_w(view: SiteView, events: Iterable[SiteEvent], wall: float) -> float:
    """The site's IT power: the sum of :func:`node_draws_w` (a node nothing is known of counts
    as 0 W)."""
    return sum(node_draws_w(view, events, wall).values())


def node_draws_w(view: SiteView, events: Iterable[SiteEvent], wall: float) -> dict[str, float]:
    """Each node's IT power as the site counts it (nodes nothing is known of left out): online
    nodes as measured, offline ones at the draw last known (an offline node may be drawing all
    it can: never counted as zero). A node measured in its band after its last status (its
    ack's ``reached_power_w``: a node reaches its band well within one status period) counts at
    that power. A new event's split starts from these, so its reference and its nodes' draws
    agree.

    An offline node whose last draw says nothing of its draw now counts at its draw before
    the events held (the largest their splits remember): one that stopped cleanly put its
    limits back, so its last draw under a cap is gone; one whose draw the site never heard
    (a restarted coordinator reads only an offline status) at most at the lowest cap it
    accepted, which stays on its GPUs while its agent is away."""
    events = list(events)
    reached = reached_power_w(events)
    out: dict[str, float] = {}
    for v in view.nodes.values():
        if not view.is_online(v.node, wall) and (v.stopped_clean or v.draw_w is None):
            before = _draw_before(v.node, events, held=not v.stopped_clean)
            if before is not None:
                out[v.node] = max(before, v.draw_w or 0.0) if v.stopped_clean else before
                continue
        newer = reached.get(v.node)
        # Newer than its status, and not from the future (a stamp beyond the site's clock
        # and the nodes' skew would pin the node at that power for the whole event).
        if newer is not None and (v.t is None or newer[0] > v.t) \
                and newer[0] <= wall + REACHED_SKEW_S:
            out[v.node] = newer[1]
        elif v.draw_w is not None:
            out[v.node] = v.draw_w
    return out


def reached_power_w(events: Iterable[SiteEvent]) -> dict[str, tuple[float, float]]:
    """Per node, the latest ``(reached_at, reached_power_w)`` of its accepted orders in the
    events held (node time, W)."""
    out: dict[str, tuple[float, float]] = {}
    for event in events:
        for o in event.orders.values():
            if o.answer != "accepted" or o.reached_at is None or o.reached_power_w is None:
                continue
            seen = out.get(o.node)
            if seen is None or o.reached_at > seen[0]:
                out[o.node] = (o.reached_at, o.reached_power_w)
    return out


def _draw_before(node: str, events: list[SiteEvent], *, held: bool) -> float | None:
    """``node``'s draw before the events held (W), None when none remembers it; ``held``: at
    most the lowest cap the node accepted of them (its caps still on its GPUs)."""
    draws = [e.draws_w[node] for e in events if node in e.draws_w]
    if not draws:
        return None
    before = max(draws)
    if held:
        caps = [o.node_w for e in events for o in e.orders.values()
                if o.node == node and o.answer == "accepted" and o.node_w is not None]
        before = min([before, *caps])
    return before
