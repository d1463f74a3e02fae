"""The agent under test as a bench's child process: ``gridtao run`` started (with or without a
busy load beside it), waited for until its retained status says it is online, and stopped.

The latency and overhead benches (bench/latency.py, bench/overhead.py) run the agent as an
:class:`AgentProcess`; the fleet bench's site coordinator and the flood bench's agent and
attackers, children of their own, are stopped with :func:`stop_process`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from gridtao.children import module_command
from gridtao.transport.localbroker import MosquittoBroker, Subscriber


class AgentProcess:
    """``gridtao run`` in a child process; stopped with SIGTERM (it restores its limits).

    ``busy_load``: keep the agent's controller loop that busy (``--busy-load``), or, with
    ``load_elsewhere``, a separate process at the same duty cycle: the load of a controller
    that does not share the island's interpreter (the emulated split, see ``--island-alone``).
    """

    def __init__(self, cfg_path: Path, *, busy_load: float, log_path: Path,
                 load_elsewhere: bool = False) -> None:
        args = module_command("gridtao", "--config", str(cfg_path), "run")
        if busy_load > 0 and not load_elsewhere:
            args += ["--busy-load", str(busy_load)]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self.burner = (subprocess.Popen([sys.executable, "-c", _BURNER, str(busy_load)])
                       if busy_load > 0 and load_elsewhere else None)

    def stop(self) -> int:
        if self.burner is not None:
            stop_process(self.burner)
        rc = stop_process(self.proc)
        self._log.close()
        return rc


# Python busy for the given fraction of every 10 ms, like the controller loop's --busy-load.
_BURNER = """
import sys, time
busy = float(sys.argv[1])
while True:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.01 * busy:
        pass
    time.sleep(0.01 * (1 - busy))
"""


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM ``proc`` (a bench child), SIGKILL it after 15 s; its exit status."""
    proc.terminate()
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_online(broker: MosquittoBroker, topic: str, pid: int, *, timeout_s: float) -> None:
    """Wait for the retained status of the agent with ``pid`` saying it is online. Any status
    will not do: the one left on the broker by the phase before (the same node id) arrives
    first, and a dispatch sent before this agent subscribed would be lost."""
    deadline = time.monotonic() + timeout_s
    with Subscriber(broker.host, broker.port, topic) as status:
        seen = 0
        while True:
            for message in status.messages[seen:]:
                body = json.loads(message.payload)
                if body.get("online") is True and (body.get("instance") or {}).get("pid") == pid:
                    return
            seen = len(status.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{topic}: agent pid {pid} not online after {timeout_s:g} s")
            status.wait(seen + 1, timeout=left)
