"""One work source's GPUs between two readings of its work rate: what the work model may learn
from them (gridtao/work/model.py, :meth:`~gridtao.work.model.WorkModel.observe`).

The agent's feeder (gridtao/app/workmodel.py) closes a window at each scrape of the source, the
work bench (bench/worknode.py) every fixed period; both add tier 1's readings to it at their own
rate, and both ask it the same question: is this window one the model may take?

- **free**: no sample had the group's limits held below their resting limits (by more than the
  headroom): the work rate is the job's own, a new reference;
- **limited**: every sample had them held, and some GPU pressed on its limit (drew within half
  the headroom of it) in at least one: the rate is what the limit left, a pair for the fit;
- anything else (a window that mixed the two, or held limits no GPU reached) teaches nothing
  and is dropped.

Power and limits in mW in, W out. Single-threaded: each window belongs to one feeder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Observation", "PowerWindow"]


@dataclass(frozen=True)
class Observation:
    """A window the model may take: the group's mean summed power and mean summed limit (W),
    and whether its limits were held throughout (else free throughout)."""

    power_w: float
    limit_w: float
    limited: bool


class PowerWindow:
    """Tier 1's readings of one group of GPUs over one window (the module docstring)."""

    __slots__ = ("_limit_mw", "_limited", "_power_mw", "_pressed", "samples")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start the next window."""
        self.samples = 0
        self._power_mw = 0.0
        self._limit_mw = 0.0
        self._limited = 0  # samples with the limits held
        self._pressed = False  # a GPU pressed on its held limit in some sample

    def add(self, gpus: Sequence[int], draw_mw: Sequence[float], limits_mw: Sequence[float],
            resting_mw: Sequence[float], *, headroom_mw: float) -> None:
        """One reading of the node (per GPU, indexed by ``gpus``): draw, enforced limits and
        the limits the GPUs rest at, mW; ``headroom_mw``: tier 1's headroom."""
        limit = sum(limits_mw[g] for g in gpus)
        held = limit < sum(resting_mw[g] for g in gpus) - headroom_mw
        self._power_mw += sum(draw_mw[g] for g in gpus)
        self._limit_mw += limit
        self.samples += 1
        self._limited += held
        self._pressed |= held and any(draw_mw[g] >= limits_mw[g] - headroom_mw / 2.0
                                      for g in gpus)

    def observation(self) -> Observation | None:
        """What the model may take from the window so far, or None (empty, mixed, or held
        with no GPU pressing on its limit)."""
        if not self.samples:
            return None
        limited = self._limited == self.samples
        if not (self._limited == 0 or (limited and self._pressed)):
            return None
        return Observation(self._power_mw / self.samples / 1000.0,
                           self._limit_mw / self.samples / 1000.0, limited)
