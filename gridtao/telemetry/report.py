"""Human-facing summaries: ack timelines, latency tables and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from gridtao.telemetry.plotting import pyplot


class TimelinePoint(Protocol):
    t_s: float
    node_w: float
    target_w: float | None
    hz: float | None


def summarise_acks(acks: Sequence[Mapping[str, Any]]) -> str:
    """One line per event: accepted?, receive->command and receive->reached in ms."""
    events: dict[str, dict[str, Any]] = {}
    for ack in acks:
        key = str(ack.get("id"))
        merged = events.setdefault(key, {})
        merged.update({k: v for k, v in ack.items() if v is not None})
    lines = ["event                               accepted  recv->cmd ms  recv->target ms  reason"]
    for key, ev in events.items():
        rec, cmd, reach = ev.get("received_at"), ev.get("commanded_at"), ev.get("reached_at")
        to_cmd = f"{(cmd - rec) * 1000:.2f}" if rec is not None and cmd is not None else "-"
        to_target = f"{(reach - rec) * 1000:.1f}" if rec is not None and reach is not None else "-"
        lines.append(f"{key:<36}{ev.get('accepted')!s:<10}{to_cmd:>12}{to_target:>17}  "
                     f"{ev.get('reason') or ''}")
    return "\n".join(lines)


def plot_timeline(points: Sequence[TimelinePoint], path: Path, *, title: str) -> None:
    """Node power (measured through NVML) and target against time, frequency on a twin axis."""
    plt = pyplot()

    t = [p.t_s for p in points]
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    ax.plot(t, [p.node_w for p in points], lw=1.0, label="node power (NVML instant), W")
    ax.plot(t, [p.target_w if p.target_w is not None else float("nan") for p in points],
            lw=1.6, ls="--", color="tab:red", label="target, W")
    ax.set_xlabel("time, s")
    ax.set_ylabel("node IT power, W")
    ax.grid(alpha=0.3)
    if any(p.hz is not None for p in points):
        ax2 = ax.twinx()
        ax2.plot(t, [p.hz if p.hz is not None else float("nan") for p in points],
                 color="tab:green", lw=1.0, label="grid frequency, Hz")
        ax2.set_ylabel("frequency, Hz")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of ``values`` (nearest-rank; empty -> NaN)."""
    if not values:
        nan = float("nan")
        return {"p50": nan, "p99": nan, "max": nan}
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }
