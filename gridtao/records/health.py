"""Whether a record writer's writes reach the disk: the journal's and the audit trail's health.

Both write on a background thread, so a full or failing disk never raises anywhere an operator
would see it. :class:`WriteHealth` makes it loud while it lasts: one log line when writing starts
failing or fails for a different reason, one when it works again (never one per record), a
running count of failed writes and a status string, read by the retained status
(``"records"``) and Prometheus (gridtao/telemetry/collectors.py, ``RecordsCollector``).
"""

from __future__ import annotations

import errno
import logging
import threading

OK = "ok"
OFF = "off"  # the writer is disabled in the configuration
FAILING = "failing: "


def describe_error(error: BaseException) -> str:
    """A short reason for a failed write that stays the same while the problem does: an
    ``OSError`` as its text and errno name (``"No space left on device (ENOSPC)"``, no file
    name, since temporary names differ), anything else as ``"TypeName: message"``."""
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, str(error.errno))
        return f"{error.strerror or 'error'} ({name})"
    return f"{type(error).__name__}: {error}"


class WriteHealth:
    """The health of one writer (``what``: e.g. ``"journal /var/lib/gridtao/journal-n1.json"``).

    The writer's thread calls :meth:`failed` for every write that fails and :meth:`succeeded`
    after one that reached the OS; any thread reads :attr:`healthy`, :attr:`problem`,
    :attr:`write_errors` and :meth:`status` (a lock guards them; each call is O(1) and does no
    I/O). ``consequence`` is added to the failure's log line (what is lost while it lasts).
    """

    def __init__(self, what: str, *, logger: logging.Logger, consequence: str = "") -> None:
        self.what = what
        self._log = logger
        self._consequence = consequence
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._errors = 0  # failed writes since start
        self._errors_in_episode = 0  # failed writes since writing last worked

    def failed(self, error: BaseException) -> None:
        """One write failed. Logs (at ERROR) only when this starts a failure or changes its
        reason."""
        reason = describe_error(error)
        with self._lock:
            self._errors += 1
            self._errors_in_episode += 1
            changed = reason != self._problem
            self._problem = reason
        if changed:
            tail = f"; {self._consequence}" if self._consequence else ""
            self._log.error("%s: cannot write: %s%s", self.what, reason, tail)

    def succeeded(self) -> None:
        """A write reached the OS. Logs (at WARNING) once if writing had been failing."""
        if self._problem is None:  # the common case: no lock on every healthy write
            return
        with self._lock:
            was, failures = self._problem, self._errors_in_episode
            self._problem = None
            self._errors_in_episode = 0
        if was is not None:
            self._log.warning("%s: writing works again after %d failed writes (last: %s)",
                              self.what, failures, was)

    @property
    def healthy(self) -> bool:
        """False while the latest write failed."""
        with self._lock:
            return self._problem is None

    @property
    def problem(self) -> str | None:
        """Why the latest write failed (:func:`describe_error`), or None while healthy."""
        with self._lock:
            return self._problem

    @property
    def write_errors(self) -> int:
        """Failed writes since start (never goes down)."""
        with self._lock:
            return self._errors

    def status(self) -> str:
        """``"ok"``, or ``"failing: <reason>"`` while the latest write failed."""
        with self._lock:
            problem = self._problem
        return OK if problem is None else FAILING + problem
