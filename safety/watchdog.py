"""Controller heartbeat watchdog: if the controller stops beating, put the GPUs in a safe state.

:meth:`Watchdog.check` holds all the logic and reads only the injected clock, so tests drive it
in virtual time; the thread started by :meth:`Watchdog.start` merely calls it every ``period_s``
of real time. ``on_expire`` runs once per expiry (on the checking thread) and again only after a
new :meth:`heartbeat` re-arms the watchdog; ``on_recover`` runs on the heartbeat's thread when
the first heartbeat after an expiry arrives, never before that expiry's ``on_expire`` has
returned (a heartbeat that lands while it runs waits for it).

A pause of the whole process (SIGSTOP, a VM pause, a long stop-the-world) stops the controller
and the checker alike; on resume the checker may run before the controller has had a chance to
beat. So when the checker finds itself late by more than the timeout (its own previous check
older than ``timeout_s``), the silence was the process's, not the controller's: it logs that,
and gives the controller one more timeout from now to beat, instead of expiring at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .ports import Clock

log = logging.getLogger("gridtao.safety")


class Watchdog:
    """Calls ``on_expire`` when no heartbeat came for more than ``timeout_s`` clock seconds.

    The timeout counts from construction until the first heartbeat, so a controller that never
    starts is caught too. ``period_s`` (default: a quarter of the timeout, at most 0.25 s) is how
    often the thread checks, so expiry is noticed within ``timeout_s + period_s``.
    """

    def __init__(
        self,
        timeout_s: float,
        *,
        clock: Clock,
        on_expire: Callable[[], None],
        period_s: float | None = None,
        on_recover: Callable[[], None] | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self.period_s = period_s if period_s is not None else min(timeout_s / 4, 0.25)
        if not self.period_s > 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s!r}")
        self._clock = clock
        self._on_expire = on_expire
        self._on_recover = on_recover
        self._lock = threading.Lock()
        # Held from an expiry's decision through its on_expire, and by on_recover: a heartbeat
        # landing in between recovers only once the expiry's safe state is in force (else it
        # would leave a safe state not yet entered, and nothing would leave it after).
        self._transition = threading.Lock()
        self._last_beat = clock.now()
        self._last_check: float | None = None  # when check() last ran (pause detection)
        self._pauses = 0
        self._expired = False
        self._expiries = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def expired(self) -> bool:
        """True from an expiry until the next heartbeat."""
        with self._lock:
            return self._expired

    @property
    def expiries(self) -> int:
        """How many times ``on_expire`` has been called."""
        with self._lock:
            return self._expiries

    def heartbeat(self) -> None:
        """The controller is alive; re-arms the watchdog after an expiry."""
        now = self._clock.now()
        with self._lock:
            self._last_beat = now
            recovered = self._expired
            self._expired = False
        if recovered:
            log.warning("watchdog: controller heartbeat is back")
            if self._on_recover is not None:
                with self._transition:
                    try:
                        self._on_recover()
                    except Exception:
                        log.exception("watchdog: the recovery action failed")

    @property
    def pauses(self) -> int:
        """How many whole-process pauses the checker has noticed (and not taken as expiry)."""
        with self._lock:
            return self._pauses

    def check(self) -> bool:
        """Call ``on_expire`` if the last heartbeat is older than ``timeout_s`` and it has not
        been called since; True if it was called now. An exception from ``on_expire`` is logged
        and counts as the call (it is not retried until re-armed)."""
        now = self._clock.now()
        with self._lock:
            last_check, self._last_check = self._last_check, now
            age_s = now - self._last_beat
            if self._expired or age_s <= self.timeout_s:
                return False
            if last_check is not None and now - last_check > self.timeout_s:
                # The checker slept through the timeout too: the process was paused.
                self._last_beat = now
                self._pauses += 1
                paused_s = now - last_check
            else:
                paused_s = None
        if paused_s is not None:
            log.warning("watchdog: this process was paused for %.1f s (the checker too); "
                        "the controller gets %.3f s to beat again", paused_s, self.timeout_s)
            return False
        with self._transition:
            with self._lock:
                self._expired = True
                self._expiries += 1
            log.error("watchdog: no controller heartbeat for %.3f s (limit %.3f s)", age_s,
                      self.timeout_s)
            try:
                self._on_expire()
            except Exception:
                log.exception("watchdog: the expiry action failed")
        return True

    def start(self) -> None:
        """Start the checking thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._last_check = self._clock.now()  # a pause before the first check counts too
            self._thread = threading.Thread(
                target=self._run, name="gridtao-safety-watchdog", daemon=True
            )
            self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the checking thread (idempotent)."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.check()
