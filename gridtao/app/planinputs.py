"""A planning round's inputs: its settings, the node's IT floor, the history and signals files.

Built from the configuration and read from files, for the running agent's planner
(gridtao/app/planning.py) and for the commands that plan or check without one (``gridtao plan``,
``gridtao check-config``, the demo). Power in W (IT unless said), times in Unix seconds, the
cost of lost work in EUR per W·h.

Threads: none of its own; pure but for the file reads (:func:`natural_history`,
:func:`signals_file`), called from the planner's worker thread and from commands.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gridtao.config.agent import Config, ConfigError
from gridtao.config.paths import resolve_path
from gridtao.control.tier2.facility import FacilityModel
from gridtao.gpu.backend import PowerLimits
from gridtao.history import HistoryStore
from gridtao.readfile import read_regular
from gridtao.tier3.planner import PlanSettings
from gridtao.tier3.problem import Enrolment, node_floor_w
from gridtao.tier3.signals import SignalError, Signals, SignalsOutOfDate, parse_signals

__all__ = ["MAX_SIGNALS_FILE_BYTES", "checked_signals_file", "floor_w", "natural_history",
           "plan_settings", "signals_file", "with_learned_work"]


def plan_settings(config: Config, floor_w: float, max_w: float | None = None) -> PlanSettings:
    """A planning round's settings from the configuration, the node's IT floor (W) and the
    most it can draw (W: its GPUs' summed limits; None: unknown)."""
    p, f = config.planner, config.facility
    enrolments = [Enrolment(c.name or c.kind, c.kind, c.capacity_w, bid_step_w=c.bid_step_w,
                            min_bid_w=c.min_bid_w) for c in config.products]
    return PlanSettings(
        mtu_s=p.mtu_s, horizon=max(1, p.horizon_h * 3600 // p.mtu_s),
        floor_w=floor_w, max_w=max_w, enrolments=enrolments,
        safety_margin_fraction=p.safety_margin_fraction, time_limit_s=p.solve_time_limit_s,
        weeks=max(1, math.ceil(p.history_days / 7)), margin_quantile=p.margin_quantile,
        margin_days=p.margin_days, margin_block_h=p.margin_block_h,
        # Site energy per IT energy from the facility model: losses, and cooling at 1/COP.
        options={"settle_at": f.settle_at, "losses_fraction": f.losses_fraction,
                 "tz_offset_s": round(p.tz_offset_h * 3600),
                 "pue": FacilityModel.from_config(f).settled_meter_per_it_w,
                 "carbon_eur_t": p.carbon_eur_per_t,
                 "lost_work_eur_wh": p.lost_work_eur_per_mwh / 1e6,
                 "allow_ceiling": p.ceiling, "dr_max_hours_per_day": p.dr_max_hours_per_day})


def with_learned_work(settings: PlanSettings, factor: float) -> PlanSettings:
    """``settings`` with the cost of lost work taken from the learned work model: an IT W·h
    shed costs ``factor`` (the share of full-speed work it loses,
    :func:`~gridtao.work.model.lost_work_factor`) of the configured value of a W·h of
    full-speed work; said in the plan's notes."""
    value = float(settings.options.get("lost_work_eur_wh", 0.0))
    options = dict(settings.options) | {"lost_work_eur_wh": value * factor}
    note = (f"lost work at {value * factor * 1e6:.0f} EUR/MWh shed: the learned work curves lose "
            f"{factor:.2f} of the full-speed work of each W·h shed "
            f"(planner.lost_work_eur_per_mwh {value * 1e6:.0f})")
    return dataclasses.replace(settings, options=options, notes=(*settings.notes, note))


def floor_w(config: Config, limits: Sequence[PowerLimits], indices: Sequence[int]) -> float:
    """The lowest IT power (W) the node can be held at, for tier 3: the GPUs' minimums
    (critical GPUs' priority floors where higher) or ``limits.min_node_fraction`` of the
    summed default limits, whichever is higher."""
    floors = {i: p.floor_w for p in config.tracker.priorities
              if p.priority == "critical" for i in p.gpus}
    return node_floor_w([lim.min_mw / 1000.0 for lim in limits],
                        [lim.default_mw / 1000.0 for lim in limits],
                        min_node_fraction=config.limits.min_node_fraction,
                        priority_floor_w={k: floors.get(i, 0.0)
                                          for k, i in enumerate(indices)})


def natural_history(path: str | Path, since_s: int, until_s: int
                    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Minute starts (int64 Unix s), mean and p10 IT draw (W) of the minutes in
    ``[since_s, until_s]`` that no island event cut: a cut minute is not the natural draw,
    so it is a gap to the forecast, not a low reading. HistoryError names the file."""
    with HistoryStore.open(path) as store:
        rows = [r for r in store.rows(since_s, until_s + 1) if r.event_s <= 0.0]
    return (np.array([r.start_s for r in rows], dtype=np.int64),
            np.array([r.it_mean_w for r in rows]), np.array([r.it_p10_w for r in rows]))


#: The largest signals file read (a week of 15-minute prices, carbon and reserve prices in any of
#: the formats is well under 1 MiB).
MAX_SIGNALS_FILE_BYTES = 16 * 1024 * 1024


def signals_file(config: Config, now_s: float) -> Signals | None:
    """``planner.signals_file`` read now (None: none configured; a relative path is taken
    from the configuration file's folder). Raises OSError or SignalError."""
    p = config.planner
    if p.signals_file is None:
        return None
    path = resolve_path(p.signals_file, config.source)
    return parse_signals(read_regular(path, max_bytes=MAX_SIGNALS_FILE_BYTES), now_s=now_s,
                         source=str(path),
                         max_age_s=p.signals_max_age_h * 3600.0)


def checked_signals_file(config: Config, now_s: float, *, where: str,
                         out_of_date: Callable[[str], None] | None = None) -> Signals | None:
    """:func:`signals_file` for a command: a file that cannot be read or is refused is a
    :class:`ConfigError` of one line, ``where`` (the key or option that named it) first.
    ``out_of_date``: told that line instead, and None returned, when the file is refused for
    its time alone (a late feed, which the agent plans without: not a configuration error)."""
    try:
        return signals_file(config, now_s)
    except SignalsOutOfDate as e:
        line = f"{where}: {config.planner.signals_file}: refused: {e}"
        if out_of_date is None:
            raise ConfigError(line) from None
        out_of_date(line)
        return None
    except OSError as e:
        named = e.filename or config.planner.signals_file
        raise ConfigError(f"{where}: {named}: cannot read: {e.strerror or e}") from None
    except SignalError as e:  # one line naming the file, as for every input
        raise ConfigError(f"{where}: {config.planner.signals_file}: refused: {e}") from None
