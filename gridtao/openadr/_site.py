"""The site as the nodes describe it: their retained status topics, summed.

Every node publishes ``{prefix}/nodes/{node}/status`` (retained, QoS 1; wire contract v1):
``online``, ``t`` (Unix s), ``gpus[]`` with ``power_w`` and ``default_w``, and ``capacity``
(``draw_w``, ``deliverable_w``, ``deliverable_it_w``, ``settle_at``). :class:`SiteView` keeps the
last one per node and sums the fresh, online ones into a
:class:`~gridtao.openadr._mapping.SiteSnapshot`. A payload that is not a status (malformed, a
missing field, a non-finite number) is ignored and counted; it never changes what is known.

Not thread-safe: fed and read on the bridge's event loop.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gridtao.openadr._mapping import SiteSnapshot

__all__ = ["NodeStatus", "SiteView", "parse_status"]

MAX_STATUS_BYTES: Final = 1_048_576
MAX_NODES: Final = 10_000


@dataclass(frozen=True)
class NodeStatus:
    """One node's last status. Power in W; ``t`` Unix s (the node's clock)."""

    node: str
    online: bool
    t: float
    it_power_w: float
    max_it_w: float
    draw_w: float
    settlement_draw_w: float
    deliverable_w: float


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_status(payload: bytes) -> NodeStatus | None:
    """A node's status, or None when ``payload`` is not one (an offline will is one: online
    false). Power fields absent from an older node default from the GPUs' power."""
    if len(payload) > MAX_STATUS_BYTES:
        return None
    try:
        data: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, Mapping):
        return None
    node, online = data.get("node"), data.get("online")
    if not isinstance(node, str) or not node or not isinstance(online, bool):
        return None
    if not online:
        return NodeStatus(node, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    t = _finite(data.get("t"))
    gpus = data.get("gpus")
    if t is None or not isinstance(gpus, list):
        return None
    power = maximum = 0.0
    for gpu in gpus:
        if not isinstance(gpu, Mapping):
            return None
        watts, default = _finite(gpu.get("power_w")), _finite(gpu.get("default_w"))
        if watts is None or default is None or watts < 0 or default < 0:
            return None
        power += watts
        maximum += default
    draw, settlement, deliverable = power, power, 0.0
    capacity = data.get("capacity")
    if isinstance(capacity, Mapping):
        cap_draw = _finite(capacity.get("draw_w"))
        cap_deliverable = _finite(capacity.get("deliverable_w"))
        cap_it = _finite(capacity.get("deliverable_it_w"))
        if cap_draw is None or cap_deliverable is None or cap_draw < 0 or cap_deliverable < 0:
            return None
        draw, deliverable = cap_draw, cap_deliverable
        # At a meter settlement the node counts an IT watt 1 + losses times: scale the draw
        # by the same factor it applies to what it can deliver.
        ratio = cap_deliverable / cap_it if cap_it is not None and cap_it > 0 else 1.0
        settlement = draw * ratio if capacity.get("settle_at") == "meter" else draw
    return NodeStatus(node, True, t, power, maximum, draw, settlement, deliverable)


class SiteView:
    """The last status of every node, from ``{prefix}/nodes/+/status``."""

    def __init__(self, *, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._nodes: dict[str, NodeStatus] = {}
        self.ignored = 0  # payloads that were not a status

    def update(self, topic: str, payload: bytes) -> NodeStatus | None:
        """Take one status message (the node id comes from the topic: a payload naming another
        node is ignored). Returns what was taken, None when it was ignored."""
        parts = topic.split("/")
        if len(parts) < 3 or parts[-1] != "status":
            self.ignored += 1
            return None
        status = parse_status(payload)
        if status is None or status.node != parts[-2]:
            self.ignored += 1
            return None
        if status.node not in self._nodes and len(self._nodes) >= MAX_NODES:
            self.ignored += 1
            return None
        self._nodes[status.node] = status
        return status

    def fresh(self, now: float) -> list[NodeStatus]:
        """Online nodes whose status is at most ``max_age_s`` old at ``now`` (Unix s)."""
        return [s for s in self._nodes.values()
                if s.online and abs(now - s.t) <= self.max_age_s]

    def snapshot(self, now: float) -> SiteSnapshot | None:
        """The fresh nodes summed; None when there are none."""
        nodes = self.fresh(now)
        if not nodes:
            return None
        return SiteSnapshot(
            nodes=len(nodes),
            it_power_w=math.fsum(s.it_power_w for s in nodes),
            draw_w=math.fsum(s.draw_w for s in nodes),
            settlement_draw_w=math.fsum(s.settlement_draw_w for s in nodes),
            deliverable_w=math.fsum(s.deliverable_w for s in nodes),
            max_it_w=math.fsum(s.max_it_w for s in nodes),
        )
