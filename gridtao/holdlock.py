"""An exclusive lock held for the life of a process, naming its holder: the journal's (one
agent per node id) and the GPUs' claims (one agent per GPU).

``flock`` on a file of its own: the kernel drops it with the open file, however the holder
exits, so a crashed holder never blocks its successor. The holder writes a line about itself
into the file for the next one to name in its refusal. Never blocks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from gridtao.readfile import check_regular_fd

__all__ = ["LockHeld", "hold_lock"]


class LockHeld(Exception):
    """Another open file holds the lock; ``holder``: the line it wrote ("" if none)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def hold_lock(path: Path, *, holder: str) -> IO[bytes]:
    """``path`` opened (created if missing, mode 0600; never through a symbolic link, and only
    a regular file) with its exclusive lock taken, ``holder`` written in it; the lock lasts
    until the returned file is closed. Raises :class:`LockHeld` when another holds it,
    ``OSError`` when the file cannot be opened or locked (why is in it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
                 | os.O_NONBLOCK, 0o600)
    f = os.fdopen(fd, "a+b")
    try:
        check_regular_fd(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK: another open file holds it
        f.seek(0)
        held_by = f.read(200).decode("utf-8", "replace").strip()
        f.close()
        raise LockHeld(held_by) from None
    except BaseException:
        f.close()
        raise
    with contextlib.suppress(OSError):  # who holds it, for the next one to name
        f.truncate(0)
        f.write(f"{holder}\n".encode())
        f.flush()
    return f
