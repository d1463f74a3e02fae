"""Tier 3 in the running agent: the node's history, the planner, awards and arming.

- **History**: every GPU read-back round (about twice a second, a worker thread) offers the
  node's IT power, summed enforced limits and whether an activation is in force to the
  recorder (gridtao/history/recorder.py), which writes per-minute rows to SQLite on its own
  thread.
- **Planner** (``planner.enabled``): every ``planner.period_s`` a round runs in a worker thread
  (never on the controller's loop, never on the island's): history from SQLite, signals from
  ``planner.signals_file`` merged with the latest retained ``{prefix}/signals``, forecast and
  solve (gridtao/tier3/planner.py). The plan is published retained on
  ``{prefix}/nodes/{node}/plan`` and audited; a failed round keeps the last valid plan
  (``Fallback``) or offers nothing (``NoPlan``), and says why. The agent never crashes on it.
- **Awards and arming** (gridtao/app/arming.py): awards arrive on the controller's connection;
  once a second the capacities in force for the current MTU are applied.
- **Ceiling** (``planner.ceiling``): once a second the node IT ceiling the plan has for the MTU
  under way (if any) goes to tier 2, which holds the node under it; each change is audited. A
  minute the ceiling held back is marked cut in the history, like an island event's.

Threads: :meth:`NodePlanning.tasks` run on the controller loop; :meth:`NodePlanning.on_reading`
on the read-back worker; :meth:`NodePlanning.reading` from any thread (metrics).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gridtao.app.arming import Arming, AwardBook, take_award
from gridtao.clock import Clock
from gridtao.config.agent import Config, ConfigError
from gridtao.config.paths import resolve_path
from gridtao.control.tier2.facility import FacilityModel
from gridtao.errors import one_line
from gridtao.gpu.backend import PowerLimits
from gridtao.history import HistoryError, HistoryRecorder, HistoryStore
from gridtao.products.portfolio import Portfolio
from gridtao.readfile import read_regular
from gridtao.records.ledger import Ledger
from gridtao.safety.island import SafetyIsland
from gridtao.security.guard import Guard
from gridtao.tier3.forecast import ForecastError
from gridtao.tier3.planner import NoPlan, Plan, PlannerState, PlanSettings, make_plan, next_state
from gridtao.tier3.problem import Enrolment, PlanError, node_floor_w
from gridtao.tier3.signals import SignalError, Signals, SignalsOutOfDate, merge, parse_signals
from gridtao.transport.mqtt import InboundMessage, MqttLink
from gridtao.wire import messages as wire
from gridtao.wire.awards import plan_payload

__all__ = ["ARMING_PERIOD_S", "NodePlanning", "checked_signals_file", "floor_w",
           "natural_history", "plan_settings", "signals_file", "subscriptions",
           "with_learned_work"]

log = logging.getLogger("gridtao.tier3")

#: How often the capacities in force are brought to the award for the current MTU (s).
ARMING_PERIOD_S = 1.0
DAY_S = 86_400


def plan_settings(config: Config, floor_w: float, max_w: float | None = None) -> PlanSettings:
    """A planning round's settings from the configuration, the node's IT floor (W) and the
    most it can draw (W: its GPUs' summed limits; None: unknown)."""
    p, f = config.planner, config.facility
    enrolments = [Enrolment(c.name or c.kind, c.kind, c.capacity_w, bid_step_w=c.bid_step_w,
                            min_bid_w=c.min_bid_w) for c in config.products]
    return PlanSettings(
        mtu_s=p.mtu_s, horizon=max(1, p.horizon_h * 3600 // p.mtu_s),
        floor_w=floor_w, max_w=max_w, enrolments=enrolments,
        safety_margin_fraction=p.safety_margin_fraction, time_limit_s=p.solve_time_limit_s,
        weeks=max(1, math.ceil(p.history_days / 7)), margin_quantile=p.margin_quantile,
        margin_days=p.margin_days, margin_block_h=p.margin_block_h,
        # Site energy per IT energy from the facility model: losses, and cooling at 1/COP.
        options={"settle_at": f.settle_at, "losses_fraction": f.losses_fraction,
                 "tz_offset_s": round(p.tz_offset_h * 3600),
                 "pue": FacilityModel.from_config(f).settled_meter_per_it_w,
                 "carbon_eur_t": p.carbon_eur_per_t,
                 "lost_work_eur_wh": p.lost_work_eur_per_mwh / 1e6,
                 "allow_ceiling": p.ceiling, "dr_max_hours_per_day": p.dr_max_hours_per_day})


def with_learned_work(settings: PlanSettings, factor: float) -> PlanSettings:
    """``settings`` with the cost of lost work taken from the learned work model: an IT W·h
    shed costs ``factor`` (the share of full-speed work it loses,
    :func:`~gridtao.work.model.lost_work_factor`) of the configured value of a W·h of
    full-speed work; said in the plan's notes."""
    value = float(settings.options.get("lost_work_eur_wh", 0.0))
    options = dict(settings.options) | {"lost_work_eur_wh": value * factor}
    note = (f"lost work at {value * factor * 1e6:.0f} EUR/MWh shed: the learned work curves lose "
            f"{factor:.2f} of the full-speed work of each W·h shed "
            f"(planner.lost_work_eur_per_mwh {value * 1e6:.0f})")
    return dataclasses.replace(settings, options=options, notes=(*settings.notes, note))


def floor_w(config: Config, limits: Sequence[PowerLimits], indices: Sequence[int]) -> float:
    """The lowest IT power (W) the node can be held at, for tier 3: the GPUs' minimums
    (critical GPUs' priority floors where higher) or ``limits.min_node_fraction`` of the
    summed default limits, whichever is higher."""
    floors = {i: p.floor_w for p in config.tracker.priorities
              if p.priority == "critical" for i in p.gpus}
    return node_floor_w([lim.min_mw / 1000.0 for lim in limits],
                        [lim.default_mw / 1000.0 for lim in limits],
                        min_node_fraction=config.limits.min_node_fraction,
                        priority_floor_w={k: floors.get(i, 0.0)
                                          for k, i in enumerate(indices)})


def natural_history(path: str | Path, since_s: int, until_s: int
                    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Minute starts (int64 Unix s), mean and p10 IT draw (W) of the minutes in
    ``[since_s, until_s]`` that no island event cut: a cut minute is not the natural draw,
    so it is a gap to the forecast, not a low reading. HistoryError names the file."""
    with HistoryStore.open(path) as store:
        rows = [r for r in store.rows(since_s, until_s + 1) if r.event_s <= 0.0]
    return (np.array([r.start_s for r in rows], dtype=np.int64),
            np.array([r.it_mean_w for r in rows]), np.array([r.it_p10_w for r in rows]))


#: The largest signals file read (a week of 15-minute prices, carbon and reserve prices in any of
#: the formats is well under 1 MiB).
MAX_SIGNALS_FILE_BYTES = 16 * 1024 * 1024


def signals_file(config: Config, now_s: float) -> Signals | None:
    """``planner.signals_file`` read now (None: none configured; a relative path is taken
    from the configuration file's folder). Raises OSError or SignalError."""
    p = config.planner
    if p.signals_file is None:
        return None
    path = resolve_path(p.signals_file, config.source)
    return parse_signals(read_regular(path, max_bytes=MAX_SIGNALS_FILE_BYTES), now_s=now_s,
                         source=str(path),
                         max_age_s=p.signals_max_age_h * 3600.0)


def checked_signals_file(config: Config, now_s: float, *, where: str,
                         out_of_date: Callable[[str], None] | None = None) -> Signals | None:
    """:func:`signals_file` for a command: a file that cannot be read or is refused is a
    :class:`ConfigError` of one line, ``where`` (the key or option that named it) first.
    ``out_of_date``: told that line instead, and None returned, when the file is refused for
    its time alone (a late feed, which the agent plans without: not a configuration error)."""
    try:
        return signals_file(config, now_s)
    except SignalsOutOfDate as e:
        line = f"{where}: {config.planner.signals_file}: refused: {e}"
        if out_of_date is None:
            raise ConfigError(line) from None
        out_of_date(line)
        return None
    except OSError as e:
        named = e.filename or config.planner.signals_file
        raise ConfigError(f"{where}: {named}: cannot read: {e.strerror or e}") from None
    except SignalError as e:  # one line naming the file, as for every input
        raise ConfigError(f"{where}: {config.planner.signals_file}: refused: {e}") from None


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
        self._floor_w = floor_w
        self._ceiling = ceiling
        # The share of full-speed work an IT W·h shed costs, from the learned work model
        # (None: no model; the configured value stands): set by the agent when it has one.
        self.work_factor: Callable[[], float | None] | None = None
        self.awards = AwardBook()
        self.arming = Arming(portfolio, self.awards,
                             unawarded=config.planner.unawarded,
                             on_change=self._capacity_changed)
        self._lock = threading.Lock()
        self.state: PlannerState = NoPlan("not planned yet")
        self._previous: Plan | None = None  # the plan before, which covers the MTU under way
        self._topic_signals: Signals | None = None
        self.recorder: HistoryRecorder | None = None
        self._store_path = config.history.path
        if config.history.enabled and config.history.path is not None:
            try:
                store = HistoryStore.open(config.history.path)  # HistoryError names the file
            except HistoryError as e:  # ... and the key and configuration it comes from
                raise HistoryError(f"{config.source}: history.path: {e}", path=e.path,
                                   line=e.line) from None
            self.recorder = HistoryRecorder(store, retention_days=config.history.retention_days,
                                            clock=clock)

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
            out.append(self._plan_periodically())
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
            self._take_signals(msg.payload, msg.received_wall)
            return
        if msg.retain:
            return  # an award is acted on when sent, as dispatches are
        try:
            verdict = take_award(msg.payload, guard=self._guard, book=self.awards,
                                 products=products,
                                 max_bytes=self._config.mqtt.max_payload_bytes,
                                 received_wall=msg.received_wall)
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
        covering = self._covering(wall_s)
        ceiling = None if covering is None else covering.ceiling_at(wall_s)
        held = self._ceiling.ceiling_w
        if ceiling != held:
            log.info("planned node ceiling: %s -> %s W IT", _w(held), _w(ceiling))
            self._ledger.record("ceiling", {"from_w": held, "to_w": ceiling})
            self._ceiling.set_ceiling(ceiling)
        return ceiling

    def _covering(self, wall_s: float) -> Plan | None:
        """The plan for the MTU under way: a round plans from the next MTU on, so that MTU is
        the previous plan's until the new plan's first MTU starts."""
        plan = self.state.plan
        return next((p for p in (plan, self._previous)
                     if p is not None and p.forecast.start_s <= wall_s < p.end_s), None)

    def _capacity_changed(self, product: str, old_w: float, new_w: float, source: str) -> None:
        self._ledger.record("capacity", {"product": product, "from_w": old_w, "to_w": new_w,
                                         "source": source})

    # ---- the planner ----------------------------------------------------------------------

    def _take_signals(self, payload: bytes, wall_s: float) -> None:
        p = self._config.planner
        try:
            signals = parse_signals(payload, now_s=wall_s,
                                    max_age_s=p.signals_max_age_h * 3600.0,
                                    source=self._topics.signals)
        except SignalError as e:
            log.warning("signals on %s refused: %s", self._topics.signals, e)
            return
        with self._lock:
            self._topic_signals = signals
        log.info("signals on %s taken (issued %.0f, %s)", self._topics.signals,
                 signals.issued_at_s, ", ".join(signals.series()) or "no series")

    async def _plan_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, self.plan_once)
            await asyncio.sleep(self._config.planner.period_s)

    def settings(self) -> PlanSettings:
        """The round's settings; the cost of lost work from the learned work model where
        there is one (``planner.lost_work_eur_per_mwh`` is then the value of an MWh of the
        GPUs' full-speed work, and an MWh shed costs the share the curves say it loses)."""
        settings = plan_settings(self._config, self._floor_w,
                                 self._island.envelope.default_total_mw / 1000.0)
        factor = self.work_factor() if self.work_factor is not None else None
        return settings if factor is None else with_learned_work(settings, factor)

    def signals(self, wall_s: float) -> Signals | None:
        """The file's signals merged with the topic's (newer wins per series), or None."""
        out: Signals | None = None
        try:
            out = signals_file(self._config, wall_s)
        except (OSError, SignalError) as e:
            log.warning("planner.signals_file %s refused: %s", self._config.planner.signals_file,
                        e)
        with self._lock:
            topic = self._topic_signals
        if topic is not None:
            out = topic if out is None else merge(out, topic)
        return out

    def plan_once(self) -> PlannerState:
        """One round (blocking: a worker thread): plan, publish, audit, move the state."""
        wall = self._clock.wall()
        outcome: Plan | str
        try:
            outcome = self._round(wall)
        except (ForecastError, PlanError, HistoryError) as e:
            outcome = str(e)
        except Exception as e:  # a planner bug must never take the agent down
            log.exception("planning round failed")
            outcome = f"planning failed: {e!r}"
        state = next_state(self.state, outcome, now_s=wall)
        if state.plan is not self.state.plan:
            self._previous = self.state.plan
        self.state = state
        self._publish(state, outcome, wall)
        return state

    def _round(self, wall: float) -> Plan:
        if self._store_path is None:
            raise ForecastError("no history (history.enabled is false)")
        days = self._config.planner.history_days
        t, mean, p10 = natural_history(self._store_path, int(wall) - days * DAY_S, int(wall))
        return make_plan(t, mean, p10, self.signals(wall), now_s=wall, settings=self.settings())

    def _publish(self, state: PlannerState, outcome: Plan | str, wall: float) -> None:
        plan = state.plan
        reason = None if isinstance(outcome, Plan) and outcome.valid else (
            outcome if isinstance(outcome, str) else outcome.result.status)
        extra: dict[str, Any] = {"state": state.name, "reason": reason}
        if plan is None:
            payload = plan_payload(self._node_id, made_at=wall, start_s=0, mtu_s=0,
                                   offers_w={}, extra=extra)
        else:
            extra |= plan.summary()
            payload = plan_payload(
                self._node_id, made_at=plan.made_at_s, start_s=plan.forecast.start_s,
                mtu_s=plan.forecast.mtu_s,
                offers_w={k: list(v) for k, v in plan.result.offers_w.items()}, extra=extra)
        if reason is None:
            log.info("plan made: %s", _headline(plan))
        else:
            log.warning("planning round gave no new plan (%s); %s", reason, state.name)
        self._ledger.record("plan", json.loads(payload))
        try:
            self._link.publish_threadsafe(self._topics.plan, payload, qos=1, retain=True)
        except RuntimeError:  # the controller's link is not running (stopping): audited only
            log.warning("plan not published: the controller's connection is not running")

    def reading(self) -> PlanNow:
        """Tier 3 now, for the metrics (any thread: reads immutable snapshots). A round plans
        from the next MTU on, so the MTU under way is the previous plan's."""
        state, wall = self.state, self._clock.wall()
        plan = state.plan
        covering = self._covering(wall)
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


def _headline(plan: Plan | None) -> str:
    if plan is None:
        return "-"
    offered = {k: round(float(v.max()), 1) for k, v in plan.result.offers_w.items()}
    return (f"{plan.forecast.horizon} MTUs from {plan.forecast.start_s}; max offer per product "
            f"{offered}; expected revenue {plan.result.revenue:.2f} EUR")


def _award_id(payload: bytes) -> str | None:
    """The id an award payload carries, for the ack of one that could not be handled (None
    when there is no such string)."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    ident = data.get("id") if isinstance(data, dict) else None
    return ident if isinstance(ident, str) and 0 < len(ident) <= wire.ID_MAX_CHARS else None
