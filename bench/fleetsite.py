"""The site coordinator's part of ``gridtao bench fleet``: ``gridtao site`` in its own process
on the fleet's broker, and what it adds after the nodes.

The coordinator (gridtao/site/coordinator.py) reads the dispatch the aggregator sends straight to
every node on ``{prefix}/dispatch``, gathers the nodes' acks from ``{prefix}/nodes/+/ack`` and
publishes one site ack on ``{prefix}/site/ack`` once every node that was online when the event
arrived has answered (or ``site.ack_deadline_s`` passed). One subscriber per topic in the bench
process sees both the node acks and the site acks, so ``site_ack_after_last_node_ms`` (the site
ack's receipt minus the last node ack's receipt, per event) is read on one clock by one reader;
both read with the agent's own packet parser (bench/fleetrecv.py), fast enough for a thousand
nodes' acks.
Times are Unix seconds; delays in ms.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gridtao.bench.agentproc import stop_process
from gridtao.bench.fleetproc import PREFIX, Meter, peak_rss_mib, stats
from gridtao.bench.fleetrecv import RawSubscriber
from gridtao.children import module_command
from gridtao.transport.localbroker import MosquittoBroker, Publisher

SITE_ID = "fleet-bench"
ONLINE_TIMEOUT_S = 60.0
#: How long past the coordinator's own ack deadline a site ack is waited for.
ACK_GRACE_S = 3.0
#: The site phase's dispatches last this long, and each is released once the site has acked
#: it: the coordinator forgets an event at its end, answered or not, so an event shorter than
#: the time a thousand nodes take to answer would never get a site ack.
EVENT_S = 10.0
LOG_TAIL_LINES = 20

MISSING = ("the site coordinator (gridtao.site.coordinator, `gridtao site --config FILE`) is "
           "not in this installation: the site's part of the fleet bench cannot run. Pass "
           "--no-site to measure the nodes alone.")


class CoordinatorMissing(RuntimeError):
    """``gridtao site`` is not available: there is no site figure to measure."""


#: ``run_trials(publisher, observe)``: the fleet's dispatch trials; ``observe(event_id,
#: published_at)`` is called after each trial's nodes all answered.
RunTrials = Callable[[Publisher, Callable[[str, float], None]], dict[str, Any]]


def check_available() -> None:
    """Raise :class:`CoordinatorMissing` unless ``gridtao site`` can run here."""
    for module in ("gridtao.site.coordinator", "gridtao.site.serve", "gridtao.cli.site",
                   "gridtao.config.site"):
        if importlib.util.find_spec(module) is None:
            raise CoordinatorMissing(MISSING)


def site_config(port: int, status_period_s: float) -> dict[str, Any]:
    """The coordinator's configuration: the bench broker and prefix, no metrics endpoint, and
    a node counted offline after three of its status periods (at least the default)."""
    from gridtao.config.site import SiteConfig

    stale = max(SiteConfig().node_stale_s, 3.0 * status_period_s)
    return {"mqtt": {"host": "127.0.0.1", "port": port, "prefix": PREFIX},
            "metrics": {"enabled": False},
            "site": {"id": SITE_ID, "node_stale_s": stale}}


class _Acks:
    """One subscriber's messages, read incrementally: id -> first receipt (Unix s), body."""

    def __init__(self, sub: RawSubscriber) -> None:
        self.sub = sub
        self.read = 0
        self.last: dict[str, float] = {}  # event id -> latest receipt among node acks
        self.count: dict[str, int] = {}
        self.first: dict[str, tuple[float, dict[str, Any]]] = {}

    def update(self) -> None:
        n = len(self.sub.messages)
        for msg, at in zip(self.sub.messages[self.read:n], self.sub.received_wall[self.read:n],
                           strict=True):
            body = json.loads(msg.payload)
            ident = str(body.get("id"))
            self.last[ident] = max(self.last.get(ident, 0.0), at)
            self.count[ident] = self.count.get(ident, 0) + 1
            self.first.setdefault(ident, (at, body))
        self.read = n


def online_count(status: dict[str, Any]) -> int:
    """How many nodes the site's status counts online (``nodes_online``, else its ``nodes``
    entries marked online)."""
    count = status.get("nodes_online")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    nodes = status.get("nodes")
    if isinstance(nodes, dict):
        return sum(1 for v in nodes.values() if isinstance(v, dict) and v.get("online") is True)
    return 0


def _wait_online(broker: MosquittoBroker, nodes: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the site's retained status counts every node online."""
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    with broker.subscriber(f"{PREFIX}/site/status") as sub:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gridtao site exited with status {proc.returncode}")
            for msg in sub.messages[-1:]:
                if online_count(json.loads(msg.payload)) >= nodes:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"the site coordinator did not see {nodes} nodes online within "
                       f"{ONLINE_TIMEOUT_S:.0f} s")


def measure_site(broker: MosquittoBroker, nodes: int, status_period_s: float,
                 run_trials: RunTrials, meter: Meter, workdir: Path) -> dict[str, Any]:
    """Start ``gridtao site`` on ``broker``, run the fleet's dispatch trials again and time
    each event's site ack against its last node ack. Raises :class:`CoordinatorMissing` when
    the coordinator is not installed."""
    check_available()
    config = workdir / "site.yaml"
    config.write_text(yaml.safe_dump(site_config(broker.port, status_period_s)),
                      encoding="utf-8")
    log_path = workdir / "site.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        module_command("gridtao", "--config", str(config), "--log-level", "warning",
         "site"), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    from gridtao.config.site import SiteConfig

    deadline_s = SiteConfig().ack_deadline_s + ACK_GRACE_S
    try:
        _wait_online(broker, nodes, proc)
        with RawSubscriber(broker.host, broker.port, f"{PREFIX}/nodes/+/ack") as node_sub, \
                RawSubscriber(broker.host, broker.port, f"{PREFIX}/site/ack") as site_sub:
            node_acks, site_acks = _Acks(node_sub), _Acks(site_sub)
            sent: dict[str, float] = {}

            def observe(event_id: str, published_at: float) -> None:
                sent[event_id] = published_at
                end = time.monotonic() + deadline_s
                while event_id not in site_acks.first and time.monotonic() < end:
                    time.sleep(0.005)
                    site_acks.update()
                node_acks.update()

            box: dict[str, Any] = {}

            def body() -> None:
                with Publisher(broker.host, broker.port) as pub:
                    box["dispatch"] = run_trials(pub, observe)

            meter.phase("site", body, extra={"coordinator": proc.pid})
            time.sleep(0.2)
            node_acks.update()
            site_acks.update()
        rss = peak_rss_mib(proc.pid)
    finally:
        status = stop_process(proc)
        log.close()
    result = _result(box["dispatch"], sent, node_acks, site_acks, nodes, rss, status)
    if result["site_acks"] < result["events"]:  # say why, from the coordinator's own words
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        result["coordinator_log_tail"] = lines[-LOG_TAIL_LINES:]
    return result


def _result(dispatch: dict[str, Any], sent: dict[str, float], node_acks: _Acks,
            site_acks: _Acks, nodes: int, rss: float, status: int) -> dict[str, Any]:
    after: list[float] = []
    to_site: list[float] = []
    complete = 0
    for ident, at in sent.items():
        site = site_acks.first.get(ident)
        if site is None or node_acks.count.get(ident, 0) < nodes:
            continue
        after.append((site[0] - node_acks.last[ident]) * 1000.0)
        to_site.append((site[0] - at) * 1000.0)
        answered = site[1].get("nodes", {})
        complete += len(answered.get("accepted", [])) == nodes and not answered.get("missing")
    return {
        "site_ack_after_last_node_ms": stats(after),
        "publish_to_site_ack_ms": stats(to_site),
        "publish_to_all_commanded_ms": dispatch["publish_to_all_commanded_ms"],
        "dispatch": dispatch,
        "events": len(sent), "site_acks": sum(1 for i in sent if i in site_acks.first),
        "site_acks_every_node_accepted": complete,
        "coordinator_peak_rss_mib": round(rss, 1), "coordinator_exit_status": status,
    }
