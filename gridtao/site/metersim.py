"""A simulated site meter: what a meter gateway would publish for simulated GPUs.

It reads the power the machine-wide simulated GPUs really draw (the physics, as a meter sees
the load, never what any agent reports), adds a facility of its own (losses, cooling with its
lag, a fixed load: deliberately not the site's model, so the model's error can be measured and
corrected) and publishes ``{"t", "w"}`` on ``{prefix}/meter`` every period, signed with a key
of its own for a site in signed mode (``gridtao sim meter --key --kid``). For demos, tests
and benches; a real site publishes its meter's readings instead (docs/site.md).

Power in W, times in Unix seconds (``t``) and seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

from gridtao.clock import Clock
from gridtao.config.agent import Config, ConfigError
from gridtao.control.tier2.facility import Facility, FacilityModel
from gridtao.gpu.sim.nvml import SimNvml
from gridtao.security.auth import Alg, SigningKey, sign_payload
from gridtao.transport.mqtt import MqttLink
from gridtao.transport.tls import read_password, ssl_context
from gridtao.wire.site import SiteTopics, site_payload

__all__ = ["Encode", "SimulatedMeter", "open_devices", "run_meter", "signed_readings"]

log = logging.getLogger("gridtao.site.meter")

#: A reading ``{"t", "w"}`` as its payload on the wire.
Encode: TypeAlias = Callable[[Mapping[str, object]], bytes]


class SimulatedMeter:
    """The summed true power of ``devices``' GPUs through ``facility`` (its own model)."""

    def __init__(self, devices: Sequence[SimNvml], facility: FacilityModel, clock: Clock) -> None:
        self.devices = list(devices)
        self.clock = clock
        self.plant = Facility(facility, self.it_w())
        self._last = clock.now()

    def it_w(self) -> float:
        return sum(d.true_power_mw(i) for d in self.devices for i in range(d.count)) / 1000.0

    def read(self) -> tuple[float, float]:
        """``(t, w)``: now (Unix s) and the metered power (W)."""
        now = self.clock.now()
        w = self.plant.step(self.it_w(), max(0.0, now - self._last))
        self._last = now
        return self.clock.wall(), w


def signed_readings(key: SigningKey, kid: str, alg: Alg) -> Encode:
    """Readings signed as ``kid`` (the site's ``auth.keys`` lists it for ``meter``)."""
    def encode(reading: Mapping[str, object]) -> bytes:
        return sign_payload(reading, key, kid, alg, topic="meter")
    return encode


def open_devices(paths: Sequence[Path], clock: Clock) -> list[SimNvml]:
    """The machine-wide simulated devices at ``paths`` (none is created). Raises
    ConfigError naming a missing one."""
    devices = []
    for path in paths:
        sim = SimNvml.open_existing(path, clock)
        if sim is None:
            raise ConfigError(f"no simulated device at {path} (an agent creates it at start, "
                              "or `gridtao sim create`)")
        devices.append(sim)
    return devices


async def run_meter(config: Config, meter: SimulatedMeter, *, period_s: float,
                    stop: asyncio.Event, encode: Encode = site_payload) -> None:
    """Publish ``meter``'s readings on ``{mqtt.prefix}/meter`` every ``period_s`` until
    ``stop``; ``encode`` writes each reading's payload (signs it, for a site in signed
    mode: :func:`signed_readings`)."""
    m = config.mqtt
    link = MqttLink.for_broker(m, client_id=f"gridtao-meter-{os.getpid()}",
                               tls=ssl_context(m, source=config.source),
                               password=read_password(m, source=config.source),
                               clock=meter.clock)
    topic = SiteTopics(m.prefix).meter
    runner = asyncio.ensure_future(link.run())
    log.info("simulated meter: publishing on %s every %g s (broker %s:%d)", topic, period_s,
             m.host, m.port)
    readings = 0
    try:
        while not stop.is_set():
            readings += 1
            t, w = meter.read()
            link.publish_nowait(topic, encode({"t": t, "w": round(w, 1)}), 0, False)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period_s)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner
        log.info("simulated meter stopped after %d readings", readings)
