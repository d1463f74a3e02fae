"""Start-up checks of the configuration against the GPUs found: what the file alone cannot say.

The configuration is validated when it is loaded (gridtao/config/), before any GPU is opened;
the rules here need the GPUs' indices and power limits, so the agent calls them once it has
read those, before anything is started or written.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from gridtao.config.agent import Config
from gridtao.config.schema import fail
from gridtao.gpu.backend import PowerLimits

__all__ = ["check_priority_floors"]

log = logging.getLogger("gridtao.app.checks")


def _indices(indices: Sequence[int]) -> str:
    """``0-7`` for a run of indices, else ``0, 2, 5``."""
    if not indices:
        return "none"
    ordered = sorted(indices)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(map(str, ordered))


def check_priority_floors(config: Config, indices: Sequence[int],
                          limits: Sequence[PowerLimits]) -> None:
    """``tracker.priorities`` against this node's GPUs (``indices``, with their ``limits``).

    Refused with :class:`~gridtao.config.agent.ConfigError` (one line naming the key; the CLI
    exits 2): a GPU index the node does not have, and a critical GPU's ``floor_w`` above that
    GPU's maximum power limit. No limit can be set that high, so such a floor is a slip (a
    unit, a digit, another machine's GPUs), not a wish the agent could honour.

    Accepted: a floor between the GPU's default and maximum limits keeps that GPU out of every
    cut (the agent never raises a limit above the default). A floor below the GPU's minimum
    limit is accepted with a warning naming the key: no limit goes below the minimum anyway, so
    such a floor protects nothing, which is harmless to run with but rarely what was meant.
    """
    by_index = dict(zip(indices, limits, strict=True))
    for k, prio in enumerate(config.tracker.priorities):
        for j, g in enumerate(prio.gpus):
            lim = by_index.get(g)
            if lim is None:
                fail(config.source, f"tracker.priorities[{k}].gpus[{j}]",
                     f"no GPU {g} on this node (its GPUs: {_indices(list(by_index))})")
            if prio.priority != "critical" or prio.floor_w <= 0:
                continue
            key = f"tracker.priorities[{k}].floor_w"
            min_w, max_w = lim.min_mw / 1000.0, lim.max_mw / 1000.0
            if prio.floor_w * 1000.0 > lim.max_mw:
                fail(config.source, key,
                     f"{prio.floor_w:g} W is above GPU {g}'s maximum limit {max_w:g} W (its "
                     f"power limit can be set from {min_w:g} to {max_w:g} W)")
            if prio.floor_w * 1000.0 < lim.min_mw:
                log.warning("%s: %s: %g W is below GPU %d's minimum limit %g W: no limit goes "
                            "below the minimum, so this floor protects nothing", config.source,
                            key, prio.floor_w, g, min_w)


def served_priorities(config: Config, physical: Sequence[int]) -> Config:
    """``config`` with ``tracker.priorities`` renumbered from the driver's GPU indices to the
    served ones (``physical[k]`` is served as GPU ``k``; gpu/subset.py). A GPU not served (it
    could not be opened) is dropped from its entry, with a warning; an entry left with no GPU
    is dropped."""
    position = {index: k for k, index in enumerate(physical)}
    kept = []
    for n, prio in enumerate(config.tracker.priorities):
        gone = [i for i in prio.gpus if i not in position]
        if gone:
            log.warning("tracker.priorities[%d]: GPU %s not served (could not be opened); its "
                        "floor does not apply", n, ", ".join(map(str, gone)))
        gpus = tuple(position[i] for i in prio.gpus if i in position)
        if gpus:
            kept.append(dataclasses.replace(prio, gpus=gpus))
    return dataclasses.replace(config, tracker=dataclasses.replace(
        config.tracker, priorities=tuple(kept)))
