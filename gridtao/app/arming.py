"""Tier 3's hand-over to the products: only capacity the market accepted is armed.

:class:`AwardBook` keeps the awards received (gridtao/wire/awards.py) by market time unit;
:class:`Arming` applies, once a controller period, the capacities in force for the current MTU
to the portfolio: the awarded ones where an award covers the MTU, else (``planner.unawarded``)
the configured ones (a static enrolment: a node that never gets an award behaves exactly as its
YAML says) or none (a node in a market arms only what it sold); by default the configured ones
until a product's first award, none from then on. A product delivering an activation keeps its
capacity until the activation ends (``Portfolio.busy``); the change is retried every period
and applied then. Tier 2 re-arms the island's caps from the new capacities on its next period.

Threads: awards arrive on the controller loop (:meth:`AwardBook.add`); :meth:`Arming.apply`
runs on the controller loop too; :meth:`Arming.snapshot` may be read from any thread (the
metrics collector). Times: ``wall_s`` Unix seconds, ``now_s`` the agent's monotonic clock.
Power: W at the settlement point.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gridtao.products.portfolio import Portfolio
from gridtao.security.guard import Guard
from gridtao.wire.awards import Award, parse_award
from gridtao.wire.messages import MessageRejected

__all__ = ["ArmedState", "Arming", "AwardBook", "AwardVerdict", "take_award"]

log = logging.getLogger("gridtao.tier3")

#: Awards are kept this long past their last MTU (for status), then dropped.
KEEP_PAST_S = 3600.0
_WHY = {"award": "awarded for this market time unit",
        "config": "configured: no award covers this market time unit",
        "unawarded": "no award covers this market time unit: nothing sold, nothing armed"}


class AwardBook:
    """The awards received; where two cover an MTU (per product) the one issued later wins
    (``issued_at``; awards without one count as issued when received), so a replayed older
    award never overrides a newer one. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._awards: list[Award] = []
        self._received = 0
        self._order: dict[str, tuple[float, int]] = {}
        self._ever: set[str] = set()  # products any award (kept or pruned) gave a capacity

    def add(self, award: Award, *, received_wall: float | None = None) -> None:
        with self._lock:
            self._received += 1
            issued = award.issued_at if award.issued_at is not None else received_wall
            self._order[award.id] = (issued if issued is not None else float("-inf"),
                                     self._received)
            self._awards = sorted([a for a in self._awards if a.id != award.id] + [award],
                                  key=lambda a: self._order[a.id])
            self._ever |= {name for name, series in award.capacity_w.items()
                           if any(w is not None for w in series)}

    def reused(self, award: Award) -> bool:
        """Whether ``award``'s id is held with other terms (:attr:`Award.terms`)."""
        with self._lock:
            return any(a.id == award.id and a.terms != award.terms for a in self._awards)

    def ever_awarded(self) -> frozenset[str]:
        """The products an award has given a capacity since start (in any MTU)."""
        with self._lock:
            return frozenset(self._ever)

    def capacities_at(self, wall_s: float) -> dict[str, float]:
        """Awarded capacity per product for the MTU holding ``wall_s`` (products no award
        covers there are absent)."""
        with self._lock:
            awards = list(self._awards)
        out: dict[str, float] = {}
        for award in awards:  # oldest first: the newest wins
            out.update(award.at(wall_s))
        return out

    def prune(self, wall_s: float) -> None:
        with self._lock:
            self._awards = [a for a in self._awards if a.end_s + KEEP_PAST_S > wall_s]
            self._order = {a.id: self._order[a.id] for a in self._awards}

    def __len__(self) -> int:
        with self._lock:
            return len(self._awards)


@dataclass(frozen=True)
class ArmedState:
    """What is armed now and why: ``armed_w`` per product, ``source`` per product (``award``,
    ``config``, or ``unawarded``: no award covers the MTU and nothing unawarded is armed),
    ``pending_w``: changes waiting for an activation to end."""

    armed_w: Mapping[str, float]
    source: Mapping[str, str]
    pending_w: Mapping[str, float]


class Arming:
    """Applies the capacities in force to ``portfolio`` (module docstring).

    ``on_change(product, old_w, new_w, source)`` is called for every change applied (the
    agent logs and audits it). ``unawarded``: what an MTU no award covers arms (``configured``,
    ``zero``, or ``auto``: configured until the product's first award, nothing after;
    ``planner.unawarded``); call :meth:`apply` once before any trigger can land, so the
    capacities in force hold from the start."""

    def __init__(self, portfolio: Portfolio, book: AwardBook, *,
                 unawarded: Literal["auto", "configured", "zero"] = "auto",
                 on_change: Callable[[str, float, float, str], None] | None = None) -> None:
        self._portfolio = portfolio
        self._book = book
        self._configured = portfolio.capacities()
        self._unawarded = unawarded
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = ArmedState(dict(self._configured), dict.fromkeys(self._configured,
                                                                      "config"), {})

    @property
    def configured_w(self) -> Mapping[str, float]:
        return dict(self._configured)

    def snapshot(self) -> ArmedState:
        with self._lock:
            return self._state

    def apply(self, wall_s: float, now_s: float) -> ArmedState:
        """Bring every product to the capacity in force for the MTU holding ``wall_s``."""
        awarded = self._book.capacities_at(wall_s)
        in_market = (frozenset(self._configured) if self._unawarded == "zero"
                     else self._book.ever_awarded() if self._unawarded == "auto"
                     else frozenset())
        current = self._portfolio.capacities()
        sources: dict[str, str] = {}
        pending: dict[str, float] = {}
        for name, configured in self._configured.items():
            if name in awarded:
                want, sources[name] = awarded[name], "award"
            elif name not in in_market:
                want, sources[name] = configured, "config"
            else:
                want, sources[name] = 0.0, "unawarded"
            have = current.get(name, configured)
            if abs(want - have) < 1e-9:
                continue
            if self._portfolio.set_capacity(name, want, now_s):
                current[name] = want
                log.info("%s: capacity %.0f W -> %.0f W (%s)", name, have, want,
                         _WHY[sources[name]])
                if self._on_change is not None:
                    self._on_change(name, have, want, sources[name])
            else:
                pending[name] = want
        self._book.prune(wall_s)
        state = ArmedState(dict(current), sources, pending)
        with self._lock:
            self._state = state
        return state


@dataclass(frozen=True)
class AwardVerdict:
    """What became of an award message: its id (None if it had none), accepted, and why not."""

    id: str | None
    accepted: bool
    reason: str | None
    award: Award | None = None


def take_award(payload: bytes, *, guard: Guard, book: AwardBook,
               products: Mapping[str, float], max_bytes: int,
               received_wall: float | None = None, node_id: str | None = None
               ) -> AwardVerdict:
    """Parse, authenticate (signed mode: the aggregator's dispatch keys, fresh ``issued_at``)
    and file an award; ``products``: each enrolled product's configured capacity (W), which
    no award may exceed (the node never offers more); ``node_id``: this node, which an award
    naming another node is refused for. An id already held with other terms is refused (a
    retry with the same terms is taken again). A refused award changes nothing."""
    try:
        award = parse_award(payload, max_bytes=max_bytes, products=list(products))
    except MessageRejected as e:
        return AwardVerdict(e.event_id, False, e.reason)
    if award.node is not None and node_id is not None and award.node != node_id:
        return AwardVerdict(award.id, False, f"addressed to node {award.node!r}, not this "
                            f"node ({node_id!r})")
    for name, series in award.capacity_w.items():
        over = [w for w in series if w is not None and w > products[name] + 1e-6]
        if over:
            return AwardVerdict(award.id, False,
                                f"capacity_w[{name!r}] {max(over):g} W exceeds the product's "
                                f"configured capacity {products[name]:g} W")
    problem = guard.authenticate_award(payload, award.issued_at)
    if problem is not None:
        return AwardVerdict(award.id, False, problem)
    if book.reused(award):
        return AwardVerdict(award.id, False, f"id {award.id!r} reused with a different body "
                            "(an award's id is used once)")
    book.add(award, received_wall=received_wall)
    return AwardVerdict(award.id, True, None, award)
