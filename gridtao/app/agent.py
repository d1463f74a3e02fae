"""The agent: composition root. Builds backend, island, tiers and transport; owns start and stop.

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

Stop restores every limit the agent changed to what it found at start (after a crash, what the
crashed run found: the journal keeps it), then publishes an offline status. The agent never
commands a limit outside ``[min, default]`` (gridtao.safety.envelope).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from gridtao import __version__
from gridtao.app.actuation import check_write_permission, report_actuation, restore_limits
from gridtao.app.checks import check_priority_floors
from gridtao.app.drenergy import DrEventEnergy
from gridtao.app.exports import register_collectors
from gridtao.app.gpuclaim import GpuClaim, claim_gpus
from gridtao.app.links import node_links
from gridtao.app.nodegpus import UNAVAILABLE_CHECK_S, machine_gpus, open_node_gpus
from gridtao.app.options import GIL_SWITCH_INTERVAL_S, AgentOptions, default_node_id
from gridtao.app.periodic import ControllerLoop, ControllerParts
from gridtao.app.planning import NodePlanning
from gridtao.app.planning import floor_w as planning_floor_w
from gridtao.app.readback import LedgerFeeds, ReadBack
from gridtao.app.reload import (
    Credentials,
    ReloadResult,
    apply_reload,
    plan_reload,
    read_credentials,
)
from gridtao.app.workmodel import WorkAwareCuts
from gridtao.clock import Clock, MonotonicClock
from gridtao.config.agent import Config, ConfigError
from gridtao.config.paths import run_dir, with_state_paths
from gridtao.control.capacity import Capacity, CapacityWatch, enrolled_w, node_capacity
from gridtao.control.response import Reached, ResponseMeter
from gridtao.control.tier1.loop import FastLoop
from gridtao.control.tier2.facility import FacilityModel
from gridtao.control.tier2.tracker import Tier2
from gridtao.gpu.backend import GpuBackend
from gridtao.hotpath.intake import Intake, Outgoing
from gridtao.hotpath.rejections import RejectionGate
from gridtao.products.catalog import STEP_RAMP_OUT_SLACK
from gridtao.products.frequency import level_key
from gridtao.products.portfolio import Portfolio, ProductMonitor
from gridtao.records.energy import EventEnergy
from gridtao.records.journal import JournalError
from gridtao.records.ledger import Ledger
from gridtao.records.unsent import UnsentAck, keep, take, unsent_path
from gridtao.safety.island import Activation, OutsideChange, SafetyIsland
from gridtao.safety.watchdog import Watchdog
from gridtao.security.guard import Guard
from gridtao.telemetry.metrics import (
    Metrics,
    MetricsServer,
    start_http_server,
)
from gridtao.transport.instance import Instance, ensure_unique
from gridtao.wire import messages as wire
from gridtao.work.node import NodeWork

# AgentOptions is part of the Agent's constructor: importable from here too.
__all__ = ["STOP_REASON", "Agent", "AgentOptions"]

log = logging.getLogger("gridtao.app.agent")

#: The reason acked for every event still held when the agent stops. (After a crash the agent
#: finds its own caps at start: it restores what was found before it first changed them.)
STOP_REASON = ("the agent stopped: the GPUs went back to their resting limits, as found before "
               "the agent first changed them")


class Agent:
    """One node's agent. ``start()`` then ``await serve(stop)``; ``close()`` is idempotent."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        backend: GpuBackend | None = None,
        registry: CollectorRegistry | None = None,
        options: AgentOptions | None = None,
    ) -> None:
        # Audit trail, journal and replay store: absolute paths, by default in the state dir.
        config = with_state_paths(config, config.mqtt.node_id or default_node_id())
        self.config = config
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.options = options or AgentOptions()
        # Keys and broker credentials first: a missing or bad key, CA or password file fails
        # before any GPU is opened, not in a reconnect loop later.
        credentials = read_credentials(config)
        self.node_id = config.mqtt.node_id or default_node_id()
        self.instance = Instance()  # in the retained status: no second agent on this node id
        self.topics = wire.Topics(config.mqtt.prefix, self.node_id)
        # Acks a stop could not deliver (the broker away), sent by the next start.
        self._unsent = unsent_path(str(config.journal.path), self.node_id)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        gpus = open_node_gpus(config, clock=self.clock, backend=backend)
        self.backend: GpuBackend = gpus.backend
        self._driver_backend = gpus.driver_backend
        self._physical = gpus.physical
        #: GPUs that could not be opened (one fallen off the bus): the others are served.
        self.unavailable_gpus = gpus.unavailable
        self.config = config = gpus.config
        self.simulated = gpus.simulated
        #: The backend only logs its writes (``--dry-run``): nothing reaches the GPUs.
        self.dry_run = bool(getattr(self.backend, "dry_run", False))
        self.metrics.set_build(__version__, simulated=self.simulated)
        self.gpu_indices = gpus.indices
        self.metrics.name_gpus(gpus.driver_indices)
        self.gpu_limits = gpus.limits
        # After a crash the journal knows better: what the first run found (records/ledger.py).
        self.initial_limits_mw = list(gpus.found_mw)
        self._claim: GpuClaim | None = None
        try:
            # Before the journal's lock and any record: a second agent on these GPUs is told
            # so, whatever its node id (app/gpuclaim.py).
            if backend is None and machine_gpus(config, self.simulated) and not self.dry_run:
                self._claim = claim_gpus(
                    run_dir() / "gpus", [(i, d.uuid) for i, d in zip(
                        gpus.driver_indices, self.backend.devices(), strict=True)],
                    node_id=self.node_id)
            check_priority_floors(config, self.gpu_indices, self.gpu_limits)
            self.ledger = Ledger(
                config, clock=self.clock, node_id=self.node_id,
                uuids=[d.uuid for d in self.backend.devices()],
                default_mw=[lim.default_mw for lim in self.gpu_limits],
                found_mw=self.initial_limits_mw,
            )
        except JournalError as e:  # named with the configuration it comes from
            self._release_gpus(close=backend is None)
            raise JournalError(f"{config.source}: {e}") from None
        except BaseException:
            self._release_gpus(close=backend is None)
            raise
        try:
            self._compose(config, credentials)
        except BaseException:
            # What is held so far goes: the island's threads, the journal's lock (as a crash
            # leaves it: nothing was written), then the driver and the GPUs' claims.
            island = getattr(self, "island", None)
            if island is not None:
                island.close()
            self.ledger.abandon()
            self._release_gpus(close=backend is None)
            raise

    def _compose(self, config: Config, credentials: Credentials) -> None:
        """Everything above the GPUs and the records: the island, the tiers, the transport
        (part of the constructor; a failure here is undone by it)."""
        verifier, tls_context, password = credentials
        self._found_mw = list(self.initial_limits_mw)
        self._min_hold_s = {level_key(t): t.min_hold_s for t in config.safety.triggers}
        self.initial_limits_mw = list(self.ledger.initial_limits_mw)
        self._touched = False  # limits may have been written: restore them at stop
        safety = config.safety
        self.island = SafetyIsland(
            self.backend,
            clock=self.clock,
            release_rate_per_s=safety.release_rate_per_s,
            max_event_s=safety.max_event_s,
            resting_mw=self.initial_limits_mw,
            dry_run=self.dry_run,
        )
        self.watchdog = Watchdog(
            safety.watchdog_timeout_s, clock=self.clock, on_expire=self._watchdog_expired,
            on_recover=self._watchdog_recovered,
        )
        self.fast = FastLoop(
            self.backend,
            self.island,
            clock=self.clock,
            config=config.control,
            metrics=self.metrics,
            heartbeat=self.watchdog.heartbeat,
            rearm_period_s=safety.rearm_period_s,
        )
        self.meter = ResponseMeter(
            self.backend,
            clock=self.clock,
            on_reached=self._reached,
            band_fraction=config.control.band_fraction,
        )
        self.guard = Guard.from_config(
            config,
            node_id=self.node_id,
            default_total_mw=float(self.island.envelope.default_total_mw),
            draw_total_mw=self.island.basis_total_mw,
            wall=self.clock.wall,
            registry=self.registry,
            verifier=verifier,
        )
        # Tier 2 and the enrolled products (control/tier2/tracker.py, products/portfolio.py): the
        # monitor fires step products on the island lane and refreshes tier 2's commitment there.
        self.portfolio = Portfolio(
            config.products, ramp_out_per_s=safety.release_rate_per_s * STEP_RAMP_OUT_SLACK)
        self.tier2 = Tier2(self.island, self.portfolio, facility=config.facility,
                           config=config.tracker, clock=self.clock)
        self.monitor = ProductMonitor(safety.triggers, self.portfolio,
                                      on_change=self.tier2.update,
                                      stale_after_s=safety.frequency_stale_s)
        # What each event drew and did not draw, computed on the read-back thread.
        self.energy = EventEnergy(
            FacilityModel.from_config(config.facility), len(self.gpu_indices),
            on_event=lambda fields: self.feeds.event_energy(fields))
        self.intake = Intake(
            self.island,
            self.topics,
            clock=self.clock,
            monitor=self.monitor,
            dr=self.monitor,
            max_payload_bytes=config.mqtt.max_payload_bytes,
            metrics=self.metrics,
            on_activation=self._activated,
            on_event_ended=self._event_ended,
            guard=self.guard,
            on_decision=self._decided if self.ledger.active else None,
            simulated=self.simulated,
            max_sample_skew_s=safety.frequency_max_skew_s,
            rejections=RejectionGate(acks_per_s=config.limits.reject_acks_per_s,
                                     ack_burst=config.limits.reject_ack_burst,
                                     records_per_s=config.limits.reject_records_per_s,
                                     record_burst=config.limits.reject_record_burst),
        )
        self.lane, self.status_link = node_links(config, self.node_id, self.topics,
                                                 self.intake, tls=tls_context,
                                                 password=password, clock=self.clock)
        self._fast_stop = threading.Event()
        self._fast_thread: threading.Thread | None = None
        self._metrics_server: MetricsServer | None = None
        self._started = False
        self._closed = False
        self._abort_start = threading.Event()  # set by abort_start(): stop waiting now
        #: GPUs whose limit found at start could not be restored at stop (exit status 3).
        self.restore_failed = 0
        self.lane_failed = False  # the island lane ended with an error (serve stopped the agent)
        self._quiesced = False
        self._quiesce_lock = threading.Lock()
        # The floor dispatched cuts stop at (security/bounds.py): capacity never counts below it.
        self._node_floor_mw = config.limits.min_node_fraction * sum(
            lim.default_mw for lim in self.gpu_limits)
        self.capacity_watch = CapacityWatch()
        # Tier 3: history, planner, awards and arming (app/planning.py).
        self.planning = NodePlanning(
            config, node_id=self.node_id, topics=self.topics, clock=self.clock,
            portfolio=self.portfolio, island=self.island, guard=self.guard, ledger=self.ledger,
            link=self.status_link,
            floor_w=planning_floor_w(config, self.gpu_limits, self.gpu_indices),
            ceiling=self.tier2 if config.planner.ceiling else None)
        # The energy and work ledgers' feeds (GPUs by driver index, as work.sources name them).
        self.feeds = LedgerFeeds(
            gpus=list(zip(self.driver_indices(), (d.uuid for d in self.backend.devices()),
                          strict=True)),
            clock=self.clock, power_mw=lambda: self.fast.draw_mw,
            record=lambda fields: self.ledger.record("event_energy", fields),
            recorder=self.planning.recorder)
        self.feeds.energy = self.energy
        self.read_back = ReadBack(self.backend, self.island, self.gpu_indices, clock=self.clock,
                                  on_reading=self.planning.on_reading,
                                  on_outside_change=self._limit_changed_outside,
                                  on_energy=self.feeds.round)
        self.work = NodeWork(config.work, registry=self.registry)  # threads start in start()
        self.feeds.attach_work(self.work.scraper, self.registry)  # J/unit, work lost
        self.feeds.attach_cpus(self.work.rapl.readings if self.work.rapl is not None else None)
        self.work_aware = WorkAwareCuts(config, self.work, self.fast, self.island,  # docs/work.md
                                        node_id=self.node_id, registry=self.registry,
                                        clock=self.clock, physical=self._physical)
        self.planning.work_factor = self.work_aware.lost_work_factor
        self.controller = ControllerLoop(
            ControllerParts(
                node_id=self.node_id, status_topic=self.topics.status,
                tracker_topic=self.topics.tracker, gpu_indices=tuple(self.gpu_indices),
                gpu_limits=tuple(self.gpu_limits), clock=self.clock, backend=self.backend,
                tier1=self.fast, island=self.island, tier2=self.tier2,
                status_link=self.status_link, ledger=self.ledger,
                capacity=self.capacity, capacity_watch=self.capacity_watch,
                simulated=self.simulated, frequency_feed=self.frequency_feed,
                instance=self.instance.fields(),
                read_back=self.read_back.read, read_back_period_s=config.safety.rearm_period_s,
                records=self.ledger.records_status,
                physical_indices=self._physical, unavailable=self.unavailable_gpus,
                dr_energy=DrEventEnergy(self.energy, self.clock).observe,
                auth=self.guard.requirements,
                cut_interval_s=config.limits.min_event_interval_s,
            ),
            status_period_s=config.mqtt.status_period_s,
            tracker_period_s=config.tracker.period_s,
            busy_load_fraction=self.options.busy_load_fraction,
        )
        register_collectors(self)  # read when Prometheus scrapes (app/exports.py)

    def capacity(self) -> Capacity:
        """The node's down-capacity now, from tier 1's latest readings and the island's
        floors (no NVML call; any thread)."""
        return node_capacity(self.fast.draw_mw, self.island.floor_mw(),
                             facility=self.config.facility, enrolled=enrolled_w(
                                 self.config.products, self.planning.arming.snapshot().armed_w),
                             node_floor_mw=self._node_floor_mw)

    async def _watch_unavailable(self) -> None:
        """Check the GPUs left out at start once in a while, and say when one is back."""
        reopenable = getattr(self._driver_backend, "reopenable", None)
        if reopenable is None:
            return
        said: set[int] = set()
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(UNAVAILABLE_CHECK_S)
            back = await loop.run_in_executor(None, reopenable)
            for index in sorted(set(back) - said):
                log.warning("GPU %d can be opened again: restart the agent to serve it", index)
                self.ledger.record("gpu_back", {"gpu": index})
            said = set(back)

    def frequency_feed(self) -> tuple[float | None, float | None, bool]:
        """(last frequency Hz, seconds since the last sample, stale); any thread."""
        m = self.monitor
        return m.last_hz, m.sample_age_s(self.clock.now()), m.stale

    def reload(self, load: Callable[[], Config]) -> ReloadResult:
        """Apply the configuration ``load()`` reads again: new signing keys and broker
        credentials (gridtao/app/reload.py). A bad file raises ConfigError and changes nothing;
        either way the outcome is counted and goes to the audit trail."""
        try:
            plan = plan_reload(self.config, with_state_paths(load(), self.node_id),
                               current=self.guard.verifier)
        except ConfigError as e:
            self.metrics.count_reload("refused")
            self.ledger.record("reload_refused", {"reason": str(e)})
            raise
        except Exception as e:  # anything else reading it: refused too, one line, no traceback
            self.metrics.count_reload("refused")
            self.ledger.record("reload_refused", {"reason": repr(e)})
            raise ConfigError(f"the configuration could not be read again: {e!r}") from None
        result = apply_reload(plan, guard=self.guard, links=(*self.lane.links, self.status_link))
        self.config = plan.config
        self.metrics.count_reload("applied")
        self.ledger.record("reload", result.fields())
        return result

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bring up everything but the controller loop. Raises GpuError / OSError on failure
        (after undoing what was started)."""
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        try:
            ensure_unique(self.config, self.topics.status, self.node_id, self.instance,
                          wall=self.clock.wall())
            # Before anything is recorded or touched: a port in use fails the start with nothing
            # to undo and no run in the audit trail that never ran.
            if self.options.serve_metrics and self.config.metrics.enabled:
                mc = self.config.metrics
                try:
                    self._metrics_server = start_http_server(self.metrics, mc.host, mc.port)
                except OSError as e:  # a host not on this machine, a port in use, a bad name
                    raise ConfigError(f"{self.config.source}: metrics.host/metrics.port "
                                      f"{mc.host}:{mc.port}: cannot listen there: "
                                      f"{e.strerror or e}") from None
                log.info("metrics at http://%s:%d/metrics", mc.host, self._metrics_server.port)
            self.ledger.start({"gpus": [
                {"index": d.index, "uuid": d.uuid, "name": d.name, "min_mw": lim.min_mw,
                 "default_mw": lim.default_mw, "max_mw": lim.max_mw, "found_mw": found}
                for d, lim, found in zip(self.backend.devices(), self.gpu_limits,
                                         self._found_mw, strict=True)
            ], "config": self.config.source,
                "dry_run": self.dry_run})
            self.planning.arm_now()  # the capacities in force, audited in this run's trail
            check_write_permission(self.backend, self.gpu_indices)
            self.guard.open()
            self._touched = True
            self.island.start()
            report_actuation(self.island.probe_writes(), len(self.gpu_indices),
                             require=self.config.gpus.require_actuation,
                             count_error=self.metrics.count_gpu_error)
            for trig in self.config.safety.triggers:
                self.island.arm(level_key(trig), 1.0 - trig.reduction_fraction)
            self.fast.step()  # first draw reading and armed caps before any trigger can land
            self.capacity_watch.update(self.capacity())  # short of the enrolment: said now
            for ev, act in self.ledger.recover(self.island, self.intake,
                                               ramp_s=self.island.release_bound_s):
                self.energy.event_started(ev.event_id, ev.kind, t0_s=act.commanded_at,
                                          wall0_s=act.commanded_wall,
                                          baseline_mw=ev.baseline_mw, recovered=True)
            self.island.rearm()
            self.tier2.start(sum(self.fast.draw_mw) / 1000.0)
            self.meter.start()
            self.watchdog.start()
            self._fast_thread = self.fast.start_thread(self._fast_stop)
            self.work.start()
            self.work_aware.start()
            log.info("agent %s: connecting to the broker at %s:%d", self.node_id,
                     self.config.mqtt.host, self.config.mqtt.port)
            connected = self.lane.start(connect_timeout_s=self.options.connect_timeout_s,
                                        abort=self._abort_start)
            self._resend_unsent()
            if self._abort_start.is_set():
                log.info("agent %s: stop requested while waiting for the broker", self.node_id)
            elif not connected:
                log.warning("broker %s:%d not reachable yet; retrying in the background",
                            self.config.mqtt.host, self.config.mqtt.port)
            self._started = True
        except BaseException:
            self.close()
            raise
        if not self._abort_start.is_set():
            log.info("agent %s up: %d GPUs, prefix %s", self.node_id, len(self.gpu_indices),
                     self.config.mqtt.prefix)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run the controller loop until ``stop`` is set or the island lane fails (then
        ``lane_failed``): status, metrics, optional bench load; then quiesce (limits restored)."""
        tasks = [asyncio.create_task(self.status_link.run(), name="status-link")]
        tasks += [asyncio.create_task(c) for c in self.controller.tasks()]
        tasks += [asyncio.create_task(c) for c in self.planning.tasks()]
        if self.unavailable_gpus:
            tasks.append(asyncio.create_task(self._watch_unavailable(), name="lost-gpus"))
        loop = asyncio.get_running_loop()
        lane_down = asyncio.Event()

        def lane_failed(_error: BaseException) -> None:  # on the lane's thread
            loop.call_soon_threadsafe(lane_down.set)

        self.lane.on_failure = lane_failed
        if self.lane.error is not None:  # it failed before the hook was set
            lane_down.set()
        try:
            waits = [asyncio.create_task(e.wait()) for e in (stop, lane_down)]
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()
            if lane_down.is_set():
                self.lane_failed = True
                log.error("agent %s: the island lane failed, so no trigger can reach the GPUs; "
                          "stopping (exit status 4) for the supervisor to restart the agent",
                          self.node_id)
            # Quiesce first (no trigger can land, limits restored), then say offline: a node
            # that has announced it is offline must not ack anything after.
            await loop.run_in_executor(None, self.quiesce)
            self.controller.publish_status(online=False, restored=self.restore_failed == 0)
            await self.status_link.flush(2.0)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop every thread, restore the limits found at start, release the driver."""
        if self._closed:
            return
        self._closed = True
        self.quiesce()
        self.planning.close()
        self.work.close()
        self.work_aware.close()
        self.island.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        self._release_gpus(close=True)
        if self._started:  # a failed start is said once, by the error that stopped it
            log.info("agent %s stopped", self.node_id)

    def _resend_unsent(self) -> None:
        """Hand the acks the last stop could not deliver to the ack connection (they go out
        once it is connected), and record it."""
        acks = take(self._unsent)
        if not acks:
            return
        log.warning("agent %s: sending %d ack(s) the last stop could not deliver",
                    self.node_id, len(acks))
        self.ledger.record("acks_resent", {"count": len(acks),
                                           "topics": sorted({a.topic for a in acks})})
        self.lane.call(lambda: [Outgoing(a.topic, a.payload, a.qos) for a in acks])

    def _release_gpus(self, *, close: bool) -> None:
        """Close the driver (``close``) and let the GPUs' claims go, in that order: no other
        agent may take them while this one can still write. The claims go whatever closing
        the driver raises."""
        try:
            if close:
                self.backend.close()
        finally:
            if self._claim is not None:
                self._claim.release()

    def abort_start(self) -> None:
        """Cut :meth:`start`'s wait for the broker short (thread-safe; a stop signal during
        start): start then returns at once and the caller stops the agent."""
        self._abort_start.set()

    def quiesce(self) -> None:
        """Stop taking triggers and controlling, then restore the limits found at start.
        Idempotent; thread-safe against a concurrent :meth:`close`."""
        with self._quiesce_lock:
            if self._quiesced:
                return
            self._quiesced = True
            # Each step is on its own: one that fails (a disk error flushing the replay store)
            # is logged, and the restore below runs whatever came before it.
            # The meter first: its last reached ack goes out with the lane's final flush, and
            # no ack is handed to the lane after its loop has closed.
            _stop_step("closing the response meter", self.meter.close)
            _stop_step("stopping the island's lane",
                       lambda: self.lane.stop(final=lambda: self.intake.end_all(STOP_REASON)))
            if self.lane.undelivered:  # the broker was away: the next start sends them
                keep(self._unsent, [UnsentAck(m.topic, m.payload, m.qos)
                                    for m in self.lane.undelivered])
            _stop_step("closing the message guard", self.guard.close)
            self._fast_stop.set()
            if self._fast_thread is not None:
                self._fast_thread.join(timeout=2.0)
            _stop_step("closing the watchdog", self.watchdog.close)
            if not self._touched:  # start failed before any write: nothing to undo
                self.ledger.close(restore_failed=0, limits_mw=())
                return
            # No tier 1 write queued behind a slow GPU may land after the restore.
            self.island.seal()
            # The read-back may still run: the restore's writes are the agent's own.
            self.island.stop_watching()
            failed = self.restore_initial_limits()
            self.restore_failed = failed
            try:  # one more round: the energy of the events the stop ended is recorded
                self.read_back.read()
            except Exception:
                log.exception("the last energy read-back failed")
            if failed:
                log.error("agent %s: %d GPU limit(s) could not be restored", self.node_id, failed)
            else:
                log.info("agent %s: limits restored to their resting values (as found before "
                         "the agent first changed them)", self.node_id)
            self.ledger.close(restore_failed=failed, limits_mw=self.initial_limits_mw)

    def restore_initial_limits(self) -> int:
        """Put back the limits found at start (see :func:`restore_limits`); the failures."""
        return restore_limits(self.backend, self.gpu_indices, self.gpu_limits,
                              self.initial_limits_mw)

    # ---- callbacks from other threads -----------------------------------------------------

    def driver_indices(self) -> tuple[int, ...]:
        """Each GPU served, by its driver index (as ``nvidia-smi``, the status and
        ``work.sources`` name it), in the order the agent serves them."""
        return tuple(self.gpu_indices) if self._physical is None else self._physical

    def _limit_changed_outside(self, change: OutsideChange) -> None:
        """A GPU's limit was set by someone else (the read-back thread): the island rests it
        there; it is what the agent restores at stop and after a crash; counted and audited.
        The agent never writes the old limit back (docs/architecture.md, "Limits set from
        outside")."""
        k = change.index
        self.initial_limits_mw[k] = change.resting_mw
        self.metrics.count_outside_change(k)
        self.ledger.outside_change(k, change.from_mw, change.resting_mw,
                                   uuid=self.backend.devices()[k].uuid,
                                   during_event=change.during_event)

    def _decided(self, kind: str, fields: dict[str, object]) -> None:
        """An intake decision (island lane): to the ledger."""
        self.ledger.decision(kind, fields)

    def _event_ended(self, event_id: str) -> None:
        """An event ended (island lane), recorded or not: to the energy ledger, which reports
        it from the read-back thread after the next round."""
        self.energy.event_ended(event_id, t1_s=self.clock.now(), wall1_s=self.clock.wall())

    def _activated(self, act: Activation) -> None:
        self.energy.event_started(act.event_id, act.kind, t0_s=act.commanded_at,
                                  wall0_s=act.commanded_wall, baseline_mw=act.baseline_mw)
        self.meter.watch(act.event_id, baseline_mw=act.baseline_mw, target_mw=act.target_mw)
        if self.ledger.journal is not None:
            if act.kind == "frequency":
                hold_s = self._min_hold_s.get(act.level or "", 0.0)
                hold_until: float | None = act.commanded_wall + hold_s
            else:
                hold_until = self.intake.deadline_wall(act.event_id)
            self.ledger.activated(act, hold_until_wall=hold_until)

    def _reached(self, reached: Reached) -> None:
        # Meter thread -> lane loop: the intake's state is only touched on the lane's loop.
        def ack() -> list[Outgoing]:
            out = self.intake.reached_ack(reached.event_id, reached.reached_wall,
                                          reached.node_power_mw / 1000.0)
            return [out] if out is not None else []

        self.lane.call(ack)
        ev = self.intake.activation_time(reached.event_id)
        if ev is not None:
            self.metrics.observe_trigger_to_target(reached.reached_at - ev)
        self.ledger.record("target_reached", {
            "event": reached.event_id, "reached_at": reached.reached_wall,
            "node_power_mw": reached.node_power_mw, "target_mw": reached.target_mw,
        })

    def _watchdog_expired(self) -> None:
        mode = self.config.safety.safe_state
        log.error("controller heartbeat lost for %.1f s: entering safe state %r",
                  self.config.safety.watchdog_timeout_s, mode)
        self.island.enter_safe_state(mode)
        self.ledger.safe_state(mode)

    def _watchdog_recovered(self) -> None:
        """The controller beats again (tier 1's thread): leave the safe state through the
        normal ramp (SafetyIsland.leave_safe_state)."""
        if self.island.leave_safe_state():
            self.ledger.record("safe_state_left", {"mode": self.config.safety.safe_state})


def _stop_step(what: str, step: Callable[[], object]) -> None:
    """Run one step of a stop; an exception is logged and the stop goes on (to the restore)."""
    try:
        step()
    except Exception:
        log.exception("stopping: %s failed; going on to restore the limits", what)
