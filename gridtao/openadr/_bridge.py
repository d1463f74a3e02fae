"""``gridtao openadr``: the facility's OpenADR 2.0b VEN, bridged to gridtao's wire contract.

One process, one asyncio event loop:

* the VEN (:mod:`._ven`, openleadr's client) registers with the VTN, polls it, answers events
  through :class:`~gridtao.openadr._handler.EventHandler` and sends the reports;
* one MQTT connection (:class:`~gridtao.transport.mqtt.MqttLink`) reads the nodes' retained
  status (``{prefix}/nodes/+/status``) and acks (``{prefix}/nodes/+/ack``) and publishes the
  dispatches on ``{prefix}/dispatch`` (QoS 1) through the paced
  :class:`~gridtao.openadr._outbox.DispatchOutbox`, signed with the aggregator key
  (``signing``), so every node's guard (signature, freshness, replay, bounds) applies as to any
  aggregator;
* every decision goes to the append-only, hash-chained audit trail
  (:class:`~gridtao.records.audit.AuditTrail`; ``gridtao audit verify`` checks it), whose writer
  is its own thread, and the metrics (served by prometheus_client's thread when
  ``metrics.port`` is set).

Stopping (SIGINT/SIGTERM) changes nothing on the nodes: dispatches already published stay
with them, as the events were agreed with the VTN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from gridtao.clock import Clock, MonotonicClock
from gridtao.config.schema import ConfigError
from gridtao.errors import GridtaoError
from gridtao.openadr._config import BridgeConfig
from gridtao.openadr._handler import EventHandler
from gridtao.openadr._mapping import SiteSnapshot
from gridtao.openadr._metrics import BridgeMetrics
from gridtao.openadr._oadr3_poll import Oadr3Poller
from gridtao.openadr._outbox import DispatchOutbox
from gridtao.openadr._site import SiteView
from gridtao.openadr._tls import client_ssl, read_passphrase
from gridtao.readfile import irregular, read_regular
from gridtao.records.audit import AuditError, AuditTrail
from gridtao.security.auth import KeyFileError, load_signing_key, sign_payload
from gridtao.transport.mqtt import InboundMessage, MqttLink
from gridtao.transport.tls import read_password, ssl_context

__all__ = ["Bridge", "make_signer", "run_bridge"]

log = logging.getLogger("gridtao.openadr")

#: Seconds the bridge waits, once connected to the broker, for the nodes' retained statuses
#: before it asks the VTN for anything.
STATUS_WAIT_S = 2.0


def make_signer(config: BridgeConfig, clock: Clock) -> Callable[[Mapping[str, object]], bytes]:
    """``body -> payload``: adds ``issued_at`` (``clock.wall()``, Unix s) and, unless
    ``signing.mode`` is none, ``kid`` and ``sig``. Raises ConfigError for an unusable key."""
    signing = config.signing
    if signing.mode == "none":
        def plain(body: Mapping[str, object]) -> bytes:
            stamped = {**body, "issued_at": round(clock.wall(), 3)}
            return json.dumps(stamped, separators=(",", ":"), allow_nan=False).encode()
        return plain
    assert signing.key_file is not None and signing.kid is not None  # checked in _config
    try:
        key = load_signing_key(signing.key_file, signing.mode)
    except KeyFileError as e:
        raise ConfigError(f"{config.source}: signing.key_file: {e}") from None
    kid, alg = signing.kid, signing.mode

    def signed(body: Mapping[str, object]) -> bytes:
        return sign_payload(body, key, kid, alg, topic="dispatch", now=round(clock.wall(), 3))
    return signed


#: The largest client secret file read (a secret is one short line).
SECRET_FILE_MAX_BYTES = 4096


class Bridge:
    """The bridge's parts, wired. :meth:`run` serves until ``stop`` is set."""

    def __init__(self, config: BridgeConfig, *, clock: Clock | None = None,
                 rng: random.Random | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.rng = rng if rng is not None else random.Random()
        self.metrics = BridgeMetrics(registry if registry is not None else CollectorRegistry())
        self.site = SiteView(max_age_s=config.policy.status_max_age_s)
        self.audit: AuditTrail | None = (AuditTrail(config.audit, clock=self.clock)
                                         if config.audit.enabled else None)
        prefix = config.mqtt.prefix
        self.dispatch_topic = f"{prefix}/dispatch"
        self.status_filter = f"{prefix}/nodes/+/status"
        self.ack_filter = f"{prefix}/nodes/+/ack"
        m = config.mqtt
        self.link = MqttLink.for_broker(
            m, client_id=config.client_id, tls=ssl_context(m, source=config.source),
            password=read_password(m, source=config.source), clock=self.clock,
            subscriptions=[(self.status_filter, 1), (self.ack_filter, 1)],
            retained_topics=[self.status_filter])
        self.outbox = DispatchOutbox(
            clock=self.clock, min_interval_s=config.dispatch.min_interval_s,
            sign=make_signer(config, self.clock), publish=self._publish,
            on_published=self._published)
        self.ven_id: str | None = config.vtn.ven_id
        self.handler = EventHandler(
            config, clock=self.clock, rng=self.rng, site=self.snapshot, outbox=self.outbox,
            audit=self.record, metrics=self.metrics, ven_id=lambda: self.ven_id)
        self._baseline_w: float | None = None

    # ---- records ---------------------------------------------------------------------

    def record(self, kind: str, fields: Mapping[str, object]) -> None:
        if self.audit is not None:
            self.audit.record(kind, fields)

    def fault(self, reason: str, detail: str) -> None:
        """A failed VTN exchange: logged, counted, audited; never a dispatch."""
        self.metrics.error(reason)
        log.warning("VTN %s: %s", reason, detail)
        self.record("openadr_error", {"reason": reason, "detail": detail})

    # ---- MQTT ----------------------------------------------------------------------------

    def _publish(self, payload: bytes) -> None:
        self.link.publish_nowait(self.dispatch_topic, payload, qos=1)

    def _published(self, body: Mapping[str, object]) -> None:
        kind = str(body.get("kind"))
        self.metrics.dispatches.labels(kind).inc()
        log.info("published %s %s%s", kind, body.get("id"),
                 f" (ref {body['ref']})" if kind == "release" else "")
        self.record("openadr_published", dict(body))

    def on_message(self, message: InboundMessage) -> None:
        """A node status or ack from the broker."""
        if message.topic.endswith("/status"):
            if self.site.update(message.topic, message.payload) is None:
                self.metrics.error("bad_status")
            self.snapshot()
            return
        self._on_ack(message)

    def _on_ack(self, message: InboundMessage) -> None:
        try:
            ack: Any = json.loads(message.payload)
        except (ValueError, RecursionError):
            return
        mine = f"{self.config.dispatch.id_prefix}-"
        if not isinstance(ack, dict) or not str(ack.get("id", "")).startswith(mine):
            return
        node = message.topic.split("/")[-2]
        accepted = ack.get("accepted") is True
        if accepted and ack.get("reached_at") is not None:
            return  # the second ack of an accepted cut: the first was counted
        self.metrics.node_acks.labels("accepted" if accepted else "refused").inc()
        if not accepted:
            log.warning("node %s refused %s: %s", node, ack.get("id"), ack.get("reason"))
        self.record("openadr_node_ack", {"node": node, "id": ack.get("id"),
                                         "accepted": accepted, "reason": ack.get("reason")})

    # ---- the site, for decisions and reports -----------------------------------------

    def snapshot(self) -> SiteSnapshot | None:
        """The site now; refreshes the gauges and the baseline (the draw while no dispatch of
        the bridge's acts, held while one does)."""
        now = self.clock.wall()
        snap = self.site.snapshot(now)
        self.metrics.nodes.set(0 if snap is None else snap.nodes)
        self.metrics.site_power.set(0.0 if snap is None else snap.it_power_w)
        if snap is not None and not self.handler.dispatching(now):
            self._baseline_w = snap.settlement_draw_w
        return snap

    def _sample(self, point: str, value: Callable[[SiteSnapshot], float | None]) \
            -> list[tuple[datetime, float]]:
        snap = self.snapshot()
        watts = None if snap is None else value(snap)
        if watts is None:
            return []
        self.metrics.reports.labels(point).inc()
        return [(datetime.fromtimestamp(self.clock.wall(), UTC), round(watts, 1))]

    def report_it_power(self) -> list[tuple[datetime, float]]:
        return self._sample("it_power", lambda s: s.it_power_w)

    def report_baseline(self) -> list[tuple[datetime, float]]:
        return self._sample("baseline", lambda s: self._baseline_w)

    def report_available(self) -> list[tuple[datetime, float]]:
        return self._sample("available_reduction", lambda s: s.deliverable_w)

    # ---- running -------------------------------------------------------------------------

    def _registered(self, ven_id: str | None, registration_id: str | None) -> None:
        self.ven_id = ven_id
        log.info("registered with %s as VEN %s (registration %s)", self.config.vtn.url,
                 ven_id, registration_id)
        self.record("openadr_registered", {"ven_id": ven_id, "registration_id": registration_id,
                                           "vtn": self.config.vtn.url})

    @staticmethod
    def _ven_module() -> Any:
        try:
            from gridtao.openadr import _ven
        except ImportError as e:
            raise GridtaoError(f"gridtao openadr needs openleadr ({e.name} is missing): "
                               "pip install 'gridtao[openadr]'") from None
        return _ven

    def check(self) -> None:
        """Load the files :meth:`run` would (the VTN's TLS files and passphrase, an OpenADR 3
        client secret; the signing key and the broker's were loaded by the constructor), and
        see that the audit trail's path is a file. Raises ConfigError."""
        cfg = self.config
        if cfg.vtn.protocol == "2.0b":
            self._ven_module()
        client_ssl(cfg, read_passphrase(cfg))
        secret_file = cfg.vtn.client_secret_file
        if secret_file is not None:
            try:
                secret = read_regular(secret_file, max_bytes=SECRET_FILE_MAX_BYTES)
            except OSError as e:
                raise ConfigError(f"{cfg.source}: vtn.client_secret_file: {secret_file}: cannot "
                                  f"read: {e.strerror or e}") from None
            if not secret.split(b"\n", 1)[0].strip():
                raise ConfigError(f"{cfg.source}: vtn.client_secret_file: {secret_file}: the "
                                  "first line is empty (it must hold the secret)")
        audit = cfg.audit.path if cfg.audit.enabled else None
        if audit and irregular(audit) is not None:
            raise ConfigError(f"{cfg.source}: audit.path: {audit} is not a file: the bridge "
                              "needs a file of its own there")

    def _publish_signals(self, payload: bytes) -> None:
        self.link.publish_nowait(f"{self.config.mqtt.prefix}/signals", payload, qos=1,
                                 retain=True)
        log.info("published the signals document (%d bytes)", len(payload))
        self.record("openadr_signals", {"payload": payload})

    def _protocol_task(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """The VTN side: (what runs it, what closes it), both coroutine functions."""
        if self.config.vtn.protocol == "3.0.1":
            self.ven_id = self.config.vtn.ven_name  # 3.x targets a VEN by its name
            poller = Oadr3Poller(self.config, handler=self.handler, clock=self.clock,
                                 rng=self.rng, on_fault=self.fault,
                                 publish_signals=self._publish_signals,
                                 on_polled=self.metrics.polls.inc)

            async def nothing() -> None:
                return None
            return poller.run, nothing
        _ven = self._ven_module()
        if not log.isEnabledFor(logging.DEBUG):
            # openleadr logs every report sample and poll reply at info, the scheduler every
            # job run: the bridge's own log says what matters.
            for name in ("openleadr", "apscheduler"):
                logging.getLogger(name).setLevel(logging.WARNING)
        ven = _ven.GridtaoVen(self.config, on_event=self.handler.handle,
                              on_listed=self.handler.missing, on_fault=self.fault)
        ven.offer_reports(self.config, it_power=self.report_it_power,
                          baseline=self.report_baseline, available=self.report_available)
        session = _ven.VenSession(ven, self.config, clock=self.clock, rng=self.rng,
                                  metrics=self.metrics, on_registered=self._registered)
        return session.run, ven.close

    async def _await_statuses(self, stop: asyncio.Event, arrived: asyncio.Event) -> None:
        """Before the VTN is asked for anything: the broker connection up and the nodes'
        retained statuses read (at most :data:`STATUS_WAIT_S` after connecting), so the first
        events are decided on the site as it is, not refused for want of a status."""
        while not stop.is_set() and not self.link.is_connected:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.link.connected.wait(), timeout=0.5)
        deadline = self.clock.now() + STATUS_WAIT_S
        while not stop.is_set() and self.clock.now() < deadline:
            arrived.clear()
            while (message := self.link.poll()) is not None:
                self.on_message(message)
            if self.site.snapshot(self.clock.wall()) is not None:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(arrived.wait(), timeout=0.1)
        if not stop.is_set():
            log.warning("no node status on %s yet: events need one (policy.require_status)",
                        self.status_filter)

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set; 0 on a clean stop."""
        vtn_side, close_vtn_side = self._protocol_task()
        if self.audit is not None:
            try:
                self.audit.start()
            except AuditError as e:
                raise GridtaoError(f"{self.config.source}: {e}") from None
        server: Any = None
        port = self.config.metrics.port
        if port is not None:
            server, _ = start_http_server(port, addr=self.config.metrics.host,
                                          registry=self.metrics.registry)
        c = self.config
        self.record("openadr_start", {"pid": os.getpid(), "ven_name": c.vtn.ven_name,
                                      "vtn": c.vtn.url, "protocol": c.vtn.protocol,
                                      "prefix": c.mqtt.prefix,
                                      "signing": c.signing.mode, "kid": c.signing.kid})
        log.info("OpenADR %s VEN %s for %s; dispatching on %s (signing: %s)", c.vtn.protocol,
                 c.vtn.ven_name, c.vtn.url, self.dispatch_topic, c.signing.mode)
        arrived = asyncio.Event()
        self.link.on_inbound = arrived.set
        tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(t)
                                            for t in (self.link.run(), self.outbox.run())]
        vtn_task: asyncio.Future[Any] | None = None
        try:
            await self._await_statuses(stop, arrived)
            vtn_task = asyncio.ensure_future(vtn_side())
            tasks.append(vtn_task)
            while not stop.is_set():
                arrived.clear()
                while (message := self.link.poll()) is not None:
                    self.on_message(message)
                for task in tasks:
                    if task.done():
                        task.result()  # a part that ended has failed: stop and say why
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(arrived.wait(), timeout=0.5)
        finally:
            # The VTN side first, then what it holds: a request under way would otherwise open
            # a new HTTP session after the old one is closed, and leave it open.
            if vtn_task is not None:
                vtn_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await vtn_task
            await close_vtn_side()
            with contextlib.suppress(Exception):
                await self.link.flush(2.0)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if server is not None:
                server.shutdown()
                server.server_close()
            self.record("openadr_stop", {"pending_dispatches": self.outbox.pending_ids()})
            if self.audit is not None:
                self.audit.close()
        return 0


async def run_bridge(config: BridgeConfig, *, stop: asyncio.Event | None = None,
                     clock: Clock | None = None, rng: random.Random | None = None,
                     registry: CollectorRegistry | None = None) -> int:
    """Run the bridge until SIGINT/SIGTERM or ``stop``; 0 on a clean stop."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    bridge = Bridge(config, clock=clock, rng=rng, registry=registry)
    return await bridge.run(stop)
