"""The ledger's rows beside the node's minutes: each GPU's energy per minute
(:class:`GpuMinuteRow`), each work source's counted work per minute (:class:`WorkMinuteRow`),
the counters' last readings that let a restarted agent carry on where the last one stopped
(:class:`Checkpoint`), and how rows of one minute written at different times are merged.

Units: times Unix seconds (UTC), energy joules, work in the source's own units (tokens,
samples). A row covers the part ``covered_s`` of its minute ``[start_s, start_s + 60)``.

**Merging.** The agent writes what it measured since its last write, so a minute written in
several pieces (the minute a write falls in, the minute an agent stopped and another started)
is the sum of its pieces: energy and work add up, covered seconds add up. Pieces that cover
more than the minute together (:data:`OVERLAP_TOLERANCE_S`) cannot both be measurements of it
(the wall clock stepped back across a restart, or a file was written by two agents): the piece
that covers more is kept, never their sum, so nothing is counted twice.

Threads: immutable values and pure functions; any thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["GPU_METHODS", "OVERLAP_TOLERANCE_S", "Batch", "Checkpoint", "GpuMethod",
           "GpuMinuteRow", "MinuteRow", "WorkMinuteRow", "merge_gpu", "merge_method",
           "merge_minute", "merge_work", "minute_pieces"]

MINUTE_S = 60
#: Covered seconds a merged minute may exceed 60 by (float sums, clocks a little apart).
OVERLAP_TOLERANCE_S = 0.5

#: How a GPU minute's energy was measured: ``counter`` (NVML's energy counter between two
#: read-back rounds), ``power`` (instant power readings integrated, trapezoid: no counter, or
#: it went back), ``bridged`` (the counter's increase over a time no round sampled, the agent
#: down, spread evenly over it), ``mixed`` (more than one of these in the minute).
GpuMethod = Literal["counter", "power", "bridged", "mixed"]
GPU_METHODS: tuple[GpuMethod, ...] = ("counter", "power", "bridged", "mixed")


def _finite_nonneg(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


def _covered(value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= MINUTE_S + OVERLAP_TOLERANCE_S):
        raise ValueError(f"covered_s must be in [0, 60], got {value}")


@dataclass(frozen=True)
class GpuMinuteRow:
    """One GPU's energy over the covered part of a minute.

    ``start_s``: a multiple of 60. ``gpu``: the GPU's UUID (stable when indices move);
    ``index``: its index as the agent numbered it then. A CPU package the agent reads through
    RAPL is kept here too, as ``cpu:<package>`` with a negative index (-1, -2, ...), and only
    so. ``energy_j`` (J, >= 0) over
    ``covered_s`` (s, in [0, 60]); ``power_s``: the covered seconds measured by integrating
    power rather than by the counter (in [0, covered_s]); ``method``: :data:`GpuMethod`.
    Raises ``ValueError`` when any of this is broken."""

    start_s: int
    gpu: str
    index: int
    energy_j: float
    covered_s: float
    power_s: float
    method: GpuMethod

    def __post_init__(self) -> None:
        if self.start_s % MINUTE_S != 0:
            raise ValueError(f"start_s must be a multiple of 60, got {self.start_s}")
        if not self.gpu:
            raise ValueError("gpu must be a GPU's UUID, got an empty name")
        if self.index < 0 and not self.gpu.startswith("cpu:"):
            raise ValueError(f"index must be >= 0 for a GPU, got {self.index}")
        _finite_nonneg("energy_j", self.energy_j)
        _covered(self.covered_s)
        if not (math.isfinite(self.power_s)
                and 0.0 <= self.power_s <= self.covered_s + 1e-9):
            raise ValueError(f"power_s must be in [0, covered_s], got {self.power_s}")
        if self.method not in GPU_METHODS:
            raise ValueError(f"method must be one of {', '.join(GPU_METHODS)}, "
                             f"got {self.method!r}")


@dataclass(frozen=True)
class WorkMinuteRow:
    """What one work source counted over the covered part of a minute.

    ``source``: its configured name; ``source_kind``: vllm, sglang, tgi, nim or custom;
    ``model``: the model (``""`` for custom counters); ``kind``: ``generation`` or ``prompt``
    for tokens, else the custom counter's unit. ``units`` (>= 0) over ``covered_s`` (s, in
    [0, 60]): the counter's increase between scrapes, spread evenly over the time between
    them. ``gpus``: the GPU indices the source was mapped to (``work.sources[].gpus``)."""

    start_s: int
    source: str
    source_kind: str
    model: str
    kind: str
    units: float
    covered_s: float
    gpus: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.start_s % MINUTE_S != 0:
            raise ValueError(f"start_s must be a multiple of 60, got {self.start_s}")
        if not self.source or not self.kind:
            raise ValueError("source and kind must be named")
        _finite_nonneg("units", self.units)
        _covered(self.covered_s)
        if any(g < 0 for g in self.gpus):
            raise ValueError(f"gpus must be indices >= 0, got {self.gpus}")


@dataclass(frozen=True)
class Checkpoint:
    """A counter's last reading that the ledger has accounted for: ``series`` names it (a GPU's
    energy counter, a source's work counter), ``wall_s`` when it was read (Unix s), ``value``
    what it read (mJ for a GPU, units for work). Energy and work up to ``wall_s`` are in the
    store; what the counter adds after is the next agent's to count. ``value`` None: the last
    reading had no counter, so there is nothing to carry on from (the store forgets the
    series: an older reading would count again what was since measured otherwise)."""

    series: str
    wall_s: float
    value: float | None


@dataclass(frozen=True)
class MinuteRow:
    """One minute of the node's IT draw (the sum of its GPUs' power, as the agent measures it).

    ``start_s``: Unix seconds, a multiple of 60; the row covers ``[start_s, start_s + 60)``.
    ``it_mean_w``: mean draw over the part of the minute that had samples (W, >= 0).
    ``it_p10_w``: 10th percentile of the minute's 1-s average draws (W, >= 0; usually a little
    below the mean). ``energy_j``: energy over the covered part (J, >= 0; ``energy_j /
    it_mean_w`` is the covered time, 60 for a full minute). ``limit_w``: mean of the summed
    enforced GPU power limits (W), ``None`` if unknown. ``event_s``: seconds of the minute with a
    grid activation in force, in ``[0, 60]``. Raises ``ValueError`` when any of this is broken.
    """

    start_s: int
    it_mean_w: float
    it_p10_w: float
    energy_j: float
    limit_w: float | None
    event_s: float

    def __post_init__(self) -> None:
        if self.start_s % 60 != 0:
            raise ValueError(f"start_s must be a multiple of 60, got {self.start_s}")
        for name in ("it_mean_w", "it_p10_w", "energy_j"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.limit_w is not None and not (math.isfinite(self.limit_w) and self.limit_w > 0):
            raise ValueError(f"limit_w must be finite and > 0 or None, got {self.limit_w}")
        if not (math.isfinite(self.event_s) and 0.0 <= self.event_s <= 60.0):
            raise ValueError(f"event_s must be in [0, 60], got {self.event_s}")


def _covered_s(row: MinuteRow) -> float:
    return row.energy_j / row.it_mean_w if row.it_mean_w > 0.0 else 0.0


def merge_minute(old: MinuteRow, new: MinuteRow) -> MinuteRow:
    """One minute measured in two parts (an agent stopped in it, another started): energy,
    covered time and event seconds add up, the mean is their ratio, the limit their
    time-weighted mean. The 10th percentile of the 1-s averages cannot be rebuilt from two
    percentiles: the lower is kept, which errs low as a quantile of a merged set can. Parts that
    together cover more than the minute overlap (the clock stepped back across a restart): the
    one that covers more is kept, not their sum."""
    a, b = _covered_s(old), _covered_s(new)
    if a + b > 60.0 + OVERLAP_TOLERANCE_S:
        return new if b > a else old
    covered = a + b
    energy = old.energy_j + new.energy_j
    limits = [(r.limit_w, c) for r, c in ((old, a), (new, b)) if r.limit_w is not None]
    weight = sum(c for _, c in limits)
    limit = (sum(w * c for w, c in limits) / weight if weight > 0
             else next((w for w, _ in limits), None))
    return MinuteRow(new.start_s, energy / covered if covered > 0 else new.it_mean_w,
                     min(old.it_p10_w, new.it_p10_w), energy, limit,
                     min(60.0, old.event_s + new.event_s))


@dataclass(frozen=True)
class Batch:
    """What the running agent measured since its last write, written in one transaction:
    node minutes, GPU minutes and work minutes (each merged into what the minute holds) and the
    counters' readings they end at (:class:`~gridtao.history.rows.Checkpoint`)."""

    minutes: Sequence[MinuteRow] = ()
    gpus: Sequence[GpuMinuteRow] = ()
    work: Sequence[WorkMinuteRow] = ()
    checkpoints: Sequence[Checkpoint] = ()

    def __len__(self) -> int:
        return len(self.minutes) + len(self.gpus) + len(self.work)


def merge_method(a: GpuMethod, b: GpuMethod) -> GpuMethod:
    """The method of a minute measured in two pieces."""
    return a if a == b else "mixed"


def merge_gpu(old: GpuMinuteRow, new: GpuMinuteRow) -> GpuMinuteRow:
    """``old`` and ``new`` (the same minute and GPU) as one row: their sum, or the one that
    covers more when together they cover more than the minute (module docstring)."""
    if old.covered_s + new.covered_s > MINUTE_S + OVERLAP_TOLERANCE_S:
        return new if new.covered_s > old.covered_s else old
    covered = old.covered_s + new.covered_s
    return GpuMinuteRow(new.start_s, new.gpu, new.index, old.energy_j + new.energy_j,
                        covered, min(covered, old.power_s + new.power_s),
                        merge_method(old.method, new.method))


def merge_work(old: WorkMinuteRow, new: WorkMinuteRow) -> WorkMinuteRow:
    """``old`` and ``new`` (the same minute, source, model and kind) as one row, as
    :func:`merge_gpu` (the GPUs are the newer mapping)."""
    if old.covered_s + new.covered_s > MINUTE_S + OVERLAP_TOLERANCE_S:
        return new if new.covered_s > old.covered_s else old
    return WorkMinuteRow(new.start_s, new.source, new.source_kind, new.model, new.kind,
                         old.units + new.units, old.covered_s + new.covered_s, new.gpus)


def minute_pieces(t0_s: float, t1_s: float) -> list[tuple[int, float]]:
    """``[t0_s, t1_s)`` cut at UTC minutes: (minute start, seconds of it inside), in order."""
    out: list[tuple[int, float]] = []
    pos = t0_s
    while pos < t1_s:
        start = math.floor(pos / MINUTE_S) * MINUTE_S
        stop = min(t1_s, start + MINUTE_S)
        out.append((int(start), stop - pos))
        pos = stop
    return out
