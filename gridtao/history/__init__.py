"""The agent's own history: per-minute aggregates of the node's IT draw, for the hourly planner.

* :class:`HistoryStore` (``store``): one SQLite file (WAL), a row per minute (:class:`MinuteRow`),
  read back as rows or as numpy columns (:class:`HistorySeries`) for the forecaster.
* :class:`MinuteAggregator` (``aggregate``): samples at any rate -> 1-s averages -> minute rows.
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
from gridtao.history.importer import ImportSummary, import_csv
from gridtao.history.recorder import HistoryRecorder
from gridtao.history.store import HistoryError, HistorySeries, HistoryStore, MinuteRow
from gridtao.history.synth import synthetic_minutes

__all__ = [
    "DailyShape",
    "HistoryError",
    "HistoryRecorder",
    "HistorySeries",
    "HistoryStore",
    "ImportSummary",
    "MinuteAggregator",
    "MinuteRow",
    "import_csv",
    "synthetic_minutes",
]
