"""Import a CSV of the node's measured IT draw into the history store.

The file: UTF-8 (a byte-order mark is allowed), a header row, then one row per sample, oldest
first. Columns, by header name (case and surrounding spaces ignored, others ignored):

* ``time`` or ``t``: Unix seconds (a number), or ISO 8601 with a timezone
  (``2025-11-24T14:05:00+01:00``, ``...Z``).
* ``it_w`` or ``power_w``: the node's IT draw, watts (>= 0).
* ``limit_w`` (optional): the summed enforced GPU power limits, watts (> 0; empty: unknown).

Samples may come at any steady rate from 1 s to 1 min. The interval is taken as the median of
the first :data:`_PROBE_SAMPLES` intervals; each sample is held for up to 1.5 intervals
(:class:`~gridtao.history.aggregate.MinuteAggregator`'s rectangle rule), so a missing row or
two is bridged while a longer gap stays a gap; the last sample holds for one interval. Sparser
files than one sample a minute leave gaps between rows. Imported rows have no activations
(``event_s`` 0).

All or nothing: every row is checked and aggregated first, then all minutes are written in one
transaction, replacing stored minutes of the same start. A bad row stops the import with a
:class:`~gridtao.history.store.HistoryError` naming the file, the line and the problem; a file
that is not UTF-8 text or not CSV gives one such error too.
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gridtao.history.aggregate import MinuteAggregator
from gridtao.history.store import HistoryError, HistoryStore, MinuteRow
from gridtao.readfile import check_regular

__all__ = ["ImportSummary", "import_csv"]

_TIME_NAMES = ("time", "t")
_POWER_NAMES = ("it_w", "power_w")
_LIMIT_NAME = "limit_w"
_PROBE_SAMPLES = 64
_HOLD_FACTOR = 1.5
_MAX_HOLD_S = 90.0
#: Larger "Unix seconds" are almost surely milliseconds (this is the year 5138).
_MAX_UNIX_S = 1e11

_Fail = Callable[[str], HistoryError]  # builds the error for the current line


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_csv` did: ``samples`` data rows read, ``rows`` minutes written,
    the first and last minute written (Unix seconds, ``None`` when none), and the sampling
    interval it inferred (s)."""

    path: str
    samples: int
    rows: int
    first_start_s: int | None
    last_start_s: int | None
    interval_s: float


@dataclass(frozen=True)
class _Sample:
    line: int
    t_s: float
    it_w: float
    limit_w: float | None


def import_csv(path: str | Path, store: HistoryStore) -> ImportSummary:
    """Read the CSV at ``path`` (see the module docstring), aggregate it to minutes and write
    them to ``store``. Raises :class:`HistoryError` for the file or the store."""
    p = Path(path)
    try:
        check_regular(p)  # a FIFO or a device would never end, or never open
        f = open(p, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise HistoryError(f"{p}: cannot read: {e.strerror or e}", path=p) from None
    with f:
        samples = _samples(p, f)
        probe = list(itertools.islice(samples, _PROBE_SAMPLES))
        if not probe:
            raise HistoryError(f"{p}: no data rows after the header", path=p)
        gaps = [b.t_s - a.t_s for a, b in itertools.pairwise(probe)]
        interval = statistics.median(gaps) if gaps else 60.0
        aggregator = MinuteAggregator(max_hold_s=min(_MAX_HOLD_S, _HOLD_FACTOR * interval))
        rows: list[MinuteRow] = []
        count = 0
        last_t = probe[0].t_s
        for s in itertools.chain(probe, samples):
            count += 1
            last_t = s.t_s
            rows += aggregator.add(s.t_s, s.it_w, s.limit_w, False)
        rows += aggregator.finish(last_t + interval)
    store.write(rows, origin=f"imported from {p} (gridtao history import)")
    return ImportSummary(str(p), count, len(rows), rows[0].start_s if rows else None,
                         rows[-1].start_s if rows else None, interval)


def _samples(p: Path, f: Iterator[str]) -> Iterator[_Sample]:
    """The file's data rows, checked; raises :class:`HistoryError` at the first bad one."""
    reader = csv.reader(f, strict=True)  # a stray quote is an error, not a merged row

    def fail(problem: str) -> HistoryError:
        return HistoryError(f"{p}: line {reader.line_num}: {problem}", path=p,
                            line=reader.line_num)

    rows = iter(reader)
    columns: tuple[int, int, int | None] | None = None
    prev: _Sample | None = None
    while True:
        try:
            raw = next(rows)
        except StopIteration:
            break
        except UnicodeDecodeError:
            # Decoding runs ahead of the CSV reader in blocks: no exact line to name.
            raise HistoryError(f"{p}: not UTF-8 text (is this a CSV file?)", path=p) from None
        except csv.Error as e:
            raise fail(f"not valid CSV: {e}") from None
        cells = [c.strip() for c in raw]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if columns is None:
            columns = _header(cells, fail)
            continue
        ti, pi, li = columns
        if len(cells) <= max(ti, pi, li if li is not None else 0):
            raise fail(f"expected at least {max(ti, pi, li or 0) + 1} columns, got {len(cells)}")
        t_s = _time(cells[ti], fail)
        it_w = _number(cells[pi], "power", fail)
        if it_w < 0:
            raise fail(f"power must be >= 0 W, got {cells[pi]!r}")
        limit_w: float | None = None
        if li is not None and cells[li]:
            limit_w = _number(cells[li], "limit_w", fail)
            if limit_w <= 0:
                raise fail(f"limit_w must be > 0 W (or empty), got {cells[li]!r}")
        if prev is not None and t_s <= prev.t_s:
            raise fail(f"time {cells[ti]!r} is not after line {prev.line}'s: rows must be in "
                       "time order without repeats")
        prev = _Sample(reader.line_num, t_s, it_w, limit_w)
        yield prev
    if columns is None:
        raise HistoryError(f"{p}: empty file (expected a header: time,it_w[,limit_w])", path=p)


def _header(cells: list[str], fail: _Fail) -> tuple[int, int, int | None]:
    names = [c.lower() for c in cells]

    def find(options: tuple[str, ...]) -> int | None:
        return next((names.index(o) for o in options if o in names), None)

    ti, pi = find(_TIME_NAMES), find(_POWER_NAMES)
    found = ", ".join(repr(c) for c in cells)
    if ti is None:
        raise fail(f"no time column: the header needs 'time' or 't' (it has {found})")
    if pi is None:
        raise fail(f"no power column: the header needs 'it_w' or 'power_w' (it has {found})")
    return ti, pi, find((_LIMIT_NAME,))


def _number(text: str, what: str, fail: _Fail) -> float:
    try:
        value = float(text)
    except ValueError:
        raise fail(f"{what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise fail(f"{what} must be finite, got {text!r}")
    return value


def _time(text: str, fail: _Fail) -> float:
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not (math.isfinite(value) and 0 <= value < _MAX_UNIX_S):
            hint = " (milliseconds? expected Unix seconds)" if value >= _MAX_UNIX_S else ""
            raise fail(f"time {text!r} is not a Unix time in seconds{hint}")
        return value
    iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise fail(f"time is neither Unix seconds nor ISO 8601: {text!r}") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise fail(f"time {text!r} has no timezone (add 'Z' or an offset like '+01:00')")
    try:
        value = when.timestamp()
    except (OverflowError, ValueError):  # a date at the edge of what datetime holds
        value = math.nan
    if not (math.isfinite(value) and 0 <= value < _MAX_UNIX_S):
        raise fail(f"time {text!r} is not a time this history can hold (1970 to year 5138)")
    return value
