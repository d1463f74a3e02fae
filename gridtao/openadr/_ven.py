"""The VEN: openleadr's ``OpenADRClient``, with every exchange checked, counted and retried.

openleadr's client speaks OpenADR 2.0b (XML templates, schema validation, XML signatures,
reports). :class:`GridtaoVen` keeps all of that and changes how it fails:

* each HTTP exchange (:meth:`GridtaoVen._perform_request`) is classified: a VTN that cannot be
  reached, answers an HTTP error, sends something that is not OpenADR 2.0b XML (or more than
  ``vtn.max_response_bytes``), a signature that does not check against ``vtn.vtn_fingerprint``,
  or an OpenADR error code, is reported through ``on_fault(reason, detail)`` (one of
  :data:`~gridtao.openadr._metrics.ERROR_LABELS`) and yields no message at all;
* a distribution of events is checked for the shape openleadr relies on (and for one event id
  listed twice) before openleadr sees it, and the ids it lists go to ``on_listed`` (events no
  longer listed are cancelled);
* a re-registration request or a cancelled registration marks the VEN for registering again
  (openleadr would stop the client or drop its reports).

:class:`VenSession` drives it: registration (retried with exponential backoff and full jitter
between ``vtn.retry_min_s`` and ``vtn.retry_max_s``), report registration, the initial event
sync, then polling at the VTN's requested frequency (``vtn.poll_s`` overrides it); failed polls
back off the same way and, after ``vtn.reregister_after_failures`` in a row, it registers again.

Everything runs on the bridge's event loop (openleadr's report jobs on its AsyncIOScheduler
there too).
"""

from __future__ import annotations

import asyncio
import logging
import random
import warnings
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Final

import aiohttp
from cryptography.utils import CryptographyDeprecationWarning

# openleadr signs with signxml, whose type hints name DSA keys: importing it warns that DSA is
# deprecated on every start, though no DSA key is ever used (RSA and EC only).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning,
                            module=r"signxml(\.|$)")
    from openleadr import OpenADRClient, enums
    from openleadr.messaging import parse_message, validate_xml_schema, validate_xml_signature

from gridtao.clock import Clock
from gridtao.openadr._config import BridgeConfig
from gridtao.openadr._metrics import BridgeMetrics
from gridtao.openadr._tls import client_ssl, read_passphrase

__all__ = ["GridtaoVen", "VenSession"]

log = logging.getLogger("gridtao.openadr.ven")

#: Seconds between clean-ups of openleadr's memory of completed and cancelled events.
CLEANUP_PERIOD_S: Final = 60.0
DEFAULT_POLL_S: Final = 10.0


def _shown(text: object, limit: int = 200) -> str:
    words = " ".join(str(text).split())
    return words if len(words) <= limit else words[: limit - 3] + "..."


class GridtaoVen(OpenADRClient):  # type: ignore[misc]
    """openleadr's client with checked exchanges. ``on_event(event dict) -> 'optIn'|'optOut'``
    answers every event version; ``on_listed(ids)`` gets the ids of each distribution;
    ``on_fault(reason, detail)`` each failed exchange."""

    client_session: aiohttp.ClientSession | None
    registration_id: str | None
    ven_id: str | None

    def __init__(self, config: BridgeConfig, *, on_event: Callable[[object], str],
                 on_listed: Callable[[set[str]], None],
                 on_fault: Callable[[str, str], None]) -> None:
        vtn = config.vtn
        passphrase = read_passphrase(config)
        super().__init__(
            ven_name=vtn.ven_name, vtn_url=vtn.url, cert=vtn.cert_file, key=vtn.key_file,
            passphrase=passphrase, vtn_fingerprint=vtn.vtn_fingerprint, show_fingerprint=False,
            ca_file=vtn.ca_file, ven_id=vtn.ven_id, disable_signature=vtn.cert_file is None,
            check_hostname=vtn.check_hostname)
        self._ssl = client_ssl(config, passphrase)
        self._timeout_s = vtn.request_timeout_s
        self._max_bytes = vtn.max_response_bytes
        self._on_listed = on_listed
        self._on_fault = on_fault
        self.last_fault: str | None = None
        self.needs_registration = True
        self.add_handler("on_event", on_event)
        self.add_handler("on_update_event", on_event)

    async def _ensure_client_session(self) -> None:
        if self.client_session is None or self.client_session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
            self.client_session = aiohttp.ClientSession(
                headers={"content-type": "application/xml"}, connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s))

    def _fail(self, reason: str, detail: str) -> tuple[None, dict[str, Any]]:
        self.last_fault = reason
        self._on_fault(reason, detail)
        return None, {}

    async def _perform_request(self, service: str, message: str) -> tuple[Any, Any]:
        """One exchange with the VTN: ``(message type, payload)``, or ``(None, {})`` after
        reporting why there is none."""
        await self._ensure_client_session()
        session = self.client_session
        assert session is not None
        url = f"{self.vtn_url}/{service}"
        try:
            async with session.post(url, data=message) as reply:
                status = reply.status
                content = await reply.content.read(self._max_bytes + 1)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            return self._fail("unreachable", f"{service}: {type(e).__name__} {_shown(e)}")
        if status != 200:
            return self._fail("http_status", f"{service}: HTTP {status}: {_shown(content, 120)}")
        if len(content) > self._max_bytes:
            return self._fail("malformed", f"{service}: reply longer than "
                              f"{self._max_bytes} bytes (vtn.max_response_bytes)")
        if not content.strip():
            return self._fail("malformed", f"{service}: empty reply")
        try:
            tree = validate_xml_schema(content)
        except Exception as e:  # lxml: not XML, or not the OpenADR 2.0b schema
            return self._fail("malformed", f"{service}: not OpenADR 2.0b XML: {_shown(e)}")
        if self.vtn_fingerprint:
            try:
                validate_xml_signature(tree, cert_fingerprint=self.vtn_fingerprint)
            except Exception as e:
                return self._fail("signature", f"{service}: {type(e).__name__} {_shown(e)}")
        try:
            message_type, payload = parse_message(content)
        except Exception as e:
            return self._fail("malformed", f"{service}: unreadable: {_shown(e)}")
        if not isinstance(payload, dict):
            return self._fail("malformed", f"{service}: {message_type} has no content")
        if message_type == "oadrDistributeEvent":
            problem = _distribution_problem(payload)
            if problem is not None:
                return self._fail("malformed", f"{service}: {problem}")
            self._on_listed({e["event_descriptor"]["event_id"]
                             for e in payload.get("events") or []})
        response = payload.get("response")
        code = response.get("response_code") if isinstance(response, Mapping) else 200
        if code != 200:
            description = response.get("response_description") if isinstance(
                response, Mapping) else None
            self._on_fault("vtn_refused", f"{service}: {message_type} code {code} "
                           f"{_shown(description, 80)}")
            self.last_fault = "vtn_refused"
        return message_type, payload

    async def create_party_reregistration(self, registration_id: Any = None) -> None:
        """The VTN asks the VEN to register again: done by :class:`VenSession`."""
        log.info("the VTN asks for a new registration")
        self.needs_registration = True

    async def on_cancel_party_registration(self, message: Any) -> None:
        """The VTN cancelled the registration: confirm, then register again (backoff)."""
        request_id = message.get("request_id") if isinstance(message, Mapping) else None
        log.warning("the VTN cancelled this VEN's registration; registering again")
        reply = self._create_message(
            "oadrCanceledPartyRegistration",
            response={"response_code": 200, "response_description": "OK",
                      "request_id": request_id},
            ven_id=self.ven_id, registration_id=self.registration_id)
        await self._perform_request("EiRegisterParty", reply)
        self.registration_id = None
        self.needs_registration = True

    def offer_reports(self, config: BridgeConfig, *,
                      it_power: Callable[[], list[tuple[Any, float]]],
                      baseline: Callable[[], list[tuple[Any, float]]],
                      available: Callable[[], list[tuple[Any, float]]]) -> None:
        """Offer the TELEMETRY_USAGE report (report specifier ``gridtao-telemetry``): data
        points ``it_power`` (the nodes' measured IT power, W), and when configured ``baseline``
        and ``available_reduction`` (W); each callback returns ``[(datetime, W)]``, or ``[]``
        while no node reports. The VTN asks for those it wants."""
        reports = config.reports
        if not reports.enabled:
            return
        period = timedelta(seconds=reports.sampling_s)
        points: list[tuple[str, Callable[[], list[tuple[Any, float]]], str, str]] = [
            ("it_power", it_power, enums.READING_TYPE.DIRECT_READ, enums.REPORT_TYPE.USAGE)]
        if reports.baseline:
            points.append(("baseline", baseline, enums.READING_TYPE.PROJECTED,
                           enums.REPORT_TYPE.BASELINE))
        if reports.available_reduction:
            points.append(("available_reduction", available, enums.READING_TYPE.PROJECTED,
                           "x-availableReduction"))
        for r_id, callback, reading_type, report_type in points:
            self.add_report(callback, config.report_resource_id, measurement="real_power",
                            unit="W", report_specifier_id="gridtao-telemetry", r_id=r_id,
                            reading_type=reading_type, report_type=report_type,
                            sampling_rate=period, report_duration=timedelta(hours=1))

    async def close(self) -> None:
        """Stop the report jobs and the HTTP session (idempotent)."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.report_queue_task is not None:
            self.report_queue_task.cancel()
        if self.client_session is not None and not self.client_session.closed:
            await self.client_session.close()


def _distribution_problem(payload: Mapping[str, Any]) -> str | None:
    """What makes an oadrDistributeEvent unusable to openleadr, or None."""
    events = payload.get("events")
    if events is None:
        return None
    if not isinstance(events, list):
        return "oadrDistributeEvent: events is not a list"
    seen: set[str] = set()
    for k, event in enumerate(events):
        descriptor = event.get("event_descriptor") if isinstance(event, Mapping) else None
        event_id = descriptor.get("event_id") if isinstance(descriptor, Mapping) else None
        if not isinstance(event_id, str) or not isinstance(
                descriptor.get("modification_number"), int):  # type: ignore[union-attr]
            return f"oadrDistributeEvent: event {k} has no id or modification number"
        for key in ("event_signals", "active_period", "response_required"):
            if key not in event:
                return f"oadrDistributeEvent: event {event_id[:64]!r} has no {key}"
        if event_id in seen:
            return f"oadrDistributeEvent lists event {event_id[:64]!r} twice"
        seen.add(event_id)
    for key in ("request_id", "vtn_id"):
        if not isinstance(payload.get(key), str):
            return f"oadrDistributeEvent has no {key}"
    return None


class VenSession:
    """Registers ``ven`` and polls until cancelled. ``on_registered(ven_id)`` after each
    registration."""

    def __init__(self, ven: GridtaoVen, config: BridgeConfig, *, clock: Clock,
                 rng: random.Random, metrics: BridgeMetrics,
                 on_registered: Callable[[str | None, str | None], None]) -> None:
        self.ven = ven
        self.config = config
        self._clock = clock
        self._rng = rng
        self._metrics = metrics
        self._on_registered = on_registered
        self.registrations = 0

    def backoff_s(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (0-based), s: uniform in
        [min, min(max, min * 2**attempt)] (full jitter)."""
        vtn = self.config.vtn
        ceiling = min(vtn.retry_max_s, vtn.retry_min_s * 2.0 ** min(attempt, 60))
        return self._rng.uniform(vtn.retry_min_s, ceiling)

    async def run(self) -> None:
        attempt = 0
        while True:
            if await self._register():
                attempt = 0
                await self._serve()
                continue
            delay = self.backoff_s(attempt)
            log.info("registration with %s failed; next try in %.1f s", self.config.vtn.url,
                     delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def _register(self) -> bool:
        ven = self.ven
        self._metrics.registered.set(0)
        ven.registration_id = None
        ven.last_fault = None
        try:
            await ven.query_registration()
            if ven.last_fault is None:
                await ven.create_party_registration(ven_id=ven.ven_id)
        except Exception as e:  # openleadr on a reply it did not expect
            ven._fail("malformed", f"registration: {type(e).__name__} {_shown(e)}")
            return False
        if not ven.registration_id or not ven.ven_id:
            if ven.last_fault is None:
                ven._fail("not_registered", "the VTN gave no registration id or VEN id")
            return False
        for request in ven.report_requests:
            job = request.get("job")
            if job is not None:
                job.remove()
        ven.report_requests = []
        ven.incomplete_reports = {}
        try:
            await ven.register_reports(ven.reports)
            if ven.reports and ven.report_queue_task is None:
                ven.report_queue_task = asyncio.ensure_future(ven._report_queue_worker())
            if not ven.scheduler.running:
                ven.scheduler.start()
            await ven.sync_events()
        except Exception as e:
            ven._fail("malformed", f"after registration: {type(e).__name__} {_shown(e)}")
            return False
        ven.needs_registration = False
        self.registrations += 1
        self._metrics.registered.set(1)
        self._on_registered(ven.ven_id, ven.registration_id)
        return True

    def poll_s(self) -> float:
        if self.config.vtn.poll_s is not None:
            return self.config.vtn.poll_s
        freq = self.ven.poll_frequency
        if isinstance(freq, timedelta) and freq.total_seconds() > 0:
            return min(freq.total_seconds(), 86_400.0)
        return DEFAULT_POLL_S

    async def _serve(self) -> None:
        """Poll until a new registration is needed."""
        ven = self.ven
        failures = 0
        next_cleanup = self._clock.now() + CLEANUP_PERIOD_S
        while not ven.needs_registration:
            ven.last_fault = None
            try:
                await ven._poll()
            except Exception as e:  # openleadr on content it did not expect
                ven._fail("malformed", f"poll: {type(e).__name__} {_shown(e)}")
            if ven.last_fault is not None:
                failures += 1
                if failures >= self.config.vtn.reregister_after_failures:
                    log.warning("%d failed polls in a row: registering again", failures)
                    ven.needs_registration = True
                    break
                await asyncio.sleep(self.backoff_s(failures - 1))
                continue
            failures = 0
            self._metrics.polls.inc()
            if self._clock.now() >= next_cleanup:
                next_cleanup = self._clock.now() + CLEANUP_PERIOD_S
                await ven._event_cleanup()
            await asyncio.sleep(self.poll_s())
