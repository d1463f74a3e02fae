"""Each product's TSO test sequence as plans the bench plays and the scorer reads.

A :class:`TestPlan` is a frequency shape (shapes.py, sine.py) and, for demand response, the
dispatches (:class:`DrPlan`). The same plans serve the bench (compliance.py), the report
(command.py) and the scoring of a recorded CSV (csvscore.py): a recording made on the same
product, test and options is read on the same marks. Nothing here imports the agent.

Times in s on the test's base (t = 0 at the first frequency sample), powers in W at the
settlement point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from gridtao.config.agent import Config, ProductConfig
from gridtao.config.kinds import KINDS
from gridtao.prequal import rearm, shapes, sine
from gridtao.prequal import scoring as sc
from gridtao.prequal.options import DEFAULT_CAPACITY_W, PRODUCTS
from gridtao.prequal.rules import DrWindow, ProductSpec

ERCOT_SUPPORT_S = 900.0


@dataclass(frozen=True)
class DrPlan:
    """A demand-response dispatch the bench sends at ``send_s``; times in s (trace base)."""

    event_id: str
    send_s: float
    start_s: float
    ramp_s: float
    duration_s: float
    recovery_s: float
    reduction_w: float
    interval_s: float = sc.DR_INTERVAL_S  # settlement interval, time-scaled


@dataclass(frozen=True)
class TestPlan:
    """One test of a product: a frequency shape and, for DR, the dispatches."""

    name: str
    shape: shapes.Shape
    dr: tuple[DrPlan, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.shape.duration_s


@dataclass(frozen=True)
class SineOptions:
    """How the FCR-N and FCR-D sine tests are shortened: None = the full sequence (sine.py)."""

    periods_s: tuple[float, ...] | None = None
    cycles: int | None = None


def product_config(config: Config, product: str, *, capacity_w: float | None,
                   time_scale: float, threshold_hz: float | None = None) -> ProductConfig:
    """The enrolled product: the configuration's own entry of that kind if it has one, else
    the kind's defaults; ``capacity_w`` and ``threshold_hz`` override. ERCOT's 15 min support,
    unless configured, is scaled by ``time_scale`` like the other long holds."""
    kind = PRODUCTS[product]
    found = next((p for p in config.products if p.kind == kind), None)
    cfg = found if found is not None else ProductConfig(
        kind=kind, capacity_w=capacity_w if capacity_w is not None else DEFAULT_CAPACITY_W)
    if capacity_w is not None:
        cfg = dataclasses.replace(cfg, capacity_w=capacity_w)
    if threshold_hz is not None:
        cfg = dataclasses.replace(cfg, threshold_hz=threshold_hz)
    if kind == "ercot-ffr" and cfg.support_s is None:
        cfg = dataclasses.replace(cfg, support_s=max(5.0, ERCOT_SUPPORT_S * time_scale))
    if kind == "ffr":  # the re-arm test waits it out: a hold like the others (rearm.py)
        cfg = dataclasses.replace(cfg, rearm_s=rearm_scaled(cfg.rearm_s, time_scale))
    return cfg


def rearm_times(config: Config, pcfg: ProductConfig) -> tuple[float, float]:
    """FFR's re-arm time as enrolled for the test (shortened, ``pcfg``) and as configured (the
    configuration's own entry, else the default), s: what the re-arm test waits and states."""
    found = next((p for p in config.products if p.kind == pcfg.kind), None)
    return pcfg.rearm_s, (found or ProductConfig(kind=pcfg.kind, capacity_w=1.0)).rearm_s


def support_times(config: Config, pcfg: ProductConfig) -> tuple[float, float] | None:
    """ERCOT FFR's support duration as enrolled for the test (``pcfg``: shortened by the time
    scale unless configured) and as enrolled (the configuration's own, else ERCOT's 15 min),
    s; None for a product with no configurable support duration."""
    if pcfg.kind != "ercot-ffr" or pcfg.support_s is None:
        return None
    found = next((p for p in config.products if p.kind == pcfg.kind), None)
    own = found.support_s if found is not None and found.support_s is not None else None
    return pcfg.support_s, own if own is not None else ERCOT_SUPPORT_S


def product_fields(config: Config, pcfg: ProductConfig) -> dict[str, object]:
    """The enrolled product as a report states it: the keys its kind reads (set ones only),
    ``rearm_s`` and ERCOT's ``support_s`` as enrolled, and, where the test shortened them,
    ``rearm_s_tested`` (what the re-arm test waited) and ``support_s_tested``."""
    fields = dataclasses.asdict(pcfg)
    out = {k: fields[k] for k in KINDS[pcfg.kind].config_keys if fields[k] is not None}
    if "rearm_s" in out:
        tested, configured = rearm_times(config, pcfg)
        out["rearm_s"] = configured
        if tested != configured:
            out["rearm_s_tested"] = tested
    support = support_times(config, pcfg)
    if support is not None:
        tested, configured = support
        out["support_s"] = configured
        if tested != configured:
            out["support_s_tested"] = tested
    return out


def rearm_scaled(rearm_s: float, time_scale: float) -> float:
    """FFR's re-arm time under the time scale (s), at least 10 s (never more than given)."""
    return min(rearm_s, max(10.0, rearm_s * time_scale))


def spec_of(cfg: ProductConfig) -> ProductSpec:
    """What the scorer holds the product to (the TSO's limits, gridtao/prequal/rules.py)."""
    if cfg.kind == "ffr":
        hz = cfg.threshold_hz if cfg.threshold_hz is not None else 49.7
        return ProductSpec("ffr", cfg.capacity_w, hz, 5.0 if cfg.support == "short" else 30.0,
                           cfg.support == "short")
    if cfg.kind == "ercot-ffr":
        hz = cfg.threshold_hz if cfg.threshold_hz is not None else 59.85
        support = cfg.support_s if cfg.support_s is not None else ERCOT_SUPPORT_S
        return ProductSpec("ercot-ffr", cfg.capacity_w, hz, support, False)
    if cfg.kind == "fcr-d-up-static":
        hz = cfg.threshold_hz if cfg.threshold_hz is not None else 49.7
        return ProductSpec(cfg.kind, cfg.capacity_w, hz)
    return ProductSpec(cfg.kind, cfg.capacity_w)


def test_plans(product: str, spec: ProductSpec, time_scale: float,
               sines: SineOptions | None = None, *,
               rearm_s: tuple[float, float] | None = None) -> list[TestPlan]:
    """The product's full test sequence (prequalification); the first is the bench's default.
    ``time_scale`` shortens long holds (never a ramp rate or a sine period; normal frequency
    runs at least ten correlation times, 300 s); ``sines`` shortens the FCR-N and FCR-D sine
    tests; ``rearm_s``: FFR's re-arm time as enrolled for the test and the product's own (s;
    default: 900 s shortened by the time scale)."""
    opts = sines or SineOptions()
    if product == "ffr":
        full = rearm_s[1] if rearm_s is not None else 900.0
        wait = rearm_s[0] if rearm_s is not None else rearm_scaled(full, time_scale)
        return [TestPlan(f"step-{spec.threshold_hz:g}Hz", shapes.ffr_step(spec.threshold_hz)),
                TestPlan("large-trip", shapes.large_trip(spec.threshold_hz)),
                TestPlan("normal", shapes.normal_frequency(
                    max(20.0, 600.0 * time_scale), threshold_hz=spec.threshold_hz)),
                TestPlan("rearm", rearm.ffr_rearm(spec.threshold_hz, support_s=spec.support_s,
                                                  rearm_s=wait, full_rearm_s=full))]
    if product == "ercot-ffr":
        shape = shapes.ercot_step(threshold_hz=spec.threshold_hz, support_s=spec.support_s)
        if spec.support_s < ERCOT_SUPPORT_S:
            shape = dataclasses.replace(shape, shortened=(
                f"support: {spec.support_s:g} s of the {ERCOT_SUPPORT_S:g} s deployment",))
        return [TestPlan(f"step-{spec.threshold_hz:g}Hz", shape)]
    if product == "fcr-d-up":
        return [TestPlan("ramps", shapes.fcr_d_ramps(time_scale)),
                TestPlan("sines", sine.fcr_d_sine_shape(
                    opts.periods_s or sine.FCR_D_SINE_PERIODS_S, opts.cycles)),
                TestPlan("rearm", rearm.fcr_d_rearm(time_scale))]
    if product == "fcr-d-up-static":
        return [TestPlan("static", shapes.fcr_d_static(time_scale, spec.threshold_hz)),
                TestPlan("rearm", rearm.fcr_d_static_rearm(time_scale, spec.threshold_hz))]
    if product == "fcr-n":
        return [TestPlan("steps", shapes.fcr_n_steps(time_scale)),
                TestPlan("sines", sine.sine_shape(opts.periods_s or sine.SINE_PERIODS_S,
                                                  opts.cycles))]
    if product == "dr":
        return [dr_plan(spec.capacity_w, time_scale)]
    raise ValueError(f"unknown product {product!r} (choose from {', '.join(PRODUCTS)})")


def dr_plan(capacity_w: float, time_scale: float) -> TestPlan:
    """Two events queued at once, resolved in order: the full capacity (ramp 60 s, hold 300 s,
    recovery 120 s, scaled) announced 4 s ahead, then half of it (ramp 60 s, hold 200 s,
    recovery 60 s) 4 s after the first has recovered. Settlement intervals are scaled too."""
    s = time_scale
    lead = shapes.LEAD_S
    interval = max(sc.SMOOTH_S, sc.DR_INTERVAL_S * s)
    a = DrPlan("dr-a", lead, lead + 4.0 + max(1.0, 60 * s), max(1.0, 60 * s),
               max(5.0, 300 * s), max(2.0, 120 * s), capacity_w, interval)
    b_start = a.start_s + a.duration_s + a.recovery_s + 4.0 + max(1.0, 60 * s)
    b = DrPlan("dr-b", lead + 1.5, b_start, max(1.0, 60 * s), max(5.0, 200 * s),
               max(2.0, 60 * s), capacity_w / 2, interval)
    end = b.start_s + b.duration_s + b.recovery_s + 4.0
    shape = shapes.constant(end)
    shortened = tuple(
        f"{d.event_id}: ramp {d.ramp_s:g} s, hold {d.duration_s:g} s, recovery "
        f"{d.recovery_s:g} s of {full[0]:g} / {full[1]:g} / {full[2]:g} s"
        for d, full in ((a, (60, 300, 120)), (b, (60, 200, 60))) if s < 1.0)
    if interval < sc.DR_INTERVAL_S:
        shortened += (f"settlement interval {interval:g} s of {sc.DR_INTERVAL_S:g} s",)
    title = ("two demand-response dispatches queued at once: dr-a the full capacity, then "
             "dr-b half (the frequency stays at nominal)")
    return TestPlan("events", dataclasses.replace(shape, shortened=shortened, title=title),
                    (a, b))


def dr_windows(plans: Sequence[DrPlan]) -> list[DrWindow]:
    return [DrWindow(p.event_id, p.start_s, p.ramp_s, p.duration_s, p.recovery_s, p.reduction_w,
                     p.interval_s) for p in plans]
