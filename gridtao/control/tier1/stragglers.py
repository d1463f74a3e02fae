"""Keep one slow GPU from slowing tier 1 for all of them.

A power read that takes longer than ``slow_s`` quarantines its GPU: tier 1 stops reading it on its
own thread and uses what a probe thread last read (the old reading until then), holding that
GPU's limit. The probe keeps reading it; the first read faster than ``slow_s`` hands the GPU back
to the loop. So a hung or slow driver call costs the loop one slow read, not one per step.
Times are seconds of the injected clock; thread-safe for one loop thread plus the probes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gridtao.clock import Clock
from gridtao.gpu.backend import GpuError

log = logging.getLogger("gridtao.control.tier1.loop")


class Stragglers:
    """Quarantine and probe state for ``count`` GPUs read with ``read(position) -> mW``."""

    def __init__(
        self, read: Callable[[int], int], count: int, *, clock: Clock, slow_s: float
    ) -> None:
        if slow_s <= 0:
            raise ValueError("slow_s must be > 0")
        self._read = read
        self._clock = clock
        self.slow_s = slow_s
        self._quarantined = [False] * count
        self._latest: list[float | None] = [None] * count
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._probes: list[threading.Thread] = []

    def quarantined(self, i: int) -> bool:
        return self._quarantined[i]

    def take_latest_mw(self, i: int) -> float | None:
        """The probe's newest reading of quarantined GPU ``i`` (None if nothing new)."""
        with self._lock:
            value, self._latest[i] = self._latest[i], None
        return value

    def observe(self, i: int, duration_s: float) -> None:
        """Tier 1 read GPU ``i`` directly in ``duration_s``: quarantine it if that was slow."""
        if duration_s <= self.slow_s or self._stop.is_set():
            return
        with self._lock:
            if self._quarantined[i]:
                return
            self._quarantined[i] = True
        log.warning("GPU %d: power read took %.0f ms; reading it off the loop until it is fast",
                    i, duration_s * 1000)
        probe = threading.Thread(target=self._probe, args=(i,), name=f"gridtao-probe{i}",
                                 daemon=True)
        self._probes.append(probe)
        probe.start()

    def _probe(self, i: int) -> None:
        while not self._stop.is_set():
            t0 = self._clock.now()
            try:
                value: float | None = float(self._read(i))
            except GpuError:
                value = None
            duration = self._clock.now() - t0
            with self._lock:
                if value is not None:
                    self._latest[i] = value
                if duration <= self.slow_s and value is not None:
                    self._quarantined[i] = False
                    log.info("GPU %d: power reads fast again", i)
                    return
            self._stop.wait(self.slow_s)

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the probes (a probe stuck in a driver call is a daemon and is left behind)."""
        self._stop.set()
        for probe in self._probes:
            probe.join(timeout_s)
