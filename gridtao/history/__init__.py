"""The agent's own history: per-minute aggregates of the node's IT draw, for the hourly planner.

* :class:`HistoryStore` (``store``): one SQLite file (WAL), a row per minute (:class:`MinuteRow`),
  read back as rows or as numpy columns (:class:`HistorySeries`) for the forecaster.
* :class:`MinuteAggregator` (``aggregate``): samples at any rate -> 1-s averages -> minute rows.
* :class:`GpuMinuteRow`, :class:`WorkMinuteRow` (``rows``): the energy and work ledger beside
  the minutes: each GPU's energy and each work source's work per minute, merged when a minute
  is written in parts; :class:`GpuEnergyAggregator` (``gpuenergy``) and
  :class:`WorkAggregator` (``workcount``) make them from read-back rounds and scrapes.
* :class:`HistoryRecorder` (``recorder``): the agent's side: a bounded queue that never blocks
  the caller and a daemon thread that aggregates, writes and prunes.
* :func:`import_csv` (``importer``): measured history from a CSV file.
* :func:`synthetic_minutes` (``synth``): a deterministic synthetic history (tests, benches, demo).

Units everywhere: Unix seconds, watts, joules. Errors: :class:`HistoryError` (a
``GridtaoError``) names the file and the problem.
"""

from __future__ import annotations

from gridtao.gpu.sim.daily import DailyShape
from gridtao.history.aggregate import MinuteAggregator
from gridtao.history.gpuenergy import GpuEnergyAggregator
from gridtao.history.importer import ImportSummary, import_csv
from gridtao.history.recorder import HistoryRecorder
from gridtao.history.rows import Batch, Checkpoint, GpuMinuteRow, WorkMinuteRow
from gridtao.history.store import (
    HistoryError,
    HistorySeries,
    HistoryStore,
    MinuteRow,
    WrittenSpan,
)
from gridtao.history.synth import synthetic_minutes
from gridtao.history.workcount import WorkAggregator

__all__ = [
    "Batch",
    "Checkpoint",
    "DailyShape",
    "GpuEnergyAggregator",
    "GpuMinuteRow",
    "HistoryError",
    "HistoryRecorder",
    "HistorySeries",
    "HistoryStore",
    "ImportSummary",
    "MinuteAggregator",
    "MinuteRow",
    "WorkAggregator",
    "WorkMinuteRow",
    "WrittenSpan",
    "import_csv",
    "synthetic_minutes",
]
