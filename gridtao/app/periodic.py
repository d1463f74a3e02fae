"""The controller loop's periodic work: the agent's asyncio loop, off the hot path.

Triggers never pass through here (they go socket -> island lane -> island writers). Every
coroutine of :meth:`ControllerLoop.tasks` runs on the controller loop: the event loop that runs
``Agent.serve`` (the main thread under ``gridtao run``, a :class:`~gridtao.app.serve.ServeThread`
in the demo, the compliance bench and the tests). What runs there:

* the retained status every ``mqtt.status_period_s``, from tier 1's last readings (no NVML call
  on this thread, except in a dry run where tier 1's plans never take effect);
* tier 2 every ``tracker.period_s`` and its retained tracker topic, its products' and
  demand-response events' transitions audited and the latter's spans handed to the energy
  ledger;
* the audit of tier 1's limits when one moved by 1 W or more;
* the bench's ``under_load`` condition (pure-Python work keeping this loop busy).

It is given only the parts that work needs (:class:`ControllerParts`, built by
gridtao/app/agent.py), not the agent. The links' and the audit trail's counters are not carried
from here: Prometheus reads them when it scrapes (``StatsCollector``, gridtao/telemetry/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gridtao.clock import Clock
from gridtao.control.capacity import Capacity, CapacityWatch
from gridtao.gpu.backend import GpuError, PowerLimits
from gridtao.safety.island import IslandView
from gridtao.wire import messages as wire

log = logging.getLogger("gridtao.app.agent")


class Tier1Readings(Protocol):
    """What this loop reads of tier 1 (``FastLoop``, gridtao/control/tier1/loop.py). Tier 1's
    thread writes them; each property returns a fresh tuple, one per GPU in the agent's order."""

    @property
    def draw_mw(self) -> tuple[float, ...]:
        """Last instant power reading, mW."""
        ...

    @property
    def limits_mw(self) -> tuple[int, ...]:
        """The limits tier 1 last planned (and the island applied), mW."""
        ...

    @property
    def read_faults(self) -> tuple[str | None, ...]:
        """The error kind of a GPU whose power reads fail, else None."""
        ...


class IslandState(Protocol):
    """What this loop reads of the safety island (thread-safe snapshots)."""

    def view(self) -> IslandView: ...

    def enforced_mw(self) -> tuple[int, ...]:
        """Each GPU's enforced limit as last read back, mW."""
        ...

    def write_faults(self) -> Mapping[int, str]:
        """GPU index -> error kind of its last failed limit write."""
        ...


class GpuReads(Protocol):
    """The driver call this loop makes itself: tier 2's 1-s averages (GPU indices, mW)."""

    def average_power_mw(self, index: int) -> int: ...


class Tier2Ticks(Protocol):
    """Tier 2 (``Tier2``, gridtao/control/tier2/tracker.py), ticked from this loop only."""

    def tick(self, it_w: float) -> None:
        """One period with the node's measured IT power, W."""
        ...

    def snapshot(self) -> Mapping[str, object]:
        """The tracker topic's body (powers in W)."""
        ...


class StatusPublisher(Protocol):
    """The status link (an ``MqttLink`` whose ``run()`` is a task of this loop)."""

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> None:
        """Queue a message; call it from this loop only."""
        ...


class AuditLog(Protocol):
    """The audit trail's entry point (``Ledger.record``; thread-safe, never blocks)."""

    def record(self, kind: str, fields: Mapping[str, object]) -> None: ...


@dataclass(frozen=True)
class ControllerParts:
    """Everything :class:`ControllerLoop` works with; ``gpu_indices[k]`` and ``gpu_limits[k]``
    describe GPU ``k`` of tier 1's tuples."""

    node_id: str
    status_topic: str  # retained status, and the offline status at stop
    tracker_topic: str  # retained tier-2 state
    gpu_indices: tuple[int, ...]
    gpu_limits: tuple[PowerLimits, ...]
    clock: Clock  # now(): the busy load's slices; wall(): the payloads' ``t``
    backend: GpuReads
    tier1: Tier1Readings
    island: IslandState
    tier2: Tier2Ticks
    status_link: StatusPublisher
    ledger: AuditLog
    capacity: Callable[[], Capacity]  # the node's down-capacity now (no NVML call)
    capacity_watch: CapacityWatch  # logs when the node falls short of its enrolment
    simulated: bool  # the GPUs are simulated: the status says so
    frequency_feed: Callable[[], tuple[float | None, float | None, bool]]  # Hz, age s, stale
    instance: Mapping[str, object]  # this agent (id, pid, host): two on one node id are refused
    read_back: Callable[[], None]  # blocking GPU read-backs (enforced limits, energy)
    read_back_period_s: float
    #: The journal's and the audit trail's health (``Ledger.records_status``: name -> "ok",
    #: "failing: <reason>" or "off"; no I/O); None: the status has no ``records``.
    records: Callable[[], Mapping[str, str]] | None = None
    #: The driver's index of each served GPU (``gpu/subset.py``: some could not be opened at
    #: start), for the status; None: the served GPUs are the driver's 0..n-1.
    physical_indices: tuple[int, ...] | None = None
    #: GPUs left out at start: the driver's index -> error kind (status ``unavailable_gpus``).
    unavailable: Mapping[int, str] | None = None
    #: What a dispatch must carry (``Guard.requirements``; status ``auth``); None: not said.
    auth: Callable[[], Mapping[str, object]] | None = None
    #: ``limits.min_event_interval_s``: the node takes one cut per this long (status
    #: ``limits``, so a site spaces its orders to the node); None: not said.
    cut_interval_s: float | None = None
    #: Each tracker snapshot once its transitions are audited: the demand-response events'
    #: spans into the energy ledger (``DrEventEnergy.observe``, gridtao/app/drenergy.py).
    dr_energy: Callable[[Mapping[str, Any]], None] | None = None
    #: Whether each broker connection the trigger path uses is up (``island``: acks, and
    #: dispatches when they share it; ``dispatch``; ``frequency``), read at each status
    #: (status ``links``: a node that is up but cannot hear dispatches says so); None: not said.
    links: Callable[[], Mapping[str, bool]] | None = None


class ControllerLoop:
    """The periodic work of one agent; :meth:`tasks` are run by ``Agent.serve``.

    Periods are in seconds. Call everything from the controller loop's thread, except
    :meth:`status_gpus` and :meth:`it_power_w`, which only read and may be called from any
    thread (the tests do)."""

    def __init__(
        self,
        parts: ControllerParts,
        *,
        status_period_s: float,
        tracker_period_s: float,
        busy_load_fraction: float = 0.0,
    ) -> None:
        self._parts = parts
        self._status_period_s = status_period_s
        self._tracker_period_s = tracker_period_s
        self._busy_load_fraction = busy_load_fraction  # bench only: 0..0.95 of this loop
        self._audited_limits: tuple[int, ...] | None = None
        self._product_states: dict[str, str] = {}  # for record_transitions
        self._dr_states: dict[str, str] = {}
        self._busy_sink = 0

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        """The loops to run until the agent stops."""
        out = [self._status_loop(), self._tracker_loop(), self._read_back_loop()]
        if self._busy_load_fraction > 0:
            out.append(self._busy_load(self._busy_load_fraction))
        return out

    # ---- status -----------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            self.publish_status(online=True)
            self.record_limits()
            await asyncio.sleep(self._status_period_s)

    def publish_status(self, *, online: bool, restored: bool | None = None) -> None:
        """The retained status (online, with every GPU), or the offline one at stop
        (``restored``: whether the stop put back every limit it changed)."""
        p = self._parts
        if online:
            cap = p.capacity()
            # An event that can cut froze the basis: the draw is then the event's doing. One
            # whose caps sit above every resting limit (a cap above the draw) cuts nothing.
            p.capacity_watch.update(cap,
                                    event_active=p.island.view().basis_total_mw is not None)
            extra: dict[str, object] = {"capacity": cap.fields(),
                                        "frequency": self._feed_fields(),
                                        "simulated": p.simulated, "instance": dict(p.instance)}
            if p.records is not None:
                extra["records"] = dict(p.records())
            if p.auth is not None:
                extra["auth"] = dict(p.auth())
            if p.cut_interval_s is not None:
                extra["limits"] = {"min_event_interval_s": p.cut_interval_s}
            if p.links is not None:
                extra["links"] = {name: bool(up) for name, up in p.links().items()}
            if p.unavailable:
                extra["unavailable_gpus"] = [{"index": i, "fault": kind}
                                             for i, kind in sorted(p.unavailable.items())]
            payload = wire.status_payload(p.node_id, True, p.clock.wall(),
                                          p.island.view().event_id, self.status_gpus(),
                                          extra=extra)
        else:
            payload = wire.offline_payload(p.node_id, restored=restored)
        p.status_link.publish_nowait(p.status_topic, payload, qos=1, retain=True)

    def _feed_fields(self) -> dict[str, object]:
        hz, age, stale = self._parts.frequency_feed()
        return {"hz": hz, "age_s": None if age is None else round(age, 3), "stale": stale}

    def status_gpus(self) -> list[dict[str, float | str | None]]:
        """Per-GPU status from tier 1's last reading and the limits the GPUs enforce as last
        read back (the island's record; no NVML call on this thread): never a planned limit.
        Powers in W. ``fault``: the error kind of a GPU whose reads or last limit write fail,
        else None."""
        p = self._parts
        draw, limits = p.tier1.draw_mw, p.island.enforced_mw()
        read_faults, write_faults = p.tier1.read_faults, p.island.write_faults()
        return [
            {"index": i if p.physical_indices is None else p.physical_indices[k],
             "power_w": draw[k] / 1000.0, "limit_w": limits[k] / 1000.0,
             "default_w": lim.default_mw / 1000.0, "min_w": lim.min_mw / 1000.0,
             "max_w": lim.max_mw / 1000.0, "fault": read_faults[k] or write_faults.get(i)}
            for k, (i, lim) in enumerate(zip(p.gpu_indices, p.gpu_limits, strict=True))
        ]

    def record_limits(self) -> None:
        """Audit the limits the GPUs enforce (as last read back) when any moved by 1 W or more
        (at most once a status period: tier 1 adjusts them up to 100 times a second, the trail
        keeps the trajectory)."""
        p = self._parts
        limits = p.island.enforced_mw()
        last = self._audited_limits
        if last is not None and all(abs(x - y) < 1000 for x, y in zip(limits, last,
                                                                         strict=True)):
            return
        self._audited_limits = limits
        p.ledger.record("limits", {"limits_mw": limits, "draw_mw": p.tier1.draw_mw,
                                   "event": p.island.view().event_id})

    # ---- tier 2 --------------------------------------------------------------------------

    async def _read_back_loop(self) -> None:
        """The GPUs' read-backs every ``read_back_period_s``, in a worker thread (a slow driver
        call must not hold this loop, let alone tier 1)."""
        p = self._parts
        while True:
            await asyncio.sleep(p.read_back_period_s)
            try:
                await asyncio.to_thread(p.read_back)
            except Exception:
                log.exception("GPU read-back failed")

    async def _tracker_loop(self) -> None:
        """Tier 2 every ``tracker.period_s``; its state goes out retained on the tracker topic."""
        p = self._parts
        while True:
            await asyncio.sleep(self._tracker_period_s)
            try:
                # NVML calls, each may hang as long as a sick GPU takes: off the loop.
                it_w = await asyncio.to_thread(self.it_power_w)
                p.tier2.tick(it_w)
                snapshot = p.tier2.snapshot()
                self.record_transitions(snapshot)
                if p.dr_energy is not None:
                    p.dr_energy(snapshot)
                payload = wire.tracker_payload(p.node_id, p.clock.wall(), snapshot)
                p.status_link.publish_nowait(p.tracker_topic, payload, qos=0, retain=True)
            except Exception:
                log.exception("tier 2 tick failed")

    def record_transitions(self, snapshot: Mapping[str, Any]) -> None:
        """Audit every change of a product's state and of a DR event's, with the reduction
        required then (W at the settlement point): tier 2's activations (FCR-D, FCR-N, DR) get
        their start and end in the trail, as settlement needs. Called once a tier-2 period."""
        p = self._parts
        for product in snapshot.get("products", []):
            name, state = str(product["name"]), str(product["state"])
            was = self._product_states.get(name)
            self._product_states[name] = state
            if was is not None and was != state:
                p.ledger.record("product_state", {
                    "product": name, "kind": product["kind"], "from": was, "to": state,
                    "required_w": product["required_w"], "reduction_w": snapshot.get(
                        "reduction_w")})
        seen: set[str] = set()
        for event in snapshot.get("dr", []):
            event_id, state = str(event["id"]), str(event["state"])
            seen.add(event_id)
            was = self._dr_states.get(event_id)
            self._dr_states[event_id] = state
            if was != state:
                p.ledger.record("dr_state", {"event": event_id, "from": was, "to": state,
                                             "reduction_w": snapshot.get("reduction_w")})
        for event_id in [e for e in self._dr_states if e not in seen]:  # done and dropped
            p.ledger.record("dr_state", {"event": event_id, "from": self._dr_states.pop(event_id),
                                         "to": "ended", "reduction_w": snapshot.get("reduction_w")})

    def it_power_w(self) -> float:
        """Node IT power, W: each GPU's 1-s average (tier 1's last instant reading if that read
        fails), so training's sub-second swings do not jitter tier 2's reference."""
        p = self._parts
        draw = p.tier1.draw_mw
        total_mw = 0.0
        for k, i in enumerate(p.gpu_indices):
            try:
                total_mw += p.backend.average_power_mw(i)
            except GpuError:
                total_mw += draw[k]
        return total_mw / 1000.0

    # ---- bench ---------------------------------------------------------------------------

    async def _busy_load(self, busy: float) -> None:
        """Keep this loop ``busy`` (a fraction) with pure-Python work: the bench's
        ``under_load`` condition, the worst case for the GIL the island's threads need."""
        clock = self._parts.clock
        slice_s = 0.01
        while True:
            t_end = clock.now() + slice_s * busy
            while clock.now() < t_end:
                self._busy_sink = sum(range(200))
            await asyncio.sleep(slice_s * (1.0 - busy))
