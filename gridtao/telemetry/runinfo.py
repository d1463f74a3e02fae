"""Where a measurement was made: machine, software versions, commit and date.

Every benchmark and prequalification report records these next to its figures, so a number can
be reproduced or explained (a different CPU, a newer broker, uncommitted changes).
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from gridtao import __version__

__all__ = ["broker_version", "dependency_versions", "git_commit", "machine_description",
           "provenance", "software_version", "utc_now"]

# The packages whose versions can move a measured figure.
_DEPENDENCIES = ("aiomqtt", "paho-mqtt", "nvidia-ml-py", "numpy", "prometheus-client",
                 "uvloop", "cryptography")


def machine_description() -> str:
    """CPU model, core count, Python and OS, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def git_commit() -> str | None:
    """Short commit of the source tree gridtao runs from (``+dirty`` with local changes), or
    None when it is not a git checkout (an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=here, check=False).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, cwd=here,
                               check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def software_version() -> str:
    """``gridtao X.Y.Z`` and the commit when known."""
    sha = git_commit()
    return f"gridtao {__version__}" + (f" (git {sha})" if sha else "")


def dependency_versions() -> dict[str, str]:
    """Installed version of each runtime dependency that can move a figure."""
    out: dict[str, str] = {}
    for name in _DEPENDENCIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def broker_version() -> str | None:
    """The first line ``mosquitto -h`` prints (its version), or None if it is not installed."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                        if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else None


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def provenance(command: str) -> dict[str, object]:
    """What every benchmark or report JSON records beside its figures: ``date`` (UTC),
    ``machine``, ``commit``, ``software``, ``dependencies``, ``broker`` and the ``command``."""
    return {
        "date": utc_now(),
        "machine": machine_description(),
        "commit": git_commit(),
        "software": software_version(),
        "dependencies": dependency_versions(),
        "broker": broker_version(),
        "command": command,
    }
