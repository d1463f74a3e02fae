"""Tier 3 in the running agent: the node's history, the planner, awards and arming.

- **History**: every GPU read-back round (about twice a second, a worker thread) offers the
  node's IT power, summed enforced limits and whether an activation is in force to the
  recorder (gridtao/history/recorder.py), which writes per-minute rows to SQLite on its own
  thread.
- **Planner** (``planner.enabled``, gridtao/app/planrounds.py): every ``planner.period_s`` a
  round in a worker thread plans from the history and signals and publishes the plan; its
  inputs (settings, floor, history, signals file) are built by gridtao/app/planinputs.py.
- **Awards and arming** (gridtao/app/arming.py): awards arrive on the controller's connection;
  once a second the capacities in force for the current MTU are applied.
- **Ceiling** (``planner.ceiling``): once a second the node IT ceiling the plan has for the MTU
  under way (if any) goes to tier 2, which holds the node under it; each change is audited. A
  minute the ceiling held back is marked cut in the history, like an island event's.

Threads: :meth:`NodePlanning.tasks` run on the controller loop; :meth:`NodePlanning.on_reading`
on the read-back worker; :meth:`NodePlanning.reading` from any thread (metrics);
:meth:`NodePlanning.plan_once` blocks (a worker thread). Times in Unix seconds, power in W.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gridtao.app.arming import Arming, AwardBook, take_award
from gridtao.app.planinputs import (
    checked_signals_file,
    floor_w,
    natural_history,
    plan_settings,
    signals_file,
    with_learned_work,
)
from gridtao.app.planrounds import PlanRounds
from gridtao.clock import Clock
from gridtao.config.agent import Config
from gridtao.errors import one_line
from gridtao.history import HistoryError, HistoryRecorder, HistoryStore
from gridtao.products.portfolio import Portfolio
from gridtao.records.ledger import Ledger
from gridtao.safety.island import SafetyIsland
from gridtao.security.guard import Guard
from gridtao.tier3.planner import PlannerState, PlanSettings
from gridtao.tier3.signals import Signals
from gridtao.transport.mqtt import InboundMessage, MqttLink
from gridtao.wire import messages as wire

__all__ = ["ARMING_PERIOD_S", "NodePlanning", "checked_signals_file", "floor_w",
           "natural_history", "plan_settings", "signals_file", "subscriptions",
           "with_learned_work"]

log = logging.getLogger("gridtao.tier3")

#: How often the capacities in force are brought to the award for the current MTU (s).
ARMING_PERIOD_S = 1.0


def subscriptions(config: Config, topics: wire.Topics) -> list[tuple[str, int]]:
    """What the controller's connection subscribes to for tier 3: awards when products are
    enrolled, signals when the planner runs."""
    subs = [(topics.award, 1)] if config.products else []
    if config.planner.enabled:
        subs.append((topics.signals, 1))
    return subs


class NodePlanning:
    """Tier 3's parts of one agent (module docstring). ``floor_w``: the node's IT floor
    (GPU minimums and priority floors, or ``limits.min_node_fraction`` of the defaults).
    ``ceiling``: where the plan's node ceiling for the MTU under way goes (tier 2), or None."""

    def __init__(self, config: Config, *, node_id: str, topics: wire.Topics, clock: Clock,
                 portfolio: Portfolio, island: SafetyIsland, guard: Guard, ledger: Ledger,
                 link: MqttLink, floor_w: float, ceiling: CeilingHolder | None = None) -> None:
        self._config = config
        self._node_id = node_id
        self._topics = topics
        self._clock = clock
        self._island = island
        self._guard = guard
        self._ledger = ledger
        self._link = link
        self._ceiling = ceiling
        self.rounds = PlanRounds(config, node_id=node_id, topics=topics, clock=clock,
                                 island=island, ledger=ledger, link=link, floor_w=floor_w)
        self.awards = AwardBook()
        self.arming = Arming(portfolio, self.awards,
                             unawarded=config.planner.unawarded,
                             on_change=self._capacity_changed)
        self.recorder: HistoryRecorder | None = None
        if config.history.enabled and config.history.path is not None:
            try:
                store = HistoryStore.open(config.history.path)  # HistoryError names the file
            except HistoryError as e:  # ... and the key and configuration it comes from
                raise HistoryError(f"{config.source}: history.path: {e}", path=e.path,
                                   line=e.line) from None
            self.recorder = HistoryRecorder(store, retention_days=config.history.retention_days,
                                            clock=clock)

    @property
    def work_factor(self) -> Callable[[], float | None] | None:
        """The learned work model's cost of lost work (:attr:`PlanRounds.work_factor`), set by
        the agent when it has one."""
        return self.rounds.work_factor

    @work_factor.setter
    def work_factor(self, factor: Callable[[], float | None] | None) -> None:
        self.rounds.work_factor = factor

    @property
    def state(self) -> PlannerState:
        """The planner's state now (any thread: swapped whole)."""
        return self.rounds.state

    def plan_once(self) -> PlannerState:
        """One planning round (blocking: a worker thread; :meth:`PlanRounds.plan_once`)."""
        return self.rounds.plan_once()

    def settings(self) -> PlanSettings:
        """The round's settings (:meth:`PlanRounds.settings`)."""
        return self.rounds.settings()

    def signals(self, wall_s: float) -> Signals | None:
        """The signals a round plans with (:meth:`PlanRounds.signals`)."""
        return self.rounds.signals(wall_s)

    def arm_now(self) -> None:
        """Bring the products to the capacities in force now: at start, once the audit trail
        is open and before tier 2 arms the island or any trigger can land."""
        self.arming.apply(self._clock.wall(), self._clock.now())

    def on_reading(self, wall_s: float, it_w: float, limit_w: float) -> None:
        """One read-back round (worker thread): into the history."""
        if self.recorder is not None:
            # Island events (FFR, dispatched cuts) mark their minutes, which the forecast then
            # leaves out. Tier 2's commitments (FCR-D, FCR-N's baseline, DR) do not: FCR-N holds
            # one all the time, and a forecast from the draw under it errs low, the safe way.
            # A ceiling that holds the draw back cuts it as surely as an event.
            active = self._island.view().event_id is not None or (
                self._ceiling is not None and self._ceiling.ceiling_binding())
            self.recorder.offer(wall_s, it_w, limit_w, active)

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        out = [self._control_messages(), self._arm_periodically()]
        if self._config.planner.enabled:
            out.append(self.rounds.run())
        return out

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()

    # ---- awards and arming ----------------------------------------------------------------

    async def _control_messages(self) -> None:
        """Awards and signals on the controller's connection (not the hot path: an award
        changes capacities from its MTU on, never at once). No message ends this loop: one its
        handling fails on (a bug its parser did not foresee) is logged, recorded, and refused
        with an ack when it is an award."""
        products = dict(self.arming.configured_w)
        async for msg in self._link.messages():
            try:
                await self._control_message(msg, products)
            except Exception as e:  # the next award or signal must still be heard
                self._failed(msg, e)

    def _failed(self, msg: InboundMessage, error: Exception) -> str:
        """Log and record a message whose handling failed; the reason, one line."""
        why = one_line(f"could not be handled: {type(error).__name__}: {error}")[:300]
        log.error("%s message (%d bytes) %s", msg.topic, len(msg.payload), why)
        self._ledger.record("message_failed", {"topic": msg.topic, "reason": why,
                                               "payload": msg.payload})
        return why

    async def _control_message(self, msg: InboundMessage, products: dict[str, float]) -> None:
        if msg.topic == self._topics.signals:
            self.rounds.take_signals(msg.payload, msg.received_wall)
            return
        if msg.retain:
            return  # an award is acted on when sent, as dispatches are
        try:
            verdict = take_award(msg.payload, guard=self._guard, book=self.awards,
                                 products=products,
                                 max_bytes=self._config.mqtt.max_payload_bytes,
                                 received_wall=msg.received_wall, node_id=self._node_id)
        except Exception as e:  # nothing was decided: refused, and its sender told
            why = self._failed(msg, e)
            await self._link.publish(self._topics.ack, wire.ack_payload(
                _award_id(msg.payload), False, f"award {why}", msg.received_wall, None, None,
                extra={"kind": "award"}), qos=1)
            return
        if verdict.accepted:
            try:
                filed = verdict.award.describe() if verdict.award is not None else "-"
            except Exception:  # the award is filed: saying what it holds is not worth an error
                filed = "(not described)"
            log.info("award %s filed: %s", verdict.id, filed)
        else:
            log.warning("award %s refused: %s", verdict.id, verdict.reason)
        self._ledger.record("award", {"id": verdict.id, "accepted": verdict.accepted,
                                      "reason": verdict.reason, "payload": msg.payload})
        await self._link.publish(self._topics.ack, wire.ack_payload(
            verdict.id, verdict.accepted, verdict.reason, msg.received_wall, None, None,
            extra={"kind": "award"}), qos=1)

    async def _arm_periodically(self) -> None:
        while True:
            wall = self._clock.wall()
            try:
                self.arming.apply(wall, self._clock.now())
                self.apply_ceiling(wall)
            except Exception:  # a bug here must not end arming for good
                log.exception("arming the capacities or the ceiling in force failed")
            await asyncio.sleep(ARMING_PERIOD_S)

    def apply_ceiling(self, wall_s: float) -> float | None:
        """Hand tier 2 the plan's node ceiling for the MTU under way at ``wall_s`` (IT W, None:
        none), if it changed; audited. Returns the ceiling in force."""
        if self._ceiling is None:
            return None
        covering = self.rounds.covering(wall_s)
        ceiling = None if covering is None else covering.ceiling_at(wall_s)
        held = self._ceiling.ceiling_w
        if ceiling != held:
            log.info("planned node ceiling: %s -> %s W IT", _w(held), _w(ceiling))
            self._ledger.record("ceiling", {"from_w": held, "to_w": ceiling})
            self._ceiling.set_ceiling(ceiling)
        return ceiling

    def _capacity_changed(self, product: str, old_w: float, new_w: float, source: str) -> None:
        self._ledger.record("capacity", {"product": product, "from_w": old_w, "to_w": new_w,
                                         "source": source})

    def reading(self) -> PlanNow:
        """Tier 3 now, for the metrics (any thread: reads immutable snapshots). A round plans
        from the next MTU on, so the MTU under way is the previous plan's."""
        state, wall = self.state, self._clock.wall()
        plan = state.plan
        covering = self.rounds.covering(wall)
        return PlanNow(armed_w=dict(self.arming.snapshot().armed_w),
                       offered_w={} if covering is None else covering.offers_at(wall),
                       forecast_w=None if covering is None else covering.forecast.at(wall),
                       plan_age_s=None if plan is None else max(0.0, wall - plan.made_at_s),
                       state=state.name,
                       ceiling_w=None if self._ceiling is None else self._ceiling.ceiling_w)


@dataclass(frozen=True)
class PlanNow:
    """What :class:`~gridtao.telemetry.collectors.PlanCollector` reads."""

    armed_w: Mapping[str, float]
    offered_w: Mapping[str, float]
    forecast_w: tuple[float, float, float] | None
    plan_age_s: float | None
    state: str
    ceiling_w: float | None = None


class CeilingHolder(Protocol):
    """What holds the node under the planner's ceiling (tier 2)."""

    def set_ceiling(self, ceiling_w: float | None) -> None: ...

    @property
    def ceiling_w(self) -> float | None: ...

    def ceiling_binding(self) -> bool: ...


def _w(value: float | None) -> str:
    return "none" if value is None else f"{value:.0f}"


def _award_id(payload: bytes) -> str | None:
    """The id an award payload carries, for the ack of one that could not be handled (None
    when there is no such string)."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    ident = data.get("id") if isinstance(data, dict) else None
    return ident if isinstance(ident, str) and 0 < len(ident) <= wire.ID_MAX_CHARS else None
