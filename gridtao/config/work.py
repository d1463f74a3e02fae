"""Configuration of the work the node does and its CPUs' power (re-exported by
:mod:`gridtao.config.agent`; ranges live next to each field in ``metadata``).

Read by gridtao/work/: each work source is a Prometheus endpoint (an inference server, a
training job) scraped on a thread of its own; CPU power is read from the kernel's powercap tree.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

from gridtao.config.schema import fail, rng

#: What a work source serves: an inference server whose token counters gridtao knows, or
#: ``custom`` (any counters, named in ``counters``).
WorkKind = Literal["vllm", "sglang", "tgi", "nim", "custom"]

MAX_SOURCE_NAME_CHARS = 64


@dataclass(frozen=True)
class WorkSource:
    """A Prometheus text endpoint to scrape (``http://`` only: an endpoint on this node or its
    network). ``kind`` says which counters to read (gridtao/work/exposition.py); ``custom``
    reads the counters named in ``counters`` (sample names as the endpoint writes them, e.g.
    ``train_samples_total``). ``gpus``: the indices of the GPUs this work runs on. It is
    scraped every ``period_s`` seconds; a scrape not answered within ``timeout_s`` seconds
    counts as down."""

    name: str
    url: str
    kind: WorkKind
    gpus: tuple[int, ...]
    period_s: float = field(default=5.0, metadata=rng(0.1, 3600.0))
    timeout_s: float = field(default=1.0, metadata=rng(0.01, 60.0))
    counters: tuple[str, ...] = ()


@dataclass(frozen=True)
class CpuPowerConfig:
    """The CPU packages' energy from RAPL under the powercap sysfs tree at ``root`` (read-only;
    gridtao/work/rapl.py). Where the counters cannot be read (no RAPL, or not root on Linux
    5.10 and later) the agent says so once and exports no CPU power."""

    enabled: bool = True
    root: str = "/sys/class/powercap"


@dataclass(frozen=True)
class WorkConfig:
    """``work:``: the node's work sources (none by default) and its CPU power."""

    sources: tuple[WorkSource, ...] = ()
    cpu_power: CpuPowerConfig = field(default_factory=CpuPowerConfig)


def metric_name_problem(name: str) -> str | None:
    """What keeps ``name`` from being a Prometheus metric name (None: nothing): letters,
    digits, ``_`` and ``:``, not starting with a digit."""
    if not name or name[0].isdigit():
        return "must start with a letter, '_' or ':'"
    if not all((ch.isascii() and ch.isalnum()) or ch in "_:" for ch in name):
        return "may hold only ASCII letters, digits, '_' and ':'"
    return None


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a work source's endpoint (None: nothing)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as e:
        return f"not a valid URL ({e})"
    if parts.scheme != "http":
        return "must be an http:// URL (the exposition of a server on this node or its network)"
    if not parts.hostname:
        return "names no host"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (they would show in logs)"
    if port == 0:
        return "port 0 cannot be scraped"
    if any(ch.isspace() for ch in url):
        return "must not contain spaces"
    return None


def check_work(work: WorkConfig, source: str) -> None:
    """Rules of ``work:`` that span several keys; raises ConfigError naming the key."""
    names: set[str] = set()
    for k, src in enumerate(work.sources):
        key = f"work.sources[{k}]"
        if src.name in names:
            fail(source, f"{key}.name", f"two work sources are named {src.name!r}")
        names.add(src.name)
        if (len(src.name) > MAX_SOURCE_NAME_CHARS or not src.name.isprintable()
                or any(ch.isspace() for ch in src.name)):
            fail(source, f"{key}.name", f"must be printable, without spaces, at most "
                 f"{MAX_SOURCE_NAME_CHARS} characters")
        if (problem := url_problem(src.url)) is not None:
            fail(source, f"{key}.url", problem)
        if src.timeout_s > src.period_s:
            fail(source, f"{key}.timeout_s", f"{src.timeout_s:g} s is longer than its "
                 f"period_s {src.period_s:g} s")
        if not src.gpus:
            fail(source, f"{key}.gpus", "list the indices of the GPUs this work runs on")
        for j, gpu in enumerate(src.gpus):
            if gpu < 0:
                fail(source, f"{key}.gpus[{j}]", f"a GPU index is >= 0, got {gpu}")
            if gpu in src.gpus[:j]:
                fail(source, f"{key}.gpus[{j}]", f"GPU {gpu} is listed twice")
        _check_counters(src, key, source)


def _check_counters(src: WorkSource, key: str, source: str) -> None:
    if src.kind != "custom":
        if src.counters:
            fail(source, f"{key}.counters", f"only kind custom names its counters ({src.kind} "
                 "has its own)")
        return
    if not src.counters:
        fail(source, f"{key}.counters", "kind custom needs the names of the counters to read")
    for j, name in enumerate(src.counters):
        if (problem := metric_name_problem(name)) is not None:
            fail(source, f"{key}.counters[{j}]", problem)
        unit = name.removesuffix("_total")  # the unit its work is exported under
        if any(other.removesuffix("_total") == unit for other in src.counters[:j]):
            fail(source, f"{key}.counters[{j}]", f"{name!r} is listed twice (its unit is "
                 f"{unit!r})")
