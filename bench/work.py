"""Work lost to a cut: proportional against work-aware splits, on a mixed node, in virtual time.

``gridtao bench work [--hold-s 60] [--gap-s 20] [--sheds 0.1,0.2,0.3] [--seed 0]
[--no-learned] [--json FILE]`` runs the same node through the same sheds per allocation
(docs/work.md):

* the node: 8 simulated H100s in this process (``gpus.sim.device: null``), 4 inference GPUs at
  loads 1.0, 0.75, 0.5 and 0.25 and 4 training GPUs (``gpus.sim.workloads``), the real safety
  island and tier 1 at 100 Hz, on a virtual clock (deterministic, minutes of node time in
  seconds). Every run sees the very same demand (the workloads' streams do not depend on the
  limits), so the runs differ only by how tier 1 splits each cut;
* the sheds: each ``--sheds`` fraction of node power in turn (the island's ``shed``), at fixed
  times, held ``--hold-s`` seconds, released at the island's rate, then ``--gap-s`` of rest;
* the allocations: ``proportional``; ``work-aware`` with the prior curves of each GPU's kind
  (gridtao/gpu/sim/throughput.py); ``work-aware-learned`` (unless ``--no-learned``) with the
  curves the learned model (gridtao/work/model.py) fitted from the proportional run's 5 s
  windows of each GPU's mean power, mean limit and work rate, as a work source would give them.

The splits use their limits differently (on this bursty node a shed delivers more than it asks),
so each work-aware split runs twice: at the sequence's requests (``same_request``), and with its
requests moved until each hold delivers what the proportional split delivered
(``allocations``: the same delivered watts).

Measured per run: the reduction delivered (mean of what the node would have drawn unhindered,
the simulator's demand, minus what it drew, over each hold), the response time (the trigger to
the first reading of true node power within ``control.band_fraction`` of the requested
reduction of its target), the share of 1 s means of node power at or beyond that band after
it, and the work lost from each trigger to the end of its release ramp: tokens (inference) and
samples (training), per kWh not drawn, and as a share of the work the node would have done
(each GPU's work in GPU-seconds at full speed: a token is 3.5 J, a sample 100 J of a 700 W
GPU's full-speed second).

Circularity, said in the output too: the work lost is computed with the simulator's throughput
model, the very model whose curves (the priors) tell work-aware what a watt is worth. The bench
shows the split does what its model says; how much work a real node saves depends on how well
its curves (learned from its own work sources) fit its jobs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gridtao.bench.latency import run_info
from gridtao.bench.workrecord import Recording, print_result
from gridtao.clock import VirtualClock
from gridtao.config.agent import ControlConfig, SimConfig, SimWorkload
from gridtao.control.tier1.loop import FastLoop
from gridtao.control.tier1.workaware import WorkAwareSplit, WorkCurve
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.throughput import model_for
from gridtao.safety.island import SafetyIsland
from gridtao.work.model import WorkModel, prior_exponent

MIXED_NODE = (SimWorkload("inference", 1.0), SimWorkload("inference", 0.75),
              SimWorkload("inference", 0.5), SimWorkload("inference", 0.25),
              *(SimWorkload("training"),) * 4)
WARMUP_S = 10.0
RELEASE_RATE_PER_S = 0.2  # the island's default: 20 %/s
WINDOW_S = 5.0  # the learned model's observation window (a work source's scrape period)
CALIBRATION_TOLERANCE = 0.01  # of the delivered watts to match
CALIBRATION_RUNS = 8
HEADROOM_MW = ControlConfig().headroom_w * 1000.0
CIRCULARITY = ("work lost is computed with the simulator's throughput model, the same model "
               "whose curves tell work-aware what a watt is worth")


@dataclass
class _Gpu:
    """One GPU's work so far (units: tokens or samples), served (``done``) and due (what it
    would have served unhindered: what arrived), read from the physics, and its model window."""

    kind: str
    unit: str
    joules_per_unit: float
    done: float = 0.0
    due: float = 0.0
    window: list[float] = field(default_factory=lambda: [0.0] * 7)


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
    live = None if curves is None else _model()
    if live is not None and curves is not None:
        loop.split = WorkAwareSplit(_curve_source(live, tuple(curves)), clock=clock)
    observers = [m for m in (model, live) if m is not None]
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
            _observe(observers, gpus, now, draw, island.enforced_mw(), upper_w)
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


def _model() -> WorkModel:
    """A work model with one group per GPU of the mixed node, of its workload's kind."""
    return WorkModel([(str(i), [i], w.kind) for i, w in enumerate(MIXED_NODE)])


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
                None if b is None else WorkCurve(b) if c is None else WorkCurve(
                    b, free_mw=c.free_w * 1000.0, queued=c.queued)
                for b, c in zip(exponents, live.per_gpu(len(exponents)), strict=True))
        return built[0]
    return curves


def _observe(models: Sequence[WorkModel], gpus: list[_Gpu], now: float, draw: list[float],
             limits_mw: Sequence[int], upper_w: float) -> None:
    """Feed each GPU's :data:`WINDOW_S` windows (mean power, mean limit, work rate) to
    ``models``: what a work source scraped that often, and tier 1's readings, would give it;
    free windows, and windows held and pressed throughout (the others are dropped)."""
    for i, g in enumerate(gpus):
        w = g.window  # [start s, summed draw W, work at start, held steps, steps, pressed,
        #                summed limit W]
        if w[4] == 0:
            w[0], w[2] = now, g.done
        held = limits_mw[i] < upper_w * 1000.0 - HEADROOM_MW
        w[1] += draw[i]
        w[6] += limits_mw[i] / 1000.0
        w[3] += held
        w[4] += 1
        w[5] = max(w[5], float(held and draw[i] * 1000.0 >= limits_mw[i] - HEADROOM_MW / 2))
        if now - w[0] >= WINDOW_S:
            rate = (g.done - w[2]) / (now - w[0])
            if w[3] == 0 or (w[3] == w[4] and w[5]):  # free, or held and pressed throughout
                for model in models:
                    model.observe(str(i), now, w[1] / w[4], rate, limited=w[3] > 0,
                                  limit_w=w[6] / w[4])
            g.window = [0.0] * 7


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


def calibrate(allocation: str, curves: Sequence[float | None], goals_w: Sequence[float],
              first: dict[str, Any], *, hold_s: float, gap_s: float, seed: int,
              warmup_s: float = WARMUP_S) -> dict[str, Any]:
    """Run ``allocation`` again with each shed's request moved (bracketing) until each hold
    delivers its goal (W) within :data:`CALIBRATION_TOLERANCE`; ``first``: the run at the
    requests of the sequence. The run closest to the goals, with ``calibration`` (its
    requests, the runs made and its largest miss, a share of the goal)."""

    def miss(run: dict[str, Any]) -> float:
        return float(max(abs(h["delivered_w"] - g) / g
                         for h, g in zip(run["holds"], goals_w, strict=True)))

    runs = [first]
    # Per shed, the nearest requests known to deliver too little and too much: (request, W).
    below: list[tuple[float, float] | None] = [None] * len(goals_w)
    above: list[tuple[float, float] | None] = [None] * len(goals_w)
    for _ in range(CALIBRATION_RUNS):
        if miss(runs[-1]) <= CALIBRATION_TOLERANCE:
            break
        requests = []
        for k, goal in enumerate(goals_w):
            hold = runs[-1]["holds"][k]
            point = (hold["requested_fraction"], hold["delivered_w"])
            lo, hi = below[k], above[k]
            if point[1] < goal and (lo is None or point[0] > lo[0]):
                below[k] = lo = point
            elif point[1] >= goal and (hi is None or point[0] < hi[0]):
                above[k] = hi = point
            if lo is not None and hi is not None:  # interpolate, kept off the bracket's ends
                t = (goal - lo[1]) / (hi[1] - lo[1]) if hi[1] > lo[1] else 0.5
                r = lo[0] + min(0.8, max(0.2, t)) * (hi[0] - lo[0])
            else:  # widen toward the goal
                r = point[0] * (goal / point[1] if point[1] > 0 else 2.0)
                r *= 1.15 if lo is not None else 0.85
            requests.append(min(0.95, max(0.001, r)))
        runs.append(run_allocation(allocation, curves=curves, requests=requests,
                                   hold_s=hold_s, gap_s=gap_s, seed=seed, warmup_s=warmup_s))
    best: dict[str, Any] = min(runs, key=miss)
    out = dict(best)
    out.pop("record", None)  # the recording is of the first run only (same_request)
    out["calibration"] = {"runs": len(runs), "max_delivered_miss": miss(out),
                          "requests": [h["requested_fraction"] for h in out["holds"]]}
    return out


def _compare(base: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    return {"work_lost_reduction": 1.0 - other["work_lost_fraction"] / base["work_lost_fraction"],
            "delivered_ratio": other["delivered_w"] / base["delivered_w"]}


def run(*, sheds: Sequence[float], hold_s: float, gap_s: float, seed: int,
        learned: bool, progress: Callable[[str], None] | None = None,
        aware: bool = True, warmup_s: float = WARMUP_S,
        record: Path | None = None) -> dict[str, Any]:
    """Every allocation over the same node and demand: at the sequence's requests, then with
    the work-aware requests calibrated to deliver what proportional delivered (``aware``;
    False: proportional alone); the learned model's fits (``learned``). ``record``: a folder
    the runs at the sequence's requests write their history and audit trail to."""
    say = progress or (lambda line: None)
    kinds = [w.kind for w in MIXED_NODE]
    priors: list[float | None] = [prior_exponent(k) for k in kinds]
    model = _model() if learned else None
    opts: dict[str, Any] = {"hold_s": hold_s, "gap_s": gap_s, "seed": seed,
                            "warmup_s": warmup_s}
    say("proportional ...")
    prop = run_allocation("proportional", curves=None, requests=sheds, model=model,
                          record=record, **opts)
    out: dict[str, Any] = {"allocations": {"proportional": prop},
                           "same_request": {"proportional": prop}}
    goals = [h["delivered_w"] for h in prop["holds"]]
    if aware:
        say("work-aware (prior curves) ...")
        same = run_allocation("work-aware", curves=priors, requests=sheds, record=record,
                              **opts)
        say("work-aware, requests calibrated to proportional's delivered watts ...")
        out["allocations"]["work-aware"] = calibrate("work-aware", priors, goals, same, **opts)
        out["same_request"]["work-aware"] = same
    if model is not None and aware:
        fitted = list(model.exponents(len(kinds)))
        say("work-aware (learned curves) ...")
        first = run_allocation("work-aware-learned", curves=fitted, requests=sheds,
                               record=record, **opts)
        out["allocations"]["work-aware-learned"] = calibrate("work-aware-learned", fitted,
                                                             goals, first, **opts)
        out["same_request"]["work-aware-learned"] = first
        out["learned_fit"] = [
            {"gpu": int(c.name), "kind": c.kind, "simulator_exponent": c.prior,
             "fitted_exponent": None if c.fit is None else c.fit.exponent,
             "exponent_std": None if c.fit is None else c.fit.exponent_std,
             "log_residual_std": None if c.fit is None else c.fit.residual_std,
             "samples": c.samples, "used_prior": c.from_prior} for c in model.curves()]
    out["comparison"] = {
        name: {"same_delivered": _compare(prop, out["allocations"][name]),
               "same_request": _compare(prop, out["same_request"][name])}
        for name in out["allocations"] if name != "proportional"}
    out["node"] = {"gpus": len(kinds), "profile": "h100-sxm",
                   "workloads": [{"kind": w.kind, "load": w.load} for w in MIXED_NODE]}
    out |= {"sheds": list(sheds), "hold_s": hold_s, "gap_s": gap_s, "seed": seed,
            "warmup_s": warmup_s, "clock": "virtual", "circularity": CIRCULARITY}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gridtao bench work",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--hold-s", type=float, default=60.0, help="each shed's hold (default 60)")
    p.add_argument("--gap-s", type=float, default=20.0,
                   help="rest after each release ramp (default 20)")
    p.add_argument("--sheds", default="0.1,0.2,0.3",
                   help="shed fractions of node power, in order (default 0.1,0.2,0.3)")
    p.add_argument("--seed", type=int, default=0, help="the simulator's seed (default 0)")
    p.add_argument("--no-learned", action="store_true",
                   help="skip the run on the learned model's curves")
    p.add_argument("--proportional-only", action="store_true",
                   help="run the proportional split alone (no work-aware runs)")
    p.add_argument("--warmup-s", type=float, default=WARMUP_S,
                   help=f"run before the first shed (default {WARMUP_S:g})")
    p.add_argument("--record", metavar="DIR",
                   help="write each run's minute history and audit trail (at the sequence's "
                        "requests) to DIR, for gridtao report energy (docs/work.md)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)
    try:
        sheds = [float(s) for s in args.sheds.split(",")]
    except ValueError:
        p.error("--sheds: comma-separated fractions, e.g. 0.1,0.2,0.3")
    if not sheds or not all(0.0 < s < 1.0 for s in sheds):
        p.error("--sheds: fractions in (0, 1)")
    if not (args.hold_s > 0 and args.gap_s >= 0 and args.warmup_s >= 0):
        p.error("--hold-s must be > 0, --gap-s and --warmup-s >= 0")
    result = run(sheds=sheds, hold_s=args.hold_s, gap_s=args.gap_s, seed=args.seed,
                 learned=not args.no_learned and not args.proportional_only,
                 aware=not args.proportional_only, warmup_s=args.warmup_s,
                 record=None if args.record is None else Path(args.record),
                 progress=lambda line: print(line, file=sys.stderr, flush=True))
    result |= run_info("gridtao.bench.work", argv)
    print_result(result, CIRCULARITY)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
