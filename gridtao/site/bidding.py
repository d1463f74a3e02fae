"""The site in the reserve market at run time: its bids published, its awards split.

:class:`SiteBidding` pools the nodes' retained plans into the site's retained plan
(``{prefix}/site/plan``, at most once a second: plans come hourly) and splits each award the
market sends the site (``{prefix}/site/award``) into signed per-node awards on
``{prefix}/nodes/{node}/award``, with a site ack naming the nodes it went to, and has the award
in force split again by the nodes' live room (:mod:`gridtao.site.resplit`). What is pooled and
how an award is split is :mod:`gridtao.site.market`'s (pure functions); this sends.

Threads: the coordinator's event loop only. Times in Unix seconds, power in W at the settlement
point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gridtao.config.site import SiteConfig
from gridtao.security.auth import AuthRejected
from gridtao.site.guard import Duplicate, SiteGuard
from gridtao.site.market import SitePlan, node_awards, pool_offers, split_award
from gridtao.site.refusals import AUTH_PREFIX
from gridtao.site.resplit import LiveSplit
from gridtao.site.sending import Publish, Sign
from gridtao.site.view import SiteView
from gridtao.wire.awards import Award, parse_award
from gridtao.wire.messages import MessageRejected
from gridtao.wire.site import SITE_W_MAX, SiteTopics, site_payload

__all__ = ["SiteBidding", "award_terms"]

log = logging.getLogger("gridtao.site")

#: ``refuse(id, reason, wall)``: the coordinator's refusal (counted, logged, site ack).
Refuse = Callable[[str | None, str, float], None]


def award_terms(award: Award) -> tuple[object, ...]:
    """What an award says, for the site guard: an id sent again with other terms is
    refused."""
    return ("award", award.start_s, award.mtu_s, tuple(sorted(award.capacity_w.items())))


class SiteBidding:
    """See the module docstring. ``ack``: publishes a site ack; ``count``: the coordinator's
    counters."""

    def __init__(self, cfg: SiteConfig, view: SiteView, guard: SiteGuard, *, topics: SiteTopics,
                 publish: Publish, sign: Sign, refuse: Refuse,
                 ack: Callable[[dict[str, Any]], None], count: Callable[[str], None],
                 max_payload_bytes: int, max_future_s: float) -> None:
        self.cfg = cfg
        self.view = view
        self.guard = guard
        self.topics = topics
        self._publish = publish
        self._sign = sign
        self._refuse = refuse
        self._ack = ack
        self._count = count
        self._max_payload_bytes = max_payload_bytes
        self._max_future_s = max_future_s
        self.plan: SitePlan | None = None
        self.live = LiveSplit(cfg, view, topics=topics, publish=publish, sign=sign,
                              count=count)
        self._plan_dirty = False
        self._next_plan = 0.0

    def on_node_plan(self) -> None:
        """A node published a plan: the site's is pooled again at the next :meth:`tick`."""
        self._plan_dirty = True

    def tick(self, wall: float) -> None:
        """Pool and publish the site's plan if a node's changed (at most once a second); split
        the award in force again by the nodes' live room when it is time."""
        if self._plan_dirty and wall >= self._next_plan:
            self._plan_dirty, self._next_plan = False, wall + 1.0  # plans come hourly
            self.plan = pool_offers(self.view.nodes, self.cfg.market, wall)
            if self.plan is not None:
                self._publish(self.topics.plan, site_payload(
                    self.plan.body(self.cfg.id, wall, self.cfg.market)), 1, True)
        self.live.tick(wall, self.plan)

    def on_award(self, payload: bytes, wall: float) -> None:
        """The market's answer to the site's bids: split into signed per-node awards."""
        plan = self.plan
        products = sorted(plan.offers_w) if plan is not None else []
        try:
            award = parse_award(payload, max_bytes=self._max_payload_bytes, products=products,
                                holder="offered by a node of this site", max_w=SITE_W_MAX)
            # Before the guard takes the id: a retry once the site can take it is not a
            # duplicate of a refusal.
            if plan is None:
                raise MessageRejected("the site has no plan to award (no node has published "
                                      "one)", award.id)
            if award.mtu_s != plan.mtu_s:
                raise MessageRejected(f"the award's MTU ({award.mtu_s} s) is not the plan's "
                                      f"({plan.mtu_s} s)", award.id)
            if award.end_s <= wall:
                raise MessageRejected("its market time units are all over: nothing to pass on",
                                      award.id)
            if award.issued_at is not None and award.issued_at > wall + self._max_future_s:
                raise MessageRejected(f"issued_at is {award.issued_at - wall:.0f} s ahead of "
                                      f"the site's clock (at most {self._max_future_s:g} s)",
                                      award.id)
            self.guard.check(payload, award.id, award.issued_at, award_terms(award), wall)
            split = split_award(self.live.effective(award, wall), plan)
        except MessageRejected as e:
            self._refuse(e.event_id, e.reason, wall)
            return
        except AuthRejected as e:
            self._refuse(None, f"{AUTH_PREFIX} {e.reason}", wall)
            return
        except Duplicate:
            return
        issued = self.live.issue_time(wall)
        for node, body in node_awards(award, split.shares, issued):
            self._publish(self.topics.node(node, "award"), self._sign(body), 1, False)
            self.live.acks.sent(node, body, wall)
        self.live.on_award(award, split.shares, wall)
        self._count("site_awards_split")
        if split.unplaced_w:
            log.warning("site award %s: more than its nodes may be awarded, per product and "
                        "MTU, W not placed: %s", award.id, "; ".join(
                            f"{p} {' '.join(f'{w:g}' for w in v)}"
                            for p, v in sorted(split.unplaced_w.items())))
        self._ack({"id": award.id, "accepted": True, "reason": None, "received_at": wall,
                   "commanded_at": None, "reached_at": None, "site": self.cfg.id,
                   "kind": "award",  # the nodes the award went to, as in every site ack
                   "nodes": {"accepted": sorted(split.shares), "rejected": {}, "missing": [],
                             "offline": []}}
                  | ({"unplaced_w": split.unplaced_w} if split.unplaced_w else {}))
