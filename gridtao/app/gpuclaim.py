"""One agent per GPU: a machine-wide claim on every GPU an agent controls.

A power limit is machine state (docs/architecture.md, "Simulator"): two agents writing the same
GPUs would each take the other's writes for an operator's, each ack the same cut as its own,
and each put back at its stop what it found, which is the other's cap. The journal's lock stops
two agents with one node id; this stops two with different ones.

The claim is an exclusive ``flock`` on ``<run dir>/gpus/<uuid>.lock`` (the run directory of
:func:`gridtao.config.paths.run_dir`) for each GPU served, taken before anything is recorded or
written and held for the life of the process: the kernel drops it when the holder exits, however
it exits, so a crashed agent never blocks its restart. The file names its holder (pid and node
id) for the refusal to say. Files stay after a clean stop (empty of meaning without a lock; the
run directory is emptied at boot), as removing a lock file races with the next one to open it.

What the claim covers: GPUs that are the machine's (NVML, or the machine-wide simulated device);
in-process simulated GPUs belong to one process and need none, and a dry run writes nothing, so
it claims nothing. It covers one machine's processes that share a run directory: agents in
separate containers must be kept apart by their orchestrator (a DaemonSet runs one per node).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from gridtao.config.paths import private_folder
from gridtao.errors import GridtaoError
from gridtao.holdlock import LockHeld, hold_lock

__all__ = ["GpuClaim", "GpuInUse", "claim_gpus"]


class GpuInUse(GridtaoError):
    """Another running agent controls one of this agent's GPUs. ``index``, ``uuid``: the GPU;
    ``holder``: what its claim file says of the other agent ("pid N, node X"), or ""."""

    def __init__(self, message: str, *, index: int, uuid: str, holder: str) -> None:
        super().__init__(message)
        self.index = index
        self.uuid = uuid
        self.holder = holder


class GpuClaim:
    """The claims held (their open files); :meth:`release` lets them go (idempotent)."""

    def __init__(self, files: Sequence[IO[bytes]]) -> None:
        self._files = list(files)

    def release(self) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()  # the lock goes with the open file
        self._files.clear()


def _file_name(uuid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", uuid) + ".lock"


def claim_gpus(folder: Path, gpus: Sequence[tuple[int, str]], *, node_id: str) -> GpuClaim:
    """Claim each ``(index, uuid)`` in ``gpus`` under ``folder`` for this process. Raises
    :class:`GpuInUse` when another process holds one (nothing is claimed then), or
    :class:`GpuInUse`'s base, :class:`~gridtao.errors.GridtaoError`, when the folder cannot be
    used."""
    files: list[IO[bytes]] = []
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            shared = [f for f in (folder.parent, folder) if not private_folder(f)]
        except OSError as e:
            raise GridtaoError(f"GPU claims: {folder}: cannot create: {e.strerror or e}") \
                from None
        if shared:  # another user could hold (or swap) the claims there
            raise GridtaoError(f"GPU claims: {shared[0]} is not this user's, or others may "
                               "write to it: set RUNTIME_DIRECTORY to a folder of your own")
        for index, uuid in gpus:
            path = folder / _file_name(uuid)
            try:
                files.append(hold_lock(path, holder=f"pid {os.getpid()}, node {node_id}"))
            except LockHeld as e:
                by = f" ({e.holder})" if e.holder else ""
                raise GpuInUse(
                    f"GPU {index} ({uuid}) is controlled by another gridtao agent on this "
                    f"machine{by}: one agent controls a machine's GPUs (stop that one first; "
                    f"its claim is {path})", index=index, uuid=uuid, holder=e.holder) from None
            except OSError as e:
                raise GridtaoError(f"GPU claims: {path}: cannot open: {e.strerror or e}") \
                    from None
    except BaseException:
        GpuClaim(files).release()
        raise
    return GpuClaim(files)
