"""gridtao/work/window.py: which windows of tier 1's readings the work model may learn from."""

from __future__ import annotations

import pytest

from gridtao.work.window import Observation, PowerWindow

RESTING = [700_000.0, 700_000.0, 700_000.0]
HEADROOM = 15_000.0
GROUP = [0, 1]  # GPU 2 is another source's


def _window(*readings: tuple[list[float], list[float]]) -> PowerWindow:
    window = PowerWindow()
    for draw, limits in readings:
        window.add(GROUP, draw, limits, RESTING, headroom_mw=HEADROOM)
    return window


def test_free_readings_are_a_reference() -> None:
    window = _window(([500_000, 600_000, 1], RESTING), ([520_000, 580_000, 1], RESTING))
    assert window.observation() == Observation(1100.0, 1400.0, limited=False)


def test_held_readings_with_a_gpu_on_its_limit_are_a_pair_for_the_fit() -> None:
    limits = [400_000.0, 700_000.0, 100.0]
    window = _window(([395_000, 300_000, 0], limits), ([300_000, 300_000, 0], limits))
    seen = window.observation()
    assert seen is not None and seen.limited
    assert seen.power_w == pytest.approx(647.5) and seen.limit_w == pytest.approx(1100.0)


@pytest.mark.parametrize("readings", [
    # Mixed: held in one reading, free in the other.
    [([395_000, 300_000, 0], [400_000, 700_000, 0]), ([500_000, 600_000, 0], RESTING)],
    # Held throughout, but no GPU came near its limit: the limit taught nothing.
    [([200_000, 300_000, 0], [400_000, 700_000, 0])] * 2,
    # Nothing read.
    [],
])
def test_other_windows_teach_nothing(readings: list[tuple[list[float], list[float]]]) -> None:
    assert _window(*readings).observation() is None


def test_a_limit_within_the_headroom_of_resting_is_not_held() -> None:
    near = [700_000.0 - HEADROOM / 2, 700_000.0, 0.0]
    assert _window(([690_000, 500_000, 0], near)).observation() == Observation(
        1190.0, 1400.0 - HEADROOM / 2 / 1000.0, limited=False)


def test_reset_starts_a_new_window() -> None:
    window = _window(([500_000, 600_000, 1], RESTING))
    window.reset()
    assert window.samples == 0 and window.observation() is None
