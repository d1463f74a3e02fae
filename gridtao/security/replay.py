"""A persistent memory of signed dispatch event ids, so a captured dispatch cannot act twice,
not even across an agent restart.

File format: JSON lines ``{"id": <event id>, "t": <issued_at, Unix s>}``, append-only. An id is
kept while a message carrying it could still pass the freshness check (``issued_at`` no older
than ``window_s``); older ones are pruned, so the memory is bounded by the dispatch rate times
the window, and hard-capped at ``max_entries`` (beyond which new ids are refused: fail closed).

Durability: :meth:`ReplayStore.add` records in memory (the check for the next message is
immediate); :meth:`ReplayStore.flush` appends and ``fsync``\\ s. The intake calls ``flush`` right
after the island has commanded the GPUs and before the ack goes out, keeping disk I/O off the
trigger path: only a crash in that window of a few milliseconds forgets an id.
At start the file is loaded, a torn last line (crash mid-write) is skipped, and the live entries
are rewritten to a new file (write, fsync, rename, fsync folder); the same compaction runs when
appended lines exceed the live ones by :data:`COMPACT_SLACK`. An exclusive ``flock`` keeps a
second agent from sharing the file (on ``<path>.lock``, which is never replaced).
"""

from __future__ import annotations

import fcntl
import heapq
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

from gridtao.durable import write_atomically
from gridtao.errors import GridtaoError

log = logging.getLogger("gridtao.replay")

COMPACT_SLACK: Final = 1000  # appended lines beyond the live entries before a rewrite


class ReplayStoreError(GridtaoError, OSError):
    """The store cannot be opened (in use by another agent, not writable, ...)."""


class ReplayStore:
    """Event ids seen within the last ``window_s`` seconds of ``wall()`` time."""

    def __init__(
        self, path: str | os.PathLike[str], *, window_s: float, max_entries: int,
        wall: Callable[[], float],
    ) -> None:
        if not (window_s > 0 and max_entries > 0):
            raise ValueError("window_s and max_entries must be > 0")
        self.path = Path(path)
        self._window_s = window_s
        self._max = max_entries
        self._wall = wall
        self._ids: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (issued_at, id): oldest first, for pruning
        self._pending: list[str] = []
        self._lines = 0  # lines in the file now
        self._file: IO[str] | None = None
        self._lock_fd: int | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Create the folder (0700), lock ``<path>.lock``, load the file and compact it."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise ReplayStoreError(
                f"replay store {str(self.path)!r}: cannot open: {e.strerror or e}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise ReplayStoreError(
                f"replay store {str(self.path)!r} is in use by another running agent") from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "a+", encoding="utf-8")
            self._load()
            self._compact()
        except OSError as e:
            if self._file is not None:
                self._file.close()
                self._file = None
            os.close(lock_fd)
            raise ReplayStoreError(
                f"replay store {str(self.path)!r}: {e.strerror or e}") from None
        self._lock_fd = lock_fd

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            self._file.close()
            self._file = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None

    def __enter__(self) -> ReplayStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the checks -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str, issued_at: float) -> bool:
        """Remember ``event_id`` (in memory; :meth:`flush` makes it durable). False, and nothing
        remembered, when the store holds ``max_entries`` live ids."""
        if event_id in self._ids:
            return True
        if len(self._ids) >= self._max:
            self._prune()
            if len(self._ids) >= self._max:
                return False
        self._ids[event_id] = issued_at
        heapq.heappush(self._heap, (issued_at, event_id))
        self._pending.append(_line(event_id, issued_at))
        return True

    def flush(self) -> None:
        """Append what :meth:`add` remembered since the last flush and fsync it."""
        if not self._pending or self._file is None:
            return
        lines, self._pending = self._pending, []
        self._file.write("".join(lines))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._lines += len(lines)
        self._prune()
        if self._lines > len(self._ids) + COMPACT_SLACK:
            self._compact()

    # ---- internals ------------------------------------------------------------------------

    def _prune(self) -> None:
        cutoff = self._wall() - self._window_s
        heap = self._heap
        while heap and heap[0][0] < cutoff:
            t, event_id = heapq.heappop(heap)
            if self._ids.get(event_id) == t:
                del self._ids[event_id]

    def _load(self) -> None:
        assert self._file is not None
        self._file.seek(0)
        cutoff = self._wall() - self._window_s
        torn = 0
        for raw in self._file:
            self._lines += 1
            try:
                rec = json.loads(raw)
                event_id, t = rec["id"], float(rec["t"])
                if not isinstance(event_id, str) or not math.isfinite(t):
                    raise ValueError(raw)
            except (ValueError, KeyError, TypeError):
                torn += 1
                continue
            if t >= cutoff and event_id not in self._ids:
                self._ids[event_id] = t
                heapq.heappush(self._heap, (t, event_id))
        if torn:
            log.warning("replay store %s: skipped %d unreadable line(s)", self.path, torn)
        # Past max_entries (a smaller cap than last run): keep the newest, refuse nothing seen.
        while len(self._ids) > self._max:
            t, event_id = heapq.heappop(self._heap)
            self._ids.pop(event_id, None)

    def _compact(self) -> None:
        """Rewrite the file with the live entries only, atomically."""
        assert self._file is not None
        self._prune()
        text = "".join(_line(i, t) for i, t in self._ids.items())
        write_atomically(self.path, text.encode("utf-8"), best_effort_dir=False)
        old, self._file = self._file, open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
        old.close()
        self._lines = len(self._ids)


def _line(event_id: str, issued_at: float) -> str:
    return json.dumps({"id": event_id, "t": issued_at}, separators=(",", ":")) + "\n"


def default_path(node_id: str) -> Path:
    """``$XDG_STATE_HOME/gridtao/replay-<node>.jsonl``, else ``~/.local/state/gridtao/...``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "gridtao" / f"replay-{node_id}.jsonl"
