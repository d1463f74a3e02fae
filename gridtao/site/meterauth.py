"""Which site meter readings the coordinator takes: parse, signature, freshness and order.

A reading on ``{prefix}/meter`` moves the site's correction of every meter-level commitment
(gridtao/site/meter.py), so with ``auth.mode`` other than ``none`` it is taken only when signed
as a frequency sample is (docs/security.md): by a key that may sign ``meter``
(``auth.keys[].topics``), its ``t`` no older than ``site.meter.stale_s`` (a reading that old
is not used anyway, so no second window) nor more than ``auth.max_future_s`` ahead, and later
than the last reading taken from that key (a replayed or reordered reading is refused; the
order is kept in memory, so after a restart a captured reading can come back at most within
``stale_s``). An unsigned reading is refused unless ``site.meter.require_signed`` is false; a
signed one is checked all the same.

A reading, signed or not, is used only while its ``t`` is within ``site.meter.stale_s`` of
the site's clock (and, signed, at most ``auth.max_future_s`` ahead as well): the freshness is
judged before a signed reading's time is kept as the key's last, so a reading that would not
be used never blocks the ones after it.

Every refusal is counted (``meter_rejected`` and ``meter_rejected:<reason>``, exported as
``gridtao_site_meter_rejected_total{reason}``) and logged at a bounded rate per reason: the
first of each reason in each ``LOG_INTERVAL_S`` (on the monotonic clock: a wall clock set back
silences nothing), with the count of that reason refused since its line before. A flood of one
reason therefore never hides another. A refused reading changes nothing. Not thread-safe: the
coordinator's loop owns it. Times in Unix seconds (``wall``) and monotonic seconds (``now``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from gridtao.config.agent import Config
from gridtao.security.auth import REASON_LABELS as AUTH_LABELS
from gridtao.security.auth import SIG_FIELD, AuthRejected, SampleOrder, Verifier, check_fresh
from gridtao.wire.messages import MessageRejected, decode_object
from gridtao.wire.site import MeterReading, meter_from

__all__ = ["LOG_INTERVAL_S", "MALFORMED", "REASON_LABELS", "MeterGate", "meter_signers",
           "meter_unsignable"]

log = logging.getLogger("gridtao.site")

#: At most one refusal log line per this many seconds (the rest are counted in the next one).
LOG_INTERVAL_S: Final = 60.0
#: A reading that is not ``{"t", "w"}`` as the wire contract says.
MALFORMED: Final = "malformed"
#: Every reason a reading is refused for (``gridtao_site_meter_rejected_total{reason}``).
REASON_LABELS: Final = (MALFORMED, *(label for label in AUTH_LABELS
                                     if label != "replay_store_full"))


def meter_signers(config: Config) -> list[str]:
    """The key ids that may sign a meter reading (none with ``auth.mode: none``)."""
    if config.auth.mode == "none":
        return []
    return sorted(key.kid for key in config.auth.keys if "meter" in key.topics)


def meter_unsignable(config: Config) -> str | None:
    """Why every meter reading will be refused, or None: signed mode requires signed readings
    and no key may sign ``meter``. A warning, not an error: the site still works on its
    facility model alone."""
    if config.auth.mode == "none" or not config.site.meter.require_signed:
        return None
    if meter_signers(config):
        return None
    return ("auth.keys: no key may sign the meter topic, and site.meter.require_signed is "
            "true: every meter reading will be refused, so meter-level events use the "
            "facility model alone; list the meter gateway's key with topics [meter], or set "
            "site.meter.require_signed: false")


class MeterGate:
    """Admits the site meter's readings (see the module docstring)."""

    def __init__(self, config: Config, verifier: Verifier | None, *, max_bytes: int,
                 count: Callable[[str], None]) -> None:
        """``verifier`` None: readings are not signed (``auth.mode: none``); ``count`` is
        the coordinator's counter."""
        self._verifier = verifier
        self._required = config.site.meter.require_signed
        self._max_age_s = config.site.meter.stale_s
        self._max_future_s = config.auth.max_future_s
        self._max_bytes = max_bytes
        self._count = count
        self._order = SampleOrder()
        self._logged_at: dict[str, float] = {}  # per reason: monotonic s of its last line
        self._unlogged: dict[str, int] = {}  # per reason: refused since that line

    def admit(self, payload: bytes, wall: float, now: float) -> MeterReading | None:
        """The reading in ``payload`` when it may be used, else None (counted and logged).
        ``wall``: the site's clock (Unix s); ``now``: its monotonic clock (s)."""
        try:
            data = decode_object(payload, max_bytes=self._max_bytes)
            reading = meter_from(data)
        except MessageRejected as e:
            self._refuse(MALFORMED, e.reason, now)
            return None
        verifier = self._verifier
        if verifier is not None and not (SIG_FIELD in data or self._required):
            verifier = None  # unsigned, and unsigned readings allowed: judged on time alone
        signed = verifier is not None
        try:
            kid = verifier.authenticate("meter", data) if verifier is not None else None
            # A reading further from now than stale_s is never used: refused here, before a
            # signed one's time becomes its key's last.
            check_fresh(reading.t, "t", wall, max_age_s=self._max_age_s,
                        max_future_s=(min(self._max_future_s, self._max_age_s)
                                      if kid is not None else self._max_age_s))
            if kid is not None:
                self._order.check(kid, reading.t)
        except AuthRejected as e:
            self._refuse(e.label, f"auth: {e.reason}" if signed else e.reason, now)
            return None
        if kid is not None:
            self._order.accept(kid, reading.t)
        return reading

    def _refuse(self, label: str, reason: str, now: float) -> None:
        self._count("meter_rejected")
        self._count(f"meter_rejected:{label}")
        last = self._logged_at.get(label)
        if last is not None and now - last < LOG_INTERVAL_S:
            self._unlogged[label] = self._unlogged.get(label, 0) + 1
            return
        more = self._unlogged.pop(label, 0)
        log.warning("meter reading refused: %s%s", reason,
                    f" ({more} more refused for the same reason since its last line)"
                    if more else "")
        self._logged_at[label] = now
