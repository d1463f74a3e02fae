"""The agent: composition root. Opens the GPUs, the records and the safety island, builds the
parts above them (tiers, transport, planning: gridtao/app/compose.py, which also lists the
threads and loops and which calls what); owns start, serve, stop and reload.

Stop restores every limit the agent changed to what it found at start (after a crash, what the
crashed run found: the journal keeps it), then publishes an offline status. The agent never
commands a limit outside ``[min, default]`` (gridtao.safety.envelope).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from gridtao import __version__
from gridtao.app.actuation import check_write_permission, report_actuation, restore_limits
from gridtao.app.checks import check_priority_floors
from gridtao.app.compose import NodeParts
from gridtao.app.exports import register_collectors
from gridtao.app.gpuclaim import GpuClaim, claim_gpus
from gridtao.app.nodegpus import UNAVAILABLE_CHECK_S, NodeGpus, machine_gpus, open_node_gpus
from gridtao.app.options import GIL_SWITCH_INTERVAL_S, AgentOptions, default_node_id
from gridtao.app.reload import (
    Credentials,
    ReloadResult,
    apply_reload,
    plan_reload,
    read_credentials,
)
from gridtao.app.stopping import STOP_REASON, NodeStop
from gridtao.clock import Clock, MonotonicClock
from gridtao.config.agent import Config, ConfigError
from gridtao.config.paths import run_dir, with_state_paths
from gridtao.gpu.backend import GpuBackend
from gridtao.products.frequency import level_key
from gridtao.records.journal import JournalError
from gridtao.records.ledger import Ledger
from gridtao.records.unsent import unsent_path
from gridtao.safety.island import SafetyIsland
from gridtao.telemetry.metrics import (
    Metrics,
    MetricsServer,
    start_http_server,
)
from gridtao.transport.instance import Instance, ensure_unique
from gridtao.wire import messages as wire

# AgentOptions is part of the Agent's constructor, STOP_REASON of what its stop acks
# (app/stopping.py): importable from here too.
__all__ = ["STOP_REASON", "Agent", "AgentOptions"]

log = logging.getLogger("gridtao.app.agent")


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
            self._compose(config, credentials, gpus)
        except BaseException:
            # What is held so far goes: the island's threads, the journal's lock (as a crash
            # leaves it: nothing was written), then the driver and the GPUs' claims.
            island = getattr(self, "island", None)
            if island is not None:
                island.close()
            self.ledger.abandon()
            self._release_gpus(close=backend is None)
            raise

    def _compose(self, config: Config, credentials: Credentials, gpus: NodeGpus) -> None:
        """Everything above the GPUs and the records: the island, then the tiers and the
        transport wired to it (app/compose.py), each kept under its own name, and the stop
        (app/stopping.py) (part of the constructor; a failure here is undone by it)."""
        self._found_mw = list(self.initial_limits_mw)
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
        parts = NodeParts(config, credentials, gpus=gpus, island=self.island, ledger=self.ledger,
                          clock=self.clock, registry=self.registry, metrics=self.metrics,
                          node_id=self.node_id, topics=self.topics, instance=self.instance,
                          initial_limits_mw=self.initial_limits_mw,
                          busy_load_fraction=self.options.busy_load_fraction)
        # The same objects under the agent's names (none is ever rebound).
        self.watchdog, self.fast, self.meter = parts.watchdog, parts.fast, parts.meter
        self.guard, self.portfolio, self.tier2 = parts.guard, parts.portfolio, parts.tier2
        self.monitor, self.energy, self.intake = parts.monitor, parts.energy, parts.intake
        self.lane, self.status_link = parts.lane, parts.status_link
        self.capacity_watch, self.planning = parts.capacity_watch, parts.planning
        self.feeds, self.read_back = parts.feeds, parts.read_back
        self.work, self.work_aware = parts.work, parts.work_aware
        self.controller = parts.controller
        #: The node's down-capacity now, and the frequency feed (NodeParts; any thread).
        self.capacity, self.frequency_feed = parts.capacity, parts.frequency_feed
        #: Whether each connection of the trigger path is up (NodeParts; any thread).
        self.trigger_links = parts.trigger_links
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
        self._stopping = NodeStop(parts, ledger=self.ledger, node_id=self.node_id,
                                  unsent=self._unsent, tier1_stop=self._fast_stop,
                                  restore=self.restore_initial_limits)
        register_collectors(self)  # read when Prometheus scrapes (app/exports.py)

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
            if self.options.freeze_startup_heap:
                # Everything built so far lives as long as the agent (the modules, the parts):
                # frozen, it is never scanned again, so a full collection later takes well
                # under a millisecond of the interpreter instead of about 20 ms, which would
                # stall the island's thread, and a trigger with it.
                gc.collect()
                gc.freeze()
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
            self._stopping.resend_unsent()
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
        """Stop taking triggers and controlling, then restore the limits found at start
        (app/stopping.py). Idempotent; thread-safe against a concurrent :meth:`close`."""
        with self._quiesce_lock:
            if self._quiesced:
                return
            self._quiesced = True
            self.restore_failed = self._stopping.run(tier1=self._fast_thread,
                                                     touched=self._touched)

    def restore_initial_limits(self) -> int:
        """Put back the limits found at start (see :func:`restore_limits`); the failures."""
        return restore_limits(self.backend, self.gpu_indices, self.gpu_limits,
                              self.initial_limits_mw)

    def driver_indices(self) -> tuple[int, ...]:
        """Each GPU served, by its driver index (as ``nvidia-smi``, the status and
        ``work.sources`` name it), in the order the agent serves them."""
        return tuple(self.gpu_indices) if self._physical is None else self._physical

