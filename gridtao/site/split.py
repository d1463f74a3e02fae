"""Split a site's IT power budget into per-node caps. Pure functions, no I/O.

Invariants of :func:`split_budget`:
- a node's cap is never below its floor plus ``margin`` of its headroom (the node's own guard
  would refuse it, and its priority floors must hold);
- the cut is shared in proportion to each node's headroom (draw above its floor), so every node
  ends the same share of the way to its floor and no node is driven to its floor while another
  has room;
- nodes that are not taking part (offline, faulted, no headroom) are counted at the power the
  site must assume for them, never at zero: an offline node may be drawing all it can;
- when the budget needs more than the nodes can give, every taking-part node is capped at its
  floor and the rest is reported as ``shortfall_w``, never hidden.

Power in W at the GPUs (IT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["NodeShare", "Split", "split_budget"]


@dataclass(frozen=True)
class NodeShare:
    """One node as the split sees it: ``draw_w`` is the power it would draw uncapped (its draw
    when the event began), ``floor_w`` the lowest it may be taken to. ``able``: online and
    without faults, so it can take a cap; a node not able is counted at ``draw_w``."""

    node: str
    draw_w: float
    floor_w: float
    able: bool = True


@dataclass(frozen=True)
class Split:
    """``caps_w``: node -> cap (W); ``cut_w``: the reduction asked of the nodes in all;
    ``shortfall_w``: what the budget needs beyond what the nodes can give (0 when covered)."""

    caps_w: Mapping[str, float]
    cut_w: float
    shortfall_w: float


def split_budget(budget_w: float, nodes: Sequence[NodeShare], *, margin: float = 0.0) -> Split:
    """Caps that hold the nodes' summed IT power at or below ``budget_w``.

    When the nodes already draw less than the budget, the spare is shared by draw, so each cap
    sits above its node's draw (nothing is cut now, but a rise is held). ``margin`` in [0, 0.5):
    the share of each node's headroom kept in reserve above its floor.
    """
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    total = sum(n.draw_w for n in nodes)
    able = [n for n in nodes if n.able and n.draw_w > n.floor_w]
    room = {n.node: (n.draw_w - n.floor_w) * (1.0 - margin) for n in able}
    needed = total - budget_w
    caps: dict[str, float] = {}
    if needed <= 0.0:
        spare, drawn = -needed, sum(n.draw_w for n in able)
        for n in able:
            caps[n.node] = n.draw_w + (spare * n.draw_w / drawn if drawn > 0 else 0.0)
        return Split(caps, 0.0, 0.0)
    available = sum(room.values())
    scale = min(1.0, needed / available) if available > 0 else 0.0
    for n in able:
        caps[n.node] = n.draw_w - room[n.node] * scale
    cut = available * scale
    return Split(caps, cut, max(0.0, needed - cut))
