"""Frequency test shapes for the compliance bench: the TSOs' test signals as sampled series.

A :class:`Shape` is what the bench publishes on ``{prefix}/frequency``: one sample every
``dt_s`` (10 Hz by default) from t = 0. Times are seconds from the shape's start, frequency in
Hz. ``nominal_hz`` is the test signal as the TSO writes it; ``hz`` is what the unit is sent:
for the Nordic FCR tests, which assume the unit's frequency meter has a first-order lag
1/(1+s) (time constant 1 s), a software-injected signal is passed through that lag first
(``lagged``); FFR and ERCOT thresholds are evaluated on the raw signal. ``marks`` names the
instants the scorer needs (step times, hold windows), ``holds`` the windows in which frequency
stays put (start, end, nominal Hz).

``time_scale`` shortens the long holds (FCR-D's 300 s at 49.5 Hz, FCR-N's levels) but never a
ramp rate: the rates are what the tests test. Sources: docs/sources.md#test-signals-and-measurement.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

DT_S = 0.1  # 10 Hz: the FCR-D logging floor (docs/sources.md#test-signals-and-measurement)
METER_TAU_S = 1.0  # the Nordic FCR rules' frequency-meter lag 1/(1+s)
LEAD_S = 6.0  # nominal frequency before a test: the agent settles, the bench takes its baseline
BASELINE_S = 5.0  # the reference power: mean over this long before an activation's part starts
STATIC_RAMP_DOWN_S = 110.0  # FCR-D static's ramp-down, planned (s): 1.10 of capacity at 1 %/s


@dataclass(frozen=True)
class Hold:
    """A window where the nominal frequency stays at ``hz`` (times in s)."""

    start_s: float
    end_s: float
    hz: float


@dataclass(frozen=True)
class SineSegment:
    """One period of a sinusoidal test (times in s, amplitude in Hz): the nominal frequency is
    ``center_hz - amplitude_hz x sin(2 pi (t - start_s) / period_s)`` from ``start_s`` (it
    falls first), and the response is measured over [measure_from_s, measure_to_s], whole
    periods after the settling time. ``band_hz``: the product's one-sided band, the frequency
    deviation that asks for its full capacity (FCR-N 0.1 Hz, FCR-D 0.4 Hz): a gain of 1 is the
    full capacity for that deviation."""

    period_s: float
    start_s: float
    measure_from_s: float
    measure_to_s: float
    amplitude_hz: float
    center_hz: float = 50.0
    band_hz: float = 0.1

    @property
    def cycles(self) -> int:
        """Whole periods measured."""
        return round((self.measure_to_s - self.measure_from_s) / self.period_s)


@dataclass(frozen=True)
class Shape:
    """A sampled test signal (module docstring). ``hz[k]`` is sent at ``k * dt_s``.
    ``shortened``: what the time scale cut, as "what: X s of the TSO's Y s" (empty when
    nothing was); ``glitches``: (start s, end s, lowest Hz) of the short dips a normal-frequency
    test injects, which must not activate anything; ``sines``: the sinusoidal segments."""

    name: str
    title: str
    dt_s: float
    nominal_hz: tuple[float, ...]
    hz: tuple[float, ...]
    lagged: bool
    nominal_frequency_hz: float = 50.0
    marks: dict[str, float] = field(default_factory=dict)
    holds: tuple[Hold, ...] = ()
    shortened: tuple[str, ...] = ()
    glitches: tuple[tuple[float, float, float], ...] = ()
    sines: tuple[SineSegment, ...] = ()

    @property
    def duration_s(self) -> float:
        return len(self.hz) * self.dt_s

    def times_s(self) -> list[float]:
        return [k * self.dt_s for k in range(len(self.hz))]


class _Builder:
    """Piecewise-linear nominal signal: holds and constant-rate ramps, then sampled."""

    def __init__(self, start_hz: float) -> None:
        self.t_s = 0.0
        self.hz = start_hz
        self._pieces: list[tuple[float, float, float, float]] = []  # t0, t1, hz0, hz1
        self.marks: dict[str, float] = {}
        self.holds: list[Hold] = []
        self.shortened: list[str] = []

    def hold_scaled(self, full_s: float, time_scale: float, floor_s: float,
                    mark: str | None = None) -> _Builder:
        """A hold the TSO writes as ``full_s`` seconds, shortened by ``time_scale`` (but not
        below ``floor_s``); a shortened one is listed in the shape's ``shortened``."""
        seconds = _scaled(full_s, time_scale, floor_s)
        if seconds < full_s - 1e-9:
            self.shortened.append(f"hold at {self.hz:g} Hz: {seconds:g} s of the TSO's "
                                  f"{full_s:g} s")
        return self.hold(seconds, mark)

    def hold(self, seconds: float, mark: str | None = None) -> _Builder:
        if mark:
            self.marks[mark] = self.t_s
        self._pieces.append((self.t_s, self.t_s + seconds, self.hz, self.hz))
        self.holds.append(Hold(self.t_s, self.t_s + seconds, self.hz))
        self.t_s += seconds
        return self

    def mark(self, name: str) -> _Builder:
        self.marks[name] = self.t_s
        return self

    def ramp(self, to_hz: float, rate_hz_per_s: float, mark: str | None = None) -> _Builder:
        if mark:
            self.marks[mark] = self.t_s
        seconds = abs(to_hz - self.hz) / rate_hz_per_s
        self._pieces.append((self.t_s, self.t_s + seconds, self.hz, to_hz))
        self.t_s += seconds
        self.hz = to_hz
        return self

    def step(self, to_hz: float, mark: str | None = None) -> _Builder:
        if mark:
            self.marks[mark] = self.t_s
        self.hz = to_hz
        return self

    def at(self, t_s: float) -> float:
        for t0, t1, h0, h1 in self._pieces:
            if t0 <= t_s < t1:
                return h0 + (h1 - h0) * (t_s - t0) / (t1 - t0) if t1 > t0 else h1
        return self.hz

    def shape(self, name: str, title: str, *, lagged: bool, dt_s: float = DT_S,
              nominal_frequency_hz: float = 50.0) -> Shape:
        n = math.floor(self.t_s / dt_s + 1e-9)
        nominal = [self.at(k * dt_s) for k in range(n)]
        sent = meter_lag(nominal, dt_s) if lagged else nominal
        return Shape(name, title, dt_s, tuple(nominal), tuple(sent), lagged,
                     nominal_frequency_hz, dict(self.marks), tuple(self.holds),
                     tuple(self.shortened))


def meter_lag(hz: Sequence[float], dt_s: float, tau_s: float = METER_TAU_S) -> list[float]:
    """``hz`` through a first-order lag 1/(1 + s tau) (exact for a signal held per sample)."""
    if not hz:
        return []
    alpha = 1.0 - math.exp(-dt_s / tau_s)
    out = [hz[0]]
    for x in hz[1:]:
        out.append(out[-1] + alpha * (x - out[-1]))
    return out


def _scaled(seconds: float, time_scale: float, floor_s: float) -> float:
    return max(floor_s, seconds * time_scale)


# ---- Nordic FCR-D ----------------------------------------------------------------------------


def fcr_d_ramps(time_scale: float = 0.1) -> Shape:
    """The FCR-D upwards ramp sequence: 0.14 Hz/s to 49.45 Hz, 0.09 Hz/s back to 49.9 Hz,
    0.24 Hz/s to 49.5 Hz held 300 s (scaled), back to 49.9 Hz, then the dynamic test: 0.24 Hz/s
    from 49.9 to 49.0 Hz and held (its first 7.5 s give dP(7.5 s) and the energy), then 50 Hz.
    Marks: ``hold_49_5``/``hold_49_5_end`` and ``dynamic`` (the last ramp's start)."""
    b = _Builder(50.0).hold(LEAD_S).mark("lead_end").step(49.9)
    b.ramp(49.45, 0.14, "ramp_0_14").hold_scaled(60, time_scale, 8.0, "hold_49_45")
    b.ramp(49.9, 0.09, "ramp_0_09").hold_scaled(60, time_scale, 8.0, "hold_49_9")
    b.ramp(49.5, 0.24, "ramp_0_24").hold_scaled(300, time_scale, 10.0, "hold_49_5")
    b.marks["hold_49_5_end"] = b.t_s
    b.ramp(49.9, 0.24).hold_scaled(60, time_scale, 8.0, "hold_49_9b")
    b.ramp(49.0, 0.24, "dynamic").hold_scaled(150, time_scale, 15.0, "hold_49_0")
    b.step(50.0, "recover").hold(8.0)
    return b.shape("fcr-d-ramps", "FCR-D upwards: ramp sequence and 0.24 Hz/s dynamic test",
                   lagged=True)


def fcr_d_dynamic(time_scale: float = 0.1) -> Shape:
    """Only the dynamic test: 49.9 Hz, 0.24 Hz/s to 49.0 Hz, held (scaled), 50 Hz."""
    b = _Builder(50.0).hold(LEAD_S).mark("lead_end").step(49.9).hold(2.0)
    b.ramp(49.0, 0.24, "dynamic").hold_scaled(150, time_scale, 15.0, "hold_49_0")
    b.step(50.0, "recover").hold(8.0)
    return b.shape("fcr-d-dynamic", "FCR-D upwards: 0.24 Hz/s ramp 49.9 -> 49.0 Hz",
                   lagged=True)


def fcr_d_static(time_scale: float = 0.1, threshold_hz: float = 49.7) -> Shape:
    """FCR-D static: a step to 0.1 Hz below the threshold, held (scaled), back to 50 Hz, then
    long enough for the 60 s wait above 49.9 Hz and a ramp-down to finish: 40 s at the
    2.5 %/s limit, ``STATIC_RAMP_DOWN_S`` for gridtao's (1 %/s with a margin of up to 10 % on
    top)."""
    b = _Builder(50.0).hold(LEAD_S).mark("lead_end")
    b.step(threshold_hz - 0.1, "step").hold_scaled(60, time_scale, 10.0, "hold_low")
    b.step(50.0, "recover").hold(60.0 + STATIC_RAMP_DOWN_S + 6.0)
    return b.shape("fcr-d-static", f"FCR-D static: step below {threshold_hz:g} Hz, return",
                   lagged=True)


# ---- Nordic FCR-N ----------------------------------------------------------------------------


def fcr_n_steps(time_scale: float = 0.1, settle_s: float = 10.0) -> Shape:
    """FCR-N steps 50.0 -> 49.95 -> 50.0 -> 49.9 -> 50.1 -> 50.0, each level held 60 s
    (scaled, but at least 20 s: FCR-N is not a seconds-scale product, and the scorer reads the
    steady state on each level's second half; the 49.9 -> 50.1 Hz step swings the node by twice
    its capacity). ``settle_s`` at 50 Hz first: the node settles on its FCR-N baseline."""
    b = _Builder(50.0).hold(LEAD_S + settle_s).mark("lead_end")
    for k, hz in enumerate((49.95, 50.0, 49.9, 50.1, 50.0)):
        b.step(hz, f"step_{k}").hold_scaled(60, time_scale, 20.0)
    return b.shape("fcr-n-steps", "FCR-N steps 50.0/49.95/50.0/49.9/50.1/50.0 Hz", lagged=True)


# ---- step products (FFR, ERCOT FFR) -----------------------------------------------------------


def ffr_step(threshold_hz: float, *, depth_hz: float = 0.05, low_s: float = 2.0,
             after_s: float = 12.0, nominal_hz: float = 50.0, lead_s: float = LEAD_S) -> Shape:
    """A step from nominal to ``depth_hz`` below the threshold (mark ``event``), held
    ``low_s``, then nominal for ``after_s`` (the product's support and ramp-out run on)."""
    b = _Builder(nominal_hz).hold(lead_s).mark("lead_end")
    b.step(threshold_hz - depth_hz, "event").hold(low_s)
    b.step(nominal_hz, "recover").hold(after_s)
    return b.shape(f"step-{threshold_hz:g}", f"step to {threshold_hz - depth_hz:g} Hz "
                   f"(threshold {threshold_hz:g} Hz)", lagged=False,
                   nominal_frequency_hz=nominal_hz)


def large_trip(threshold_hz: float, *, rate_hz_per_s: float = 0.25, nadir_hz: float = 49.3,
               nadir_s: float = 3.0, recover_hz_per_s: float = 0.05,
               after_s: float = 4.0) -> Shape:
    """A large trip: frequency falls at ``rate_hz_per_s`` from 50 Hz to ``nadir_hz``, stays
    ``nadir_s``, recovers at ``recover_hz_per_s``. Mark ``event``: the instant the falling
    signal crosses ``threshold_hz``."""
    b = _Builder(50.0).hold(LEAD_S).mark("lead_end")
    b.ramp(nadir_hz, rate_hz_per_s, "fall").hold(nadir_s, "nadir")
    b.ramp(50.0, recover_hz_per_s, "recover").hold(after_s)
    b.marks["event"] = b.marks["fall"] + (50.0 - threshold_hz) / rate_hz_per_s
    return b.shape("large-trip", f"large trip: {rate_hz_per_s:g} Hz/s to {nadir_hz:g} Hz",
                   lagged=False)


def ercot_step(*, threshold_hz: float = 59.85, support_s: float = 18.0) -> Shape:
    """ERCOT (60 Hz): a step to 0.05 Hz below 59.85 Hz, then back; the support runs on."""
    return ffr_step(threshold_hz, nominal_hz=60.0, after_s=support_s + 6.0)


# ---- normal frequency ------------------------------------------------------------------------


NORMAL_MIN_CORRELATION_TIMES = 10  # a normal-frequency test lasts at least 10 tau ...
NORMAL_MAX_CORRELATION_TIMES = 30  # ... and is extended, up to 30 tau, until it has its spread
NORMAL_SPREAD_TOLERANCE = 0.15  # "has its spread": RMS deviation within 15 % of std_hz
NORMAL_SEED = 3  # the bench's default realisation


def normal_frequency(duration_s: float = 60.0, *, std_hz: float = 0.04, tau_s: float = 30.0,
                     seed: int = NORMAL_SEED, nominal_hz: float = 50.0,
                     threshold_hz: float | None = None, dt_s: float = DT_S) -> Shape:
    """Synthetic normal operation: an Ornstein-Uhlenbeck process around nominal with
    stationary standard deviation ``std_hz`` (Hz) and correlation time ``tau_s`` (s) (Nordic:
    about 40-45 mHz), seeded, exactly discretised. It starts from its stationary distribution
    (the first sample, the lead's too, is drawn from N(nominal, std_hz), not nominal), lasts
    at least ``duration_s`` and 10 correlation times after the lead, and runs on (up to 30
    correlation times) until the RMS deviation from nominal after the lead is within 15 % of
    ``std_hz``; the title states the spread actually sent. With ``threshold_hz``, it carries
    realistic glitches that must not activate anything: single samples below the threshold
    (one 0.1 Hz under it, one 0.3 Hz under it: a meter glitch) and a 100 ms dip 0.05 Hz under
    it (one sample at 10 Hz; ``glitches``, marks ``glitch_<k>``), spread over the test and
    away from its ends."""
    rng = random.Random(seed)
    a = math.exp(-dt_s / tau_s)
    kick = std_hz * math.sqrt(1.0 - a * a)
    lead = round(LEAD_S / dt_s)
    least = round(max(duration_s, NORMAL_MIN_CORRELATION_TIMES * tau_s) / dt_s)
    most = round(max(duration_s, NORMAL_MAX_CORRELATION_TIMES * tau_s) / dt_s)
    x = rng.gauss(0.0, std_hz)  # the stationary distribution
    out: list[float] = []
    for _ in range(lead):
        out.append(nominal_hz + x)
        x = a * x + kick * rng.gauss(0.0, 1.0)
    dev: list[float] = []
    square = 0.0
    while len(dev) < least or (
            len(dev) < most
            and abs(math.sqrt(square / len(dev)) - std_hz) > NORMAL_SPREAD_TOLERANCE * std_hz):
        dev.append(x)
        square += x * x
        x = a * x + kick * rng.gauss(0.0, 1.0)
    out += [nominal_hz + d for d in dev]
    rms = math.sqrt(square / len(dev))
    marks = {"lead_end": LEAD_S}
    glitches: list[tuple[float, float, float]] = []
    if threshold_hz is not None:
        dip = max(1, round(0.1 / dt_s))  # 100 ms of samples
        plan = ((0.2, 1, 0.1), (0.5, dip, 0.05), (0.8, 1, 0.3))  # (where, samples, depth Hz)
        for k, (where, samples, depth) in enumerate(plan):
            first = lead + round(where * len(dev))
            for j in range(first, first + samples):
                out[j] = min(out[j], threshold_hz - depth)
            marks[f"glitch_{k}"] = first * dt_s
            glitches.append((first * dt_s, (first + samples) * dt_s, threshold_hz - depth))
    title = (f"normal frequency (std {std_hz * 1000:.0f} mHz, RMS {rms * 1000:.0f} mHz "
             f"over {len(dev) * dt_s:.0f} s, seed {seed}"
             + (f", {len(glitches)} glitches below {threshold_hz:g} Hz)" if glitches else ")"))
    # The signal itself is the measured frequency: no extra meter lag.
    return Shape("normal", title, dt_s, tuple(out), tuple(out), False, nominal_hz, marks,
                 (), (), tuple(glitches))


def constant(duration_s: float, nominal_hz: float = 50.0) -> Shape:
    """Nominal frequency throughout (demand-response tests)."""
    return _Builder(nominal_hz).hold(LEAD_S).mark("lead_end").hold(duration_s - LEAD_S).shape(
        "nominal", f"{nominal_hz:g} Hz", lagged=False, nominal_frequency_hz=nominal_hz)

