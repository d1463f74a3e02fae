"""One in-process agent on simulated GPUs against the test broker, for the end-to-end tests.

``running(broker, cfg, sim)`` starts an :class:`~gridtao.app.agent.Agent` (no metrics server),
checks its island lane connected, yields a :class:`Node` with the helpers the tests drive it
through, and closes it (restoring limits) however the test ends; ``serve=True`` also runs
``agent.serve()`` (status publishing) on its own loop. Waits are generous: the CI machine is a
loaded 2-core box and nothing here asserts speed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker import MosquittoBroker, Subscriber, publish
from waiting import wait_until

from gridtao.app.agent import Agent, AgentOptions
from gridtao.app.serve import serving
from gridtao.clock import Clock
from gridtao.config.agent import Config, SimConfig, config_from_mapping
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.records.audit_verify import read_records

W = 1000  # mW per W
SET = "nvmlDeviceSetPowerManagementLimit"
CONNECT_S = 20.0


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, nested mappings key by key (a test's overrides)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and k in out else v
    return out


def node_config(broker: MosquittoBroker, node_id: str, prefix: str, *, gpus: int,
                audit: Path | None = None, source: str = "<test>",
                **sections: Mapping[str, Any] | list[Any]) -> Config:
    """A test agent on ``broker``: ``gpus`` simulated GPUs without noise (seed 3), reconnects
    within 0.5 s, no metrics server, its audit trail at ``audit`` (written without fsync) when
    given; ``sections`` merged over that, section by section."""
    base: dict[str, Any] = {
        "gpus": {"sim": {"count": gpus, "noise_w": 0.0, "seed": 3}},
        "mqtt": {"port": broker.port, "node_id": node_id, "prefix": prefix,
                 "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
    }
    if audit is not None:
        base["audit"] = {"enabled": True, "path": str(audit), "fsync": "never"}
    return config_from_mapping(merge(base, sections), source=source)


def steady_sim(cfg: SimConfig, clock: Clock, demand_w: float) -> SimNvml:
    """The simulator ``cfg`` with every GPU's workload replaced by a steady ``demand_w``."""
    sim = SimNvml.from_config(cfg, clock)
    for i in range(cfg.count):
        sim.set_demand_w(i, demand_w)
    return sim


@dataclass
class Node:
    """A running agent, its simulator and the broker, with what the tests read and send."""

    agent: Agent
    sim: SimNvml
    broker: MosquittoBroker

    @property
    def topics(self) -> Any:
        return self.agent.topics

    @property
    def count_gpus(self) -> int:
        return self.agent.island.envelope.count

    def limits_w(self) -> list[float]:
        return [self.agent.backend.enforced_limit_mw(i) / W for i in range(self.count_gpus)]

    def true_w(self) -> list[float]:
        return [self.sim.true_power_mw(i) / W for i in range(self.count_gpus)]

    def sets(self) -> int:
        """Limit writes the simulated driver has seen."""
        return self.sim.call_count(SET)

    def value(self, name: str, **labels: str) -> float:
        """A Prometheus sample of the agent's registry (0 when absent)."""
        return self.agent.registry.get_sample_value(name, labels) or 0.0

    def count(self, topic: str, result: str) -> float:
        return self.value("gridtao_messages_total", topic=topic, result=result)

    def send(self, topic: str, payload: bytes | Mapping[str, object]) -> None:
        """Publish raw bytes or a JSON object; QoS 1 on the dispatch topic, 0 elsewhere."""
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        qos = 1 if topic == self.topics.dispatch else 0
        publish(self.broker.host, self.broker.port, topic, raw, qos=qos)

    def dispatch(self, payload: bytes | Mapping[str, object]) -> None:
        self.send(self.topics.dispatch, payload)

    def frequency(self, hz: float) -> None:
        self.send(self.topics.frequency, {"t": time.time(), "hz": hz})

    def acks(self) -> Subscriber:
        return Subscriber(self.broker.host, self.broker.port, self.topics.ack)

    def audit(self) -> list[dict[str, Any]]:
        """The audit trail so far (flushed first)."""
        assert self.agent.ledger.audit is not None
        assert self.agent.ledger.audit.flush()
        return read_records([str(self.agent.ledger.audit.path)])


@contextmanager
def running(broker: MosquittoBroker, cfg: Config, sim: SimNvml, *, clock: Clock | None = None,
            serve: bool = False, settled_w: float | None = None,
            freeze_startup_heap: bool = False) -> Iterator[Node]:
    """An agent on ``sim`` (its clock unless ``clock``), started and connected; closed after.
    ``settled_w``: start only once every GPU's instant reading (it refreshes every 20 ms) shows
    this draw, so the island's pre-event basis is exact. ``freeze_startup_heap``: as
    :class:`AgentOptions` (the caller unfreezes after)."""
    backend = NvmlBackend(sim)
    if settled_w is not None:
        wait_until(lambda: all(abs(backend.instant_power_mw(i) - settled_w * W) <= W
                               for i in range(cfg.gpus.sim.count)),
                   "the simulated draw to settle", timeout_s=CONNECT_S)
    agent = Agent(cfg, clock=clock or sim.clock, backend=backend,
                  options=AgentOptions(serve_metrics=False, connect_timeout_s=CONNECT_S,
                                       freeze_startup_heap=freeze_startup_heap))
    try:
        agent.start()
        assert agent.lane.is_connected, "island lane did not connect"
        with ExitStack() as serve_stack:
            if serve:  # stopped at the end: raises what serve() died of, if it did
                serve_stack.enter_context(serving(agent, name="test-controller"))
            yield Node(agent, sim, broker)
            assert agent.lane.error is None, agent.lane.error
    finally:
        agent.close()
