"""Scoring a compliance recording, and what the bench writes: CSV, JSON, a TSO-style PNG.

CSV columns (one row per recorder sample, 20 Hz; the README's "Compliance bench" section):
``t_s`` (s from the first frequency sample), ``hz`` (frequency last sent to the agent),
``required_w`` (what the product requires, W at the settlement point), ``delivered_w`` (the
reference minus the settlement power: the measured reduction), ``delivered_it_w`` (the same at
the GPUs), ``meter_w`` (modelled facility meter), ``it_w`` (sum of the GPUs' instant power),
``it_target_w`` (the node IT target the island held, empty when none), ``gpu<i>_w`` (each GPU's
instant power).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gridtao.config.agent import Config
from gridtao.prequal import rules as pr
from gridtao.prequal.compliance import Measured, TestPlan, dr_windows, settlement_w
from gridtao.prequal.rules import ProductSpec
from gridtao.prequal.scoring import RuleResult, Trace, passed
from gridtao.telemetry.plotting import pyplot


@dataclass(frozen=True)
class TestResult:
    """One scored test."""

    name: str
    title: str
    trace: Trace
    measured: Measured
    rules: list[RuleResult]
    event_s: float | None
    gpu_errors: Mapping[str, int] = field(default_factory=dict)  # "gpu 0: GpuLost" -> count

    @property
    def passed(self) -> bool:
        return passed(self.rules)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "title": self.title, "passed": self.passed,
                "rules": [r.to_json() for r in self.rules],
                "reference_w": round(self.measured.reference_w, 1),
                "reference_it_w": round(self.measured.reference_it_w, 1),
                "gpu_errors": dict(self.gpu_errors),
                **publish_stats(self.measured.late_s)}


def score_test(spec: ProductSpec, plan: TestPlan, m: Measured, config: Config) -> TestResult:
    """Requirement and rules for one recorded test (gridtao/prequal/rules.py)."""
    shape = plan.shape
    keep = [j for j, t in enumerate(m.t_s) if 0.0 <= t <= shape.duration_s]
    t = [m.t_s[j] for j in keep]
    hz = [m.hz[j] for j in keep]
    settle = settlement_w(m, config)
    delivered = [m.reference_w - settle[j] for j in keep]
    delivered_it = [m.reference_it_w - m.it_w[j] for j in keep]
    marks = shape.marks
    lead = marks.get("lead_end", 0.0)
    event = marks.get("event")
    if spec.kind in ("ffr", "ercot-ffr"):
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
    tr = Trace(t, hz, required, delivered, delivered_it)
    rules: list[RuleResult]
    if spec.kind in ("ffr", "ercot-ffr"):
        rules = (pr.score_quiet(spec, tr, [m.limit_w[j] for j in keep], after_s=lead)
                 if event is None
                 else pr.score_step(spec, tr, event_s=event))
    elif spec.kind == "fcr-d-up":
        long_hold = None
        if "ramp_0_24" in marks and "hold_49_5_end" in marks:
            long_hold = (marks["ramp_0_24"], marks["hold_49_5_end"])
        rules = pr.score_fcr_d(spec, tr, holds=shape.holds, dynamic_s=marks.get("dynamic"),
                               long_hold=long_hold, after_s=lead)
    elif spec.kind == "fcr-d-up-static":
        rules = pr.score_static(spec, tr, event_s=marks["step"])
    elif spec.kind == "fcr-n":
        rules = pr.score_fcr_n(spec, tr, holds=shape.holds, after_s=lead)
    else:
        rules = pr.score_dr(tr, dr_windows(plan.dr))
    return TestResult(plan.name, shape.title, tr, m, rules, event)


def write_csv(result: TestResult, path: Path) -> None:
    m, tr = result.measured, result.trace
    first = m.t_s.index(tr.t_s[0])
    gpus = len(m.gpu_w[0]) if m.gpu_w else 0
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "hz", "required_w", "delivered_w", "delivered_it_w", "meter_w",
                    "it_w", "it_target_w", "limit_w", *[f"gpu{i}_w" for i in range(gpus)]])
        for k in range(len(tr.t_s)):
            j = first + k
            target = m.target_w[j]
            w.writerow([f"{tr.t_s[k]:.3f}", f"{tr.hz[k]:.4f}", f"{tr.required_w[k]:.1f}",
                        f"{tr.delivered_w[k]:.1f}", f"{tr.delivered_it_w[k]:.1f}",
                        f"{m.meter_w[j]:.1f}", f"{m.it_w[j]:.1f}",
                        "" if target is None else f"{target:.1f}", f"{m.limit_w[j]:.1f}",
                        *[f"{g:.1f}" for g in m.gpu_w[j]]])


def plot(result: TestResult, path: Path, *, product: str, capacity_w: float) -> None:
    """Frequency on the right axis, required and delivered reduction on the left (a TSO
    test-report layout), the verdict and the failed rules in the title."""
    plt = pyplot()

    tr = result.trace
    fig, ax = plt.subplots(figsize=(11, 5.5))
    ax.plot(tr.t_s, tr.required_w, color="black", lw=1.5, ls="--", label="required")
    ax.plot(tr.t_s, tr.delivered_w, color="tab:blue", lw=1.0, label="delivered (meter)")
    ax.plot(tr.t_s, tr.delivered_it_w, color="tab:green", lw=0.7, alpha=0.7,
            label="delivered (IT)")
    lo = min(0.0, min(tr.required_w)) - 0.05 * capacity_w
    for band in (0.95, 1.2):
        ax.axhline(band * capacity_w, color="grey", lw=0.5, ls=":")
    if result.event_s is not None:
        ax.axvline(result.event_s, color="tab:red", lw=0.8, ls=":", label="event")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("power reduction (W)")
    ax.set_ylim(lo, max(max(tr.delivered_w), 1.3 * capacity_w))
    fx = ax.twinx()
    fx.plot(tr.t_s, tr.hz, color="tab:orange", lw=1.0, label="frequency sent")
    fx.set_ylabel("frequency (Hz)")
    lines = ax.get_legend_handles_labels()
    flines = fx.get_legend_handles_labels()
    ax.legend(lines[0] + flines[0], lines[1] + flines[1], loc="lower right", fontsize=8)
    failed = [r.name for r in result.rules if not r.passed]
    verdict = "PASS" if result.passed else "FAIL: " + ", ".join(failed)
    ax.set_title(f"{product} / {result.name}: {result.title}\n{verdict}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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

