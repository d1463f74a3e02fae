"""The product objects each enrolled kind gets (:func:`make_product`), and the reference replay
a scorer compares delivery with (:func:`required_trace`). Which kinds exist and what each is:
:mod:`gridtao.config.kinds`; the product contract: :mod:`gridtao.products.base`.
"""

from __future__ import annotations

from gridtao.config.agent import ProductConfig
from gridtao.config.kinds import KINDS
from gridtao.products.base import (
    ERCOT_FFR_ACTIVATION_S,
    ERCOT_FFR_HZ,
    ERCOT_FFR_SUPPORT_S,
    FCR_D_STATIC_ACTIVATION_S,
    FCR_D_STATIC_HZ,
    FFR_SUPPORT_S,
    FrequencyProduct,
)
from gridtao.products.proportional import FcrDUp, FcrN
from gridtao.products.step import FcrDUpStatic, StepProduct, ffr_activation_s

STEP_RAMP_OUT_SLACK = 0.9


def make_product(cfg: ProductConfig, *, ramp_out_per_s: float) -> FrequencyProduct:
    """Build the frequency product ``cfg`` describes (``dr`` is not one: see dr.py).

    ``ramp_out_per_s``: the safety island's release rate, which performs step ramp-outs."""
    name = cfg.name or cfg.kind
    samples, budget = cfg.debounce_samples, cfg.debounce_budget_fraction
    if KINDS[cfg.kind].activation == "step":
        if cfg.kind == "ffr":
            hz = cfg.threshold_hz if cfg.threshold_hz is not None else 49.7
            act = cfg.full_activation_s or ffr_activation_s(hz)
            support = cfg.support_s if cfg.support_s is not None else FFR_SUPPORT_S[cfg.support]
        else:
            hz = cfg.threshold_hz if cfg.threshold_hz is not None else ERCOT_FFR_HZ
            act = cfg.full_activation_s or ERCOT_FFR_ACTIVATION_S
            support = cfg.support_s if cfg.support_s is not None else ERCOT_FFR_SUPPORT_S
        return StepProduct(name, cfg.kind, cfg.capacity_w, threshold_hz=hz,
                           full_activation_s=act, support_s=support, rearm_s=cfg.rearm_s,
                           ramp_out_per_s=ramp_out_per_s, debounce_samples=samples,
                           debounce_budget_fraction=budget)
    if cfg.kind == "fcr-d-up":
        return FcrDUp(name, cfg.capacity_w, median_samples=cfg.median_samples)
    if cfg.kind == "fcr-d-up-static":
        return FcrDUpStatic(
            name, cfg.capacity_w,
            threshold_hz=cfg.threshold_hz if cfg.threshold_hz is not None else FCR_D_STATIC_HZ,
            full_activation_s=cfg.full_activation_s or FCR_D_STATIC_ACTIVATION_S,
            debounce_samples=samples, debounce_budget_fraction=budget,
        )
    if cfg.kind == "fcr-n":
        return FcrN(name, cfg.capacity_w, median_samples=cfg.median_samples)
    raise ValueError(f"{cfg.kind!r} is not a frequency product")


def required_trace(
    product: FrequencyProduct, samples: list[tuple[float, float]], times_s: list[float]
) -> list[float]:
    """Replay frequency ``samples`` ``(t_s, hz)`` through a fresh ``product`` and return the
    required reduction (W) at each of ``times_s`` (both sorted ascending): what a scorer
    compares the delivered reduction with."""
    out: list[float] = []
    k = 0
    for t in times_s:
        while k < len(samples) and samples[k][0] <= t:
            product.required_reduction_w(samples[k][1], samples[k][0])
            k += 1
        out.append(product.required_reduction_w(None, t))
    return out
