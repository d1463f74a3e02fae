"""Work sources: Prometheus endpoints of inference servers and training jobs, scraped off the
hot path, each on a daemon thread of its own.

Each source (:class:`SourceSpec`) is scraped every ``period_s`` seconds on a fixed schedule
(start + k x period; a slot missed because a scrape overran is skipped, never bunched), and a
scrape gives up after ``timeout_s`` (gridtao/work/exposition.py). A slow or dead source so
delays nothing but itself: no other source, and never the island, tier 1 or the controller
loop, which never call in here. Per source it keeps (:class:`SourceSnapshot`):

* the last values of its counters, and their rates (per second, over the last two successful
  scrapes);
* totals that count through a server's restarts: a counter that goes down means the server
  restarted, so that interval's rate is skipped and the total grows by the new value (what the
  server counted since it restarted). A total starts at the counter's value when first seen;
* its health: ``ok``, ``down`` (no answer, refused, error status, timeout) or ``garbage`` (not
  an exposition, or none of its counters), with the reason and the time of the last success.
  Each change of health is logged once, not each scrape.

Times are the clock's monotonic seconds (real time: the endpoints are real). Thread-safe: the
scrape threads write, any thread (the metrics server's) reads snapshots.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gridtao.clock import Clock, MonotonicClock
from gridtao.work.exposition import Key, SourceDown, SourceGarbage, counters_for, fetch, parse

__all__ = ["Health", "SourceSnapshot", "SourceSpec", "WorkScraper"]

log = logging.getLogger("gridtao.work")

Health = Literal["pending", "ok", "down", "garbage"]

#: How long close() waits for each scrape thread (a scrape in flight ends at its timeout).
JOIN_S = 2.0


@dataclass(frozen=True)
class SourceSpec:
    """A work source: ``kind`` one of vllm, sglang, tgi, nim, custom (``counters``: the custom
    counters' sample names); ``gpus``: the GPU indices it runs on. Seconds."""

    name: str
    url: str
    kind: str
    gpus: tuple[int, ...] = ()
    period_s: float = 5.0
    timeout_s: float = 1.0
    counters: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceSnapshot:
    """A source as last scraped. ``last_success_s``: clock seconds of the last successful
    scrape (None: none yet); ``values``: the counters' last values; ``totals``: counted through
    restarts; ``rates``: per second over the last two successful scrapes (a key without a rate
    was new, or reset, in that interval). Keys: (model, "generation" | "prompt") for tokens,
    ("", unit) for custom counters."""

    spec: SourceSpec
    health: Health = "pending"
    reason: str = ""
    last_success_s: float | None = None
    scrapes: int = 0
    resets: int = 0
    values: Mapping[Key, float] = field(default_factory=dict)
    totals: Mapping[Key, float] = field(default_factory=dict)
    rates: Mapping[Key, float] = field(default_factory=dict)


class _State:
    """One source's counters and health; guarded by the scraper's lock."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.counters = counters_for(spec.kind, spec.counters)
        self.health: Health = "pending"
        self.reason = ""
        self.last_success_s: float | None = None
        self.scrapes = 0
        self.resets = 0
        self.values: dict[Key, float] = {}  # last value seen of every key ever seen
        self.present: set[Key] = set()  # keys of the last successful scrape
        self.totals: dict[Key, float] = {}
        self.rates: dict[Key, float] = {}

    def succeeded(self, values: Mapping[Key, float], now: float) -> None:
        dt = None if self.last_success_s is None else now - self.last_success_s
        rates: dict[Key, float] = {}
        for key, value in values.items():
            old = self.values.get(key)
            if old is None:
                self.totals[key] = value
            elif value < old:  # the server restarted: it counted `value` since
                self.resets += 1
                self.totals[key] += value
            else:
                self.totals[key] += value - old
                if key in self.present and dt is not None and dt > 0:
                    rates[key] = (value - old) / dt
            self.values[key] = value
        self.present = set(values)
        self.rates = rates
        self.last_success_s = now
        self.health, self.reason = "ok", ""

    def snapshot(self) -> SourceSnapshot:
        return SourceSnapshot(self.spec, self.health, self.reason, self.last_success_s,
                              self.scrapes, self.resets, dict(self.values), dict(self.totals),
                              dict(self.rates))


class WorkScraper:
    """Scrapes ``specs`` (unique names), each on its own daemon thread once :meth:`start`
    is called; :meth:`scrape` does one scrape on the calling thread (tests, tools).
    ``fetch(url, timeout_s)`` returns the exposition text (default: HTTP GET)."""

    def __init__(self, specs: Sequence[SourceSpec], *, clock: Clock | None = None,
                 fetch: Callable[[str, float], str] = fetch) -> None:
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._fetch = fetch
        self._lock = threading.Lock()
        self._states = {s.name: _State(s) for s in specs}
        if len(self._states) != len(specs):
            raise ValueError("work sources need unique names")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners: list[Callable[[float, str, str, tuple[int, ...],
                                        Mapping[Key, float]], object]] = []

    def subscribe(self, listener: Callable[[float, str, str, tuple[int, ...],
                                            Mapping[Key, float]], object]) -> None:
        """Call ``listener(wall_s, source, kind, gpus, values)`` after each successful scrape,
        on the scrape's thread, outside the scraper's lock: the clock's wall time (Unix s),
        the source's name, kind and GPU indices, and its counters' values (a fresh dict the
        listener may keep). It must not block (the history recorder queues them). Subscribe
        before :meth:`start`."""
        self._listeners.append(listener)

    @property
    def specs(self) -> tuple[SourceSpec, ...]:
        return tuple(s.spec for s in self._states.values())

    def now(self) -> float:
        """The scraper's clock, monotonic seconds (for ages of ``last_success_s``)."""
        return self._clock.now()

    def snapshots(self) -> tuple[SourceSnapshot, ...]:
        """Every source as last scraped, in configuration order; any thread."""
        with self._lock:
            return tuple(s.snapshot() for s in self._states.values())

    def scrape(self, name: str) -> SourceSnapshot:
        """Scrape source ``name`` once, now, on the calling thread; its snapshot after."""
        state = self._states[name]
        spec = state.spec
        health: Health = "ok"
        values: dict[Key, float] = {}
        reason = ""
        try:
            values = parse(self._fetch(spec.url, spec.timeout_s), state.counters)
        except SourceDown as e:
            health, reason = "down", str(e)
        except SourceGarbage as e:
            health, reason = "garbage", str(e)
        now = self._clock.now()
        with self._lock:
            before = state.health
            state.scrapes += 1
            if health == "ok":
                state.succeeded(values, now)
            else:
                state.health, state.reason = health, reason
            snap = state.snapshot()
        if health != before:
            _say(spec, before, snap)
        if health == "ok":
            wall = self._clock.wall()
            for listener in self._listeners:
                listener(wall, spec.name, spec.kind, spec.gpus, dict(values))
        return snap

    def start(self) -> None:
        """One daemon thread per source, scraping at once and then every ``period_s``."""
        if self._threads:
            return
        for name in self._states:
            t = threading.Thread(target=self._run, args=(name,), name=f"work-{name}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def close(self) -> None:
        """Stop the threads (a scrape in flight ends at its timeout; waited for a short
        while, then left to finish: the threads are daemons). Idempotent."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=JOIN_S)

    def _run(self, name: str) -> None:
        period = self._states[name].spec.period_s
        start = self._clock.now()
        slot = 0
        while not self._stop.is_set():
            try:
                self.scrape(name)
            except Exception:  # a bug must not end the thread silently, nor the agent
                log.exception("work source %s: scrape failed", name)
            now = self._clock.now()
            slot = max(slot + 1, math.ceil((now - start) / period))
            if self._stop.wait(max(0.0, start + slot * period - now)):
                return


def _say(spec: SourceSpec, before: Health, snap: SourceSnapshot) -> None:
    """One log line for a change of health."""
    if snap.health == "ok":
        was = "back" if before != "pending" else "up"
        log.info("work source %s (%s at %s): %s", spec.name, spec.kind, spec.url, was)
    elif snap.health == "down":
        log.warning("work source %s (%s at %s) is down: %s; skipped until it answers",
                    spec.name, spec.kind, spec.url, snap.reason)
    else:
        log.warning("work source %s (%s at %s) returns garbage: %s; skipped until it "
                    "serves its counters", spec.name, spec.kind, spec.url, snap.reason)
