"""The flood bench's agent under test and what it leaves behind (``bench/flood.py``):
``gridtao run`` in a child process with its own state directory, at the nice asked, read from
``/proc`` while it runs (resident memory, CPU time, nice); after the run, what its audit trail
says it handled and the broker's warnings of messages it dropped."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from gridtao.bench.agentproc import stop_process
from gridtao.bench.floodsetup import RSS_PERIOD_S
from gridtao.children import module_command
from gridtao.transport.localbroker import MosquittoBroker

# ---- the agent process ---------------------------------------------------------------------------


class Agent:
    """``gridtao run`` in a child process with its own state directory; stopped with SIGTERM."""

    def __init__(self, cfg_path: Path, state_dir: Path, log_path: Path, *, nice: int) -> None:
        env = dict(os.environ, STATE_DIRECTORY=str(state_dir), GRIDTAO_NO_NVML="1")
        self.log_path = log_path
        self._log = log_path.open("wb")
        # nice(1), as systemd's Nice= does before the exec: every thread the agent starts
        # inherits it (setpriority on a pid after the start would reach only its main thread).
        # nice(1) adds to the bench's own value: the step from it to ``nice``.
        step = nice - os.getpriority(os.PRIO_PROCESS, 0)
        niced = ["nice", "-n", str(step)] if step else []
        self.proc = subprocess.Popen(
            [*niced, *module_command("gridtao", "--config", str(cfg_path), "run")],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def status_kib(self, key: str) -> int:
        """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``), KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {key} for pid {self.proc.pid}")

    def _stat(self) -> list[str]:
        """``/proc/<pid>/stat`` from its third field on (the name before it may hold spaces):
        field ``n`` of proc(5) is item ``n - 3``."""
        return Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()

    def nice(self) -> int:
        """The nice value the agent runs at, as the kernel has it (proc(5) field 19)."""
        return int(self._stat()[16])

    def cpu_s(self) -> float:
        """User + system CPU seconds so far (proc(5) fields 14 and 15)."""
        fields = self._stat()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        rc = stop_process(self.proc)
        self._log.close()
        return rc


class RssSampler:
    """The agent's ``VmRSS`` every ``RSS_PERIOD_S``, the peak kept per phase (MiB)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self.phase = "start"
        self.peak_mib: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_PERIOD_S):
            try:
                mib = self._agent.status_kib("VmRSS") / 1024.0
            except (OSError, RuntimeError):
                return  # the agent exited
            phase = self.phase
            self.peak_mib[phase] = max(self.peak_mib.get(phase, 0.0), mib)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


# ---- the agent's own record of the flood -------------------------------------------------------


def audit_counts(state_dir: Path) -> dict[str, Any]:
    """From the agent's audit trail (every file, rotated ones included): messages rejected per
    topic, records lost to a full queue (``gap``), and the Unix time of the last dispatch
    rejection (when the agent was through the junk dispatch backlog)."""
    rejected = {"dispatch": 0, "frequency": 0}
    lost = unrecorded = 0
    last_dispatch_reject: float | None = None
    for path in sorted(state_dir.glob("audit-*")):
        with path.open("rb") as f:
            for line in f:
                if b'"kind":"gap"' in line:
                    lost += int(json.loads(line)["fields"]["dropped"])
                    continue
                if b'"kind":"rejections_unrecorded"' in line:
                    # Refusals past the audit budget: counted, not recorded one by one.
                    unrecorded += int(json.loads(line)["fields"]["count"])
                    continue
                if b'"result":"rejected"' not in line:
                    continue
                if b'"topic":"frequency"' in line:
                    rejected["frequency"] += 1
                elif b'"topic":"dispatch"' in line:
                    rejected["dispatch"] += 1
                    t = json.loads(line)["t"]
                    last_dispatch_reject = t if last_dispatch_reject is None else max(
                        last_dispatch_reject, t)
    return {"rejected": rejected, "unrecorded": unrecorded, "records_lost": lost,
            "last_dispatch_rejected_at": last_dispatch_reject}


def broker_drop_lines(broker: MosquittoBroker) -> int:
    """Mosquitto's "Outgoing messages are being dropped" warnings: junk (or worse, genuine
    messages) it threw away because a subscriber's queue was full."""
    return sum(1 for line in broker.log_text().splitlines() if "being dropped" in line)
