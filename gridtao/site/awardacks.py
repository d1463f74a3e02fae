"""What each node was sent of the site's awards, and what it refused: the books the live split
(:mod:`gridtao.site.resplit`) keeps of the award acks.

Every node award the site sends is noted (:meth:`AwardAcks.sent`) by id, with its entries
(MTU start, product, W). A node's ack of one of those ids judges the entries no later award
sent it again: refused, the node holds none of them (:meth:`AwardAcks.not_held`, counted short)
and is marked as refusing the product in those MTUs (:meth:`AwardAcks.refused`: the live split
offers it none); accepted, it holds them, and a share above 0 lifts the mark (a share of 0 it
accepts does not: a node that will not take a product is not offered it again). The marks also
lift when the node publishes a new plan or comes back (:meth:`AwardAcks.forget`) and when a new
market award is split for the MTU and gives its shares anew (:meth:`AwardAcks.reoffer`; an
older-issued award that arrives late gives none where a later one holds, so it lifts none).
What is over is pruned by each entry's own MTU end, when an award is sent, at most once a
minute.

Threads: the coordinator's event loop only. Times in Unix seconds; power in W at the
settlement point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["AwardAcks"]

_PRUNE_S = 60.0  # how often what is over is pruned, s

Entry = tuple[int, str]  # (MTU start, product)


class AwardAcks:
    """See the module docstring."""

    def __init__(self) -> None:
        #: (node, award id) -> the (MTU start, product, W) entries the site sent that node in it
        self._ids: dict[tuple[str, str], tuple[tuple[int, str, float], ...]] = {}
        #: (node, MTU start, product) -> the id of the last award that sent the node that entry
        self._latest: dict[tuple[str, int, str], str] = {}
        #: entry -> the nodes that refused what the site sent them for it
        self._not_held: dict[Entry, set[str]] = {}
        #: entry -> the nodes marked as refusing it (module docstring)
        self._refused: dict[Entry, set[str]] = {}
        #: entry -> when its MTU ends, as the award that sent it said (a later plan may have
        #: MTUs of another length)
        self._ends: dict[Entry, int] = {}
        self._prune_at = -math.inf

    def sent(self, node: str, body: Mapping[str, Any], wall: float) -> None:
        """The site sent ``node`` the award ``body`` (its acks are matched to it by id)."""
        start, mtu_s, ident = int(body["start"]), int(body["mtu_s"]), str(body["id"])
        entries = tuple((start + k * mtu_s, p, float(w)) for p, row in body["capacity_w"].items()
                        for k, w in enumerate(row) if w is not None)
        self._ids[(node, ident)] = entries
        for mtu, p, _ in entries:
            self._latest[(node, mtu, p)] = ident
            self._ends[(mtu, p)] = max(self._ends.get((mtu, p), 0), mtu + mtu_s)
        if wall >= self._prune_at:  # a split sends N: prune once a minute
            self._prune(wall)

    def _prune(self, wall: float) -> None:
        self._prune_at = wall + _PRUNE_S
        self._ends = ends = {key: end for key, end in self._ends.items() if end > wall}
        self._ids = {key: e for key, e in self._ids.items() if any(k[:2] in ends for k in e)}
        self._latest = {key: i for key, i in self._latest.items() if key[1:] in ends}
        self._not_held = {key: nodes for key, nodes in self._not_held.items() if key in ends}
        self._refused = {key: nodes for key, nodes in self._refused.items() if key in ends}

    def on_ack(self, node: str, ident: object, accepted: bool) -> bool:
        """``node`` acked an award (module docstring). False for an id the site did not send
        it."""
        entries = self._ids.get((node, ident)) if isinstance(ident, str) else None
        if entries is None:
            return False
        for mtu, p, w in entries:
            if self._latest.get((node, mtu, p)) != ident:
                continue  # a later award sent it this entry again: a late ack judges nothing
            if accepted:
                self._not_held.get((mtu, p), set()).discard(node)
                if w > 0.0:
                    self._refused.get((mtu, p), set()).discard(node)
            else:
                self._not_held.setdefault((mtu, p), set()).add(node)
                self._refused.setdefault((mtu, p), set()).add(node)
        return True

    def not_held(self, mtu: int, product: str) -> set[str]:
        """The nodes that refused what the site sent them of ``product`` for ``mtu``."""
        return set(self._not_held.get((mtu, product), ()))

    def refused(self, mtu: int, product: str) -> set[str]:
        """The nodes the live split offers none of ``product`` in ``mtu``."""
        return set(self._refused.get((mtu, product), ()))

    def forget(self, node: str) -> None:
        """``node`` published a new plan or came back: what it refused may be offered to it
        again (its refusals still count short until it accepts)."""
        for nodes in self._refused.values():
            nodes.discard(node)

    def reoffer(self, entry: Entry) -> None:
        """A new market award was split for ``entry``: every node may be offered it again."""
        self._refused.pop(entry, None)
