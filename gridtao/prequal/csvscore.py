"""``gridtao prequalify score``: score a recorded CSV with the bench's own rules.

For a test run on real hardware with the operator's own meter logger. The file has the
columns the bench writes (the README's "Compliance bench" section); the scorer reads ``t_s``
(s, t = 0 at the test's first frequency sample), ``hz`` (the frequency the unit was sent, Hz)
and ``delivered_w`` (the reduction at the settlement point, W: the reference minus the power
now; negative = drawing more), and if present ``delivered_it_w`` (the same at the GPUs, W;
default: ``delivered_w``) and ``limit_w`` (the summed enforced power limits, W; needed by the
normal-frequency test). Other columns are ignored; ``required_w`` too: the requirement is
computed from ``hz`` and the test, as the bench computes it.

The test is the one the bench plays for ``--product P --test T`` with the same options
(``--time-scale``, ``--threshold-hz``, ``--capacity-w``, ``--sine-periods``, ``--sine-cycles``):
its marks (the step, the holds, the sines) are read on the file's time base. Prints the rule
table (as ``gridtao bench compliance``) and writes the same JSON to ``--json FILE``; with
``--json -`` it prints the JSON instead of the table. Exit status: 0 every rule passed, 1 one
failed, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gridtao.config.agent import Config, ConfigError
from gridtao.config.outputs import writing
from gridtao.readfile import check_regular

NEEDED = ("t_s", "hz", "delivered_w")
COVER_SLACK_S = 0.5  # the file may start or end this much inside the test


@dataclass(frozen=True)
class Recorded:
    """The columns the scorer reads (s, Hz, W); ``limit_w`` None when the file has none."""

    t_s: list[float]
    hz: list[float]
    delivered_w: list[float]
    delivered_it_w: list[float]
    limit_w: list[float] | None


def configure(p: argparse.ArgumentParser) -> None:
    """``prequalify score``'s arguments."""
    from gridtao.prequal.options import add_common

    add_common(p, workload=False)
    p.add_argument("--test", default=None, metavar="NAME",
                   help="the product's test the file recorded (default: its first; "
                        "gridtao bench compliance --product P --list names them)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write the scored rules as JSON ('-': standard output)")
    p.add_argument("csv_file", metavar="FILE.csv", help="the recording (bench CSV columns)")


def read_recording(path: Path) -> Recorded:
    """The file's columns (module docstring); :class:`ConfigError` naming the file, line and
    column for anything that cannot be scored."""
    try:
        check_regular(path)  # a FIFO or a device would never end, or never open
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text CSV file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    rows = csv.reader(text.splitlines())
    header = [h.strip() for h in next(rows, [])]
    missing = [c for c in NEEDED if c not in header]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (needs "
                          f"{', '.join(NEEDED)}; optional delivered_it_w, limit_w)")
    wanted = [*NEEDED, *(c for c in ("delivered_it_w", "limit_w") if c in header)]
    where = {c: header.index(c) for c in wanted}
    cols: dict[str, list[float]] = {c: [] for c in wanted}
    for line, row in enumerate(rows, start=2):
        if not row or all(not v.strip() for v in row):
            continue
        if any(where[c] >= len(row) for c in wanted):  # cut short (a logger stopped)
            raise ConfigError(f"{path} line {line}: {len(row)} fields, the header has "
                              f"{len(header)}")
        for c in wanted:
            raw = row[where[c]].strip()
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{path} line {line}: column {c}: {raw!r} is not a number"
                                  ) from None
            if not math.isfinite(value):
                raise ConfigError(f"{path} line {line}: column {c}: {raw!r} is not finite")
            if c == "t_s" and cols[c] and value <= cols[c][-1]:
                raise ConfigError(f"{path} line {line}: t_s {value:g} does not increase "
                                  f"(previous {cols[c][-1]:g})")
            cols[c].append(value)
    if len(cols["t_s"]) < 2:
        raise ConfigError(f"{path}: fewer than two samples")
    return Recorded(cols["t_s"], cols["hz"], cols["delivered_w"],
                    cols.get("delivered_it_w", cols["delivered_w"]), cols.get("limit_w"))


def within(rec: Recorded, duration_s: float, test: str, path: Path) -> Recorded:
    """The samples in [0, duration_s]; :class:`ConfigError` if the file does not cover it."""
    if rec.t_s[0] > COVER_SLACK_S or rec.t_s[-1] < duration_s - COVER_SLACK_S:
        raise ConfigError(f"{path}: covers {rec.t_s[0]:g}-{rec.t_s[-1]:g} s; test {test} runs "
                          f"0-{duration_s:g} s (t_s = 0 at its first frequency sample)")
    keep = [k for k, t in enumerate(rec.t_s) if 0.0 <= t <= duration_s]

    def pick(xs: Sequence[float]) -> list[float]:
        return [xs[k] for k in keep]

    return Recorded(pick(rec.t_s), pick(rec.hz), pick(rec.delivered_w),
                    pick(rec.delivered_it_w), None if rec.limit_w is None else pick(rec.limit_w))


def run(args: argparse.Namespace, config: Config, command: str) -> int:
    """Score ``args.csv_file``; the exit status (module docstring)."""
    from gridtao import __version__
    from gridtao.prequal import plans
    from gridtao.prequal import report as rep
    from gridtao.prequal.options import check_common, select, sine_options

    scale = check_common(args)
    pcfg = plans.product_config(config, args.product, capacity_w=args.capacity_w,
                                time_scale=scale, threshold_hz=args.threshold_hz)
    spec = plans.spec_of(pcfg)
    tests = plans.test_plans(args.product, spec, scale, sine_options(args),
                             rearm_s=plans.rearm_times(config, pcfg))
    if args.test == "all":
        raise ConfigError("--test: a file records one test; name it (one of "
                          f"{', '.join(p.name for p in tests)})")
    [plan] = select(tests, args.test, one=True)
    path = Path(args.csv_file)
    rec = within(read_recording(path), plan.duration_s, plan.name, path)
    try:
        res = rep.score_samples(spec, plan, rec.t_s, rec.hz, rec.delivered_w,
                                rec.delivered_it_w, rec.limit_w)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    body = rep.summary_json(args.product, [res], command=command, version=__version__,
                            source=str(path), time_scale=scale,
                            product_config={"kind": pcfg.kind, "capacity_w": pcfg.capacity_w})
    text = json.dumps(body, indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        print(rep.text_report(args.product, [res]))
        if args.json:
            with writing(Path(args.json), "--json"):
                Path(args.json).write_text(text, encoding="utf-8")
    return 0 if res.passed else 1
