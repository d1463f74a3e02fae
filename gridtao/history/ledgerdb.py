"""The SQL of the ledger's tables beside ``minutes`` (schema 2): ``gpu_minutes`` (each GPU's
energy per minute), ``work_minutes`` (each work source's work per minute) and ``checkpoints``
(the counters' last readings a restarted agent carries on from). The rows and how they merge:
gridtao/history/rows.py.

Every function takes an open connection and runs inside the caller's transaction; the caller
(:class:`~gridtao.history.store.HistoryStore`) holds its lock and translates ``sqlite3``
errors. Units: Unix seconds, joules, the sources' units.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import TypeVar

from gridtao.history.rows import (
    GPU_METHODS,
    Checkpoint,
    GpuMinuteRow,
    WorkMinuteRow,
    merge_gpu,
    merge_work,
)

__all__ = ["SCHEMA_2", "gpu_rows", "merge_gpu_rows", "merge_work_rows", "prune",
           "put_checkpoints", "read_checkpoints", "work_rows"]

#: Tables added by schema 2 (a schema-1 file gains them when opened; ``minutes`` is unchanged).
SCHEMA_2 = (
    """CREATE TABLE IF NOT EXISTS gpu_minutes (
        start_s   INTEGER NOT NULL,
        gpu       TEXT NOT NULL,
        gpu_index INTEGER NOT NULL,
        energy_j  REAL NOT NULL,
        covered_s REAL NOT NULL,
        power_s   REAL NOT NULL,
        method    TEXT NOT NULL,
        PRIMARY KEY (start_s, gpu)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS work_minutes (
        start_s     INTEGER NOT NULL,
        source      TEXT NOT NULL,
        model       TEXT NOT NULL,
        kind        TEXT NOT NULL,
        source_kind TEXT NOT NULL,
        units       REAL NOT NULL,
        covered_s   REAL NOT NULL,
        gpus        TEXT NOT NULL,
        PRIMARY KEY (start_s, source, model, kind)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        series TEXT PRIMARY KEY,
        wall_s REAL NOT NULL,
        value  REAL NOT NULL
    ) WITHOUT ROWID""",
)

_GPU = "start_s, gpu, gpu_index, energy_j, covered_s, power_s, method"
_WORK = "start_s, source, source_kind, model, kind, units, covered_s, gpus"
_Row = TypeVar("_Row")

def _gpu_row(raw: tuple[object, ...]) -> GpuMinuteRow:
    s, gpu, index, energy, covered, power, method = raw
    if method not in GPU_METHODS:
        raise ValueError(f"unknown method {method!r}")
    return GpuMinuteRow(int(str(s)), str(gpu), int(str(index)), float(str(energy)),
                        float(str(covered)), float(str(power)), method)


def _gpus_text(gpus: tuple[int, ...]) -> str:
    return ",".join(str(g) for g in gpus)


def _gpus_of(text: object) -> tuple[int, ...]:
    return tuple(int(g) for g in str(text).split(",") if g != "")


def _work_row(raw: tuple[object, ...]) -> WorkMinuteRow:
    s, source, source_kind, model, kind, units, covered, gpus = raw
    return WorkMinuteRow(int(str(s)), str(source), str(source_kind), str(model), str(kind),
                         float(str(units)), float(str(covered)), _gpus_of(gpus))


def merge_gpu_rows(conn: sqlite3.Connection, rows: Iterable[GpuMinuteRow]) -> int:
    """Add ``rows`` to what each (minute, GPU) holds (gridtao/history/rows.py); returns how
    many were written."""
    n = 0
    for row in rows:
        old = conn.execute(f"SELECT {_GPU} FROM gpu_minutes WHERE start_s = ? AND gpu = ?",
                           (row.start_s, row.gpu)).fetchone()
        merged = row if old is None else merge_gpu(_gpu_row(old), row)
        conn.execute(f"INSERT OR REPLACE INTO gpu_minutes ({_GPU}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (merged.start_s, merged.gpu, merged.index, merged.energy_j,
                      merged.covered_s, merged.power_s, merged.method))
        n += 1
    return n


def merge_work_rows(conn: sqlite3.Connection, rows: Iterable[WorkMinuteRow]) -> int:
    """Add ``rows`` to what each (minute, source, model, kind) holds; returns how many."""
    n = 0
    for row in rows:
        old = conn.execute(
            f"SELECT {_WORK} FROM work_minutes WHERE start_s = ? AND source = ? AND model = ? "
            "AND kind = ?", (row.start_s, row.source, row.model, row.kind)).fetchone()
        merged = row if old is None else merge_work(_work_row(old), row)
        conn.execute(
            f"INSERT OR REPLACE INTO work_minutes ({_WORK}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (merged.start_s, merged.source, merged.source_kind, merged.model, merged.kind,
             merged.units, merged.covered_s, _gpus_text(merged.gpus)))
        n += 1
    return n


def put_checkpoints(conn: sqlite3.Connection, checkpoints: Iterable[Checkpoint]) -> None:
    """Store each counter's reading; forget a series whose reading has no value."""
    for c in checkpoints:
        if c.value is None:
            conn.execute("DELETE FROM checkpoints WHERE series = ?", (c.series,))
        else:
            conn.execute("INSERT OR REPLACE INTO checkpoints (series, wall_s, value) "
                         "VALUES (?, ?, ?)", (c.series, c.wall_s, c.value))


def read_checkpoints(conn: sqlite3.Connection) -> list[Checkpoint]:
    """Every stored checkpoint, by series."""
    return [Checkpoint(str(s), float(w), float(v)) for s, w, v in conn.execute(
        "SELECT series, wall_s, value FROM checkpoints ORDER BY series").fetchall()]


def gpu_rows(conn: sqlite3.Connection, since_s: int, until_s: int) -> list[GpuMinuteRow]:
    """GPU minutes with ``since_s <= start_s < until_s``, by minute then GPU index.
    ``ValueError`` for a stored row that breaks the row's invariants."""
    return _rows(conn, f"SELECT {_GPU} FROM gpu_minutes WHERE start_s >= ? AND start_s < ? "
                 "ORDER BY start_s, gpu_index, gpu", (since_s, until_s), _gpu_row, "GPU minute")


def work_rows(conn: sqlite3.Connection, since_s: int, until_s: int) -> list[WorkMinuteRow]:
    """Work minutes with ``since_s <= start_s < until_s``, by minute, source, model, kind.
    ``ValueError`` for a stored row that breaks the row's invariants."""
    return _rows(conn, f"SELECT {_WORK} FROM work_minutes WHERE start_s >= ? AND start_s < ? "
                 "ORDER BY start_s, source, model, kind", (since_s, until_s), _work_row,
                 "work minute")


def _rows(conn: sqlite3.Connection, sql: str, params: tuple[int, int],
          build: Callable[[tuple[object, ...]], _Row], what: str) -> list[_Row]:
    raw = conn.execute(sql, params).fetchall()
    try:
        return [build(tuple(r)) for r in raw]
    except (TypeError, ValueError) as e:
        raise ValueError(f"a stored {what} is invalid: {e}") from None


def prune(conn: sqlite3.Connection, cutoff_s: int) -> int:
    """Delete the ledger's minutes that started before ``cutoff_s`` and checkpoints read
    before it; returns how many minutes."""
    n = 0
    for table in ("gpu_minutes", "work_minutes"):
        n += int(conn.execute(f"DELETE FROM {table} WHERE start_s < ?", (cutoff_s,)).rowcount)
    conn.execute("DELETE FROM checkpoints WHERE wall_s < ?", (cutoff_s,))
    return n
