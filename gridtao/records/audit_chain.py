"""The audit trail's record format and hash chain: how one record becomes one line.

One line per record, each the canonical JSON (sorted keys, compact, ASCII) of::

    {"seq": int, "t": Unix s, "kind": str, "fields": {...}, "prev": hex, "hash": hex}

``hash`` is SHA-256 over the canonical bytes of the record without ``hash``; ``prev`` is the
previous record's ``hash`` (:data:`GENESIS`, 64 zeros, before the first record ever written).
``seq`` counts up by one across files. Editing, removing, inserting or reordering any record
therefore breaks either a hash, a ``prev`` link or the ``seq`` sequence, which
:func:`gridtao.records.audit_verify.verify_files` reports by file and line.

Every file starts with a :data:`FILE_START` record: a new chain (``prev`` = zeros), or the
rotated continuation of the previous file (its ``prev`` is that file's last hash,
``fields.prev_file`` its name).

Written by :class:`gridtao.records.audit.AuditTrail`, checked by
:mod:`gridtao.records.audit_verify`. Pure functions and constants, no I/O and no state: any
thread may call them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FILE_START",
    "GENESIS",
    "PAYLOAD_TEXT_MAX",
    "RECORD_KEYS",
    "canonical",
    "encode_record",
    "json_safe",
    "record_hash",
]

GENESIS = "0" * 64
RECORD_KEYS = frozenset({"seq", "t", "kind", "fields", "prev", "hash"})
FILE_START = "file_start"
PAYLOAD_TEXT_MAX = 1024  # characters of a message payload kept as text (the hash covers it all)


def canonical(obj: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, no NaN/Infinity, ASCII (every other
    character escaped, so text from the wire, lone surrogates included, always encodes)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 hex over the canonical bytes of ``record`` without its ``hash`` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def json_safe(value: object) -> Any:
    """``value`` made JSON-safe: tuples -> lists, non-finite floats -> None, bytes -> a digest
    plus (bounded) text, unknown objects -> str."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        text = raw.decode("utf-8", errors="replace")
        return {
            "sha256": hashlib.sha256(raw).hexdigest(),
            "bytes": len(raw),
            "text": text[:PAYLOAD_TEXT_MAX],
            "truncated": len(text) > PAYLOAD_TEXT_MAX,
        }
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return str(value)


def encode_record(seq: int, t: float, kind: str, fields: Any, prev: str) -> tuple[bytes, str]:
    """Record ``seq``'s line (canonical, with its newline) and hash. ``fields`` is JSON-safe
    (:func:`json_safe`); ``prev`` is the previous record's hash; a non-finite ``t`` is written
    as 0.0."""
    rec: dict[str, Any] = {
        "seq": seq, "t": t if math.isfinite(t) else 0.0, "kind": kind,
        "fields": fields, "prev": prev,
    }
    digest = record_hash(rec)
    rec["hash"] = digest
    return canonical(rec) + b"\n", digest
