"""What every broker connection of the agent shares: supervision, credentials and the inbox.

:class:`Supervised` owns one connection for the life of the process. :meth:`Supervised.run`
calls the subclass's ``_session()`` (connect, subscribe, serve; it returns only by raising),
and after a lost connection or a failed attempt reconnects with exponential backoff and full
jitter in ``[reconnect_min_s, reconnect_max_s]``. Failed attempts are logged as one line naming
the cause (transport/diagnose.py). Received messages go to a bounded inbox that drops the
oldest when full (counted): to a controller the newest message is the useful one.

Two subclasses: :class:`~gridtao.transport.mqtt.MqttLink` (aiomqtt: publishing and
subscribing) and :class:`~gridtao.transport.receiver.MqttReceiver` (receive-only, for the
island's inbound traffic). A connection is bound to the event loop that runs it; nothing here
assumes the main thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from gridtao.clock import Clock, MonotonicClock
from gridtao.config.agent import MqttConfig
from gridtao.transport.diagnose import AttemptLog, Diagnosis
from gridtao.transport.errors import ConnectionLost

__all__ = ["InboundMessage", "LinkStats", "Supervised", "check_qos"]

log = logging.getLogger("gridtao.transport.mqtt")

_Conn = TypeVar("_Conn", bound="Supervised")


class InboundMessage(NamedTuple):
    """A received message; ``received_at`` is ``clock.now()`` (monotonic s) when the link took it
    from the socket, ``received_wall`` is ``clock.wall()`` (Unix s) at the same moment. A named
    tuple: one is made for every message of a flood, at a fifth of a frozen dataclass's cost."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float
    received_wall: float


@dataclass(slots=True)
class LinkStats:
    """Counters since the link was created. Plain ints written on the link's loop; other
    threads (the metrics collector at scrape time) read them without a lock, which is safe for
    ints and may lag by one increment."""

    connects: int = 0  # successful connections, the first included
    reconnects: int = 0  # successful connections after the first
    losses: int = 0  # established connections that ended in an error
    received: int = 0
    published: int = 0
    dropped_outbound: int = 0  # outbox overflow, or QoS 0 message cut off by a connection loss
    dropped_inbound: int = 0  # inbox overflow (oldest message discarded)
    refused: int = 0  # attempts refused for credentials, ACL or TLS (Diagnosis.persistent)


def check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS must be 0, 1 or 2, got {qos!r}")


class Supervised:
    """A supervised broker connection; subclasses implement ``_session()`` and may extend
    ``_lost_errors`` (the exceptions that mean "the connection failed or ended")."""

    _lost_errors: tuple[type[BaseException], ...] = (ConnectionLost, OSError)

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]] = (),
        keepalive_s: int = 10,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        clock: Clock | None = None,
        max_inbound: int = 10_000,
        op_timeout_s: float = 10.0,
        rng: random.Random | None = None,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        error_log_interval_s: float = 60.0,
        max_packet_bytes: int | None = None,
        retained_topics: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        if keepalive_s < 1:
            raise ValueError("keepalive_s must be >= 1")
        if max_inbound < 1:
            raise ValueError("max_inbound must be >= 1")
        for _, qos in subscriptions:
            check_qos(qos)
        self.host = host
        self.port = port
        self.client_id = client_id
        #: What the connection is for (e.g. ``dispatch``): its log lines start with it, so a
        #: process with several connections to one broker says which one a line is about.
        self.name = name
        self.log_prefix = f"[{name}] " if name else ""
        self.subscriptions = tuple(subscriptions)
        #: Subscriptions whose retained message the broker may send on subscribing (state, not
        #: commands: every other subscription asks for none).
        self.retained_topics = frozenset(retained_topics)
        self.keepalive_s = keepalive_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.op_timeout_s = op_timeout_s
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._rng = rng if rng is not None else random.Random()
        self.error_log_interval_s = error_log_interval_s
        # MQTT v5 Maximum Packet Size: the broker never sends a larger packet (it drops it), so
        # an oversize flood costs the broker, not this process's memory.
        self.max_packet_bytes = max_packet_bytes
        self.set_credentials(tls=tls, username=username, password=password)

        self.connected = asyncio.Event()
        self.stats = LinkStats()
        self._inbox: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=max_inbound)
        #: Called on the link's loop after each message lands in the inbox (a reader that
        #: serves several links waits on one event instead of a getter per link).
        self.on_inbound: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._was_up = False  # whether the current/last session got as far as `connected`

    @classmethod
    def for_broker(cls: type[_Conn], mqtt: MqttConfig, *, client_id: str,
                   tls: ssl.SSLContext | None, password: str | None, clock: Clock | None = None,
                   **options: Any) -> _Conn:
        """A connection to the broker ``mqtt`` names, with its connection settings (keepalive,
        reconnect backoff, user name, error log interval); ``tls`` and ``password`` as read
        from its files (gridtao/transport/tls.py); ``options``: the other constructor
        arguments (subscriptions, will, bounds)."""
        return cls(host=mqtt.host, port=mqtt.port, client_id=client_id,
                   keepalive_s=mqtt.keepalive_s, reconnect_min_s=mqtt.reconnect_min_s,
                   reconnect_max_s=mqtt.reconnect_max_s, tls=tls, username=mqtt.username,
                   password=password, error_log_interval_s=mqtt.error_log_interval_s,
                   clock=clock, **options)

    # ---- credentials -----------------------------------------------------------------------

    def set_credentials(
        self, *, tls: ssl.SSLContext | None, username: str | None, password: str | None
    ) -> None:
        """Broker credentials (TLS context, MQTT user and password) for the next connection on;
        a connection that is up keeps its session. Thread-safe: one atomic swap."""
        self._credentials = (tls, username, password)
        self._attempts = AttemptLog(log, host=self.host, port=self.port, tls=tls,
                                    username=username, interval_s=self.error_log_interval_s,
                                    clock=self._clock.now, prefix=self.log_prefix)

    @property
    def tls(self) -> ssl.SSLContext | None:
        return self._credentials[0]

    @property
    def problem(self) -> Diagnosis | None:
        """Why the last connection attempt failed; None once connected."""
        return self._attempts.problem

    @property
    def is_connected(self) -> bool:
        """Connection state as a plain bool (safe to read from other threads)."""
        return self.connected.is_set()

    # ---- receiving -------------------------------------------------------------------------

    async def get(self) -> InboundMessage:
        """The next received message (waits; survives reconnections)."""
        return await self._inbox.get()

    def poll(self) -> InboundMessage | None:
        """The next received message if one is waiting, else None (never waits)."""
        try:
            return self._inbox.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def messages(self) -> AsyncIterator[InboundMessage]:
        """Iterate over received messages forever."""
        while True:
            yield await self._inbox.get()

    def _deliver(self, inbound: InboundMessage) -> None:
        """Put a received message in the inbox (the oldest goes when it is full)."""
        inbox = self._inbox
        self.stats.received += 1
        if inbox.full():
            inbox.get_nowait()
            self.stats.dropped_inbound += 1
        inbox.put_nowait(inbound)
        if self.on_inbound is not None:
            self.on_inbound()

    # ---- supervision -----------------------------------------------------------------------

    def backoff_s(self, attempt: int) -> float:
        """Delay before reconnection attempt ``attempt`` (0-based): uniform in
        [min, min(max, min * 2**attempt)]."""
        ceiling = min(self.reconnect_max_s, self.reconnect_min_s * 2.0 ** min(attempt, 60))
        return self._rng.uniform(self.reconnect_min_s, ceiling)

    def _connected_now(self) -> None:
        """Bookkeeping once a session is up (subscribed): counters, log, ``connected``."""
        self.stats.connects += 1
        self._attempts.connected()
        if self.stats.connects > 1:
            self.stats.reconnects += 1
            log.info("%sMQTT reconnected to %s:%d", self.log_prefix, self.host, self.port)
        self._was_up = True
        self.connected.set()

    def _detail(self) -> str | None:
        """More about the last failure than its exception says (a subclass's socket log)."""
        return None

    def _lost_reason(self, error: BaseException) -> str:
        """Why a session ended, in words, with its cause (a subclass may word its library's
        errors)."""
        reason = str(error) or type(error).__name__
        return reason if error.__cause__ is None else f"{reason}: {error.__cause__}"

    async def _session(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    async def run(self) -> None:
        """Supervise the connection until cancelled; it never returns otherwise.

        Each lost connection is logged once (warning); failed attempts while the broker stays
        away are logged at debug level after the first.
        """
        if self._running:
            raise RuntimeError(f"{type(self).__name__}.run() is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        attempt = 0
        quiet = False
        try:
            while True:
                try:
                    self._was_up = False
                    await self._session()
                except self._lost_errors as e:
                    _raise_if_stopping(e)
                    reason = self._lost_reason(e)
                    detail = self._detail()
                    if detail and detail not in reason:
                        reason = f"{reason} ({detail})"
                    if self._was_up:
                        self.stats.losses += 1
                        log.warning("%sMQTT connection to %s:%d lost (%s); reconnecting",
                                    self.log_prefix, self.host, self.port, reason)
                        attempt = 0
                        quiet = True
                    else:
                        quiet = self._attempts.failed(e, quiet)
                        if self.problem is not None and self.problem.persistent:
                            self.stats.refused += 1
                        log.debug("%sMQTT connect to %s:%d failed: %s", self.log_prefix, self.host,
                                  self.port, reason)
                except Exception as e:
                    _raise_if_stopping(e)
                    # A bug must not leave the node deaf to the grid: log it loudly and reconnect.
                    self.stats.losses += 1
                    log.exception("%sMQTT link to %s:%d failed unexpectedly", self.log_prefix,
                                  self.host, self.port)
                    quiet = True
                await asyncio.sleep(self.backoff_s(attempt))
                attempt += 1
        finally:
            self.connected.clear()
            self._running = False
            self._loop = None


def _raise_if_stopping(error: BaseException) -> None:
    """Re-raise the cancellation ``error`` stands in for: a library may turn the cancellation
    of a stop into an error of its own while closing (a disconnect that fails on the way out),
    and a link that took that for a lost connection would go on reconnecting after its owner
    stopped it, on a loop about to be closed under it. With no loop running, the coroutine is
    being closed (collected after its loop closed): it ends quietly instead of raising."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: close() threw GeneratorExit in, and so it ends
        raise GeneratorExit from error
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from error
