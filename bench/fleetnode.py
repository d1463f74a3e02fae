"""A simulated node for ``gridtao bench fleet``: the agent's own intake, guard and safety
island on simulated GPUs, light enough for hundreds per process (bench/fleetworker.py runs them).

A node (:class:`FleetNode`) is what the agent's island lane holds (gridtao/app/agent.py): its
simulated GPUs (in-process, ``gpus.sim.device: null``) behind the NVML backend, a
:class:`~gridtao.safety.island.SafetyIsland`, the :class:`~gridtao.security.guard.Guard` built
from the configuration, the enrolled products' monitor and the
:class:`~gridtao.hotpath.intake.Intake`, which parses each message, drives the island and
builds the acks. Its retained status is built as the controller builds it
(:func:`gridtao.wire.payloads.status_payload` with ``capacity``).

What a node leaves out, and why (one core carries hundreds of nodes): tier 1 (the GPUs are read
once a status period instead of at 100 Hz), tier 2, the response meter (no ``reached_at`` ack),
Prometheus metrics, the audit trail and the journal. Its island writes each GPU in turn on the
node's thread (``writer_threads`` starts the per-GPU writer threads instead), and the simulated
driver calls take no time (``gpus.sim.set_latency_ms: 0``): a real node's GPUs are its own, N
simulated nodes sharing a core must not queue behind each other's driver sleeps. Power in mW
unless named ``_w``; times in monotonic seconds (``clock.now()``) unless said otherwise.
"""

from __future__ import annotations

from gridtao.clock import MonotonicClock
from gridtao.config.agent import Config
from gridtao.control.capacity import enrolled_w, node_capacity
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.hotpath.intake import Intake, Outgoing
from gridtao.hotpath.rejections import RejectionGate
from gridtao.products.catalog import STEP_RAMP_OUT_SLACK
from gridtao.products.frequency import level_key
from gridtao.products.portfolio import Portfolio, ProductMonitor
from gridtao.safety.island import Activation, SafetyIsland
from gridtao.security.guard import Guard
from gridtao.transport.instance import Instance
from gridtao.wire import messages as wire
from gridtao.wire.payloads import status_payload

__all__ = ["DEMAND_W", "SETTLED_S", "FleetNode"]

DEMAND_W = 600.0  # each simulated GPU's steady demand, W
#: How long a node's GPUs must be free of events before a reading becomes the island's draw:
#: a refresh, and the climb back from a cut (``gpus.sim.cap_up_ms``), s.
SETTLED_S = 2.0


class FleetNode:
    """One simulated node: GPUs, island, guard, monitor and intake, as the agent wires them."""

    def __init__(self, node_id: str, config: Config, clock: MonotonicClock, *,
                 writer_threads: bool) -> None:
        self.node_id = node_id
        self.config = config
        self.clock = clock
        self.topics = wire.Topics(config.mqtt.prefix, node_id)
        sim = SimNvml.from_config(config.gpus.sim, clock)
        for i in range(sim.count):
            sim.set_demand_w(i, DEMAND_W)
        self.backend = NvmlBackend(sim)
        self.indices = [d.index for d in self.backend.devices()]
        self.limits = [self.backend.power_limits(i) for i in self.indices]
        safety = config.safety
        self.island = SafetyIsland(self.backend, clock=clock,
                                   release_rate_per_s=safety.release_rate_per_s,
                                   max_event_s=safety.max_event_s)
        if writer_threads:
            self.island.start()
        # The GPUs draw their demand from the start; their first reading comes one refresh
        # later (``FIRST_STATUS_S``), so the island starts from the demand itself.
        self.draw_mw = [DEMAND_W * 1000.0 for _ in self.indices]
        self.island.update_draw(self.draw_mw)
        self.idle_since: float | None = None  # monotonic s since the GPUs have had no event
        for trig in safety.triggers:
            self.island.arm(level_key(trig), 1.0 - trig.reduction_fraction)
        self.guard = Guard.from_config(
            config, node_id=node_id, default_total_mw=float(self.island.envelope.default_total_mw),
            draw_total_mw=self.island.basis_total_mw, wall=clock.wall)
        portfolio = Portfolio(config.products,
                              ramp_out_per_s=safety.release_rate_per_s * STEP_RAMP_OUT_SLACK)
        self.monitor = ProductMonitor(safety.triggers, portfolio,
                                      stale_after_s=safety.frequency_stale_s)
        lim = config.limits
        self.activated: Activation | None = None  # set by the intake during on_message
        self.intake = Intake(
            self.island, self.topics, clock=clock, monitor=self.monitor, dr=self.monitor,
            max_payload_bytes=config.mqtt.max_payload_bytes, on_activation=self._activated,
            guard=self.guard, simulated=True, max_sample_skew_s=safety.frequency_max_skew_s,
            rejections=RejectionGate(acks_per_s=lim.reject_acks_per_s,
                                     ack_burst=lim.reject_ack_burst,
                                     records_per_s=lim.reject_records_per_s,
                                     record_burst=lim.reject_record_burst))
        self.enrolled_w = enrolled_w(config.products)
        self.node_floor_mw = lim.min_node_fraction * sum(x.default_mw for x in self.limits)
        self.instance = Instance().fields()

    def _activated(self, act: Activation) -> None:
        self.activated = act

    def read_draw(self) -> None:
        """Tier 1's job, once a status period: the GPUs' instant power. It becomes the island's
        draw (the basis of the next cut) only once the GPUs have been free of any event for
        ``SETTLED_S``: a reading refreshes once a second and may still show the last cut."""
        self.draw_mw = [float(self.backend.instant_power_mw(i)) for i in self.indices]
        if self.island.view().active_event_ids:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = self.clock.now()
        elif self.clock.now() - self.idle_since >= SETTLED_S:
            self.island.update_draw(self.draw_mw)
            self.island.rearm()

    def status(self) -> bytes:
        """The retained status, as the controller builds it (gridtao/app/periodic.py)."""
        cap = node_capacity(self.draw_mw, self.island.floor_mw(), facility=self.config.facility,
                            enrolled=self.enrolled_w, node_floor_mw=self.node_floor_mw)
        limits, faults = self.island.enforced_mw(), self.island.write_faults()
        gpus: list[dict[str, float | str | None]] = [
            {"index": i, "power_w": self.draw_mw[k] / 1000.0, "limit_w": limits[k] / 1000.0,
             "default_w": lim.default_mw / 1000.0, "min_w": lim.min_mw / 1000.0,
             "max_w": lim.max_mw / 1000.0, "fault": faults.get(i)}
            for k, (i, lim) in enumerate(zip(self.indices, self.limits, strict=True))]
        m = self.monitor
        age = m.sample_age_s(self.clock.now())
        extra: dict[str, object] = {
            "capacity": cap.fields(),
            "frequency": {"hz": m.last_hz, "age_s": None if age is None else round(age, 3),
                          "stale": m.stale},
            "simulated": True, "instance": self.instance}
        return status_payload(self.node_id, True, self.clock.wall(),
                              self.island.view().event_id, gpus, extra=extra)

    @property
    def busy(self) -> bool:
        """An event is held or still ramping out (the lane's tick has work to do)."""
        return bool(self.intake.active_events or self.island.view().active_event_ids)

    def tick(self) -> list[Outgoing]:
        """The lane's tick (durations, frequency recovery) and the island's (ramps, ends)."""
        out = self.intake.on_tick()
        self.island.tick()
        return out
