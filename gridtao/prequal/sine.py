"""FCR frequency-domain tests: sinusoidal frequency, the response's gain and phase per period.

The signal (:func:`sine_shape`): after the lead at 50 Hz, one sinusoid per period in turn
around the test's centre, ``centre - amplitude x sin(2 pi (t - start) / T)``, each run for a
settling time (whole half-periods covering min(T, 60 s)) and then ``cycles`` whole periods
that are measured. FCR-N (:func:`sine_shape`'s defaults): around 50 Hz, +/-0.1 Hz (the FCR-N
band's half-width, so the peaks ask for the full capacity both ways). Dynamic FCR-D upwards
(:func:`fcr_d_sine_shape`): around 49.7 Hz, +/-0.1 Hz, the middle of its 49.9-49.5 Hz band
(a quarter of the capacity either way around half of it). Periods and cycles are the full
sequence unless shortened by option (``--sine-periods``, ``--sine-cycles``): the time scale
never touches them, a shorter period would test another frequency. As every FCR test signal
injected in software, it reaches the unit through the 1/(1+s) frequency-meter lag.

The measurement (:func:`response`): a least-squares fit of the delivered reduction over the
measured periods to ``c0 + c1 t + a sin(w t') + b cos(w t')`` (the constant and the drift take
the reference's error and the cooling's slow part), giving the response
``F(jw) = (a + j b) / (capacity x amplitude / band)``: its gain (1 = the full capacity for the
product's band, 0.1 Hz FCR-N, 0.4 Hz FCR-D) and phase (negative: the response lags the
frequency), against the nominal signal, so the meter lag is inside F as the TSO's evaluation
puts it there.

The rules per period (the model and its numbers: docs/sources.md#fcr-n, #fcr-d-up):

* FCR-N (:func:`score_sines`): ``gain@T``, the gain against the required response, the ideal
  proportional one through the meter lag, ``1 / (1 + j w 1 s)``: (|F| / |F_required| - 1) in
  %, limits -5 % / +20 % (the steady-state tolerance, ours for the sine amplitude);
  ``performance@T``, the Nordic performance requirement, ``|D(jw) x 0.95 G(jw) / (1 + F(jw)
  G(jw))| <= 1`` with the disturbance profile ``D(s) = 1 / (70 s + 1)`` and the power system
  model ``G(s) = (dP / df) (f0 / Sn) / (2 H s + Kf f0)`` for the performance case;
  ``stability@T``, the Nordic stability margin, ``|1 + F(jw) G(jw)| >= 0.43`` with the power
  system model for the stability case (lower inertia).
* Dynamic FCR-D upwards (:func:`score_fcr_d_sines`): ``stability@T`` only, the same margin
  with the FCR-D model (``dP / df`` = 1450 MW / 0.4 Hz, the stability case's system size and
  kinetic energy). FCR-D's performance is judged on its ramp test (power and energy at 7.5 s),
  not on the sines; the gain and phase are reported beside the margin.
"""

from __future__ import annotations

import bisect
import cmath
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gridtao.prequal import scoring as sc
from gridtao.prequal.scoring import RuleResult, Trace
from gridtao.prequal.shapes import DT_S, LEAD_S, METER_TAU_S, Hold, Shape, SineSegment, meter_lag

SINE_PERIODS_S = (10.0, 15.0, 25.0, 40.0, 50.0, 60.0, 70.0, 90.0, 150.0, 300.0)
SINE_AMPLITUDE_HZ = 0.1  # the FCR-N band's half-width
FCR_N_HALF_BAND_HZ = 0.1
SETTLE_MAX_S = 60.0
# Dynamic FCR-D upwards (the 90, 150 and 300 s periods are asked only of units that shift
# modes, which gridtao does not): around the middle of 49.9-49.5 Hz, +/-0.1 Hz.
FCR_D_SINE_PERIODS_S = (10.0, 15.0, 25.0, 40.0, 50.0, 60.0, 70.0)
FCR_D_SINE_CENTER_HZ = 49.7
FCR_D_SINE_AMPLITUDE_HZ = 0.1
FCR_D_BAND_HZ = 0.4  # 49.9 -> 49.5 Hz: the deviation that asks for the full capacity

# The Nordic evaluation (docs/sources.md#fcr-n): FCR-N volume and band, nominal frequency, load
# frequency dependence; system size and kinetic energy for the performance and stability cases.
NORDIC_DP_MW, NORDIC_DF_HZ, NORDIC_F0_HZ, NORDIC_KF = 600.0, 0.1, 50.0, 0.01
PERFORMANCE_SN_MW, PERFORMANCE_EK_GWS = 42000.0, 190.0
STABILITY_SN_MW, STABILITY_EK_GWS = 23000.0, 120.0
FCR_D_DP_MW = 1450.0  # the Nordic FCR-D volume per direction, over FCR_D_BAND_HZ
DISTURBANCE_TAU_S = 70.0
PERFORMANCE_MARGIN = 0.95
STABILITY_MARGIN = 0.43


def default_cycles(period_s: float) -> int:
    """Stationary periods measured after settling, as the TSOs' test programme lists them
    for FCR-N and FCR-D: 5 up to 90 s, 3 at 150 s, 2 at 300 s."""
    return 5 if period_s <= 90.0 else (3 if period_s <= 150.0 else 2)


def settle_s(period_s: float) -> float:
    """Settling time before the measured periods: whole half-periods covering min(T, 60 s),
    so each sinusoid starts and ends at 50 Hz."""
    half = period_s / 2
    return half * math.ceil(min(period_s, SETTLE_MAX_S) / half - 1e-9)


def sine_shape(periods_s: Sequence[float] = SINE_PERIODS_S, cycles: int | None = None, *,
               settle_first_s: float = 10.0, amplitude_hz: float = SINE_AMPLITUDE_HZ,
               dt_s: float = DT_S, center_hz: float = 50.0,
               band_hz: float = FCR_N_HALF_BAND_HZ,
               full_periods_s: Sequence[float] = SINE_PERIODS_S,
               name: str = "fcr-n-sines", product: str = "FCR-N") -> Shape:
    """A sine sequence (module docstring): ``periods_s`` (s) in turn around ``center_hz``,
    each settled and then measured over ``cycles`` periods (default :func:`default_cycles`);
    ``full_periods_s`` is the product's whole sequence (anything else is stated as
    shortened). The lead is ``LEAD_S`` at 50 Hz (the bench's reference) and then
    ``settle_first_s`` at ``center_hz`` (FCR-N: the node settles on its baseline; FCR-D: on
    its half activation)."""
    if not periods_s or any(not p >= 2.0 for p in periods_s):
        raise ValueError("sine periods must be >= 2 s")
    if cycles is not None and cycles < 1:
        raise ValueError("sine cycles must be >= 1")
    t = LEAD_S + settle_first_s
    segments = []
    for period in periods_s:
        n = cycles if cycles is not None else default_cycles(period)
        start = t
        seg = SineSegment(period, start, start + settle_s(period),
                          start + settle_s(period) + n * period, amplitude_hz, center_hz,
                          band_hz)
        segments.append(seg)
        t = seg.measure_to_s
    end = t + 5.0
    nominal = []
    j = 0
    for k in range(math.floor(end / dt_s + 1e-9)):
        x = k * dt_s
        while j < len(segments) and x >= segments[j].measure_to_s:
            j += 1
        seg_now = segments[j] if j < len(segments) and x >= segments[j].start_s else None
        if seg_now is not None:
            nominal.append(center_hz - seg_now.amplitude_hz * math.sin(
                2 * math.pi * (x - seg_now.start_s) / seg_now.period_s))
        else:
            nominal.append(center_hz if LEAD_S <= x < segments[-1].measure_to_s else 50.0)
    shortened = []
    full = [default_cycles(p) for p in full_periods_s]
    if tuple(periods_s) != tuple(full_periods_s):
        shortened.append("periods " + ", ".join(f"{p:g}" for p in periods_s) + " s of the "
                         "sequence's " + ", ".join(f"{p:g}" for p in full_periods_s) + " s")
    if cycles is not None and any(cycles < n for n in full):
        shortened.append(f"{cycles} measured period(s) each, of 5 (up to 90 s), 3 (150 s) "
                         "and 2 (300 s)")
    holds: tuple[Hold, ...]
    if center_hz == 50.0:
        lead_end = LEAD_S + settle_first_s
        holds = (Hold(0.0, lead_end, 50.0),)
    else:  # the reference is the draw before the frequency leaves 50 Hz
        lead_end = LEAD_S
        holds = (Hold(0.0, LEAD_S, 50.0), Hold(LEAD_S, LEAD_S + settle_first_s, center_hz))
    marks = {"lead_end": lead_end}
    marks |= {f"sine_{s.period_s:g}s": s.start_s for s in segments}
    title = (f"{product} sines around {center_hz:g} Hz, periods "
             + ", ".join(f"{p:g}" for p in periods_s) + f" s, +/-{amplitude_hz * 1000:.0f} mHz")
    return Shape(name, title, dt_s, tuple(nominal), tuple(meter_lag(nominal, dt_s)),
                 True, 50.0, marks, holds, tuple(shortened), (), tuple(segments))


def fcr_d_sine_shape(periods_s: Sequence[float] = FCR_D_SINE_PERIODS_S,
                     cycles: int | None = None) -> Shape:
    """Dynamic FCR-D upwards' sine sequence: around 49.7 Hz, +/-0.1 Hz (module docstring)."""
    return sine_shape(periods_s, cycles, amplitude_hz=FCR_D_SINE_AMPLITUDE_HZ,
                      center_hz=FCR_D_SINE_CENTER_HZ, band_hz=FCR_D_BAND_HZ,
                      full_periods_s=FCR_D_SINE_PERIODS_S, name="fcr-d-sines",
                      product="FCR-D upwards")


# ---- measuring ---------------------------------------------------------------------------------


def response(t_s: Sequence[float], delivered_w: Sequence[float], seg: SineSegment,
             capacity_w: float) -> complex | None:
    """The measured normalised response F(jw) over ``seg``'s measured periods (module
    docstring); None with fewer than 8 samples per period there."""
    lo, hi = bisect.bisect_left(t_s, seg.measure_from_s), bisect.bisect_left(t_s, seg.measure_to_s)
    if hi - lo < 8 * max(1, seg.cycles) or t_s[-1] < seg.measure_to_s - 2 * DT_S:
        return None
    t = np.asarray(t_s[lo:hi], dtype=float)
    y = np.asarray(delivered_w[lo:hi], dtype=float)
    w = 2 * math.pi / seg.period_s
    phase = w * (t - seg.start_s)
    basis = np.column_stack([np.ones_like(t), t - t.mean(), np.sin(phase), np.cos(phase)])
    coef = np.linalg.lstsq(basis, y, rcond=None)[0]
    scale = capacity_w * seg.amplitude_hz / seg.band_hz
    return complex(float(coef[2]), float(coef[3])) / scale


def required_response(period_s: float) -> complex:
    """The ideal proportional response through the 1/(1+s) frequency-meter lag."""
    return 1.0 / (1.0 + 1j * (2 * math.pi / period_s) * METER_TAU_S)


def system(period_s: float, *, sn_mw: float, ek_gws: float, dp_mw: float = NORDIC_DP_MW,
           df_hz: float = NORDIC_DF_HZ) -> complex:
    """The Nordic power system model G(jw) (normalised): FCR-N's volume and band by default,
    FCR-D's with ``dp_mw`` = 1450 MW over ``df_hz`` = 0.4 Hz."""
    w = 2 * math.pi / period_s
    h_s = ek_gws * 1000.0 / sn_mw
    return ((dp_mw / df_hz) * (NORDIC_F0_HZ / sn_mw)
            / (2 * h_s * 1j * w + NORDIC_KF * NORDIC_F0_HZ))


def performance(f: complex, period_s: float) -> float:
    """|D(jw) x 0.95 G(jw) / (1 + F(jw) G(jw))|, performance case; <= 1 passes."""
    w = 2 * math.pi / period_s
    g = system(period_s, sn_mw=PERFORMANCE_SN_MW, ek_gws=PERFORMANCE_EK_GWS)
    d = 1.0 / (1.0 + 1j * w * DISTURBANCE_TAU_S)
    return abs(d * PERFORMANCE_MARGIN * g / (1.0 + f * g))


def stability(f: complex, period_s: float) -> float:
    """|1 + F(jw) G(jw)|, stability case: the distance of the open loop from -1; >= 0.43."""
    return abs(1.0 + f * system(period_s, sn_mw=STABILITY_SN_MW, ek_gws=STABILITY_EK_GWS))


def fcr_d_stability(f: complex, period_s: float) -> float:
    """|1 + F(jw) G_D(jw)| with the FCR-D power system model (``F`` normalised to the full
    capacity for 0.4 Hz), stability case; >= 0.43."""
    g = system(period_s, sn_mw=STABILITY_SN_MW, ek_gws=STABILITY_EK_GWS, dp_mw=FCR_D_DP_MW,
               df_hz=FCR_D_BAND_HZ)
    return abs(1.0 + f * g)


@dataclass(frozen=True)
class SinePoint:
    """One period's result: gain (1 = full capacity for the full band) and phase (degrees,
    negative = lagging) measured and required, and the Nordic criteria's values (FCR-D has
    no performance criterion on its sines: None)."""

    period_s: float
    cycles: int
    gain: float
    phase_deg: float
    required_gain: float
    required_phase_deg: float
    performance: float | None
    stability: float


def points(tr: Trace, segments: Sequence[SineSegment], capacity_w: float) -> list[SinePoint]:
    """Every period that was measured (a period the trace does not cover is left out)."""
    out = []
    for seg in segments:
        f = response(tr.t_s, tr.delivered_w, seg, capacity_w)
        if f is None:
            continue
        req = required_response(seg.period_s)
        fcr_d = seg.band_hz == FCR_D_BAND_HZ
        out.append(SinePoint(seg.period_s, seg.cycles, abs(f), math.degrees(cmath.phase(f)),
                             abs(req), math.degrees(cmath.phase(req)),
                             None if fcr_d else performance(f, seg.period_s),
                             fcr_d_stability(f, seg.period_s) if fcr_d
                             else stability(f, seg.period_s)))
    return out


def score_sines(tr: Trace, segments: Sequence[SineSegment],
                capacity_w: float) -> list[RuleResult]:
    """Per period: ``gain@T`` (% off the required gain, [-5, +20]), ``performance@T`` (<= 1)
    and ``stability@T`` (>= 0.43); a period the trace does not cover fails as not measured."""
    measured = {p.period_s: p for p in points(tr, segments, capacity_w)}
    rules: list[RuleResult] = []
    lim = (-100.0 * sc.BAND, 100.0 * sc.OVER)
    for seg in segments:
        tag = f"{seg.period_s:g}s"
        p = measured.get(seg.period_s)
        if p is None:
            why = (f"not measured: the trace does not cover {seg.measure_from_s:.0f}-"
                   f"{seg.measure_to_s:.0f} s at >= 8 samples per period")
            rules += [RuleResult(f"gain@{tag}", None, lim, False, "%", "in", why),
                      sc._rule(f"performance@{tag}", None, 1.0, "<=", "", why),
                      sc._rule(f"stability@{tag}", None, STABILITY_MARGIN, ">=", "", why)]
            continue
        off = 100.0 * (p.gain / p.required_gain - 1.0)
        seen = (f"gain {p.gain:.3f} (required {p.required_gain:.3f}), phase "
                f"{p.phase_deg:.1f} deg (required {p.required_phase_deg:.1f} deg), "
                f"{p.cycles} period(s) from {seg.measure_from_s:.0f} s")
        rules.append(RuleResult(f"gain@{tag}", off, lim, lim[0] <= off <= lim[1], "%", "in",
                                seen))
        rules.append(sc._rule(f"performance@{tag}", p.performance, 1.0, "<=", "",
                              "magnitude of D 0.95 G / (1 + F G), performance case"))
        rules.append(sc._rule(f"stability@{tag}", p.stability, STABILITY_MARGIN, ">=", "",
                              "magnitude of 1 + F G, stability case"))
    return rules


def score_fcr_d_sines(tr: Trace, segments: Sequence[SineSegment],
                      capacity_w: float) -> list[RuleResult]:
    """Dynamic FCR-D upwards, per period: ``stability@T`` (>= 0.43, the FCR-D model), with
    the gain and phase measured and required in its detail; a period the trace does not cover
    fails as not measured."""
    measured = {p.period_s: p for p in points(tr, segments, capacity_w)}
    rules: list[RuleResult] = []
    for seg in segments:
        tag = f"{seg.period_s:g}s"
        p = measured.get(seg.period_s)
        if p is None:
            rules.append(sc._rule(
                f"stability@{tag}", None, STABILITY_MARGIN, ">=", "",
                f"not measured: the trace does not cover {seg.measure_from_s:.0f}-"
                f"{seg.measure_to_s:.0f} s at >= 8 samples per period"))
            continue
        rules.append(sc._rule(
            f"stability@{tag}", p.stability, STABILITY_MARGIN, ">=", "",
            f"magnitude of 1 + F G, FCR-D stability case; gain {p.gain:.3f} (ideal "
            f"{p.required_gain:.3f}), phase {p.phase_deg:.1f} deg (ideal "
            f"{p.required_phase_deg:.1f} deg), {p.cycles} period(s) from "
            f"{seg.measure_from_s:.0f} s"))
    return rules
