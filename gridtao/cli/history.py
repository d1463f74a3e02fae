"""``gridtao history``: the node's minute history that the hourly planner reads (gridtao/history).

* ``gridtao history import FILE.csv``: measured IT draw from a CSV (``time``/``t``,
  ``it_w``/``power_w``, optional ``limit_w``), aggregated to minutes; all or nothing.
* ``gridtao history generate --days 7 [--seed N] [--gpus N] [--replace]``: a synthetic history
  ending at the current minute, for trying the planner (a node of the configuration's
  simulated GPUs unless ``--gpus``). It refuses to overwrite stored minutes
  (which may be the agent's real measurements) unless ``--replace``.
* ``gridtao history show [--days N]``: one line per hour of the last N days (local time).
* ``gridtao history correlation [NODE=]FILE [NODE=]FILE ... [--days N] [--tz-offset-h H]``:
  how several nodes' draws move together (gridtao/history/correlation.py), from copies of their
  history files: the value for a site's ``site.market.pooling_correlation``.

The store is the agent's own (``history.path``; by default
``<state dir>/history-<node>.sqlite3``, see ``gridtao.config.paths``), or ``--store FILE``.
Exit 0 on success; 2 with one line on stderr when the file, the store or an option is bad
(never a traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gridtao.cli.argtypes import number, whole
from gridtao.config.agent import Config

if TYPE_CHECKING:  # loaded when a history command runs, not whenever the CLI starts
    from gridtao.history import HistoryStore

EXIT_OK = 0
EXIT_ERROR = 2
TWO_WEEKS_H = 14 * 24
DAYS = number(0, 3660, "days", above_lo=True)  # how far back a command reads


def configure_history(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="FILE", default=None,
                   help="the history database (default: the agent's, history.path, by default "
                        "<state dir>/history-<node>.sqlite3)")
    sub = p.add_subparsers(dest="history_command", metavar="ACTION", required=True)
    imp = sub.add_parser(
        "import", help="import measured IT draw from a CSV file into the minute history",
        description="Import a CSV (header: time or t, it_w or power_w, optional limit_w; "
                    "Unix seconds or ISO 8601 with timezone; 1 s to 1 min samples). All rows "
                    "are checked first; a bad one names its line and nothing is written.")
    imp.add_argument("file", metavar="FILE.csv", help="the CSV file to import")
    gen = sub.add_parser(
        "generate", help="write a synthetic history ending now (for trying the planner)",
        description="Write a deterministic synthetic history (training jobs and inference "
                    "following a daily shape) ending at the current minute.")
    gen.add_argument("--days", type=DAYS, default=7.0,
                     help="how many days to generate (default 7)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--gpus", type=whole(1, 64), default=None,
                     help="GPUs in the synthetic node (default: the configuration's "
                          "gpus.sim.count, of its gpus.sim.profile's default limit)")
    gen.add_argument("--replace", action="store_true",
                     help="overwrite minutes already stored in the period (they may be real "
                          "measurements; refused without this)")
    show = sub.add_parser("show", help="a per-hour table of the last days of history",
                          description="One line per hour (local time): minutes stored, mean "
                                      "draw, mean of the minutes' 10th percentiles, energy, "
                                      "minutes under a grid activation.")
    show.add_argument("--days", type=DAYS, default=1.0,
                      help="how many days back from now to show (default 1)")
    corr = sub.add_parser(
        "correlation", help="how several nodes' draws move together (for a site's pooling)",
        description="From copies of several nodes' history files, each node's hourly draw less "
                    "its median for that hour of the week (hours under a grid activation left "
                    "out), correlated pair by pair and as a site (weighted by the nodes' "
                    "swings); the site's figure at the top of its range over resamplings of "
                    "whole days, rounded up to 0.05, is the value for the site's "
                    "site.market.pooling_correlation.")
    corr.add_argument("files", metavar="[NODE=]FILE", nargs="+",
                      help="a node's history database (its name: NODE, else the file's stem)")
    corr.add_argument("--days", type=DAYS, default=28.0,
                      help="how many days back from each file's last minute (default 28)")
    corr.add_argument("--tz-offset-h", type=number(-12, 14, "hours"), default=0.0, metavar="H",
                      help="local time east of UTC where the days resampled begin and end: "
                           "the nodes' planner.tz_offset_h (default 0, as that key's); never "
                           "this machine's own time zone, so the same files give the same "
                           "figures anywhere")
    for action in (imp, gen, show):  # after the action too: `history generate --store F`
        action.add_argument("--store", metavar="FILE", default=argparse.SUPPRESS,
                            help="the history database (as before the action)")


def store_path(args: argparse.Namespace, config: Config) -> Path:
    """The history database for this command: ``--store``, else the agent's own
    (``history.path``, by default ``<state dir>/history-<node>.sqlite3``)."""
    if args.store:
        return Path(args.store).expanduser()
    from gridtao.app.options import default_node_id
    from gridtao.config.paths import with_state_paths

    path = with_state_paths(config, config.mqtt.node_id or default_node_id()).history.path
    assert path is not None  # with_state_paths always sets it
    return Path(path)


def run_history(args: argparse.Namespace, config: Config) -> int:
    # HistoryError is a GridtaoError: gridtao.cli.main prints it as one line and exits 2.
    from gridtao.history import HistoryStore

    if args.history_command == "correlation":
        return _correlation(args)
    path = store_path(args, config)
    if args.history_command == "show" and not path.exists():
        print(f"gridtao: error: {path}: no history yet (gridtao history import or generate, "
              "or run the agent)", file=sys.stderr)
        return EXIT_ERROR
    with HistoryStore.open(path) as store:
        if args.history_command == "import":
            return _import(args, store)
        if args.history_command == "generate":
            return _generate(args, store, config)
        return _show(args, store)


def _import(args: argparse.Namespace, store: HistoryStore) -> int:
    from gridtao.history import import_csv

    summary = import_csv(args.file, store)
    if summary.rows == 0 or summary.first_start_s is None or summary.last_start_s is None:
        print(f"{summary.path}: {summary.samples} samples, no complete minute: nothing written")
        return EXIT_OK
    print(f"{summary.path}: {summary.samples} samples every {summary.interval_s:g} s -> "
          f"{summary.rows} minutes, {_when(summary.first_start_s)} .. "
          f"{_when(summary.last_start_s)}, into {store.path}")
    return EXIT_OK


def _generate(args: argparse.Namespace, store: HistoryStore, config: Config) -> int:
    from gridtao.gpu.sim.daily import configured_shape
    from gridtao.gpu.sim.gpumodels import PROFILES
    from gridtao.history import synthetic_minutes

    minutes = max(1, round(args.days * 1440))
    end = (int(time.time()) // 60) * 60  # the current minute is not over: history ends before
    start = end - 60 * minutes
    existing = store.rows(start, end)
    if existing and not args.replace:
        print(f"gridtao: error: {store.path}: {len(existing)} minutes between "
              f"{_when(start)} and {_when(end)} are already stored (maybe measured); "
              "--replace overwrites them", file=sys.stderr)
        return EXIT_ERROR
    # The day's shape of its inference load: the configuration's (gpus.sim.daily_shape and its
    # keys), gridtao's default levels where it sets none (a synthetic day always has a shape).
    sim = config.gpus.sim
    shape = configured_shape(sim, "default" if sim.daily_shape == "none" else None)
    gpus = args.gpus if args.gpus is not None else sim.count
    tdp_w = PROFILES[sim.profile].default_w
    rows = synthetic_minutes(start, minutes / 1440, gpus=gpus, tdp_w=tdp_w, seed=args.seed,
                             shape=shape)
    store.write(rows, origin=f"generated by gridtao history generate (synthetic, seed "
                            f"{args.seed})")
    print(f"wrote {len(rows)} synthetic minutes ({gpus} GPUs of {tdp_w:g} W, seed {args.seed}), "
          f"{_when(rows[0].start_s)} .. {_when(rows[-1].start_s)}, into {store.path}")
    return EXIT_OK


def _show(args: argparse.Namespace, store: HistoryStore) -> int:
    now = int(time.time())
    since = ((now - round(args.days * 86_400)) // 3600) * 3600
    rows = store.rows(since, now + 60)
    if not rows:
        print(f"{store.path}: no minutes stored since {_when(since)}")
        return EXIT_OK
    hours: dict[int, _Hour] = {}
    for r in rows:
        h = hours.setdefault((r.start_s // 3600) * 3600, _Hour())
        h.minutes += 1
        h.energy_j += r.energy_j
        # A row's covered time is energy over mean (60 s for a full minute).
        h.covered_s += r.energy_j / r.it_mean_w if r.it_mean_w > 0 else 60.0
        h.p10_sum_w += r.it_p10_w
        h.event_s += r.event_s
    zone = datetime.now().astimezone().strftime("%Z, UTC%z")
    print(f"{store.path}: {len(rows)} minutes since {_when(since)} (times in {zone})")
    print(f"{'hour':<16} {'minutes':>7} {'mean W':>9} {'p10 W':>9} {'energy kWh':>10} "
          f"{'event min':>9}")
    for start in sorted(hours):
        h = hours[start]
        mean = h.energy_j / h.covered_s if h.covered_s > 0 else 0.0
        print(f"{_when(start):<16} {h.minutes:>7} {mean:>9.1f} {h.p10_sum_w / h.minutes:>9.1f} "
              f"{h.energy_j / 3.6e6:>10.3f} {h.event_s / 60:>9.1f}")
    return EXIT_OK


def _correlation(args: argparse.Namespace) -> int:
    from gridtao.history import HistoryStore
    from gridtao.history.correlation import draw_correlation

    named: dict[str, Path] = {}
    for spec in args.files:
        node, sep, file = spec.partition("=")
        if sep and (not node or "/" in node or not Path(file).expanduser().is_file()) \
                and Path(spec).expanduser().is_file():
            sep = ""  # a path holding "=" (a node id holds no "/")
        path = Path(file if sep else spec).expanduser()
        name = node if sep and node else path.stem
        if name in named:
            print(f"gridtao: error: node {name!r} is named twice (NODE=FILE names a file)",
                  file=sys.stderr)
            return EXIT_ERROR
        if not path.is_file():
            print(f"gridtao: error: {path}: no such history file", file=sys.stderr)
            return EXIT_ERROR
        named[name] = path
    if len(named) < 2:
        print("gridtao: error: correlation needs the history files of two nodes or more",
              file=sys.stderr)
        return EXIT_ERROR
    rows = {}
    for name, path in named.items():
        with HistoryStore.open_read_only(path) as store:  # copies: left as they are
            last = store.latest_start_s()
            rows[name] = [] if last is None else store.rows(
                last - round(args.days * 86_400), last + 60)
    found = draw_correlation(rows, tz_offset_s=round(args.tz_offset_h * 3600))
    print(f"days resampled local to UTC{args.tz_offset_h + 0.0:+g} h (--tz-offset-h)")
    print("hours that counted: " + ", ".join(f"{n} {h}" for n, h in found.hours.items()))
    print(f"{'node':<20} {'node':<20} {'hours':>6} {'correlation':>11}")
    for p in found.pairs:
        rho = "too few" if p.rho is None else f"{p.rho:.3f}"
        print(f"{p.a:<20} {p.b:<20} {p.hours:>6} {rho:>11}")
    if found.suggested is None or found.rho is None or found.upper is None:
        print(f"the site: {found.common_hours} hours every node has, too few to measure (each "
              "hour of the week must be seen twice: two weeks of history at least, four "
              "better; or a node never moves off its weekly shape): keep "
              "site.market.pooling_correlation at 1 (no pooling claimed)")
        return EXIT_OK
    if found.common_hours < TWO_WEEKS_H:
        print(f"warning: only {found.common_hours} hours every node has (less than two weeks): "
              "the figures below are rough; measure over four weeks", file=sys.stderr)
    print(f"the site: correlation {found.rho:.3f} over {found.common_hours} hours every node "
          f"has; at most {found.upper:.3f} in 39 of 40 resamplings of its days")
    print(f"site.market.pooling_correlation: {found.suggested:g} (that upper figure, rounded up; "
          f"a site of {len(named)} nodes may need more: docs/site.md, \"Pooling\")")
    return EXIT_OK


@dataclass
class _Hour:
    """Sums over the stored minutes of one hour (W, J, s)."""

    minutes: int = 0
    energy_j: float = 0.0
    covered_s: float = 0.0
    p10_sum_w: float = 0.0
    event_s: float = 0.0


def _when(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s).astimezone().strftime("%Y-%m-%d %H:%M")
