"""``gridtao report energy``: the node's energy over a time window, for demand-response
settlement and energy documentation (docs/energy.md).

``gridtao report energy --from T --to T [--format md|json|csv] [--table NAME] [--plot FILE]
[--history FILE]... [--audit FILE...]...``

* ``T``: ISO 8601 with a time zone (``2026-03-01T00:00Z``, ``2026-03-01T01:00+01:00``) or Unix
  seconds; the window is ``[from, to)``.
* ``--history FILE``: a node's minute history (again for each further node); default the
  agent's own (``history.path``, by default ``<state dir>/history-<node>.sqlite3``).
* ``--audit FILE...``: one audit trail's files, live and rotated, any order (again for another
  node's trail); default the agent's own trail (``audit.path`` and its rotated files), when
  there is one.

The history is read here (``gridtao.history``) and the report made by
:mod:`gridtao.records.report`, with the configuration's facility model for the meter figures.
Exit 0; 1 when a report was written but an audit trail's hash chain is broken (the report marks
what it read from the break on as unverified, and stderr says where); 2 with one line on stderr
for a bad option or time, or a file that cannot be read (never a traceback).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import datetime
from pathlib import Path

from gridtao.config.agent import Config
from gridtao.config.outputs import output_path, writing
from gridtao.records.audit_files import rotated_files
from gridtao.records.report import TABLES, ReportError

EXIT_OK = 0
EXIT_CHAIN_BROKEN = 1
EXIT_ERROR = 2

#: Unix seconds accepted for --from and --to: 2000-01-01 to 2100-01-01 UTC (a value outside is
#: milliseconds or a typo).
_EARLIEST_S = 946_684_800
_LATEST_S = 4_102_444_800


def configure_report(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="report_command", metavar="REPORT", required=True)
    e = sub.add_parser(
        "energy", help="energy by node, hour and day, and per event, over a time window",
        description="Energy over [--from, --to): by node, hour and day (UTC) from the minute "
                    "history, at IT (measured) and at the meter (modelled with facility:), "
                    "with coverage and gaps; by GPU; per generated token and per sample of "
                    "each work source; each event of the audit trail in the window with the "
                    "energy it drew and did not draw and the work it lost; the measurement "
                    "method and its uncertainty. Exit 0; 1 when an audit trail's hash chain "
                    "is broken (the report is written and says so); 2 for a bad option or "
                    "file.")
    e.add_argument("--from", dest="from_time", metavar="T", required=True,
                   help="start (inclusive): ISO 8601 with a zone (2026-03-01T00:00Z) or Unix "
                        "seconds")
    e.add_argument("--to", dest="to_time", metavar="T", required=True,
                   help="end (exclusive), as --from")
    e.add_argument("--format", choices=("md", "json", "csv"), default="md",
                   help="md: a readable report with tables (default); json: the whole report "
                        "(docs/energy.md); csv: one table (--table)")
    e.add_argument("--table", choices=TABLES, default=None,
                   help="with --format csv: which table (default hours)")
    e.add_argument("--plot", metavar="FILE", default=None,
                   help="also draw hourly energy and the events as PNG (needs matplotlib)")
    e.add_argument("--history", metavar="FILE", action="append", default=None,
                   help="a node's minute history; repeat for several nodes (default: the "
                        "agent's, history.path)")
    e.add_argument("--audit", metavar="FILE", nargs="+", action="append", default=None,
                   help="one audit trail's files (live and rotated); repeat for another "
                        "node's trail (default: the agent's, audit.path, if it exists)")


#: The longest window one report covers (days): its hourly table has a row per hour.
MAX_WINDOW_DAYS = 366


def parse_time(text: str, option: str) -> float:
    """``text`` as Unix seconds: ISO 8601 with a zone, or a number of seconds within
    2000-2100. Raises :class:`ReportError` naming ``option``."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not (math.isfinite(seconds) and _EARLIEST_S <= seconds <= _LATEST_S):
            raise ReportError(f"{option}: {text!r}: Unix seconds must fall in 2000-2100")
        return seconds
    iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise ReportError(f"{option}: not a time: {text!r} (ISO 8601 with a zone, e.g. "
                          "2026-03-01T00:00Z, or Unix seconds)") from None
    if when.tzinfo is None:
        raise ReportError(f"{option}: {text!r} has no time zone (add Z or an offset such as "
                          "+01:00)")
    try:
        seconds = when.timestamp()
    except (OverflowError, ValueError):  # a date at the edge of what datetime holds
        seconds = math.nan
    if not (math.isfinite(seconds) and _EARLIEST_S <= seconds <= _LATEST_S):
        raise ReportError(f"{option}: {text!r}: the time must fall in 2000-2100")
    return seconds


def _default_audit(path: Path) -> list[Path]:
    """The agent's trail: its rotated files (``<name>.<12 digits>``), then its live file."""
    return rotated_files(path) + ([path] if path.exists() else [])


def run_report(args: argparse.Namespace, config: Config) -> int:
    # ReportError and HistoryError are GridtaoErrors: gridtao.cli.main prints them as one line
    # and exits 2.
    from gridtao.app.options import default_node_id
    from gridtao.config.paths import with_state_paths
    from gridtao.control.tier2.facility import FacilityModel
    from gridtao.history import HistoryStore
    from gridtao.records import report as rep
    from gridtao.telemetry import plotting

    from_s = parse_time(args.from_time, "--from")
    to_s = parse_time(args.to_time, "--to")
    if to_s <= from_s:
        raise ReportError(f"--to ({args.to_time}) must be after --from ({args.from_time})")
    if to_s - from_s > MAX_WINDOW_DAYS * 86_400:
        raise ReportError(f"--from {args.from_time} to --to {args.to_time} spans more than "
                          f"{MAX_WINDOW_DAYS} days: report a year or less at a time")
    if args.table is not None and args.format != "csv":
        raise ReportError("--table applies to --format csv only")
    if args.plot and not plotting.available():
        raise plotting.PlottingUnavailable(f"--plot: {plotting.INSTALL_HINT}")
    plot_path = None if not args.plot else output_path(args.plot, "--plot")
    node_id = config.mqtt.node_id or default_node_id()
    state = with_state_paths(config, node_id)
    if args.history:
        histories = [(rep.node_of_history(p), Path(p).expanduser()) for p in args.history]
    else:
        assert state.history.path is not None  # with_state_paths always sets it
        histories = [(node_id, Path(state.history.path))]
    for _, path in histories:
        if not path.is_file():
            raise ReportError(f"{path}: no such history (gridtao history import or generate, "
                              "or run the agent; --history FILE names another)")
    notes: list[str] = []
    if args.audit:
        trail_files = [[Path(p).expanduser() for p in files] for files in args.audit]
    else:
        assert state.audit.path is not None
        found = _default_audit(Path(state.audit.path))
        trail_files = [found] if found else []
        if not found:
            notes.append(f"no audit trail at {state.audit.path}"
                         + ("" if config.audit.enabled else " (audit.enabled is false)")
                         + ": no events reported (--audit FILE... names one)")
    trails = [rep.read_trail(files) for files in trail_files]
    facility = FacilityModel.from_config(config.facility)
    since, until = rep.history_range(from_s, to_s, [ev for _, evs in trails for ev in evs],
                                     facility)
    loaded = []
    ledgers: dict[str, rep.Ledger] = {}
    unmeasured: list[str] = []
    for name, path in histories:
        with HistoryStore.open(path) as store:
            loaded.append((name, str(path), store.rows(since, until)))
            ledgers[name] = rep.Ledger(store.gpu_rows(since, until),
                                       store.work_rows(since, until))
            unmeasured += [rep.unmeasured_warning(name, span, from_s, to_s)
                           for span in store.written(math.floor(from_s), math.ceil(to_s))]
    if node_id in ledgers:  # this node's own work sources, said when they counted nothing
        counted = {r.source for r in ledgers[node_id].work
                   if from_s - 60 < r.start_s < to_s}
        notes += [f"work source {s.name!r} (work.sources, {s.url}) counted nothing in the "
                  "window: it was down or not scraped, so it has no figure below"
                  for s in config.work.sources if s.name not in counted]
    report = rep.build_report(
        from_s, to_s, histories=loaded, trails=trails, facility=facility,
        settle_at=config.facility.settle_at,
        read_back_period_s=config.safety.rearm_period_s, generated_at_s=time.time(),
        notes=notes, ledgers=ledgers, warnings=unmeasured)
    if args.format == "json":
        sys.stdout.write(rep.dumps(report))
    elif args.format == "csv":
        sys.stdout.write(rep.to_csv(report, args.table or "hours"))
    else:
        sys.stdout.write(rep.to_markdown(report))
    sys.stdout.flush()
    if plot_path is not None:
        with writing(plot_path, "--plot"):
            rep.draw(report, plot_path)
        print(f"plot: {args.plot}", file=sys.stderr)
    for check in report.trails:
        if not check.intact:
            print(f"gridtao: warning: audit trail {check.files[0]}: hash chain broken at "
                  f"{check.problem}; the report marks what it read from there on as "
                  "unverified", file=sys.stderr)
    return EXIT_CHAIN_BROKEN if report.chain_broken else EXIT_OK
