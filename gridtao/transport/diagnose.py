"""Why a broker connection failed, as one line an operator can act on.

aiomqtt reports a failed connection as a bare string (``[code:135] Not authorized``, an OpenSSL
message, or ``Operation timed out``). :func:`diagnose` turns it into a :class:`Diagnosis`: what
went wrong, which configuration key to check, and whether retrying can help without someone
changing something (``persistent``: refused credentials, TLS trust or certificate problems).

Under TLS 1.3 a broker that refuses the client certificate says so in an alert *after* the
handshake, which paho only logs ("failed to receive on socket: ... certificate required") before
aiomqtt times out. :class:`PahoTap` catches that line, and :func:`connected` fails the
connection attempt as soon as it appears, with the alert as the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

import aiomqtt

from gridtao.transport.errors import ConnectRefused
from gridtao.transport.tls import ClientContext

__all__ = ["AttemptLog", "Diagnosis", "PahoTap", "connected", "diagnose"]

_MQTT_LOG = logging.getLogger("mqtt")  # where aiomqtt sends paho's log by default

Kind = Literal["credentials", "acl", "tls", "unreachable", "refused"]

# MQTT v5 CONNACK reason codes (and v3.1.1 return codes 4/5) that mean "who you are".
_CREDENTIAL_CODES = {4, 5, 134, 135, 138, 140}
_UNAVAILABLE_CODES = {3, 136, 137, 159}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """``line``: one sentence naming the broker, the cause and what to check."""

    kind: Kind
    line: str

    @property
    def persistent(self) -> bool:
        """True when only a configuration change (ours or the broker's) can fix it."""
        return self.kind in ("credentials", "acl", "tls")


def _reason(text: str) -> str:
    """An OpenSSL/paho message without its noise: ``[SSL: X] a b (_ssl.c:1006)`` -> ``a b``."""
    text = text.replace("failed to receive on socket: ", "")
    text = re.sub(r"\[SSL: [A-Z0-9_]+\]\s*", "", text)
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)
    return text.removeprefix("certificate verify failed: ").strip() or "no reason given"


def diagnose(
    error: BaseException,
    *,
    host: str,
    port: int,
    tls: bool = False,
    username: str | None = None,
    client_cert: bool = False,
    server_name: str | None = None,
) -> Diagnosis:
    """Classify a failed connection attempt to ``host:port`` (see the module docstring)."""
    where = f"{host}:{port}"
    text = str(error) or type(error).__name__
    low = text.lower()
    rc = getattr(error, "rc", None)
    code = getattr(rc, "value", rc)
    if isinstance(error, ConnectRefused) and isinstance(rc, int):  # no MQTT v5 code: as said
        return Diagnosis("refused", f"broker {where} refused the connection ({text})")
    # A refused CONNECT: aiomqtt exports no class of its own for it, so any code error with
    # an integer reason code (the CONNACK's) is read as one.
    if isinstance(error, aiomqtt.MqttCodeError | ConnectRefused) and isinstance(code, int):
        reason = _reason(str(rc)) if rc is not None else text
        if code in _CREDENTIAL_CODES:
            if username is None and not client_cert:
                hint = "the broker wants credentials: set mqtt.username and mqtt.password_file"
            elif username is None:
                hint = ("check the client certificate's identity (mqtt.tls.cert_file) and the "
                        "broker's user list")
            else:
                hint = "check mqtt.username / mqtt.password_file"
            return Diagnosis("credentials",
                             f"broker {where} refused the credentials ({reason.lower()}): {hint}")
        kind: Kind = "unreachable" if code in _UNAVAILABLE_CODES else "refused"
        return Diagnosis(kind, f"broker {where} refused the connection ({reason})")
    if "refused subscription" in low:
        return Diagnosis("acl", f"broker {where} {text.removeprefix('broker ')}: check the "
                                "broker's ACL for mqtt.username")
    reason = _reason(text)
    if "certificate verify failed" in low:
        return Diagnosis("tls", _server_cert_line(where, reason, server_name or host))
    if "alert" in low:
        return Diagnosis("tls", _alert_line(where, reason, client_cert))
    if tls and any(s in low for s in ("wrong version number", "record layer failure",
                                      "packet length too long", "violation of protocol",
                                      "unexpected eof", "connection reset")):
        # Not persistent: a broker that stops mid-handshake looks the same as a plain listener.
        return Diagnosis("unreachable", f"TLS: no TLS handshake with broker {where} ({reason}): "
                                        "is mqtt.port a TLS listener?")
    if not tls and any(s in low for s in ("timed out", "connection reset", "unexpected eof")):
        return Diagnosis("unreachable", f"cannot connect to MQTT broker {where} ({reason}); if "
                                        "it is a TLS listener, set mqtt.tls.enabled")
    return Diagnosis("unreachable", f"cannot connect to MQTT broker {where} ({reason})")


def _server_cert_line(where: str, reason: str, name: str) -> str:
    low = reason.lower()
    if "expired" in low:
        return (f"TLS: broker {where} presented an expired certificate ({reason}): renew the "
                "broker's certificate (or check this host's clock)")
    if "not yet valid" in low:
        return (f"TLS: broker {where} presented a certificate that is not yet valid: check "
                "this host's clock")
    if "mismatch" in low or "doesn't match" in low:
        return (f"TLS: broker {where}'s certificate does not name {name!r} ({reason}): set "
                "mqtt.tls.server_hostname to a name in its certificate, or fix the certificate")
    if "issuer" in low or "self-signed" in low or "self signed" in low or "first cert" in low:
        return (f"TLS: broker {where}'s certificate is not signed by a trusted CA ({reason}): "
                "check mqtt.tls.ca_file")
    return (f"TLS: broker {where}'s certificate failed verification ({reason}): check "
            "mqtt.tls.ca_file")


def _alert_line(where: str, reason: str, client_cert: bool) -> str:
    low = reason.lower()
    if not client_cert and ("certificate required" in low or "handshake failure" in low):
        return (f"TLS: broker {where} requires a client certificate ({reason}): set "
                "mqtt.tls.cert_file and mqtt.tls.key_file")
    if "certificate expired" in low:
        return (f"TLS: broker {where} refused our client certificate: it has expired "
                f"({reason}): renew mqtt.tls.cert_file")
    if "unknown ca" in low:
        return (f"TLS: broker {where} does not trust the CA of our client certificate "
                f"({reason}): check mqtt.tls.cert_file or the broker's cafile")
    if "protocol version" in low:
        return (f"TLS: broker {where} and this client share no TLS version ({reason}): check "
                "mqtt.tls.min_version and the broker's tls_version")
    if client_cert and ("bad certificate" in low or "revoked" in low or "unsupported" in low):
        return (f"TLS: broker {where} refused our client certificate ({reason}): check "
                "mqtt.tls.cert_file")
    return f"TLS: broker {where} ended the handshake ({reason}): check mqtt.tls"


class AttemptLog:
    """How a link reports its failed connection attempts.

    A persistent problem (refused credentials, ACL, TLS) is logged at error level when it
    appears and then at most every ``interval_s`` (``clock``, s) while it lasts; an unreachable
    broker once as a warning (unless ``quiet``: the link already said the connection was lost).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        username: str | None,
        interval_s: float,
        clock: Callable[[], float],
        prefix: str = "",
    ) -> None:
        self._log = logger
        self._prefix = prefix  # names the connection in each line (Supervised.log_prefix)
        self._where = (host, port)
        ctx = tls if isinstance(tls, ClientContext) else None
        self._tls = tls is not None
        self._username = username
        self._client_cert = ctx is not None and ctx.has_client_cert
        self._server_name = ctx.verify_name if ctx is not None else None
        self._interval_s = interval_s
        self._clock = clock
        self.problem: Diagnosis | None = None
        self.attempts = 0  # consecutive attempts that failed with ``problem``
        self.refused = 0  # attempts with a persistent problem since the link was last up
        self._logged_at = -math.inf

    def diagnose(self, error: BaseException) -> Diagnosis:
        """:func:`diagnose` with this link's address and credentials."""
        host, port = self._where
        return diagnose(error, host=host, port=port, tls=self._tls, username=self._username,
                        client_cert=self._client_cert, server_name=self._server_name)

    def failed(self, error: BaseException, quiet: bool) -> bool:
        """Record and log a failed attempt; returns the new ``quiet`` (True)."""
        problem = self.diagnose(error)
        previous, self.problem = self.problem, problem
        same = previous is not None and previous.line == problem.line
        self.attempts = self.attempts + 1 if same else 1
        if problem.persistent:
            self.refused += 1
            now = self._clock()
            if not same or now - self._logged_at >= self._interval_s:
                self._logged_at = now
                tries = "first attempt" if self.attempts == 1 else f"{self.attempts} attempts"
                self._log.error("%s%s (%s); retrying with backoff", self._prefix, problem.line,
                                tries)
        elif not quiet or (previous is not None and previous.persistent):
            self._log.warning("%s%s; retrying", self._prefix, problem.line)
        return True

    def connected(self) -> None:
        """The link is up: say so if it had been refused, and forget the problem."""
        if self.refused:
            host, port = self._where
            self._log.warning("%sMQTT connected to %s:%d after %d refused attempt(s)",
                              self._prefix, host, port, self.refused)
        self.problem = None
        self.attempts = self.refused = 0


#: aiomqtt's warning when its bounded incoming queue drops a message.
QUEUE_FULL = "Message queue is full. Discarding message."


class PahoTap(logging.Logger):
    """paho's logger for one connection: keeps its last socket error (set ``failed``) and hands
    every other record to the ``mqtt`` logger. Unregistered: it goes with its connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *,
                 on_discard: Callable[[], None] | None = None) -> None:
        super().__init__("mqtt")
        self.last_error: str | None = None
        self.failed = asyncio.Event()
        self._loop = loop
        # aiomqtt's "queue is full" warning, once per dropped message in a flood: counted.
        self._on_discard = on_discard

    def isEnabledFor(self, level: int) -> bool:
        # WARNING always, when counting aiomqtt's discards (its queue-full warning).
        return (level >= logging.ERROR or _MQTT_LOG.isEnabledFor(level)
                or (self._on_discard is not None and level == logging.WARNING))

    def handle(self, record: logging.LogRecord) -> None:
        if self._on_discard is not None and record.msg == QUEUE_FULL:
            self._on_discard()
            return
        if record.levelno >= logging.ERROR and record.exc_info is None:
            # A socket error: reported once, in the link's own words, with this as the cause.
            self.last_error = record.getMessage()
            _MQTT_LOG.debug("%s", self.last_error)
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(self.failed.set)
            return
        if _MQTT_LOG.isEnabledFor(record.levelno):
            _MQTT_LOG.handle(record)


async def _enter(client: aiomqtt.Client, tap: PahoTap) -> None:
    entering = asyncio.ensure_future(client.__aenter__())
    failing = asyncio.ensure_future(tap.failed.wait())
    try:
        await asyncio.wait((entering, failing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        failing.cancel()
        if not entering.done():
            entering.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError, AttributeError):
                await entering
    if not entering.cancelled():
        try:
            entering.result()  # connected, or aiomqtt's own MqttError
        except AttributeError as e:
            # aiomqtt 2.5 registers paho's socket for writing from the connect thread; when the
            # broker closes the connection at once (a TLS 1.3 alert for a missing client
            # certificate), paho has already dropped the socket and aiomqtt calls
            # None.fileno(). It is a refused connection, not a bug of ours: say what paho saw.
            raise aiomqtt.MqttError(tap.last_error or "connection closed during the handshake"
                                    ) from e
        return
    raise aiomqtt.MqttError(tap.last_error or "connection lost during the handshake")


@contextlib.asynccontextmanager
async def connected(client: aiomqtt.Client, tap: PahoTap) -> AsyncIterator[aiomqtt.Client]:
    """``async with client`` that fails fast when paho reports a socket error while connecting
    (``tap`` must be ``client``'s logger)."""
    await _enter(client, tap)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_exit(client)
        yield client
