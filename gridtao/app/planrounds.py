"""The planner's rounds in the running agent (``planner.enabled``): signals in, plans out.

Every ``planner.period_s`` a round runs in a worker thread (never on the controller's loop,
never on the island's): history from SQLite, signals from ``planner.signals_file`` merged with
the latest retained ``{prefix}/signals``, forecast and solve (gridtao/tier3/planner.py). The plan
is published retained on ``{prefix}/nodes/{node}/plan`` and audited; a failed round keeps the
last valid plan (``Fallback``) or offers nothing (``NoPlan``), and says why. The agent never
crashes on it. Its inputs are built by gridtao/app/planinputs.py.

Threads: :meth:`PlanRounds.run` and :meth:`PlanRounds.take_signals` on the controller loop;
:meth:`PlanRounds.plan_once` on a worker thread; ``state`` and ``previous`` are swapped whole
(immutable snapshots) and read from any thread; the topic's signals are held under a lock.
Times in Unix seconds, power in W.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from gridtao.app.planinputs import natural_history, plan_settings, signals_file, with_learned_work
from gridtao.clock import Clock
from gridtao.config.agent import Config
from gridtao.history import HistoryError
from gridtao.records.ledger import Ledger
from gridtao.safety.island import SafetyIsland
from gridtao.tier3.forecast import ForecastError
from gridtao.tier3.planner import NoPlan, Plan, PlannerState, PlanSettings, make_plan, next_state
from gridtao.tier3.problem import PlanError
from gridtao.tier3.signals import SignalError, Signals, merge, parse_signals
from gridtao.transport.mqtt import MqttLink
from gridtao.wire import messages as wire
from gridtao.wire.awards import plan_payload

__all__ = ["PlanRounds"]

log = logging.getLogger("gridtao.tier3")

DAY_S = 86_400


class PlanRounds:
    """See the module docstring. ``floor_w``: the node's IT floor (W)."""

    def __init__(self, config: Config, *, node_id: str, topics: wire.Topics, clock: Clock,
                 island: SafetyIsland, ledger: Ledger, link: MqttLink, floor_w: float) -> None:
        self._config = config
        self._node_id = node_id
        self._topics = topics
        self._clock = clock
        self._island = island
        self._ledger = ledger
        self._link = link
        self._floor_w = floor_w
        # The share of full-speed work an IT W·h shed costs, from the learned work model
        # (None: no model; the configured value stands): set by the agent when it has one.
        self.work_factor: Callable[[], float | None] | None = None
        self._lock = threading.Lock()
        self.state: PlannerState = NoPlan("not planned yet")
        self.previous: Plan | None = None  # the plan before, which covers the MTU under way
        self._topic_signals: Signals | None = None
        self._store_path = config.history.path

    def take_signals(self, payload: bytes, wall_s: float) -> None:
        """Signals on ``{prefix}/signals`` (controller loop): kept for the next rounds, merged
        with the file's; refused ones are logged and the last taken stand."""
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

    async def run(self) -> None:
        """A round every ``planner.period_s``, each in a worker thread (controller loop)."""
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
            self.previous = self.state.plan
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

    def covering(self, wall_s: float) -> Plan | None:
        """The plan for the MTU under way: a round plans from the next MTU on, so that MTU is
        the previous plan's until the new plan's first MTU starts."""
        plan = self.state.plan
        return next((p for p in (plan, self.previous)
                     if p is not None and p.forecast.start_s <= wall_s < p.end_s), None)


def _headline(plan: Plan | None) -> str:
    if plan is None:
        return "-"
    offered = {k: round(float(v.max()), 1) for k, v in plan.result.offers_w.items()}
    return (f"{plan.forecast.horizon} MTUs from {plan.forecast.start_s}; max offer per product "
            f"{offered}; expected revenue {plan.result.revenue:.2f} EUR")
