"""Whose retained status blocks a start: a live agent on the node id, never a dead one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gridtao.transport.instance import Instance, other_instance

ME = Instance(id="me", pid=os.getpid(), host="this-host")


def _status(*, online: bool = True, t: float = 100.0, **instance: object) -> bytes:
    return json.dumps({"node": "n", "online": online, "t": t, "instance": instance}).encode()


def test_a_fresh_online_agent_elsewhere_blocks() -> None:
    other = other_instance(_status(id="x", pid=7, host="other-host"), ME, wall=101.0,
                           status_period_s=1.0)
    assert other == "instance x (pid 7 on other-host), status 1.0 s old"


def test_stale_offline_own_or_unreadable_statuses_do_not_block() -> None:
    stale = _status(id="x", pid=7, host="other-host", t=90.0)
    assert other_instance(stale, ME, wall=101.0, status_period_s=1.0) is None
    offline = _status(online=False, id="x", pid=7, host="other-host")
    assert other_instance(offline, ME, wall=101.0, status_period_s=1.0) is None
    assert other_instance(_status(id="me", pid=1, host="h"), ME, wall=101.0,
                          status_period_s=1.0) is None
    assert other_instance(b"not json", ME, wall=101.0, status_period_s=1.0) is None
    assert other_instance(json.dumps({"online": True, "t": 100.0}).encode(), ME, wall=101.0,
                          status_period_s=1.0) is None  # a v1 agent's status: no instance


def test_on_this_host_only_a_live_process_blocks() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert other_instance(_status(id="x", pid=dead.pid, host="this-host",
                                  pidns=ME.pidns), ME, wall=100.5,
                          status_period_s=1.0) is None
    assert other_instance(_status(id="x", pid=ME.pid, host="this-host",
                                  pidns=ME.pidns), ME, wall=100.5,
                          status_period_s=1.0) is None  # an earlier agent of this process
    # A container sharing the host name: its pid is from another namespace and proves nothing.
    assert other_instance(_status(id="x", pid=ME.pid, host="this-host", pidns="pid:[1]"), ME,
                          wall=100.5, status_period_s=1.0) is not None
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert other_instance(_status(id="x", pid=live.pid, host="this-host",
                                  pidns=ME.pidns), ME, wall=100.5,
                              status_period_s=1.0) is not None
    finally:
        live.kill()
        live.wait()
