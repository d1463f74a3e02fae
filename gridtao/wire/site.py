"""Wire contract v1, site extension: the site coordinator's topics and messages (docs/site.md).

Pure functions, no I/O. Everything lives under the same ``prefix`` as the nodes:

- ``{prefix}/site/dispatch`` (aggregator -> site, QoS 1, signed like a node dispatch):
  ``site_cap`` (hold the site's IT or metered power at or below ``site_w``), ``site_shed`` (cut
  ``reduction_w`` W or ``fraction`` of the site's power) and ``release``.
- ``{prefix}/site/ack`` (site -> aggregator, QoS 1): one ack per event when every node answered
  or the deadline passed, a second when every accepting node is in its band.
- ``{prefix}/site/status`` (retained): the site's view, and the split of each event in force (a
  restarted coordinator takes its events back from it without re-dispatching).
- ``{prefix}/meter`` (meter gateway -> site, QoS 0): ``{"t": <Unix s>, "w": <W>}``, with
  ``kid`` and ``sig`` when signed (required in signed mode unless ``site.meter.require_signed``
  is false).

Times are Unix seconds, power in watts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, TypeAlias

from gridtao.wire.messages import (
    MessageRejected,
    ReleaseDispatch,
    _check_range,
    _duration,
    _identifier,
    _json_type,
    _number,
    _optional_number,
    decode_object,
)
from gridtao.wire.topics import _check_topic_part

__all__ = [
    "SITE_W_MAX",
    "AnySiteDispatch",
    "MeterReading",
    "SettleAt",
    "SiteCapDispatch",
    "SiteShedDispatch",
    "SiteTopics",
    "meter_from",
    "parse_site_dispatch",
    "site_payload",
]

SITE_W_MAX: Final = 1_000_000_000.0  # 1 GW: far above any site, low enough to catch unit errors
SettleAt: TypeAlias = Literal["it", "meter"]


@dataclass(frozen=True, slots=True)
class SiteTopics:
    """The site's topic names under ``prefix`` (the nodes' ``mqtt.prefix``)."""

    prefix: str

    def __post_init__(self) -> None:
        _check_topic_part("prefix", self.prefix, single_level=False)

    @property
    def dispatch(self) -> str:
        return f"{self.prefix}/site/dispatch"

    @property
    def ack(self) -> str:
        return f"{self.prefix}/site/ack"

    @property
    def status(self) -> str:
        return f"{self.prefix}/site/status"

    @property
    def plan(self) -> str:
        """Retained: the site's pooled bids per product and market time unit."""
        return f"{self.prefix}/site/plan"

    @property
    def award(self) -> str:
        """The market's answer to the site's bids (the node award's format)."""
        return f"{self.prefix}/site/award"

    @property
    def meter(self) -> str:
        return f"{self.prefix}/meter"

    @property
    def events(self) -> str:
        """Retained: the site's events in force with their split, for a restarted
        coordinator (the site reads and writes it)."""
        return f"{self.prefix}/site/events"

    @property
    def fleet_dispatch(self) -> str:
        """The nodes' shared dispatch topic: the site reads it to ack events sent straight to
        every node (``shed`` by fraction takes no extra hop through the site)."""
        return f"{self.prefix}/dispatch"

    def nodes(self, leaf: str) -> str:
        """The filter for one topic of every node, e.g. ``nodes("status")``."""
        return f"{self.prefix}/nodes/+/{leaf}"

    def node(self, node: str, leaf: str) -> str:
        _check_topic_part("node id", node, single_level=True)
        return f"{self.prefix}/nodes/{node}/{leaf}"

    def command_subscriptions(self) -> list[tuple[str, int]]:
        """What the coordinator acts on, with their QoS: dispatches, awards, the nodes' acks,
        the meter, its own record."""
        return [(self.dispatch, 1), (self.award, 1), (self.fleet_dispatch, 1), (self.meter, 0),
                (self.nodes("ack"), 1), (self.events, 1)]

    def state_subscriptions(self) -> list[tuple[str, int]]:
        """The nodes' periodic state, all retained. QoS 0: a status a second from every node
        is most of what the site receives, a PUBACK for each would double it, and a lost one
        is replaced within a status period."""
        return [(self.nodes("status"), 0), (self.nodes("tracker"), 0), (self.nodes("plan"), 0)]

    def published(self) -> list[str]:
        """Every topic (or filter, for the nodes' inboxes) the coordinator publishes to."""
        return [self.status, self.ack, self.plan, self.events, self.nodes("dispatch"),
                self.nodes("award")]

    def node_of(self, topic: str) -> tuple[str, str] | None:
        """``(node, leaf)`` of a topic under ``{prefix}/nodes/``, else None."""
        head = f"{self.prefix}/nodes/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 2 or not parts[0]:
            return None
        return parts[0], parts[1]


@dataclass(frozen=True, slots=True)
class SiteCapDispatch:
    """Hold the site's power ``at`` the GPUs (``it``) or the meter at or below ``site_w`` W."""

    KIND: ClassVar[str] = "site_cap"
    id: str
    site_w: float
    at: SettleAt
    duration_s: float
    issued_at: float | None = None


@dataclass(frozen=True, slots=True)
class SiteShedDispatch:
    """Cut the site's power ``at`` the GPUs or the meter by ``reduction_w`` W or by ``fraction``
    of what it drew when the event arrived (exactly one of the two is set)."""

    KIND: ClassVar[str] = "site_shed"
    id: str
    reduction_w: float | None
    fraction: float | None
    at: SettleAt
    duration_s: float
    issued_at: float | None = None


AnySiteDispatch: TypeAlias = SiteCapDispatch | SiteShedDispatch | ReleaseDispatch


@dataclass(frozen=True, slots=True)
class MeterReading:
    """The site meter: ``w`` W (active import, >= 0) measured at ``t`` (Unix s)."""

    t: float
    w: float


def _settle_at(data: Mapping[str, object], event_id: str) -> SettleAt:
    at = data.get("at", "it")
    if at == "it" or at == "meter":
        return at
    shown = at if isinstance(at, str) else _json_type(at)
    raise MessageRejected(f"field 'at' must be 'it' or 'meter', got {shown!r}", event_id)


def parse_site_dispatch(payload: bytes, *, max_bytes: int) -> AnySiteDispatch:
    """Parse a ``site_cap`` / ``site_shed`` / ``release``. Unknown fields are ignored; raises
    :class:`MessageRejected` (with the event id when the payload had a string one)."""
    data = decode_object(payload, max_bytes=max_bytes)
    raw_id = data.get("id")
    event_id = raw_id if isinstance(raw_id, str) else None
    ident = _identifier(data, "id", event_id)
    kind = data.get("kind")
    issued_at = _optional_number(data, "issued_at", event_id)
    if kind == "site_cap":
        site_w = _number(data, "site_w", ident)
        _check_range(site_w, "site_w", ident, 0.0, SITE_W_MAX, lo_open=True, unit=" W")
        return SiteCapDispatch(ident, site_w, _settle_at(data, ident), _duration(data, ident),
                               issued_at)
    if kind == "site_shed":
        reduction_w = _optional_number(data, "reduction_w", ident)
        fraction = _optional_number(data, "fraction", ident)
        if (reduction_w is None) == (fraction is None):
            raise MessageRejected("site_shed needs exactly one of 'reduction_w' or 'fraction'",
                                  ident)
        if reduction_w is not None:
            _check_range(reduction_w, "reduction_w", ident, 0.0, SITE_W_MAX, lo_open=True,
                         unit=" W")
        if fraction is not None:
            _check_range(fraction, "fraction", ident, 0.0, 1.0, lo_open=True)
        return SiteShedDispatch(ident, reduction_w, fraction, _settle_at(data, ident),
                                _duration(data, ident), issued_at)
    if kind == "release":
        if "ref" not in data:
            raise MessageRejected("release needs field 'ref' (the event to end)", ident)
        return ReleaseDispatch(ident, _identifier(data, "ref", ident), issued_at)
    if kind is None:
        raise MessageRejected("missing field 'kind'", ident)
    shown = kind if isinstance(kind, str) and len(kind) <= 32 else _json_type(kind)
    raise MessageRejected(
        f"unknown kind {shown!r} (expected 'site_cap', 'site_shed' or 'release')", ident)


def meter_from(data: Mapping[str, object]) -> MeterReading:
    """A meter reading ``{"t": <Unix s>, "w": <W >= 0>}`` from its decoded payload
    (:func:`~gridtao.wire.messages.decode_object`; unknown fields, ``kid`` and ``sig`` among
    them, are ignored here: gridtao/site/meterauth.py checks them). Raises
    :class:`MessageRejected`."""
    t = _number(data, "t", None)
    if t < 0:
        raise MessageRejected(f"field 't' must be Unix seconds >= 0, got {t:g}")
    w = _number(data, "w", None)
    _check_range(w, "w", None, 0.0, SITE_W_MAX, unit=" W")
    return MeterReading(t, w)


def site_payload(body: Mapping[str, object]) -> bytes:
    """Compact UTF-8 JSON of a site ack or status; a NaN or infinity raises (a bug upstream)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")

