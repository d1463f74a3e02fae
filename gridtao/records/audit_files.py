"""The audit trail's files on disk: how rotated files are named and found, and reading back
where an existing file's chain ends so that a restart continues it.

The live file is the configured path; a rotated file is renamed ``<name>.<first seq, 12
digits>`` and never renamed again (a chain restarted after an unreadable file may add
``-<ns>`` rather than overwrite one). A file's first line is its ``file_start`` record; its
last complete line is the newest record, and bytes after it are a torn write.

Reads only, never writes: called by the writer (:class:`gridtao.records.audit.AuditTrail`) when
it opens the trail and on its own thread when it rotates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gridtao.records.audit_chain import RECORD_KEYS

__all__ = ["live_file", "read_first_seq", "read_tail", "rotated_files", "rotated_name"]

_ROTATED = re.compile(r"\.(\d{12})$")
_TAIL_READ = 1 << 16


def rotated_name(path: Path, first_seq: int) -> Path:
    return path.with_name(f"{path.name}.{first_seq:012d}")


def live_file(path: Path) -> Path:
    """The live file of the trail ``path`` belongs to: itself, or for a rotated file
    (``<name>.<12 digits>``) the ``<name>`` it was rotated from."""
    return path.with_name(path.name[:-13]) if _ROTATED.search(path.name) else path


def rotated_files(path: Path) -> list[Path]:
    """The rotated files of the live file ``path`` (named ``<name>.<12 digits>``), oldest
    (lowest first seq) first."""
    return sorted(
        p for p in path.parent.glob(f"{path.name}.*")
        if _ROTATED.search(p.name) and p.name[: -13] == path.name
    )


def read_tail(path: Path) -> tuple[dict[str, Any], int, int] | None:
    """(last complete record, byte size up to and including it, torn bytes after it), or None
    if the last complete line is not a record."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = max(0, size - _TAIL_READ)
        while True:
            f.seek(start)
            chunk = f.read(size - start)
            end = chunk.rfind(b"\n")
            if end < 0:
                if start == 0:
                    return None
                start = max(0, start - _TAIL_READ)
                continue
            begin = chunk.rfind(b"\n", 0, end) + 1
            if begin == 0 and start > 0:
                start = max(0, start - _TAIL_READ)
                continue
            break
    try:
        rec = json.loads(chunk[begin:end])
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    if not isinstance(rec, dict) or not rec.keys() >= RECORD_KEYS or type(rec["seq"]) is not int \
            or not isinstance(rec["hash"], str):
        return None
    good = start + end + 1
    return rec, good, size - good


def read_first_seq(path: Path) -> int:
    with open(path, "rb") as f:
        first = f.readline()
    try:
        return int(json.loads(first)["seq"])
    except (ValueError, KeyError, TypeError, ArithmeticError, RecursionError):
        return 0
