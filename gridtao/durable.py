"""Durable file writes shared by the journal, the audit trail and the replay store."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path, *, best_effort: bool = True) -> None:
    """Make a new or renamed file's directory entry durable (a file is durable only once its
    entry is). ``best_effort``: ignore file systems that cannot fsync a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not best_effort:
            raise


def write_atomically(path: Path, data: bytes, *, best_effort_dir: bool = True) -> None:
    """Replace ``path`` (mode 0600) with ``data`` so that a crash leaves the old or the new file
    whole: write a temporary file beside it, fsync it, rename it over, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:  # a write near a full disk may come up short without an error
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a leftover temporary file
        os.replace(tmp, path)
    except BaseException:
        # The old file stays whole; no half-written temporary file is left beside it.
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent, best_effort=best_effort_dir)

