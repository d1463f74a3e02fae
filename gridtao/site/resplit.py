"""The capacity awarded for the current market time unit, moved to where the room is.

An award is split at first by the nodes' offers (:func:`gridtao.site.market.split_award`),
planned from forecasts made a day ahead. Frequency products fire on each node by itself, so what
the site delivers in an activation is what each node has armed and can cut at that moment: a
node whose draw has fallen to its floor would fall short while another has room to spare, and
a site that bid the pooled capacity (``pooling_correlation`` < 1) relies on the room of the
whole site, not of each node. Every ``site.market.resplit_s``, :class:`LiveSplit` looks at each
node's live room (the ``deliverable_w`` its status reports, else its draw above its floor; 0 for
a node offline or with a faulted GPU) against the shares it holds, all products stacked. Only a
node short by more than ``site.rebalance_min_w``, or holding more than it may now be awarded,
gives up the excess, which goes to nodes with room to spare
(:func:`gridtao.site.pooling.cover_deficits`): shares move as little as needed, so noise in
the draws sends nothing. Each node whose share changed is sent a signed award for that MTU
alone, issued after every award the site sent before, so it wins on the node (the award rules:
the later issued wins). A node in an event keeps its shares and takes none (its capped draw
says nothing of its room; a node takes no new capacity mid-activation anyway). A node that
refuses an award the site sent it (an ack of one of the ids the site sent that node, for the
entries no later award sent it again) holds none of what that award said: the status counts
those shares short until the node accepts a later award for them (a bound: a node that refused
a re-split may still hold what an earlier award gave it). The next pass moves them: the node
may take nothing more of that product in the MTUs the award covered (its cap there is 0, so
its share goes to nodes with room, and it is sent a share of 0), until it accepts a later
award that gives it some, publishes a new plan or comes back online, or a new market award
is split for those MTUs.

The site resolves its own awards as a node does: where two cover a product in an MTU, the one
issued later wins (:meth:`LiveSplit.effective` masks what an older one says there), and every
node award the site sends is issued after the last one it sent, so what the site sends last is
what the nodes hold.

Threads: the coordinator's event loop only. Times in Unix seconds; power in W at the
settlement point.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gridtao.config.site import SiteConfig
from gridtao.site.awardacks import AwardAcks
from gridtao.site.market import SitePlan, split_award
from gridtao.site.pooling import cover_deficits, proportional_fill, whole_watts
from gridtao.site.sending import Publish, Sign
from gridtao.site.view import NodeView, SiteView
from gridtao.wire.awards import AWARD_MAX_MTUS, Award
from gridtao.wire.messages import ID_MAX_CHARS, NODE_W_MAX
from gridtao.wire.site import SiteTopics

__all__ = ["LiveSplit", "live_room_w"]

log = logging.getLogger("gridtao.site")

_SUFFIX_CHARS = 13  # "~" and the issue time in ms, hex: unique across restarts
_AFTER_S = 0.001  # a node award is issued at least this long after the site's last one


def live_room_w(view: NodeView) -> float:
    """What a node could cut now, W at the settlement point where it says (``deliverable_w``),
    else its IT draw above its floor; 0 with a faulted GPU."""
    if view.faults:
        return 0.0
    room = view.deliverable_w if view.deliverable_w is not None else view.headroom_w()
    return min(max(0.0, room), NODE_W_MAX)  # a node's own bound: odd reports stay finite


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
        self._last_issued = -math.inf  # of the node awards the site sent
        self._short = False  # the last in_force found the room short
        self._next_after_restore = -math.inf
        self._rebuild_at = math.inf  # after a restart: when the books are rebuilt (restore)
        #: An award came since the site's retained record was last written.
        self.record_stale = False
        #: What each node was sent of the site's awards, and what it refused.
        self.acks = AwardAcks()

    def _order(self, award: Award, wall: float) -> tuple[float, int]:
        self._received += 1
        return (award.issued_at if award.issued_at is not None else wall, self._received)

    def effective(self, award: Award, wall: float) -> Award:
        """``award`` less what awards held and issued later say (those entries None)."""
        order = (award.issued_at if award.issued_at is not None else wall, self._received + 1)
        later = [h.award for h in self._awards if h.order > order]
        if not later:
            return award
        masked: dict[str, tuple[float | None, ...]] = {}
        for product, series in award.capacity_w.items():
            row: list[float | None] = list(series)
            for k in range(len(row)):
                t = award.start_s + k * award.mtu_s
                if any(product in a.at(t) for a in later):
                    row[k] = None
            masked[product] = tuple(row)
        return dataclasses.replace(award, capacity_w=masked)

    def issue_time(self, wall: float) -> float:
        """When a node award the site sends now is issued: ``wall`` (the site's clock, not the
        market's: the nodes judge its freshness), or just after the last one it sent,
        whichever is later (so the last sent wins on the node; the site resolves the market's
        order itself, :meth:`effective`)."""
        issued = max(wall, self._last_issued + _AFTER_S)
        self._last_issued = issued
        return issued

    def on_award(self, award: Award, shares: Mapping[str, Mapping[str, list[float | None]]],
                 wall: float) -> None:
        """An award the site split (``shares``: what each node was sent; None where the
        award, or a later one, says nothing)."""
        self._awards = [h for h in self._awards if h.award.end_s > wall - award.mtu_s]
        self._awards.append(_Held(award, self._order(award, wall)))
        for key in self._book(award, shares):  # a new split: every node may be offered again
            self.acks.reoffer(key)
        self._sent = {key: v for key, v in self._sent.items() if key[0] > wall - 2 * award.mtu_s}
        self.record_stale = True

    def _book(self, award: Award, shares: Mapping[str, Mapping[str, list[float | None]]]
              ) -> set[tuple[int, str]]:
        """The books of the MTUs ``award`` says something of, set to ``shares``: set whole,
        so a node that held a share of one before and has none in ``shares`` drops. Returns
        the (MTU start, product) entries booked."""
        fresh: dict[tuple[int, str], dict[str, float]] = {}
        for node, products in shares.items():
            for product, row in products.items():
                for k, w in enumerate(row):
                    if w is not None:
                        mtu = award.start_s + k * award.mtu_s
                        fresh.setdefault((mtu, product), {})[node] = w
        self._sent.update(fresh)
        return set(fresh)

    @property
    def awards(self) -> list[Award]:
        """The site awards held, oldest issued first (for the retained record)."""
        return [h.award for h in sorted(self._awards, key=lambda h: h.order)]

    def restore(self, awards: Sequence[Award], wall: float, *, hold_until: float) -> None:
        """Awards taken back from the site's retained record by a restarted coordinator (none
        are held yet). What each node was last sent is not known: not before ``hold_until``
        (every node seen again: a split from half a view would move shares that need not
        move), :meth:`tick` splits them again as they came (by offer, on the plan then) and
        sends every online node its shares of every MTU not over, so the nodes and the books
        agree; the moves to where the room is follow."""
        if self._awards:
            return
        for award in awards:
            self._awards.append(_Held(award, self._order(award, wall)))
        if awards:
            self._next = max(self._next, hold_until)
            self._next_after_restore = hold_until  # no shortfall said from half a view
            self._rebuild_at = hold_until
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

    def _rooms(self, wall: float, nodes: Sequence[str]) -> dict[str, float]:
        """Each node's live room; nodes in an event are left out (module docstring)."""
        online = {v.node: v for v in self.view.online(wall)}
        return {n: live_room_w(online[n]) if n in online else 0.0 for n in nodes
                if n not in online or not online[n].event}

    def in_force(self, wall: float, plan: SitePlan | None) -> dict[str, Any] | None:
        """The award in force now for the site's status (None outside every award):
        ``capacity_w`` per product, ``room_w`` the online nodes' live room summed (a node in
        an event counted at the shares it holds) and ``short_w`` how much of the awarded
        capacity the nodes cannot deliver now: what is not placed on any node, plus what each
        node holds beyond its room. Says in the log when a shortfall above
        ``site.rebalance_min_w`` begins and when it ends."""
        now = self.awarded_at(wall)
        if now is None:
            self._short = False
            return None
        start, mtu_s, awarded, _ = now
        online = self.view.online(wall)
        held: dict[str, float] = {}
        for p in awarded:
            refused = self.acks.not_held(start, p)
            for n, w in self._sent.get((start, p), {}).items():
                if n not in refused:  # a refused share is held by no node: short
                    held[n] = held.get(n, 0.0) + w
        rooms = self._rooms(wall, sorted({v.node for v in online} | set(held)))  # offline: 0
        room = sum(rooms.values()) + sum(w for n, w in held.items()
                                         if n not in rooms and self.view.is_online(n, wall))
        total = sum(awarded.values())
        if all((start, p) in self._sent for p in awarded):
            unplaced = total - sum(held.values())
            over = sum(max(0.0, w - rooms.get(n, w)) for n, w in held.items())
            short = max(0.0, unplaced) + over
        else:  # shares not known (after a restart, before the first pass): the rough view
            short = max(0.0, total - room)
            if plan is not None and plan.mtu_s == mtu_s:
                j = (start - plan.start_s) // plan.mtu_s
                short = max(short, sum(max(0.0, w - sum(
                    plan.most_w(v.node, p, j) for v in online
                    if p in plan.by_node.get(v.node, {}))) for p, w in awarded.items()))
        if wall >= self._next_after_restore and (short > self.cfg.rebalance_min_w) != self._short:
            self._short = short > self.cfg.rebalance_min_w
            if self._short:
                log.warning("the nodes cannot deliver %.0f W of the %.0f W awarded for this "
                            "market time unit (live room %.0f W): an activation now would "
                            "fall short", short, total, room)
            else:
                log.info("the nodes' live room covers the %.0f W awarded again", total)
        return {"start": start, "capacity_w": {p: round(w, 1) for p, w in awarded.items()},
                "room_w": round(room, 1), "short_w": round(short, 1)}

    def _positions(self, start: int, awarded: Mapping[str, float], plan: SitePlan,
                   wall: float) -> tuple[dict[str, dict[str, float]], dict[str, float],
                                         dict[str, dict[str, float]], set[str]]:
        """The current MTU as :func:`cover_deficits` takes it: shares per product of the nodes
        enrolled in it (a product whose shares are not known, after a restart, shared as an
        award in an MTU no node offered is: by what each may be awarded), live rooms (nodes in
        an event, or holding a share of a product their plan no longer lists, left out: they
        can be sent nothing of it), caps (where the plan says them; 0 for a node that refused
        its share), and the products whose shares were not known."""
        j = (start - plan.start_s) // plan.mtu_s
        enrolled = {p: [n for n, rows in plan.by_node.items() if p in rows] for p in awarded}
        shares: dict[str, dict[str, float]] = {}
        unknown: set[str] = set()
        stuck: set[str] = set()
        for p, total in awarded.items():
            held = self._sent.get((start, p))
            if held is None:
                most = {n: plan.most_w(n, p, j) for n in enrolled[p]}
                if sum(most.values()) <= 0.0:
                    continue  # nothing says what the nodes may take: they keep what they hold
                unknown.add(p)
                held = proportional_fill(total, most, most)
            stuck |= {n for n, w in held.items() if w > 0 and n not in enrolled[p]}
            shares[p] = {n: w for n, w in held.items() if n in enrolled[p]}
        nodes = sorted({n for ns in enrolled.values() for n in ns} - stuck)
        rooms = self._rooms(wall, nodes)
        caps = {p: {n: plan.most_w(n, p, j) for n in enrolled[p]
                    if p in plan.caps_w.get(n, {}) and n not in stuck} for p in awarded}
        for p in awarded:  # a node that refused its share takes none: it moves off
            for n in self.acks.refused(start, p) & set(enrolled[p]) - stuck:
                caps[p][n] = 0.0
        return shares, rooms, caps, unknown

    def _rebuild(self, wall: float, plan: SitePlan) -> None:
        """After a restart: the books rebuilt from the awards held, oldest issued first (each
        sets its MTUs whole, as when it came), and every online node sent its shares."""
        self._rebuild_at = math.inf
        for held in sorted(self._awards, key=lambda h: h.order):
            if held.award.mtu_s != plan.mtu_s or held.award.end_s <= wall:
                continue
            self._book(held.award, split_award(held.award, plan).shares)
        for node in sorted({n for s in self._sent.values() for n in s}):
            if self.view.is_online(node, wall):
                self.resend(node, wall, plan, why="the coordinator restarted")

    def tick(self, wall: float, plan: SitePlan | None) -> None:
        """Move shares if it is time and some node needs it (module docstring)."""
        if plan is not None and wall >= self._rebuild_at:
            self._rebuild(wall, plan)
        every = self.cfg.market.resplit_s
        if every <= 0.0 or wall < self._next:
            return
        self._next = wall + every
        now = self.awarded_at(wall)
        if plan is None or now is None or plan.mtu_s != now[1]:
            return
        start, mtu_s, awarded, award_id = now
        shares, rooms, caps, unknown = self._positions(start, awarded, plan, wall)
        moved, _ = cover_deficits(shares, rooms, caps, min_move_w=self.cfg.rebalance_min_w)
        whole = {p: whole_watts(s, caps.get(p, {})) for p, s in moved.items()}
        self._send(start, mtu_s, award_id, whole, wall, first=unknown)

    def resend(self, node: str, wall: float, plan: SitePlan | None, *,
               why: str = "it is back") -> None:
        """``node`` came back online (a restarted agent holds no award), or the coordinator
        restarted (``why``): its shares of every MTU not over, of the products its plan lists,
        in one award issued now."""
        listed = set(plan.by_node.get(node, {})) if plan is not None else set()
        mtu_s = self._awards[-1].award.mtu_s if self._awards else 0
        held = {(mtu, p): s[node] for (mtu, p), s in self._sent.items()
                if node in s and p in listed and mtu + mtu_s > wall}
        if not held or not mtu_s:
            return
        first = min(m for m, _ in held)
        count = min(AWARD_MAX_MTUS, (max(m for m, _ in held) - first) // mtu_s + 1)
        rows = {p: [held.get((first + k * mtu_s, p)) for k in range(count)]
                for p in sorted({p for _, p in held})}
        issued = self.issue_time(wall)
        body = {"id": f"{self.cfg.id[:ID_MAX_CHARS - _SUFFIX_CHARS - 7]}-resent~"
                      f"{round(issued * 1000):x}",
                "node": node, "issued_at": issued, "start": first, "mtu_s": mtu_s,
                "capacity_w": rows}
        self._publish(self.topics.node(node, "award"), self._sign(body), 1, False)
        self.acks.sent(node, body, wall)
        self._count("site_awards_resent")
        log.info("node %s: its shares of the awards not over sent again, %s (%d MTUs)",
                 node, why, count)

    def _send(self, start: int, mtu_s: int, award_id: str,
              shares: Mapping[str, Mapping[str, float]], wall: float, *,
              first: set[str]) -> None:
        changed: dict[str, dict[str, float]] = {}
        for p, s in shares.items():
            sent = self._sent.setdefault((start, p), {})
            for node, w in s.items():
                if p in first or w != sent.get(node):
                    changed.setdefault(node, {})[p] = w
        if not changed:
            return
        issued = self.issue_time(wall)
        ident = f"{award_id[:ID_MAX_CHARS - _SUFFIX_CHARS]}~{round(issued * 1000):x}"
        for node, moved in sorted(changed.items()):
            body = {"id": ident, "node": node, "issued_at": issued, "start": start,
                    "mtu_s": mtu_s, "capacity_w": {p: [w] for p, w in sorted(moved.items())}}
            if self.view.is_online(node, wall):  # one offline gets them when back (resend)
                self._publish(self.topics.node(node, "award"), self._sign(body), 1, False)
                self.acks.sent(node, body, wall)
            for p, w in moved.items():
                self._sent[(start, p)][node] = w
        self._count("site_award_resplits")
        log.info("awarded capacity moved to where the room is: %s",
                 "; ".join(f"{n} " + ", ".join(f"{p} {w:g} W" for p, w in c.items())
                           for n, c in sorted(changed.items())))
