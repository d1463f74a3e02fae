"""Energy reports: what a node drew, by hour and by day, and what each grid event drew and did
not draw, from the node's minute history and its audit trail (``gridtao report energy``).

Pure computation over values the caller has read, plus the reading of the audit trail (this
layer's own files). The minute history is read by the caller (``gridtao.history`` sits beside
this package, not below it) and handed over as rows that look like
:class:`gridtao.history.MinuteRow` (:class:`~gridtao.records.report.minutes.Minute`); the
facility model (``gridtao.control.tier2.facility.FacilityModel``) likewise
(:class:`~gridtao.records.report.minutes.Facility`).

Units: times Unix seconds (UTC), powers W, energies J inside and kWh in the report
(1 kWh = 3.6e6 J). docs/energy.md describes every figure and the JSON and CSV shapes.

The modules, each importing only those above it in this list:

* :mod:`~gridtao.records.report.common`: :class:`ReportError` and the units.
* :mod:`~gridtao.records.report.trail`: the audit trail read and verified and its events
  assembled (**events**).
* :mod:`~gridtao.records.report.gpus`: each GPU's energy (**energy by GPU**) into spans.
* :mod:`~gridtao.records.report.work`: **energy per token and per sample**, and each event's
  **work lost**, from the work sources' minutes.
* :mod:`~gridtao.records.report.minutes`: the minute history through the facility model
  (**IT energy**, **meter energy**) into spans, hours, days and gaps.
* :mod:`~gridtao.records.report.build`: the report assembled from those.
* :mod:`~gridtao.records.report.ledgerfmt`: the GPU and work figures written out.
* :mod:`~gridtao.records.report.formats`: the report as Markdown, JSON and CSV.
* :mod:`~gridtao.records.report.plot`: the report as a PNG (matplotlib loaded when drawn).

Threads: none of its own. The computation is pure over values the caller has read;
:func:`read_trail` blocks on its files; :func:`draw` uses pyplot's global state (one thread at
a time).
"""

from __future__ import annotations

from gridtao.records.report.build import Ledger, build_report, unmeasured_warning
from gridtao.records.report.common import ReportError
from gridtao.records.report.formats import TABLES, dumps, to_csv, to_markdown
from gridtao.records.report.minutes import history_range, node_of_history
from gridtao.records.report.plot import draw
from gridtao.records.report.trail import read_trail

__all__ = [
    "TABLES",
    "Ledger",
    "ReportError",
    "build_report",
    "draw",
    "dumps",
    "history_range",
    "node_of_history",
    "read_trail",
    "to_csv",
    "to_markdown",
    "unmeasured_warning",
]
