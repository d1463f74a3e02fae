"""The intake's gatekeeper: rate limits, message authentication, freshness, replay and bounds,
in that order, before anything reaches the safety island (docs/security.md).

Built once per agent from ``config.auth`` and ``config.limits``; used only on the island lane's
thread. Every refusal is counted in ``gridtao_auth_failures_total{topic,reason}`` or
``gridtao_limit_rejections_total{topic,reason}`` (the intake also counts it in
``gridtao_messages_total{result="rejected"}``) and returns the reason for the ack.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter

from gridtao.config.agent import Config, ConfigError
from gridtao.security import auth
from gridtao.security.bounds import LIMIT_LABELS, RATE, Admitted, DispatchBounds, TokenBucket
from gridtao.security.replay import ReplayStore, ReplayStoreError, default_path
from gridtao.telemetry.metrics import CounterChildren
from gridtao.wire import messages as wire

log = logging.getLogger("gridtao.guard")

TOPICS: tuple[auth.Topic, ...] = ("dispatch", "frequency")


class SecurityMetrics:
    """The two refusal counters, with every known label pre-created (exported as 0)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.auth_failures = Counter(
            "gridtao_auth_failures",
            "Messages refused by authentication, by topic and reason.",
            ["topic", "reason"], registry=registry,
        )
        self.limit_rejections = Counter(
            "gridtao_limit_rejections",
            "Messages refused by rate or bound limits, by topic and reason.",
            ["topic", "reason"], registry=registry,
        )
        # Every known label pre-created, and counted through resolved children: a flood of
        # refusals costs a dict lookup each.
        self.auth = CounterChildren(self.auth_failures)
        self.limit = CounterChildren(self.limit_rejections)
        for topic in TOPICS:
            for label in auth.REASON_LABELS:
                self.auth.child(topic, label)
            for label in LIMIT_LABELS:
                self.limit.child(topic, label)


class DispatchVerdict(NamedTuple):
    """``reason`` set: refused. Otherwise ``fraction`` is the shed fraction the floor allows on
    the island's basis now (None for cap/release) and ``note`` says so: the bounds' judgement,
    for tests and tools. The intake passes the floor to the island instead, which applies it to
    the very draw it cuts from (``SafetyIsland.trigger_shed``)."""

    reason: str | None
    fraction: float | None = None
    note: str | None = None


class Guard:
    """Checks every message before the island. ``verifier`` None: signatures are not required
    (``auth.mode: none``); limits apply regardless."""

    def __init__(
        self,
        config: Config,
        *,
        verifier: auth.Verifier | None,
        bounds: DispatchBounds,
        wall: Callable[[], float],
        replay_path: Path | None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        a, lim = config.auth, config.limits
        self._auth = a
        self._verifier = verifier
        self._bounds = bounds
        self._wall = wall
        self._buckets = {
            "dispatch": TokenBucket(lim.dispatch_rate_per_s, lim.dispatch_burst),
            "frequency": TokenBucket(lim.frequency_rate_per_s, lim.frequency_burst),
        }
        self._rates = {"dispatch": lim.dispatch_rate_per_s, "frequency": lim.frequency_rate_per_s}
        self._order = auth.SampleOrder()
        self.replay: ReplayStore | None = None
        if verifier is not None:
            if replay_path is None:
                raise ValueError("a replay store path is required when messages are signed")
            self.replay = ReplayStore(
                replay_path, window_s=a.freshness_s, max_entries=a.replay_max_entries, wall=wall
            )
        self._metrics = SecurityMetrics(registry) if registry is not None else None
        self._source = config.source

    @property
    def node_floor_mw(self) -> float:
        """The node total no dispatched cut goes below (mW): ``limits.min_node_fraction`` of
        the GPUs' summed default limits."""
        return self._bounds.floor_mw

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        node_id: str,
        default_total_mw: float,
        draw_total_mw: Callable[[], float],
        wall: Callable[[], float],
        registry: CollectorRegistry | None = None,
        verifier: auth.Verifier | None = None,
    ) -> Guard:
        """``verifier``: already loaded keys (else loaded here; ConfigError names the file)."""
        if verifier is None:
            verifier = auth.Verifier.from_config(config.auth, source=config.source)
        replay_path = None
        if verifier is not None:
            store = config.auth.replay_store
            replay_path = Path(store).expanduser() if store else default_path(node_id)
        bounds = DispatchBounds(
            config.limits, default_total_mw=default_total_mw, draw_total_mw=draw_total_mw,
            island_max_event_s=config.safety.max_event_s,
        )
        return cls(config, verifier=verifier, bounds=bounds, wall=wall,
                   replay_path=replay_path, registry=registry)

    @property
    def signed(self) -> bool:
        return self._verifier is not None

    @property
    def verifier(self) -> auth.Verifier | None:
        return self._verifier

    def requirements(self) -> dict[str, object]:
        """What a dispatch must carry to be taken, for the node's status (``auth``): the mode,
        and in a signed mode the key ids that may sign a dispatch. A site or aggregator can
        check it is understood before its first order is refused. Any thread."""
        verifier = self._verifier  # one read: reloaded keys are swapped in whole
        if verifier is None:
            return {"mode": "none"}
        return {"mode": verifier.alg, "dispatch_kids": list(verifier.signers("dispatch"))}

    def replace_verifier(self, verifier: auth.Verifier) -> None:
        """Swap in reloaded keys (same algorithm) between two messages. Whether messages are
        signed at all is fixed at start: a guard without keys refuses, so does a new algorithm.
        """
        current = self._verifier
        if current is None or verifier.alg != current.alg:
            raise ValueError("auth.mode cannot change while running")
        self._verifier = verifier  # one reference swap: each message sees old or new keys

    def open(self) -> None:
        """Open the replay store; ConfigError (naming it) if it cannot be used."""
        if self.replay is not None:
            try:
                self.replay.open()
            except ReplayStoreError as e:
                raise ConfigError(f"{self._source}: auth.replay_store: {e}") from None

    def close(self) -> None:
        if self.replay is not None:
            self.replay.close()

    # ---- both topics --------------------------------------------------------------------

    def take(self, topic: auth.Topic, now_s: float) -> bool:
        """One message's token from ``topic``'s rate bucket; False (counted) when over rate."""
        if self._buckets[topic].take(now_s):
            return True
        self._count_limit(topic, RATE)
        return False

    def rate_reason(self, topic: auth.Topic) -> str:
        return f"rate limit: over {self._rates[topic]:g} {topic} messages/s"

    # ---- frequency ----------------------------------------------------------------------

    def check_frequency(self, payload: bytes | Mapping[str, Any], t: float) -> str | None:
        """None if the (parsed) sample may be used, else the reason (counted). ``payload``:
        the message, or its decoded object (wire.decode_object)."""
        verifier = self._verifier
        if verifier is None:
            return None
        data = _decode(payload)
        if auth.SIG_FIELD not in data and not self._auth.require_signed_frequency:
            return None
        try:
            kid = verifier.authenticate("frequency", data)
            auth.check_fresh(t, "t", self._wall(), max_age_s=self._auth.frequency_freshness_s,
                             max_future_s=self._auth.max_future_s)
            self._order.check(kid, t)
        except auth.AuthRejected as e:
            return self._auth_failed("frequency", e)
        self._order.accept(kid, t)
        return None

    # ---- dispatch -----------------------------------------------------------------------

    def authenticate_dispatch(self, payload: bytes | Mapping[str, Any]) -> str | None:
        """Signature and key checks only (before the duplicate check): None or the reason.
        ``payload``: the message, or its decoded object (wire.decode_object)."""
        verifier = self._verifier
        if verifier is None:
            return None
        try:
            verifier.authenticate("dispatch", _decode(payload))
        except auth.AuthRejected as e:
            return self._auth_failed("dispatch", e)
        return None

    def authenticate_award(self, payload: bytes, issued_at: float | None) -> str | None:
        """An award (tier 3, gridtao/wire/awards.py) is signed by the aggregator's dispatch
        keys and must be fresh: None, or the reason to refuse it."""
        verifier = self._verifier
        if verifier is None:
            return None
        try:
            verifier.authenticate("dispatch", _decode(payload))
            auth.check_fresh(issued_at, "issued_at", self._wall(),
                             max_age_s=self._auth.freshness_s,
                             max_future_s=self._auth.max_future_s)
        except auth.AuthRejected as e:
            return self._auth_failed("dispatch", e)
        return None

    def admit_dispatch(
        self, msg: wire.AnyDispatch, *, now_s: float, in_flight: int
    ) -> DispatchVerdict:
        """Freshness and replay (signed mode), then the bounds. An authenticated, fresh id is
        remembered even if the bounds refuse it: it was spent. Call :meth:`after_dispatch`
        once the island has acted (or right away when refused)."""
        if self.replay is not None:
            try:
                auth.check_fresh(msg.issued_at, "issued_at", self._wall(),
                                 max_age_s=self._auth.freshness_s,
                                 max_future_s=self._auth.max_future_s)
                if self.replay.seen(msg.id):
                    raise auth.AuthRejected(
                        auth.REPLAYED, f"replayed: event id {msg.id!r} was already used")
                assert msg.issued_at is not None  # check_fresh refused None
                if not self.replay.add(msg.id, msg.issued_at):
                    raise auth.AuthRejected(auth.STORE_FULL, "replay store full "
                                            f"({len(self.replay)} live ids); refusing new events")
            except auth.AuthRejected as e:
                return DispatchVerdict(self._auth_failed("dispatch", e))
        verdict = self._bounds.check(msg, now_s=now_s, in_flight=in_flight)
        if isinstance(verdict, Admitted):
            return DispatchVerdict(None, verdict.fraction, verdict.note)
        self._count_limit("dispatch", verdict.label)
        return DispatchVerdict(verdict.reason)

    def accepted(self, msg: wire.AnyDispatch, *, now_s: float) -> None:
        """The island acted on ``msg`` (its cut starts the min-interval clock)."""
        self._bounds.accepted(msg, now_s=now_s)

    def after_dispatch(self) -> None:
        """Make remembered ids durable (fsync), off the trigger path, before the ack leaves."""
        if self.replay is None:
            return
        try:
            self.replay.flush()
        except OSError as e:  # the in-memory record still refuses replays until a restart
            log.error("replay store %s: write failed: %s", self.replay.path, e)

    # ---- counting -----------------------------------------------------------------------

    def _auth_failed(self, topic: auth.Topic, e: auth.AuthRejected) -> str:
        if self._metrics is not None:
            self._metrics.auth.inc(topic, e.label)
        return f"auth: {e.reason}"

    def _count_limit(self, topic: auth.Topic, label: str) -> None:
        if self._metrics is not None:
            self._metrics.limit.inc(topic, label)


def _decode(payload: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    # Only called on payloads the wire parser accepted: a JSON object in UTF-8.
    if not isinstance(payload, bytes | bytearray):
        return payload
    data: dict[str, Any] = json.loads(payload)
    return data
