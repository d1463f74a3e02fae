"""docs/asyncapi.yaml against the code and the wire: an AsyncAPI 3 document whose references all
resolve and whose payload schemas are valid JSON Schemas; every message a real agent (and a
real site coordinator) publishes over a real Mosquitto validates against its channel, with the
QoS and retain flag its operation names; README's wire table agrees with it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from agentproc import WAIT_S, agent_processes, spawn_agent, status_wait, write_agent_config
from broker import MosquittoBroker, Subscriber
from paho.mqtt.client import MQTTMessage
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from test_site_e2e import planning_agent

from gridtao.transport.localbroker import Publisher
from gridtao.wire.site import SITE_W_MAX

REPO = Path(__file__).resolve().parent.parent
DOC: dict[str, Any] = yaml.safe_load((REPO / "docs" / "asyncapi.yaml").read_text("utf-8"))
BASE = "urn:gridtao-asyncapi"
REGISTRY: Registry[Any] = Registry().with_resource(
    BASE, Resource.from_contents(DOC, default_specification=DRAFT202012))


def pointer(ref: str) -> Any:
    """The node a local ``#/...`` reference names (KeyError: it does not resolve)."""
    assert ref.startswith("#/"), f"{ref}: only local references are used"
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def ref_nodes(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield path, node
        for key, value in node.items():
            yield from ref_nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for k, value in enumerate(node):
            yield from ref_nodes(value, f"{path}/{k}")


def problems(channel: str, data: Any) -> list[str]:
    """Why ``data`` matches none of ``channel``'s messages (empty: it matches one)."""
    found: list[str] = []
    for name, message in DOC["channels"][channel]["messages"].items():
        schema = {"$ref": f"{BASE}{message['$ref']}/payload"}
        errors = list(jsonschema.Draft202012Validator(schema, registry=REGISTRY).iter_errors(data))
        if not errors:
            return []
        found += [f"{name} {e.json_path}: {e.message}" for e in errors]
    return found


def channel_of(topic: str, prefix: str) -> str:
    for name, channel in DOC["channels"].items():
        parts = re.split(r"(\{\w+\})", channel["address"])
        regex = "".join(re.escape(prefix) if p == "{prefix}" else "[^/]+" if p.startswith("{")
                        else re.escape(p) for p in parts)
        if re.fullmatch(regex, topic):
            return str(name)
    raise AssertionError(f"{topic}: no channel of docs/asyncapi.yaml has this address")


def binding(channel: str, action: str) -> dict[str, Any]:
    ops = [op for op in DOC["operations"].values()
           if op["channel"]["$ref"] == f"#/channels/{channel}" and op["action"] == action]
    assert ops, f"no {action} operation on channel {channel}"
    mqtt: dict[str, Any] = ops[0]["bindings"]["mqtt"]
    return mqtt


def test_the_document_is_asyncapi_3_and_every_reference_resolves() -> None:
    assert DOC["asyncapi"] == "3.0.0" and DOC["info"]["title"] and DOC["info"]["version"]
    for name, channel in DOC["channels"].items():
        assert set(re.findall(r"\{(\w+)\}", channel["address"])) == set(channel["parameters"])
        assert channel["messages"], name
    used = set()
    for name, op in DOC["operations"].items():
        assert op["action"] in ("send", "receive"), name
        target = op["channel"]["$ref"]
        used.add(target)
        assert isinstance(pointer(target), dict) and target.startswith("#/channels/"), name
        for message in op["messages"]:  # an operation's messages are its channel's
            assert message["$ref"].startswith(f"{target}/messages/"), (name, message)
        assert op["bindings"]["mqtt"]["qos"] in (0, 1, 2), name
        assert isinstance(op["bindings"]["mqtt"]["retain"], bool), name
    assert used == {f"#/channels/{c}" for c in DOC["channels"]}, "a channel no operation uses"
    for path, node in ref_nodes(DOC):
        pointer(node["$ref"])
        # draft-07 ignores a keyword beside $ref, draft 2020-12 applies it: none may stand there
        assert set(node) == {"$ref"}, f"{path}: keywords beside $ref"
    for schema in DOC["components"]["schemas"].values():
        jsonschema.Draft7Validator.check_schema(schema)
        jsonschema.Draft202012Validator.check_schema(schema)
    for name, message in DOC["components"]["messages"].items():
        channel = next(c for c, ch in DOC["channels"].items() if any(
            m["$ref"] == f"#/components/messages/{name}" for m in ch["messages"].values()))
        for example in message.get("examples", []):
            assert problems(channel, example["payload"]) == [], (name, example)


def test_the_schemas_follow_the_code() -> None:
    from gridtao.config.kinds import KINDS
    from gridtao.products.base import ProductState
    from gridtao.products.dr import DrState
    from gridtao.tier3.planner import Fallback, NoPlan, Planned
    from gridtao.wire import awards, payloads
    from gridtao.wire import messages as wire

    s = DOC["components"]["schemas"]
    tracker = s["Tracker"]["properties"]
    assert set(s["ProductKind"]["enum"]) == set(KINDS)
    assert set(tracker["products"]["items"]["properties"]["state"]["enum"]) == set(
        typing.get_args(ProductState))
    assert set(tracker["dr"]["items"]["properties"]["state"]["enum"]) == set(
        typing.get_args(DrState))
    assert set(s["Plan"]["properties"]["state"]["enum"]) == {
        NoPlan.name, Planned.name, Fallback.name}
    assert s["FrequencySample"]["properties"]["hz"] == {
        "type": "number", "minimum": wire.HZ_MIN, "maximum": wire.HZ_MAX}
    assert s["NodeWatts"]["maximum"] == wire.NODE_W_MAX
    assert s["Duration"]["maximum"] == s["Period"]["maximum"] == wire.DURATION_MAX_S
    assert s["Id"]["maxLength"] == wire.ID_MAX_CHARS
    award = s["Award"]["properties"]
    assert award["mtu_s"]["enum"] == list(awards.MTU_CHOICES_S)
    assert award["capacity_w"]["additionalProperties"]["maxItems"] == awards.AWARD_MAX_MTUS
    assert s["GpuStatus"]["required"] == [*payloads.GPU_STATUS_KEYS, "fault"]
    ack = json.loads(payloads.ack_payload("e", True, None, 1.0, None, None))
    assert s["Ack"]["required"] == list(ack)
    status = json.loads(payloads.status_payload("n", True, 1.0, None, []))
    assert set(s["Status"]["required"]) == set(status)
    assert s["SiteWatts"]["maximum"] == SITE_W_MAX


def wire_tables() -> Iterator[tuple[str, str, str, str]]:
    """(document, topic, QoS cell, payload cell) of README's and docs/site.md's topic tables."""
    tables = (("README.md", "## Wire contract v1 (MQTT)"), ("docs/site.md", "## Topics"))
    for doc, heading in tables:
        section = (REPO / doc).read_text("utf-8").split(heading, 1)[1].split("\n## ", 1)[0]
        topic = ""
        for row in [r for r in section.splitlines() if r.startswith("| ")][1:]:  # past the header
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
            topic = cells[0].strip("`") or topic
            yield doc, topic, cells[1], cells[3]


def test_the_wire_tables_match_the_document() -> None:
    checked = 0
    for doc, topic, qos, payloads in wire_tables():
        channel = next((c for c, ch in DOC["channels"].items() if ch["address"] == topic), None)
        assert channel is not None, f"{doc}: {topic} is not a channel of docs/asyncapi.yaml"
        ops = [op["bindings"]["mqtt"] for op in DOC["operations"].values()
               if op["channel"]["$ref"] == f"#/channels/{channel}"]
        if qos:
            assert {(o["qos"], o["retain"]) for o in ops} == {
                (int(qos[0]), "retained" in qos)}, (doc, topic)
        for text in re.findall(r"`(\{.*?\})`", payloads):
            try:
                example = json.loads(text)
            except json.JSONDecodeError:  # README: a list of keys, the schema's required ones
                if doc == "README.md":
                    message = next(iter(DOC["channels"][channel]["messages"].values()))
                    keys = json.loads(re.sub(r'"(\w+)"(?=\s*[,}])', r'"\1": null', text))
                    assert_keys(keys, pointer(pointer(message["$ref"])["payload"]["$ref"]), topic)
                    checked += 1
            else:
                assert problems(channel, example) == [], (doc, topic, text)
                checked += 1
    assert checked >= 7, f"only {checked} examples found in the wire tables"


def assert_keys(keys: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    assert set(keys) == set(schema["required"]), where
    for key, value in keys.items():
        if isinstance(value, list):
            items = schema["properties"][key]["items"]
            assert_keys(value[0], pointer(items["$ref"]) if "$ref" in items else items, where)


# ---------------------------------------------------------------- real programs, real broker


def spawn_site(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridtao", "--config", str(cfg), "--log-level", "info",
             "site"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def wait_message(sub: Subscriber, what: str, pred: Any) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for m in list(sub.messages):
            data = json.loads(m.payload)
            if pred(m.topic, data):
                found: dict[str, Any] = data
                return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def check_traffic(messages: list[MQTTMessage], prefix: str, sent: set[str],
                  invalid: tuple[bytes, ...] = ()) -> set[str]:
    """Every message validates against its channel, except the ``invalid`` payloads the test
    sent, which must not; those gridtao sent carry their operation's QoS. Returns the
    channels seen."""
    seen, bad = set(), []
    for m in messages:
        channel = channel_of(m.topic, prefix)
        seen.add(channel)
        found = problems(channel, json.loads(m.payload))
        if m.payload in invalid:
            assert found, f"{m.topic}: {m.payload!r} should break the schema"
            continue
        bad += [f"{m.topic}: {p} in {m.payload[:300]!r}" for p in found]
        if m.topic not in sent and not m.retain:
            assert m.qos == binding(channel, "send")["qos"], (m.topic, m.qos)
    assert bad == [], f"{len(bad)} problems, the first:\n" + "\n".join(bad[:10])
    return seen


def check_retained(broker: MosquittoBroker, prefix: str, channels: set[str]) -> None:
    """A new subscriber gets back exactly the channels whose operations say retain."""
    with broker.subscriber(f"{prefix}/#") as late:
        time.sleep(1.0)
    retained = {channel_of(m.topic, prefix) for m in late.messages if m.retain}
    expected = {c for c in channels if any(op["bindings"]["mqtt"]["retain"] for op in
                DOC["operations"].values() if op["channel"]["$ref"] == f"#/channels/{c}")}
    assert retained == expected


def test_every_message_of_a_real_agent_matches_its_channel(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    from gridtao.wire.topics import Topics

    prefix, node = "gridtao/contract", "n1"
    cfg = write_agent_config(
        tmp_path, mqtt_broker, node, prefix=prefix, gpus=2,
        safety={"triggers": []}, limits={"min_event_interval_s": 0},
        products=[{"kind": "ffr", "capacity_w": 200, "threshold_hz": 49.7},
                  {"kind": "dr", "capacity_w": 300}],
        planner={"enabled": True, "unawarded": "configured"}, tracker={"period_s": 0.2})
    now = time.time()
    hour = int(now) // 3600 * 3600 + 3600
    bad_shed = {"id": "e2", "kind": "shed", "fraction": 1.5, "duration_s": 5}
    sent = {f"{prefix}/{t}" for t in ("frequency", "dispatch", "signals", f"nodes/{node}/award",
                                      f"nodes/{node}/dispatch")}
    signals = {"version": 1, "issued_at": now, "start": hour, "mtu_s": 3600,
               "energy_price_eur_per_mwh": [50.0, None], "reserve_price_eur_per_mw_h": {
                   "ffr": {"start": hour, "mtu_s": 3600, "values": [3.0, 3.5]}}}
    with agent_processes() as procs, mqtt_broker.subscriber(f"{prefix}/#") as sub, \
            Publisher(mqtt_broker.host, mqtt_broker.port) as pub:
        procs.append(spawn_agent(cfg, tmp_path / "agent.log"))
        status_wait(sub, lambda p: p.get("online") is True, "the agent's status")

        def send(topic: str, body: dict[str, Any], qos: int = 1, retain: bool = False) -> None:
            pub.send(f"{prefix}/{topic}", json.dumps(body).encode(), qos=qos, retain=retain)

        def ack(what: str, pred: Any) -> None:
            wait_message(sub, what, lambda t, d: t.endswith("/ack") and pred(d))

        send("signals", signals, retain=True)
        send("frequency", {"t": time.time(), "hz": 50.0}, qos=0)
        send("dispatch", {"id": "e1", "kind": "shed", "fraction": 0.2, "duration_s": 5})
        ack("e1 in its band", lambda d: d["id"] == "e1" and d["reached_at"] is not None)
        send("dispatch", bad_shed)  # refused by the agent and by the schema
        send("dispatch", {"id": "e3", "kind": "release", "ref": "e1"})
        send("dispatch", {"id": "d1", "kind": "dr", "start_at": time.time() + 600,
                          "duration_s": 60, "reduction_w": 100})
        send("dispatch", {"id": "c1", "kind": "cap", "node_w": 5000, "duration_s": 2})
        if hasattr(Topics, "node_dispatch"):
            send(f"nodes/{node}/dispatch", {"id": "n1", "kind": "release", "ref": "c1"})
        send(f"nodes/{node}/award", {"id": "a1", "issued_at": time.time(), "start": hour,
                                     "mtu_s": 3600, "capacity_w": {"ffr": [150]}})
        for _ in range(3):
            send("frequency", {"t": time.time(), "hz": 49.6}, qos=0)
            time.sleep(0.05)
        ack("the frequency activation", lambda d: d.get("source") == "frequency")
        send("frequency", {"t": time.time(), "hz": 50.0}, qos=0)
        for what, pred in [("the refusal", lambda d: d["accepted"] is False),
                           ("the dr event", lambda d: d.get("scheduled") is True),
                           ("the award", lambda d: d.get("kind") == "award")]:
            ack(what, pred)
        wait_message(sub, "the tracker with the dr event",
                     lambda t, d: t.endswith("/tracker") and d["dr"])
        wait_message(sub, "the plan", lambda t, d: t.endswith("/plan"))
        check_retained(mqtt_broker, prefix, {"status", "tracker", "plan", "signals", "ack"})
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(WAIT_S) == 0
        wait_message(sub, "the offline status", lambda t, d: d.get("online") is False)
    seen = check_traffic(list(sub.messages), prefix, sent, (json.dumps(bad_shed).encode(),))
    expected = {"frequency", "dispatch", "ack", "status", "tracker", "plan", "award", "signals"}
    assert expected | ({"nodeDispatch"} if hasattr(Topics, "node_dispatch") else set()) <= seen


def test_every_message_of_a_real_site_coordinator_matches_its_channel(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    prefix, node = "gridtao/site-contract", "n1"
    site_cfg = tmp_path / "site.yaml"
    site_cfg.write_text(yaml.safe_dump({
        "mqtt": {"port": mqtt_broker.port, "prefix": prefix, "reconnect_min_s": 0.05},
        "metrics": {"enabled": False},
        "site": {"id": "s1", "nodes": [node], "status_period_s": 0.2, "ack_deadline_s": 2.0}}))
    sent = {f"{prefix}/site/dispatch", f"{prefix}/site/award", f"{prefix}/meter"}
    with agent_processes() as procs, mqtt_broker.subscriber(f"{prefix}/#") as sub, \
            Publisher(mqtt_broker.host, mqtt_broker.port) as pub:
        # enrolled in FFR and planning: the site's status has capacity, and it pools a plan
        procs.append(planning_agent(tmp_path, mqtt_broker, node, prefix, None,
                                    limits={"min_event_interval_s": 0}))
        procs.append(spawn_site(site_cfg, tmp_path / "site.log"))
        wait_message(sub, "the site's view of the node", lambda t, d: t.endswith(
            "/site/status") and d.get("nodes", {}).get(node, {}).get("online") is True
            and bool(d.get("capacity_w")))
        wait_message(sub, "the site's plan", lambda t, d: t.endswith("/site/plan"))

        def send(topic: str, body: dict[str, Any], qos: int = 1) -> None:
            pub.send(f"{prefix}/{topic}", json.dumps(body).encode(), qos=qos)

        send("meter", {"t": time.time(), "w": 1500.0}, qos=0)
        send("site/dispatch", {"id": "s1", "kind": "site_cap", "site_w": 900, "at": "it",
                               "duration_s": 30})
        wait_message(sub, "the site ack", lambda t, d: t.endswith("/site/ack") and d["id"] == "s1")
        send("site/dispatch", {"id": "s2", "kind": "site_shed", "fraction": 0.1,
                               "duration_s": 30})
        send("site/dispatch", {"id": "s3", "kind": "release", "ref": "s1"})
        hour = int(time.time()) // 3600 * 3600
        send("site/award", {"id": "a1", "issued_at": time.time(), "start": hour, "mtu_s": 3600,
                            "capacity_w": {"ffr": [100, 100]}})  # this hour and the next
        send("site/award", {"id": "a2", "issued_at": time.time(), "start": hour, "mtu_s": 3600,
                            "capacity_w": {"afrr": [100]}})  # a product no node offers
        for event in ("s3", "a1", "a2"):
            wait_message(sub, f"the ack of {event}",
                         lambda t, d, e=event: t.endswith("/site/ack") and d["id"] == e)
        wait_message(sub, "the award in the site's status", lambda t, d: t.endswith(
            "/site/status") and (d.get("award") or {}).get("capacity_w") == {"ffr": 100})
        check_retained(mqtt_broker, prefix, {channel_of(m.topic, prefix) for m in sub.messages})
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            assert p.wait(WAIT_S) == 0
    seen = check_traffic(list(sub.messages), prefix, sent)
    assert {"siteDispatch", "siteAward", "siteAck", "siteStatus", "siteEvents", "meter",
            "nodeDispatch", "sitePlan", "plan", "award"} <= seen
