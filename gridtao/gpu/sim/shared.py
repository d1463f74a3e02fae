"""A machine-wide simulated device: GPU state in one memory-mapped file that every process shares.

On a real server a power limit is machine state: every process that opens NVML sees it, and it
outlives the process that set it. A :class:`DeviceFile` gives simulated GPUs the same property.
Each GPU's whole state (its physics, see :meth:`GpuPhysics.export`, and its workload's position,
see :class:`~gridtao.gpu.sim.workloads.Resumable`) is one fixed-size record of the file. A
process keeps a replica of each GPU; to use one it locks the GPU's record, loads it into the
replica if another process changed it since, advances the physics to now, and stores it back.
Physics run on ``CLOCK_MONOTONIC``, which every process on the machine shares, so whichever
process advances a GPU, all see one history: one limit, one draw, one energy counter.

Layout (little-endian): a :data:`HEADER_SIZE`-byte header (magic, format, state, generation,
creation time, the boot it belongs to, record geometry, the physics parameters as JSON), then
one record per GPU: ``version`` (bumped by every store), the pids of the last writer and of the
last process that set the limit, when the limit was set (Unix s), ``workload_version``, the
physics scalars, the workload's extra floats and ``random`` state, the 1 s average window.

Locks are Linux open-file-description locks (``F_OFD_SETLKW``) on byte ranges: the header's
range while creating, opening or destroying; a GPU's record while it is used. Unlike ``lockf``
they belong to the open file, not the process, so closing some other descriptor of the file
(``gridtao sim status`` in the same process) cannot drop them; threads of one process share
the open file, so the caller also holds a thread lock per GPU.

A device is created on first open (or by ``gridtao sim create``) with the GPUs at their default
limits, and lives until ``destroy`` (the analogue of a driver reload: every process still holding
it gets ``GPU is lost``) or a reboot (a file from another boot is replaced on open).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import math
import mmap
import os
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridtao.clock import boot_id
from gridtao.config.paths import private_folder
from gridtao.errors import GridtaoError
from gridtao.gpu.sim.physics import STATE_SCALARS, GpuPhysics
from gridtao.gpu.sim.workloads import STATE_FLOATS, Resumable
from gridtao.readfile import check_regular_fd

__all__ = [
    "HEADER_SIZE",
    "DeviceFile",
    "DeviceGone",
    "DeviceInfo",
    "DeviceMismatch",
    "DeviceMissing",
    "SimDeviceError",
    "check_params",
]

MAGIC = b"GTSIMDEV"
FORMAT = 2
HEADER_SIZE = 4096
_READY, _DESTROYED = 1, 2

# magic, format, state, generation, t0 (monotonic s), wall offset (s), created (Unix s), count,
# record size, window length, boot id, params length
_HEADER = struct.Struct("<8sIIQdddIII36sI")
_PARAMS_AT = _HEADER.size
# version, writer pid, limit pid, limit set (Unix s), workload version, gauss_next (nan: none)
_RECORD_HEAD = struct.Struct("<QIIdQd")
_SCALARS = struct.Struct(f"<{STATE_SCALARS}d")
_EXTRAS = struct.Struct(f"<{STATE_FLOATS + 1}d")  # count, then up to STATE_FLOATS floats
_MT_WORDS = 625  # random.Random's Mersenne Twister: 624 words and the position
_MT = struct.Struct(f"<{_MT_WORDS}I")
_VERSION = struct.Struct("<Q")
_K = 5  # the sample index among the physics scalars (GpuPhysics.export)

_F_WRLCK, _F_UNLCK = fcntl.F_WRLCK, fcntl.F_UNLCK
_OFD_SETLKW: int | None = getattr(fcntl, "F_OFD_SETLKW", None)
_SETLKW: int = _OFD_SETLKW if _OFD_SETLKW is not None else fcntl.F_SETLKW  # open() checks
_SETLK: int = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)
# libc's fcntl through ctypes.PyDLL: a call that keeps the GIL. Only ever with F_OFD_SETLK,
# which never blocks.
_try_keeping_gil = ctypes.PyDLL(None, use_errno=True).fcntl
_try_keeping_gil.restype = ctypes.c_int


class SimDeviceError(GridtaoError):
    """A simulated device that cannot be opened; the message says why and what to do."""


class DeviceMismatch(SimDeviceError):
    """The device exists with other physics than this configuration's. ``key`` is the
    configuration key (``gpus.sim.count``...), ``device_value`` and ``config_value`` the two."""

    def __init__(self, message: str, *, key: str, device_value: Any, config_value: Any) -> None:
        super().__init__(message)
        self.key = key
        self.device_value = device_value
        self.config_value = config_value


class DeviceMissing(SimDeviceError):
    """There is no device at the path, and the caller asked not to create one."""


class DeviceGone(SimDeviceError):
    """The device was destroyed while this process held it (a driver reload, for NVML)."""


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


def _record_size(window_len: int) -> int:
    size = _RECORD_HEAD.size + _SCALARS.size + _EXTRAS.size + _MT.size + 8 * window_len
    return (size + 63) // 64 * 64  # records on their own cache lines


def _flock(kind: int, start: int, length: int) -> bytes:
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, length, 0)


class DeviceFile:
    """An open device. Record methods must be called with that record locked
    (:meth:`lock`/:meth:`unlock`); different records may be used from different threads."""

    def __init__(self, path: Path, fd: int, mm: mmap.mmap, info: DeviceInfo,
                 record_size: int, window_len: int) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        self.info = info
        self._record_size = record_size
        self._window = struct.Struct(f"<{window_len}d")
        self._pid = os.getpid()
        count = info.count
        self._offsets = tuple(HEADER_SIZE + i * record_size for i in range(count))
        self._lock_args = tuple(_flock(_F_WRLCK, at, record_size) for at in self._offsets)
        self._unlock_args = tuple(_flock(_F_UNLCK, at, record_size) for at in self._offsets)
        # Per record, what this process last read or stored: its head (so a store need not
        # read it back) and the sample index of the average window it holds (so an unchanged
        # window, between two refreshes, is not written again).
        self._heads: list[tuple[Any, ...] | None] = [None] * count
        self._window_k: list[float] = [math.nan] * count

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, params: Mapping[str, Any],
             replicas: Sequence[GpuPhysics], t0_s: float, wall_offset_s: float,
             create: bool = True) -> DeviceFile:
        """Open the device at ``path``, creating it (folder included) from ``replicas`` (the
        freshly built GPUs, in their start state) when there is none, or only a stale one (from
        another boot, or destroyed). Raises :class:`DeviceMismatch` when the device has other
        ``params``, :class:`SimDeviceError` when it cannot be used; with ``create`` False,
        :class:`DeviceMissing` instead of creating one (a reader never makes GPUs appear)."""
        if _OFD_SETLKW is None:
            raise SimDeviceError("machine-wide simulated GPUs need Linux (open file description "
                                 "locks); set gpus.sim.device: null for in-process ones")
        path = Path(path)
        window_len = replicas[0].window_len
        record_size = _record_size(window_len)
        size = HEADER_SIZE + record_size * len(replicas)
        fd = _open_linked(path, create=create)
        try:
            try:
                info = _read_info(fd, path)
                if info is None and not create:
                    raise DeviceMissing(f"no simulated device at {path}")
                if info is None:
                    info = _create(fd, path, params, replicas, t0_s, wall_offset_s,
                                   size, record_size, window_len)
                check_params(info, params, path)
                if os.fstat(fd).st_size < size:
                    raise SimDeviceError(f"simulated device {path}: truncated file; destroy it "
                                         "(gridtao sim destroy) and start again")
                mm = mmap.mmap(fd, size)
            finally:
                _unlock(fd, 0, HEADER_SIZE)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mm, info, record_size, window_len)

    def close(self) -> None:
        """Unmap and close (the device lives on). Idempotent."""
        if self._fd >= 0:
            self._mm.close()
            os.close(self._fd)
            self._fd = -1

    # -- records ------------------------------------------------------------------------------

    def _at(self, index: int) -> int:
        return self._offsets[index]

    def lock(self, index: int) -> None:
        # First a try that keeps the GIL (the record is almost always free): fcntl.fcntl
        # releases the GIL around every call, and the island's per-GPU writer threads would
        # hand it around twice per lock. Held by another process: wait for it, GIL released
        # (fcntl retries an interrupted wait itself, PEP 475).
        if _try_keeping_gil(self._fd, _SETLK, self._lock_args[index]) != 0:
            fcntl.fcntl(self._fd, _SETLKW, self._lock_args[index])

    def unlock(self, index: int) -> None:
        if _try_keeping_gil(self._fd, _SETLK, self._unlock_args[index]) != 0:
            fcntl.fcntl(self._fd, _SETLKW, self._unlock_args[index])  # raises what failed

    def check_alive(self) -> None:
        """Raise :class:`DeviceGone` once the device was destroyed (one byte read)."""
        if self._mm[12] != _READY:
            raise DeviceGone(f"simulated device {self.path} was destroyed")

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

    # -- whole device ---------------------------------------------------------------------------

    @staticmethod
    def peek(path: str | Path) -> DeviceInfo | None:
        """The header of the device at ``path``; None when there is none (or a stale one).
        Read under the header's lock, so never a device half created."""
        try:
            # As the agent opens it: never through a link, never waiting on a FIFO.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SimDeviceError(f"simulated device {path}: cannot open: {e.strerror or e}") \
                from None
        try:
            _check_device_file(fd, Path(path))  # before the lock: a FIFO takes none
            fcntl.fcntl(fd, _SETLKW, _flock(fcntl.F_RDLCK, 0, HEADER_SIZE))
            return _read_info(fd, Path(path))
        finally:
            os.close(fd)  # the lock goes with the open file

    @staticmethod
    def holders(path: str | Path, *, proc: Path = Path("/proc")) -> list[int]:
        """The pids of the other processes holding the device at ``path`` open (an agent, a
        ``gridtao gpus --watch``), read from ``proc``'s file descriptor tables as ``fuser``
        does; processes whose table cannot be read are not listed. Empty when there is no
        device."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return []
        found = []
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                fds = list((entry / "fd").iterdir())
            except OSError:  # gone, or not ours to read
                continue
            for fd in fds:
                try:
                    other = fd.stat()
                except OSError:
                    continue
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    found.append(int(entry.name))
                    break
        return sorted(found)

    @staticmethod
    def destroy(path: str | Path) -> bool:
        """Mark the device destroyed (processes holding it see their GPUs lost) and remove its
        file. False when there was none."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        except OSError as e:  # a folder, a link: not a device this command may remove
            raise SimDeviceError(f"{path} is not a gridtao simulated device ({e.strerror or e}):"
                                 " remove it yourself if nothing of yours is there") from None
        try:
            _lock(fd, 0, HEADER_SIZE)
            try:
                if os.fstat(fd).st_size >= _HEADER.size:
                    os.pwrite(fd, struct.pack("<I", _DESTROYED), 12)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            finally:
                _unlock(fd, 0, HEADER_SIZE)
        finally:
            os.close(fd)
        return True


def _lock(fd: int, start: int, length: int) -> None:
    fcntl.fcntl(fd, _SETLKW, _flock(_F_WRLCK, start, length))  # EINTR retried (PEP 475)


def _unlock(fd: int, start: int, length: int) -> None:
    fcntl.fcntl(fd, _SETLKW, _flock(_F_UNLCK, start, length))


def _check_folder(folder: Path) -> None:
    """The run directory must be this user's (or root's) and not writable by others: a
    device file another user could swap is another user's GPUs."""
    if not private_folder(folder):
        raise SimDeviceError(f"simulated device folder {folder} is not this user's, or others "
                             "may write to it: set RUNTIME_DIRECTORY to a folder of your own")


def _open_linked(path: Path, *, create: bool) -> int:
    """``path`` opened (created if missing, with ``create``) with the header locked, and still
    linked: a device destroyed between the open and the lock is opened again, so no process is
    left driving GPUs that nobody else can see."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    for _ in range(100):
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _check_folder(path.parent)
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            raise DeviceMissing(f"no simulated device at {path}") from None
        except OSError as e:
            raise SimDeviceError(f"simulated device {path}: cannot open: {e.strerror or e}") \
                from None
        try:
            _lock(fd, 0, HEADER_SIZE)
            if os.fstat(fd).st_nlink > 0:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # destroyed meanwhile (the lock goes with it): open the new one
    raise SimDeviceError(f"simulated device {path}: destroyed again at every open")


def _check_device_file(fd: int, path: Path) -> None:
    """Raise :class:`SimDeviceError` unless what ``fd`` opened is a regular file."""
    try:
        check_regular_fd(fd, path)
    except OSError:
        raise SimDeviceError(f"{path} is not a gridtao simulated device (not a regular "
                             "file)") from None


def _read_info(fd: int, path: Path) -> DeviceInfo | None:
    """The header, or None for an empty, destroyed, half-created or other boot's file. Raises
    :class:`SimDeviceError` for anything else that is not a device's header."""
    _check_device_file(fd, path)
    head = os.pread(fd, HEADER_SIZE, 0)
    if len(head) < _HEADER.size or not any(head[:_HEADER.size]):
        return None
    (magic, fmt, state, generation, t0, wall_offset, created, count, _, _, boot,
     params_len) = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise SimDeviceError(f"{path} is not a gridtao simulated device")
    if fmt != FORMAT:
        raise SimDeviceError(f"simulated device {path} has format {fmt}, not {FORMAT}: "
                             "destroy it (gridtao sim destroy) and start again")
    if state != _READY or boot.decode("ascii", "replace").rstrip("\0") != boot_id():
        return None
    try:
        params = json.loads(head[_PARAMS_AT:_PARAMS_AT + params_len].decode("utf-8"))
        if not isinstance(params, dict):
            raise ValueError("the parameters are not a JSON object")
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError too
        raise SimDeviceError(f"simulated device {path} is damaged ({e}): destroy it (gridtao "
                             "sim destroy) and start again") from None
    return DeviceInfo(str(path), generation, created, t0, wall_offset, count,
                      boot.decode("ascii", "replace").rstrip("\0"), params)


def _create(fd: int, path: Path, params: Mapping[str, Any], replicas: Sequence[GpuPhysics],
            t0_s: float, wall_offset_s: float, size: int, record_size: int,
            window_len: int) -> DeviceInfo:
    """Write a fresh device (caller holds the header lock)."""
    blob = json.dumps(dict(params), sort_keys=True).encode("utf-8")
    if _PARAMS_AT + len(blob) > HEADER_SIZE:
        raise SimDeviceError(f"simulated device {path}: parameters too long")
    os.ftruncate(fd, 0)
    os.ftruncate(fd, size)
    generation = int.from_bytes(os.urandom(8), "little")
    created = time.time()
    boot = boot_id()
    with mmap.mmap(fd, size) as mm:
        # The state is written READY last, so a crash mid-creation leaves a file that is
        # created again.
        _HEADER.pack_into(mm, 0, MAGIC, FORMAT, 0, generation, t0_s, wall_offset_s, created,
                          len(replicas), record_size, window_len,
                          boot.encode("ascii")[:36], len(blob))
        mm[_PARAMS_AT:_PARAMS_AT + len(blob)] = blob
        tmp = DeviceFile(path, fd, mm, DeviceInfo(str(path), generation, created, t0_s,
                                                  wall_offset_s, len(replicas), boot,
                                                  dict(params)), record_size, window_len)
        for i, physics in enumerate(replicas):
            workload = physics.workload
            if not isinstance(workload, Resumable):
                raise SimDeviceError("machine-wide simulated GPUs need resumable workloads")
            tmp.store(i, physics, workload=workload, limit_set=False)
        mm[12:16] = struct.pack("<I", _READY)
        mm.flush()
    return DeviceInfo(str(path), generation, created, t0_s, wall_offset_s, len(replicas), boot,
                      json.loads(blob))


def check_params(info: DeviceInfo, params: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`DeviceMismatch`, naming the first key, unless the device at ``path``
    (``info``) was made with ``params``."""
    for key in sorted(set(info.params) | set(params)):
        have, want = info.params.get(key), params.get(key)
        if have != want:
            raise DeviceMismatch(
                f"gpus.sim.{key}: the simulated device {path} was created with {have!r}; this "
                f"configuration says {want!r} (one machine, one set of GPUs: use the same "
                "settings, or another gpus.sim.device; `gridtao sim status` shows who uses it, "
                "and `gridtao sim destroy` removes it once no one does)",
                key=f"gpus.sim.{key}", device_value=have, config_value=want)
