"""What the agent needs before any configuration: its node id when none is configured, the
options that are not operator configuration (tests, benches), and the interpreter's GIL switch
interval the hot path is measured with. Light to import: the CLI's commands read the node id
without loading the agent."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

__all__ = ["GIL_SWITCH_INTERVAL_S", "NODE_ID_ENV", "AgentOptions", "default_node_id"]

# CPython hands the GIL to a waiting thread only after the holder has run this long (default
# 5 ms). The island's threads wait for the GIL several times on the hot path, so a busy
# controller thread would add whole switch intervals to every trigger. Measured with
# bench/latency.py on a 2-core VM (p50/p99 publish->command under load): 5 ms 19/32 ms,
# 1 ms 9/15 ms, 0.5 ms 6/9 ms, 0.1 ms 5/7 ms; idle latency did not get worse.
GIL_SWITCH_INTERVAL_S = 1e-4


#: The node id when ``mqtt.node_id`` is not set (e.g. a Kubernetes DaemonSet's node name).
NODE_ID_ENV = "GRIDTAO_NODE_ID"


def default_node_id() -> str:
    """``$GRIDTAO_NODE_ID``, else the host name, made safe for one MQTT topic level."""
    name = os.environ.get(NODE_ID_ENV) or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "node"


@dataclass(frozen=True)
class AgentOptions:
    """Knobs that are not operator configuration (tests, benches)."""

    connect_timeout_s: float = 10.0
    busy_load_fraction: float = 0.0  # bench only: keep the controller loop this busy (0..0.95)
    serve_metrics: bool = True
    #: The agent has its process to itself (``gridtao run``): what start() built is frozen out
    #: of the garbage collector (Agent.start). Never in a process that builds many agents, as a
    #: test run does: what it froze would outlive them.
    freeze_startup_heap: bool = False
