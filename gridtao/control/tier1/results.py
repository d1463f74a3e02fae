"""What tier 1 reports of each step, and how a run of those reports is scored.

:class:`StepResult` is what one :meth:`~gridtao.control.tier1.loop.FastLoop.step` saw and did
(immutable, built once a step on tier 1's thread and safe to hand to any other);
:func:`node_error_stats` is how tests and benches score tracking from a series of them. Power
is in mW, times in seconds of the loop's injected clock, except ``duration_s``: how long the
step took on the loop's ``timer`` (real seconds by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["StepResult", "node_error_stats"]


@dataclass(frozen=True)
class StepResult:
    """What one iteration saw and did. ``limits_mw`` are the limits tier 1 believes are set
    after the step (the island's caps right after a trigger); ``wrote`` says whether it asked the
    island to write this step and ``applied`` whether the island accepted that plan."""

    t_s: float
    draw_mw: tuple[float, ...]
    node_power_mw: float
    target_mw: float | None
    ceiling_mw: float | None
    budget_mw: float | None
    limits_mw: tuple[int, ...]
    wrote: bool
    applied: bool
    read_errors: int
    duration_s: float


def node_error_stats(
    actual_mw: Sequence[float], target_mw: Sequence[float]
) -> tuple[float, float]:
    """Mean and 95th percentile of ``|actual - target| / target`` (fractions): how tests and
    benches score tracking."""
    if not actual_mw or len(actual_mw) != len(target_mw):
        raise ValueError("need equally long, non-empty series")
    errs = sorted(abs(a - t) / t for a, t in zip(actual_mw, target_mw, strict=True))
    p95 = errs[min(len(errs) - 1, int(0.95 * len(errs)))]
    return sum(errs) / len(errs), p95
