"""Wire contract v1, additive: the market's answer to a node's plan (``award``) and the plan.

A node publishes what it offers (retained, ``{prefix}/nodes/{node}/plan``, built by
:func:`plan_payload`); what the market accepted comes back on ``{prefix}/nodes/{node}/award``::

    {"id": "award-2026-12-06", "issued_at": 1796515200.0, "start": 1796515200, "mtu_s": 3600,
     "capacity_w": {"ffr": [400, 400, 0, ...], "fcr-d-up": [300, ...]}}

``start`` (Unix s, a multiple of ``mtu_s``) and ``mtu_s`` (900 or 3600) place the series;
``capacity_w`` maps an enrolled product's name to the capacity accepted per MTU (W at the
settlement point, >= 0 and at most the product's configured capacity; ``0``: nothing accepted,
the product is off in that MTU; ``null``: this award says nothing about that MTU, so an
earlier award or the configured capacity applies). Only accepted capacity is armed; outside
every award the node keeps its configured capacities. Where two awards cover the same MTU the
one issued later (``issued_at``; else the one received later) wins, so a replayed older award
never overrides a newer one. Signed like a dispatch when ``auth.mode`` is not ``none``
(``issued_at`` is then required). Pure functions, no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from gridtao.wire.messages import ID_MAX_CHARS, NODE_W_MAX, MessageRejected

__all__ = ["AWARD_MAX_MTUS", "MTU_CHOICES_S", "Award", "parse_award", "plan_payload"]

MTU_CHOICES_S = (900, 3600)
AWARD_MAX_MTUS = 7 * 96  # a week of 15-minute units: more is a mistake, not a market


@dataclass(frozen=True)
class Award:
    """Accepted capacity per product and MTU (W at the settlement point; None: not accepted)."""

    id: str
    issued_at: float | None
    start_s: int
    mtu_s: int
    capacity_w: Mapping[str, tuple[float | None, ...]]
    #: The node it is for (``node``; None: whichever node receives it): a node refuses an
    #: award naming another node, so a signed award cannot be replayed to another node.
    node: str | None = None

    @property
    def terms(self) -> tuple[object, ...]:
        """What the award says, less ``issued_at`` (a retry may be re-stamped): an id sent
        again with other terms is a different award under a used id."""
        return (self.node, self.start_s, self.mtu_s,
                tuple(sorted((k, v) for k, v in self.capacity_w.items())))

    @property
    def end_s(self) -> int:
        n = max((len(v) for v in self.capacity_w.values()), default=0)
        return self.start_s + n * self.mtu_s

    def describe(self) -> str:
        """In words, for a log line: its MTUs and, per product, the watts accepted."""
        start = datetime.fromtimestamp(self.start_s, UTC).strftime("%Y-%m-%d %H:%M")
        n = (self.end_s - self.start_s) // self.mtu_s if self.mtu_s else 0
        products = "; ".join(
            f"{name} " + " ".join("-" if w is None else f"{w:g}" for w in series) + " W"
            for name, series in self.capacity_w.items())
        return f"{n} MTU(s) of {self.mtu_s} s from {start} UTC: {products}"

    def at(self, wall_s: float) -> dict[str, float]:
        """The capacities accepted for the MTU holding ``wall_s`` (products with a value)."""
        k = math.floor((wall_s - self.start_s) / self.mtu_s)
        out: dict[str, float] = {}
        if k < 0:
            return out
        for name, series in self.capacity_w.items():
            if k < len(series) and series[k] is not None:
                out[name] = float(series[k])  # type: ignore[arg-type]
        return out


#: The times an award may start at (Unix s, 1970 to the last day of year 9999): beyond them no
#: date can be written, let alone a market time unit.
START_MIN_S, START_MAX_S = 0, 253_402_214_400


def _fail(reason: str, event_id: str | None = None) -> NoReturn:
    raise MessageRejected(reason, event_id)


def parse_award(payload: bytes, *, max_bytes: int, products: Sequence[str],
                holder: str = "enrolled on this node", max_w: float = NODE_W_MAX) -> Award:
    """Parse and check an award against the enrolled ``products`` (names); raises
    :class:`MessageRejected` with the reason (``holder``: how it says a product is known, for
    a site: "offered by a node of this site"; ``max_w``: the largest value, W, a node's bound
    by default)."""
    if len(payload) > max_bytes:
        _fail(f"award is {len(payload)} bytes (limit {max_bytes})")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        _fail("award is not JSON")
    if not isinstance(data, dict):
        _fail("award is not a JSON object")
    event_id = data.get("id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= ID_MAX_CHARS:
        _fail(f"award needs an 'id' string of 1..{ID_MAX_CHARS} characters")
    issued = data.get("issued_at")
    if issued is not None and (isinstance(issued, bool) or not isinstance(issued, int | float)
                               or not math.isfinite(issued)):
        _fail("'issued_at' must be a number (Unix s)", event_id)
    mtu = data.get("mtu_s")
    if mtu not in MTU_CHOICES_S or isinstance(mtu, bool):
        _fail(f"'mtu_s' must be one of {list(MTU_CHOICES_S)}", event_id)
    start = data.get("start")
    if isinstance(start, bool) or not isinstance(start, int) or start % int(mtu) != 0:
        _fail("'start' must be an integer Unix time on an MTU boundary", event_id)
    if not START_MIN_S <= start <= START_MAX_S:
        _fail(f"'start' {start} is not a date (Unix s, years 1970-9999)", event_id)
    node = data.get("node")
    if node is not None and not (isinstance(node, str) and 0 < len(node) <= ID_MAX_CHARS
                                 and node.isprintable()):
        _fail(f"'node' must be a node id string of 1..{ID_MAX_CHARS} characters", event_id)
    caps = data.get("capacity_w")
    if not isinstance(caps, dict) or not caps:
        _fail("'capacity_w' must map product names to lists of watts", event_id)
    known = set(products)
    series: dict[str, tuple[float | None, ...]] = {}
    for name, values in caps.items():
        if name not in known:
            _fail(f"product {name!r} is not {holder} (known: "
                  f"{', '.join(sorted(known)) or 'none'})", event_id)
        series[name] = _series(name, values, event_id, max_w)
    return Award(event_id, None if issued is None else float(issued), int(start), int(mtu),
                 series, node)


def _series(name: str, values: Any, event_id: str,
            max_w: float) -> tuple[float | None, ...]:
    if not isinstance(values, list) or not 0 < len(values) <= AWARD_MAX_MTUS:
        _fail(f"capacity_w[{name!r}] must be a list of 1..{AWARD_MAX_MTUS} values", event_id)
    out: list[float | None] = []
    for k, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not (
                math.isfinite(v) and 0 <= v <= max_w):
            _fail(f"capacity_w[{name!r}][{k}] must be watts in 0..{max_w:g}", event_id)
        out.append(float(v))
    return tuple(out)


def plan_payload(node_id: str, *, made_at: float, start_s: int, mtu_s: int,
                 offers_w: Mapping[str, Sequence[float]], extra: Mapping[str, Any]) -> bytes:
    """The retained plan: what the node offers per product and MTU (W at the settlement
    point), and ``extra`` (forecast, expected revenue and costs, status, notes)."""
    body = {"node": node_id, "made_at": round(made_at, 3), "start": start_s, "mtu_s": mtu_s,
            "offers_w": {k: [round(float(x), 1) for x in v] for k, v in offers_w.items()},
            **extra}
    return json.dumps(body, allow_nan=False).encode()
