"""How much work a simulated GPU does: a throughput model per workload kind.

A GPU's work rate (tokens/s for inference, samples/s for training) depends on what its workload
asks for and on how much of that the power limit lets it draw:

    rate = demand_w / joules_per_unit * relative_rate(draw_w / demand_w)

* ``demand_w / joules_per_unit``: the unhindered rate, the work the job does drawing all the
  power it demands (``joules_per_unit``: energy per unit of work at full speed);
* ``relative_rate(x) = x ** exponent`` with ``0 < exponent <= 1``: increasing and concave in the
  power ratio ``x = draw / demand`` (clamped to [0, 1]); 1 at ``x = 1``. A cap that clips a
  burst by a little costs little work; each further watt taken costs more work than the one
  before it (the marginal work per watt, ``exponent * x ** (exponent - 1)``, grows as ``x``
  falls). The energy per unit of work under a cap, ``joules_per_unit * x / relative_rate(x)``,
  falls with the cap, as measured on real GPUs.

That is the rate of a job that cannot wait (training: a step takes longer; the work a cap holds
back is lost for the hold). An inference server serves requests that arrive whatever its limit
does (:data:`QUEUED_WORKLOADS`): what a cap holds back waits in a queue, and the server runs
flat out (its largest batch, at its largest draw) until it has caught up, so it loses work only
when what it can serve at its limit falls short of what arrives, or when requests wait too long
(``physics.py`` keeps the backlog; the curve above, read at the busy draw, is what it can serve).
Every counter of work lives in the physics, in full-speed joules; a model's
``joules_per_unit`` turns them into tokens or samples.

Calibration (docs/sources.md, "Simulated work"): the inference curve goes through the power-cap
measurement of Samsi et al. 2023, "From Words to Watts: Benchmarking the Energy Costs of Large
Language Model Inference" (IEEE HPEC 2023, https://arxiv.org/abs/2310.03003): capping the GPUs
running LLaMA-65B inference from 250 W to 175 W saved about 23 % of the energy for about 6-7 %
more latency (figures as summarised at
https://app.argminai.com/arxiv-dashboard/papers/2310.03003v1; the paper's own table was not
reachable to confirm the decimals, so 6.5 %, the middle of the range, is used). With energy
``E = P * T`` and ``T`` 1.065 times longer, the mean power fell to ``0.77 / 1.065 = 0.723`` of
the uncapped draw while throughput fell to ``1 / 1.065 = 0.939``, so
``exponent = ln(0.939) / ln(0.723) = 0.194``. Its unhindered energy per generated token is the
paper's order of magnitude, 3-4 J per output token (LLaMA-65B on V100/A100): 3.5 J.

Training is not calibrated to a measurement (none with both numbers was found): its exponent is
1/3, our assumption that compute-bound kernels run at the clock the cap allows while dynamic
power grows about as the clock cubed (``P ~ C V^2 f`` with the voltage rising with ``f``), so it
loses more work per watt than memory-bound decoding does. Its energy per sample (100 J) and the
prompt tokens per generated token (2) are round figures of ours, not measurements. An idle GPU
does no work.

Units: watts, seconds, work units (tokens or samples). Everything here is pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "CALIBRATION_ENERGY_SAVED",
    "CALIBRATION_LATENCY_INCREASE",
    "CALIBRATION_POWER_RATIO",
    "CALIBRATION_RELATIVE_RATE",
    "IDLE",
    "INFERENCE",
    "INFERENCE_EXPONENT",
    "PROMPT_TOKENS_PER_GENERATED",
    "QUEUED_WORKLOADS",
    "TRAINING",
    "TRAINING_EXPONENT",
    "ThroughputModel",
    "model_for",
    "relative_rate",
    "served_w",
    "work_rate",
]

#: Samsi et al. 2023, 250 -> 175 W cap: the share of the energy saved (about 23 %).
CALIBRATION_ENERGY_SAVED = 0.23
#: ... and the latency added (about 6-7 %; the middle of the range).
CALIBRATION_LATENCY_INCREASE = 0.065
#: The mean draw under that cap relative to the uncapped draw (energy / time): 0.723.
CALIBRATION_POWER_RATIO = (1.0 - CALIBRATION_ENERGY_SAVED) / (1.0 + CALIBRATION_LATENCY_INCREASE)
#: The throughput under that cap relative to the uncapped throughput (1 / time): 0.939.
CALIBRATION_RELATIVE_RATE = 1.0 / (1.0 + CALIBRATION_LATENCY_INCREASE)
#: The inference curve's exponent, through the calibration point: 0.194.
INFERENCE_EXPONENT = math.log(CALIBRATION_RELATIVE_RATE) / math.log(CALIBRATION_POWER_RATIO)
#: The training curve's exponent (an assumption, see the module docstring).
TRAINING_EXPONENT = 1.0 / 3.0
#: Prompt (prefill) tokens counted per generated token (ours, a round figure).
PROMPT_TOKENS_PER_GENERATED = 2.0


@dataclass(frozen=True)
class ThroughputModel:
    """One workload kind's curve. ``unit``: what it counts ("tokens": generated tokens,
    "samples"); ``exponent``: of :func:`relative_rate`, in (0, 1]; ``joules_per_unit``: energy
    per unit at full speed, J (``math.inf``: the workload does no work)."""

    unit: str
    exponent: float
    joules_per_unit: float

    def __post_init__(self) -> None:
        if not 0.0 < self.exponent <= 1.0:
            raise ValueError("the exponent must be in (0, 1]: concave and increasing")
        if not self.joules_per_unit > 0.0:
            raise ValueError("joules_per_unit must be > 0 (inf: no work)")


INFERENCE = ThroughputModel("tokens", INFERENCE_EXPONENT, 3.5)
TRAINING = ThroughputModel("samples", TRAINING_EXPONENT, 100.0)
IDLE = ThroughputModel("tokens", INFERENCE_EXPONENT, math.inf)

#: Simulated workloads whose work waits for them (an inference server's requests); the others
#: (training, a replayed trace, idle) lose what a cap holds back.
QUEUED_WORKLOADS = frozenset({"inference"})

_BY_WORKLOAD = {"inference": INFERENCE, "trace": INFERENCE, "training": TRAINING, "idle": IDLE}


def model_for(workload: str) -> ThroughputModel:
    """The default model of a simulated workload (``gpus.sim.workload``): a replayed trace is
    taken for inference. Raises ``ValueError`` for an unknown workload."""
    try:
        return _BY_WORKLOAD[workload]
    except KeyError:
        raise ValueError(f"unknown workload {workload!r}") from None


def relative_rate(power_ratio: float, exponent: float = INFERENCE_EXPONENT) -> float:
    """The work rate relative to the unhindered one (dimensionless, in [0, 1]) when a GPU
    draws ``power_ratio`` (draw / demand, clamped to [0, 1]) of the power its workload
    demands: ``power_ratio ** exponent``."""
    x = min(1.0, max(0.0, power_ratio))
    return float(x**exponent)


def served_w(draw_w: float, demand_w: float, exponent: float) -> float:
    """Work served per second, in full-speed joules per second (W), by a GPU drawing
    ``draw_w`` W while its job asks for ``demand_w`` W: ``demand_w * relative_rate(draw /
    demand)`` (0 when it asks for nothing). The physics counts work this way
    (``physics.py``)."""
    if demand_w <= 0.0:
        return 0.0
    return demand_w * relative_rate(draw_w / demand_w, exponent)


def work_rate(draw_w: float, demand_w: float, model: ThroughputModel = INFERENCE) -> float:
    """Units of work per second of a GPU drawing ``draw_w`` W while its workload demands
    ``demand_w`` W (0 when it demands nothing): :func:`served_w` in the model's units."""
    if math.isinf(model.joules_per_unit):
        return 0.0
    return served_w(draw_w, demand_w, model.exponent) / model.joules_per_unit
