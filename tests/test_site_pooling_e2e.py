"""The award in force follows the nodes' live room, end to end: two real agents with a planner
each, a real broker, the real `gridtao site` in signed mode."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from agentproc import WAIT_S, agent_processes
from broker import MosquittoBroker, publish
from test_site_e2e import _spawn, _wait, planning_agent, signed_site_config, signed_site_keys

from gridtao.security.auth import load_signing_key, sign_payload


def test_the_award_in_force_moves_to_the_node_with_room_and_the_nodes_arm_it(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """n1's GPUs ask 260 W each, little above its floor; n2's ask 600 W. The site's award for
    this hour (which no plan covers yet) is split first by what each may be awarded, half each;
    within ``resplit_s`` n1 gives up what its live room cannot carry, and n2 takes it. Each
    node verifies the site's signature, accepts its new share and arms it at once."""
    prefix = "e2e/resplit"
    keys = signed_site_keys(tmp_path)
    site_cfg = signed_site_config(tmp_path, mqtt_broker, prefix, ["n1", "n2"], keys,
                                  resplit_s=1.0)
    with agent_processes() as procs, mqtt_broker.subscriber(f"{prefix}/#") as sub:
        procs.append(planning_agent(tmp_path, mqtt_broker, "n1", prefix, keys, steady_w=260.0))
        procs.append(planning_agent(tmp_path, mqtt_broker, "n2", prefix, keys, steady_w=600.0))
        procs.append(_spawn(["--config", str(site_cfg), "site"], tmp_path / "site.log"))
        plan = _wait(sub, f"{prefix}/site/plan", lambda d: d.get("nodes") == ["n1", "n2"],
                     "the site's plan pooled from both nodes'")
        assert plan["pooling"]["correlation"] == 1.0
        for node in ("n1", "n2"):  # both drawing: their live room is known
            _wait(sub, f"{prefix}/nodes/{node}/status",
                  lambda d: (d.get("capacity") or {}).get("deliverable_w", 0) > 0,
                  f"{node}'s room in its status")
        now = time.time()
        this_hour = int(now) // 3600 * 3600
        body = {"id": "a-now", "start": this_hour, "mtu_s": 3600,
                "capacity_w": {"ffr": [400, 400]}}
        raw = sign_payload(body, load_signing_key(keys["agg"], "hmac"), "agg", "hmac",
                           topic="dispatch")
        seen = len(sub.messages)
        publish(mqtt_broker.host, mqtt_broker.port, f"{prefix}/site/award", raw, qos=1)
        shares = {}
        for node in ("n1", "n2"):
            again = _wait(sub, f"{prefix}/nodes/{node}/award",
                          lambda d: str(d["id"]).startswith("a-now~"),
                          f"{node}'s share split again by live room", start=seen)
            assert again["start"] in (this_hour, this_hour + 3600)  # the MTU in force then
            assert again["kid"] == "site" and again["node"] == node
            shares[node] = again["capacity_w"]["ffr"][0]
        # room: n1 about 2 x 260 - 420 W of floor = 100 W, n2 2 x 600 - 420 = 780 W
        assert 60 < shares["n1"] < 150 and shares["n2"] > 2 * shares["n1"]
        assert 400 - 2 <= shares["n1"] + shares["n2"] <= 400
        for node in ("n1", "n2"):
            ack = _wait(sub, f"{prefix}/nodes/{node}/ack",
                        lambda d: str(d.get("id", "")).startswith("a-now~"),
                        f"{node}'s ack of its new share", start=seen)
            assert ack["accepted"] is True, ack
            share = shares[node]
            _wait(sub, f"{prefix}/nodes/{node}/tracker",
                  lambda d: any(p["name"] == "ffr" and p["capacity_w"] == share  # noqa: B023
                                for p in d.get("products", ())),
                  f"{node} arming its share", start=seen)
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            assert p.wait(WAIT_S) == 0
