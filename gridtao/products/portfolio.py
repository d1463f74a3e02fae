"""The node's enrolled products, and the frequency monitor that serves them on the island lane.

:class:`Portfolio` owns the product objects (gridtao/products/catalog.py) and the demand-response
queue (dr.py), thread-safe: the island lane feeds samples and dispatches, tier 2 reads the
requirement once a second. :class:`ProductMonitor` is the :class:`FrequencyMonitor` the intake
drives: besides the raw ``safety.triggers`` levels it fires step products (FFR, ERCOT FFR)
through the island's armed caps (level key ``product:<name>``), so they keep the millisecond
path, and after every sample and tick it tells tier 2 (``on_change``) to refresh the node's
commitment from the proportional products and DR. On a sample that fires a step product, that
refresh waits for the next tick (<= 50 ms) so nothing runs before the caps are written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

from gridtao.config.agent import FrequencyTrigger, ProductConfig
from gridtao.config.kinds import KINDS
from gridtao.products.base import FrequencyProduct, ProductStatus
from gridtao.products.catalog import make_product
from gridtao.products.dr import DrEvent, DrSchedule, DrState
from gridtao.products.frequency import Action, Activate, FrequencyMonitor, Release
from gridtao.products.proportional import FcrN
from gridtao.products.step import StepProduct
from gridtao.wire.messages import DrDispatch

log = logging.getLogger("gridtao.products")

Transition = tuple[StepProduct, Literal["activate", "release"]]


def product_key(name: str) -> str:
    """The island's arm key for a step product, e.g. ``product:ffr``."""
    return f"product:{name}"


class Portfolio:
    """Enrolled products. Reductions are in W at the settlement point (facility.settle_at)."""

    def __init__(self, configs: Sequence[ProductConfig], *, ramp_out_per_s: float) -> None:
        self._lock = threading.RLock()
        self.configs = {c.name or c.kind: c for c in configs}
        self.step: list[StepProduct] = []
        self.proportional: list[FrequencyProduct] = []
        self.fcr_n: FcrN | None = None
        self.dr: DrSchedule | None = None
        self._dr_name = "dr"
        for cfg in configs:
            if cfg.kind == "dr":
                self.dr = DrSchedule(cfg.capacity_w)
                self._dr_name = cfg.name or cfg.kind
                continue
            product = make_product(cfg, ramp_out_per_s=ramp_out_per_s)
            if isinstance(product, StepProduct):
                self.step.append(product)
            else:
                self.proportional.append(product)
                if isinstance(product, FcrN):
                    self.fcr_n = product

    @property
    def empty(self) -> bool:
        return not (self.step or self.proportional or self.dr is not None)

    def on_sample(self, hz: float, now_s: float) -> list[Transition]:
        """Feed one local frequency sample to every frequency product."""
        with self._lock:
            for p in self.proportional:
                p.required_reduction_w(hz, now_s)
            return self._step_all(hz, now_s)

    def on_tick(self, now_s: float) -> list[Transition]:
        """Let time pass (holds end, ramps run out, products re-arm)."""
        with self._lock:
            for p in self.proportional:
                p.required_reduction_w(None, now_s)
            return self._step_all(None, now_s)

    def on_stale(self, now_s: float) -> list[Transition]:
        """The feed is silent: give every product its grid's nominal frequency, so each goes
        neutral the way its rules allow (a step holds, then ramps out; FCR-D static waits out
        its recovery; a proportional product's median fills with nominal samples)."""
        with self._lock:
            for p in self.proportional:
                p.required_reduction_w(KINDS[p.kind].nominal_hz, now_s)
            return self._step_all(None, now_s, nominal=True)

    def _step_all(self, hz: float | None, now_s: float, *,
                  nominal: bool = False) -> list[Transition]:
        out: list[Transition] = []
        for p in self.step:
            before = p.state
            p.required_reduction_w(KINDS[p.kind].nominal_hz if nominal else hz, now_s)
            if before != "active" and p.state == "active":
                out.append((p, "activate"))
            elif before == "active" and p.state != "active":
                out.append((p, "release"))
        return out

    def abort(self, product: StepProduct) -> None:
        with self._lock:
            product.abort()

    def proportional_reduction_w(self, now_s: float, *, include_fcr_n: bool = True) -> float:
        """Sum of what FCR-D / FCR-N require now (FCR-N may be negative); without FCR-N's
        part while its baseline is not known yet."""
        with self._lock:
            return sum(p.required_reduction_w(None, now_s) for p in self.proportional
                       if include_fcr_n or p is not self.fcr_n)

    def dr_reduction_w(self, now_s: float, reference_w: float) -> float:
        with self._lock:
            return 0.0 if self.dr is None else self.dr.required_reduction_w(now_s, reference_w)

    def schedule_dr(self, msg: DrDispatch, *, now_s: float, wall_s: float) -> str | None:
        """Queue a DR event; None if accepted, else the reason it was refused."""
        with self._lock:
            if self.dr is None:
                return "this node is not enrolled in demand response (no product of kind dr)"
            return self.dr.add(msg, now_s=now_s, wall_s=wall_s)

    def cancel_dr(self, event_id: str, *, now_s: float) -> bool:
        with self._lock:
            return self.dr is not None and self.dr.cancel(event_id, now_s=now_s)

    def dr_holds(self, event_id: str, *, now_s: float) -> bool:
        """Whether demand-response event ``event_id`` is queued or in force, not cancelled."""
        with self._lock:
            return self.dr is not None and self.dr.holds(event_id, now_s)

    def capacities(self) -> dict[str, float]:
        """Each enrolled product's capacity in force now (W at the settlement point)."""
        with self._lock:
            out = {p.name: p.capacity_w for p in (*self.step, *self.proportional)}
            if self.dr is not None:
                out[self._dr_name] = self.dr.capacity_w
            return out

    def busy(self, name: str, now_s: float) -> bool:
        """Whether ``name`` is delivering an activation now (its capacity must not change
        under it): a step product active or ramping out, FCR-D with a requirement, a DR event
        in force or ramping. FCR-N runs continuously, so it is never busy (its capacity
        changes at MTU boundaries, as the market re-awards it)."""
        with self._lock:
            for p in self.step:
                if p.name == name:
                    return p.state in ("active", "ramping")
            for q in self.proportional:
                if q.name == name:
                    return q is not self.fcr_n and q.required_reduction_w(None, now_s) > 0
            if self.dr is not None and name == self._dr_name:
                return any(state in ("ramping", "active", "recovering")
                           for _, state in self.dr.events(now_s))
            raise KeyError(name)

    def set_capacity(self, name: str, capacity_w: float, now_s: float) -> bool:
        """Give ``name`` a new capacity (W, >= 0; 0: not offered, it never activates) unless
        it is busy (:meth:`busy`); True if applied. Tier 2 re-arms the island from it on its
        next period."""
        if not capacity_w >= 0:
            raise ValueError("capacity_w must be >= 0")
        with self._lock:
            if self.busy(name, now_s):
                return False
            if self.dr is not None and name == self._dr_name:
                self.dr.capacity_w = capacity_w
                return True
            for p in (*self.step, *self.proportional):
                if p.name == name:
                    p.capacity_w = capacity_w
                    return True
            raise KeyError(name)

    def statuses(self) -> list[ProductStatus]:
        with self._lock:
            return [p.status() for p in (*self.step, *self.proportional)]

    def dr_events(self, now_s: float) -> list[tuple[DrEvent, DrState]]:
        with self._lock:
            return [] if self.dr is None else self.dr.events(now_s)


class ProductMonitor(FrequencyMonitor):
    """A :class:`FrequencyMonitor` that also serves a :class:`Portfolio` (module docstring).

    ``on_change(now_s)`` is called on the lane thread after samples, ticks and DR changes.
    """

    def __init__(
        self,
        triggers: Sequence[FrequencyTrigger],
        portfolio: Portfolio,
        *,
        on_change: Callable[[float], None] | None = None,
        event_prefix: str = "ffr",
        stale_after_s: float | None = None,
    ) -> None:
        super().__init__(triggers, event_prefix=event_prefix, stale_after_s=stale_after_s)
        self.portfolio = portfolio
        self.on_change = on_change
        self._events: dict[str, StepProduct] = {}  # active step activations by event id
        self._count_products = 0
        self._in_sample = False
        # Unix s minus monotonic s at the last sample: a step product confirmed by time (on a
        # tick) is stamped on the same wall clock as one fired by a sample.
        self._wall_offset_s: float | None = None

    @property
    def active_event_ids(self) -> list[str]:
        return [*super().active_event_ids, *self._events]

    def on_sample(self, hz: float, now_s: float, *, wall_s: float) -> list[Action]:
        self._wall_offset_s = wall_s - now_s
        self._in_sample = True  # the base class ends its on_sample with an on_tick
        try:
            actions = super().on_sample(hz, now_s, wall_s=wall_s)
        finally:
            self._in_sample = False
        actions.extend(self._actions(self.portfolio.on_sample(hz, now_s), wall_s))
        if not any(isinstance(a, Activate) for a in actions):  # else: caps first, then a tick
            self._changed(now_s)
        return actions

    def on_tick(self, now_s: float) -> list[Action]:
        actions = super().on_tick(now_s)
        if self._in_sample:
            return actions
        transitions = (self.portfolio.on_stale(now_s) if self.stale
                       else self.portfolio.on_tick(now_s))
        wall_s = None if self._wall_offset_s is None else now_s + self._wall_offset_s
        actions.extend(self._actions(transitions, wall_s))
        self._changed(now_s)
        return actions

    def forget(self, event_id: str) -> None:
        """An activation ended elsewhere (island expiry, a release dispatch) or never happened
        (level not armed): the product counts it as over and starts its re-arm wait."""
        super().forget(event_id)
        product = self._events.pop(event_id, None)
        if product is not None:
            self.portfolio.abort(product)

    def schedule_dr(self, msg: DrDispatch, *, now_s: float, wall_s: float) -> str | None:
        reason = self.portfolio.schedule_dr(msg, now_s=now_s, wall_s=wall_s)
        if reason is None:
            self._changed(now_s)
        return reason

    def dr_holds(self, event_id: str, *, now_s: float) -> bool:
        return self.portfolio.dr_holds(event_id, now_s=now_s)

    def cancel_dr(self, event_id: str, *, now_s: float) -> bool:
        done = self.portfolio.cancel_dr(event_id, now_s=now_s)
        if done:
            self._changed(now_s)
        return done

    def _actions(self, transitions: list[Transition], wall_s: float | None) -> list[Action]:
        out: list[Action] = []
        for product, what in transitions:
            key = product_key(product.name)
            if what == "activate":
                self._count_products += 1
                # Unix ms and a count: unique across restarts (the count starts again at 1).
                stamp = int((wall_s if wall_s is not None else time.time()) * 1000)
                event_id = f"{product.name}-{stamp}-{self._count_products}"
                self._events[event_id] = product
                out.append(Activate(key, event_id, self.last_hz or 0.0))
                continue
            for event_id, p in list(self._events.items()):
                if p is product:
                    # Popped before the intake's release calls forget(): not an abort.
                    del self._events[event_id]
                    out.append(Release(key, event_id))
        return out

    def _changed(self, now_s: float) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(now_s)
        except Exception:  # tier 2 failing must not lose the island's activations or releases
            log.exception("tier 2 refresh failed")
