"""Work lost to a cut: proportional against work-aware splits, on a mixed node, in virtual time.

``gridtao bench work [--hold-s 60] [--gap-s 20] [--sheds 0.1,0.2,0.3] [--seed 0]
[--no-learned] [--json FILE]`` runs the same node through the same sheds per allocation
(docs/work.md):

* the node: 8 simulated H100s in this process (``gpus.sim.device: null``), 4 inference GPUs at
  loads 1.0, 0.75, 0.5 and 0.25 and 4 training GPUs (``gpus.sim.workloads``), the real safety
  island and tier 1 at 100 Hz, on a virtual clock (minutes of node time in seconds; repeated
  runs agree to within a few tenths of a point, not exactly: see worknode.py). Every run sees
  the very same arrivals (the workloads' streams do not depend on the limits), so the runs
  differ only by how tier 1 splits each cut;
* the sheds: each ``--sheds`` fraction of node power in turn (the island's ``shed``), at fixed
  times, held ``--hold-s`` seconds, released at the island's rate, then ``--gap-s`` of rest;
* the allocations: ``proportional``; ``work-aware`` with the prior curves of each GPU's kind
  (gridtao/gpu/sim/throughput.py); ``work-aware-learned`` (unless ``--no-learned``) with the
  curves the learned model (gridtao/work/model.py) fitted from the proportional run's 5 s
  windows of each work source's mean power, mean limit and work rate, as the agent's feeder
  would give them (the sources: each inference GPU its own server, the training GPUs one job).

The splits use their limits differently (on this bursty node a shed delivers more than it asks),
so each work-aware split runs twice: at the sequence's requests (``same_request``), and with its
requests moved until each hold delivers what the proportional split delivered
(``allocations``: the same delivered watts, within the calibration's miss; ``at_goal``: the work
lost at exactly the goal, interpolated between the runs nearest to it, compared as
``same_delivered_interpolated``).

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
from pathlib import Path
from typing import Any

from gridtao.bench.latency import run_info
from gridtao.bench.render import check_outputs
from gridtao.bench.worknode import MIXED_NODE, WARMUP_S, mixed_node_model, run_allocation
from gridtao.bench.workrecord import print_result
from gridtao.config.outputs import writing
from gridtao.work.model import prior_exponent

CALIBRATION_TOLERANCE = 0.01  # of the delivered watts to match
CALIBRATION_RUNS = 8
CIRCULARITY = ("work lost is computed with the simulator's throughput model, the same model "
               "whose curves tell work-aware what a watt is worth")


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
    out["at_goal"] = at_goals(runs, goals_w)
    return out


def at_goals(runs: Sequence[dict[str, Any]], goals_w: Sequence[float]) -> dict[str, Any]:
    """The work lost at exactly each shed's goal (W): per shed, interpolated linearly in the
    delivered watts between the two runs that came nearest to it from below and from above
    (``bracketed``), or the nearest run's where all fell on one side; ``delivered_w``: the mean
    over the sheds of the goal, or of that nearest run's delivered watts. Removes what is left
    of the calibration's miss from the comparison; a linear estimate between measured runs, not
    a run of its own."""
    lost: list[float] = []
    done: list[float] = []
    delivered: list[float] = []
    bracketed: list[bool] = []
    for k, goal in enumerate(goals_w):
        points = sorted((r["holds"][k]["delivered_w"], r["holds"][k]["work_lost_gpu_s"],
                         r["holds"][k]["work_done_gpu_s"]) for r in runs)
        lo = [p for p in points if p[0] <= goal]
        hi = [p for p in points if p[0] >= goal]
        if lo and hi and hi[0][0] > lo[-1][0]:
            (w0, l0, d0), (w1, l1, d1) = lo[-1], hi[0]
            t = (goal - w0) / (w1 - w0)
            lost.append(l0 + t * (l1 - l0))
            done.append(d0 + t * (d1 - d0))
            delivered.append(goal)
            bracketed.append(True)
        else:
            w0, l0, d0 = min(points, key=lambda p: abs(p[0] - goal))
            lost.append(l0)
            done.append(d0)
            delivered.append(w0)
            bracketed.append(bool(lo and hi))
    total_done = math.fsum(done)
    return {"work_lost_fraction": math.fsum(lost) / total_done if total_done > 0 else math.nan,
            "work_lost_gpu_s": lost, "bracketed": bracketed,
            "delivered_w": math.fsum(delivered) / len(delivered) if delivered else math.nan}


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
    model = mixed_node_model() if learned else None
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
            {"gpu": gpu, "source": c.name, "kind": c.kind, "simulator_exponent": c.prior,
             "fitted_exponent": None if c.fit is None else c.fit.exponent,
             "exponent_std": None if c.fit is None else c.fit.exponent_std,
             "log_residual_std": None if c.fit is None else c.fit.residual_std,
             "samples": c.samples, "used_prior": c.from_prior}
            for c in model.curves() for gpu in c.gpus]
    out["comparison"] = {
        name: {"same_delivered": _compare(prop, out["allocations"][name]),
               "same_delivered_interpolated": _compare(prop, out["allocations"][name]["at_goal"]),
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
    check_outputs(args, p)  # before the run, not after it
    result = run(sheds=sheds, hold_s=args.hold_s, gap_s=args.gap_s, seed=args.seed,
                 learned=not args.no_learned and not args.proportional_only,
                 aware=not args.proportional_only, warmup_s=args.warmup_s,
                 record=None if args.record is None else Path(args.record),
                 progress=lambda line: print(line, file=sys.stderr, flush=True))
    result |= run_info("gridtao.bench.work", argv)
    print_result(result, CIRCULARITY)
    if args.json:
        with writing(Path(args.json), "--json"):
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
