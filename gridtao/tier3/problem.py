"""What tier 3 plans over: the node's forecast draw, its floor, its enrolments and the prices.

:class:`PlanProblem` holds one planning horizon of ``n`` market time units (MTUs, ``mtu_s``
seconds each, the first starting at ``start_s``, Unix seconds), every series a float64 numpy
array of length ``n``; :func:`gridtao.tier3.optimise.solve` turns it into offers. Validation
happens here, once, at construction: a malformed problem raises :class:`PlanError` and never
reaches the solver.

Units: powers in W, IT power unless said otherwise; product capacities (``Enrolment.max_w``,
the offers) in W at the settlement point (``settle_at``: at the meter an IT cut counts
``1 + losses_fraction`` times, as in gridtao/control/capacity.py); capacity prices in EUR/MW/h,
energy prices in EUR/MWh, carbon intensity in gCO2/kWh, lost work in EUR per W·h of IT energy.
A NaN price means "unknown": no offer of that product in that MTU (capacity), or the term left
out of the objective for that MTU (energy, carbon). Immutable once built: safe to share across
threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from gridtao.config.kinds import KINDS
from gridtao.errors import GridtaoError
from gridtao.tier3.forecast import Forecast
from gridtao.tier3.signals import Signals

__all__ = ["DEFAULT_ACTIVATION", "Enrolment", "FloatArray", "PlanError", "PlanProblem",
           "WorkRequirement", "node_floor_w", "problem_from"]

FloatArray = npt.NDArray[np.float64]

#: Expected IT energy each product takes from the jobs, per W of capacity and per hour offered
#: (a fraction of the capacity held for the whole hour). FFR fires on rare deep dips (about
#: 0.5 % of the time, each a few seconds to 30 s); FCR-D upwards on larger disturbances (about
#: 2 %). FCR-N is special: its baseline sits a full capacity below the natural draw for as long
#: as it is offered (docs/products.md, "FCR-N baseline"), and the +-0.25-of-capacity deviations
#: around it cancel on average, so the work it takes is the whole capacity (1.0). Demand
#: response offered in an hour is counted as dispatched for that hour (1.0). Ours: order-of-
#: magnitude figures for a planner, not a TSO statistic; set per site.
DEFAULT_ACTIVATION: Mapping[str, float] = MappingProxyType({
    "ffr": 0.005, "ercot-ffr": 0.005, "fcr-d-up": 0.02, "fcr-d-up-static": 0.02,
    "fcr-n": 1.0, "dr": 1.0,
})


class PlanError(GridtaoError, ValueError):
    """A planning problem that cannot be posed (mismatched lengths, negative floors, unknown
    product kinds...). Solver trouble is never raised: it is a status in the result."""


@dataclass(frozen=True)
class Enrolment:
    """One product the node may offer: ``name`` (unique in a problem), ``kind`` (a key of
    :data:`gridtao.config.kinds.KINDS`), ``max_w`` (the most it may offer, W at the settlement
    point). ``bid_step_w`` > 0 makes offers integer multiples of it (an integer variable);
    ``min_bid_w`` > 0 makes an offer either 0 or at least that much (a binary). 0 for both: a
    continuous offer in ``[0, max_w]`` (a node is small against the market's 0.1-1 MW minimum
    bids; an aggregator pools it)."""

    name: str
    kind: str
    max_w: float
    bid_step_w: float = 0.0
    min_bid_w: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PlanError(f"enrolment {self.name!r}: unknown kind {self.kind!r} "
                            f"(known: {', '.join(KINDS)})")
        for key in ("max_w", "bid_step_w", "min_bid_w"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise PlanError(f"enrolment {self.name!r}: {key} must be finite and >= 0, "
                                f"got {value}")

    @property
    def integral(self) -> bool:
        """Offers move in whole bid steps."""
        return self.bid_step_w > 0


@dataclass(frozen=True)
class WorkRequirement:
    """The node's jobs need at least ``energy_wh`` W·h of IT energy from the plan's start until
    ``by_s`` (Unix seconds). Counted on the plan's expected draw: the forecast p50 minus what
    ceilings and the expected reserve activations take. An MTU that straddles ``by_s`` counts
    for the part before it. A deadline past the horizon is taken as the horizon's end (the
    planner cannot count on energy it does not plan): the requirement must then be met within
    the horizon."""

    energy_wh: float
    by_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.energy_wh) and self.energy_wh >= 0):
            raise PlanError(f"work requirement: energy_wh must be finite and >= 0, "
                            f"got {self.energy_wh}")
        if not math.isfinite(self.by_s):
            raise PlanError(f"work requirement: by_s must be finite, got {self.by_s}")


def node_floor_w(min_w: Sequence[float], default_w: Sequence[float], *, min_node_fraction: float,
                 priority_floor_w: Mapping[int, float] | None = None) -> float:
    """The lowest IT power (W) the node can be held at: the larger of the GPUs' summed floors
    (each GPU's minimum limit, or its priority floor when higher) and ``min_node_fraction`` of
    the summed default limits (``limits.min_node_fraction``, the floor dispatched cuts stop at).
    ``priority_floor_w`` maps GPU index to its ``tracker.priorities`` floor."""
    if len(min_w) != len(default_w):
        raise PlanError(f"{len(min_w)} minimum limits for {len(default_w)} default limits")
    if not 0.0 <= min_node_fraction <= 1.0:
        raise PlanError(f"min_node_fraction must be in [0, 1], got {min_node_fraction}")
    floors = priority_floor_w or {}
    gpu = sum(max(m, floors.get(i, 0.0)) for i, m in enumerate(min_w))
    return max(gpu, min_node_fraction * sum(default_w))


def _series(name: str, values: object, n: int | None, *, allow_nan: bool) -> FloatArray:
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PlanError(f"{name}: not a numeric series ({e})") from None
    if arr.ndim != 1 or arr.size == 0:
        raise PlanError(f"{name}: must be a non-empty 1-D series, got shape {arr.shape}")
    if n is not None and arr.size != n:
        raise PlanError(f"{name}: {arr.size} values for {n} MTUs")
    if np.isinf(arr).any() or (not allow_nan and np.isnan(arr).any()):
        raise PlanError(f"{name}: values must be finite" + ("" if not allow_nan else " or NaN"))
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class PlanProblem:
    """One horizon to plan. Series (length ``n``, one value per MTU):

    * ``p10_w``, ``p50_w``: forecast 10th percentile and median of the node's natural IT draw
      (W). The p10 is what a reserve can count on in every minute of the MTU; the p50 is the
      expected draw for energy, carbon and work.
    * ``reserve_eur_mw_h``: capacity price per product kind (EUR/MW/h); a kind with no series,
      or NaN in an MTU, is not offered there.
    * ``energy_eur_mwh``, ``carbon_g_kwh``: optional; NaN or None leaves the term out (noted in
      the result).

    Scalars: ``floor_w`` (IT W, :func:`node_floor_w`), ``max_draw_w`` (IT W the GPUs can reach,
    sum of their default limits; informative, bounds nothing here), ``settle_at`` /
    ``losses_fraction`` (where offers are measured), ``pue`` (site energy per IT energy for the
    energy and carbon terms), ``carbon_eur_t`` (EUR per tCO2), ``lost_work_eur_wh`` (EUR per
    W·h of IT energy the jobs lose), ``activation`` (per kind, see
    :data:`DEFAULT_ACTIVATION`), ``work`` (:class:`WorkRequirement`, optional),
    ``dr_max_hours_per_day`` (DR offered in at most this many hours per day, optional; days
    run from local midnight, ``tz_offset_s`` east of UTC),
    ``allow_ceiling`` (plan a node power ceiling per MTU).
    """

    start_s: float
    mtu_s: float
    p10_w: FloatArray
    p50_w: FloatArray
    floor_w: float
    enrolments: tuple[Enrolment, ...]
    reserve_eur_mw_h: Mapping[str, FloatArray]
    energy_eur_mwh: FloatArray | None = None
    carbon_g_kwh: FloatArray | None = None
    max_draw_w: float | None = None
    settle_at: Literal["meter", "it"] = "meter"
    losses_fraction: float = 0.03
    pue: float = 1.0
    carbon_eur_t: float = 0.0
    lost_work_eur_wh: float = 0.0
    activation: Mapping[str, float] = field(default_factory=lambda: DEFAULT_ACTIVATION)
    work: WorkRequirement | None = None
    dr_max_hours_per_day: float | None = None
    tz_offset_s: float = 0.0
    allow_ceiling: bool = True

    def __post_init__(self) -> None:
        p50 = _series("p50_w", self.p50_w, None, allow_nan=False)
        n = p50.size
        fix = {"p50_w": p50, "p10_w": _series("p10_w", self.p10_w, n, allow_nan=False)}
        for key in ("energy_eur_mwh", "carbon_g_kwh"):
            value = getattr(self, key)
            if value is not None:
                fix[key] = _series(key, value, n, allow_nan=True)
        prices: dict[str, FloatArray] = {}
        for kind, series in self.reserve_eur_mw_h.items():
            if kind not in KINDS:
                raise PlanError(f"reserve_eur_mw_h: unknown kind {kind!r}")
            prices[kind] = _series(f"reserve_eur_mw_h[{kind}]", series, n, allow_nan=True)
        for key, value in fix.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "reserve_eur_mw_h", MappingProxyType(prices))
        object.__setattr__(self, "enrolments", tuple(self.enrolments))
        if (fix["p50_w"] < 0).any() or (fix["p10_w"] < 0).any():
            raise PlanError("p10_w and p50_w must be >= 0")
        self._check_scalars()
        names = [e.name for e in self.enrolments]
        if len(set(names)) != len(names):
            raise PlanError(f"enrolment names must be unique, got {names}")
        for kind in {e.kind for e in self.enrolments}:
            if KINDS[kind].once_per_node and sum(e.kind == kind for e in self.enrolments) > 1:
                raise PlanError(f"kind {kind!r} can be enrolled once per node")
        act = dict(DEFAULT_ACTIVATION) | dict(self.activation)
        for kind, a in act.items():
            if kind not in KINDS or not 0.0 <= a <= 1.0:
                raise PlanError(f"activation[{kind!r}] must be a known kind with a value in "
                                f"[0, 1], got {a}")
        object.__setattr__(self, "activation", MappingProxyType(act))

    def _check_scalars(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise PlanError(what)

        need(math.isfinite(self.start_s), f"start_s must be finite, got {self.start_s}")
        need(math.isfinite(self.tz_offset_s), f"tz_offset_s must be finite, got "
             f"{self.tz_offset_s}")
        need(math.isfinite(self.mtu_s) and self.mtu_s > 0, f"mtu_s must be > 0, got {self.mtu_s}")
        need(math.isfinite(self.floor_w) and self.floor_w >= 0,
             f"floor_w must be finite and >= 0, got {self.floor_w}")
        need(self.max_draw_w is None or (math.isfinite(self.max_draw_w) and self.max_draw_w >= 0),
             f"max_draw_w must be finite and >= 0, got {self.max_draw_w}")
        need(self.settle_at in ("meter", "it"), f"settle_at must be meter or it, got "
             f"{self.settle_at!r}")
        need(0.0 <= self.losses_fraction <= 1.0,
             f"losses_fraction must be in [0, 1], got {self.losses_fraction}")
        need(math.isfinite(self.pue) and self.pue >= 1.0, f"pue must be >= 1, got {self.pue}")
        for key in ("carbon_eur_t", "lost_work_eur_wh"):
            value = getattr(self, key)
            need(math.isfinite(value) and value >= 0, f"{key} must be finite and >= 0, "
                 f"got {value}")
        need(self.dr_max_hours_per_day is None or self.dr_max_hours_per_day >= 0,
             f"dr_max_hours_per_day must be >= 0, got {self.dr_max_hours_per_day}")

    @property
    def n(self) -> int:
        """Number of MTUs."""
        return int(self.p50_w.size)

    @property
    def hours(self) -> float:
        """Length of one MTU in hours."""
        return self.mtu_s / 3600.0

    @property
    def it_per_settled(self) -> float:
        """IT W per W at the settlement point: an IT cut of 1 W counts ``1 + losses`` W at the
        meter in the first seconds (cooling follows later and is not counted on)."""
        return 1.0 / (1.0 + self.losses_fraction) if self.settle_at == "meter" else 1.0

    def mtu_starts_s(self) -> FloatArray:
        """Start of each MTU, Unix seconds."""
        return self.start_s + self.mtu_s * np.arange(self.n, dtype=np.float64)


def problem_from(forecast: Forecast, signals: Signals | None, *, floor_w: float,
                 enrolments: Sequence[Enrolment], **options: Any) -> PlanProblem:
    """The problem over ``forecast``'s MTUs: its p10 and p50, every series of ``signals``
    resampled onto its grid (:meth:`gridtao.tier3.signals.Series.resample`: NaN where unknown,
    so a product whose price is missing is not offered there and a missing energy price or
    carbon intensity leaves its term out), a reserve price for each enrolled kind that has one.
    ``options``: any other :class:`PlanProblem` field by name (``settle_at``, ``work``...).
    Raises :class:`PlanError` as :class:`PlanProblem` does."""
    grid = (forecast.start_s, forecast.mtu_s, forecast.horizon)
    energy = carbon = None
    reserve: dict[str, FloatArray] = {}
    if signals is not None:
        if signals.energy_price_eur_per_mwh is not None:
            energy = signals.energy_price_eur_per_mwh.resample(*grid)
        if signals.carbon_g_per_kwh is not None:
            carbon = signals.carbon_g_per_kwh.resample(*grid)
        for kind in {e.kind for e in enrolments}:
            series = signals.reserve_price_eur_per_mw_h.get(kind)
            if series is not None:
                reserve[kind] = series.resample(*grid)
    return PlanProblem(start_s=float(forecast.start_s), mtu_s=float(forecast.mtu_s),
                       p10_w=np.asarray(forecast.p10_w), p50_w=np.asarray(forecast.p50_w),
                       floor_w=floor_w, enrolments=tuple(enrolments), reserve_eur_mw_h=reserve,
                       energy_eur_mwh=energy, carbon_g_kwh=carbon, **options)
