"""Signed messages end to end: a real Mosquitto, the whole agent in-process with Ed25519 keys
generated at test time (``gridtao keygen`` into tmp_path; never committed), payloads signed by
``gridtao sign`` and :func:`gridtao.security.auth.sign_payload`.

Forged, unsigned, stale, future-dated and replayed messages are refused with their reason and
move no GPU; the replay store refuses a replay after the agent restarts. Waits are generous;
nothing asserts wall-clock speed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Subscriber
from nodes import Node, merge, running, steady_sim

from gridtao.app.agent import Agent, AgentOptions
from gridtao.cli import main as cli
from gridtao.clock import MonotonicClock
from gridtao.config.agent import ConfigError, config_from_mapping
from gridtao.security import auth
from gridtao.transport.localbroker import Publisher

W = 1000
N = 4
DEMAND_W = 600
BASELINE_W = N * DEMAND_W
DEFAULT_W = 700
WAIT_S = 15.0


@dataclass
class Keys:
    folder: Path

    def signing(self, name: str) -> auth.SigningKey:
        return auth.load_signing_key(self.folder / f"{name}.key", "ed25519")

    def sign(self, name: str, body: dict[str, Any], *, kid: str | None = None,
             topic: auth.Topic = "dispatch") -> bytes:
        return auth.sign_payload(body, self.signing(name), kid or name, "ed25519", topic=topic)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    folder = tmp_path / "keys"
    folder.mkdir()
    for name in ("agg", "meter", "stranger"):
        assert cli.main(["keygen", "--alg", "ed25519", "--out", str(folder / name)]) == 0
    return Keys(folder)


def _config(broker: MosquittoBroker, keys: Keys, name: str,
            limits: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "gpus": {"sim": {"count": N, "noise_w": 0.0, "seed": 11}},
        "mqtt": {"port": broker.port, "node_id": name, "prefix": f"gridtao/auth-{name}",
                 "keepalive_s": 5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"enabled": False},
        "safety": {"triggers": [{"hz": 49.5, "reduction_fraction": 0.3, "min_hold_s": 0.5,
                                 "recovery_s": 0.3}], "release_rate_per_s": 2.0},
        "auth": {
            "mode": "ed25519",
            "keys": [
                {"kid": "agg", "file": str(keys.folder / "agg.pub"), "topics": ["dispatch"]},
                {"kid": "meter", "file": str(keys.folder / "meter.pub"),
                 "topics": ["frequency"]},
            ],
            "replay_store": str(keys.folder.parent / "state" / "replay.jsonl"),
        },
        "limits": {"min_event_interval_s": 0.0} if limits is None else limits,
    }


@contextmanager
def running_node(broker: MosquittoBroker, keys: Keys, name: str,
                 limits: dict[str, Any] | None = None, **over: Any) -> Iterator[Node]:
    cfg = config_from_mapping(merge(_config(broker, keys, name, limits), over),
                              source=f"<test {name}>")
    with running(broker, cfg, steady_sim(cfg.gpus.sim, MonotonicClock(), DEMAND_W)) as node:
        yield node


def _shed(event_id: str, fraction: float = 0.5, **over: Any) -> dict[str, Any]:
    return {"id": event_id, "kind": "shed", "fraction": fraction, "duration_s": 60} | over


def _acks(sub: Subscriber, n: int) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.wait(n, WAIT_S)]


def test_signed_dispatch_acts_and_every_forgery_is_refused(
    mqtt_broker: MosquittoBroker, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_node(mqtt_broker, keys, "forge") as node, node.acks() as sub:
        time.sleep(0.2)  # tier 1 settled at the defaults
        before, sets = node.limits_w(), node.sets()
        assert before == [DEFAULT_W] * N
        now = time.time()
        tampered = json.loads(keys.sign("agg", _shed("bad-sig", 0.2)))
        tampered["fraction"] = 0.8
        forgeries = [
            ("unsigned", json.dumps(_shed("plain", issued_at=now)).encode(),
             "auth: unsigned: field 'sig' is missing"),
            ("bad_signature", json.dumps(tampered).encode(),
             "auth: bad signature for key 'agg'"),
            ("unknown_kid", keys.sign("stranger", _shed("who")), "auth: unknown key id"),
            ("kid_not_allowed", keys.sign("meter", _shed("meter-cut")),
             "auth: key 'meter' may not sign dispatch messages"),
            ("stale", keys.sign("agg", _shed("old", issued_at=now - 120)), "auth: stale: "),
            ("future", keys.sign("agg", _shed("ahead", issued_at=now + 60)),
             "auth: future-dated: "),
        ]
        for k, (_label, payload, words) in enumerate(forgeries, start=1):
            node.dispatch(payload)
            ack = _acks(sub, k)[k - 1]
            assert ack["accepted"] is False and words in ack["reason"], ack
            assert ack["commanded_at"] is None and ack["reached_at"] is None
        for label, _payload, _words in forgeries:
            assert node.value("gridtao_auth_failures_total", topic="dispatch",
                              reason=label) == 1, label
        assert node.value("gridtao_messages_total", topic="dispatch",
                          result="rejected") == len(forgeries)
        time.sleep(0.2)
        assert node.limits_w() == before and node.sets() == sets
        assert node.agent.island.view().event_id is None

        # The real thing, signed by the aggregator's key, acts.
        node.dispatch(keys.sign("agg", _shed("s1", 0.5)))
        ok = _acks(sub, len(forgeries) + 1)[-1]
        assert ok["id"] == "s1" and ok["accepted"] is True and ok["reason"] is None
        assert sum(node.limits_w()) == pytest.approx(0.5 * BASELINE_W, rel=0.02)
        reached = _acks(sub, len(forgeries) + 2)[-1]
        assert reached["id"] == "s1" and reached["reached_at"] is not None

        # `gridtao sign` output is accepted too: it ends the event.
        release = json.dumps({"id": "s1-end", "kind": "release", "ref": "s1"})
        assert cli.main(["sign", "--key", str(keys.folder / "agg.key"), "--kid", "agg",
                         release]) == 0
        node.dispatch(capsys.readouterr().out.strip().encode())
        acks = _acks(sub, len(forgeries) + 3)
        end = next(a for a in acks if a["id"] == "s1-end")
        assert end["accepted"] is True
        assert node.value("gridtao_messages_total", topic="dispatch", result="accepted") == 2


def test_a_replay_is_refused_even_after_the_agent_restarts(
    mqtt_broker: MosquittoBroker, keys: Keys
) -> None:
    captured = keys.sign("agg", {"id": "c1", "kind": "cap", "node_w": 1600, "duration_s": 0.5})
    with running_node(mqtt_broker, keys, "replay") as node, node.acks() as sub:
        node.dispatch(captured)
        assert _acks(sub, 1)[0]["accepted"] is True
    # A new agent process over the same state folder: the id is remembered on disk.
    with running_node(mqtt_broker, keys, "replay") as node, node.acks() as sub:
        time.sleep(0.2)
        before, sets = node.limits_w(), node.sets()
        node.dispatch(captured)
        ack = _acks(sub, 1)[0]
        assert ack["accepted"] is False
        assert ack["reason"] == "auth: replayed: event id 'c1' was already used"
        assert node.value("gridtao_auth_failures_total", topic="dispatch",
                          reason="replayed") == 1
        time.sleep(0.2)
        assert node.limits_w() == before and node.sets() == sets


def test_only_signed_fresh_increasing_frequency_samples_trigger(
    mqtt_broker: MosquittoBroker, keys: Keys
) -> None:
    with running_node(mqtt_broker, keys, "freq") as node, node.acks() as sub:
        topic = node.agent.topics.frequency
        now = time.time()
        rejected = [
            json.dumps({"t": now, "hz": 49.4}).encode(),  # unsigned
            keys.sign("agg", {"t": now, "hz": 49.4}),  # a dispatch-only key
            keys.sign("meter", {"t": now - 10, "hz": 49.4}),  # stale
        ]
        for payload in rejected:
            node.send(topic, payload)
        want = 3.0

        def counted() -> float:
            return node.value("gridtao_messages_total", topic="frequency", result="rejected")

        deadline = time.monotonic() + WAIT_S
        while counted() < want and time.monotonic() < deadline:
            time.sleep(0.02)
        assert counted() == want
        assert node.agent.island.view().event_id is None and sub.messages == []
        signed = keys.sign("meter", {"t": time.time(), "hz": 49.4})
        node.send(topic, signed)
        ack = _acks(sub, 1)[0]
        assert ack["accepted"] is True and ack["source"] == "frequency"
        node.send(topic, signed)  # the same sample again: t does not increase
        deadline = time.monotonic() + WAIT_S
        while counted() < want + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        for label in ("unsigned", "kid_not_allowed", "stale", "replayed"):
            assert node.value("gridtao_auth_failures_total", topic="frequency",
                              reason=label) == 1, label


def test_a_signed_flood_over_the_broker_cuts_once_per_interval_and_holds_the_floor(
    mqtt_broker: MosquittoBroker, keys: Keys
) -> None:
    floor_w = 0.3 * N * DEFAULT_W  # default limits.min_node_fraction
    flood = [keys.sign("agg", _shed(f"f{k}", 0.8)) for k in range(300)]
    with running_node(mqtt_broker, keys, "flood", limits={}) as node, node.acks() as sub, \
            Publisher(mqtt_broker.host, mqtt_broker.port) as pub:
        time.sleep(0.2)
        t0 = time.monotonic()
        for payload in flood:
            pub.send(node.agent.topics.dispatch, payload, qos=1)
        elapsed_s = time.monotonic() - t0
        deadline = time.monotonic() + WAIT_S * 2
        firsts: dict[str, dict[str, Any]] = {}  # the first ack per id (not the reached_at one)
        while len(firsts) < len(flood) and time.monotonic() < deadline:
            for m in list(sub.messages):
                a = json.loads(m.payload)
                firsts.setdefault(a["id"], a)
            time.sleep(0.05)
        assert len(firsts) == len(flood), "every dispatch gets an ack"
        accepted = [i for i, a in firsts.items() if a["accepted"]]
        # At most one cut per min_event_interval_s (1 s), and never more than 4 at once.
        assert 1 <= len(accepted) <= min(4, 1 + int(elapsed_s))
        assert all("by the node's floor 840 W" in firsts[i]["reason"] for i in accepted)
        refused = [a["reason"] for a in firsts.values() if not a["accepted"]]
        assert len(refused) == len(flood) - len(accepted)
        assert all(r.startswith(("rate limit:", "last cut accepted")) for r in refused)
        assert node.value("gridtao_limit_rejections_total", topic="dispatch",
                          reason="rate_limit") > 200
        # The island's node target sits at the floor; tier 1, tracking measured power to that
        # target, keeps the summed limits within its 5 % band of it.
        lowest_w = float("inf")
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            target_mw = node.agent.island.view().target_mw
            assert target_mw is not None and target_mw >= floor_w * W - 1
            lowest_w = min(lowest_w, sum(node.limits_w()))
            time.sleep(0.01)
        assert lowest_w >= floor_w * (1 - 0.05)


def test_a_missing_key_file_stops_the_agent_before_it_touches_a_gpu(tmp_path: Path) -> None:
    missing = tmp_path / "agg.pub"
    cfg = config_from_mapping({"auth": {"mode": "ed25519",
                                        "keys": [{"kid": "agg", "file": str(missing)}]}},
                              source="site.yaml")
    with pytest.raises(ConfigError) as e:
        Agent(cfg, options=AgentOptions(serve_metrics=False))
    assert str(e.value) == (
        f"site.yaml: auth.keys[0].file (kid 'agg'): key file '{missing}' not found")


@pytest.mark.parametrize("alg", ["ed25519", "hmac"])
def test_bench_keys_configure_an_agent_that_accepts_their_signatures(
    tmp_path: Path, alg: auth.Alg
) -> None:
    from gridtao.bench.authcost import make_key, verify_cost_us
    from gridtao.bench.latency import agent_config

    key = make_key(alg, tmp_path)
    cfg = config_from_mapping(agent_config(config_from_mapping({}), 1883, 2, workdir=tmp_path,
                                            key=key), source="<bench>")
    assert cfg.auth.mode == alg and cfg.limits.min_event_interval_s == 0.0
    verifier = auth.Verifier.from_config(cfg.auth, source=cfg.source)
    assert verifier is not None
    signed = json.loads(key.sign({"id": "b1", "kind": "shed", "fraction": 0.3,
                                  "duration_s": 1}))
    assert verifier.authenticate("dispatch", signed) == "bench"
    cost = verify_cost_us(alg, tmp_path, n=20)
    assert 0 < cost["p50"] <= cost["p99"] <= cost["max"]


def test_keys_rotate_by_reload_while_an_event_holds(
    mqtt_broker: MosquittoBroker, keys: Keys, tmp_path: Path
) -> None:
    """The aggregator moves to a new key: the agent reloads its configuration (what SIGHUP
    does) and keeps the event it is delivering; the withdrawn key is refused from then on."""
    audit = {"enabled": True, "path": str(tmp_path / "audit.jsonl")}
    with running_node(mqtt_broker, keys, "rotate", audit=audit) as node, node.acks() as sub:
        node.dispatch(keys.sign("agg", {"id": "c1", "kind": "cap", "node_w": 1600,
                                        "duration_s": 600}))
        assert _acks(sub, 1)[0]["accepted"] is True
        held = node.limits_w()
        assert sum(held) <= 1600 + 0.01

        rotated = _config(mqtt_broker, keys, "rotate") | {"audit": audit}
        rotated["auth"]["keys"][0] = {"kid": "stranger",
                                      "file": str(keys.folder / "stranger.pub"),
                                      "topics": ["dispatch"]}
        broken = json.loads(json.dumps(rotated))
        broken["auth"]["keys"][0]["file"] = str(tmp_path / "missing.pub")
        with pytest.raises(ConfigError, match=r"missing\.pub"):
            node.agent.reload(lambda: config_from_mapping(broken, source="<test broken>"))
        result = node.agent.reload(lambda: config_from_mapping(rotated, source="<test rotated>"))
        assert (result.kids_added, result.kids_removed) == (("stranger",), ("agg",))

        assert node.agent.island.view().event_id == "c1" and node.limits_w() == held
        node.dispatch(keys.sign("agg", {"id": "c1-end", "kind": "release", "ref": "c1"}))
        refused = _acks(sub, 2)[-1]
        assert refused["accepted"] is False
        assert refused["reason"] == "auth: unknown key id 'agg'"
        assert node.agent.island.view().event_id == "c1"
        node.dispatch(keys.sign("stranger", {"id": "c1-end2", "kind": "release", "ref": "c1"}))
        assert _acks(sub, 3)[-1]["accepted"] is True
        reloads = [r for r in node.audit() if r["kind"] in ("reload", "reload_refused")]
        assert [r["kind"] for r in reloads] == ["reload_refused", "reload"]
        assert "missing.pub" in reloads[0]["fields"]["reason"]
        assert reloads[1]["fields"]["kids_added"] == ["stranger"]
        assert node.value("gridtao_reloads_total", result="refused") == 1
        assert node.value("gridtao_reloads_total", result="applied") == 1
