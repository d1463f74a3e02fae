"""One agent per node id: who this process is, and whether another one already serves its id.

Every agent puts its :class:`Instance` (a random id, pid, host) in its retained status. At start
it reads the retained status of its own node id (:func:`ensure_unique`); if another agent is
serving that id now, it refuses to start, naming it, since two agents on one id would act on and
ack the same dispatches. "Now" is: its status says online and is fresh (younger than a few
status periods), and, when it runs on this host, its process is alive; a crashed predecessor
therefore never blocks a restart for longer than those few periods (on this host: not at all).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from gridtao.config.agent import Config
from gridtao.errors import GridtaoError
from gridtao.transport.check import read_retained_now

__all__ = ["Instance", "NodeIdInUse", "ensure_unique", "other_instance"]

#: A status older than this many status periods (plus a second) is a dead agent's.
FRESH_PERIODS = 3.0


class NodeIdInUse(GridtaoError):
    """Another running agent serves this node id."""


@dataclass(frozen=True)
class Instance:
    """This process's agent: ``id`` is random per start."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    # The PID namespace: two containers sharing a host name have different ones, so their
    # pids (both 1, say) say nothing about each other.
    pidns: str = field(default_factory=lambda: _pid_namespace())

    def fields(self) -> dict[str, object]:
        return {"id": self.id, "pid": self.pid, "host": self.host, "pidns": self.pidns}


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def other_instance(status: bytes, me: Instance, *, wall: float,
                   status_period_s: float) -> str | None:
    """A description of the other agent ``status`` shows serving now, or None."""
    try:
        body = json.loads(status)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get("online") is not True:
        return None
    other = body.get("instance")
    if not isinstance(other, Mapping) or other.get("id") == me.id:
        return None
    pid, host, t = other.get("pid"), other.get("host"), body.get("t")
    if not isinstance(t, (int, float)):
        return None
    age = wall - float(t)
    if age > FRESH_PERIODS * status_period_s + 1.0:
        return None
    same_pids = host == me.host and bool(me.pidns) and other.get("pidns") == me.pidns
    if same_pids and isinstance(pid, int) and (pid == me.pid or not pid_alive(pid)):
        return None  # a predecessor in this very process, or a dead one in this namespace
    return f"instance {other.get('id')} (pid {pid} on {host}), status {max(age, 0.0):.1f} s old"


def ensure_unique(config: Config, status_topic: str, node_id: str, me: Instance,
                  *, wall: float) -> None:
    """Raise :class:`NodeIdInUse` when another agent serves ``node_id`` now. A broker that
    cannot be asked lets the start go on (the agent retries its connection anyway)."""
    status = read_retained_now(config, status_topic)
    if status is None:
        return
    other = other_instance(status, me, wall=wall, status_period_s=config.mqtt.status_period_s)
    if other is not None:
        raise NodeIdInUse(f"node id {node_id!r} is already served by a running agent ({other}): "
                          "give this one its own mqtt.node_id")
