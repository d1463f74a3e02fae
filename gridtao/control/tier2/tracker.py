"""Tier 2: about once a second, hold the node's commitment at the settlement meter.

What it does (docs/architecture.md, docs/sources.md#facility-meter-and-pue):

* Turns the active commitment, a meter-level reduction ``R`` (the proportional products, FCR-D
  and FCR-N, plus demand-response events) into a node IT target for tier 1, through the
  facility model (:class:`~gridtao.control.tier2.facility.MeterTracker`):
  ``IT = reference - (R - cooling already shed) / (1 + losses)``. In the first seconds the meter
  moves by the IT cut x (1 + losses) only, so the cut is ``R / (1 + losses)``; as cooling
  follows, less IT cut is needed and the target rises. With ``facility.settle_at: it`` the
  target is ``reference - R``.
* The reference is the node's natural IT draw (mean of the 1-s averages over
  ``tracker.reference_window_s``, sampled only while nothing is cut; the start's instant
  reading stands in until the first average), frozen when a commitment starts. The cooling
  estimates start settled at the first reading and, once the first window is full with
  nothing committed yet, settled at the window's mean instead: on a training load one
  instant reading is off the draw the site's cooling has settled on by up to a few hundred
  watts, and the cooling's 2-minute lag would carry that error into the first commitments
  (the FCR-N baseline's first steps). With FCR-N enrolled the reference is the FCR-N
  baseline for good (``baseline_w``, else the natural draw at enrolment minus the capacity's
  IT share), so the node can move both ways.
* Hands the target to the island as a soft commitment (``set_commitment``, refreshed by every
  sample and lane tick, lapsing after ``commitment_ttl_s``; aimed ``margin_fraction`` above
  the commitment, and on a bursty node up to ``margin_fraction`` more: half the standard
  deviation of its natural 1-s averages (the last ``SPREAD_SAMPLES``) per watt of reduction
  (a reduction only: drawing more, the node cannot go past its jobs' demand).
  A TSO reads holds on 1-s means, and tier 1 can only hold the node's mean at its target: on
  a training load the 1-s means of the delivered power swing by about that much around it,
  and the reference itself is a 5-s mean with a few tens of watts of error, so the aim moves
  toward the middle of the TSO's asymmetric band (-5 % / +20 %) as the spread grows. The
  island stacks a fired step product's reduction on it.) Arms each step product (FFR) as an
  absolute IT reduction ``capacity / (1 + losses)`` from the natural draw on the island's
  armed caps, and sets the per-GPU priority floors (``tracker.priorities``).
* Holds the planner's node ceiling (``planner.ceiling``; :meth:`Tier2.set_ceiling`, IT W) as
  part of the same soft target: the node's IT draw is held at or below it while it is in force.
  Products are then measured from the capped draw (the draw a TSO sees before an event):
  the reference, and the step products' armed cuts, start from ``min(natural, ceiling)``.
  While the ceiling holds the draw back (the draw within ``CEILING_BINDING_FRACTION`` of it) the
  draw is not natural, so the natural-draw window waits.
* :meth:`Tier2.snapshot` is the state published on ``{prefix}/nodes/{node}/tracker``.

Threads: :meth:`Tier2.update` runs on the island lane (via ``ProductMonitor.on_change``),
:meth:`Tier2.tick` on the controller loop; one lock guards the state, and nothing here waits on
a GPU. Lock order: tier 2, then the portfolio's, then the island's. Power in W unless named mW.
"""

from __future__ import annotations

import collections
import math
import statistics
import threading
from collections.abc import Sequence

from gridtao.clock import Clock
from gridtao.config.agent import ConfigError, FacilityConfig, GpuPriority, TrackerConfig
from gridtao.control.tier2.facility import FacilityModel, MeterTracker
from gridtao.products.portfolio import Portfolio, product_key
from gridtao.safety.island import SafetyIsland

SETTLE_S = 2.0  # after a cut ends, the draw climbs back (cap-up is slow): not yet "natural"
#: The spread of the natural draw's 1-s averages is read over this many of the latest (uncut).
SPREAD_SAMPLES = 30
#: A bursty node's aim: ``margin_fraction`` plus this share of its 1-s spread (at the
#: settlement point) per watt of reduction, the addition at most ``margin_fraction`` again.
SPREAD_WEIGHT = 0.5
#: The draw is taken as held by the planner's ceiling when at least this share of it: tier 1
#: keeps a held node a little under its target, and a natural draw that close may be clipped.
CEILING_BINDING_FRACTION = 0.97


def floors_w(priorities: Sequence[GpuPriority], count: int) -> list[float] | None:
    """Per-GPU floors from ``tracker.priorities`` (0 for flexible / unlisted GPUs), or None
    when no GPU is critical. Raises ConfigError for an index the node does not have."""
    floors = [0.0] * count
    for prio in priorities:
        for g in prio.gpus:
            if g >= count:
                raise ConfigError(f"tracker.priorities: GPU {g} does not exist ({count} GPUs)")
            if prio.priority == "critical":
                floors[g] = max(floors[g], prio.floor_w)
    return floors if any(f > 0 for f in floors) else None


class Tier2:
    """The seconds-scale tracker of one node (module docstring)."""

    def __init__(
        self,
        island: SafetyIsland,
        portfolio: Portfolio,
        *,
        facility: FacilityConfig,
        config: TrackerConfig,
        clock: Clock,
    ) -> None:
        self._island = island
        self.portfolio = portfolio
        self._config = config
        self._clock = clock
        self.model = FacilityModel.from_config(facility)
        self.settle_at = facility.settle_at
        self._factor = self.model.losses_factor if self.settle_at == "meter" else 1.0
        self.floors_w = floors_w(config.priorities, island.envelope.count)
        self._lock = threading.Lock()
        self._tracker = MeterTracker(self.model, 0.0, clock.now())
        self._window: collections.deque[tuple[float, float]] = collections.deque()
        self._it_w = 0.0
        self._natural_w: float | None = None
        self._uncut_since_s: float | None = None
        self._started_s = clock.now()
        self._baseline_w: float | None = None  # FCR-N, IT W
        self._reference_w: float | None = None  # frozen IT reference while committed
        self._reduction_w = 0.0  # R, at the settlement point
        self._target_w: float | None = None
        self._ceiling_w: float | None = None  # the planner's node IT ceiling in force
        self._seeded = False  # the cooling estimates settled on a full natural-draw window
        # The natural-draw window's own time: it runs only between consecutive uncut samples,
        # so the window is the last ``reference_window_s`` of uncut time, however long a cut.
        self._uncut_clock_s = 0.0
        self._last_sample_s: float | None = None  # the previous uncut sample (None: a gap)
        self._sample_dt_s = 1.0  # the last interval between uncut samples
        self._start_reading = True  # the window holds only the start's instant reading
        self._spread: collections.deque[float] = collections.deque(maxlen=SPREAD_SAMPLES)

    # ---- lifecycle and inputs ----------------------------------------------------------

    def start(self, it_w: float) -> None:
        """First IT reading (W): seed the model at steady state, set floors, arm step products."""
        now = self._clock.now()
        with self._lock:
            self._tracker = MeterTracker(self.model, it_w, now)
            self._it_w, self._natural_w, self._started_s = it_w, it_w, now
            self._window.clear()
            self._window.append((0.0, it_w))
            self._uncut_clock_s, self._last_sample_s = 0.0, None
            self._start_reading = True
        floors = self.floors_w
        self._island.set_floors_mw(None if floors is None else [f * 1000.0 for f in floors])
        self._arm()

    def tick(self, it_w: float) -> None:
        """Once a period (controller loop): the node's measured IT power (W, a 1-s average)
        advances the cooling estimates and the natural-draw window; re-arm; refresh.

        The window holds the last ``reference_window_s`` of *uncut* time, on a clock that stops
        while the node is cut: after a long cut the reference is still the draw before it,
        joined by the new samples one by one, not one or two samples taken as the draw climbs
        back (a 1-s average of a training load is off its mean by ~100 W, a 5-s mean by
        ~20 W)."""
        now = self._clock.now()
        event_active = self._island.view().event_id is not None
        with self._lock:
            natural = self._reference_w if self._reference_w is not None else self._natural_w
            self._tracker.observe(now, it_w, natural_it_w=natural)
            self._it_w = it_w
            held = (self._ceiling_w is not None
                    and it_w >= CEILING_BINDING_FRACTION * self._ceiling_w)
            if self._reference_w is not None or event_active or held:
                self._uncut_since_s = self._last_sample_s = None
            elif self._uncut_since_s is None:
                self._uncut_since_s = now
            elif now - self._uncut_since_s >= SETTLE_S:
                self._add_natural(now, it_w)
            self._natural_w = sum(w for _, w in self._window) / len(self._window)
            self._seed_cooling(now)
            self._enrol_fcr_n(now)
        self._arm()
        self.update(now)

    def set_ceiling(self, ceiling_w: float | None) -> None:
        """The planner's node IT ceiling for the MTU under way (W; None: none), held from now
        on as part of the soft target (any thread). Step products are re-armed from the capped
        draw at once."""
        if ceiling_w is not None and not (math.isfinite(ceiling_w) and ceiling_w > 0):
            raise ValueError(f"a ceiling must be a finite number of watts > 0, got {ceiling_w!r}")
        with self._lock:
            self._ceiling_w = ceiling_w
        self._arm()
        self.update(self._clock.now())

    @property
    def ceiling_w(self) -> float | None:
        with self._lock:
            return self._ceiling_w

    def ceiling_binding(self) -> bool:
        """Whether the planner's ceiling holds the node's draw back now (any thread)."""
        with self._lock:
            return (self._ceiling_w is not None
                    and self._it_w >= CEILING_BINDING_FRACTION * self._ceiling_w)

    def update(self, now_s: float) -> None:
        """Recompute the commitment and hand it to the island (cheap; lane thread)."""
        with self._lock:
            target = self._update_locked(now_s)
            was = self._target_w
            self._target_w = target
        if target is not None:
            self._island.set_commitment(target * 1000.0, ttl_s=self._config.commitment_ttl_s)
        elif was is not None:
            self._island.set_commitment(None, ttl_s=self._config.commitment_ttl_s)

    # ---- internals -----------------------------------------------------------------------

    def _add_natural(self, now_s: float, it_w: float) -> None:
        """One uncut 1-s average into the window (lock held): the window's clock advances by
        the time since the previous uncut sample, or by the last such interval after a gap."""
        if self._last_sample_s is not None:
            self._sample_dt_s = max(0.0, now_s - self._last_sample_s)
        self._uncut_clock_s += self._sample_dt_s
        self._last_sample_s = now_s
        if self._start_reading:  # the start's instant reading stands in only until now
            self._window.clear()
            self._start_reading = False
        self._window.append((self._uncut_clock_s, it_w))
        self._spread.append(it_w)
        horizon = self._uncut_clock_s - self._config.reference_window_s
        while len(self._window) > 1 and self._window[0][0] < horizon:
            self._window.popleft()

    def _seed_cooling(self, now_s: float) -> None:
        """Once, when the first natural-draw window is full and nothing has been committed or
        cut: the cooling estimates start again settled at its mean (module docstring; lock
        held)."""
        if self._seeded or now_s - self._started_s < self._config.reference_window_s:
            return
        self._seeded = True
        if (self._reference_w is None and self._uncut_since_s is not None
                and not self._start_reading and self._natural_w is not None):
            self._tracker = MeterTracker(self.model, self._natural_w, now_s)

    def _enrol_fcr_n(self, now_s: float) -> None:
        fcr_n = self.portfolio.fcr_n
        if fcr_n is None or self._baseline_w is not None:
            return
        cfg = self.portfolio.configs[fcr_n.name]
        if cfg.baseline_w is not None:
            baseline = cfg.baseline_w
        elif now_s - self._started_s >= self._config.reference_window_s and self._natural_w:
            baseline = max(0.0, self._natural_w - fcr_n.capacity_w / self._factor)
        else:
            return  # still measuring the natural draw
        self._baseline_w = baseline
        self._reference_w = baseline
        self._tracker.start_steady(baseline)

    def _update_locked(self, now_s: float) -> float | None:
        with_fcr_n = self._baseline_w is not None
        reduction = self.portfolio.proportional_reduction_w(now_s, include_fcr_n=with_fcr_n)
        base = self._reference_w if self._reference_w is not None else self._capped_natural()
        reference_meter = self.model.meter_w(base, self._tracker.counterfactual_cooling_w) if (
            self.settle_at == "meter") else base
        reduction += self.portfolio.dr_reduction_w(now_s, reference_meter)
        self._reduction_w = reduction
        if not with_fcr_n and reduction <= 0.0:
            if self._reference_w is not None:
                self._tracker.stop()
            self._reference_w = None
            return self._ceiling_w
        if self._reference_w is None:
            self._reference_w = base
            self._tracker.start(now_s, base)
        aimed = reduction * (1.0 + self._margin(reduction))
        meter = self.settle_at == "meter"
        it_cut = self._tracker.it_reduction_w(aimed) if meter else aimed
        return max(0.0, self._ceiling_reference(with_fcr_n) - it_cut)

    def _ceiling_reference(self, with_fcr_n: bool) -> float:
        """The frozen reference, under the planner's ceiling when one is in force (lock held):
        a commitment is measured from the capped draw, so a ceiling that came after the
        reference froze moves it down too; FCR-N's baseline goes a capacity under the ceiling,
        so its upward half stays under it."""
        assert self._reference_w is not None
        if self._ceiling_w is None:
            return self._reference_w
        room = self._ceiling_w
        fcr_n = self.portfolio.fcr_n
        if with_fcr_n and fcr_n is not None:
            room -= fcr_n.capacity_w / self._factor
        return min(self._reference_w, max(0.0, room))

    def _margin(self, reduction_w: float) -> float:
        """The share aimed above a reduction of ``reduction_w`` (W at the settlement point):
        ``margin_fraction`` plus the bursty node's part (module docstring; lock held)."""
        base = self._config.margin_fraction
        if len(self._spread) < 3 or reduction_w <= 0.0:
            # Drawing more (FCR-N above 50 Hz): the node cannot draw past its jobs' demand, so
            # a higher aim would lift only the bursts the caps let through, not the dips.
            return base
        spread_w = statistics.pstdev(self._spread) * self._factor
        return base + min(base, SPREAD_WEIGHT * spread_w / reduction_w)

    def _capped_natural(self) -> float:
        """The natural draw as the products see it: under the planner's ceiling (lock held)."""
        natural = self._natural_w or 0.0
        return natural if self._ceiling_w is None else min(natural, self._ceiling_w)

    def _arm(self) -> None:
        """Arm each step product: an IT cut of its capacity (the losses factor at the meter,
        since cooling will not follow within an FFR support time) from the natural draw, so a
        trigger during a burst or a dip still lands where the TSO measures from (the draw
        before the event), not at a cut from that instant's draw.

        No margin here: the caps are a hard bound, so no instant delivers less than the
        capacity (but for the reference's error), and a bursty load over-delivers on average
        by the dips the caps clip anyway; a margin on top would only push it toward the
        TSO's over-delivery limit."""
        with self._lock:
            natural = None if self._natural_w is None else self._capped_natural()
        reference_mw = None if natural is None else natural * 1000.0
        for product in self.portfolio.step:
            if not product.capacity_w > 0:  # not offered this MTU: nothing armed, never fires
                self._island.disarm(product_key(product.name))
                continue
            capacity_it_mw = product.capacity_w / self._factor * 1000.0
            # The product's own ramp-out rate (under the TSO's limit, see
            # products.STEP_RAMP_OUT_SLACK), not the island's: the ramp the product reports.
            release = product.ramp_out_per_s * capacity_it_mw
            self._island.arm_reduction(product_key(product.name), capacity_it_mw,
                                       reference_mw=reference_mw, release_mw_per_s=release)

    # ---- state -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """The tracker topic's body (besides ``node`` and ``t``). Powers in W; ``meter_w`` and
        ``cooling_w`` are the model's estimates (the node cannot see the site meter)."""
        now = self._clock.now()
        with self._lock:
            it_w, cooling = self._it_w, self._tracker.cooling_w
            meter = self.model.meter_w(it_w, cooling)
            body: dict[str, object] = {
                "settle_at": self.settle_at,
                "it_w": round(it_w, 1),
                "meter_w": round(meter, 1),
                "cooling_w": round(cooling, 1),
                "pue": round(meter / it_w, 4) if it_w > 0 else None,
                "natural_it_w": _r(self._natural_w),
                "reference_it_w": _r(self._reference_w),
                "fcr_n_baseline_w": _r(self._baseline_w),
                "reduction_w": round(self._reduction_w, 1),
                "it_target_w": _r(self._target_w),
                "plan_ceiling_w": _r(self._ceiling_w),
                "floors_w": self.floors_w,
            }
        products: list[dict[str, object]] = []
        for st in self.portfolio.statuses():
            state = st.state
            if st.kind == "fcr-n" and self._baseline_w is None:
                state = "enrolling"
            products.append({"name": st.name, "kind": st.kind, "state": state,
                             "capacity_w": st.capacity_w, "required_w": round(st.required_w, 1)})
        body["products"] = products
        body["dr"] = [
            {"id": ev.event_id, "state": state, "start_at": ev.start_wall,
             "duration_s": ev.duration_s, "ramp_s": ev.ramp_s, "recovery_s": ev.recovery_s,
             "reduction_w": ev.reduction_w, "fraction": ev.fraction}
            for ev, state in self.portfolio.dr_events(now)
        ]
        return body

    @property
    def it_target_w(self) -> float | None:
        with self._lock:
            return self._target_w

    @property
    def reduction_w(self) -> float:
        """The commitment's reduction now (W at the settlement point)."""
        with self._lock:
            return self._reduction_w


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
