"""Work-aware cuts in the agent (``control.allocation: work-aware``): the learned work model fed
from the work sources and tier 1's readings, and installed as tier 1's node split.

:class:`WorkAwareCuts` does nothing under ``proportional`` (the default). Under ``work-aware``:

* with no work source it says so once and leaves the split proportional (nothing to learn from,
  no kind to take a prior from);
* else it builds a :class:`~gridtao.work.model.WorkModel` with one group per work source (its
  GPUs and its kind's prior), loads its fits from ``work-model-<node>.json`` beside the journal
  (the state directory), registers its gauges, and installs a
  :class:`~gridtao.control.tier1.workaware.WorkAwareSplit` for tier 1 (allocation.py). A GPU no
  source names leaves every cut proportional (said once);
* :meth:`start` starts a daemon thread (``gridtao-work-model``, real time, every
  :data:`PERIOD_S`) that averages each group's power from tier 1's readings between two of its
  source's scrapes and gives the model the pair (mean power, the source's rate), marked limited
  (with the mean limit, the fit's instrument) while the group's limits were held below their
  resting limits and it pressed on them, free while they rested; windows that mixed the two are
  dropped. The fits are saved every
  :data:`SAVE_PERIOD_S` and at :meth:`close`, which also puts the proportional split back.

The island's armed caps and its trigger path are untouched: tier 1 re-splits the island's caps
on its next step. Power in mW from tier 1, W in the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from gridtao.clock import Clock
from gridtao.config.agent import Config
from gridtao.control.tier1.loop import FastLoop
from gridtao.control.tier1.workaware import WorkAwareSplit, WorkCurve
from gridtao.safety.island import SafetyIsland
from gridtao.work.model import GroupCurve, WorkModel, WorkModelCollector, lost_work_factor
from gridtao.work.node import NodeWork
from gridtao.work.sources import SourceSnapshot
from gridtao.work.window import PowerWindow

__all__ = ["PERIOD_S", "SAVE_PERIOD_S", "WorkAwareCuts", "rate_of", "split_curve"]

log = logging.getLogger("gridtao.work.model")

#: How often tier 1's readings are sampled into the windows, s.
PERIOD_S = 0.5
#: How often the fits are written to the state directory, s.
SAVE_PERIOD_S = 300.0


def rate_of(snap: SourceSnapshot) -> float | None:
    """A source's work rate over its last two scrapes (units/s): generated tokens for an
    inference server, the first configured counter for a custom one; None: no rate yet."""
    if snap.health != "ok":
        return None
    if snap.spec.kind == "custom":
        if not snap.spec.counters:
            return None
        unit = snap.spec.counters[0].removesuffix("_total")
        return snap.rates.get(("", unit))
    rates = [r for (_, kind), r in snap.rates.items() if kind == "generation"]
    return sum(rates) if rates else None


def split_curve(group: GroupCurve, exponent: float | None = None) -> WorkCurve:
    """The work-aware split's curve of a GPU of ``group``: ``exponent`` (None: the group's in
    use), its free draw (mW) and whether its work waits."""
    return WorkCurve(group.exponent if exponent is None else exponent,
                     free_mw=group.free_w * 1000.0, queued=group.queued)


class WorkAwareCuts:
    """See the module docstring. ``tier1``: its latest readings; ``island``: the limits set
    now and those events release to; ``clock``: tier 1's (the split's hold-off after each cut
    starts); ``physical``: the driver indices of the GPUs served (None: all, in order)."""

    def __init__(self, config: Config, work: NodeWork, tier1: FastLoop, island: SafetyIsland,
                 *, node_id: str, registry: CollectorRegistry, clock: Clock,
                 physical: Sequence[int] | None = None) -> None:
        self.model: WorkModel | None = None
        self._tier1 = tier1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._work = work
        self._draw_mw: Callable[[], Sequence[float]] = lambda: tier1.draw_mw
        self._limits_mw: Callable[[], Sequence[int]] = island.enforced_mw
        self._resting_mw: Callable[[], Sequence[int]] = lambda: island.resting_mw
        self._headroom_mw = config.control.headroom_w * 1000.0
        self._depth = max(0.01, config.limits.max_reduction_fraction / 2.0)
        self._path = Path(config.journal.path or ".").parent / f"work-model-{node_id}.json"
        self._count = len(tier1.draw_mw)
        self._seen = -1
        self._curves: tuple[WorkCurve | None, ...] = ()
        if config.control.allocation != "work-aware":
            return
        sources = config.work.sources
        if not sources or work.scraper is None:
            log.warning("control.allocation is work-aware but work.sources lists no work: "
                        "cuts are split proportionally")
            return
        where = {g: i for i, g in enumerate(physical)} if physical is not None else None
        groups = [(s.name, [where[g] if where is not None else g for g in s.gpus
                            if where is None or g in where], s.kind) for s in sources]
        self.model = WorkModel(groups)
        taken = self.model.load(self._path)
        WorkModelCollector(self.model, registry=registry)
        covered = {g for _, gpus, _ in groups for g in gpus}
        missing = sorted(set(range(self._count)) - covered)
        if missing:
            log.warning("control.allocation is work-aware but no work source names GPU(s) %s: "
                        "cuts are split proportionally", ", ".join(map(str, missing)))
        saved = (f"{taken} fit(s) taken from {self._path}" if self._path.exists()
                 else f"no fits saved yet ({self._path} is written at stop): the priors stand")
        log.info("work-aware cuts: %d work source(s), %s", len(groups), saved)
        tier1.split = WorkAwareSplit(self.curves, clock=clock, reached=lambda: tier1.at_target)

    def curves(self) -> tuple[WorkCurve | None, ...]:
        """Per GPU, its curve now (None: in no group); rebuilt only when the model moved.
        Called by tier 1 at its rate, on its thread."""
        model = self.model
        if model is None:
            return (None,) * self._count
        if model.version != self._seen:
            self._seen = model.version
            self._curves = tuple(None if c is None else split_curve(c)
                                 for c in model.per_gpu(self._count))
        return self._curves

    def lost_work_factor(self) -> float | None:
        """The share of full-speed work an IT W·h shed costs the node now (the curves at half
        the deepest cut the agent accepts, ``limits.max_reduction_fraction``, weighted by tier
        1's draws, each queued server's cut costing only below its knee;
        :func:`~gridtao.work.model.lost_work_factor`), None without a model. For the planner's
        cost of lost work; any thread."""
        model = self.model
        if model is None:
            return None
        draw_mw = self._draw_mw()
        groups = model.per_gpu(self._count)  # one snapshot for the exponents and the knees
        knees = [d if g is None else split_curve(g).knee_mw(d, r) for g, d, r
                 in zip(groups, draw_mw, self._resting_mw(), strict=True)]
        return lost_work_factor([None if g is None else g.exponent for g in groups],
                                [d / 1000.0 for d in draw_mw], depth=self._depth,
                                knee_w=[k / 1000.0 for k in knees])

    def start(self) -> None:
        """Start the feeder thread (nothing to do without a model)."""
        if self.model is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="gridtao-work-model",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the feeder, save the fits, give tier 1 back the proportional split.
        Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._tier1.split is not None:
            self._tier1.split = None
            self._save()

    def _save(self) -> None:
        if self.model is None:
            return
        try:
            self.model.save(self._path)
        except OSError as e:
            log.warning("work model not saved to %s: %s", self._path, e)

    def _run(self) -> None:
        model, scraper = self.model, self._work.scraper
        if model is None or scraper is None:
            return
        windows = {c.name: PowerWindow() for c in model.curves()}
        scraped: dict[str, float | None] = {}
        gpus = {c.name: c.gpus for c in model.curves()}
        last_save = time.monotonic()
        while not self._stop.wait(PERIOD_S):
            try:
                self._sample(model, scraper.snapshots(), windows, scraped, gpus)
            except Exception:  # a feeder bug must not end the agent; the model just stops
                log.exception("work model feeder failed; cuts keep the curves learnt so far")
                return
            if time.monotonic() - last_save >= SAVE_PERIOD_S:
                self._save()
                last_save = time.monotonic()

    def _sample(self, model: WorkModel, snaps: Sequence[SourceSnapshot],
                windows: dict[str, PowerWindow], scraped: dict[str, float | None],
                gpus: dict[str, tuple[int, ...]]) -> None:
        """One reading of tier 1's into each source's window, which closes at each new
        scrape of that source (``scraped``: the time of the scrape that opened it)."""
        draw, limits, resting = self._draw_mw(), self._limits_mw(), self._resting_mw()
        by_name = {s.spec.name: s for s in snaps}
        for name, window in windows.items():
            idx = [g for g in gpus[name] if g < len(draw)]
            snap = by_name.get(name)
            if snap is not None and snap.last_success_s != scraped.get(name):
                rate, seen = rate_of(snap), window.observation()
                if seen is not None and rate is not None and snap.last_success_s is not None:
                    model.observe(name, snap.last_success_s, seen.power_w, rate,
                                  limited=seen.limited, limit_w=seen.limit_w)
                window.reset()
                scraped[name] = snap.last_success_s
            if idx:
                window.add(idx, draw, limits, resting, headroom_mw=self._headroom_mw)
