"""The capacity awarded for the current market time unit, split again by the nodes' live room.

An award is split at first by the nodes' offers (:func:`gridtao.site.market.split_award`),
planned from forecasts made a day ahead. Frequency products fire on each node by itself, so what
the site delivers in an activation is what each node has armed and can cut at that moment: a
node whose draw has fallen to its floor would fall short while another has room to spare, and
a site that bid the pooled capacity (``pooling_correlation`` < 1) relies on the room of the
whole site, not of each node. Every ``site.market.resplit_s``, :class:`LiveSplit` shares each
product's capacity awarded for the current MTU again, in proportion to each online node's live
room (the ``deliverable_w`` its status reports, else its draw above its floor; 0 for a node
offline or with a faulted GPU), each node at most what it may be awarded. When some node's
share moved by more than ``site.rebalance_min_w``, every node whose share changed at all is
sent a signed award for that MTU alone, issued now, so it wins over the earlier split on the
node (the award rules: the later issued wins), and the shares sent still sum to the award.

It holds still while any node is in an event: a capped draw says nothing of the node's room,
and a node does not take a new capacity during an activation anyway.

Threads: the coordinator's event loop only. Times in Unix seconds; power in W at the
settlement point.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gridtao.config.site import SiteConfig
from gridtao.site.market import SitePlan
from gridtao.site.pooling import proportional_fill
from gridtao.site.sending import Publish, Sign
from gridtao.site.view import NodeView, SiteView
from gridtao.wire.awards import Award
from gridtao.wire.messages import ID_MAX_CHARS
from gridtao.wire.site import SiteTopics

__all__ = ["LiveSplit", "live_room_w"]

log = logging.getLogger("gridtao.site")

_SUFFIX_CHARS = 13  # "~" and the issue time in ms, hex: unique across restarts


def live_room_w(view: NodeView) -> float:
    """What a node could cut now, W at the settlement point where it says (``deliverable_w``),
    else its IT draw above its floor; 0 with a faulted GPU."""
    if view.faults:
        return 0.0
    if view.deliverable_w is not None:
        return max(0.0, view.deliverable_w)
    return view.headroom_w()


@dataclass(frozen=True)
class _Held:
    award: Award
    order: tuple[float, int]  # issued (else received), then arrival: the later wins


class LiveSplit:
    """See the module docstring. ``count``: the coordinator's counters."""

    def __init__(self, cfg: SiteConfig, view: SiteView, *, topics: SiteTopics,
                 publish: Publish, sign: Sign, count: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.view = view
        self.topics = topics
        self._publish = publish
        self._sign = sign
        self._count = count
        self._awards: list[_Held] = []
        #: (MTU start, product) -> node -> the share it was last sent, W
        self._sent: dict[tuple[int, str], dict[str, float]] = {}
        self._next = 0.0
        self._received = 0
        self._short = False  # the last in_force found the room short
        #: An award came since the site's retained record was last written.
        self.record_stale = False

    def on_award(self, award: Award, shares: Mapping[str, Mapping[str, list[float | None]]],
                 wall: float) -> None:
        """An award the site split (``shares``: what each node was sent)."""
        self._received += 1
        order = (award.issued_at if award.issued_at is not None else wall, self._received)
        self._awards = [h for h in self._awards if h.award.end_s > wall - award.mtu_s]
        self._awards.append(_Held(award, order))
        for node, products in shares.items():
            for product, row in products.items():
                for k, w in enumerate(row):
                    if w is not None:
                        mtu = award.start_s + k * award.mtu_s
                        self._sent.setdefault((mtu, product), {})[node] = w
        self._sent = {key: v for key, v in self._sent.items() if key[0] > wall - 2 * award.mtu_s}
        self.record_stale = True

    @property
    def awards(self) -> list[Award]:
        """The site awards held, oldest issued first (for the retained record)."""
        return [h.award for h in sorted(self._awards, key=lambda h: h.order)]

    def restore(self, awards: Sequence[Award], wall: float) -> None:
        """Awards taken back from the site's retained record by a restarted coordinator (none
        are held yet); what each node was last sent is not known, so the first split sends
        every node its share."""
        if self._awards:
            return
        for award in awards:
            self._received += 1
            issued = award.issued_at if award.issued_at is not None else wall
            self._awards.append(_Held(award, (issued, self._received)))
        if awards:
            log.info("site awards taken back from the retained record: %s",
                     ", ".join(a.id for a in awards))

    def awarded_at(self, wall: float) -> tuple[int, int, dict[str, float], str] | None:
        """The site's award in force now: (MTU start, MTU length, W per product, the id of the
        latest award that set one); None outside every award."""
        found: dict[str, tuple[tuple[float, int], float]] = {}
        last: tuple[tuple[float, int], Award] | None = None
        for held in self._awards:
            for product, w in held.award.at(wall).items():
                if product not in found or held.order > found[product][0]:
                    found[product] = (held.order, w)
                    if last is None or held.order > last[0]:
                        last = (held.order, held.award)
        if last is None:
            return None
        award = last[1]
        start = award.start_s + math.floor((wall - award.start_s) / award.mtu_s) * award.mtu_s
        return start, award.mtu_s, {p: w for p, (_, w) in found.items()}, award.id

    def in_force(self, wall: float, plan: SitePlan | None) -> dict[str, Any] | None:
        """The award in force now for the site's status (None outside every award):
        ``capacity_w`` per product, ``room_w`` the online nodes' live room summed (None while a
        node is in an event: its capped draw says nothing of it) and ``short_w`` how much of
        the awarded capacity the nodes cannot deliver now: all products stacked against that
        room, or a product's award above what its online nodes may be awarded (``plan``),
        whichever is more. Says in the log when a shortfall begins and when it ends."""
        now = self.awarded_at(wall)
        if now is None:
            self._short = False
            return None
        start, mtu_s, awarded, _ = now
        online = self.view.online(wall)
        room = None if any(v.event for v in online) else sum(live_room_w(v) for v in online)
        total = sum(awarded.values())
        unplaceable = 0.0
        if plan is not None and plan.mtu_s == mtu_s:
            j = (start - plan.start_s) // plan.mtu_s
            for product, w in awarded.items():
                most = sum(plan.most_w(v.node, product, j) for v in online
                           if product in plan.by_node.get(v.node, {}))
                unplaceable += max(0.0, w - most)
        short = None if room is None else max(total - room, unplaceable, 0.0)
        if short is not None and (short > 0.0) != self._short:
            self._short = short > 0.0
            if self._short:
                log.warning("the nodes' live room (%.0f W) is short of the %.0f W awarded for "
                            "this market time unit by %.0f W: an activation now would fall "
                            "short", room, total, short)
            else:
                log.info("the nodes' live room covers the %.0f W awarded again", total)
        return {"start": start, "capacity_w": {p: round(w, 1) for p, w in awarded.items()},
                "room_w": None if room is None else round(room, 1),
                "short_w": None if short is None else round(short, 1)}

    def tick(self, wall: float, plan: SitePlan | None) -> None:
        """Split again if it is time (module docstring)."""
        every = self.cfg.market.resplit_s
        if every <= 0.0 or wall < self._next:
            return
        self._next = wall + every
        now = self.awarded_at(wall)
        if plan is None or now is None or plan.mtu_s != now[1]:
            return
        start, mtu_s, awarded, award_id = now
        online = {v.node: v for v in self.view.online(wall)}
        if any(v.event for v in online.values()):
            self._count("site_resplit_held")
            return
        j = (start - plan.start_s) // plan.mtu_s
        moved: dict[str, dict[str, float]] = {}
        far = False  # some node's share moved by more than rebalance_min_w
        for product, total in sorted(awarded.items()):
            enrolled = [n for n, rows in plan.by_node.items() if product in rows]
            rooms = {n: live_room_w(online[n]) if n in online else 0.0 for n in enrolled}
            if not enrolled or sum(rooms.values()) <= 0.0:
                continue
            caps = {n: plan.most_w(n, product, j) for n in enrolled}
            shares = proportional_fill(total, rooms, caps)
            sent = self._sent.setdefault((start, product), {})
            for node, share in shares.items():
                w = float(math.floor(share))
                if w != sent.get(node, 0.0):
                    moved.setdefault(node, {})[product] = w
                    far = far or abs(w - sent.get(node, 0.0)) > self.cfg.rebalance_min_w
        if not far:
            return  # small moves wait for a large one: then every share moves, summing right
        for node, changed in sorted(moved.items()):
            products = {p: self._sent.get((start, p), {}).get(node) for p in awarded}
            capacity = {p: [w] for p, w in products.items() if w is not None} | {
                p: [w] for p, w in changed.items()}
            ident = f"{award_id[:ID_MAX_CHARS - _SUFFIX_CHARS]}~{round(wall * 1000):x}"
            body = {"id": ident, "node": node, "issued_at": wall, "start": start,
                    "mtu_s": mtu_s, "capacity_w": capacity}
            self._publish(self.topics.node(node, "award"), self._sign(body), 1, False)
            for p, (w,) in capacity.items():
                self._sent.setdefault((start, p), {})[node] = w
        if moved:
            self._count("site_award_resplits")
            log.info("awarded capacity split again by the nodes' live room: %s",
                     "; ".join(f"{n} " + ", ".join(f"{p} {w:g} W" for p, w in c.items())
                               for n, c in sorted(moved.items())))
