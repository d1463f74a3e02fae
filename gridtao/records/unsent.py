"""Acks the broker never took before the agent stopped, kept for the next start.

A stop while the broker is unreachable waits a moment for the acks still queued (among them
the ack that tells each held event's sender it ended), then the process ends: without this
file their senders would never hear that those events ended. :func:`keep` writes them to
``unsent-acks-<node>.jsonl`` beside the journal, one JSON object a line (``topic``,
``payload`` as text, ``qos``); the next start hands them to its ack connection once and
removes the file (:func:`take`). An ack is at least once on the wire contract, so an ack the
broker did take just before the stop, sent again, is a duplicate its receiver already handles.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gridtao.durable import write_atomically
from gridtao.readfile import read_regular

__all__ = ["UnsentAck", "keep", "take", "unsent_path"]

log = logging.getLogger("gridtao.records.unsent")

MAX_BYTES = 16 * 1024 * 1024  # far above any stop's acks: a larger file is not ours


@dataclass(frozen=True)
class UnsentAck:
    topic: str
    payload: bytes
    qos: int


def unsent_path(journal_path: str, node_id: str) -> Path:
    """Where a node's unsent acks are kept: beside its journal (the state folder)."""
    return Path(journal_path).parent / f"unsent-acks-{node_id}.jsonl"


def keep(path: Path, acks: Sequence[UnsentAck]) -> None:
    """Write ``acks`` to ``path`` (replacing what is there), durably; an error is logged (the
    acks are then lost, as they were before this file existed)."""
    lines = [json.dumps({"topic": a.topic, "payload": a.payload.decode("utf-8", "replace"),
                         "qos": a.qos}, separators=(",", ":")) for a in acks]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, ("\n".join(lines) + "\n").encode())
    except OSError as e:
        log.error("%d unsent ack(s) could not be kept in %s (%s): they are lost", len(acks),
                  path, e.strerror or e)
        return
    log.warning("%d unsent ack(s) kept in %s for the next start", len(acks), path)


def take(path: Path) -> list[UnsentAck]:
    """The acks a previous stop kept at ``path``, and the file removed; lines that are not
    such an ack are skipped (said in the log). Empty when there is no file."""
    try:
        data = read_regular(path, max_bytes=MAX_BYTES)
    except FileNotFoundError:
        return []
    except OSError as e:
        log.error("unsent acks %s: cannot read (%s): left as it is", path, e.strerror or e)
        return []
    out: list[UnsentAck] = []
    skipped = 0
    for line in data.splitlines():
        try:
            body = json.loads(line)
            ack = UnsentAck(str(body["topic"]), str(body["payload"]).encode(), int(body["qos"]))
        except (ValueError, KeyError, TypeError, RecursionError):
            skipped += 1
            continue
        if ack.qos in (1, 2) and ack.topic:
            out.append(ack)
        else:
            skipped += 1
    if skipped:
        log.warning("unsent acks %s: %d line(s) that are not an ack skipped", path, skipped)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return out
