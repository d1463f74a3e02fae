"""The node's own minute history on disk: one SQLite file, one row per minute, and beside it
the energy and work ledger: each GPU's energy and each work source's work per minute.

Units: times are Unix seconds (UTC), powers watts, energy joules. A row is keyed by the start of
its minute (``start_s``, a multiple of 60). :meth:`HistoryStore.write` replaces a stored minute
(``INSERT OR REPLACE``), so re-importing or re-generating a period is idempotent;
:meth:`HistoryStore.commit`, the running agent's write, merges into it instead: a minute an
agent stopped in and another started in holds both parts (:func:`merge_minute`,
gridtao/history/rows.py), never one replacing the other.

Schema 2 (``user_version``) added the tables ``gpu_minutes``, ``work_minutes`` and
``checkpoints`` (gridtao/history/ledgerdb.py); a schema-1 file gains them, empty, when opened,
and its minutes stay as they were.

The file is in WAL mode, so one process (the agent's recorder) can write while others (``gridtao
history show``, the planner) read. ``synchronous=NORMAL``: a power cut can lose the last few
transactions but never corrupts the file, which is the right trade for a history that is
rebuilt a minute at a time.

Threads: a :class:`HistoryStore` holds one connection behind a lock; any thread may call any
method, one call at a time. Every ``sqlite3`` and ``OSError`` is translated at this boundary into
:class:`HistoryError`, whose message names the file and the problem (not a database, corrupt,
read-only, disk full, locked by another process).
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from gridtao.errors import GridtaoError
from gridtao.history import ledgerdb
from gridtao.history.rows import (
    Batch,
    Checkpoint,
    GpuMinuteRow,
    MinuteRow,
    WorkMinuteRow,
    merge_minute,
)

__all__ = ["Batch", "HistoryError", "HistorySeries", "HistoryStore", "MinuteRow", "WrittenSpan",
           "merge_minute"]

#: The schema this code writes; a file with a higher ``user_version`` came from a newer gridtao.
SCHEMA_VERSION = 2
_DAY_S = 86_400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS minutes (
    start_s   INTEGER PRIMARY KEY,
    it_mean_w REAL NOT NULL,
    it_p10_w  REAL NOT NULL,
    energy_j  REAL NOT NULL,
    limit_w   REAL,
    event_s   REAL NOT NULL
) WITHOUT ROWID
"""
_COLUMNS = "start_s, it_mean_w, it_p10_w, energy_j, limit_w, event_s"
#: Spans of minutes written by something other than an agent measuring them (an import, a
#: generator), so a report can tell them from measured ones. Added beside schema 2's tables
#: (created when a file is opened; older gridtao versions ignore it).
_WRITTEN = """
CREATE TABLE IF NOT EXISTS written (
    from_s     INTEGER NOT NULL,
    to_s       INTEGER NOT NULL,
    origin     TEXT NOT NULL,
    written_at REAL NOT NULL
)
"""


class WrittenSpan(NamedTuple):
    """Minutes ``[from_s, to_s)`` (Unix s) were written by ``origin`` at ``written_at``."""

    from_s: int
    to_s: int
    origin: str
    written_at: float


class HistoryError(GridtaoError):
    """The history cannot be read or written, or an input file is bad. The message names the
    file (and the line, for an input file) and the problem; ``path`` and ``line`` carry them."""

    def __init__(self, message: str, *, path: str | Path | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.line = line


class HistorySeries(NamedTuple):
    """Columns of a stretch of history for the forecaster, oldest first, equal lengths:
    ``start_s`` (int64 Unix seconds), ``it_mean_w`` and ``it_p10_w`` (float64 watts). Missing
    minutes are absent, not NaN: check ``np.diff(start_s)`` for gaps."""

    start_s: npt.NDArray[np.int64]
    it_mean_w: npt.NDArray[np.float64]
    it_p10_w: npt.NDArray[np.float64]


def _minute_row(raw: Sequence[Any]) -> MinuteRow:
    s, m, p, e, lim, ev = raw
    return MinuteRow(int(s), float(m), float(p), float(e), None if lim is None else float(lim),
                     float(ev))


def _problem(e: sqlite3.Error) -> str:
    """What went wrong, in an operator's words, from SQLite's (primary) error code."""
    code = getattr(e, "sqlite_errorcode", None)  # Python >= 3.11
    primary = None if code is None else code & 0xFF
    text = str(e)
    if primary == 26 or "not a database" in text:  # SQLITE_NOTADB
        return "not a SQLite database (another kind of file, or its header is damaged)"
    if primary == 11 or "malformed" in text:  # SQLITE_CORRUPT
        return f"the database file is corrupt ({text}); move it aside to start a new history"
    if primary == 8 or "readonly" in text:  # SQLITE_READONLY
        return "read-only: the file or its folder cannot be written"
    if primary == 13 or "disk is full" in text:  # SQLITE_FULL
        return "disk full"
    if primary in (5, 6) or "locked" in text:  # SQLITE_BUSY, SQLITE_LOCKED
        return "locked by another process for too long"
    if primary == 14 or "unable to open" in text:  # SQLITE_CANTOPEN
        return "cannot open the file (missing folder or no permission)"
    if primary == 10:  # SQLITE_IOERR
        return f"I/O error ({text})"
    return text


class HistoryStore:
    """The minute table of one SQLite file. Open with :meth:`open`; a context manager that
    closes on exit. Thread-safe (one lock around the one connection)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Use :meth:`open`; this only wraps a connection that is already set up."""
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def _opened(cls, p: Path, connect: Callable[[], sqlite3.Connection],
                prepare: Callable[[sqlite3.Connection], None]) -> HistoryStore:
        """The store on ``connect()`` once ``prepare`` passed; the connection closed and a
        :class:`HistoryError` naming ``p`` raised if either fails."""
        conn: sqlite3.Connection | None = None
        try:
            conn = connect()
            prepare(conn)
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise HistoryError(f"{p}: {_problem(e)}", path=p) from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return cls(conn, p)

    @staticmethod
    def _check_version(conn: sqlite3.Connection, p: Path) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{p}: written by a newer gridtao (schema {version}, this "
                               f"one reads {SCHEMA_VERSION})", path=p)

    @classmethod
    def open_read_only(cls, path: str | Path) -> HistoryStore:
        """Open an existing history to read only (a copy from another node): nothing is
        created, switched or written, so a copy on read-only media, or one kept as evidence,
        is left byte for byte. Raises :class:`HistoryError` if it is not one this gridtao
        reads."""
        p = Path(path)

        def prepare(conn: sqlite3.Connection) -> None:
            cls._check_version(conn, p)
            found = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                 "AND name = 'minutes'").fetchone()[0]
            if not found:
                raise HistoryError(f"{p}: not a gridtao history (no minutes table)", path=p)

        return cls._opened(p, lambda: sqlite3.connect(
            f"{p.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
            isolation_level=None), prepare)

    @classmethod
    def open(cls, path: str | Path, *, busy_timeout_s: float = 5.0) -> HistoryStore:
        """Open (creating the file and its parent folders if needed) the history at ``path``,
        switch it to WAL mode, create the table and check the file's integrity. Waits up to
        ``busy_timeout_s`` for another process's lock. Raises :class:`HistoryError`."""
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HistoryError(f"{p}: cannot create its folder: {e.strerror or e}",
                               path=p) from None

        def prepare(conn: sqlite3.Connection) -> None:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise HistoryError(f"{p}: cannot switch to WAL mode (got {mode!r})", path=p)
            conn.execute("PRAGMA synchronous=NORMAL")
            cls._check_version(conn, p)
            # Early and clear: a damaged page otherwise surfaces as an odd error much later.
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise HistoryError(f"{p}: the database file is corrupt ({check}); move it "
                                   "aside to start a new history", path=p)
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_SCHEMA)
                for table in ledgerdb.SCHEMA_2:  # schema 1 -> 2: tables added, none changed
                    conn.execute(table)
                conn.execute(_WRITTEN)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        # check_same_thread=False: the lock in this class serialises the threads instead.
        return cls._opened(p, lambda: sqlite3.connect(
            p, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None), prepare)

    def _fail(self, e: sqlite3.Error | ValueError, doing: str) -> HistoryError:
        problem = _problem(e) if isinstance(e, sqlite3.Error) else str(e)
        return HistoryError(f"{self.path}: {doing}: {problem}", path=self.path)

    def _check_open(self) -> None:
        if self._closed:
            raise HistoryError(f"{self.path}: the history store is closed", path=self.path)

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode for this file (``"wal"`` once opened)."""
        with self._lock:
            self._check_open()
            try:
                return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            except sqlite3.Error as e:
                raise self._fail(e, "reading the journal mode") from None

    def write(self, rows: Iterable[MinuteRow], *, origin: str | None = None) -> int:
        """Store ``rows`` in one transaction (all or none), replacing any row of the same
        minute. ``origin``: what made them when no agent measured them (``imported from F``,
        ``generated ...``), kept with their span (:meth:`written`); None: the caller vouches
        they were measured. Returns how many were written. Raises :class:`HistoryError`."""
        data = [(r.start_s, r.it_mean_w, r.it_p10_w, r.energy_j, r.limit_w, r.event_s)
                for r in rows]
        if not data:
            return 0
        with self._lock:
            self._check_open()
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.executemany(
                        f"INSERT OR REPLACE INTO minutes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                        data)
                    if origin is not None:
                        starts = [d[0] for d in data]
                        self._conn.execute(
                            "INSERT INTO written (from_s, to_s, origin, written_at) "
                            "VALUES (?, ?, ?, ?)",
                            (min(starts), max(starts) + 60, origin, time.time()))
            except sqlite3.Error as e:
                raise self._fail(e, "writing") from None
        return len(data)

    def commit(self, batch: Batch) -> int:
        """Merge ``batch`` into the store in one transaction (all or none; see
        :func:`merge_minute` and gridtao/history/rows.py) and store its checkpoints. Returns
        how many rows were written. Raises :class:`HistoryError`."""
        with self._lock:
            self._check_open()
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    for row in batch.minutes:
                        old = self._conn.execute(
                            f"SELECT {_COLUMNS} FROM minutes WHERE start_s = ?",
                            (row.start_s,)).fetchone()
                        if old is not None:
                            row = merge_minute(_minute_row(old), row)
                        self._conn.execute(
                            f"INSERT OR REPLACE INTO minutes ({_COLUMNS}) VALUES "
                            "(?, ?, ?, ?, ?, ?)", (row.start_s, row.it_mean_w, row.it_p10_w,
                                                   row.energy_j, row.limit_w, row.event_s))
                    ledgerdb.merge_gpu_rows(self._conn, batch.gpus)
                    ledgerdb.merge_work_rows(self._conn, batch.work)
                    ledgerdb.put_checkpoints(self._conn, batch.checkpoints)
            except sqlite3.Error as e:
                raise self._fail(e, "writing") from None
            except (TypeError, ValueError) as e:
                raise self._fail(ValueError(f"a stored row is invalid: {e}"), "writing"
                                 ) from None
        return len(batch)

    def _ledger(self, read: Any, *args: int) -> Any:
        with self._lock:
            self._check_open()
            try:
                return read(self._conn, *args)
            except sqlite3.Error as e:
                raise self._fail(e, "reading") from None
            except ValueError as e:
                raise self._fail(e, "reading") from None

    def gpu_rows(self, since_s: int, until_s: int) -> list[GpuMinuteRow]:
        """Each GPU's stored minutes with ``since_s <= start_s < until_s`` (by minute, then
        GPU index). Raises :class:`HistoryError`."""
        rows: list[GpuMinuteRow] = self._ledger(ledgerdb.gpu_rows, int(since_s), int(until_s))
        return rows

    def work_rows(self, since_s: int, until_s: int) -> list[WorkMinuteRow]:
        """The work sources' stored minutes with ``since_s <= start_s < until_s`` (by minute,
        source, model, kind). Raises :class:`HistoryError`."""
        rows: list[WorkMinuteRow] = self._ledger(ledgerdb.work_rows, int(since_s),
                                                 int(until_s))
        return rows

    def checkpoints(self) -> list[Checkpoint]:
        """The counters' readings the ledger ends at (a restarted agent carries on from
        them). Raises :class:`HistoryError`."""
        out: list[Checkpoint] = self._ledger(ledgerdb.read_checkpoints)
        return out

    def _select(self, sql: str, args: tuple[int, ...]) -> list[Any]:
        with self._lock:
            self._check_open()
            try:
                return list(self._conn.execute(sql, args).fetchall())
            except sqlite3.Error as e:
                raise self._fail(e, "reading") from None

    def rows(self, since_s: int, until_s: int) -> list[MinuteRow]:
        """The stored rows with ``since_s <= start_s < until_s`` (Unix seconds), oldest first.
        Raises :class:`HistoryError` (also for a row whose values break :class:`MinuteRow`'s
        invariants, i.e. a file edited by something else)."""
        raw = self._select(f"SELECT {_COLUMNS} FROM minutes WHERE start_s >= ? AND start_s < ? "
                           "ORDER BY start_s", (int(since_s), int(until_s)))
        try:
            return [_minute_row(r) for r in raw]
        except (TypeError, ValueError) as e:
            raise self._fail(ValueError(f"a stored row is invalid: {e}"), "reading") from None

    def series(self, since_s: int, until_s: int) -> HistorySeries:
        """:meth:`rows`' start times, means and 10th percentiles as numpy arrays."""
        raw = self._select("SELECT start_s, it_mean_w, it_p10_w FROM minutes WHERE start_s >= ? "
                           "AND start_s < ? ORDER BY start_s", (int(since_s), int(until_s)))
        if not raw:
            return HistorySeries(np.zeros(0, np.int64), np.zeros(0, np.float64),
                                 np.zeros(0, np.float64))
        try:
            start = np.fromiter((r[0] for r in raw), np.int64, len(raw))
            mean = np.fromiter((r[1] for r in raw), np.float64, len(raw))
            p10 = np.fromiter((r[2] for r in raw), np.float64, len(raw))
        except (TypeError, ValueError) as e:
            raise self._fail(ValueError(f"a stored row is invalid: {e}"), "reading") from None
        return HistorySeries(start, mean, p10)

    def written(self, since_s: int, until_s: int) -> list[WrittenSpan]:
        """The spans of minutes written with an ``origin`` (:meth:`write`) that overlap
        ``[since_s, until_s)``, oldest first."""
        raw = self._select("SELECT from_s, to_s, origin, written_at FROM written "
                           "WHERE to_s > ? AND from_s < ? ORDER BY from_s, written_at",
                           (since_s, until_s))
        return [WrittenSpan(int(a), int(b), str(o), float(w)) for a, b, o, w in raw]

    def latest_start_s(self) -> int | None:
        """The newest stored minute's ``start_s``, or ``None`` when the history is empty."""
        raw = self._select("SELECT MAX(start_s) FROM minutes", ())
        value = raw[0][0]
        return None if value is None else int(value)

    def count(self) -> int:
        """How many minutes are stored."""
        return int(self._select("SELECT COUNT(*) FROM minutes", ())[0][0])

    def prune(self, now_s: float, retention_days: float) -> int:
        """Delete the rows (node, GPU and work minutes; checkpoints read) that started more
        than ``retention_days`` before ``now_s`` (Unix seconds); returns how many minutes.
        Raises ``ValueError`` for a retention <= 0, :class:`HistoryError` for the file."""
        if not (math.isfinite(retention_days) and retention_days > 0):
            raise ValueError(f"retention_days must be > 0, got {retention_days}")
        cutoff = math.floor(now_s - retention_days * _DAY_S)
        with self._lock:
            self._check_open()
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    cur = self._conn.execute("DELETE FROM minutes WHERE start_s < ?", (cutoff,))
                    self._conn.execute("DELETE FROM written WHERE to_s <= ?", (cutoff,))
                    return int(cur.rowcount) + ledgerdb.prune(self._conn, cutoff)
            except sqlite3.Error as e:
                raise self._fail(e, "pruning") from None

    def close(self) -> None:
        """Close the file (idempotent). Later calls raise :class:`HistoryError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.close()
            except sqlite3.Error as e:
                raise self._fail(e, "closing") from None

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
