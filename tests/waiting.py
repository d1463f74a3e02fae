"""Polling helper shared by the tests that watch real processes and brokers."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], bool], what: str, *, timeout_s: float) -> None:
    """Poll ``cond`` every 10 ms; fail naming ``what`` after ``timeout_s`` (generous on purpose:
    CI machines are shared; nothing here measures speed)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)
