"""What the energy report's modules share: the error they raise and the units they count in.

Units: seconds (:data:`MINUTE_S`, :data:`HOUR_S`, :data:`DAY_S`); joules per kilowatt-hour
(:data:`J_PER_KWH`).
Threads: constants and an exception class; nothing to share.
"""

from __future__ import annotations

from gridtao.errors import GridtaoError

__all__ = ["DAY_S", "HOUR_S", "J_PER_KWH", "MINUTE_S", "ReportError"]

#: Joules in a kilowatt-hour.
J_PER_KWH = 3.6e6
MINUTE_S = 60
HOUR_S = 3600
DAY_S = 86_400


class ReportError(GridtaoError, ValueError):
    """A report cannot be made: a bad time or option, or a file that cannot be read. The
    message names the option or the file and the problem."""
