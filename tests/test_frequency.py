"""gridtao.products.frequency.FrequencyMonitor: pure logic on (sample, monotonic time)."""

from __future__ import annotations

import pytest

from gridtao.config.agent import FrequencyTrigger
from gridtao.products.frequency import Activate, FrequencyMonitor, Release, level_key

WALL = 1_763_900_000.0


def _monitor(*triggers: FrequencyTrigger) -> FrequencyMonitor:
    default = (FrequencyTrigger(hz=49.7, min_hold_s=2.0, recovery_s=1.0),)
    return FrequencyMonitor(triggers or default)


def _sample(mon: FrequencyMonitor, hz: float, t: float) -> list[Activate | Release]:
    return mon.on_sample(hz, t, wall_s=WALL + t)


def test_level_key_names_the_level() -> None:
    assert level_key(FrequencyTrigger(hz=49.7)) == "freq:49.70"
    assert level_key(FrequencyTrigger(hz=49.55)) == "freq:49.55"


def test_distinct_levels_are_required() -> None:
    with pytest.raises(ValueError, match="distinct"):
        FrequencyMonitor([FrequencyTrigger(hz=49.7), FrequencyTrigger(hz=49.7, min_hold_s=1)])


def test_nominal_frequency_does_nothing() -> None:
    mon = _monitor()
    for k in range(100):
        assert _sample(mon, 50.0 - 0.002 * k, 0.1 * k) == []
    assert mon.active_event_ids == []
    assert mon.last_hz == pytest.approx(49.802)


@pytest.mark.parametrize("hz", [49.7, 49.69, 49.0])
def test_activates_at_or_below_the_level(hz: float) -> None:
    mon = _monitor()
    assert _sample(mon, 49.71, 0.0) == []
    actions = _sample(mon, hz, 0.1)
    assert len(actions) == 1
    act = actions[0]
    assert isinstance(act, Activate)
    assert act.level_key == "freq:49.70"
    assert act.hz == hz
    assert mon.active_event_ids == [act.event_id]


def test_no_retrigger_while_active_and_unique_ids_after_release() -> None:
    mon = _monitor(FrequencyTrigger(hz=49.7, min_hold_s=0.0, recovery_s=0.5, hysteresis_hz=0.0))
    (first,) = _sample(mon, 49.6, 0.0)
    assert isinstance(first, Activate)
    for k in range(1, 20):
        assert _sample(mon, 49.5 - 0.01 * k, 0.1 * k) == []  # deeper still: same event
    assert _sample(mon, 49.9, 2.0) == []  # recovery starts
    (rel,) = _sample(mon, 49.9, 2.5)
    assert rel == Release("freq:49.70", first.event_id)
    assert mon.active_event_ids == []
    (second,) = _sample(mon, 49.65, 2.6)
    assert isinstance(second, Activate)
    assert second.event_id != first.event_id


def test_one_sample_crossing_several_levels_fires_each() -> None:
    mon = _monitor(
        FrequencyTrigger(hz=49.7), FrequencyTrigger(hz=49.6), FrequencyTrigger(hz=49.5)
    )
    actions = _sample(mon, 49.55, 0.0)
    assert [a.level_key for a in actions] == ["freq:49.70", "freq:49.60"]
    assert all(isinstance(a, Activate) for a in actions)
    assert len({a.event_id for a in actions}) == 2
    (deeper,) = _sample(mon, 49.5, 0.1)
    assert isinstance(deeper, Activate) and deeper.level_key == "freq:49.50"
    assert len(mon.active_event_ids) == 3


def test_hysteresis_band_does_not_count_as_recovered() -> None:
    trig = FrequencyTrigger(hz=49.7, min_hold_s=0.0, recovery_s=1.0, hysteresis_hz=0.05)
    mon = _monitor(trig)
    (act,) = _sample(mon, 49.6, 0.0)
    # Inside (hz, hz + hysteresis]: above the level but not recovered, however long it stays.
    for k in range(1, 50):
        assert _sample(mon, 49.75, 0.1 * k) == []
    assert mon.active_event_ids == [act.event_id]
    assert _sample(mon, 49.76, 5.0) == []
    assert _sample(mon, 49.76, 5.9) == []
    (rel,) = _sample(mon, 49.76, 6.0)
    assert isinstance(rel, Release) and rel.event_id == act.event_id


def test_a_dip_during_recovery_restarts_the_recovery_time() -> None:
    mon = _monitor(FrequencyTrigger(hz=49.7, min_hold_s=0.0, recovery_s=1.0, hysteresis_hz=0.0))
    _sample(mon, 49.6, 0.0)
    assert _sample(mon, 49.9, 1.0) == []
    assert _sample(mon, 49.69, 1.8) == []  # back below: recovery time starts over
    assert _sample(mon, 49.9, 2.0) == []
    assert mon.on_tick(2.9) == []
    assert len(mon.on_tick(3.0)) == 1


def test_recovery_alone_is_not_enough_min_hold_also_required() -> None:
    mon = _monitor(FrequencyTrigger(hz=49.7, min_hold_s=5.0, recovery_s=1.0, hysteresis_hz=0.0))
    (act,) = _sample(mon, 49.6, 0.0)
    assert _sample(mon, 50.0, 0.2) == []  # recovered from t=0.2
    assert mon.on_tick(1.2) == []  # recovery_s done, min_hold_s not
    assert mon.on_tick(4.99) == []
    (rel,) = mon.on_tick(5.0)
    assert rel == Release("freq:49.70", act.event_id)


def test_min_hold_alone_is_not_enough_recovery_also_required() -> None:
    mon = _monitor(FrequencyTrigger(hz=49.7, min_hold_s=1.0, recovery_s=2.0, hysteresis_hz=0.0))
    (act,) = _sample(mon, 49.6, 0.0)
    assert _sample(mon, 49.65, 3.0) == []  # held well past min_hold_s, still low
    assert _sample(mon, 50.0, 3.5) == []
    assert mon.on_tick(5.49) == []
    (rel,) = mon.on_tick(5.5)
    assert rel.event_id == act.event_id


def test_release_comes_from_ticks_without_new_samples() -> None:
    mon = _monitor(FrequencyTrigger(hz=49.7, min_hold_s=0.5, recovery_s=0.5, hysteresis_hz=0.0))
    _sample(mon, 49.6, 0.0)
    _sample(mon, 50.0, 0.1)
    # The meter goes quiet: time alone must finish the release.
    assert mon.on_tick(0.5) == []
    assert len(mon.on_tick(0.6)) == 1
    assert mon.on_tick(10.0) == []  # released once only


def test_forget_drops_an_event_ended_elsewhere() -> None:
    mon = _monitor(FrequencyTrigger(hz=49.7, min_hold_s=0.0, recovery_s=0.0))
    (act,) = _sample(mon, 49.6, 0.0)
    mon.forget("no-such-event")
    assert mon.active_event_ids == [act.event_id]
    mon.forget(act.event_id)
    assert mon.active_event_ids == []
    assert mon.on_tick(100.0) == []  # nothing left to release
    (again,) = _sample(mon, 49.6, 100.1)  # and the level can fire again
    assert isinstance(again, Activate) and again.event_id != act.event_id


def test_event_ids_carry_level_and_prefix() -> None:
    mon = FrequencyMonitor([FrequencyTrigger(hz=49.7)], event_prefix="fcr")
    (act,) = mon.on_sample(49.6, 0.0, wall_s=WALL)
    assert act.event_id.startswith("fcr-49.70-")
