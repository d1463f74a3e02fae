"""Where the agent's files go: one state directory, and one rule for relative paths.

The state directory holds what the agent writes for itself (audit trail, journal, replay store):
``$STATE_DIRECTORY`` when systemd sets it (``StateDirectory=gridtao``; the first entry if it
names several), else ``/var/lib/gridtao`` for root, else ``$XDG_STATE_HOME/gridtao`` (default
``~/.local/state/gridtao``). The run directory holds what lives only as long as the machine is
up (the simulated GPUs' device files): ``$RUNTIME_DIRECTORY`` (systemd ``RuntimeDirectory=``),
else ``/run/gridtao`` for root, else ``$XDG_RUNTIME_DIR/gridtao``, else
``/tmp/gridtao-<uid>``. A relative path in the configuration is taken from the folder of
the configuration file (the working directory when there is none), whatever the key.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from gridtao.config.agent import Config, ConfigError
from gridtao.readfile import irregular

__all__ = ["check_state_paths", "resolve_path", "run_dir", "sim_device_path", "state_dir",
           "with_state_paths"]


def state_dir() -> Path:
    """The agent's state directory (not created here)."""
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    if os.geteuid() == 0:
        return Path("/var/lib/gridtao")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gridtao"


def run_dir() -> Path:
    """The run directory (not created here); see the module docstring."""
    systemd = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    if os.geteuid() == 0:
        return Path("/run/gridtao")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "gridtao"
    return Path(f"/tmp/gridtao-{os.geteuid()}")


def private_folder(folder: Path) -> bool:
    """Whether ``folder`` is this user's (or root's) and others cannot write to it (a sticky
    folder such as /tmp aside): what lives there (a simulated device, the GPUs' claims) could
    otherwise be swapped or held by another user."""
    st = os.stat(folder)
    return st.st_uid in (os.geteuid(), 0) and not (
        st.st_mode & 0o022 and not st.st_mode & 0o1000)


def sim_device_path(name: str) -> Path:
    """The file of the machine-wide simulated device ``name`` (``gpus.sim.device``)."""
    return run_dir() / f"sim-{name}.gpus"


def resolve_path(value: str, source: str) -> Path:
    """``value`` with ``~`` expanded, relative to the folder of the config file ``source``
    (the working directory when the configuration did not come from a file)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    src = Path(source)
    base = src.resolve().parent if src.is_file() else Path.cwd()
    return base / path


def with_state_paths(config: Config, node_id: str) -> Config:
    """``config`` with the audit trail's, the journal's, the replay store's and the history's
    paths made absolute: unset ones in the state directory (named after ``node_id``, so agents
    of several nodes can share it), relative ones from the configuration file's folder, as are
    the simulator's trace file and the planner's signals file."""
    state = state_dir()

    def where(value: str | None, default_name: str) -> str:
        if value is None:
            return str(state / default_name)
        return str(resolve_path(value, config.source))

    resolved = dataclasses.replace(
        config,
        audit=dataclasses.replace(config.audit,
                                  path=where(config.audit.path, f"audit-{node_id}.jsonl")),
        journal=dataclasses.replace(config.journal,
                                    path=where(config.journal.path, f"journal-{node_id}.json")),
        history=dataclasses.replace(config.history,
                                    path=where(config.history.path,
                                               f"history-{node_id}.sqlite3")),
        planner=dataclasses.replace(config.planner, signals_file=None
                                    if config.planner.signals_file is None
                                    else str(resolve_path(config.planner.signals_file,
                                                          config.source))),
        auth=dataclasses.replace(config.auth,
                                 replay_store=where(config.auth.replay_store,
                                                    f"replay-{node_id}.jsonl")),
        gpus=dataclasses.replace(config.gpus, sim=dataclasses.replace(
            config.gpus.sim, trace_csv=None if config.gpus.sim.trace_csv is None
            else str(resolve_path(config.gpus.sim.trace_csv, config.source)))),
    )
    check_state_paths(resolved)
    return resolved


def check_state_paths(config: Config) -> None:
    """The agent's own files (audit trail, journal, replay store, history) must each be a file
    of its own: a path that is a folder or a device, or one file named by two keys (the
    journal's clean stop would delete the audit trail; the audit writer would move the history
    database aside), is refused before anything is written. ``config``'s paths are absolute
    (:func:`with_state_paths`). Raises :class:`ConfigError` naming the key."""
    named = {key: value for key, value, used in (
        ("audit.path", config.audit.path, config.audit.enabled),
        ("journal.path", config.journal.path, config.journal.enabled),
        ("auth.replay_store", config.auth.replay_store, config.auth.mode != "none"),
        ("history.path", config.history.path, config.history.enabled),
    ) if value is not None and used}
    seen: dict[str, str] = {}
    for key, value in named.items():
        path = Path(value)
        try:
            kind = irregular(path)
        except OSError as e:  # a folder on the way this user may not enter
            raise ConfigError(f"{config.source}: {key}: {value}: cannot look: "
                              f"{e.strerror or e}") from None
        if kind is not None:
            raise ConfigError(f"{config.source}: {key}: {value} is {kind}: the agent needs a "
                              "file of its own there")
        real = os.path.realpath(path)
        if real in seen:
            raise ConfigError(f"{config.source}: {key}: names the same file as {seen[real]} "
                              f"({real}): each record needs a file of its own")
        seen[real] = key
        where = _unwritable(path)
        if where is not None:  # a read-only file system, or a folder not this user's
            raise ConfigError(f"{config.source}: {key}: {value}: cannot write there ({where} "
                              "is read-only or not writable by this user)")
        if key == "history.path" and not _sqlite_or_empty(path):
            raise ConfigError(f"{config.source}: {key}: {value}: not a SQLite database "
                              "(another kind of file, or its header is damaged): the agent "
                              "keeps its history there; move it aside or name another file")


#: The first bytes of every SQLite 3 database file (sqlite.org/fileformat.html, 1.3).
SQLITE_HEADER = b"SQLite format 3\x00"


def _sqlite_or_empty(path: Path) -> bool:
    """Whether ``path`` is missing, empty (SQLite makes a database of it) or starts as a
    SQLite database does (reading 16 bytes; an unreadable file is left to its opener)."""
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError:
        return True
    return not head or head == SQLITE_HEADER


def _unwritable(path: Path) -> Path | None:
    """The file, or the nearest folder that exists on the way to it, when this user cannot
    write it (creating nothing); None when it can."""
    if path.exists():
        return None if os.access(path, os.W_OK) else path
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():  # a file on the way: its opener says so, naming what is wrong
        return None
    return None if os.access(folder, os.W_OK | os.X_OK) else folder
