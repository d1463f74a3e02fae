"""OpenADR 3.0.1: the schema checks and the mapping (pure), then the poller against a loopback
aiohttp VTN serving programs and events behind an OAuth2 client-credentials token, with a real
Mosquitto: an event becomes a dispatch, a change is a modification, a deleted event is released,
prices and carbon become the planner's signals document, garbage is counted and dispatches
nothing. The VTN here is written for the test from the published schema; it proves the bridge
reads what the schema says, not that it interoperates with any particular VTN."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from broker import MosquittoBroker, Subscriber, free_port
from test_openadr_vtn import (
    bridge_mapping,
    publish_status,
    run_async,
    running,
    until,
    wire_problems,
)

from gridtao.openadr import (
    EventRejected,
    bridge_config_from_mapping,
    check_event,
    check_program,
    check_report,
    decide,
    parse_duration,
    signal_series,
    signals_document,
    to_oadr_event,
)
from gridtao.openadr._mapping import SiteSnapshot
from gridtao.tier3.signals import parse_signals

NOW = time.time()


def iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat().replace("+00:00", "Z")


def event3(*, ident: str = "ev1", payload_type: str = "DISPATCH_SETPOINT_RELATIVE",
           values: list[float] | None = None, units: str | None = "KW",
           currency: str | None = None, start: float | None = None,
           duration: str = "PT30S", targets: list[dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    """A 3.0.1 event object: one interval per value, each ``duration`` long, in sequence."""
    descriptor: dict[str, Any] = {"objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                                  "payloadType": payload_type, "units": units}
    if currency is not None:
        descriptor["currency"] = currency
    return {
        "id": ident, "objectType": "EVENT", "programID": "prog1", "eventName": "peak",
        "createdDateTime": iso(NOW), "modificationDateTime": iso(NOW),
        "intervalPeriod": {"start": iso(start if start is not None else NOW + 60),
                           "duration": duration},
        "payloadDescriptors": [descriptor],
        "targets": targets if targets is not None else [
            {"type": "RESOURCE_NAME", "values": ["hall-1"]}],
        "intervals": [{"id": k, "payloads": [{"type": payload_type, "values": [v]}]}
                      for k, v in enumerate(values if values is not None else [-0.5])],
    }


PROGRAM = {"id": "prog1", "objectType": "PROGRAM", "programName": "peak-shaving",
           "createdDateTime": iso(NOW)}


# ---- schema ----------------------------------------------------------------------------------


def test_durations() -> None:
    assert parse_duration("PT1H30M") == 5400 and parse_duration("P1DT0.5S") == 86400.5
    assert parse_duration("P2W") == 14 * 86400 and parse_duration("P9999Y") is None
    for bad in ("P", "PT", "1H", "P1M", "PT-5S", 5):
        with pytest.raises(EventRejected):
            parse_duration(bad)


@pytest.mark.parametrize("mutate,says", [
    (lambda e: e.pop("programID"), "event.programID is required"),
    (lambda e: e.pop("intervals"), "event.intervals is required"),
    (lambda e: e.update(id="bad id!"), "event.id must be an objectID"),
    (lambda e: e.update(objectType="PROGRAM"), "event.objectType must be EVENT"),
    (lambda e: e["intervalPeriod"].update(start="tomorrow"), "is not an RFC 3339 date-time"),
    (lambda e: e["intervalPeriod"].update(start="2026-01-01T00:00:00"), "has no time zone"),
    (lambda e: e["intervalPeriod"].update(duration="PT1X"), "is not an ISO 8601 duration"),
    (lambda e: e["intervals"][0].update(id="0"), "intervals[0].id must be an int32"),
    (lambda e: e["intervals"][0]["payloads"][0].update(values=3),
     "intervals[0].payloads[0].values must be a list"),
    (lambda e: e["intervals"][0]["payloads"][0].pop("type"),
     "intervals[0].payloads[0].type is required"),
])
def test_schema_violations_are_named(mutate: Any, says: str) -> None:
    raw = event3()
    mutate(raw)
    with pytest.raises(EventRejected, match=says.replace("[", r"\[").replace("]", r"\]")):
        check_event(raw)


def test_programs_and_reports() -> None:
    assert check_program(PROGRAM).name == "peak-shaving"
    with pytest.raises(EventRejected, match=r"program\.programName is required"):
        check_program({"id": "p"})
    report = {"programID": "prog1", "eventID": "ev1", "clientName": "site-a",
              "resources": [{"resourceName": "hall-1", "intervals": []}]}
    assert check_report(report).resources == ("hall-1",)
    with pytest.raises(EventRejected, match=r"report\.clientName is required"):
        check_report({**report, "clientName": None})


# ---- mapping ---------------------------------------------------------------------------------


SITE = SiteSnapshot(nodes=1, it_power_w=2400, draw_w=2400, settlement_draw_w=2400,
                    deliverable_w=1500, max_it_w=2800)


def decided(raw: dict[str, Any]) -> Any:
    event = to_oadr_event(check_event(raw), 0, program="peak-shaving")
    assert event is not None
    config = bridge_config_from_mapping({
        "vtn": {"url": "http://127.0.0.1:1/oadr3", "ven_name": "site-a", "protocol": "3.0.1"},
        "policy": {"resources": ["hall-1"]}, "audit": {"enabled": False}}, source="<t>")
    return decide(event, site=SITE, config=config, now=NOW, ven_id="site-a")


def test_dispatch_payloads_map_like_their_2_0b_signals() -> None:
    (relative,) = decided(event3(values=[-0.5])).dispatches
    assert relative.reduction_w == pytest.approx(500.0) and relative.duration_s == 30
    (setpoint,) = decided(event3(payload_type="DISPATCH_SETPOINT", values=[2.0])).dispatches
    assert setpoint.reduction_w == pytest.approx(400.0)
    (limit,) = decided(event3(payload_type="IMPORT_CAPACITY_LIMIT", values=[1800],
                              units="W")).dispatches
    assert limit.reduction_w == pytest.approx(600.0)
    first, second = decided(event3(payload_type="SIMPLE", values=[1, 3], units=None)).dispatches
    assert (first.fraction, second.fraction, second.start_at - first.start_at) == (0.1, 0.3, 30)
    assert decided(event3(duration="P9999Y")).label == "open_ended"
    assert decided(event3(targets=[{"type": "VEN_NAME", "values": ["site-a"]}])).opt_in
    assert decided(event3(targets=[{"type": "RESOURCE_NAME", "values": ["x"]}])).label == \
        "unknown_target"
    assert to_oadr_event(check_event(event3(payload_type="PRICE")), 0, program="p") is None


def test_prices_and_carbon_become_the_signals_document() -> None:
    price = check_event(event3(payload_type="PRICE", values=[0.05, 0.25], units="KWH",
                               currency="EUR", duration="PT15M", start=NOW))
    ghg = check_event(event3(payload_type="GHG", values=[120.0, 80.0], units=None,
                             duration="PT1H", start=NOW))
    series = {**signal_series(price), **signal_series(ghg)}
    doc = signals_document(series, issued_at=NOW, source="test")
    signals = parse_signals(json.dumps(doc).encode(), now_s=NOW)
    assert signals.energy_price_eur_per_mwh is not None
    assert list(signals.energy_price_eur_per_mwh.values) == pytest.approx([50.0, 250.0])
    assert signals.energy_price_eur_per_mwh.step_s == 900
    assert signals.carbon_g_per_kwh is not None
    assert list(signals.carbon_g_per_kwh.values) == [120.0, 80.0]
    usd = check_event(event3(payload_type="PRICE", units="KWH", currency="USD"))
    assert signal_series(usd) == {}


# ---- the poller against a loopback VTN -----------------------------------------------------


class Vtn3:
    """Programs and events over HTTP, behind a client-credentials token."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events: list[Any] = []
        self.garbage = False
        self.tokens_issued = 0
        self.unauthorized = 0
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/openadr3/3.0.1"

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != "site-a" or form.get("client_secret") != "s3cret":
            return web.json_response({"error": "invalid_client"}, status=401)
        self.tokens_issued += 1
        return web.json_response({"access_token": f"tok{self.tokens_issued}",
                                  "token_type": "Bearer"})

    def _authorized(self, request: web.Request) -> bool:
        ok = request.headers.get("Authorization", "").startswith("Bearer tok")
        self.unauthorized += not ok
        return ok

    async def _programs(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"title": "unauthorized"}, status=401)
        return web.json_response([PROGRAM] if int(request.query.get("skip", 0)) == 0 else [])

    async def _events(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"title": "unauthorized"}, status=401)
        if self.garbage:
            return web.Response(body=b"[{\"id\": ", content_type="application/json")
        skip, limit = int(request.query["skip"]), int(request.query["limit"])
        return web.json_response(self.events[skip:skip + limit])

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/openadr3/3.0.1/auth/token", self._token)
        app.router.add_get("/openadr3/3.0.1/programs", self._programs)
        app.router.add_get("/openadr3/3.0.1/events", self._events)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def test_the_poller_dispatches_modifies_releases_and_publishes_signals(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    prefix = "gridtao/oadr3"
    publish_status(mqtt_broker, prefix, "n1")
    secret = tmp_path / "client.secret"
    secret.write_text("s3cret\n")

    async def scenario() -> None:
        vtn = Vtn3()
        await vtn.start()
        config = bridge_config_from_mapping(bridge_mapping(
            mqtt_broker, vtn.url, prefix, tmp_path,
            vtn={"protocol": "3.0.1", "client_id": "site-a",
                 "client_secret_file": str(secret)},
            policy={"min_modification_interval_s": 0}), source="<test>")
        try:
            with Subscriber(mqtt_broker.host, mqtt_broker.port, f"{prefix}/dispatch") as sub, \
                    Subscriber(mqtt_broker.host, mqtt_broker.port, f"{prefix}/signals") as sig:
                async with running(config) as bridge:
                    def sent() -> list[dict[str, Any]]:
                        return [json.loads(m.payload) for m in list(sub.messages)]

                    vtn.events.append(event3(values=[-0.5], start=time.time() + 60))
                    await until(lambda: len(sent()) == 1, "the event's dispatch")
                    assert (sent()[0]["id"], sent()[0]["reduction_w"]) == ("oadr-ev1-m0", 500.0)
                    changed = copy.deepcopy(vtn.events[0])
                    changed["intervals"][0]["payloads"][0]["values"] = [-0.8]
                    vtn.events[0] = changed
                    await until(lambda: len(sent()) == 3, "release and replacement")
                    assert [(m["kind"], m["id"]) for m in sent()[1:]] == [
                        ("release", "oadr-ev1-m0-release"), ("dr", "oadr-ev1-m1")]
                    assert sent()[2]["reduction_w"] == 800.0
                    vtn.events.clear()
                    await until(lambda: len(sent()) == 4, "the release of a deleted event")
                    assert sent()[3]["ref"] == "oadr-ev1-m1"

                    vtn.events.append(event3(ident="price1", payload_type="PRICE",
                                             values=[0.1, 0.2], units="KWH", currency="EUR",
                                             duration="PT1H", start=time.time()))
                    await until(lambda: len(sig.messages) == 1, "the signals document")
                    with Subscriber(mqtt_broker.host, mqtt_broker.port,
                                    f"{prefix}/signals") as later:  # retained: a node
                        later.wait(1, 5)                           # starting now gets it
                    assert later.messages[0].payload == sig.messages[0].payload
                    document = json.loads(sig.messages[0].payload)
                    assert wire_problems("Signals", document) == []
                    assert [wire_problems("Dispatch", m) for m in sent()] == [[]] * 4
                    signals = parse_signals(bytes(sig.messages[0].payload), now_s=time.time())
                    assert signals.energy_price_eur_per_mwh is not None
                    assert list(signals.energy_price_eur_per_mwh.values) == \
                        pytest.approx([100.0, 200.0])

                    vtn.events.append({"id": "bad1", "objectType": "EVENT", "intervals": []})
                    await until(lambda: bridge.metrics.value(
                        "gridtao_openadr_errors_total", {"reason": "bad_event"}) == 1,
                        "the schema violation counted")
                    await asyncio.sleep(0.6)  # polled again: the same version, not again
                    assert bridge.metrics.value("gridtao_openadr_errors_total",
                                                {"reason": "bad_event"}) == 1
                    assert bridge.metrics.value("gridtao_openadr_refusals_total",
                                                {"reason": "bad_event"}) == 1

                    vtn.garbage = True
                    await until(lambda: bridge.metrics.value(
                        "gridtao_openadr_errors_total", {"reason": "malformed"}) >= 2,
                        "the garbage counted")
                    await asyncio.sleep(0.5)
                    assert len(sent()) == 4 and len(sig.messages) == 1
        finally:
            await vtn.stop()
        assert vtn.tokens_issued >= 1 and vtn.unauthorized == 0

    run_async(scenario)
