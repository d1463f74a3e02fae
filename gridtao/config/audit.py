"""Configuration of what the agent keeps on disk about itself (re-exported by
:mod:`gridtao.config.agent`; ranges live next to each field in ``metadata``): the hash-chained
audit trail (``audit:``) and the crash-recovery journal (``journal:``), both written by
gridtao/records/ (docs/audit.md).

Times in seconds, sizes in bytes; a path left None is set in the agent's state directory
(gridtao/config/paths.py). The dataclasses are frozen, so a configuration is shared between
threads as it is; each key is checked on its own as it is read (gridtao/config/schema.py), and
the journal's path must differ from the trail's (gridtao/config/rules.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gridtao.config.schema import rng

__all__ = ["AuditConfig", "JournalConfig"]


@dataclass(frozen=True)
class AuditConfig:
    """The append-only, hash-chained audit trail (gridtao/records/audit.py, docs/audit.md).

    ``fsync``: ``always`` (every record on disk before the next), ``interval`` (at most
    ``fsync_interval_s`` of records lost on power loss), ``never`` (the OS decides). The file is
    rotated before it would exceed ``rotate_bytes``; ``keep_files`` rotated files are kept
    (0: all). ``queue_size`` records may wait for the writer; beyond that they are dropped and a
    ``gap`` record says how many. A relative ``path`` is taken from the configuration file's
    folder; without one, the trail lives in the agent's state directory.
    """

    enabled: bool = True
    path: str | None = None  # None: <state dir>/audit-<node>.jsonl (gridtao/config/paths.py)
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval_s: float = field(default=1.0, metadata=rng(0.01, 3600))
    rotate_bytes: int = field(default=64 * 1024 * 1024, metadata=rng(4096, 1 << 40))
    keep_files: int = field(default=0, metadata=rng(0, 1_000_000))
    queue_size: int = field(default=10_000, metadata=rng(16, 10_000_000))


@dataclass(frozen=True)
class JournalConfig:
    """Crash-recovery state journal (gridtao/records/journal.py, docs/audit.md). Times in seconds.

    The agent keeps in ``path`` (written atomically, fsynced) the limits it found at its first
    start and the events it is holding. After a crash, the next start restores a journaled event
    for what is left of its duration, but GPUs never stay capped longer than
    ``max_capped_after_crash_s`` after the crash (the journal's last heartbeat, rewritten every
    ``heartbeat_s``): past that, the limits are restored at once. A clean stop restores the limits
    the first run found and removes the journal.
    """

    enabled: bool = True
    path: str | None = None  # None: <state dir>/journal-<node>.json (gridtao/config/paths.py)
    max_capped_after_crash_s: float = field(default=300.0, metadata=rng(0, 7 * 86_400))
    heartbeat_s: float = field(default=1.0, metadata=rng(0.05, 3600))
