"""A bare-thread reference for the island's write fan-out (``bench/fanout.py`` and the latency
bench report it beside the island's writes): no gridtao code and no simulated GPU, only bare
Python threads each woken to sleep a driver call's latency and signal back.

It is one fixed scheme, the calling thread sleeping one call itself and ``gpus - 1`` woken
threads the rest, so it is a reference for what thread wake-ups and interpreter hand-offs cost
on the host, not a floor the island cannot go under: the island's submitting thread writes as
many GPUs as no worker has taken yet. Measured at the agent's GIL switch interval."""

from __future__ import annotations

import sys
import threading
import time

from gridtao.app.options import GIL_SWITCH_INTERVAL_S

__all__ = ["bare_fanout"]

#: A fan-out whose threads have not all signalled back after this long is a bug (s).
STUCK_S = 10.0


def bare_fanout(gpus: int, triggers: int, latency_s: float) -> list[float]:
    """Wall time of ``triggers`` fan-outs of ``gpus`` sleeps of ``latency_s`` on bare threads,
    ms: the calling thread sleeps one itself and ``gpus - 1`` woken threads the rest; 10 ms
    between fan-outs. Raises ``RuntimeError`` if a thread does not signal back within
    :data:`STUCK_S`."""
    go = [threading.Semaphore(0) for _ in range(gpus - 1)]
    done = threading.Semaphore(0)
    stop = threading.Event()

    def worker(wake: threading.Semaphore) -> None:
        while True:
            wake.acquire()
            if stop.is_set():
                return
            time.sleep(latency_s)
            done.release()

    threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in go]
    for t in threads:
        t.start()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as the agent runs
    out = []
    try:
        for _ in range(triggers):
            t0 = time.perf_counter()
            for wake in go:
                wake.release()
            time.sleep(latency_s)
            for _ in go:
                if not done.acquire(timeout=STUCK_S):
                    raise RuntimeError(f"a bare thread did not signal back in {STUCK_S} s")
            out.append((time.perf_counter() - t0) * 1000.0)
            time.sleep(0.010)
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        for wake in go:
            wake.release()
        for t in threads:
            t.join(timeout=STUCK_S)
    return out
