"""What a refused message may cost: unproven input must never cost what a proven sender needs.

Every refused dispatch used to get an ack and a log line. Under a flood of junk (20,000 invalid
dispatches, 10,000 invalid frequency samples a second) that meant 20,000 acks competing with the
genuine activations' acks for the outbox and the broker, and as many log lines. A
:class:`RejectionGate` keeps both bounded:

- **Acks.** A refused message that no signature vouches for (malformed, unsigned, badly signed,
  over the rate limit, or anything at all under ``auth.mode: none``) is acked only while a token
  bucket allows (``acks_per_s``, ``ack_burst``); past it the refusal is counted
  (``gridtao_acks_suppressed_total``) but not acked. A refusal of a message whose signature
  verified is always acked: that sender proved who it is and is owed the reason.
- **Log lines.** The first ``log_lines`` refusals of each ``interval_s`` are logged one by one;
  the rest are tallied and summed up in one line (count and the commonest reasons) when the
  interval ends, so a flood shows as a few lines a minute, not thousands a second.
- **Audit records.** Refusals of unproven input are recorded one by one within their own
  budget (``records_per_s``, ``record_burst``); past it they are only counted, and the intake
  writes one ``rejections_unrecorded`` record with the count when the interval ends. A record
  costs tens of microseconds of the lane's time, which a flood must not be able to buy.

Counting (``gridtao_messages_total{result="rejected"}``) is unaffected: every refusal counts.
Single-threaded: the island lane's thread owns it. Times are monotonic seconds.
"""

from __future__ import annotations

import collections
import logging

from gridtao.security.bounds import TokenBucket

__all__ = ["RejectionGate"]

log = logging.getLogger("gridtao.intake")

#: Reasons carry ids and numbers; the summary groups them by their first words.
REASON_KEY_CHARS = 48


class RejectionGate:
    """Rate limits reject acks for unproven input and coalesces refusal log lines."""

    def __init__(self, *, acks_per_s: float = 10.0, ack_burst: int = 50, log_lines: int = 10,
                 interval_s: float = 10.0, records_per_s: float = 20.0,
                 record_burst: int = 200) -> None:
        if (acks_per_s <= 0 or ack_burst < 1 or log_lines < 0 or interval_s <= 0
                or records_per_s <= 0 or record_burst < 1):
            raise ValueError("need acks_per_s, records_per_s > 0, ack_burst, record_burst >= 1, "
                             "log_lines >= 0, interval_s > 0")
        self._acks = TokenBucket(acks_per_s, ack_burst)
        self._records = TokenBucket(records_per_s, record_burst)
        #: Refusals counted but not recorded one by one, since the last summary.
        self.unrecorded = 0
        self._summary_due = False  # an interval ended: the unrecorded count goes out
        self._log_lines = log_lines
        self._interval_s = interval_s
        self._window_start: float | None = None
        self._logged = 0
        self._tally: collections.Counter[str] = collections.Counter()
        #: Refusals counted but not acked (since start).
        self.suppressed_acks = 0

    def ack_allowed(self, now_s: float, *, proven: bool) -> bool:
        """Whether to ack a refusal now. ``proven``: its signature verified (always acked)."""
        if proven or self._acks.take(now_s):
            return True
        self.suppressed_acks += 1
        return False

    def record_allowed(self, now_s: float, *, proven: bool) -> bool:
        """Whether to write this refusal's audit record now (else it is only counted)."""
        if proven or self._records.take(now_s):
            return True
        self.unrecorded += 1
        return False

    def take_unrecorded(self) -> int:
        """Once an interval has ended (:meth:`flush`), the refusals counted but not recorded
        until then, for one summary record; else 0 (they wait for the interval's end)."""
        if not self._summary_due:
            return 0
        self._summary_due = False
        n, self.unrecorded = self.unrecorded, 0
        return n

    def log(self, what: str, reason: str, now_s: float) -> None:
        """Log one refusal (``what``: e.g. ``dispatch 'id-7'``), or tally it in a flood."""
        self.flush(now_s)
        if self._window_start is None:
            self._window_start = now_s
        if self._logged < self._log_lines:
            self._logged += 1
            log.info("%s rejected: %s", what, reason)
            return
        self._tally[reason[:REASON_KEY_CHARS]] += 1

    def flush(self, now_s: float) -> None:
        """End the interval if it is over: one summary line for what was tallied (call from
        the lane's tick too, so the last burst of a flood is reported when it stops)."""
        if self._window_start is None or now_s - self._window_start < self._interval_s:
            return
        if self._tally:
            top = ", ".join(f"{n} x {reason!r}" for reason, n in self._tally.most_common(3))
            log.warning("%d more messages rejected in %.0f s without a line each (%s); "
                        "%d reject acks suppressed since start", sum(self._tally.values()),
                        now_s - self._window_start, top, self.suppressed_acks)
        self._window_start = None
        self._logged = 0
        self._tally.clear()
        self._summary_due = True
