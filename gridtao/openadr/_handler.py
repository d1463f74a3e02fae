"""What the bridge does with each event version the VTN sends: the VEN's ``on_event``.

:class:`EventHandler` keeps, per OpenADR event id, the version it last acted on and the gridtao
dispatches it published for it, and for every version it receives:

* a new event: check it (:mod:`._events`), decide (:func:`._mapping.decide`), publish the
  dispatches, answer ``optIn`` or ``optOut``;
* a modification (same id, higher modification number): refused outright when it comes sooner
  than ``policy.min_modification_interval_s`` after the previous version (taken or refused, so
  a burst is refused until it stops), or beyond ``policy.max_modifications`` (the version in
  force stays: a flood never churns the nodes);
  else decided afresh: the dispatches of the old version are released and the new ones (new
  ids, ``<prefix>-<event>-m<modification>``) published; opting out of it releases the old ones;
* a cancellation: its dispatches released (never rate limited);
* the same version again: the same answer, nothing published;
* an older version than the one held: ignored (answered as before).

Every decision is audited (``openadr_event``, ``openadr_decision``, ``openadr_cancelled``) and
counted. The start-after randomization is drawn once per event id from the injected
``random.Random``, so a modification keeps the delay of its event. Not thread-safe: called on
the bridge's event loop (openleadr calls ``on_event`` there).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from gridtao.clock import Clock
from gridtao.openadr._config import BridgeConfig
from gridtao.openadr._events import EventRejected, OadrEvent, parse_event
from gridtao.openadr._mapping import Decision, SiteSnapshot, decide
from gridtao.openadr._metrics import BridgeMetrics
from gridtao.openadr._outbox import DispatchOutbox

__all__ = ["EventHandler", "dispatch_id"]

log = logging.getLogger("gridtao.openadr")

Opt = Literal["optIn", "optOut"]
Audit = Callable[[str, Mapping[str, object]], None]
_SAFE_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: Events held after they are over, so a late duplicate is still recognized (s).
FORGET_AFTER_S: Final = 3600.0
MAX_HELD: Final = 10_000


def dispatch_id(prefix: str, event_id: str, modification: int, segment: int,
                segments: int) -> str:
    """The gridtao id of dispatch ``segment`` of ``segments`` for one event version:
    ``<prefix>-<event>-m<modification>[-s<segment>]``; an event id that is long or has other
    characters than letters, digits and ``._:-`` is replaced by ``h`` and 24 hex digits of its
    SHA-256. At most 111 characters, so its release id (``<id>-release``) fits the wire's 128."""
    safe = event_id if _SAFE_ID.fullmatch(event_id) else (
        "h" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()[:24])
    base = f"{prefix}-{safe}-m{modification}"
    return base if segments == 1 else f"{base}-s{segment}"


@dataclass
class _Held:
    """The version of one event the bridge acted on last."""

    modification: int
    opt: Opt
    dispatch_ids: list[str]
    starts_at: float  # Unix s: the first dispatch's ramp begins (or the event's start)
    ends_at: float  # Unix s: the last dispatch's recovery over (or the event's end)
    delay_s: float
    seen_at: float  # monotonic s when the last version (taken or refused) came
    modifications: int = 0
    refused_modification: int | None = None
    released: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class EventHandler:
    """``site()``: the site now (None when no node reports); ``ven_id()``: the id the VTN
    gave this VEN (targets naming it are this site's)."""

    def __init__(self, config: BridgeConfig, *, clock: Clock, rng: random.Random,
                 site: Callable[[], SiteSnapshot | None], outbox: DispatchOutbox,
                 audit: Audit, metrics: BridgeMetrics,
                 ven_id: Callable[[], str | None] = lambda: None) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng
        self._site = site
        self._outbox = outbox
        self._audit = audit
        self._metrics = metrics
        self._ven_id = ven_id
        self._held: dict[str, _Held] = {}

    def held(self, event_id: str) -> tuple[int, str, tuple[str, ...]] | None:
        """(modification, opt, dispatch ids) of the version held for ``event_id``."""
        h = self._held.get(event_id)
        return None if h is None else (h.modification, h.opt, tuple(h.dispatch_ids))

    def dispatching(self, now: float) -> bool:
        """Whether a dispatch of the bridge's may be acting on the nodes at ``now`` (Unix s):
        between a taken version's first ramp and its last recovery, not released."""
        return any(h.dispatch_ids and not h.released and h.starts_at <= now < h.ends_at
                   for h in self._held.values())

    # ---- the VEN's on_event --------------------------------------------------------------

    def handle(self, raw: object) -> Opt:
        """Act on one event version; returns the VEN's answer. Never raises."""
        try:
            return self._handle(raw)
        except Exception:  # a bug must not leave openleadr opting out of every event silently
            log.exception("OpenADR event handling failed; opting out")
            self._metrics.events.labels("opt_out").inc()
            return "optOut"

    def _handle(self, raw: object) -> Opt:
        try:
            event = parse_event(raw)
        except EventRejected as e:
            return self.refuse_unreadable(e)
        return self.handle_event(event)

    def refuse_unreadable(self, e: EventRejected) -> Opt:
        """An event that could not be read: refused, counted, audited."""
        self._metrics.error("bad_event")
        self._metrics.refusals.labels("bad_event").inc()
        self._metrics.events.labels("opt_out").inc()
        log.warning("OpenADR event %s refused: %s", e.event_id or "(no id)", e.reason)
        self._audit("openadr_decision", {"event": e.event_id, "opt": "optOut",
                                         "label": "bad_event", "reason": e.reason})
        return "optOut"

    def handle_event(self, event: OadrEvent) -> Opt:
        """Act on one checked event version (OpenADR 3 events arrive here converted)."""
        try:
            return self._handle_event(event)
        except Exception:
            log.exception("OpenADR event handling failed; opting out")
            self._metrics.events.labels("opt_out").inc()
            return "optOut"

    def _handle_event(self, event: OadrEvent) -> Opt:
        held = self._held.get(event.event_id)
        if held is not None and event.modification_number <= held.modification:
            self._metrics.events.labels("duplicate").inc()
            return held.opt
        if (held is not None and event.status not in ("cancelled", "completed")
                and held.refused_modification == event.modification_number):
            return "optOut"
        self._audit("openadr_event", _event_fields(event))
        if event.status == "cancelled":
            return self._cancel(event, held)
        if event.status == "completed":
            self._metrics.events.labels("completed").inc()
            if held is not None:
                held.modification = event.modification_number
            return held.opt if held is not None else "optIn"
        if held is not None:
            refusal = self._modification_refusal(held)
            held.seen_at = self._clock.now()
            if refusal is not None:
                held.refused_modification = event.modification_number
                self._metrics.refusals.labels("modification_flood").inc()
                self._metrics.events.labels("opt_out").inc()
                log.warning("OpenADR event %s modification %d refused: %s", event.event_id,
                            event.modification_number, refusal)
                self._audit("openadr_decision", {
                    "event": event.event_id, "modification": event.modification_number,
                    "opt": "optOut", "label": "modification_flood", "reason": refusal,
                    "in_force": held.modification, "dispatches": list(held.dispatch_ids)})
                return "optOut"
        return self._decide(event, held)

    def _modification_refusal(self, held: _Held) -> str | None:
        policy = self.config.policy
        if held.modifications >= policy.max_modifications:
            return (f"{held.modifications} modifications already taken "
                    f"(policy.max_modifications {policy.max_modifications}); version "
                    f"{held.modification} stays in force")
        since = self._clock.now() - held.seen_at
        if since < policy.min_modification_interval_s:
            return (f"modified {since:.1f} s after the previous version "
                    f"(policy.min_modification_interval_s "
                    f"{policy.min_modification_interval_s:g} s); version {held.modification} "
                    "stays in force")
        return None

    def _decide(self, event: OadrEvent, held: _Held | None) -> Opt:
        now = self._clock.wall()
        if held is not None:
            delay = held.delay_s
        else:
            delay = self._rng.uniform(0.0, event.start_after_s) if event.start_after_s else 0.0
        site = self._site()
        if event.test_event and self.config.policy.test_events == "ignore":
            decision = Decision(True, "opt_in", "test event: answered, not dispatched")
        else:
            decision = decide(event, site=site, config=self.config, now=now,
                              start_delay_s=delay, ven_id=self._ven_id())
        released = self._release(held) if held is not None else []
        prefix = self.config.dispatch.id_prefix
        count = len(decision.dispatches)
        bodies = [d.body(dispatch_id(prefix, event.event_id, event.modification_number, k,
                                     count)) for k, d in enumerate(decision.dispatches)]
        for body in bodies:
            self._outbox.cut(body)
        opt: Opt = "optIn" if decision.opt_in else "optOut"
        ends = [d.start_at + d.duration_s + d.recovery_s for d in decision.dispatches]
        starts = [d.start_at - d.ramp_s for d in decision.dispatches]
        self._held[event.event_id] = _Held(
            modification=event.modification_number, opt=opt,
            dispatch_ids=[str(b["id"]) for b in bodies],
            starts_at=min(starts) if starts else event.start_at - event.ramp_s + delay,
            ends_at=max(ends) if ends else event.end_at + event.recovery_s + delay,
            delay_s=delay, seen_at=self._clock.now(),
            modifications=0 if held is None else held.modifications + 1)
        self._metrics.events.labels("opt_in" if decision.opt_in else "opt_out").inc()
        if not decision.opt_in:
            self._metrics.refusals.labels(decision.label).inc()
            log.warning("OpenADR event %s (modification %d) opted out: %s", event.event_id,
                        event.modification_number, decision.reason)
        else:
            log.info("OpenADR event %s (modification %d) opted in: %s; %d dispatch(es)%s",
                     event.event_id, event.modification_number, decision.signal,
                     len(bodies), f", released {', '.join(released)}" if released else "")
        self._audit("openadr_decision", {
            "event": event.event_id, "modification": event.modification_number, "opt": opt,
            "label": decision.label, "reason": decision.reason, "signal": decision.signal,
            "dispatches": bodies, "released": released, "notes": list(decision.notes),
            "start_delay_s": round(delay, 3), "site": None if site is None else vars(site)})
        self._forget_old(now)
        return opt

    def _release(self, held: _Held) -> list[str]:
        """Release what ``held`` dispatched; the ids of the releases published."""
        released: list[str] = []
        if held.released:
            return released
        held.released = True
        for ref in held.dispatch_ids:
            if self._outbox.release(ref, f"{ref}-release"):
                released.append(f"{ref}-release")
        return released

    def _cancel(self, event: OadrEvent, held: _Held | None, *, implicit: bool = False) -> Opt:
        released = self._release(held) if held is not None else []
        self._metrics.events.labels("cancelled").inc()
        if held is not None:
            held.modification = event.modification_number
        log.info("OpenADR event %s cancelled%s; released %s", event.event_id,
                 " (absent from the VTN's list)" if implicit else "",
                 ", ".join(released) or "nothing")
        self._audit("openadr_cancelled", {"event": event.event_id,
                                          "modification": event.modification_number,
                                          "released": released, "implicit": implicit})
        return "optIn"

    def missing(self, present: set[str]) -> None:
        """The VTN distributed its events and these are all it listed: an event held with
        dispatches still running that is not among them is taken as cancelled (OpenADR 2.0b:
        a VEN acts on the events the VTN currently distributes)."""
        now = self._clock.wall()
        for event_id, held in list(self._held.items()):
            if event_id in present or held.released or not held.dispatch_ids:
                continue
            if held.ends_at <= now:
                continue
            released = self._release(held)
            self._metrics.events.labels("cancelled").inc()
            log.warning("OpenADR event %s is no longer distributed by the VTN: released %s",
                        event_id, ", ".join(released) or "nothing (not yet published)")
            self._audit("openadr_cancelled", {"event": event_id,
                                              "modification": held.modification,
                                              "released": released, "implicit": True})

    def _forget_old(self, now: float) -> None:
        old = [k for k, h in self._held.items() if h.ends_at + FORGET_AFTER_S < now]
        for k in old:
            del self._held[k]
        while len(self._held) > MAX_HELD:
            del self._held[next(iter(self._held))]


def _event_fields(event: OadrEvent) -> dict[str, object]:
    return {
        "event": event.event_id, "modification": event.modification_number,
        "status": event.status, "market_context": event.market_context,
        "test_event": event.test_event, "start_at": event.start_at,
        "duration_s": event.duration_s, "ramp_s": event.ramp_s,
        "recovery_s": event.recovery_s, "start_after_s": event.start_after_s,
        "targets": [list(t) for t in event.targets],
        "signals": [{"name": s.name, "type": s.type, "unit": s.unit, "scale": s.scale,
                     "intervals": [[iv.start_at, iv.duration_s, iv.value]
                                   for iv in s.intervals]} for s in event.signals],
    }
