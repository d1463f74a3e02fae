"""Scoring a compliance recording, and what the bench writes: CSV, JSON, a TSO-style PNG.

CSV columns (one row per recorder sample, 20 Hz; the README's "Compliance bench" section):
``t_s`` (s from the first frequency sample), ``hz`` (frequency last sent to the agent),
``required_w`` (what the product requires, W at the settlement point), ``delivered_w`` (the
reference minus the settlement power: the measured reduction), ``delivered_it_w`` (the same at
the GPUs), ``meter_w`` (modelled facility meter), ``it_w`` (sum of the GPUs' instant power),
``it_target_w`` (the node IT target the island held, empty when none), ``limit_w`` (the
GPUs' summed enforced limits), ``natural_it_w`` (simulated GPUs only, else empty: what their
workloads demanded, the draw the node would have had uncut), ``gpu<i>_w`` (each GPU's instant
power).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gridtao.config.agent import Config
from gridtao.prequal import rearm, sine
from gridtao.prequal import rules as pr
from gridtao.prequal.compliance import Measured, Reference, settlement_w
from gridtao.prequal.plans import TestPlan, dr_windows
from gridtao.prequal.rules import ProductSpec
from gridtao.prequal.scoring import RuleResult, Trace, passed


@dataclass(frozen=True)
class TestResult:
    """One scored test."""

    name: str
    title: str
    trace: Trace
    measured: Measured | None  # None: scored from a recorded CSV (csvscore.py)
    rules: list[RuleResult]
    event_s: float | None
    gpu_errors: Mapping[str, int] = field(default_factory=dict)  # "gpu 0: GpuLost" -> count
    plan: TestPlan | None = None
    capacity_w: float = 0.0  # the product's (W at the settlement point)

    @property
    def passed(self) -> bool:
        return passed(self.rules)

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"name": self.name, "title": self.title,
                                   "passed": self.passed,
                                   "rules": [r.to_json() for r in self.rules]}
        if self.plan is not None and self.plan.shape.shortened:
            body["shortened"] = list(self.plan.shape.shortened)
        if self.plan is not None and self.plan.shape.sines:
            body["sines"] = [dataclasses.asdict(p) for p in sine.points(
                self.trace, self.plan.shape.sines, self.capacity_w)]
        if self.measured is None:
            return body
        refs = self.measured.references
        return body | {"reference_w": round(self.measured.reference_w, 1),
                       "reference_it_w": round(self.measured.reference_it_w, 1),
                       **({"references": [_reference_json(r) for r in refs]}
                          if len(refs) > 1 else {}),
                       "gpu_errors": dict(self.gpu_errors),
                       **publish_stats(self.measured.late_s)}


def _reference_json(ref: Reference) -> dict[str, float | None]:
    start = None if ref.applies_from_s == float("-inf") else round(ref.applies_from_s, 3)
    return {"from_s": start, "w": round(ref.w, 1), "it_w": round(ref.it_w, 1)}


def score_test(spec: ProductSpec, plan: TestPlan, m: Measured, config: Config) -> TestResult:
    """Requirement and rules for one recorded test (gridtao/prequal/rules.py)."""
    keep = [j for j, t in enumerate(m.t_s) if 0.0 <= t <= plan.shape.duration_s]
    settle = settlement_w(m, config)
    refs = [m.reference_at(m.t_s[j]) for j in keep]
    res = score_samples(spec, plan, [m.t_s[j] for j in keep], [m.hz[j] for j in keep],
                        [r.w - settle[j] for r, j in zip(refs, keep, strict=True)],
                        [r.it_w - m.it_w[j] for r, j in zip(refs, keep, strict=True)],
                        [m.limit_w[j] for j in keep])
    return dataclasses.replace(res, measured=m)


def score_samples(spec: ProductSpec, plan: TestPlan, t: Sequence[float], hz: Sequence[float],
                  delivered: Sequence[float], delivered_it: Sequence[float],
                  limit_w: Sequence[float] | None) -> TestResult:
    """The rules for one test from its samples on the plan's time base: times (s), the
    frequency the unit was sent (Hz), the delivered reduction at the settlement point and at
    the GPUs (W) and, for normal frequency, the summed enforced limits (W). The requirement
    is computed here from the frequency and the plan, never taken from a recording."""
    shape = plan.shape
    marks = shape.marks
    lead = marks.get("lead_end", 0.0)
    event = marks.get("event")
    if rearm.is_rearm(shape):
        both, scored = rearm.score_rearm(spec, shape, t, hz, delivered, delivered_it)
        first = event if event is not None else marks.get("step", marks.get("dynamic"))
        return TestResult(plan.name, shape.title, both, None, scored, first, plan=plan,
                          capacity_w=spec.capacity_w)
    if spec.kind in ("ffr", "ercot-ffr"):
        if event is not None:  # the requirement follows the frequency the recording shows
            pr.check_step_crossing(t, hz, spec, event, plan.name)
        required = pr.required_step(t, spec, event)
    elif spec.kind == "fcr-d-up":
        required = [pr.required_fcr_d(f, spec.capacity_w) for f in hz]
    elif spec.kind == "fcr-d-up-static":
        required = pr.required_static(t, hz, spec)
        event = marks.get("step")
    elif spec.kind == "fcr-n":
        required = [pr.required_fcr_n(f, spec.capacity_w) for f in hz]
    else:
        required = pr.required_dr(t, dr_windows(plan.dr))
    tr = Trace(list(t), list(hz), required, list(delivered), list(delivered_it))
    rules: list[RuleResult]
    if spec.kind in ("ffr", "ercot-ffr"):
        if event is None:
            if limit_w is None:
                raise ValueError("a normal-frequency test is judged from the summed enforced "
                                 "limits: the recording has no limit_w")
            pr.check_glitches(t, hz, spec, shape.glitches, plan.name)
            rules = pr.score_quiet(spec, tr, limit_w, after_s=lead)
        else:
            rules = pr.score_step(spec, tr, event_s=event)
    elif spec.kind == "fcr-d-up" and shape.sines:
        rules = sine.score_fcr_d_sines(tr, shape.sines, spec.capacity_w)
    elif spec.kind == "fcr-d-up":
        long_hold = None
        if "ramp_0_24" in marks and "hold_49_5_end" in marks:
            long_hold = (marks["ramp_0_24"], marks["hold_49_5_end"])
        rules = pr.score_fcr_d(spec, tr, holds=shape.holds, dynamic_s=marks.get("dynamic"),
                               long_hold=long_hold, after_s=lead)
    elif spec.kind == "fcr-d-up-static":
        rules = pr.score_static(spec, tr, event_s=marks["step"])
    elif spec.kind == "fcr-n" and shape.sines:
        rules = sine.score_sines(tr, shape.sines, spec.capacity_w)
    elif spec.kind == "fcr-n":
        rules = pr.score_fcr_n(spec, tr, holds=shape.holds, after_s=lead)
    else:
        rules = pr.score_dr(tr, dr_windows(plan.dr))
    return TestResult(plan.name, shape.title, tr, None, rules, event, plan=plan,
                      capacity_w=spec.capacity_w)


def write_csv(result: TestResult, path: Path) -> None:
    m, tr = result.measured, result.trace
    if m is None:
        raise ValueError(f"{result.name}: nothing recorded to write")
    first = m.t_s.index(tr.t_s[0])
    gpus = len(m.gpu_w[0]) if m.gpu_w else 0
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "hz", "required_w", "delivered_w", "delivered_it_w", "meter_w",
                    "it_w", "it_target_w", "limit_w", "natural_it_w", "reference_w",
                    *[f"gpu{i}_w" for i in range(gpus)]])
        for k in range(len(tr.t_s)):
            j = first + k
            target = m.target_w[j]
            w.writerow([f"{tr.t_s[k]:.3f}", f"{tr.hz[k]:.4f}", f"{tr.required_w[k]:.1f}",
                        f"{tr.delivered_w[k]:.1f}", f"{tr.delivered_it_w[k]:.1f}",
                        f"{m.meter_w[j]:.1f}", f"{m.it_w[j]:.1f}",
                        "" if target is None else f"{target:.1f}", f"{m.limit_w[j]:.1f}",
                        "" if m.natural_it_w is None else f"{m.natural_it_w[j]:.1f}",
                        f"{m.reference_at(tr.t_s[k]).w:.1f}",
                        *[f"{g:.1f}" for g in m.gpu_w[j]]])


def plot(result: TestResult, path: Path, *, product: str, capacity_w: float,
         simulated: bool = False, time_scale: float | None = None) -> list[Path]:
    """The TSO-style test plot at ``path`` (figures.py) and, for a sine test, its Bode plot
    beside it (``<stem>-bode.png``); returns the paths written."""
    from gridtao.prequal import figures

    figures.plot_test(result, path, product=product, capacity_w=capacity_w,
                      simulated=simulated, time_scale=time_scale)
    written = [path]
    if result.plan is not None and result.plan.shape.sines:
        found = sine.points(result.trace, result.plan.shape.sines, capacity_w)
        if found:
            bode = bode_path(path)
            figures.plot_bode(found, bode, title=f"{product} / {result.name}: Bode",
                              simulated=simulated)
            written.append(bode)
    return written


def bode_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-bode{path.suffix}")


def summary_json(product: str, results: Sequence[TestResult], **extra: object) -> dict[str, object]:
    """``product``, ``passed`` and ``rules`` ({name, value, limit, passed, ...}); with more
    than one test, rule names are prefixed ``<test>/``."""
    rules: list[dict[str, object]] = []
    for res in results:
        for r in res.rules:
            item = r.to_json()
            if len(results) > 1:
                item["name"] = f"{res.name}/{r.name}"
            rules.append(item)
    ok = bool(results) and all(res.passed for res in results)
    return {"product": product, "passed": ok, "rules": rules,
            "tests": [res.to_json() for res in results], **extra}


def text_report(product: str, results: Sequence[TestResult]) -> str:
    lines = []
    for res in results:
        lines.append(f"{product} / {res.name} ({res.title}): "
                     f"{'PASS' if res.passed else 'FAIL'}")
        lines.extend(f"  {r.describe()}" + (f"  [{r.detail}]" if r.detail else "")
                     for r in res.rules)
        if res.gpu_errors:
            lines.append("  GPU errors: " + ", ".join(
                f"{k} ({n}x)" for k, n in sorted(res.gpu_errors.items())))
    return "\n".join(lines)


def publish_stats(late_s: Sequence[float]) -> dict[str, float]:
    """How late the frequency samples went out, ms (p50, max)."""
    if not late_s:
        return {}
    ordered = sorted(late_s)
    return {"publish_late_p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
            "publish_late_max_ms": round(1000 * ordered[-1], 2)}

