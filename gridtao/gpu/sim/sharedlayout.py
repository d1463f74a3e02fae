"""The machine-wide simulated device's file (:mod:`gridtao.gpu.sim.shared`): its byte layout, and
the codec between that layout and a header (:class:`DeviceInfo`) or a GPU's state
(:class:`DeviceRecords`).

Layout (little-endian): a :data:`HEADER_SIZE`-byte header (magic, format, state, generation,
creation time, the boot it belongs to, record geometry, the physics parameters as JSON), then
one record per GPU: ``version`` (bumped by every store), the pids of the last writer and of the
last process that set the limit, when the limit was set (Unix s), ``workload_version``, the
physics scalars, the workload's extra floats and ``random`` state, the 1 s average window.
Records start on 64-byte boundaries (their own cache lines). Times: the creation time ``t0`` on
``CLOCK_MONOTONIC`` (s), the wall offset and wall times in Unix seconds.

Invariants: a file's layout is fixed by :data:`FORMAT` (a change to it must bump the format: a
device of another format is refused, never read); the header's ``state`` becomes
:data:`READY` only once the whole file is written; a store writes a record's head (its version)
last, so a reader that sees the new version sees the whole record.

Threads: nothing here locks. The caller holds the record's lock (an open-file-description lock,
and a thread lock per GPU; see :mod:`gridtao.gpu.sim.shared`) around every record method, so
each record, and this process's cache of it, is used by one thread at a time; different records
may be used from different threads.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridtao.clock import boot_id
from gridtao.gpu.sim.physics import STATE_SCALARS, GpuPhysics
from gridtao.gpu.sim.sharederrors import SimDeviceError
from gridtao.gpu.sim.workloads import STATE_FLOATS, Resumable

__all__ = [
    "DESTROYED",
    "FORMAT",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "PARAMS_AT",
    "READY",
    "STATE",
    "STATE_AT",
    "DeviceInfo",
    "DeviceRecords",
    "Record",
    "parse_header",
    "record_bytes",
    "write_header",
]

MAGIC = b"GTSIMDEV"
FORMAT = 2
HEADER_SIZE = 4096
READY, DESTROYED = 1, 2

# magic, format, state, generation, t0 (monotonic s), wall offset (s), created (Unix s), count,
# record size, window length, boot id, params length
HEADER = struct.Struct("<8sIIQdddIII36sI")
PARAMS_AT = HEADER.size
STATE = struct.Struct("<I")
STATE_AT = 12  # the header's state: after the magic and the format
# version, writer pid, limit pid, limit set (Unix s), workload version, gauss_next (nan: none)
_RECORD_HEAD = struct.Struct("<QIIdQd")
_SCALARS = struct.Struct(f"<{STATE_SCALARS}d")
_EXTRAS = struct.Struct(f"<{STATE_FLOATS + 1}d")  # count, then up to STATE_FLOATS floats
_MT_WORDS = 625  # random.Random's Mersenne Twister: 624 words and the position
_MT = struct.Struct(f"<{_MT_WORDS}I")
_VERSION = struct.Struct("<Q")
_K = 5  # the sample index among the physics scalars (GpuPhysics.export)


@dataclass(frozen=True)
class DeviceInfo:
    """What a device's header says. ``t0_s``: its creation on the monotonic clock."""

    path: str
    generation: int
    created_wall: float
    t0_s: float
    wall_offset_s: float
    count: int
    boot_id: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Record:
    """One GPU's stored state. ``gauss_next``: ``random``'s cached normal draw (None: none)."""

    version: int
    writer_pid: int
    limit_pid: int
    limit_set_wall: float
    workload_version: int
    scalars: tuple[float, ...]
    extras: tuple[float, ...]
    mt: tuple[int, ...]
    gauss_next: float | None
    window: tuple[float, ...]


def record_bytes(window_len: int) -> int:
    """The bytes of one GPU's record, for an average window of ``window_len`` samples."""
    size = _RECORD_HEAD.size + _SCALARS.size + _EXTRAS.size + _MT.size + 8 * window_len
    return (size + 63) // 64 * 64  # records on their own cache lines


# -- the header -----------------------------------------------------------------------------


def parse_header(head: bytes, path: Path) -> DeviceInfo | None:
    """The header in ``head`` (the file's first :data:`HEADER_SIZE` bytes, or fewer), or None
    for an empty, destroyed, half-created or other boot's file. Raises
    :class:`SimDeviceError` for anything else that is not a device's header."""
    if len(head) < HEADER.size or not any(head[:HEADER.size]):
        return None
    (magic, fmt, state, generation, t0, wall_offset, created, count, _, _, boot,
     params_len) = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise SimDeviceError(f"{path} is not a gridtao simulated device")
    if fmt != FORMAT:
        raise SimDeviceError(f"simulated device {path} has format {fmt}, not {FORMAT}: "
                             "destroy it (gridtao sim destroy) and start again")
    if state != READY or boot.decode("ascii", "replace").rstrip("\0") != boot_id():
        return None
    try:
        params = json.loads(head[PARAMS_AT:PARAMS_AT + params_len].decode("utf-8"))
        if not isinstance(params, dict):
            raise ValueError("the parameters are not a JSON object")
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError too
        raise SimDeviceError(f"simulated device {path} is damaged ({e}): destroy it (gridtao "
                             "sim destroy) and start again") from None
    return DeviceInfo(str(path), generation, created, t0, wall_offset, count,
                      boot.decode("ascii", "replace").rstrip("\0"), params)


def write_header(mm: mmap.mmap, info: DeviceInfo, record_size: int, window_len: int,
                 params_blob: bytes) -> None:
    """Write ``info`` and ``params_blob`` (its parameters as JSON, at most
    ``HEADER_SIZE - PARAMS_AT`` bytes) as the header of ``mm``, in state 0 (not ready): the
    caller sets :data:`READY` once the records are written."""
    HEADER.pack_into(mm, 0, MAGIC, FORMAT, 0, info.generation, info.t0_s, info.wall_offset_s,
                     info.created_wall, info.count, record_size, window_len,
                     info.boot_id.encode("ascii")[:36], len(params_blob))
    mm[PARAMS_AT:PARAMS_AT + len(params_blob)] = params_blob


# -- the records ----------------------------------------------------------------------------


class DeviceRecords:
    """The GPU records of a mapped device file (``mm``: ``count`` records of ``record_size``
    bytes after the header). Record methods must be called with that record locked; different
    records may be used from different threads."""

    def __init__(self, mm: mmap.mmap, count: int, record_size: int, window_len: int) -> None:
        self._mm = mm
        self._window = struct.Struct(f"<{window_len}d")
        self._pid = os.getpid()
        self._offsets = tuple(HEADER_SIZE + i * record_size for i in range(count))
        # Per record, what this process last read or stored: its head (so a store need not
        # read it back) and the sample index of the average window it holds (so an unchanged
        # window, between two refreshes, is not written again).
        self._heads: list[tuple[Any, ...] | None] = [None] * count
        self._window_k: list[float] = [math.nan] * count

    def _at(self, index: int) -> int:
        return self._offsets[index]

    def version(self, index: int) -> int:
        version: int = _VERSION.unpack_from(self._mm, self._offsets[index])[0]
        return version

    def workload_version(self, index: int) -> int:
        version: int = _VERSION.unpack_from(self._mm, self._offsets[index] + 24)[0]
        return version

    def read(self, index: int) -> Record:
        mm, at = self._mm, self._at(index)
        head = _RECORD_HEAD.unpack_from(mm, at)
        self._heads[index] = head
        version, writer, limit_pid, limit_wall, wl_version, gauss = head
        at += _RECORD_HEAD.size
        scalars = _SCALARS.unpack_from(mm, at)
        at += _SCALARS.size
        extras = _EXTRAS.unpack_from(mm, at)
        at += _EXTRAS.size
        mt = _MT.unpack_from(mm, at)
        at += _MT.size
        window = self._window.unpack_from(mm, at)
        self._window_k[index] = scalars[_K]
        return Record(version, writer, limit_pid, limit_wall, wl_version, scalars,
                      extras[1:1 + int(extras[0])], mt, None if math.isnan(gauss) else gauss,
                      window)

    def store(self, index: int, physics: GpuPhysics, *, workload: Resumable | None,
              limit_set: bool) -> int:
        """Write ``physics`` (and ``workload``'s position when given) as GPU ``index``'s
        state; ``limit_set``: this store follows a limit write. Returns the new version."""
        mm, at = self._mm, self._offsets[index]
        head = self._heads[index]
        if head is None or head[0] != _VERSION.unpack_from(mm, at)[0]:
            head = _RECORD_HEAD.unpack_from(mm, at)
        version, _, limit_pid, limit_wall, wl_version, gauss = head
        version += 1
        if limit_set:
            limit_pid, limit_wall = self._pid, time.time()
        scalars, window = physics.export()
        body = at + _RECORD_HEAD.size
        _SCALARS.pack_into(mm, body, *scalars)
        if workload is not None:
            wl_version += 1
            _, mt, gauss_next = workload.rng.getstate()
            extras = workload.state()
            _EXTRAS.pack_into(mm, body + _SCALARS.size, float(len(extras)), *extras,
                              *([0.0] * (STATE_FLOATS - len(extras))))
            _MT.pack_into(mm, body + _SCALARS.size + _EXTRAS.size, *mt)
            gauss = math.nan if gauss_next is None else gauss_next
        if scalars[_K] != self._window_k[index]:  # the window moves only at a refresh
            self._window.pack_into(mm, body + _SCALARS.size + _EXTRAS.size + _MT.size, *window)
            self._window_k[index] = scalars[_K]
        # The head last: a reader that sees the new version sees the whole record (the lock
        # orders them anyway; this keeps a crashed writer's half-store visibly old).
        head = (version, self._pid, limit_pid, limit_wall, wl_version, gauss)
        _RECORD_HEAD.pack_into(mm, at, *head)
        self._heads[index] = head
        return int(version)

    @staticmethod
    def load(record: Record, physics: GpuPhysics, workload: Resumable | None) -> None:
        """Put ``record``'s state into the replica (and ``workload``'s position when given)."""
        physics.load(record.scalars, record.window)
        if workload is not None:
            workload.rng.setstate((3, record.mt, record.gauss_next))
            workload.restore(record.extras)
