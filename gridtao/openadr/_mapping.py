"""From an OpenADR event to gridtao ``dr`` dispatches, or to a refusal. Pure functions.

:func:`decide` takes a checked event (:mod:`._events`), what the nodes report of the site
(:class:`SiteSnapshot`), the configuration and the time, and returns a :class:`Decision`: opt
in with the dispatches to publish, or opt out with a fixed reason label and a sentence. Nothing
here reads a clock or draws a random number: ``now`` (Unix s) and the start-after delay come in
as arguments. The table of what maps to what is in docs/openadr.md; the rules in brief:

* one signal is used: LOAD_DISPATCH, else LOAD_CONTROL, else SIMPLE (the most specific one
  present); price and other signals are not demand reductions and are not acted on;
* every interval becomes a site reduction in W or a fraction of the draw; equal neighbours
  merge, zero ones are gaps, each run becomes one dispatch (successive dispatches); the event's
  ramp-up goes to the first, its recovery to the last;
* a site reduction in W is sent as ``reduction_w`` when one node is online (exact), else as the
  ``fraction`` of the site's draw it is, so every node sheds its share (the dispatch topic is
  broadcast: a ``reduction_w`` there would be taken by every node).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from gridtao.openadr._config import BridgeConfig
from gridtao.openadr._events import OadrEvent, OadrSignal

__all__ = [
    "REFUSAL_LABELS",
    "Decision",
    "PlannedDispatch",
    "SiteSnapshot",
    "decide",
    "interval_reduction",
]

#: Reason labels of opt-outs (metrics label values: few and fixed).
REFUSAL_LABELS: Final = (
    "unknown_target", "wrong_program", "unsupported_signal", "bad_signal", "in_the_past",
    "too_far_ahead", "too_long", "open_ended", "too_deep", "no_status", "modification_flood",
    "bad_event",
)
SIGNAL_PREFERENCE: Final = ("LOAD_DISPATCH", "LOAD_CONTROL", "SIMPLE")
#: Reductions below this share of the draw are taken as no reduction (rounding of setpoints).
NEGLIGIBLE_FRACTION: Final = 1e-4


@dataclass(frozen=True)
class SiteSnapshot:
    """What the nodes' retained statuses say now, summed over the online nodes whose status is
    fresh. Power in W: ``it_power_w`` the GPUs' measured power; ``draw_w`` the nodes' IT draw
    (``capacity.draw_w``); ``settlement_draw_w`` the same at each node's settlement point;
    ``deliverable_w`` the reduction they can deliver now (``capacity.deliverable_w``, at the
    settlement point); ``max_it_w`` the GPUs' summed default limits."""

    nodes: int
    it_power_w: float
    draw_w: float
    settlement_draw_w: float
    deliverable_w: float
    max_it_w: float


@dataclass(frozen=True)
class PlannedDispatch:
    """One ``dr`` dispatch to publish: times Unix s, durations s; exactly one of
    ``reduction_w`` (per node, W) or ``fraction``; ``site_reduction_w`` the reduction it asks
    of the whole site by the snapshot it was decided on (for the audit trail)."""

    start_at: float
    duration_s: float
    ramp_s: float
    recovery_s: float
    reduction_w: float | None
    fraction: float | None
    site_reduction_w: float

    def body(self, dispatch_id: str) -> dict[str, object]:
        """The wire payload (unsigned, without ``issued_at``)."""
        body: dict[str, object] = {
            "id": dispatch_id, "kind": "dr", "start_at": round(self.start_at, 3),
            "duration_s": round(self.duration_s, 3), "ramp_s": round(self.ramp_s, 3),
            "recovery_s": round(self.recovery_s, 3)}
        if self.reduction_w is not None:
            body["reduction_w"] = round(self.reduction_w, 1)
        else:
            body["fraction"] = round(self.fraction or 0.0, 5)
        return body


@dataclass(frozen=True)
class Decision:
    """Opt in (with ``dispatches``, possibly none: nothing to cut) or out (``label`` one of
    :data:`REFUSAL_LABELS`, ``reason`` the sentence). ``signal`` names the signal used."""

    opt_in: bool
    label: str
    reason: str
    dispatches: tuple[PlannedDispatch, ...] = ()
    signal: str | None = None
    notes: tuple[str, ...] = field(default=())


def _refuse(label: str, reason: str, signal: str | None = None) -> Decision:
    return Decision(False, label, reason, (), signal)


class _BadSignal(ValueError):
    pass


def _pick_signal(signals: Sequence[OadrSignal]) -> OadrSignal | None:
    for name in SIGNAL_PREFERENCE:
        for signal in signals:
            if signal.name.upper() == name:
                return signal
    return None


def _watts(signal: OadrSignal, value: float) -> float:
    """A power signal's value in W (its itemBase's unit and scale)."""
    if signal.unit is None:
        raise _BadSignal(f"{signal.name} {signal.type} carries no unit (itemBase); "
                         "a power in W is needed")
    if signal.unit not in ("W", "w"):
        raise _BadSignal(f"{signal.name} {signal.type} is in {signal.unit!r}; only W "
                         "(with an SI scale) is understood")
    return value * signal.scale


def interval_reduction(signal: OadrSignal, value: float, site: SiteSnapshot | None,
                       config: BridgeConfig) -> tuple[float | None, float | None]:
    """``(site W, fraction)`` one interval asks, exactly one not None (W at the settlement
    point, for the whole site); ``(None, 0.0)`` for no reduction. Raises _BadSignal."""
    name, kind = signal.name.upper(), signal.type
    if name == "SIMPLE":
        if kind != "level":
            raise _BadSignal(f"SIMPLE signal of type {kind!r}; only 'level' is defined")
        if value != int(value) or not 0 <= value <= 3:
            raise _BadSignal(f"SIMPLE level {value:g} is not 0, 1, 2 or 3")
        if value == 0:
            return None, 0.0
        for entry in config.mapping.simple_levels:
            if entry.level == int(value):
                return entry.reduction_w, entry.fraction
        raise _BadSignal(f"SIMPLE level {int(value)} is not configured "
                         "(mapping.simple_levels)")
    if name == "LOAD_DISPATCH":
        if kind == "delta":
            watts = _watts(signal, value)
            if watts > 0:
                raise _BadSignal(f"LOAD_DISPATCH delta +{watts:g} W asks for more load; the "
                                 "site only reduces")
            return (-watts, None) if watts < 0 else (None, 0.0)
        if kind == "setpoint":
            watts = _watts(signal, value)
            if watts < 0:
                raise _BadSignal(f"LOAD_DISPATCH setpoint {watts:g} W is negative")
            if site is None or site.nodes == 0:
                raise _BadSignal("a setpoint needs the site's draw, and no node reports it")
            cut = site.settlement_draw_w - watts
            return (cut, None) if cut > NEGLIGIBLE_FRACTION * site.settlement_draw_w \
                else (None, 0.0)
        raise _BadSignal(f"LOAD_DISPATCH of type {kind!r}; 'setpoint' and 'delta' are "
                         "understood")
    if name == "LOAD_CONTROL":
        if kind == "x-loadControlCapacity":
            if not 0 <= value <= 1:
                raise _BadSignal(f"x-loadControlCapacity {value:g} is outside [0, 1]")
            return (None, 1.0 - value)
        if kind == "x-loadControlPercentOffset":
            if value > 0 or value < -100:
                raise _BadSignal(f"x-loadControlPercentOffset {value:g} is not in [-100, 0] "
                                 "(the site only reduces)")
            return (None, -value / 100.0)
        raise _BadSignal(f"LOAD_CONTROL of type {kind!r}; 'x-loadControlCapacity' and "
                         "'x-loadControlPercentOffset' are understood")
    raise _BadSignal(f"signal {signal.name!r} is not a demand reduction")


def _targets_ok(event: OadrEvent, config: BridgeConfig, ven_id: str | None) -> str | None:
    """None when the event is for this site, else why not."""
    if not event.targets:
        return None  # no target: every resource of the VEN the event was sent to
    mine = {("resource_id", r) for r in config.policy.resources}
    mine |= {("group_id", g) for g in config.policy.groups}
    if ven_id is not None:
        mine.add(("ven_id", ven_id))
    if any(t in mine for t in event.targets):
        return None
    shown = ", ".join(f"{kind}={value}" for kind, value in event.targets[:4])
    return f"the event targets {shown}, none of which this site serves (policy.resources)"


def decide(event: OadrEvent, *, site: SiteSnapshot | None, config: BridgeConfig, now: float,
           start_delay_s: float = 0.0, ven_id: str | None = None) -> Decision:
    """Opt in or out of ``event`` (status far/near/active) at ``now`` (Unix s), shifting it by
    ``start_delay_s`` (s, the start-after randomization drawn by the caller)."""
    policy = config.policy
    wrong_target = _targets_ok(event, config, ven_id)
    if wrong_target is not None:
        return _refuse("unknown_target", wrong_target)
    if policy.market_contexts and event.market_context not in policy.market_contexts:
        return _refuse("wrong_program", f"market context {event.market_context[:80]!r} is not "
                       "one of policy.market_contexts")
    if event.duration_s <= 0:
        return _refuse("open_ended", "an open-ended event (duration 0) has no end the nodes "
                       "could hold to")
    if event.duration_s > policy.max_duration_s:
        return _refuse("too_long", f"duration {event.duration_s:g} s exceeds "
                       f"policy.max_duration_s {policy.max_duration_s:g} s")
    if event.end_at <= now:
        return _refuse("in_the_past", f"the event ended {now - event.end_at:.0f} s ago")
    if event.start_at < now - policy.max_late_start_s:
        return _refuse("in_the_past", f"the event started {now - event.start_at:.0f} s ago "
                       f"(policy.max_late_start_s {policy.max_late_start_s:g} s)")
    if event.start_at > now + policy.max_start_ahead_s:
        return _refuse("too_far_ahead", f"the event starts in {event.start_at - now:.0f} s "
                       f"(policy.max_start_ahead_s {policy.max_start_ahead_s:g} s)")
    signal = _pick_signal(event.signals)
    if signal is None:
        names = ", ".join(sorted({s.name for s in event.signals}))[:120]
        return _refuse("unsupported_signal", f"no demand-reduction signal ({names}); "
                       f"understood: {', '.join(SIGNAL_PREFERENCE)}")
    label = f"{signal.name} {signal.type}"
    if policy.require_status and (site is None or site.nodes == 0):
        return _refuse("no_status", "no node's status is known: the site's capacity cannot "
                       "be checked (policy.require_status)", label)
    runs: list[tuple[float, float, float | None, float | None]] = []  # start, end, W, fraction
    try:
        for iv in signal.intervals:
            if iv.duration_s <= 0:
                raise _BadSignal("an interval of duration 0 has no end")
            watts, fraction = interval_reduction(signal, iv.value, site, config)
            start, end = iv.start_at, iv.start_at + iv.duration_s
            if runs and runs[-1][2:] == (watts, fraction) and abs(runs[-1][1] - start) < 1e-6:
                runs[-1] = (runs[-1][0], end, watts, fraction)
            else:
                runs.append((start, end, watts, fraction))
    except _BadSignal as e:
        return _refuse("bad_signal", str(e), label)
    planned: list[PlannedDispatch] = []
    notes: list[str] = []
    active = [r for r in runs if r[3] != 0.0 and r[1] + start_delay_s > now]
    for k, (start, end, watts, fraction) in enumerate(active):
        first, last = k == 0, k == len(active) - 1
        draw = site.settlement_draw_w if site is not None else 0.0
        if fraction is not None:
            if fraction > policy.max_fraction:
                return _refuse("too_deep", f"{fraction:.3g} of the draw exceeds "
                               f"policy.max_fraction {policy.max_fraction:g}", label)
            site_w = fraction * draw
        else:
            assert watts is not None
            site_w = watts
        if site is not None and site.nodes > 0:
            allowed = site.deliverable_w * policy.deliverable_share
            if site_w > allowed + 1e-6:
                return _refuse("too_deep", f"{site_w:.0f} W asked; the nodes can deliver "
                               f"{site.deliverable_w:.0f} W now (policy.deliverable_share "
                               f"{policy.deliverable_share:g})", label)
        reduction_w: float | None = None
        if fraction is None:
            assert watts is not None
            if site is not None and site.nodes == 1:
                reduction_w = watts
            elif site is not None and draw > 0:
                fraction = watts / draw
                notes.append(f"{watts:.0f} W for {site.nodes} nodes sent as fraction "
                             f"{fraction:.4f} of their {draw:.0f} W")
                if fraction > policy.max_fraction:
                    return _refuse("too_deep", f"{watts:.0f} W is {fraction:.3g} of the "
                                   f"draw, above policy.max_fraction {policy.max_fraction:g}",
                                   label)
            else:
                return _refuse("no_status", "a reduction in W needs the number of nodes and "
                               "their draw, and no node reports them", label)
        planned.append(PlannedDispatch(
            start_at=start + start_delay_s, duration_s=end - start,
            ramp_s=event.ramp_s if first else 0.0,
            recovery_s=event.recovery_s if last else 0.0,
            reduction_w=reduction_w, fraction=fraction, site_reduction_w=site_w))
    if not planned:
        notes.append("every interval asks no reduction: nothing to dispatch")
    elif math.isclose(start_delay_s, 0.0):
        pass
    else:
        notes.append(f"start delayed {start_delay_s:.3f} s within the start-after window "
                     f"{event.start_after_s:g} s")
    return Decision(True, "opt_in", "taken", tuple(planned), label, tuple(notes))
