"""Configuration of the grid side of a node: enrolled products, the facility between the GPUs
and the settlement meter, and tier 2 (re-exported by :mod:`gridtao.config.agent`, which loads and
validates the whole file; ranges live next to each field in ``metadata``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gridtao.config.schema import rng

ProductKind = Literal["ffr", "fcr-d-up", "fcr-d-up-static", "fcr-n", "ercot-ffr", "dr"]


@dataclass(frozen=True)
class ProductConfig:
    """One enrolled grid product (gridtao/products/catalog.py, dr.py; docs/sources.md).

    ``capacity_w``: the reserve the product may take, in watts at the settlement point
    (``facility.settle_at``). Optional keys default per kind: ``threshold_hz`` (ffr 49.7,
    ercot-ffr 59.85, fcr-d-up-static 49.7), ``full_activation_s`` (ffr 1.3/1.0/0.7 s at
    49.7/49.6/49.5 Hz, ercot-ffr 0.25, fcr-d-up-static 2.5, fcr-d-up 7.5), ``support_s`` (ffr
    short 5 / long 30, ercot-ffr 900). ``rearm_s``: a step product is ready again this long
    after its ramp-out ended. ``baseline_w`` (fcr-n): the IT power the node runs at so it can
    move both ways; default: its natural draw at enrolment minus the capacity.
    ``debounce_samples``: consecutive samples at or below a threshold that confirm it, but never
    waiting longer than ``debounce_budget_fraction`` of the activation time.
    ``median_samples``: median filter of the proportional products (fcr-d-up, fcr-n).
    ``bid_step_w`` and ``min_bid_w`` (tier 3, W at the settlement point; 0: none): the market's
    bid step and minimum bid, for a node that bids on its own; the planner then offers whole
    steps, and nothing below the minimum (a node pooled by a site or an aggregator leaves them
    at 0: the pool is what meets them).
    """

    kind: ProductKind
    capacity_w: float = field(metadata=rng(1.0, 10_000_000))
    name: str | None = None
    threshold_hz: float | None = field(default=None, metadata=rng(45.0, 65.0))
    full_activation_s: float | None = field(default=None, metadata=rng(0.01, 3600))
    support: Literal["short", "long"] = "short"
    support_s: float | None = field(default=None, metadata=rng(0.1, 86_400))
    rearm_s: float = field(default=900.0, metadata=rng(0, 86_400))
    baseline_w: float | None = field(default=None, metadata=rng(0, 10_000_000))
    debounce_samples: int = field(default=2, metadata=rng(1, 100))
    debounce_budget_fraction: float = field(default=0.1, metadata=rng(0, 0.5))
    median_samples: int = field(default=3, metadata=rng(1, 99))
    bid_step_w: float = field(default=0.0, metadata=rng(0.0, 1e9))
    min_bid_w: float = field(default=0.0, metadata=rng(0.0, 1e9))


@dataclass(frozen=True)
class FacilityConfig:
    """The facility between the GPUs and the settlement meter (gridtao/control/tier2/facility.py).

    meter = IT x (1 + ``losses_fraction``) + cooling + ``fixed_w``; cooling follows IT / ``cop``
    through a first-order lag of ``cooling_tau_s``. ``fixed_w`` is this node's share of the
    site's constant load. ``settle_at``: where product capacities and DR reductions are
    measured (``it``: at the GPUs, no model).
    """

    settle_at: Literal["meter", "it"] = "meter"
    losses_fraction: float = field(default=0.03, metadata=rng(0.0, 0.5))
    cop: float = field(default=4.5, metadata=rng(0.5, 50.0))
    cooling_tau_s: float = field(default=120.0, metadata=rng(1.0, 86_400))
    fixed_w: float = field(default=0.0, metadata=rng(0.0, 10_000_000))


@dataclass(frozen=True)
class GpuPriority:
    """GPUs ``gpus`` are ``critical`` (a cut split across the GPUs leaves them at least
    ``floor_w``; only a hard event ceiling below the floors' sum goes lower) or ``flexible``
    (no floor, the default for unlisted GPUs). W. A critical GPU drawing less than its floor
    still keeps a cap at the floor (room to rise), so the others give that much more."""

    gpus: tuple[int, ...]
    priority: Literal["critical", "flexible"] = "critical"
    floor_w: float = field(default=0.0, metadata=rng(0.0, 100_000))


@dataclass(frozen=True)
class TrackerConfig:
    """Tier 2 (gridtao/control/tier2/tracker.py). Times in seconds.

    ``period_s``: facility model, reference draw and armed caps refreshed this often.
    ``reference_window_s``: the node's natural IT draw is the mean of this window, taken while
    no cut is active. ``commitment_ttl_s``: the soft target tier 2 gives the island expires this
    long after its last refresh (a stalled tier 2 cannot hold the GPUs down).
    ``margin_fraction``: every commitment (proportional products, DR) is aimed this much above
    the reduction asked for (step products are hard caps: see Tier2._arm). The natural draw of
    a training node swings by hundreds of watts in a second, so the reference it is measured
    from is an estimate; TSOs fail a response more than 5 % short but accept up to 20 % over,
    so a few percent over is the safe side to err on.
    """

    period_s: float = field(default=1.0, metadata=rng(0.05, 60))
    reference_window_s: float = field(default=5.0, metadata=rng(0.5, 3600))
    commitment_ttl_s: float = field(default=5.0, metadata=rng(0.5, 3600))
    margin_fraction: float = field(default=0.05, metadata=rng(0.0, 0.5))
    priorities: tuple[GpuPriority, ...] = ()
