"""One run of the work bench's mixed node (gridtao/bench/work.py): the node, in virtual time on
in-process simulated GPUs, through a sequence of sheds under one allocation, scored for the
watts it delivered, how fast, and the work it lost (see work.py's docstring for what each
figure means). Not strictly deterministic: the island's parallel writes advance the virtual
clock once per sleeping caller, so how the threads overlap moves a run a little (repeated runs
of one seed agree to within a few tenths of a point).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gridtao.app.workmodel import split_curve
from gridtao.bench.workrecord import Recording
from gridtao.clock import VirtualClock
from gridtao.config.agent import ControlConfig, SimConfig, SimWorkload
from gridtao.control.tier1.loop import FastLoop
from gridtao.control.tier1.workaware import WorkAwareSplit, WorkCurve
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.throughput import model_for
from gridtao.safety.island import SafetyIsland
from gridtao.work.model import WorkModel
from gridtao.work.window import PowerWindow

__all__ = ["MIXED_NODE", "RELEASE_RATE_PER_S", "SOURCES", "WARMUP_S", "WINDOW_S",
           "mixed_node_model",
           "run_allocation"]

MIXED_NODE = (SimWorkload("inference", 1.0), SimWorkload("inference", 0.75),
              SimWorkload("inference", 0.5), SimWorkload("inference", 0.25),
              *(SimWorkload("training"),) * 4)
WARMUP_S = 10.0
RELEASE_RATE_PER_S = 0.2  # the island's default: 20 %/s
WINDOW_S = 5.0  # the learned model's observation window (a work source's scrape period)
#: The node's work sources as an operator would list them: each inference GPU its own server
#: (their loads differ), the four training GPUs one job (one counter of samples).
SOURCES: tuple[tuple[str, tuple[int, ...], str], ...] = (
    *((str(i), (i,), "inference") for i in range(4)), ("train", (4, 5, 6, 7), "training"))
HEADROOM_MW = ControlConfig().headroom_w * 1000.0


@dataclass
class _Gpu:
    """One GPU's work so far (units: tokens or samples), served (``done``) and due (what it
    would have served unhindered: what arrived), read from the physics."""

    kind: str
    unit: str
    joules_per_unit: float
    done: float = 0.0
    due: float = 0.0


def _node(seed: int, allocation: Literal["proportional", "work-aware"],
          ) -> tuple[VirtualClock, SimNvml, SafetyIsland, FastLoop, NvmlBackend]:
    clock = VirtualClock()
    sim = SimNvml.from_config(SimConfig(count=len(MIXED_NODE), seed=seed, device=None,
                                        workloads=MIXED_NODE), clock)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=RELEASE_RATE_PER_S,
                          max_event_s=3600.0)
    island.start()
    loop = FastLoop(backend, island, clock=clock, config=ControlConfig(allocation=allocation))
    return clock, sim, island, loop, backend


def run_allocation(allocation: str, *, curves: Sequence[float | None] | None,
                   requests: Sequence[float], hold_s: float, gap_s: float, seed: int,
                   model: WorkModel | None = None, warmup_s: float = WARMUP_S,
                   record: Path | None = None) -> dict[str, Any]:
    """One run (see the module docstring): shed ``k`` asks the island for ``requests[k]`` of
    node power at a fixed time; ``curves``, each GPU's exponent (None: no curve), installs a
    work-aware split (None: proportional), with each GPU's free draw as a work model observing
    this run gives it; ``model``, when given, observes each GPU's windows too;
    ``record``: a folder to write the run's history and audit trail to
    (gridtao/bench/workrecord.py; ``record`` in the result)."""
    band = ControlConfig().band_fraction
    clock, sim, island, loop, backend = _node(
        seed, "proportional" if curves is None else "work-aware")
    rec = None if record is None else Recording(
        record, f"bench-{allocation}", clock, backend, [w.kind for w in sim.workloads])
    live = None if curves is None else mixed_node_model()
    if live is not None and curves is not None:
        loop.split = WorkAwareSplit(_curve_source(live, tuple(curves)), clock=clock,
                                    reached=lambda: loop.at_target)
    observers = [m for m in (model, live) if m is not None]
    windows = {name: _SourceWindow() for name, _, _ in SOURCES}
    gpus = []
    for w in sim.workloads:
        m = model_for(w.kind)
        gpus.append(_Gpu(w.kind, m.unit, m.joules_per_unit))
    upper_w = sim.profile.default_w
    ramp_s = 1.0 / RELEASE_RATE_PER_S
    holds: list[dict[str, Any]] = []
    t_next = clock.now()

    def step() -> tuple[float, float]:
        nonlocal t_next
        loop.step()
        now = clock.now()
        demand = [sim.demand_w(i) for i in range(sim.count)]
        draw = [sim.true_power_mw(i) / 1000.0 for i in range(sim.count)]
        for i, g in enumerate(gpus):
            work = sim.work_j(i)
            g.done = work.served_j / g.joules_per_unit
            g.due = work.arrived_j / g.joules_per_unit
        if rec is not None:
            rec.step(loop.period_s, draw, [g.done for g in gpus], [g.due for g in gpus])
        if observers:
            _observe(observers, gpus, windows, now, draw, island.enforced_mw(),
                     island.resting_mw)
        t_next += loop.period_s
        if t_next > clock.now():
            clock.advance(t_next - clock.now())
        return math.fsum(demand), math.fsum(draw)

    def run_until(t_s: float) -> list[tuple[float, float, float]]:
        out = []
        while clock.now() < t_s:
            demand_w, draw_w = step()
            out.append((clock.now(), demand_w, draw_w))
        return out

    t_start = clock.now()
    try:
        for k, fraction in enumerate(requests):
            t_trigger = t_start + warmup_s + k * (hold_s + ramp_s + gap_s)
            run_until(t_trigger)
            act = island.trigger_shed(f"bench-work-{k}", fraction)
            if rec is not None:
                rec.started(act, fraction=fraction)
            t0 = clock.now()
            work0 = [(g.done, g.due) for g in gpus]
            hold = run_until(t0 + hold_s)
            island.release(f"bench-work-{k}")
            if rec is not None:
                rec.released(act.event_id)
            ramp = run_until(t0 + hold_s + ramp_s)
            holds.append(_score(fraction, act.target_mw / 1000.0, act.baseline_mw / 1000.0,
                                band, t0, hold, ramp, gpus, work0, upper_w))
            if rec is not None:
                rec.ended(act.event_id, holds[-1])
        run_until(t_start + warmup_s + len(requests) * (hold_s + ramp_s + gap_s))
    finally:
        island.close()
        recorded = None if rec is None else rec.close()
    out = _summary(allocation, holds)
    if recorded is not None:
        out["record"] = recorded
    return out


def mixed_node_model() -> WorkModel:
    """A work model with one group per work source of the mixed node (:data:`SOURCES`)."""
    return WorkModel([(name, list(idx), kind) for name, idx, kind in SOURCES])


def _curve_source(live: WorkModel, exponents: tuple[float | None, ...],
                  ) -> Callable[[], tuple[WorkCurve | None, ...]]:
    """Each GPU's curve: its exponent in ``exponents``, with the free draw ``live`` says (the
    demand a cut meets; an inference GPU's arrivals, its knee); rebuilt only when ``live``
    moved."""
    seen = [-1]
    built: list[tuple[WorkCurve | None, ...]] = [()]

    def curves() -> tuple[WorkCurve | None, ...]:
        if live.version != seen[0]:
            seen[0] = live.version
            built[0] = tuple(
                None if b is None else WorkCurve(b) if c is None else split_curve(c, b)
                for b, c in zip(exponents, live.per_gpu(len(exponents)), strict=True))
        return built[0]
    return curves


@dataclass
class _SourceWindow:
    """One work source's current observation window: when it opened (s), the work its GPUs
    had done then, and tier 1's readings since."""

    opened_s: float | None = None
    done_at_open: float = 0.0
    readings: PowerWindow = field(default_factory=PowerWindow)


def _observe(models: Sequence[WorkModel], gpus: list[_Gpu], windows: dict[str, _SourceWindow],
             now: float, draw_w: list[float], limits_mw: Sequence[int],
             resting_mw: Sequence[int]) -> None:
    """Feed each work source's :data:`WINDOW_S` windows to ``models`` as the agent's feeder
    does (gridtao/app/workmodel.py, the same :class:`~gridtao.work.window.PowerWindow`): what
    a work source scraped that often, and tier 1's readings, would give it. Sources:
    :data:`SOURCES`."""
    draw_mw = [w * 1000.0 for w in draw_w]
    for name, idx, _ in SOURCES:
        w = windows[name]
        done = math.fsum(gpus[i].done for i in idx)
        if w.opened_s is None:
            w.opened_s, w.done_at_open = now, done
        w.readings.add(idx, draw_mw, limits_mw, resting_mw, headroom_mw=HEADROOM_MW)
        if now - w.opened_s >= WINDOW_S:
            seen = w.readings.observation()
            if seen is not None:
                rate = (done - w.done_at_open) / (now - w.opened_s)
                for model in models:
                    model.observe(name, now, seen.power_w, rate, limited=seen.limited,
                                  limit_w=seen.limit_w)
            windows[name] = _SourceWindow()


def _score(fraction: float, target_w: float, basis_w: float, band: float, t0: float,
           hold: list[tuple[float, float, float]], ramp: list[tuple[float, float, float]],
           gpus: list[_Gpu], work0: list[tuple[float, float]], upper_w: float,
           ) -> dict[str, Any]:
    """One shed: what it asked, delivered (over the hold), cost (over the hold and the release
    ramp) and how fast it reached its target. Samples: ``(t_s, demand W, draw W)``."""
    requested_w = basis_w - target_w
    tol_w = band * requested_w
    response = next((t - t0 for t, _, p in hold if p <= target_w + tol_w), None)
    dt = (hold[-1][0] - t0) / len(hold)
    # At target after the response, on 1 s means of true node power (as a meter would score).
    per_s = max(1, round(1.0 / dt))
    after = [p for t, _, p in hold if response is not None and t - t0 >= response]
    means = [math.fsum(after[i:i + per_s]) / per_s
             for i in range(0, len(after) - per_s + 1, per_s)]
    window = hold + ramp
    lost = {"tokens": 0.0, "samples": 0.0}
    lost_gs = done_gs = 0.0
    for g, (a0, u0) in zip(gpus, work0, strict=True):
        units = (g.due - u0) - (g.done - a0)
        lost[g.unit] += units
        lost_gs += units * g.joules_per_unit / upper_w
        done_gs += (g.due - u0) * g.joules_per_unit / upper_w
    return {"requested_fraction": fraction, "requested_w": requested_w, "target_w": target_w,
            "delivered_w": math.fsum(d - p for _, d, p in hold) / len(hold),
            "delivered_kwh": math.fsum(d - p for _, d, p in window) * dt / 3.6e6,
            "response_s": response,
            "at_target_fraction": (sum(m <= target_w + tol_w for m in means) / len(means)
                                   if means else 0.0),
            "tokens_lost": lost["tokens"], "samples_lost": lost["samples"],
            "work_lost_gpu_s": lost_gs, "work_done_gpu_s": done_gs}


def _summary(allocation: str, holds: list[dict[str, Any]]) -> dict[str, Any]:
    kwh = math.fsum(h["delivered_kwh"] for h in holds)
    tokens = math.fsum(h["tokens_lost"] for h in holds)
    samples = math.fsum(h["samples_lost"] for h in holds)
    lost_gs = math.fsum(h["work_lost_gpu_s"] for h in holds)
    done_gs = math.fsum(h["work_done_gpu_s"] for h in holds)
    responses = [h["response_s"] for h in holds]
    return {
        "allocation": allocation,
        "delivered_w": math.fsum(h["delivered_w"] for h in holds) / len(holds),
        "tokens_lost": tokens, "samples_lost": samples,
        "tokens_lost_per_kwh": tokens / kwh if kwh > 0 else math.nan,
        "samples_lost_per_kwh": samples / kwh if kwh > 0 else math.nan,
        "work_lost_gpu_s": lost_gs,
        "work_lost_fraction": lost_gs / done_gs if done_gs > 0 else math.nan,
        "max_response_s": None if None in responses else max(responses),
        "min_at_target_fraction": min(h["at_target_fraction"] for h in holds),
        "holds": holds,
    }
