"""The island's additions for tier 2: absolute armed reductions, the soft commitment (lower
only, never written, never above an event, lapses) and priority floors (cut splits only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gridtao.clock import VirtualClock
from gridtao.config.agent import ControlConfig, SimConfig
from gridtao.control.tier1.loop import FastLoop
from gridtao.gpu.nvml import NvmlBackend
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.safety.island import SafetyIsland

W = 1000
N = 4
MIN_MW, DEFAULT_MW = 200 * W, 700 * W
DRAW_MW = [600 * W, 500 * W, 650 * W, 450 * W]  # 2200 W
SET = "nvmlDeviceSetPowerManagementLimit"


Rig = tuple[VirtualClock, SimNvml, SafetyIsland]


@pytest.fixture
def rig() -> Iterator[Rig]:
    clock = VirtualClock(10.0)
    sim = SimNvml.from_config(SimConfig(count=N, set_latency_ms=0.0, read_latency_ms=0.0,
                                        noise_w=0.0), clock)
    backend = NvmlBackend(sim)
    island = SafetyIsland(backend, clock=clock, release_rate_per_s=0.5, max_event_s=60.0)
    island.start()
    island.update_draw(DRAW_MW)
    yield clock, sim, island
    island.close()
    backend.close()


def test_arm_reduction_is_absolute_and_follows_the_draw(rig: Rig) -> None:
    _clock, _sim, island = rig
    island.arm_reduction("product:ffr", 400 * W)
    island.update_draw([d - 50 * W for d in DRAW_MW])  # the node now draws 2000 W
    island.rearm()
    act = island.trigger_armed("product:ffr", "e1")
    assert act is not None
    assert act.baseline_mw == pytest.approx(2000 * W)
    assert act.target_mw == pytest.approx(1600 * W)
    assert sum(act.caps_mw) == pytest.approx(1600 * W, abs=N)
    with pytest.raises(ValueError):
        island.arm_reduction("bad", -1.0)


def test_commitment_is_soft_lower_only_and_lapses(rig: Rig) -> None:
    clock, sim, island = rig
    sets = sim.call_count(SET)
    island.set_commitment(1800 * W, ttl_s=2.0)
    view = island.view()
    assert (view.target_mw, view.commitment_mw, view.ceiling_total_mw) == (1800 * W, 1800 * W,
                                                                          None)
    assert view.event_id is None and view.caps_mw is None
    assert sim.call_count(SET) == sets  # the island never writes a commitment itself
    # Under an event: tier 1 tracks the lower of the two; the event's ceiling stays.
    act = island.trigger_shed("e1", 0.5)  # target 1100 W
    view = island.view()
    assert view.target_mw == pytest.approx(act.target_mw)
    assert view.ceiling_total_mw == pytest.approx(sum(act.caps_mw))
    island.set_commitment(900 * W, ttl_s=2.0)
    assert island.view().target_mw == pytest.approx(900 * W)
    # It lapses ttl_s after its last refresh: a stalled tier 2 cannot hold the node down.
    clock.advance(2.5)
    view = island.view()
    assert view.commitment_mw is None and view.target_mw == pytest.approx(act.target_mw)
    # Clamped into the envelope's totals; None clears; restore clears.
    island.set_commitment(1.0, ttl_s=5.0)
    assert island.view().commitment_mw == N * MIN_MW
    island.set_commitment(None, ttl_s=5.0)
    assert island.view().commitment_mw is None
    island.set_commitment(2000 * W, ttl_s=5.0)
    island.restore_defaults()
    assert island.view().target_mw is None
    with pytest.raises(ValueError):
        island.set_commitment(float("nan"), ttl_s=1.0)


def test_a_frequency_event_stacks_on_the_commitment(rig: Rig) -> None:
    """FFR (400 W from the 2200 W draw) fires while tier 2 holds FCR-D at 2000 W: the node
    target is 2000 - 400 W, and rises with FFR's release ramp; a dispatched cut does not stack
    (the lower target wins); a stack never goes below the envelope."""
    clock, _sim, island = rig
    island.arm_reduction("product:ffr", 400 * W)
    island.set_commitment(2000 * W, ttl_s=60.0)
    act = island.trigger_armed("product:ffr", "ffr-1")
    assert act is not None and act.target_mw == pytest.approx(1800 * W)
    view = island.view()
    assert view.target_mw == pytest.approx(1600 * W) == view.commitment_mw
    assert view.ceiling_total_mw == pytest.approx(sum(act.caps_mw))  # the caps stay as written
    island.release("ffr-1")  # ramps out at 0.5 x 400 W per s
    clock.advance(1.0)
    assert island.view().target_mw == pytest.approx(2000 * W - 200 * W)
    clock.advance(1.5)
    island.tick()
    # Given back: the tail (the ceiling on up to the resting limits) lifts no commitment.
    view = island.view()
    assert view.event_id == "ffr-1" and view.target_mw == 2000 * W
    clock.advance(1.0)
    island.tick()
    view = island.view()
    assert view.ceiling_total_mw is not None and view.ceiling_total_mw > 2200 * W
    assert view.target_mw == 2000 * W == view.commitment_mw
    clock.advance(10.0)
    island.tick()
    assert island.view().event_id is None and island.view().target_mw == 2000 * W
    island.trigger_shed("shed-1", 0.5)  # 1100 W: not a reserve, the lower target wins
    assert island.view().target_mw == pytest.approx(1100 * W)
    island.restore_defaults()
    island.arm_reduction("product:ffr", 400 * W)
    island.set_commitment(N * MIN_MW + 100 * W, ttl_s=60.0)
    assert island.trigger_armed("product:ffr", "ffr-2") is not None
    assert island.view().target_mw == N * MIN_MW


def test_floors_shape_the_split_and_stay_in_the_envelope(rig: Rig) -> None:
    _clock, _sim, island = rig
    island.set_floors_mw([550 * W, 0, 0, 5000 * W])  # GPU 3's floor is clipped to its default
    view = island.view()
    assert view.floors_mw == (550 * W, MIN_MW, MIN_MW, DEFAULT_MW)
    act = island.trigger_shed("e1", 0.2)  # 2200 -> 1760 W
    caps = act.caps_mw
    # GPU 3 draws 450 W but keeps a cap at its floor (room to rise): the others give more.
    assert caps[0] >= 550 * W and caps[3] == DEFAULT_MW
    assert all(MIN_MW <= c <= DEFAULT_MW for c in caps)
    assert sum(caps) == pytest.approx(1760 * W, abs=N)
    island.release("e1")
    island.set_floors_mw(None)
    assert island.view().floors_mw is None
    with pytest.raises(ValueError):
        island.set_floors_mw([1.0])


def test_tier1_tracks_a_commitment_and_respects_floors(rig: Rig) -> None:
    clock, sim, island = rig
    backend = NvmlBackend(sim)
    loop = FastLoop(backend, island, clock=clock, config=ControlConfig())
    samples = []
    for _ in range(100):
        samples.append(loop.step().node_power_mw)
        clock.advance(0.01)
    natural = sum(samples) / len(samples)
    island.set_floors_mw([650 * W, 0, 0, 0])
    island.set_commitment(natural - 600 * W, ttl_s=60.0)
    power = []
    for _ in range(300):
        step = loop.step()
        clock.advance(0.01)
        power.append(step.node_power_mw)
        assert step.limits_mw[0] >= 650 * W
    # Training dips (55 % of TDP for 50-300 ms) pull single readings down: score the mean.
    assert sum(power[-100:]) / 100 == pytest.approx(natural - 600 * W, rel=0.05)
    island.set_commitment(None, ttl_s=1.0)
    for _ in range(300):
        step = loop.step()
        clock.advance(0.01)
        power.append(step.node_power_mw)
    assert step.limits_mw == (DEFAULT_MW,) * N  # back to the defaults once it is cleared


def test_envelope_with_floors_stays_inside_the_envelope(rig: Rig) -> None:
    _clock, _sim, island = rig
    env = island.envelope.with_floors([100 * W, 450.7 * W, 9e9, 0.0])
    assert env.min_mw == (MIN_MW, 450_700, DEFAULT_MW, MIN_MW)
    assert env.default_mw == island.envelope.default_mw
    caps = env.cut_caps_mw(DRAW_MW, 0.0)
    assert list(caps) == list(env.min_mw)  # the deepest cut stops at the floors
    with pytest.raises(ValueError):
        island.envelope.with_floors([0.0])
