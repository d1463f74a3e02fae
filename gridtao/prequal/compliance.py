"""Compliance bench (``gridtao bench compliance``): a real agent, a real broker, the TSO's tests.

For one product it starts Mosquitto on a free loopback port and, per test, a fresh agent
in-process (simulated GPUs in real time, or the real ones for ``gridtao prequalify --backend
nvml``) enrolled in that product only. It then plays the grid: publishes the test's frequency
samples on ``{prefix}/frequency`` at 10 Hz (shapes.py) or demand-response dispatches on
``{prefix}/dispatch``, while a recorder logs per-GPU instant power through NVML (the operator's
path) at 20 Hz. Afterwards it models the facility meter from the measured IT power (the node
cannot see the site meter: gridtao/control/tier2/facility.py's plant, with ``facility.*`` from the
configuration), computes what the product required from the frequency actually sent, and
scores every rule (rules.py, scoring.py).

Time base: t = 0 is the first frequency sample; samples before it (agent start) are negative.
Marks (steps, crossings) are the planned times: publishing late counts against the agent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gridtao.app.agent import Agent, AgentOptions
from gridtao.app.serve import serving
from gridtao.clock import MonotonicClock
from gridtao.config.agent import Config, ProductConfig
from gridtao.control.tier2.facility import Facility, FacilityModel
from gridtao.gpu.backend import GpuBackend
from gridtao.prequal import rearm
from gridtao.prequal.options import DEFAULT_TIME_SCALE, on_named_backend
from gridtao.prequal.plans import (
    DrPlan,
    SineOptions,
    TestPlan,
    dr_plan,
    dr_windows,
    product_config,
    product_fields,
    rearm_times,
    spec_of,
    test_plans,
)
from gridtao.transport.localbroker import MosquittoBroker, Publisher

log = logging.getLogger("gridtao.prequal")

# The plans live in plans.py (no agent imported there); named here as well for callers.
__all__ = ["DrPlan", "Measured", "Recording", "Reference", "SineOptions", "TestPlan", "dr_plan",
           "dr_windows", "measure", "product_config", "product_fields", "rearm_times",
           "run_product", "run_test", "settlement_w", "spec_of", "test_plans"]

RECORD_HZ = 20.0
# The modelled meter's cooling starts settled at the mean IT draw over the recording's first
# seconds (s): the agent cuts nothing before its first natural-draw window is full, and on a
# training load one second's mean is off the draw cooling has settled on by up to ~100 W.
PLANT_SEED_S = 4.0
PREFIX, NODE = "gridtao/compliance", "compliance"


@dataclass
class Recording:
    """What one test produced: samples (recorder) and what was sent (publisher)."""

    t_s: list[float] = field(default_factory=list)
    gpu_w: list[tuple[float, ...]] = field(default_factory=list)
    limit_w: list[float] = field(default_factory=list)  # summed enforced limits, read via NVML
    # Simulated GPUs only: their workloads' summed demand (W), what the node would draw uncut.
    natural_w: list[float] = field(default_factory=list)
    target_w: list[float | None] = field(default_factory=list)
    sent: list[tuple[float, float]] = field(default_factory=list)  # (t_s actually sent, hz)
    dispatched: list[tuple[float, str]] = field(default_factory=list)
    late_s: list[float] = field(default_factory=list)  # publish time - planned time
    tier2: dict[str, object] = field(default_factory=dict)  # tier 2's state at the end
    # GPU errors the agent counted during the test ("gpu 0: GpuNotSupported" -> count): limit
    # writes the driver refused, reads that failed. A report must say so beside the verdict.
    gpu_errors: dict[str, int] = field(default_factory=dict)


# ---- running a test -------------------------------------------------------------------------


def agent_config(config: Config, product: ProductConfig, port: int) -> Config:
    """The agent's configuration for a test: the caller's, on the bench broker, enrolled in
    ``product`` only (no raw safety.triggers), unsigned messages (the bench is the grid), no
    metrics server, journal, audit trail or minute history (a bench run must not touch the
    operator's state).
    Simulated GPUs are the test's own (``gpus.sim.device`` null), never the machine-wide
    simulated device that other agents on the machine may be driving at the same time."""
    named = on_named_backend(config)  # auto means simulated here: real GPUs only when named
    named = dataclasses.replace(named, gpus=dataclasses.replace(
        named.gpus, sim=dataclasses.replace(named.gpus.sim, device=None)))
    return dataclasses.replace(
        named,
        mqtt=dataclasses.replace(config.mqtt, host="127.0.0.1", port=port, prefix=PREFIX,
                                 node_id=NODE),
        metrics=dataclasses.replace(config.metrics, enabled=False),
        safety=dataclasses.replace(config.safety, triggers=()),
        products=(product,),
        auth=dataclasses.replace(config.auth, mode="none", keys=()),
        journal=dataclasses.replace(config.journal, enabled=False),
        audit=dataclasses.replace(config.audit, enabled=False),
        history=dataclasses.replace(config.history, enabled=False),
    )


class _Recorder(threading.Thread):
    """Per-GPU instant power and the enforced limits through the agent's backend (NVML, what an
    operator can read) at ``RECORD_HZ`` (>= 10 Hz); with ``natural`` (simulated GPUs), the
    workloads' summed demand too (W)."""

    def __init__(self, agent: Agent, rec: Recording,
                 natural: Callable[[], float] | None = None) -> None:
        super().__init__(name="compliance-recorder", daemon=True)
        self._agent, self._rec = agent, rec
        self._natural = natural
        self._halt = threading.Event()

    def run(self) -> None:
        backend = self._agent.backend
        indices = [d.index for d in backend.devices()]
        period = 1.0 / RECORD_HZ
        next_t = time.monotonic()
        while not self._halt.is_set():
            now = time.monotonic()
            gpus = tuple(backend.instant_power_mw(i) / 1000.0 for i in indices)
            limits = math.fsum(backend.enforced_limit_mw(i) for i in indices) / 1000.0
            view = self._agent.island.view()
            target = view.target_mw if view.target_mw is not None else view.commitment_mw
            self._rec.t_s.append(now)  # monotonic; made relative to t = 0 after the run
            self._rec.gpu_w.append(gpus)
            self._rec.limit_w.append(limits)
            self._rec.target_w.append(None if target is None else target / 1000.0)
            if self._natural is not None:
                self._rec.natural_w.append(self._natural())
            next_t += period
            self._halt.wait(max(0.0, next_t - time.monotonic()))

    def halt(self) -> None:
        self._halt.set()
        self.join(5.0)


def run_test(
    config: Config, product: ProductConfig, plan: TestPlan, broker: MosquittoBroker, *,
    backend: GpuBackend | None = None, progress: Callable[[str], None] | None = None,
    steady_fraction: float | None = None,
) -> Recording:
    """Run one test against a fresh agent (closed and limits restored at the end).

    ``backend``: the GPUs (default: simulated from ``config.gpus.sim`` in real time).
    ``steady_fraction``: simulated GPUs only: every GPU demands this fraction of its default
    limit all along instead of running ``gpus.sim.workload`` (a steady test load)."""
    cfg = agent_config(config, product, broker.port)
    clock = MonotonicClock()
    natural: Callable[[], float] | None = None
    if backend is None and cfg.gpus.backend == "sim":
        from gridtao.gpu.nvml import NvmlBackend
        from gridtao.gpu.sim.nvml import SimNvml

        sim = SimNvml.from_config(cfg.gpus.sim, clock)
        backend = NvmlBackend(sim)
        if steady_fraction is not None:
            for d in backend.devices():
                watts = steady_fraction * backend.power_limits(d.index).default_mw / 1000.0
                sim.set_demand_w(d.index, watts)
        count = sim.count

        def natural() -> float:
            return math.fsum(sim.demand_w(i) for i in range(count))
    elif steady_fraction is not None:
        raise ValueError("a steady test load needs simulated GPUs")
    agent = Agent(cfg, clock=clock, backend=backend, options=AgentOptions(serve_metrics=False))
    rec = Recording()
    recorder = _Recorder(agent, rec, natural)
    t0 = time.monotonic()
    say = progress or (lambda _line: None)
    try:
        agent.start()
        # The controller loop (status, tier 2) on its own event loop.
        with serving(agent, name="compliance-controller"):
            recorder.start()
            try:
                with Publisher(broker.host, broker.port) as pub:
                    time.sleep(0.3)  # the lane's subscription is in place once start() returned
                    t0 = time.monotonic() + 0.2
                    _play(plan, pub, agent, rec, t0, say)
                rec.tier2 = agent.tier2.snapshot()
            finally:
                recorder.halt()
    finally:
        rec.gpu_errors = _gpu_errors(agent)
        agent.close()
    rec.t_s = [t - t0 for t in rec.t_s]
    return rec


def _gpu_errors(agent: Agent) -> dict[str, int]:
    """The agent's ``gridtao_gpu_errors_total``, by GPU and kind (nonzero only)."""
    out: dict[str, int] = {}
    for metric in agent.registry.collect():
        if metric.name != "gridtao_gpu_errors":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value > 0:
                key = f"gpu {sample.labels['gpu']}: {sample.labels['kind']}"
                out[key] = out.get(key, 0) + int(sample.value)
    return out


def _play(plan: TestPlan, pub: Publisher, agent: Agent, rec: Recording, t0: float,
          say: Callable[[str], None]) -> None:
    shape = plan.shape
    pending = sorted(plan.dr, key=lambda d: d.send_s)
    topic_f, topic_d = agent.topics.frequency, agent.topics.dispatch
    say(f"{plan.name}: {shape.title}, {shape.duration_s:.0f} s")
    next_report = 10.0
    for k, hz in enumerate(shape.hz):
        planned = k * shape.dt_s
        delay = t0 + planned - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        while pending and pending[0].send_s <= planned:
            d = pending.pop(0)
            wall = time.time()
            body = {"id": d.event_id, "kind": "dr", "issued_at": wall,
                    "start_at": wall + (d.start_s - planned), "ramp_s": d.ramp_s,
                    "duration_s": d.duration_s, "recovery_s": d.recovery_s,
                    "reduction_w": d.reduction_w}
            pub.send(topic_d, json.dumps(body).encode(), qos=1)
            rec.dispatched.append((time.monotonic() - t0, d.event_id))
        pub.send(topic_f, json.dumps({"t": time.time(), "hz": round(hz, 4)}).encode(), qos=0)
        now = time.monotonic() - t0
        rec.sent.append((now, hz))
        rec.late_s.append(now - planned)
        if planned >= next_report:
            say(f"  t = {planned:5.1f} s  f = {hz:.3f} Hz")
            next_report += 10.0


def run_product(
    config: Config, product: str, *, tests: Sequence[TestPlan] | None = None,
    capacity_w: float | None = None, time_scale: float | None = None,
    threshold_hz: float | None = None, progress: Callable[[str], None] | None = None,
    steady_fraction: float | None = None,
) -> tuple[ProductConfig, list[tuple[TestPlan, Recording]]]:
    """Run ``tests`` (default: the product's primary test) over one broker, each against a
    fresh agent on ``config.gpus`` (simulated, or real GPUs with ``gpus.backend: nvml``)."""
    scale = time_scale if time_scale is not None else DEFAULT_TIME_SCALE[product]
    pcfg = product_config(config, product, capacity_w=capacity_w, time_scale=scale,
                          threshold_hz=threshold_hz)
    plans = list(tests) if tests is not None else test_plans(product, spec_of(pcfg), scale)[:1]
    out = []
    with tempfile.TemporaryDirectory(prefix="gridtao-compliance-") as tmp, \
            MosquittoBroker(Path(tmp)) as broker:
        for plan in plans:
            out.append((plan, run_test(config, pcfg, plan, broker, progress=progress,
                                       steady_fraction=steady_fraction)))
    return pcfg, out


# ---- from a recording to a scored trace ------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A reference power (W) and the time it counts from (s, the test's base): at the GPUs
    (``it_w``) and at the settlement point (``w``)."""

    applies_from_s: float
    it_w: float
    w: float


@dataclass(frozen=True)
class Measured:
    """A recording on the trace's time base, with the modelled meter (powers in W) and the
    references the delivered reduction is measured from: one per activation, in time order
    (a re-arm test has two; see gridtao/prequal/rearm.py)."""

    t_s: list[float]
    hz: list[float]
    it_w: list[float]
    meter_w: list[float]
    gpu_w: list[tuple[float, ...]]
    limit_w: list[float]  # summed enforced limits
    target_w: list[float | None]
    natural_it_w: list[float] | None  # simulated GPUs: the workloads' summed demand
    references: tuple[Reference, ...]
    late_s: list[float]  # how late each frequency sample went out, s

    @property
    def reference_it_w(self) -> float:
        """The first activation's reference at the GPUs (W)."""
        return self.references[0].it_w

    @property
    def reference_w(self) -> float:
        """The first activation's reference at the settlement point (W)."""
        return self.references[0].w

    def reference_at(self, t_s: float) -> Reference:
        """The reference in force at ``t_s``: the last one applying from then or before."""
        found = self.references[0]
        for ref in self.references[1:]:
            if ref.applies_from_s <= t_s:
                found = ref
        return found


def measure(rec: Recording, plan: TestPlan, config: Config, product: ProductConfig) -> Measured:
    """Sent frequency held per sample, IT power summed, the meter modelled (module docstring),
    and the references: the mean over ``BASELINE_S`` before the lead ends and, for a re-arm
    test, before its second activation's part (gridtao/prequal/rearm.py). For FCR-N the
    reference is the baseline the node declared (tier 2's ``fcr_n_baseline_w``, IT W) and its
    steady-state meter power: a declared operating point, cooling settled."""
    if len(rec.t_s) < 2 or not rec.sent:
        raise RuntimeError(f"{plan.name}: nothing was recorded")
    model = FacilityModel.from_config(config.facility)
    it = [math.fsum(g) for g in rec.gpu_w]
    first = [w for t, w in zip(rec.t_s, it, strict=True) if t < rec.t_s[0] + PLANT_SEED_S]
    plant = Facility(model, math.fsum(first) / len(first))
    meter, prev = [], rec.t_s[0]
    for t, w in zip(rec.t_s, it, strict=True):
        meter.append(plant.step(w, t - prev))
        prev = t
    hz, k = [], 0
    for t in rec.t_s:
        while k + 1 < len(rec.sent) and rec.sent[k + 1][0] <= t:
            k += 1
        hz.append(rec.sent[k][1])
    references = []
    for k, window in enumerate(rearm.reference_windows(plan.shape)):
        sel = [j for j, t in enumerate(rec.t_s) if window.start_s <= t < window.end_s]
        if not sel:
            raise RuntimeError(f"{plan.name}: no samples in the reference window "
                               f"{window.start_s:g}-{window.end_s:g} s")
        ref_it = math.fsum(it[j] for j in sel) / len(sel)
        declared = rec.tier2.get("fcr_n_baseline_w")
        if product.kind == "fcr-n" and k == 0:
            if not isinstance(declared, (int, float)):
                raise RuntimeError(f"{plan.name}: the agent never declared its FCR-N baseline")
            ref_it = float(declared)
        if config.facility.settle_at == "it":
            ref = ref_it
        elif product.kind == "fcr-n":
            ref = model.steady_meter_w(ref_it)
        else:
            ref = math.fsum(meter[j] for j in sel) / len(sel)
        references.append(Reference(window.applies_from_s, ref_it, ref))
    natural = list(rec.natural_w) if len(rec.natural_w) == len(rec.t_s) else None
    return Measured(list(rec.t_s), hz, it, meter, list(rec.gpu_w), list(rec.limit_w),
                    list(rec.target_w), natural, tuple(references), list(rec.late_s))


def settlement_w(m: Measured, config: Config) -> list[float]:
    """Power at the settlement point per sample (meter, or IT with ``settle_at: it``)."""
    return m.it_w if config.facility.settle_at == "it" else m.meter_w
