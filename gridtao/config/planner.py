"""Configuration of tier 3: the node's minute history and the hourly planner (re-exported by
:mod:`gridtao.config.agent`; ranges live next to each field in ``metadata``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gridtao.config.schema import rng


@dataclass(frozen=True)
class HistoryConfig:
    """Per-minute aggregates of the node's IT draw, enforced limits and event time, kept in
    SQLite for the planner (gridtao/history/). ``path`` None: ``<state dir>/history-<node>
    .sqlite3``; a relative path is taken from the configuration file's folder. Minutes older
    than ``retention_days`` are deleted once an hour."""

    enabled: bool = True
    path: str | None = None
    retention_days: float = field(default=35.0, metadata=rng(1.0, 3650.0))


@dataclass(frozen=True)
class PlannerConfig:
    """Tier 3 (gridtao/tier3/, gridtao/app/planning.py): every ``period_s`` it forecasts the
    node's natural IT draw for ``horizon_h`` hours in market time units of ``mtu_s`` from the
    last ``history_days`` of history, and decides what to offer per product and MTU, published
    retained on ``{prefix}/nodes/{node}/plan``. Only what an award accepts is armed.

    ``signals_file``: prices and carbon (docs/planner-inputs.md; also taken, retained, from
    ``{prefix}/signals``); older than ``signals_max_age_h`` they are refused. Costs:
    ``carbon_eur_per_t`` (EUR per tonne CO2), ``lost_work_eur_per_mwh`` (the value of an MWh of
    GPU work an activation sheds; the default, 1,000 EUR/MWh, is about a third of what a
    rented H100 earns per MWh of its draw, ~2 EUR/h at 0.7 kW: set your own).
    ``dr_max_hours_per_day``: at most so many hours a day offered for demand response (local
    days). ``tz_offset_h``: local time east of UTC, for the forecast's hours of the day and week
    and the DR days (a fixed offset: daylight-saving changes are not followed).
    ``margin_quantile`` (null: off): lower the forecast's low quantile by a margin learnt from the
    node's own recent misses (the last ``margin_days`` days, per ``margin_block_h``-hour block of
    the day; 1.0 covers the largest miss seen; docs/planner-inputs.md).
    ``safety_margin_fraction``: then lower it by this share before it bounds the offers (a bid
    that clears must hold for its whole hour).
    ``ceiling``: also plan a node IT power ceiling per MTU where energy, carbon and the
    reserves pay more than the work it sheds, and hold the node under it during that MTU (tier
    2's soft target; docs/planner.md).
    ``unawarded``: what a product arms in an MTU no award covers (awards arrive whether the
    planner runs or not): ``configured``, its ``capacity_w`` (a static enrolment); ``zero``,
    nothing (a node in a market has sold only what was awarded); ``auto`` (default): its
    ``capacity_w`` until its first award, nothing from then on (a node that never gets an
    award behaves as its configuration says; once the market awards a product, what it did
    not award was not sold).
    """

    enabled: bool = False
    period_s: float = field(default=3600.0, metadata=rng(10.0, 86_400.0))
    horizon_h: int = field(default=24, metadata=rng(1, 48))
    mtu_s: Literal[900, 3600] = 3600
    history_days: int = field(default=28, metadata=rng(1, 365))
    signals_file: str | None = None
    signals_max_age_h: float = field(default=36.0, metadata=rng(0.1, 24.0 * 14))
    carbon_eur_per_t: float = field(default=0.0, metadata=rng(0.0, 10_000.0))
    lost_work_eur_per_mwh: float = field(default=1000.0, metadata=rng(0.0, 1_000_000.0))
    dr_max_hours_per_day: int | None = field(default=None, metadata=rng(0, 24))
    safety_margin_fraction: float = field(default=0.0, metadata=rng(0.0, 0.9))
    tz_offset_h: float = field(default=0.0, metadata=rng(-12.0, 14.0))
    margin_quantile: float | None = field(default=None, metadata=rng(0.5, 1.0))
    margin_days: int = field(default=14, metadata=rng(2, 90))
    margin_block_h: Literal[1, 2, 3, 4, 6, 8, 12, 24] = 4
    solve_time_limit_s: float = field(default=5.0, metadata=rng(0.1, 600.0))
    ceiling: bool = False
    unawarded: Literal["auto", "configured", "zero"] = "auto"
