"""A simulated inference server (or training job): the work the machine's simulated GPUs do,
served as Prometheus counters in the names real servers use.

:class:`SimWork` opens the machine-wide simulated device (``shared.py``) with the settings it
was created with, as another process on the server would, and never sets a limit. The work
each GPU has done is the physics' own counter (``SimNvml.work_j``: the work served under the
limits it had, queued requests included; ``physics.py``), in the units of its workload's
throughput model (``throughput.py``). A scrape reads the counters at that moment, summed over
the GPUs served. A thread reads them every ``period_s`` seconds too, for the rate and to notice
a device that was destroyed (the server then stops):

* ``vllm``: ``vllm:generation_tokens_total{model_name=...}`` and
  ``vllm:prompt_tokens_total{model_name=...}`` (prompt tokens at a fixed ratio to the generated
  ones), as vLLM exports them;
* ``custom``: ``gridtao_sim_training_samples_total`` for a training device,
  ``gridtao_sim_generation_tokens_total`` otherwise.

:func:`serve` exposes them over HTTP with prometheus_client (a collector of its own, read at
scrape time, on a registry of its own) until SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import pynvml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gridtao.clock import Clock, MonotonicClock
from gridtao.config.agent import ConfigError
from gridtao.errors import GridtaoError
from gridtao.gpu.backend import GpuError
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.gpu.sim.shared import SimDeviceError
from gridtao.gpu.sim.throughput import PROMPT_TOKENS_PER_GENERATED, model_for

__all__ = ["KINDS", "SAMPLE_PERIOD_S", "SimWork", "WorkCollector", "WorkServerError",
           "print_ready", "serve"]

log = logging.getLogger("gridtao.gpu.sim.work")

Kind = Literal["vllm", "custom"]
KINDS: tuple[Kind, ...] = ("vllm", "custom")
#: How often each GPU is sampled, s.
SAMPLE_PERIOD_S = 0.05
SAMPLES_METRIC = "gridtao_sim_training_samples"
TOKENS_METRIC = "gridtao_sim_generation_tokens"


class WorkServerError(GridtaoError):
    """The server cannot start: no such device, GPUs it does not have, a kind that does not fit
    its workload, an address it cannot listen on. The message is one line."""


class SimWork:
    """The work of GPUs ``gpus`` (None: all) of the simulated device at ``path``.
    ``kind``: the exposition (None: ``vllm`` for inference, ``custom`` for training).
    Thread-safe: the sampling thread writes the counters, scrapes read them."""

    def __init__(self, path: str | Path, *, gpus: Sequence[int] | None = None,
                 kind: Kind | None = None, model_name: str = "gridtao-sim",
                 clock: Clock | None = None, period_s: float = SAMPLE_PERIOD_S) -> None:
        self.path = Path(path)
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.period_s = period_s
        self.model_name = model_name
        try:
            sim = SimNvml.open_existing(self.path, self.clock)
            if sim is None:
                raise WorkServerError(f"no simulated device at {self.path} (it is created by "
                                      "`gridtao sim create` or by the agent's first start)")
            self.sim = sim
        except (ConfigError, SimDeviceError, OSError, TypeError) as e:
            raise WorkServerError(f"simulated device {self.path}: {e}") from None
        try:
            count = self.sim.count
            chosen = tuple(range(count)) if gpus is None else tuple(gpus)
            bad = [i for i in chosen if not 0 <= i < count]
            if not chosen or bad or len(set(chosen)) != len(chosen):
                raise WorkServerError(
                    f"--gpus: the device has GPUs 0-{count - 1}; got "
                    f"{','.join(map(str, chosen)) or 'none'} (distinct indices, at least one)")
            self.gpus = chosen
            self.workload = _one_workload(self.sim, chosen, self.path)
            self.model = model_for(self.workload)
            training = self.model.unit == "samples"
            self.kind: Kind = kind if kind is not None else ("custom" if training else "vllm")
            if self.kind == "vllm" and training:
                raise WorkServerError(f"the GPUs served of {self.path} run a training workload "
                                      "(samples, not tokens): use --kind custom")
        except BaseException:
            self._close_device()
            raise
        # Full-speed joules per unit of each GPU's work (inf: an idle GPU, no work).
        self._joules = {i: model_for(self.sim.workloads[i].kind).joules_per_unit
                        for i in self.gpus}
        self._last: tuple[float, float] | None = None  # (t s, units) at the last sample
        self.rate = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Why sampling stopped on its own (the GPUs were lost): None while it runs.
        self.failure: str | None = None

    # -- sampling ---------------------------------------------------------------------------

    def sample(self) -> None:
        """Read the GPUs' work now, for the rate over the last period (the sampling thread's
        step; tests). Raises what reading them raises (``pynvml.NVMLError`` when the device
        is gone)."""
        t = self.clock.now()
        units = self._units()
        with self._lock:
            if self._last is not None and t > self._last[0]:
                self.rate = (units - self._last[1]) / (t - self._last[0])
            self._last = (t, units)

    def _units(self) -> float:
        """The work the GPUs served have done, in units (tokens or samples)."""
        return math.fsum(self.sim.work_j(i).served_j / self._joules[i] for i in self.gpus)

    def start(self, on_failure: Callable[[], None] | None = None) -> None:
        """Sample every ``period_s`` on a daemon thread; ``on_failure`` is called if the GPUs
        are lost (:attr:`failure` says why)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, args=(on_failure,),
                                        name="sim-work", daemon=True)
        self._thread.start()

    def _run(self, on_failure: Callable[[], None] | None) -> None:
        start = self.clock.now()
        slot = 0
        while not self._stop.is_set():
            try:
                self.sample()
            except (GpuError, pynvml.NVMLError) as e:
                self.failure = f"sampling the GPUs failed: {e}"
            except Exception as e:  # a bug: stop serving rather than serve frozen counters
                log.exception("simulated work: sampling failed")
                self.failure = f"sampling the GPUs failed: {type(e).__name__}: {e}"
            if self.failure is not None:
                if on_failure is not None:
                    on_failure()
                return
            now = self.clock.now()
            slot = max(slot + 1, math.ceil((now - start) / self.period_s))  # skip missed slots
            if self._stop.wait(max(0.0, start + slot * self.period_s - now)):
                return

    # -- reading ----------------------------------------------------------------------------

    def totals(self) -> tuple[float, float]:
        """``(work, rate)`` now, summed over the GPUs served: units (generated tokens or
        samples) since the device was created, and units per second over the last sampling
        period."""
        units = self._units()
        with self._lock:
            return units, self.rate

    def close(self) -> None:
        """Stop sampling and let go of the device (which lives on). Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._close_device()

    def _close_device(self) -> None:
        device = self.sim.device
        if device is not None:
            device.close()


def _one_workload(sim: SimNvml, gpus: Sequence[int], path: Path) -> str:
    """The workload the GPUs ``gpus`` run; one server serves one kind of work, as a real
    inference server or training job runs on its own GPUs, so GPUs counting different units
    (tokens, samples) are refused, naming which GPU runs what."""
    kinds = {i: sim.workloads[i].kind for i in gpus}
    units = {model_for(k).unit for k in kinds.values()}
    if len(units) > 1:
        groups: dict[str, list[str]] = {}
        for i, k in kinds.items():
            groups.setdefault(k, []).append(str(i))
        said = "; ".join(f"{k} on GPUs {','.join(v)}" for k, v in sorted(groups.items()))
        raise WorkServerError(f"the GPUs of {path} run different work ({said}): serve each "
                              "kind on its own with --gpus")
    # An idle GPU does no work: the others say what is counted.
    return next((k for k in kinds.values() if k != "idle"), "idle")


class WorkCollector(Collector):
    """The counters of a :class:`SimWork`, read at each scrape."""

    def __init__(self, work: SimWork) -> None:
        self._work = work

    def collect(self) -> Iterable[Metric]:
        work = self._work
        total, _ = work.totals()
        if work.kind == "vllm":
            generated = CounterMetricFamily(
                "vllm:generation_tokens", "Number of generation tokens processed.",
                labels=["model_name"])
            generated.add_metric([work.model_name], total)
            prompt = CounterMetricFamily(
                "vllm:prompt_tokens", "Number of prefill tokens processed.",
                labels=["model_name"])
            prompt.add_metric([work.model_name], total * PROMPT_TOKENS_PER_GENERATED)
            return [generated, prompt]
        if work.model.unit == "samples":
            counter = CounterMetricFamily(
                SAMPLES_METRIC, "Training samples processed by the simulated GPUs served.")
        else:
            counter = CounterMetricFamily(
                TOKENS_METRIC, "Tokens generated by the simulated GPUs served.")
        counter.add_metric([], total)
        return [counter]


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def serve(work: SimWork, *, host: str = "127.0.0.1", port: int = 8000,
          ready: Callable[[str], None] | None = None) -> int:
    """Serve ``work`` on ``http://host:port/metrics`` (port 0: a free one) until SIGINT or
    SIGTERM (call from the main thread), then close it. ``ready`` gets the URL once it
    listens. Returns 0 when stopped by a signal, 1 when the GPUs were lost (logged). Raises
    :class:`WorkServerError` when it cannot listen."""
    stop = threading.Event()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkCollector(work))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, ValueError) as e:
        work.close()
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise WorkServerError(f"cannot listen on {host}:{port}: {reason}") from None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, on_signal)
    try:
        work.start(on_failure=stop.set)
        if ready is not None:
            ready(_url(host, int(server.server_port)))
        while not stop.wait(1.0):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.shutdown()
        server.server_close()
        thread.join(timeout=2.0)
        work.close()
    if work.failure is not None:
        log.error("simulated work server on %s: %s", work.path, work.failure)
        return 1
    return 0


def print_ready(url: str) -> None:
    """A ``ready`` for :func:`serve`: the URL as the first line on stdout."""
    print(f"serving {url}", flush=True)
