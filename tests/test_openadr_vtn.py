"""A real third-party VTN for the bridge's tests (openleadr's OpenADRServer on loopback), the
bridge run in-process on the test's event loop, and a node's retained status faked on the
broker; plus the checks that the harness itself works (the bridge registers, reports arrive).

The other tests/test_openadr_*.py import the harness from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, free_port, publish
from openleadr import OpenADRServer, objects, utils
from prometheus_client import CollectorRegistry

from gridtao.openadr import Bridge, BridgeConfig, bridge_config_from_mapping

pytestmark = pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")

VEN_ID = "ven-7"
RESOURCE = "hall-1"


def utc(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


@dataclass
class Vtn:
    """openleadr's VTN on a free loopback port. ``opts``: (event id, opt) answers in order;
    ``reports``: r_id -> [(datetime, value)] received; ``registrations``: VEN names."""

    port: int = field(default_factory=free_port)
    opts: list[tuple[str, str]] = field(default_factory=list)
    reports: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)
    registrations: list[str] = field(default_factory=list)
    offered: list[str] = field(default_factory=list)
    server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b"

    async def start(self) -> None:
        self.server = OpenADRServer(vtn_id="TEST_VTN", http_port=self.port,
                                    requested_poll_freq=timedelta(seconds=1),
                                    show_fingerprint=False)
        self.server.add_handler("on_create_party_registration", self._register)
        self.server.add_handler("on_register_report", self._register_report)
        await self.server.run()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    def _register(self, info: dict[str, Any]) -> tuple[str, str]:
        self.registrations.append(info["ven_name"])
        return VEN_ID, f"reg-{len(self.registrations)}"

    def _register_report(self, report: dict[str, Any]) -> list[tuple[str, Any, timedelta]]:
        asked = []
        for description in report["report_descriptions"]:
            r_id = description["r_id"]
            self.offered.append(r_id)
            asked.append((r_id, self._collector(r_id), timedelta(seconds=1)))
        return asked

    def _collector(self, r_id: str) -> Callable[[list[tuple[datetime, float]]], None]:
        def collect(values: list[tuple[datetime, float]]) -> None:
            self.reports.setdefault(r_id, []).extend(values)
        return collect

    def _answered(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts.append((event_id, opt_type))

    def add_event(self, *, intervals: list[tuple[float, float, float]],
                  signal_name: str = "SIMPLE", signal_type: str = "level",
                  target: dict[str, str] | None = None, ramp_s: float | None = None,
                  recovery_s: float | None = None, start_after_s: float | None = None,
                  measurement: objects.Measurement | None = None,
                  event_id: str | None = None) -> str:
        """Queue an event for the VEN: ``intervals`` are (start Unix s, duration s, value)."""
        event_id = event_id or f"ev-{random.randrange(1 << 30):x}"
        signal = objects.EventSignal(
            intervals=[objects.Interval(dtstart=utc(a), duration=timedelta(seconds=d),
                                        signal_payload=v, uid=k)
                       for k, (a, d, v) in enumerate(intervals)],
            signal_name=signal_name, signal_type=signal_type, signal_id=f"{event_id}-s",
            measurement=measurement)
        event = objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=event_id, modification_number=0, market_context="oadr://test",
                event_status="far"),
            event_signals=[signal], targets=[target or {"resource_id": RESOURCE}])
        self.server.add_raw_event(VEN_ID, event, callback=self._answered)
        period = self.server.events[VEN_ID][-1].active_period
        if ramp_s is not None:
            period["ramp_up_period"] = timedelta(seconds=ramp_s)
        if recovery_s is not None:
            period["recovery_period"] = timedelta(seconds=recovery_s)
        if start_after_s is not None:
            period["tolerance"] = {"startafter": timedelta(seconds=start_after_s)}
        return event_id

    def _event(self, event_id: str) -> Any:
        event = utils.find_by(self.server.events[VEN_ID], "event_descriptor.event_id", event_id)
        assert event is not None, event_id
        return event

    def modify(self, event_id: str, value: float) -> int:
        """Set every interval of the event to ``value``; returns the new modification number."""
        event = self._event(event_id)
        for interval in event.event_signals[0].intervals:
            interval.signal_payload = value
        number: int = utils.increment_event_modification_number(event)
        self.server.event_callbacks[event_id] = (event, self._answered)
        self.server.events_updated[VEN_ID] = True
        return number

    def cancel(self, event_id: str) -> None:
        self.server.event_callbacks[event_id] = (self._event(event_id), self._answered)
        self.server.cancel_event(VEN_ID, event_id)


def bridge_mapping(broker: MosquittoBroker, url: str, prefix: str, tmp: Path,
                   **sections: Any) -> dict[str, Any]:
    """The bridge's configuration for a test: fast polls and retries, 1 s reports, the audit
    trail in ``tmp``; ``sections`` replace or extend the top-level sections."""
    base: dict[str, Any] = {
        "vtn": {"url": url, "ven_name": "site-a", "poll_s": 0.2, "retry_min_s": 0.05,
                "retry_max_s": 0.3, "request_timeout_s": 3.0},
        "mqtt": {"port": broker.port, "prefix": prefix, "reconnect_min_s": 0.05,
                 "reconnect_max_s": 0.5},
        "policy": {"resources": [RESOURCE], "status_max_age_s": 3600},
        "mapping": {"simple_levels": [{"level": 1, "reduction_w": 200},
                                      {"level": 2, "reduction_w": 300},
                                      {"level": 3, "reduction_w": 400}]},
        "dispatch": {"min_interval_s": 0.2},
        "reports": {"sampling_s": 1},
        "audit": {"path": str(tmp / "openadr-audit.jsonl"), "fsync": "never"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def node_status(node: str, *, draw_w: float = 2400.0, deliverable_w: float = 1500.0,
                gpus: int = 4) -> bytes:
    """A node's retained status as an agent publishes it (wire contract v1 + capacity)."""
    per_gpu = draw_w / gpus
    return json.dumps({
        "node": node, "online": True, "t": time.time(), "event": None,
        "gpus": [{"index": i, "power_w": per_gpu, "limit_w": 700.0, "default_w": 700.0,
                  "min_w": 200.0, "max_w": 700.0, "fault": None} for i in range(gpus)],
        "capacity": {"draw_w": draw_w, "floor_w": draw_w - deliverable_w,
                     "deliverable_it_w": deliverable_w, "deliverable_w": deliverable_w,
                     "enrolled_w": 0.0, "short_w": 0.0, "settle_at": "it"},
    }).encode()


def publish_status(broker: MosquittoBroker, prefix: str, node: str, **kwargs: Any) -> None:
    publish(broker.host, broker.port, f"{prefix}/nodes/{node}/status",
            node_status(node, **kwargs), qos=1, retain=True)


@contextlib.asynccontextmanager
async def running(config: BridgeConfig, *, seed: int = 1) -> AsyncIterator[Bridge]:
    """The bridge on this event loop, with its own registry, until the block ends."""
    bridge = Bridge(config, rng=random.Random(seed), registry=CollectorRegistry())
    stop = asyncio.Event()
    task = asyncio.ensure_future(bridge.run(stop))
    try:
        yield bridge
        assert not task.done(), task.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``cond`` on the event loop; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def run_async(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 90))


def wire_problems(schema: str, data: Any) -> list[str]:
    """Why ``data`` does not match ``#/components/schemas/<schema>`` of docs/asyncapi.yaml, the
    wire contract the nodes read (empty: it matches)."""
    import jsonschema
    import yaml
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    doc = yaml.safe_load((Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml")
                         .read_text("utf-8"))
    base = "urn:gridtao-asyncapi"
    registry: Any = Registry().with_resource(
        base, Resource.from_contents(doc, default_specification=DRAFT202012))
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{base}#/components/schemas/{schema}"}, registry=registry)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(data)]


def test_the_bridge_registers_and_the_vtn_gets_the_sites_power(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    prefix = "gridtao/oadr-reg"
    publish_status(mqtt_broker, prefix, "n1", draw_w=2000.0)
    publish_status(mqtt_broker, prefix, "n2", draw_w=1000.0)

    async def scenario() -> None:
        vtn = Vtn()
        await vtn.start()
        try:
            config = bridge_config_from_mapping(
                bridge_mapping(mqtt_broker, vtn.url, prefix, tmp_path), source="<test>")
            async with running(config) as bridge:
                await until(lambda: len(vtn.reports.get("it_power", [])) >= 2,
                            "two usage reports at the VTN")
                assert bridge.metrics.value("gridtao_openadr_registered") == 1
        finally:
            await vtn.stop()
        assert vtn.registrations == ["site-a"]
        assert set(vtn.offered) == {"it_power", "baseline", "available_reduction"}
        # The nodes' measured power (gpus[].power_w), summed: 2000 W + 1000 W.
        assert {v for _, v in vtn.reports["it_power"]} == {3000.0}
        assert {v for _, v in vtn.reports["available_reduction"]} == {3000.0}
        assert {v for _, v in vtn.reports["baseline"]} == {3000.0}

    run_async(scenario)


def test_a_bad_configuration_names_file_key_and_problem(tmp_path: Path) -> None:
    from gridtao.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"<t>: vtn.url: must be an http"):
        bridge_config_from_mapping({"vtn": {"url": "ftp://x", "ven_name": "a"}}, source="<t>")
