"""An OpenADR 3.0.1 VEN over plain HTTP (aiohttp): poll the VTN's programs and events.

Every ``vtn.poll_s`` (default 10 s) :class:`Oadr3Poller` reads ``GET {url}/programs`` and
``GET {url}/events`` (paged with ``skip``/``limit``), with a bearer token from the OAuth2
client-credentials grant (``vtn.client_id``, ``vtn.client_secret_file``, ``vtn.token_url``;
without ``client_id`` no token is sent). Each event is checked against the 3.0.1 schema
(:mod:`._oadr3`); its dispatch payload goes through the same decisions and dispatches as a 2.0b
event (:meth:`~gridtao.openadr._handler.EventHandler.handle_event`), a changed event (any
change to its JSON) is a modification, and an event no longer listed is cancelled. ``PRICE``
and ``GHG`` intervals become the planner's signals document, checked with the planner's own
reader and published retained on ``{prefix}/signals`` when it changes.

OpenADR 3 has no opt-in message: the decision is audited and logged, not sent. Reports are not
posted. Failures are reported through ``on_fault`` (the 2.0b labels) and retried with the
same backoff. Runs on the bridge's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp

from gridtao.clock import Clock
from gridtao.openadr._config import BridgeConfig
from gridtao.openadr._events import EventRejected
from gridtao.openadr._handler import EventHandler
from gridtao.openadr._oadr3 import (
    Program3,
    check_event,
    check_program,
    signal_series,
    to_oadr_event,
)
from gridtao.openadr._tls import client_ssl, read_passphrase
from gridtao.tier3.signals import SignalError, parse_signals

__all__ = ["Oadr3Poller", "signals_document"]

log = logging.getLogger("gridtao.openadr.oadr3")

PAGE: Final = 50
MAX_PAGES: Final = 20
DEFAULT_POLL_S: Final = 10.0
MAX_REMEMBERED: Final = 10_000


class _Fault(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def signals_document(series: Mapping[str, tuple[float, float, list[float | None]]], *,
                     issued_at: float, source: str) -> dict[str, object]:
    """The planner's normalized signals document (version 1) for ``series``."""
    doc: dict[str, object] = {
        "version": 1, "source": source,
        "issued_at": datetime.fromtimestamp(issued_at, UTC).isoformat()}
    for name, (start, step, values) in series.items():
        doc[name] = {"start": start, "mtu_s": int(step), "values": values}
    return doc


class Oadr3Poller:
    """``publish_signals(payload)`` sends the signals document (retained)."""

    def __init__(self, config: BridgeConfig, *, handler: EventHandler, clock: Clock,
                 rng: random.Random, on_fault: Callable[[str, str], None],
                 publish_signals: Callable[[bytes], None],
                 on_polled: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self._handler = handler
        self._clock = clock
        self._rng = rng
        self._on_fault = on_fault
        self._publish_signals = publish_signals
        self._on_polled = on_polled
        self._versions: dict[str, tuple[str, int]] = {}  # event id -> (digest, version)
        self._bad: dict[str, str] = {}  # object -> digest of its version reported unusable
        self._token: str | None = None
        self._last_series: str | None = None
        self.polls = 0

    def backoff_s(self, attempt: int) -> float:
        vtn = self.config.vtn
        ceiling = min(vtn.retry_max_s, vtn.retry_min_s * 2.0 ** min(attempt, 60))
        return self._rng.uniform(vtn.retry_min_s, ceiling)

    async def run(self) -> None:
        """Poll until cancelled."""
        vtn = self.config.vtn
        timeout = aiohttp.ClientTimeout(total=vtn.request_timeout_s)
        tls = client_ssl(self.config, read_passphrase(self.config))
        connector = aiohttp.TCPConnector(ssl=tls) if tls is not None else None
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            failures = 0
            while True:
                try:
                    await self.poll_once(session)
                except _Fault as f:
                    self._on_fault(f.reason, f.detail)
                    if f.reason in ("http_status", "not_registered"):
                        self._token = None  # an expired token: fetch a new one
                    await asyncio.sleep(self.backoff_s(failures))
                    failures += 1
                    continue
                failures = 0
                await asyncio.sleep(vtn.poll_s or DEFAULT_POLL_S)

    async def _token_header(self, session: aiohttp.ClientSession) -> dict[str, str]:
        vtn = self.config.vtn
        if vtn.client_id is None:
            return {}
        if self._token is None:
            secret = _read_secret(vtn.client_secret_file)
            url = vtn.token_url or f"{vtn.url.rstrip('/')}/auth/token"
            body = await self._request(session, "POST", url, data={
                "grant_type": "client_credentials", "client_id": vtn.client_id,
                "client_secret": secret}, what="token")
            token = body.get("access_token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise _Fault("not_registered", "token: no access_token in the reply")
            self._token = token
        return {"Authorization": f"Bearer {self._token}"}

    async def _request(self, session: aiohttp.ClientSession, method: str, url: str, *,
                       what: str, headers: Mapping[str, str] | None = None,
                       params: Mapping[str, str] | None = None,
                       data: Mapping[str, str] | None = None) -> Any:
        limit = self.config.vtn.max_response_bytes
        try:
            async with session.request(method, url, headers=headers, params=params,
                                       data=data) as reply:
                status = reply.status
                content = await reply.content.read(limit + 1)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            raise _Fault("unreachable", f"{what}: {type(e).__name__} {e}") from None
        if status != 200:
            raise _Fault("http_status", f"{what}: HTTP {status}: {content[:120]!r}")
        if len(content) > limit:
            raise _Fault("malformed", f"{what}: reply longer than {limit} bytes")
        try:
            return json.loads(content)
        except (ValueError, RecursionError) as e:
            raise _Fault("malformed", f"{what}: not JSON: {str(e)[:120]}") from None

    async def _list(self, session: aiohttp.ClientSession, path: str) -> list[Any]:
        headers = await self._token_header(session)
        url = f"{self.config.vtn.url.rstrip('/')}/{path}"
        found: list[Any] = []
        for page in range(MAX_PAGES):
            body = await self._request(session, "GET", url, what=path, headers=headers,
                                       params={"skip": str(page * PAGE), "limit": str(PAGE)})
            if not isinstance(body, list):
                raise _Fault("malformed", f"{path}: expected a JSON array")
            found.extend(body)
            if len(body) < PAGE:
                return found
        raise _Fault("malformed", f"{path}: more than {MAX_PAGES * PAGE} objects")

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        """One round: programs, events, decisions, signals. Raises _Fault."""
        programs: dict[str, Program3] = {}
        for raw in await self._list(session, "programs"):
            try:
                program = check_program(raw)
            except EventRejected as e:
                if self._first_time(f"program:{_digest(raw)}", ""):
                    self._on_fault("bad_event", f"program: {e.reason}")
                continue
            programs[program.id] = program
        events = await self._list(session, "events")
        self.polls += 1
        self._on_polled()
        listed: set[str] = set()
        series: dict[str, tuple[float, float, list[float | None]]] = {}
        for raw in events:
            self._one_event(raw, programs, listed, series)
        self._handler.missing(listed)
        for event_id in list(self._versions):
            if event_id not in listed:
                del self._versions[event_id]
        if series:
            self._signals(series)

    def _one_event(self, raw: object, programs: Mapping[str, Program3], listed: set[str],
                   series: dict[str, tuple[float, float, list[float | None]]]) -> None:
        event_id = raw.get("id") if isinstance(raw, dict) else None
        digest = _digest(raw)
        if isinstance(event_id, str):
            listed.add(event_id)  # a held event whose new version is unreadable is kept
        key = event_id if isinstance(event_id, str) else digest
        try:
            event = check_event(raw)
        except EventRejected as e:
            if self._first_time(key, digest):  # each unreadable version once
                self._handler.refuse_unreadable(e)
            return
        program = programs.get(event.program_id)
        if program is None:
            if self._first_time(key, digest):
                self._on_fault("bad_event", f"event {event.id}: program "
                               f"{event.program_id!r} is not among the VTN's programs")
            return
        for name, values in signal_series(event).items():
            series.setdefault(name, values)
        previous = self._versions.get(event.id)
        if previous is not None and previous[0] == digest:
            return
        version = 0 if previous is None else previous[1] + 1
        self._versions[event.id] = (digest, version)
        try:
            converted = to_oadr_event(event, version, program=program.name)
        except EventRejected as e:
            self._handler.refuse_unreadable(e)
            return
        if converted is not None:
            self._handler.handle_event(converted)

    def _first_time(self, key: str, digest: str) -> bool:
        """Whether this version of an unusable object is new (each is reported once)."""
        if self._bad.get(key) == digest:
            return False
        self._bad[key] = digest
        while len(self._bad) > MAX_REMEMBERED:
            del self._bad[next(iter(self._bad))]
        return True

    def _signals(self, series: Mapping[str, tuple[float, float, list[float | None]]]) -> None:
        """Publish the signals document when the series changed (issued now)."""
        key = json.dumps(series, sort_keys=True)
        if key == self._last_series:
            return
        self._last_series = key
        now = self._clock.wall()
        doc = signals_document(series, issued_at=now, source=f"openadr3:{self.config.vtn.url}")
        payload = json.dumps(doc, separators=(",", ":")).encode()
        try:
            parse_signals(payload, now_s=now)
        except SignalError as e:
            self._on_fault("bad_event", f"price/GHG intervals: {e}")
            return
        self._publish_signals(payload)


def _digest(raw: object) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def _read_secret(path: str | None) -> str:
    if path is None:
        raise _Fault("not_registered", "vtn.client_secret_file is not set")
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise _Fault("not_registered", f"cannot read vtn.client_secret_file: {e}") from None
