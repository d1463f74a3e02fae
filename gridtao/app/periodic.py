"""The controller loop's periodic work: the agent's asyncio loop, off the hot path.

Triggers never pass through here (they go socket -> island lane -> island writers). What runs
here, on the agent's parts (gridtao/agent.py builds them):

* the retained status every ``mqtt.status_period_s``, from tier 1's last readings (no NVML call
  on this thread, except in a dry run where tier 1's plans never take effect);
* tier 2 every ``tracker.period_s`` and its retained tracker topic;
* the audit of tier 1's limits when one moved by 1 W or more;
* the links' and the audit trail's plain counters carried into Prometheus;
* the bench's ``under_load`` condition (pure-Python work keeping this loop busy).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from gridtao.gpu.backend import GpuError
from gridtao.wire import messages as wire

if TYPE_CHECKING:
    from gridtao.app.agent import Agent

log = logging.getLogger("gridtao.app.agent")


class ControllerLoop:
    """The periodic work of one agent; :meth:`tasks` are run by ``Agent.serve``."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._audited_limits: tuple[int, ...] | None = None
        self._counters_seen: dict[str, int] = {}
        self._busy_sink = 0

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        """The loops to run until the agent stops."""
        out = [self._status_loop(), self._tracker_loop()]
        if self._agent.options.busy_load_fraction > 0:
            out.append(self._busy_load(self._agent.options.busy_load_fraction))
        return out

    # ---- status -----------------------------------------------------------------------

    async def _status_loop(self) -> None:
        period = self._agent.config.mqtt.status_period_s
        while True:
            self.carry_counters()
            self.publish_status(online=True)
            self.record_limits()
            await asyncio.sleep(period)

    def publish_status(self, *, online: bool) -> None:
        a = self._agent
        if online:
            payload = wire.status_payload(a.node_id, True, a.clock.wall(),
                                          a.island.view().event_id, self.status_gpus())
        else:
            payload = wire.offline_payload(a.node_id)
        a.status_link.publish_nowait(a.topics.status, payload, qos=1, retain=True)

    def status_gpus(self) -> list[dict[str, float | str | None]]:
        """Per-GPU status from tier 1's last reading (no NVML call on this thread), except in a
        dry run: there tier 1's plans never take effect, so the limits are read from the GPUs.
        ``fault``: the error kind of a GPU whose reads or last limit write fail, else None."""
        a = self._agent
        draw, limits = a.fast.draw_mw, a.fast.limits_mw
        if a.config.gpus.dry_run:
            limits = tuple(self._enforced_or(i, planned) for i, planned in
                           zip(a.gpu_indices, limits, strict=True))
        read_faults, write_faults = a.fast.read_faults, a.island.write_faults()
        return [
            {"index": i, "power_w": draw[k] / 1000.0, "limit_w": limits[k] / 1000.0,
             "default_w": lim.default_mw / 1000.0, "min_w": lim.min_mw / 1000.0,
             "max_w": lim.max_mw / 1000.0, "fault": read_faults[k] or write_faults.get(i)}
            for k, (i, lim) in enumerate(zip(a.gpu_indices, a.gpu_limits, strict=True))
        ]

    def _enforced_or(self, index: int, fallback_mw: int) -> int:
        try:
            return self._agent.backend.enforced_limit_mw(index)
        except GpuError:
            return fallback_mw

    def record_limits(self) -> None:
        """Audit tier 1's limits when any moved by 1 W or more (at most once a status period:
        tier 1 adjusts them up to 100 times a second, the trail keeps the trajectory)."""
        a = self._agent
        limits = a.fast.limits_mw
        last = self._audited_limits
        if last is not None and all(abs(x - y) < 1000 for x, y in zip(limits, last,
                                                                         strict=True)):
            return
        self._audited_limits = limits
        a.ledger.record("limits", {"limits_mw": limits, "draw_mw": a.fast.draw_mw,
                                   "event": a.island.view().event_id})

    def carry_counters(self) -> None:
        """Carry the links' and the audit trail's plain counters into Prometheus (their
        increase since the last call): reconnects, refusals, drops."""
        def carry(key: str, total: int, count: Callable[[int], None]) -> None:
            new = total - self._counters_seen.get(key, 0)
            if new > 0:
                count(new)
            self._counters_seen[key] = total

        a = self._agent
        m = a.metrics
        links = {"island": a.lane.link.stats, "status": a.status_link.stats}
        carry("reconnects", sum(st.reconnects for st in links.values()), m.count_mqtt_reconnect)
        for name, st in links.items():
            carry(f"{name}.refused", st.refused, functools.partial(m.count_mqtt_refused, name))
            carry(f"{name}.in", st.dropped_inbound,
                  functools.partial(m.count_mqtt_dropped, name, "in"))
            carry(f"{name}.out", st.dropped_outbound,
                  functools.partial(m.count_mqtt_dropped, name, "out"))
        audit = a.ledger.audit
        if audit is not None:
            carry("audit.dropped", audit.dropped, m.count_audit_dropped)

    # ---- tier 2 --------------------------------------------------------------------------

    async def _tracker_loop(self) -> None:
        """Tier 2 every ``tracker.period_s``; its state goes out retained on the tracker topic."""
        a = self._agent
        period = a.config.tracker.period_s
        while True:
            await asyncio.sleep(period)
            try:
                a.tier2.tick(self.it_power_w())
                payload = wire.tracker_payload(a.node_id, a.clock.wall(), a.tier2.snapshot())
                a.status_link.publish_nowait(a.topics.tracker, payload, qos=0, retain=True)
            except Exception:
                log.exception("tier 2 tick failed")

    def it_power_w(self) -> float:
        """Node IT power, W: each GPU's 1-s average (tier 1's last instant reading if that read
        fails), so training's sub-second swings do not jitter tier 2's reference."""
        a = self._agent
        draw = a.fast.draw_mw
        total_mw = 0.0
        for k, i in enumerate(a.gpu_indices):
            try:
                total_mw += a.backend.average_power_mw(i)
            except GpuError:
                total_mw += draw[k]
        return total_mw / 1000.0

    # ---- bench ---------------------------------------------------------------------------

    async def _busy_load(self, busy: float) -> None:
        """Keep this loop ``busy`` (a fraction) with pure-Python work: the bench's
        ``under_load`` condition, the worst case for the GIL the island's threads need."""
        clock = self._agent.clock
        slice_s = 0.01
        while True:
            t_end = clock.now() + slice_s * busy
            while clock.now() < t_end:
                self._busy_sink = sum(range(200))
            await asyncio.sleep(slice_s * (1.0 - busy))
