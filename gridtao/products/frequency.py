"""Frequency-triggered events: which armed level fires, and when a fired level may release.

Pure logic on (sample, monotonic time): no I/O, no clock of its own, so it is tested in virtual
time and runs on the safety island's thread without touching the controller.

Rules (Nordic FFR style, per configured level):
- a sample at or below ``hz`` activates the level at once (no debounce: the activation budget is
  0.7-1.3 s and a debounce would spend it);
- an active level releases once frequency has stayed above ``hz + hysteresis_hz`` for
  ``recovery_s`` *and* the level has been held at least ``min_hold_s``;
- a level that is still active is not re-triggered; after it releases it can fire again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gridtao.config.agent import FrequencyTrigger

log = logging.getLogger("gridtao.frequency")


@dataclass(frozen=True)
class Activate:
    """Fire the armed caps of ``level_key`` as event ``event_id``."""

    level_key: str
    event_id: str
    hz: float


@dataclass(frozen=True)
class Release:
    """Start ramping out event ``event_id``."""

    level_key: str
    event_id: str


Action = Activate | Release


def level_key(trigger: FrequencyTrigger) -> str:
    """The island's arm key for a frequency level, e.g. ``freq:49.70``."""
    return f"freq:{trigger.hz:.2f}"


@dataclass
class _LevelState:
    trigger: FrequencyTrigger
    key: str
    event_id: str | None = None
    activated_at_s: float = 0.0
    above_since_s: float | None = None


class FrequencyMonitor:
    """Turns frequency samples into activate/release actions for each armed level."""

    def __init__(self, triggers: Sequence[FrequencyTrigger], *, event_prefix: str = "ffr",
                 stale_after_s: float | None = None) -> None:
        keys = [level_key(t) for t in triggers]
        if len(set(keys)) != len(keys):
            raise ValueError("frequency trigger levels must be distinct")
        self._levels = [_LevelState(t, k) for t, k in zip(triggers, keys, strict=True)]
        self._prefix = event_prefix
        self._count = 0
        self.last_hz: float | None = None
        #: Monotonic time of the last sample (None: none yet); read from any thread.
        self.last_sample_s: float | None = None
        #: A feed silent for longer than this is stale: taken as nominal frequency (None: never).
        self.stale_after_s = stale_after_s
        self.stale = False
        self._waiting_since_s: float | None = None  # the first look, while no sample has come

    def sample_age_s(self, now_s: float) -> float | None:
        """Seconds since the last sample (None before the first)."""
        return None if self.last_sample_s is None else max(0.0, now_s - self.last_sample_s)

    def check_stale(self, now_s: float) -> bool:
        """True while the feed is stale; logs when it becomes so (the caller's tick). A feed
        that never sent a sample is stale once ``stale_after_s`` has passed since the first
        look: a node enrolled in frequency products with no meter must not look healthy."""
        age = self.sample_age_s(now_s)
        if age is None:
            if self._waiting_since_s is None:
                self._waiting_since_s = now_s
            age = now_s - self._waiting_since_s
        if self.stale_after_s is None or age <= self.stale_after_s:
            return False
        if not self.stale:
            self.stale = True
            if self.last_hz is None:
                log.warning("frequency feed stale: no sample since start (%.1f s): no "
                            "frequency trigger or product can activate until a meter "
                            "publishes", age)
            else:
                log.warning("frequency feed stale: no sample for %.1f s (last %.3f Hz); taken "
                            "as nominal, so frequency activations end by their rules", age,
                            self.last_hz)
        return True

    @property
    def active_event_ids(self) -> list[str]:
        return [lv.event_id for lv in self._levels if lv.event_id is not None]

    def on_sample(self, hz: float, now_s: float, *, wall_s: float) -> list[Action]:
        """Feed one sample (``now_s`` monotonic, ``wall_s`` Unix for the event id)."""
        if self.stale:
            self.stale = False
            log.info("frequency feed back: %.3f Hz", hz)
        self.last_hz, self.last_sample_s = hz, now_s
        actions: list[Action] = []
        for lv in self._levels:
            trig = lv.trigger
            if lv.event_id is None:
                if hz <= trig.hz:
                    self._count += 1
                    lv.event_id = f"{self._prefix}-{trig.hz:.2f}-{int(wall_s * 1000)}-{self._count}"
                    lv.activated_at_s = now_s
                    lv.above_since_s = None
                    actions.append(Activate(lv.key, lv.event_id, hz))
                continue
            if hz <= trig.hz + trig.hysteresis_hz:
                lv.above_since_s = None
            elif lv.above_since_s is None:
                lv.above_since_s = now_s
        actions.extend(self.on_tick(now_s))
        return actions

    def on_tick(self, now_s: float) -> list[Action]:
        """Release levels whose recovery and minimum hold have both elapsed. While the feed
        is stale every active level counts as recovered from the moment it went stale."""
        actions: list[Action] = []
        if self.check_stale(now_s):
            for lv in self._levels:
                if lv.event_id is not None and lv.above_since_s is None:
                    lv.above_since_s = now_s
        for lv in self._levels:
            if lv.event_id is None or lv.above_since_s is None:
                continue
            recovered = now_s - lv.above_since_s >= lv.trigger.recovery_s
            held = now_s - lv.activated_at_s >= lv.trigger.min_hold_s
            if recovered and held:
                actions.append(Release(lv.key, lv.event_id))
                lv.event_id = None
                lv.above_since_s = None
        return actions

    def forget(self, event_id: str) -> None:
        """Drop an event ended elsewhere (e.g. the island expired it after ``max_event_s``)."""
        for lv in self._levels:
            if lv.event_id == event_id:
                lv.event_id = None
                lv.above_since_s = None
