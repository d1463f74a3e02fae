"""The parts of one node's agent above its GPUs, its records and its safety island, built once
and wired to each other: :class:`NodeParts` (built by the agent's constructor,
gridtao/app/agent.py, which undoes what it holds when building fails). Power in mW.

Threads and loops (docs/architecture.md):
- island lane: its own thread, uvloop and broker connection; triggers -> parallel cap writes;
- tier 1: its own thread at ``control.fast_hz``; reads instant power, re-arms the island;
- response meter: samples node power after each activation until the target band is reached;
- watchdog: puts the GPUs in ``safety.safe_state`` if tier 1 stops beating;
- the controller loop (asyncio on uvloop, the caller's thread; gridtao/app/periodic.py, or a
  thread of its own with gridtao/app/serve.py): retained status, tier 2
  (control/tier2/tracker.py) every ``tracker.period_s`` with its retained tracker topic;
  tier 2's commitment is also refreshed on the island lane after every frequency sample;
- work sources and CPU power (gridtao/work/): a daemon thread per source, one for RAPL;
- the read-back (a worker thread of the controller loop) also feeds the per-event energy
  ledger (gridtao/records/energy.py), which writes an ``event_energy`` record once an event
  has ended, and the history's per-GPU energy and work (``LedgerFeeds``,
  gridtao/app/readback.py; J per unit and work lost are computed on the recorder's thread);
- Prometheus (the metrics HTTP thread): the links' and the audit trail's counters are read when
  it scrapes (telemetry/metrics.py, ``StatsCollector``).

Nothing here starts a thread or connects (the agent's ``start`` does). The callbacks of
:class:`NodeParts` are the wiring between the parts: each says which thread calls it, and each
reaches the parts it needs directly, so the island lane's path gains no indirection.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from gridtao.app.drenergy import DrEventEnergy
from gridtao.app.links import node_links
from gridtao.app.nodegpus import NodeGpus
from gridtao.app.periodic import ControllerLoop, ControllerParts
from gridtao.app.planning import NodePlanning
from gridtao.app.planning import floor_w as planning_floor_w
from gridtao.app.readback import LedgerFeeds, ReadBack
from gridtao.app.reload import Credentials
from gridtao.app.workmodel import WorkAwareCuts
from gridtao.clock import Clock
from gridtao.config.agent import Config
from gridtao.control.capacity import Capacity, CapacityWatch, enrolled_w, node_capacity
from gridtao.control.response import Reached, ResponseMeter
from gridtao.control.tier1.loop import FastLoop
from gridtao.control.tier2.facility import FacilityModel
from gridtao.control.tier2.tracker import Tier2
from gridtao.hotpath.intake import Intake, Outgoing
from gridtao.hotpath.rejections import RejectionGate
from gridtao.products.catalog import STEP_RAMP_OUT_SLACK
from gridtao.products.frequency import level_key
from gridtao.products.portfolio import Portfolio, ProductMonitor
from gridtao.records.energy import EventEnergy
from gridtao.records.ledger import Ledger
from gridtao.safety.island import Activation, OutsideChange, SafetyIsland
from gridtao.safety.watchdog import Watchdog
from gridtao.security.guard import Guard
from gridtao.telemetry.metrics import Metrics
from gridtao.transport.instance import Instance
from gridtao.wire import messages as wire
from gridtao.work.node import NodeWork

__all__ = ["NodeParts"]

log = logging.getLogger("gridtao.app.agent")


class NodeParts:
    """The tiers, the transport, planning, the read-back and the work model of one node, around
    the agent's ``island``, ``ledger`` and GPUs (``gpus``: as opened, ``gpus.config``'s
    numbering). The agent exposes each part under the same name.

    ``initial_limits_mw`` is the agent's own list, one per GPU: the limits it restores at stop
    (what the journal says the first run found). A limit set from outside is written into it,
    in place (:meth:`_limit_changed_outside`); it is never rebound."""

    def __init__(self, config: Config, credentials: Credentials, *, gpus: NodeGpus,
                 island: SafetyIsland, ledger: Ledger, clock: Clock,
                 registry: CollectorRegistry, metrics: Metrics, node_id: str,
                 topics: wire.Topics, instance: Instance, initial_limits_mw: list[int],
                 busy_load_fraction: float) -> None:
        verifier, tls_context, password = credentials
        backend = gpus.backend
        self.island = island
        self.initial_limits_mw = initial_limits_mw
        self._backend, self._clock, self._metrics, self._ledger = backend, clock, metrics, ledger
        # Read by the callbacks and capacity(); a reload never changes them (app/reload.py).
        self._safety = safety = config.safety
        self._facility, self._products = config.facility, config.products
        self._min_hold_s = {level_key(t): t.min_hold_s for t in safety.triggers}
        self.watchdog = Watchdog(
            safety.watchdog_timeout_s, clock=clock, on_expire=self._watchdog_expired,
            on_recover=self._watchdog_recovered,
        )
        self.fast = FastLoop(
            backend,
            island,
            clock=clock,
            config=config.control,
            metrics=metrics,
            heartbeat=self.watchdog.heartbeat,
            rearm_period_s=safety.rearm_period_s,
        )
        self.meter = ResponseMeter(
            backend,
            clock=clock,
            on_reached=self._reached,
            band_fraction=config.control.band_fraction,
        )
        self.guard = Guard.from_config(
            config,
            node_id=node_id,
            default_total_mw=float(island.envelope.default_total_mw),
            draw_total_mw=island.basis_total_mw,
            wall=clock.wall,
            registry=registry,
            verifier=verifier,
        )
        # Tier 2 and the enrolled products (control/tier2/tracker.py, products/portfolio.py): the
        # monitor fires step products on the island lane and refreshes tier 2's commitment there.
        self.portfolio = Portfolio(
            config.products, ramp_out_per_s=safety.release_rate_per_s * STEP_RAMP_OUT_SLACK)
        self.tier2 = Tier2(island, self.portfolio, facility=config.facility,
                           config=config.tracker, clock=clock)
        self.monitor = ProductMonitor(safety.triggers, self.portfolio,
                                      on_change=self.tier2.update,
                                      stale_after_s=safety.frequency_stale_s)
        # What each event drew and did not draw, computed on the read-back thread.
        self.energy = EventEnergy(
            FacilityModel.from_config(config.facility), len(gpus.indices),
            on_event=lambda fields: self.feeds.event_energy(fields))
        self.intake = Intake(
            island,
            topics,
            clock=clock,
            monitor=self.monitor,
            dr=self.monitor,
            max_payload_bytes=config.mqtt.max_payload_bytes,
            metrics=metrics,
            on_activation=self._activated,
            on_event_ended=self._event_ended,
            guard=self.guard,
            on_decision=self._decided if ledger.active else None,
            simulated=gpus.simulated,
            max_sample_skew_s=safety.frequency_max_skew_s,
            rejections=RejectionGate(acks_per_s=config.limits.reject_acks_per_s,
                                     ack_burst=config.limits.reject_ack_burst,
                                     records_per_s=config.limits.reject_records_per_s,
                                     record_burst=config.limits.reject_record_burst),
        )
        self.lane, self.status_link = node_links(config, node_id, topics,
                                                 self.intake, tls=tls_context,
                                                 password=password, clock=clock)
        # The floor dispatched cuts stop at (security/bounds.py): capacity never counts below it.
        self._node_floor_mw = config.limits.min_node_fraction * sum(
            lim.default_mw for lim in gpus.limits)
        self.capacity_watch = CapacityWatch()
        # Tier 3: history, planner, awards and arming (app/planning.py).
        self.planning = NodePlanning(
            config, node_id=node_id, topics=topics, clock=clock,
            portfolio=self.portfolio, island=island, guard=self.guard, ledger=ledger,
            link=self.status_link,
            floor_w=planning_floor_w(config, gpus.limits, gpus.indices),
            ceiling=self.tier2 if config.planner.ceiling else None)
        # The energy and work ledgers' feeds (GPUs by driver index, as work.sources name them).
        self.feeds = LedgerFeeds(
            gpus=list(zip(gpus.driver_indices, (d.uuid for d in backend.devices()),
                          strict=True)),
            clock=clock, power_mw=lambda: self.fast.draw_mw,
            record=lambda fields: ledger.record("event_energy", fields),
            recorder=self.planning.recorder)
        self.feeds.energy = self.energy
        self.read_back = ReadBack(backend, island, gpus.indices, clock=clock,
                                  on_reading=self.planning.on_reading,
                                  on_outside_change=self._limit_changed_outside,
                                  on_energy=self.feeds.round)
        self.work = NodeWork(config.work, registry=registry)  # threads start in start()
        self.feeds.attach_work(self.work.scraper, registry)  # J/unit, work lost
        self.feeds.attach_cpus(self.work.rapl.readings if self.work.rapl is not None else None)
        self.work_aware = WorkAwareCuts(config, self.work, self.fast, island,  # docs/work.md
                                        node_id=node_id, registry=registry,
                                        clock=clock, physical=gpus.physical)
        self.planning.work_factor = self.work_aware.lost_work_factor
        self.controller = ControllerLoop(
            ControllerParts(
                node_id=node_id, status_topic=topics.status,
                tracker_topic=topics.tracker, gpu_indices=tuple(gpus.indices),
                gpu_limits=tuple(gpus.limits), clock=clock, backend=backend,
                tier1=self.fast, island=island, tier2=self.tier2,
                status_link=self.status_link, ledger=ledger,
                capacity=self.capacity, capacity_watch=self.capacity_watch,
                simulated=gpus.simulated, frequency_feed=self.frequency_feed,
                instance=instance.fields(),
                read_back=self.read_back.read, read_back_period_s=safety.rearm_period_s,
                records=ledger.records_status,
                physical_indices=gpus.physical, unavailable=gpus.unavailable,
                dr_energy=DrEventEnergy(self.energy, clock).observe,
                auth=self.guard.requirements,
                cut_interval_s=config.limits.min_event_interval_s,
                links=self.trigger_links,
            ),
            status_period_s=config.mqtt.status_period_s,
            tracker_period_s=config.tracker.period_s,
            busy_load_fraction=busy_load_fraction,
        )

    def trigger_links(self) -> dict[str, bool]:
        """Whether each connection of the trigger path is up (the status ``links``; the
        metric ``gridtao_broker_connected`` has the same names)."""
        lane = self.lane
        return {"island": lane.link.is_connected, "dispatch": lane.dispatch_link.is_connected,
                "frequency": lane.frequency_link.is_connected}

    def capacity(self) -> Capacity:
        """The node's down-capacity now, from tier 1's latest readings and the island's
        floors (no NVML call; any thread)."""
        return node_capacity(self.fast.draw_mw, self.island.floor_mw(),
                             facility=self._facility, enrolled=enrolled_w(
                                 self._products, self.planning.arming.snapshot().armed_w),
                             node_floor_mw=self._node_floor_mw)

    def frequency_feed(self) -> tuple[float | None, float | None, bool]:
        """(last frequency Hz, seconds since the last sample, stale); any thread."""
        m = self.monitor
        return m.last_hz, m.sample_age_s(self._clock.now()), m.stale

    # ---- callbacks from other threads -----------------------------------------------------

    def _limit_changed_outside(self, change: OutsideChange) -> None:
        """A GPU's limit was set by someone else (the read-back thread): the island rests it
        there; it is what the agent restores at stop and after a crash; counted and audited.
        The agent never writes the old limit back (docs/architecture.md, "Limits set from
        outside")."""
        k = change.index
        self.initial_limits_mw[k] = change.resting_mw
        self._metrics.count_outside_change(k)
        self._ledger.outside_change(k, change.from_mw, change.resting_mw,
                                    uuid=self._backend.devices()[k].uuid,
                                    during_event=change.during_event)

    def _decided(self, kind: str, fields: dict[str, object]) -> None:
        """An intake decision (island lane): to the ledger."""
        self._ledger.decision(kind, fields)

    def _event_ended(self, event_id: str) -> None:
        """An event ended (island lane), recorded or not: to the energy ledger, which reports
        it from the read-back thread after the next round."""
        self.energy.event_ended(event_id, t1_s=self._clock.now(), wall1_s=self._clock.wall())

    def _activated(self, act: Activation) -> None:
        """An event's caps were commanded (island lane): to the energy ledger, the response
        meter and the journal (with how long it is held: wall s)."""
        self.energy.event_started(act.event_id, act.kind, t0_s=act.commanded_at,
                                  wall0_s=act.commanded_wall, baseline_mw=act.baseline_mw)
        if self._ledger.journal is not None:  # before the meter: a reach is journaled on it
            if act.kind == "frequency":
                hold_s = self._min_hold_s.get(act.level or "", 0.0)
                hold_until: float | None = act.commanded_wall + hold_s
            else:
                hold_until = self.intake.deadline_wall(act.event_id)
            self._ledger.activated(act, hold_until_wall=hold_until,
                                   received_wall=self.intake.received_wall(act.event_id))
        self.meter.watch(act.event_id, baseline_mw=act.baseline_mw, target_mw=act.target_mw)

    def _reached(self, reached: Reached) -> None:
        # Meter thread -> lane loop: the intake's state is only touched on the lane's loop.
        def ack() -> list[Outgoing]:
            out = self.intake.reached_ack(reached.event_id, reached.reached_wall,
                                          reached.node_power_mw / 1000.0)
            return [out] if out is not None else []

        self.lane.call(ack)
        ev = self.intake.activation_time(reached.event_id)
        if ev is not None:
            self._metrics.observe_trigger_to_target(reached.reached_at - ev)
        self._ledger.reached(reached.event_id, reached.reached_wall,
                             reached.node_power_mw / 1000.0)
        self._ledger.record("target_reached", {
            "event": reached.event_id, "reached_at": reached.reached_wall,
            "node_power_mw": reached.node_power_mw, "target_mw": reached.target_mw,
        })

    def _watchdog_expired(self) -> None:
        """Tier 1 stopped beating (the watchdog's thread): the island enters
        ``safety.safe_state``; audited."""
        mode = self._safety.safe_state
        log.error("controller heartbeat lost for %.1f s: entering safe state %r",
                  self._safety.watchdog_timeout_s, mode)
        self.island.enter_safe_state(mode)
        self._ledger.safe_state(mode)

    def _watchdog_recovered(self) -> None:
        """The controller beats again (tier 1's thread): leave the safe state through the
        normal ramp (SafetyIsland.leave_safe_state)."""
        if self.island.leave_safe_state():
            self._ledger.record("safe_state_left", {"mode": self._safety.safe_state})
