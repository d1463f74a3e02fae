"""Prometheus metrics for the agent.

Everything lives on an injected :class:`prometheus_client.CollectorRegistry`, so tests (and two
agents in one process) never share state through the library's global registry.

Who writes what, on which thread:

* :class:`Metrics`: gauges of current state are *set by tier 1's thread* from values it has
  already read (about 100 times a second); event counters and histograms are incremented where
  the event happens (the island lane, tier 1, the response meter, the reload).
* :class:`StatsCollector`: counters other objects already keep (the MQTT links' reconnects,
  refusals and drops, the audit trail's losses) are read when Prometheus scrapes, never copied
  on a timer.

The HTTP thread only serialises the registry and never touches NVML, so a scrape cannot slow the
hot path or a GPU. Power is exported in watts (Prometheus base units); callers holding
milliwatts convert at the call site. Latencies are in seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client import start_http_server as _prom_start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

MessageResult = Literal["accepted", "rejected", "duplicate"]
MESSAGE_RESULTS: tuple[MessageResult, ...] = ("accepted", "rejected", "duplicate")


class CounterChildren:
    """A labelled Counter's children by label values, each resolved once: counting a message
    of a flood costs a dict lookup, not prometheus_client's label resolution. Safe from any
    thread: two first uses of the same labels resolve the same child, and counting is the
    child's own (locked)."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, ...], Counter] = {}

    def child(self, *values: str) -> Counter:
        """The child for ``values`` (the counter's label values, in order), made if new
        (exported as 0 until counted)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._counter.labels(*values)
        return child

    def inc(self, *values: str) -> None:
        self.child(*values).inc()


def log_buckets(lo_s: float, hi_s: float, per_decade: int = 4) -> tuple[float, ...]:
    """Histogram bucket bounds from ``lo_s`` to ``hi_s`` inclusive, ``per_decade`` per factor 10.

    Rounded to 6 significant digits so the exported ``le`` labels stay readable.
    """
    if not 0 < lo_s < hi_s:
        raise ValueError("need 0 < lo_s < hi_s")
    steps = round(math.log10(hi_s / lo_s) * per_decade)
    return tuple(float(f"{lo_s * 10 ** (k / per_decade):.6g}") for k in range(steps + 1))


TRIGGER_TO_COMMAND_BUCKETS_S = log_buckets(1e-4, 1.0)
TRIGGER_TO_TARGET_BUCKETS_S = log_buckets(1e-3, 10.0)
FAST_LOOP_BUCKETS_S = log_buckets(1e-5, 1.0)


class Metrics:
    """gridtao's own metrics on one registry (the links' and the audit trail's counters are
    :class:`StatsCollector`'s). Methods are cheap and thread-safe (the library locks each value);
    per-GPU children are cached so the 100 Hz loop skips label lookups."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._gpu_power = Gauge(
            "gridtao_gpu_power_watts", "Instant GPU power draw, W.", ["gpu"], registry=registry
        )
        self._gpu_limit = Gauge(
            "gridtao_gpu_power_limit_watts",
            "GPU power limit the device enforces, as last read back through NVML, W.",
            ["gpu"],
            registry=registry,
        )
        self._gpu_planned = Gauge(
            "gridtao_gpu_power_limit_planned_watts",
            "GPU power limit tier 1 plans (written only if the driver accepts it), W.",
            ["gpu"],
            registry=registry,
        )
        self._gpu_default = Gauge(
            "gridtao_gpu_default_limit_watts",
            "GPU default power limit, W.",
            ["gpu"],
            registry=registry,
        )
        self._node_power = Gauge(
            "gridtao_node_power_watts", "Sum of instant GPU power on this node, W.",
            registry=registry,
        )
        self._node_target = Gauge(
            "gridtao_node_target_watts",
            "Node IT power target of the active event, W (NaN when there is none).",
            registry=registry,
        )
        self._node_target.set(math.nan)
        self._event_active = Gauge(
            "gridtao_event_active",
            "1 while any activation holds the node's target: an island event (FFR, a dispatched "
            "cut) or tier 2's commitment (FCR-D, FCR-N, DR); else 0.",
            registry=registry,
        )
        self._messages = Counter(
            "gridtao_messages",
            "Grid messages received, by topic and result (accepted|rejected|duplicate).",
            ["topic", "result"],
            registry=registry,
        )
        self._message_counts = CounterChildren(self._messages)
        self._gpu_errors = Counter(
            "gridtao_gpu_errors",
            "GPU backend errors, by GPU index and error kind (exception class name).",
            ["gpu", "kind"],
            registry=registry,
        )
        self._outside_changes = Counter(
            "gridtao_limit_changes_outside",
            "GPU power limits changed by someone else than the agent (an operator's nvidia-smi "
            "-pl, another process), by GPU index: each became that GPU's resting limit.",
            ["gpu"],
            registry=registry,
        )
        self._reloads = Counter(
            "gridtao_reloads",
            "Configuration reloads (SIGHUP) by result: applied, or refused (nothing changed).",
            ["result"],
            registry=registry,
        )
        self._trigger_to_command = Histogram(
            "gridtao_trigger_to_command_seconds",
            "From a trigger reaching the node to every GPU limit commanded, s.",
            buckets=TRIGGER_TO_COMMAND_BUCKETS_S,
            registry=registry,
        )
        self._trigger_to_target = Histogram(
            "gridtao_trigger_to_target_seconds",
            "From a trigger reaching the node to measured power inside the target band, s.",
            buckets=TRIGGER_TO_TARGET_BUCKETS_S,
            registry=registry,
        )
        self._fast_loop = Histogram(
            "gridtao_fast_loop_seconds",
            "Duration of one tier-1 control loop iteration, s.",
            buckets=FAST_LOOP_BUCKETS_S,
            registry=registry,
        )
        self._lock = threading.Lock()
        self._power_children: list[Gauge] = []
        self._limit_children: list[Gauge] = []
        self._planned_children: list[Gauge] = []
        self._gpu_names: tuple[str, ...] = ()

    def name_gpus(self, driver_indices: Sequence[int]) -> None:
        """Label the GPUs the agent serves (positions 0..n-1) with their driver indices, as
        ``nvidia-smi`` and the status name them (a node serving some of its GPUs because one
        could not be opened: its ``gpu`` labels skip that one). Call before the first
        observation; without it a GPU's label is its position."""
        self._gpu_names = tuple(str(i) for i in driver_indices)

    def _gpu(self, index: int) -> str:
        """The ``gpu`` label of the GPU served at ``index``."""
        return self._gpu_names[index] if 0 <= index < len(self._gpu_names) else str(index)

    def _ensure_gpus(self, count: int) -> None:
        if len(self._power_children) >= count:
            return
        with self._lock:
            for i in range(len(self._power_children), count):
                self._power_children.append(self._gpu_power.labels(gpu=self._gpu(i)))
                self._limit_children.append(self._gpu_limit.labels(gpu=self._gpu(i)))
                self._planned_children.append(self._gpu_planned.labels(gpu=self._gpu(i)))

    def set_build(self, version: str, *, simulated: bool) -> None:
        """``gridtao_build_info{version}`` and ``gridtao_gpus_simulated`` (1: the GPUs are the
        simulator's, so no figure here is a real GPU's); call once at start."""
        Info("gridtao_build", "gridtao build.", registry=self.registry).info({"version": version})
        Gauge("gridtao_gpus_simulated", "1 when the GPUs are simulated, 0 when real.",
              registry=self.registry).set(1.0 if simulated else 0.0)

    def set_default_limits(self, default_w: Sequence[float]) -> None:
        """Export each GPU's default limit (static; call once at start), W."""
        for i, w in enumerate(default_w):
            self._gpu_default.labels(gpu=self._gpu(i)).set(w)

    def observe_gpus(self, power_w: Sequence[float], limit_w: Sequence[float], *,
                     planned_w: Sequence[float] = ()) -> None:
        """Per-GPU instant power, the enforced limit read back from the device and (when
        given) tier 1's planned limit, W, indexed by GPU index."""
        self._ensure_gpus(max(len(power_w), len(limit_w), len(planned_w)))
        for child, w in zip(self._power_children, power_w, strict=False):
            child.set(w)
        for child, w in zip(self._limit_children, limit_w, strict=False):
            child.set(w)
        for child, w in zip(self._planned_children, planned_w, strict=False):
            child.set(w)

    def observe_node(self, power_w: float, target_w: float | None, event_active: bool) -> None:
        """Node power (sum over GPUs), the active target (None -> NaN) and the event flag, W."""
        self._node_power.set(power_w)
        self._node_target.set(math.nan if target_w is None else target_w)
        self._event_active.set(1.0 if event_active else 0.0)

    def count_message(self, topic: str, result: MessageResult) -> None:
        """One grid message on ``topic`` (the topic's last segment, e.g. ``dispatch``)."""
        if result not in MESSAGE_RESULTS:
            raise ValueError(f"unknown message result {result!r}")
        self._message_counts.inc(topic, result)

    def count_gpu_error(self, gpu: int, kind: str) -> None:
        """One backend error of the GPU served at ``gpu``; ``kind`` is the error class name
        (e.g. ``GpuLost``)."""
        self._gpu_errors.labels(gpu=self._gpu(gpu), kind=kind).inc()

    def count_outside_change(self, gpu: int) -> None:
        """The limit of the GPU served at ``gpu`` was changed from outside the agent."""
        self._outside_changes.labels(gpu=self._gpu(gpu)).inc()

    def count_reload(self, result: Literal["applied", "refused"]) -> None:
        self._reloads.labels(result).inc()

    def observe_trigger_to_command(self, seconds: float) -> None:
        self._trigger_to_command.observe(seconds)

    def observe_trigger_to_target(self, seconds: float) -> None:
        self._trigger_to_target.observe(seconds)

    def observe_fast_loop(self, seconds: float) -> None:
        self._fast_loop.observe(seconds)


class LinkCounts(Protocol):
    """One MQTT link's running totals since it was created (``LinkStats``,
    gridtao/transport/mqtt.py): plain ints the link's loop increments and never lowers."""

    @property
    def reconnects(self) -> int: ...

    @property
    def refused(self) -> int: ...

    @property
    def dropped_inbound(self) -> int: ...

    @property
    def dropped_outbound(self) -> int: ...


class DropCount(Protocol):
    """Records lost since start (``AuditTrail.dropped``, gridtao/records/audit.py)."""

    @property
    def dropped(self) -> int: ...


class StatsCollector(Collector):
    """The links' and the audit trail's own counters, read at scrape time (model:
    prometheus_client's ``GCCollector``), so Prometheus sees them as they are, not as a copy.

    ``links``: link label -> that link's live counters (the object itself, which the link keeps
    for its lifetime). ``audit``: the audit trail, or None without one (its counter stays 0).
    :meth:`collect` runs on the thread that scrapes (the HTTP server's, or a test's): it reads
    plain ints, which another thread may be incrementing (a scrape may miss the latest
    increment, never sees a total go down), and takes the audit trail's lock for one read.
    """

    def __init__(self, links: Mapping[str, LinkCounts], *, audit: DropCount | None = None,
                 registry: CollectorRegistry) -> None:
        self._links = dict(links)
        self._audit = audit
        self._created = time.time()  # Unix s: the ``_created`` samples, as a Counter exports
        registry.register(self)

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily,
                                 CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "gridtao_mqtt_reconnects", "MQTT reconnections after a lost connection."),
            CounterMetricFamily(
                "gridtao_mqtt_refused",
                "MQTT connection attempts the broker refused (credentials, ACL, TLS), by link.",
                labels=["link"]),
            CounterMetricFamily(
                "gridtao_mqtt_dropped",
                "MQTT messages dropped (a full queue, or QoS 0 cut off by a lost connection), "
                "by link and direction (in, out).",
                labels=["link", "direction"]),
            CounterMetricFamily(
                "gridtao_audit_dropped",
                "Audit records dropped on a full writer queue (each loss is also a gap record)."),
        )

    def describe(self) -> Iterator[Metric]:
        """The families without samples: lets the registry refuse a clashing name."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        reconnects, refused, dropped, audit = self._families()
        created = self._created
        reconnects.add_metric([], sum(st.reconnects for st in self._links.values()), created)
        for name, st in self._links.items():
            refused.add_metric([name], st.refused, created)
            dropped.add_metric([name, "in"], st.dropped_inbound, created)
            dropped.add_metric([name, "out"], st.dropped_outbound, created)
        audit.add_metric([], self._audit.dropped if self._audit is not None else 0, created)
        yield from (reconnects, refused, dropped, audit)


class MetricsServer(NamedTuple):
    """The running exporter; unpacks as ``(server, thread)``."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The bound TCP port (useful when started on port 0)."""
        return int(self.server.server_port)

    def close(self) -> None:
        """Stop serving, release the socket and join the thread. Idempotent."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)


def start_http_server(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics.registry`` at ``http://host:port/metrics`` on a daemon thread.

    ``port`` 0 binds a free port; read it back from :attr:`MetricsServer.port`.
    """
    server, thread = _prom_start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server, thread)
