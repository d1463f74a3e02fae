"""The floor any thread fan-out meets on this machine (``bench/fanout.py`` and the latency bench
report it beside the island's writes): no gridtao code and no simulated GPU, only bare Python
threads each woken to sleep a driver call's latency and signal back."""

from __future__ import annotations

import threading
import time

__all__ = ["bare_fanout"]


def bare_fanout(gpus: int, triggers: int, latency_s: float) -> list[float]:
    """Wall time of ``triggers`` fan-outs of ``gpus`` sleeps of ``latency_s`` on bare threads,
    ms: the calling thread sleeps one itself (as the island's submitting thread writes a GPU
    itself) and ``gpus - 1`` woken threads the rest; 10 ms between fan-outs."""
    go = [threading.Semaphore(0) for _ in range(gpus - 1)]
    done = threading.Semaphore(0)
    stop = False

    def worker(wake: threading.Semaphore) -> None:
        while True:
            wake.acquire()
            if stop:
                return
            time.sleep(latency_s)
            done.release()

    threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in go]
    for t in threads:
        t.start()
    out = []
    try:
        for _ in range(triggers):
            t0 = time.perf_counter()
            for wake in go:
                wake.release()
            time.sleep(latency_s)
            for _ in go:
                done.acquire()
            out.append((time.perf_counter() - t0) * 1000.0)
            time.sleep(0.010)
    finally:
        stop = True
        for wake in go:
            wake.release()
        for t in threads:
            t.join()
    return out
