"""Verifying the audit trail (see :mod:`gridtao.records.audit_chain` for the record format).

Reads the files only; never writes. Used by ``gridtao audit verify`` and by the tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridtao.readfile import check_regular
from gridtao.records.audit_chain import FILE_START, GENESIS, RECORD_KEYS, canonical, record_hash


@dataclass(frozen=True)
class VerifyResult:
    """``ok`` with ``records`` checked, or the first bad ``file``:``line`` and ``reason``.
    ``starts_after`` names the file the chain continues from when the first file given is a
    rotation continuation (records before it were not checked)."""

    ok: bool
    records: int
    files: int
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    file: str | None = None
    line: int | None = None
    reason: str | None = None
    starts_after: str | None = None


def chain_order_key(path: Path) -> tuple[int, int]:
    """The order files of one trail are verified in: by the ``seq`` of their first record,
    files whose first line cannot be read last."""
    try:
        return (0, _first_seq_strict(path))
    except (OSError, ValueError, KeyError, TypeError, ArithmeticError, RecursionError):
        return (1, 0)


def _first_seq_strict(path: Path) -> int:
    check_regular(path)
    with open(path, "rb") as f:
        return int(json.loads(f.readline())["seq"])


def verify_files(paths: Sequence[str | os.PathLike[str]]) -> VerifyResult:
    """Check the chain across ``paths`` (any order: files are put in chain order by the seq of
    their first record). Raises ``OSError`` for a file that cannot be read."""
    files = sorted((Path(p) for p in paths), key=chain_order_key)
    prev_hash: str | None = None
    prev_seq: int | None = None
    first_seq: int | None = None
    starts_after: str | None = None
    count = 0

    def bad(path: Path, line_no: int, reason: str) -> VerifyResult:
        return VerifyResult(False, count, len(files), first_seq, prev_seq, prev_hash,
                            str(path), line_no, reason, starts_after)

    for path in files:
        check_regular(path)
        with open(path, "rb") as f:
            pieces = f.read().split(b"\n")
        # Split on LF only: every line but a torn last one keeps its newline.
        lines = [p + b"\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
        line_no = 0
        for line_no, raw in enumerate(lines, start=1):
            if not raw.endswith(b"\n"):
                return bad(path, line_no, "incomplete last line (torn write)")
            try:
                rec = json.loads(raw)
            except ValueError as e:
                return bad(path, line_no, f"not JSON: {e}")
            except RecursionError:
                return bad(path, line_no, "not JSON: nested too deeply")
            if not isinstance(rec, dict) or set(rec) != RECORD_KEYS:
                return bad(path, line_no, "not an audit record (keys differ)")
            try:
                if canonical(rec) + b"\n" != raw:
                    return bad(path, line_no, "not in canonical form (edited)")
            except ValueError as e:
                return bad(path, line_no, f"not canonical JSON: {e}")
            seq = rec["seq"]
            if type(seq) is not int:
                return bad(path, line_no, "seq is not an integer")
            if record_hash(rec) != rec["hash"]:
                return bad(path, line_no, f"seq {seq}: hash mismatch (record edited)")
            if line_no == 1 and rec["kind"] != FILE_START:
                return bad(path, line_no, "file does not start with a file_start record "
                                          "(records removed from its start?)")
            if prev_hash is None:
                first_seq = seq
                fields = rec["fields"]
                if seq == 0 or rec["prev"] == GENESIS:
                    if seq != 0 or rec["prev"] != GENESIS:
                        return bad(path, line_no, "chain start must have seq 0 and prev zeros")
                elif isinstance(fields, dict) and isinstance(fields.get("prev_file"), str):
                    starts_after = fields["prev_file"]
                else:
                    return bad(path, line_no, f"chain starts at seq {seq} with no predecessor")
            else:
                assert prev_seq is not None
                if seq != prev_seq + 1:
                    what = "removed" if seq > prev_seq + 1 else "inserted or reordered"
                    return bad(path, line_no, f"seq {seq} follows {prev_seq}: records {what}")
                if rec["prev"] != prev_hash:
                    return bad(path, line_no,
                               f"seq {seq}: prev does not match the hash of seq {prev_seq}")
            prev_hash = rec["hash"]
            prev_seq = seq
            count += 1
        if line_no == 0:
            return bad(path, 1, "empty file")
    return VerifyResult(True, count, len(files), first_seq, prev_seq, prev_hash,
                        starts_after=starts_after)


def read_records(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Every record of ``paths`` in chain order (no verification; for tests and tools)."""
    out: list[dict[str, Any]] = []
    for path in sorted((Path(p) for p in paths), key=chain_order_key):
        check_regular(path)
        with open(path, "rb") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out
