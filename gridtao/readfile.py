"""Reading a file an operator named: only a regular file, and only up to a size.

A path in a configuration or on the command line may name a FIFO (opening it blocks), a
device such as ``/dev/zero`` (reading it never ends) or a folder. :func:`check_regular` refuses
those before anything is opened; :func:`read_regular` also refuses a file larger than its
caller's limit. Both raise :class:`OSError` (``strerror`` says why, ``filename`` names the
file), which every caller already reports as a file it cannot read.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["check_regular", "check_regular_fd", "irregular", "read_regular"]


# What Path.exists() takes for "nothing there": missing, a file on the way, a link loop.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


def _kind(mode: int) -> str | None:
    if stat.S_ISDIR(mode):
        return "a folder"
    return None if stat.S_ISREG(mode) else "not a regular file"


def irregular(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it is there but is no regular file (symbolic links followed):
    ``"a folder"`` or ``"not a regular file"`` (a device, FIFO or socket); None for a regular
    file or nothing there as :meth:`pathlib.Path.exists` judges it (a file still to be made, or
    one whose opening will say what is wrong). Other failures to look raise :class:`OSError`."""
    try:
        return _kind(os.stat(path).st_mode)
    except OSError as e:
        if e.errno in _ABSENT:  # nothing there, as Path.exists() judges it
            return None
        raise


def check_regular(path: str | os.PathLike[str]) -> None:
    """Raise :class:`OSError` unless ``path`` is a regular file (symbolic links followed):
    ``FileNotFoundError`` when there is nothing there, ``errno.EISDIR`` for a folder,
    ``errno.EINVAL`` for a device, FIFO or socket."""
    _raise_unless_regular(os.stat(path).st_mode, path)


def check_regular_fd(fd: int, path: str | os.PathLike[str]) -> None:
    """:func:`check_regular` for a file already open at ``fd`` (``path`` names it in the
    error): what was opened is what is checked, whatever replaced the path since."""
    _raise_unless_regular(os.fstat(fd).st_mode, path)


def _raise_unless_regular(mode: int, path: str | os.PathLike[str]) -> None:
    kind = _kind(mode)
    if kind == "a folder":
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", os.fspath(path))
    if kind is not None:
        raise OSError(errno.EINVAL, "not a regular file (a device, FIFO or socket)",
                      os.fspath(path))


def read_regular(path: str | os.PathLike[str], *, max_bytes: int) -> bytes:
    """The contents of the regular file ``path``, at most ``max_bytes`` of them: a larger file
    raises :class:`OSError` (``EFBIG``) without being read further."""
    check_regular(path)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", os.fspath(path))
    return data
