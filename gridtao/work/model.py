"""The learned work model: per GPU group, how much work its power limit costs it.

Each group (a work source and its GPUs) gets a throughput curve ``rate / rate_ref = a *
(power / power_ref) ** b``, ``0 < b <= 1`` (increasing, concave), fitted online by least squares
in log space, with its uncertainty (residual std of ``ln rate``, standard error of ``b``, sample
count). Work-aware cuts (gridtao/control/tier1/workaware.py) need only ``b``: the elasticity of
the rate to the power the limit allows, at a steady demand.

What is fitted, and why not every pair: a job's natural swings (a training step's
communication phase, an inference server's quiet spell) change what it asks for, and its work
moves with its power at about ``b = 1`` whatever its limit does, which is not the curve a cut
meets. So a group's pairs enter the fit only while its limit binds (the feeder says so), each
normalised by the group's last pair from before the limit bound (``power_ref``, ``rate_ref``:
the job at the demand the cut then held back; an exponential mean of its free windows, so one
quiet or busy window does not set it). Those pairs come from the node's events and
from operators' limits; the fit goes through ``(1, 1)`` unless asked otherwise. A bursty job's
demand still differs between the reference and each window, moving power and work together;
given the window's mean limit (set by the controller, not by the job) the fit uses it as an
instrument, so that noise does not pull ``b`` toward 1.

A group's curve also carries the mean power per GPU of its free windows (the reference's power,
while fresh; ``free_w``): the demand a cut meets, which tier 1's want (its upper limit while a
GPU presses on it) does not say. A group of inference servers (:data:`QUEUED_KINDS`) queues the
requests a cap holds back and catches up later, so it loses work only once its limit leaves it
less than its arrivals, which that power measures (``queued``: the split's knee,
gridtao/control/tier1/workaware.py).

A queued group keeps its prior: under a limit it serves its arrivals while it keeps up, so its
limited windows measure its queue, not its curve (a source's queue length would tell the
windows where it fell behind; the model does not read one). Its fit is computed and exported
all the same. Until any other group has :data:`MIN_SAMPLES` pairs and its ``b`` is known to within
:data:`MAX_EXPONENT_STD`, the prior of its kind stands in: the simulator's published curves
(gridtao/gpu/sim/throughput.py: inference servers 0.194, calibrated to Samsi et al. 2023;
training and custom counters 1/3, an assumption).

Persisted as a small JSON file (the fits' running sums), exported by
:class:`WorkModelCollector`. Thread-safe: a feeder thread observes, tier 1 reads
:meth:`WorkModel.exponents`, the metrics thread collects. Units: W, s, work units per second.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gridtao.durable import write_atomically
from gridtao.gpu.sim.throughput import INFERENCE_EXPONENT, TRAINING_EXPONENT

__all__ = ["MAX_EXPONENT_STD", "MIN_SAMPLES", "QUEUED_KINDS", "Fit", "GroupCurve", "PowerLawFit",
           "WorkModel", "WorkModelCollector", "lost_work_factor", "prior_exponent"]

log = logging.getLogger("gridtao.work.model")

FORMAT = 1
#: The fitted exponent is kept in [MIN_EXPONENT, 1]: increasing and concave.
MIN_EXPONENT = 0.02
#: Pairs a group needs before its own fit replaces its prior ...
MIN_SAMPLES = 20
#: ... and the standard error its exponent must be under.
MAX_EXPONENT_STD = 0.1
#: Old pairs fade: each new one scales the statistics by ``1 - 1 / MEMORY_SAMPLES``.
MEMORY_SAMPLES = 5000
#: A pair whose power is within this of its reference carries no information (ratio).
MIN_POWER_DROP = 0.005
#: A reference older than this (s) no longer says what the job asks for.
MAX_REFERENCE_AGE_S = 900.0
#: Weight of each free window in the reference (an exponential mean: a job's demand is noisy).
REFERENCE_WEIGHT = 0.25

_INFERENCE_KINDS = ("vllm", "sglang", "tgi", "nim", "inference", "trace")
#: Kinds whose work waits for them: online inference servers (a replayed power trace does not).
QUEUED_KINDS = ("vllm", "sglang", "tgi", "nim", "inference")


def prior_exponent(kind: str) -> float:
    """The prior exponent of a work source's (or simulated workload's) kind: inference servers
    the calibrated inference curve, anything else (training, custom counters) the training
    one."""
    return INFERENCE_EXPONENT if kind in _INFERENCE_KINDS else TRAINING_EXPONENT


@dataclass(frozen=True)
class Fit:
    """A fitted curve ``y = scale * x ** exponent``: ``exponent`` clipped into
    [MIN_EXPONENT, 1]; ``residual_std`` of ``ln y``; ``exponent_std`` the standard error of the
    exponent; ``samples`` the pairs seen (before forgetting)."""

    exponent: float
    scale: float
    residual_std: float
    exponent_std: float
    samples: int


class PowerLawFit:
    """Least squares of ``ln y`` on ``ln x`` from running sums (forgetting old pairs slowly);
    with an instrument ``z`` on every pair (the limit, set by the controller rather than by
    the job), the instrumental-variable estimate ``b = cov(ln z, ln y) / cov(ln z, ln x)``,
    which noise common to ``x`` and ``y`` (the job's demand moving between windows) does not
    pull toward 1. Not thread-safe."""

    _KEYS = ("n", "nz", "sx", "sy", "sz", "sxx", "sxy", "syy", "szx", "szy", "szz")

    def __init__(self, memory: float = MEMORY_SAMPLES) -> None:
        self.memory = memory
        self.count = 0
        self.n = self.nz = self.sx = self.sy = self.sz = 0.0
        self.sxx = self.sxy = self.syy = self.szx = self.szy = self.szz = 0.0

    def add(self, x: float, y: float, z: float | None = None) -> bool:
        """Take the pair ``(x, y)`` with its instrument ``z`` (all > 0 and finite, else
        ignored: returns False)."""
        values = (x, y) if z is None else (x, y, z)
        if not all(v > 0.0 and math.isfinite(v) for v in values):
            return False
        lx, ly = math.log(x), math.log(y)
        lz = 0.0 if z is None else math.log(z)
        keep = 1.0 - 1.0 / self.memory
        for key, term in (("n", 1.0), ("nz", 0.0 if z is None else 1.0), ("sx", lx),
                          ("sy", ly), ("sz", lz), ("sxx", lx * lx), ("sxy", lx * ly),
                          ("syy", ly * ly), ("szx", lz * lx), ("szy", lz * ly),
                          ("szz", lz * lz)):
            setattr(self, key, getattr(self, key) * keep + term)
        self.count += 1
        return True

    def fit(self, *, through_origin: bool = True) -> Fit | None:
        """The curve, or None without enough spread in ``x`` (in ``z`` with instruments) or
        under two pairs. ``through_origin``: ``scale`` fixed at 1 (pairs normalised to a known
        reference). Instrumented when every pair had one."""
        n = self.n
        if n < 2.0:
            return None
        mx, my, mz = (0.0, 0.0, 0.0) if through_origin else (self.sx / n, self.sy / n,
                                                             self.sz / n)
        sxx = self.sxx - n * mx * mx
        sxy = self.sxy - n * mx * my
        syy = self.syy - n * my * my
        szx = self.szx - n * mz * mx
        szy = self.szy - n * mz * my
        szz = self.szz - n * mz * mz
        if sxx <= 1e-9 * n:  # no spread in ln x: ~0.003 % rms
            return None
        instrumented = self.nz >= n * (1.0 - 1e-9)
        if instrumented and (szz <= 1e-9 * n or abs(szx) <= 1e-6 * math.sqrt(szz * sxx)):
            return None  # the limits did not move, or did not move the power
        raw = szy / szx if instrumented else sxy / sxx
        b = min(1.0, max(MIN_EXPONENT, raw))
        # The residuals at the clipped exponent: what the curve in use misses by.
        sse = max(0.0, syy - 2.0 * b * sxy + b * b * sxx)
        dof = n - (1.0 if through_origin else 2.0)
        resid = math.sqrt(sse / dof) if dof > 0 else math.inf
        std = resid * math.sqrt(szz) / abs(szx) if instrumented else resid / math.sqrt(sxx)
        return Fit(b, math.exp(my - b * mx), resid, std, self.count)

    def to_json(self) -> dict[str, float]:
        return {"count": float(self.count), **{k: getattr(self, k) for k in self._KEYS}}

    @classmethod
    def from_json(cls, data: dict[str, float], memory: float = MEMORY_SAMPLES) -> PowerLawFit:
        fit = cls(memory)
        values = {k: float(data[k]) for k in cls._KEYS}
        if not all(math.isfinite(v) for v in values.values()) or values["n"] < 0:
            raise ValueError("statistics must be finite, n >= 0")
        for k, v in values.items():
            setattr(fit, k, v)
        fit.count = int(data["count"])
        return fit


@dataclass(frozen=True)
class GroupCurve:
    """One group's curve in use: ``exponent`` (its fit's, or ``prior`` while ``from_prior``),
    its ``fit`` (None: not enough spread yet), the pairs it has seen (``samples``), the mean
    power per GPU of its free windows (``free_w``, W; 0: no fresh reference) and whether its
    work waits for it (``queued``: an inference server's kind)."""

    name: str
    gpus: tuple[int, ...]
    kind: str
    prior: float
    fit: Fit | None
    exponent: float
    from_prior: bool
    samples: int
    free_w: float = 0.0
    queued: bool = False


class _Group:
    def __init__(self, name: str, gpus: tuple[int, ...], kind: str) -> None:
        self.name, self.gpus, self.kind = name, gpus, kind
        self.stats = PowerLawFit()
        self.reference: tuple[float, float, float] | None = None  # (t_s, power_w, rate)

    def curve(self, min_samples: int, max_std: float) -> GroupCurve:
        prior = prior_exponent(self.kind)
        fit = self.stats.fit()
        queued = self.kind in QUEUED_KINDS
        # A queued server's rate under a limit is its arrivals while it keeps up, not a point of
        # its curve: its fit measures its queue, so its prior stands (the fit is still shown).
        own = (not queued and fit is not None and fit.samples >= min_samples
               and fit.exponent_std <= max_std)
        exponent = fit.exponent if own and fit is not None else prior
        ref = self.reference
        free_w = ref[1] / len(self.gpus) if ref is not None and self.gpus else 0.0
        return GroupCurve(self.name, self.gpus, self.kind, prior, fit, exponent, not own,
                          self.stats.count, free_w, queued)


class WorkModel:
    """The curves of the groups ``(name, gpu indices, kind)`` (``kind``: a work source's kind,
    or a simulated workload's). A GPU in no group has no curve."""

    def __init__(self, groups: Sequence[tuple[str, Sequence[int], str]], *,
                 min_samples: int = MIN_SAMPLES, max_exponent_std: float = MAX_EXPONENT_STD,
                 max_reference_age_s: float = MAX_REFERENCE_AGE_S) -> None:
        self._lock = threading.Lock()
        self._groups = {name: _Group(name, tuple(gpus), kind) for name, gpus, kind in groups}
        self.min_samples = min_samples
        self.max_exponent_std = max_exponent_std
        self.max_reference_age_s = max_reference_age_s
        self._curves: tuple[GroupCurve, ...] = ()
        self.version = 0
        self._publish()

    def observe(self, name: str, t_s: float, power_w: float, rate: float, *,
                limited: bool, limit_w: float | None = None) -> bool:
        """Group ``name``'s mean power (W) and work rate (units/s) over one window ending at
        ``t_s`` (s), and whether its limit bound in it. Unlimited: the new reference. Limited:
        a pair for the fit, against a fresh reference, instrumented by the group's mean limit
        ``limit_w`` (W) when given (give it always or never). Returns whether a pair was
        added."""
        with self._lock:
            group = self._groups.get(name)
            if group is None or not (power_w > 0.0 and rate >= 0.0):
                return False
            ref = group.reference
            if ref is not None and t_s - ref[0] > self.max_reference_age_s:
                ref = group.reference = None
                self._publish()
            if not limited:
                if rate > 0.0:
                    w = 1.0 if ref is None else REFERENCE_WEIGHT
                    group.reference = (t_s, power_w, rate) if ref is None else (
                        t_s, ref[1] + w * (power_w - ref[1]), ref[2] + w * (rate - ref[2]))
                    self._publish()  # its free draw moved
                return False
            if ref is None:
                return False
            x = power_w / ref[1]
            z = None if limit_w is None else limit_w / ref[1]
            if x >= 1.0 - MIN_POWER_DROP or not group.stats.add(x, rate / ref[2], z):
                return False
            self._publish()
            return True

    def _publish(self) -> None:
        self._curves = tuple(g.curve(self.min_samples, self.max_exponent_std)
                             for g in self._groups.values())
        self.version += 1

    def curves(self) -> tuple[GroupCurve, ...]:
        """Every group's curve in use now (a snapshot; any thread)."""
        return self._curves

    def exponents(self, count: int) -> tuple[float | None, ...]:
        """Per GPU index ``0..count-1``: its group's exponent in use (None: in no group)."""
        return tuple(None if c is None else c.exponent for c in self.per_gpu(count))

    def per_gpu(self, count: int) -> tuple[GroupCurve | None, ...]:
        """Per GPU index ``0..count-1``: its group's curve in use (None: in no group)."""
        out: list[GroupCurve | None] = [None] * count
        for curve in self._curves:
            for gpu in curve.gpus:
                if 0 <= gpu < count:
                    out[gpu] = curve
        return tuple(out)

    def save(self, path: Path) -> None:
        """Write the fits' statistics to ``path`` (atomically, mode 0600)."""
        with self._lock:
            data = {"format": FORMAT, "groups": {
                g.name: {"kind": g.kind, "gpus": list(g.gpus), "stats": g.stats.to_json()}
                for g in self._groups.values()}}
        write_atomically(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def load(self, path: Path) -> int:
        """Take the fits of ``path`` for the groups of the same name, GPUs and kind; returns
        how many were taken. A missing file takes none; an unreadable one is logged and
        ignored (the model starts again from its priors)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, not {FORMAT}")
            stored = {name: (g["kind"], tuple(g["gpus"]), PowerLawFit.from_json(g["stats"]))
                      for name, g in data["groups"].items()}
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("work model %s unreadable (%s): starting from the priors", path, e)
            return 0
        taken = 0
        with self._lock:
            for group in self._groups.values():
                kind, gpus, stats = stored.get(group.name, ("", (), None))
                if stats is not None and kind == group.kind and gpus == group.gpus:
                    group.stats = stats
                    taken += 1
            self._publish()
        return taken


def lost_work_factor(exponents: Sequence[float | None], draw_w: Sequence[float], *,
                     depth: float, knee_w: Sequence[float] | None = None) -> float | None:
    """The share of its full-speed work the node loses per share of its energy shed, at a cut
    of ``depth`` (a fraction of each GPU's draw, in (0, 1]): per GPU with a curve (its exponent
    ``a``), the secant ``(1 - (1 - depth) ** a) / depth`` (``a`` at small cuts, more at deep
    ones); 1.0 for a GPU in no group (all of its work: the cautious value); weighted by each
    GPU's draw ``draw_w`` (W). ``knee_w``: per GPU, the power down to which it loses nothing
    (a queued server's knee, gridtao/control/tier1/workaware.py; its draw or more: none), so
    only the part of the cut below it costs, as ``1 - (cut_to / knee) ** a``. None when no GPU
    has a curve or the node draws nothing. For the planner's cost of lost work: an IT W·h shed
    costs this share of a W·h of full-speed work."""
    if not 0.0 < depth <= 1.0:
        raise ValueError(f"depth must be in (0, 1], got {depth}")
    if len(exponents) != len(draw_w) or (knee_w is not None and len(knee_w) != len(draw_w)):
        raise ValueError("one exponent (or None), and one knee if any, per GPU")
    if all(a is None for a in exponents) or not sum(draw_w) > 0.0:
        return None
    knees = knee_w if knee_w is not None else draw_w
    shares = []
    for a, draw, knee in zip(exponents, draw_w, knees, strict=True):
        if a is None:
            shares.append(1.0)
            continue
        top = min(draw, knee)
        cut_to = (1.0 - depth) * draw
        kept = 1.0 if top <= 0.0 or cut_to >= top else (cut_to / top) ** a
        shares.append((1.0 - kept) / depth)
    return math.fsum(s * w for s, w in zip(shares, draw_w, strict=True)) / math.fsum(draw_w)


class WorkModelCollector(Collector):
    """Per GPU of each group (labels ``gpu``, ``source``), read at scrape time:
    ``gridtao_work_model_exponent`` (in use), ``gridtao_work_model_prior`` (1 while the prior
    stands in), ``gridtao_work_model_samples``, ``gridtao_work_model_log_residual_std`` and
    ``gridtao_work_model_exponent_std`` (NaN: no fit yet)."""

    _HELP = (("exponent", "Exponent b of the GPU's throughput curve in use (rate ~ power ** b "
              "under a limit)."),
             ("prior", "1 while the GPU's curve is its kind's prior (too few samples)."),
             ("samples", "Limited (power, rate) pairs the GPU's group has seen."),
             ("log_residual_std", "Residual standard deviation of ln(rate) around the fit."),
             ("exponent_std", "Standard error of the fitted exponent."))

    def __init__(self, model: WorkModel, *, registry: CollectorRegistry) -> None:
        self._model = model
        registry.register(self)

    def _families(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(f"gridtao_work_model_{name}", text, labels=["gpu", "source"])
                for name, text in self._HELP]

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for c in self._model.curves():
            fit = c.fit
            values = (c.exponent, float(c.from_prior), float(c.samples),
                      math.nan if fit is None else fit.residual_std,
                      math.nan if fit is None else fit.exponent_std)
            for gpu in c.gpus:
                for family, value in zip(families, values, strict=True):
                    family.add_metric([str(gpu), c.name], value)
        yield from families
