"""A machine-wide simulated device: GPU state in one memory-mapped file that every process shares.

On a real server a power limit is machine state: every process that opens NVML sees it, and it
outlives the process that set it. A :class:`DeviceFile` gives simulated GPUs the same property.
Each GPU's whole state (its physics, see :meth:`GpuPhysics.export`, and its workload's position,
see :class:`~gridtao.gpu.sim.workloads.Resumable`) is one fixed-size record of the file. A
process keeps a replica of each GPU; to use one it locks the GPU's record, loads it into the
replica if another process changed it since, advances the physics to now, and stores it back.
Physics run on ``CLOCK_MONOTONIC``, which every process on the machine shares, so whichever
process advances a GPU, all see one history: one limit, one draw, one energy counter.

The file's layout and its codec are :mod:`gridtao.gpu.sim.sharedlayout`'s, the errors
:mod:`gridtao.gpu.sim.sharederrors`'s (re-exported here); this module opens, creates, locks and
destroys the file.

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
import dataclasses
import fcntl
import json
import mmap
import os
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gridtao.clock import boot_id
from gridtao.config.paths import private_folder
from gridtao.gpu.sim.physics import GpuPhysics
from gridtao.gpu.sim.sharederrors import DeviceGone, DeviceMismatch, DeviceMissing, SimDeviceError
from gridtao.gpu.sim.sharedlayout import (
    DESTROYED,
    HEADER,
    HEADER_SIZE,
    PARAMS_AT,
    READY,
    STATE,
    STATE_AT,
    DeviceInfo,
    DeviceRecords,
    parse_header,
    record_bytes,
    write_header,
)
from gridtao.gpu.sim.workloads import Resumable
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

_F_WRLCK, _F_UNLCK = fcntl.F_WRLCK, fcntl.F_UNLCK
_OFD_SETLKW: int | None = getattr(fcntl, "F_OFD_SETLKW", None)
_SETLKW: int = _OFD_SETLKW if _OFD_SETLKW is not None else fcntl.F_SETLKW  # open() checks
_SETLK: int = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)
# libc's fcntl through ctypes.PyDLL: a call that keeps the GIL. Only ever with F_OFD_SETLK,
# which never blocks.
_try_keeping_gil = ctypes.PyDLL(None, use_errno=True).fcntl
_try_keeping_gil.restype = ctypes.c_int


def _flock(kind: int, start: int, length: int) -> bytes:
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, length, 0)


class DeviceFile(DeviceRecords):
    """An open device. Record methods (:class:`~gridtao.gpu.sim.sharedlayout.DeviceRecords`'s)
    must be called with that record locked (:meth:`lock`/:meth:`unlock`); different records may
    be used from different threads."""

    def __init__(self, path: Path, fd: int, mm: mmap.mmap, info: DeviceInfo,
                 record_size: int, window_len: int) -> None:
        super().__init__(mm, info.count, record_size, window_len)
        self.path = path
        self._fd = fd
        self.info = info
        self._record_size = record_size
        self._lock_args = tuple(_flock(_F_WRLCK, at, record_size) for at in self._offsets)
        self._unlock_args = tuple(_flock(_F_UNLCK, at, record_size) for at in self._offsets)

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
        record_size = record_bytes(window_len)
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

    # -- locks ---------------------------------------------------------------------------------

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
        if self._mm[12] != READY:  # the header's state (STATE_AT), one byte
            raise DeviceGone(f"simulated device {self.path} was destroyed")

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
                if os.fstat(fd).st_size >= HEADER.size:
                    os.pwrite(fd, STATE.pack(DESTROYED), STATE_AT)
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
    return parse_header(os.pread(fd, HEADER_SIZE, 0), path)


def _create(fd: int, path: Path, params: Mapping[str, Any], replicas: Sequence[GpuPhysics],
            t0_s: float, wall_offset_s: float, size: int, record_size: int,
            window_len: int) -> DeviceInfo:
    """Write a fresh device (caller holds the header lock)."""
    blob = json.dumps(dict(params), sort_keys=True).encode("utf-8")
    if PARAMS_AT + len(blob) > HEADER_SIZE:
        raise SimDeviceError(f"simulated device {path}: parameters too long")
    os.ftruncate(fd, 0)
    os.ftruncate(fd, size)
    info = DeviceInfo(str(path), int.from_bytes(os.urandom(8), "little"), time.time(), t0_s,
                      wall_offset_s, len(replicas), boot_id(), dict(params))
    with mmap.mmap(fd, size) as mm:
        # The state is written READY last, so a crash mid-creation leaves a file that is
        # created again.
        write_header(mm, info, record_size, window_len, blob)
        records = DeviceRecords(mm, len(replicas), record_size, window_len)
        for i, physics in enumerate(replicas):
            workload = physics.workload
            if not isinstance(workload, Resumable):
                raise SimDeviceError("machine-wide simulated GPUs need resumable workloads")
            records.store(i, physics, workload=workload, limit_set=False)
        STATE.pack_into(mm, STATE_AT, READY)
        mm.flush()
    return dataclasses.replace(info, params=json.loads(blob))


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
