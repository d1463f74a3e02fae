"""Wire contract v1: build the outgoing payloads (ack, status, tracker state, last will).

Pure functions, no I/O; the node's only outputs to external clients are built here, so what they
can rely on is kept in one place:

- Compact UTF-8 JSON objects (no whitespace between tokens).
- Times are Unix seconds (float) or ``None`` (-> null). Power is in watts (``_w`` keys); in the
  status payload it is rounded to 3 decimals (milliwatts, NVML's own resolution).
- Only finite numbers: a NaN or infinity anywhere is a bug upstream and raises instead of being
  sent (JSON has no such values and v1 clients would choke on ``NaN``).
- The v1 keys of each payload (see README.md, "Wire contract v1") are always present and never
  replaced by extension fields; extensions only add keys, which v1 clients ignore.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = [
    "GPU_STATUS_KEYS",
    "ack_payload",
    "offline_payload",
    "status_payload",
    "tracker_payload",
]

# The v1 keys of one entry of the status payload's "gpus" array, in wire order.
GPU_STATUS_KEYS: Final = ("index", "power_w", "limit_w", "default_w", "min_w", "max_w")


# allow_nan=False: a NaN timestamp is a bug upstream and must not reach external clients. One
# encoder, built once: json.dumps with any option builds a new one per call (every ack pays it).
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _dumps(obj: object) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


def ack_payload(
    id: str | None,
    accepted: bool,
    reason: str | None,
    received_at: float | None,
    commanded_at: float | None,
    reached_at: float | None,
    *,
    extra: Mapping[str, object] | None = None,
) -> bytes:
    """The ack JSON: keys id, accepted, reason, received_at, commanded_at, reached_at.

    Times are Unix seconds or ``None`` (-> null). ``id`` is ``None`` for payloads that had none.
    ``extra`` adds fields (v1 clients ignore unknown fields) but never replaces the six above.
    """
    body: dict[str, object] = dict(extra) if extra else {}
    body.update(
        id=id,
        accepted=bool(accepted),
        reason=reason,
        received_at=received_at,
        commanded_at=commanded_at,
        reached_at=reached_at,
    )
    return _dumps(body)


def status_payload(
    node: str,
    online: bool,
    t: float,
    event: str | None,
    gpus: Sequence[Mapping[str, float | str | None]],
    *,
    extra: Mapping[str, object] | None = None,
) -> bytes:
    """The retained status JSON: ``{"node", "online", "t", "event", "gpus": [...]}``.

    Each GPU entry is rebuilt with the v1 keys index, power_w, limit_w, default_w, min_w, max_w
    (watts; a missing one raises ``ValueError``) plus ``fault``, an extension of v1: the error
    kind of a GPU gridtao cannot read or write (e.g. ``"GpuLost"``), else null; its power and
    limit are then the last known. Other keys are dropped. ``extra`` adds node-level fields
    (e.g. ``capacity``; ``records``: per record writer, ``"journal"`` and ``"audit"``, ``"ok"``,
    ``"failing: <reason>"`` while its writes fail, or ``"off"``) and never replaces the v1 keys.
    """
    entries: list[dict[str, float | int | str | None]] = []
    for gpu in gpus:
        missing = [k for k in GPU_STATUS_KEYS if k not in gpu]
        if missing:
            raise ValueError(f"GPU status entry lacks {', '.join(missing)}")
        entry: dict[str, float | int | str | None] = {"index": int(_status_number(gpu["index"]))}
        for key in GPU_STATUS_KEYS[1:]:
            entry[key] = round(_status_number(gpu[key]), 3)
        fault = gpu.get("fault")
        entry["fault"] = None if fault is None else str(fault)
        entries.append(entry)
    body: dict[str, object] = dict(extra) if extra else {}
    body.update(node=node, online=bool(online), t=t, event=event, gpus=entries)
    return _dumps(body)


def _status_number(value: float | str | None) -> float:
    if not isinstance(value, (int, float)):
        raise ValueError(f"GPU status value must be a number, got {value!r}")
    return float(value)


def tracker_payload(node: str, t: float, state: Mapping[str, object]) -> bytes:
    """The retained tier-2 state JSON: ``{"node", "t", **state}`` (see control/tier2/tracker.py for
    the keys of ``state``); ``node`` and ``t`` are never replaced."""
    body: dict[str, object] = dict(state)
    body.update(node=node, t=t)
    return _dumps(body)


def offline_payload(node: str, *, restored: bool | None = None) -> bytes:
    """The offline status: ``{"node": node, "online": false}``, the node's last will. A clean
    stop adds ``restored``: whether every limit the agent changed was put back (the last
    will cannot say: a killed agent's caps stay on its GPUs until it restarts)."""
    body: dict[str, object] = {"node": node, "online": False}
    if restored is not None:
        body["restored"] = restored
    return _dumps(body)
