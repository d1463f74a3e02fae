"""Files a command writes on request (``--json FILE``, ``--plot FILE``): checked before the
command does its work, and a failed write said in one line naming the option (exit 2), never a
traceback after the output went to stdout."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gridtao.config.agent import ConfigError

__all__ = ["output_path", "writing"]


def output_path(value: str, option: str) -> Path:
    """``value`` as ``option``'s output file, once it is known it can be written: not a folder,
    in a folder that exists and this process may write in. Raises ConfigError."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {value}: is a folder; name a file")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"{option} {value}: no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (
            path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {value}: not writable by this user")
    return path


@contextmanager
def writing(path: Path, option: str) -> Iterator[None]:
    """Write ``option``'s file inside this block: an OSError (a full disk, a folder removed
    meanwhile) becomes one ConfigError naming the option and the file."""
    try:
        yield
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot write it: {e.strerror or e}") from None
