"""The site's retained record of its events (``{prefix}/site/events``): written signed with
the site's key after every change, and taken back once, at start, by a restarted coordinator.
It also holds the site awards not yet over, so a restarted coordinator goes on splitting the
award in force by the nodes' live room (gridtao/site/resplit.py).

Anyone with access to the topic can publish on it, so a record is taken back only as the broker
kept it (retained), only the first one (the coordinator hears its own later records too), only
signed with the site's own key when the site signs (gridtao/site/signing.py), and only events
ending within ``site.max_event_s``. Times in Unix seconds. Pure functions; the coordinator's
loop calls them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

from gridtao.security.auth import AuthRejected, Verifier
from gridtao.site.events import SiteEvent
from gridtao.wire.awards import Award, parse_award
from gridtao.wire.messages import MessageRejected, decode_object

__all__ = ["MAX_RECORD_BYTES", "Taken", "events_record", "restore_awards", "restore_events",
           "take_back"]

log = logging.getLogger("gridtao.site")

#: The largest record taken back, bytes: every order of every event in force (hundreds of
#: kilobytes for a thousand nodes).
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024


def events_record(site: str, events: Iterable[SiteEvent], wall: float,
                  awards: Iterable[Award] = ()) -> dict[str, Any]:
    """The retained ``{prefix}/site/events``: the site events in force and the site awards
    not yet over, for a restart."""
    return {"site": site, "t": wall,
            "events": [e.persisted() for e in events if e.kind != "fleet"],
            "awards": [{"id": a.id, "start": a.start_s, "mtu_s": a.mtu_s,
                        "capacity_w": {k: list(v) for k, v in a.capacity_w.items()}}
                       | ({} if a.issued_at is None else {"issued_at": a.issued_at})
                       for a in awards if a.end_s > wall]}


def restore_awards(body: Mapping[str, Any] | None, wall: float) -> list[Award]:
    """The site awards of a retained record not over at ``wall`` (one that does not parse as
    an award is logged and skipped)."""
    records = body.get("awards") if body else None
    out: list[Award] = []
    for record in records if isinstance(records, list) else ():
        try:
            caps = record.get("capacity_w") if isinstance(record, Mapping) else None
            award = parse_award(json.dumps(record).encode(), max_bytes=MAX_RECORD_BYTES,
                                products=list(caps) if isinstance(caps, Mapping) else [])
        except (MessageRejected, TypeError, ValueError) as e:
            log.warning("site award record not taken back: %s",
                        e.reason if isinstance(e, MessageRejected) else e)
            continue
        if award.end_s > wall:
            out.append(award)
    return out


def restore_events(body: Mapping[str, Any] | None, wall: float, *,
                   max_until: float = math.inf) -> list[SiteEvent]:
    """The events of a retained record still in force at ``wall`` and ending by
    ``max_until``; a record that is not one, or one that runs longer, is logged and skipped."""
    records = body.get("events") if body else None
    out: list[SiteEvent] = []
    for record in records if isinstance(records, list) else ():
        try:
            event = SiteEvent.restored(record, wall)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            log.warning("site event record not taken back: %s", e)
            continue
        if event.until > max_until:
            log.warning("site event %s not taken back: it would end %.0f s from now, past "
                        "site.max_event_s", event.id, event.until - wall)
        elif event.until > wall:
            log.info("site event %s taken back from the retained record (%d nodes)",
                     event.id, len(event.orders))
            out.append(event)
    return out


class Taken(NamedTuple):
    """What :func:`take_back` takes from a record: ``events`` to hold again, ``awards`` not
    yet over, and why the record was refused (None if it was not)."""

    events: list[SiteEvent]
    awards: list[Award]
    refused: str | None = None


def take_back(payload: bytes, wall: float, *, own_key: Verifier | None,
              max_event_s: float) -> Taken:
    """The events and awards of a retained record to hold again at ``wall``; the record is
    refused when not a JSON object, or not signed with ``own_key`` (when the site signs).
    Events ending past ``max_event_s`` from now are left out (logged)."""
    try:
        body = decode_object(payload, max_bytes=MAX_RECORD_BYTES)
    except MessageRejected as e:
        return Taken([], [], e.reason)
    if own_key is not None:
        try:
            own_key.authenticate("dispatch", body)
        except AuthRejected as e:
            return Taken([], [], f"not the site's own ({e.reason})")
    return Taken(restore_events(body, wall, max_until=wall + max_event_s),
                 restore_awards(body, wall))
