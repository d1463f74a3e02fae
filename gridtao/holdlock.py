"""An exclusive lock held for the life of a process, naming its holder: the journal's (one
agent per node id) and the GPUs' claims (one agent per GPU).

``flock`` on a file of its own: the kernel drops it with the open file, however the holder
exits, so a crashed holder never blocks its successor. The holder writes a line about itself
into the file for the next one to name in its refusal. Never blocks.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import IO

__all__ = ["LockHeld", "hold_lock"]


class LockHeld(Exception):
    """Another open file holds the lock; ``holder``: the line it wrote ("" if none)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def hold_lock(path: Path, *, holder: str) -> IO[bytes]:
    """``path`` opened (created if missing) with its exclusive lock taken, ``holder`` written
    in it; the lock lasts until the returned file is closed. Raises :class:`LockHeld` when
    another holds it, ``OSError`` when the file cannot be opened."""
    f = open(path, "a+b")  # noqa: SIM115 - held for the life of the run
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        held_by = f.read(200).decode("utf-8", "replace").strip()
        f.close()
        raise LockHeld(held_by) from None
    with contextlib.suppress(OSError):  # who holds it, for the next one to name
        f.truncate(0)
        f.write(f"{holder}\n".encode())
        f.flush()
    return f
