"""What the energy report's modules share: the error they raise and the units they count in.

Units: seconds (:data:`MINUTE_S`, :data:`HOUR_S`, :data:`DAY_S`); joules per kilowatt-hour
(:data:`J_PER_KWH`).
Threads: constants, an exception class and pure functions; nothing to share.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gridtao.errors import GridtaoError

__all__ = ["DAY_S", "HOUR_S", "J_PER_KWH", "MINUTE_S", "ReportError", "coverage", "iso",
           "mean_w"]

#: Joules in a kilowatt-hour.
J_PER_KWH = 3.6e6
MINUTE_S = 60
HOUR_S = 3600
DAY_S = 86_400


class ReportError(GridtaoError, ValueError):
    """A report cannot be made: a bad time or option, or a file that cannot be read. The
    message names the option or the file and the problem."""


def iso(t: float | None) -> str | None:
    """``t`` (Unix s) as ISO 8601 UTC (``Z``), to the second, or to the millisecond when it
    has a fraction; None for None."""
    if t is None:
        return None
    d = datetime.fromtimestamp(t, UTC)
    text = d.strftime("%Y-%m-%dT%H:%M:%S")
    if d.microsecond:
        text += f".{d.microsecond // 1000:03d}"
    return text + "Z"


def coverage(covered_s: float, expected_s: float) -> float:
    """The share of a span that measurements cover, in [0, 1] (0 for an empty span)."""
    return covered_s / expected_s if expected_s > 0 else 0.0


def mean_w(energy_kwh: float, covered_s: float) -> float | None:
    """Mean draw (W) of ``energy_kwh`` over the ``covered_s`` seconds it was measured in;
    None when nothing is covered."""
    return energy_kwh * J_PER_KWH / covered_s if covered_s > 0 else None
