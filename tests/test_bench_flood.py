"""bench/flood.py end to end at a tiny size, and its junk checked against the real parser and
verifier: each junk message is refused for the reason it stands for. No speed is asserted."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from gridtao.bench.flood import main, may_run_at
from gridtao.bench.floodsetup import (
    AGENT_NICE,
    AGGREGATOR_KID,
    METER_KID,
    junk_dispatch,
    junk_sample,
    junk_signatures,
    make_keys,
)
from gridtao.security import auth
from gridtao.wire import messages as wire

KINDS = ("ffr", "dispatch")
MEASURES = ("publish_to_command_ms", "publish_to_receive_ms", "receive_to_command_ms")


@pytest.mark.parametrize("alg", ["ed25519", "hmac"])
def test_junk_is_refused_for_the_reason_it_stands_for(tmp_path: Path, alg: auth.Alg) -> None:
    keys = make_keys(alg, tmp_path)
    verifier = auth.Verifier(alg, {
        AGGREGATOR_KID: (auth.load_verify_key(keys.aggregator.verify_file, alg),
                         frozenset({"dispatch"})),
        METER_KID: (auth.load_verify_key(keys.meter.verify_file, alg), frozenset({"frequency"})),
    })
    sigs = junk_signatures(alg, random.Random(0), n=4)
    now = 1_800_000_000.0
    for k, reason in enumerate(("malformed", "unsigned", "bad_signature")):
        dispatch, sample = junk_dispatch(k, sigs, now), junk_sample(k, sigs, now)
        if reason == "malformed":
            with pytest.raises(wire.MessageRejected):
                wire.parse_dispatch(dispatch, max_bytes=4096)
            with pytest.raises(wire.MessageRejected):
                wire.parse_frequency(sample, max_bytes=4096)
            continue
        # Well-formed: only the signature check stands between it and a cut (a dip to 49 Hz).
        assert wire.parse_frequency(sample, max_bytes=4096).hz == 49.0
        for topic, payload in (("dispatch", dispatch), ("frequency", sample)):
            if topic == "dispatch":
                wire.parse_dispatch(payload, max_bytes=4096)
            with pytest.raises(auth.AuthRejected) as refused:
                verifier.authenticate(topic, json.loads(payload))  # type: ignore[arg-type]
            assert refused.value.label == reason
    # The genuine senders' messages pass the same verifier, each key on its own topic only.
    assert verifier.authenticate("frequency", json.loads(keys.sample(now, 49.4))) == METER_KID
    assert verifier.authenticate("dispatch", json.loads(keys.dispatch(
        {"id": "g", "kind": "shed", "fraction": 0.3, "duration_s": 1}))) == AGGREGATOR_KID
    with pytest.raises(auth.AuthRejected):
        verifier.authenticate("dispatch", json.loads(keys.sample(now, 49.4)))


def test_flood_bench_counts_every_genuine_ack(tmp_path: Path) -> None:
    out, md = tmp_path / "flood.json", tmp_path / "flood.md"
    # The agent at the systemd unit's priority where this process may (CAP_SYS_NICE), else
    # at a lower one than the test's own, which anyone may.
    nice = AGENT_NICE if may_run_at(AGENT_NICE) else max(5, os.getpriority(os.PRIO_PROCESS, 0))
    assert main(["--triggers", "2", "--gpus", "2", "--dispatch-junk", "500",
                 "--frequency-junk-rate", "500", "--json", str(out), "--markdown", str(md),
                 "--keep-dir", str(tmp_path / "run"), "--agent-nice", str(nice)]) == 0
    result = json.loads(out.read_text())
    assert result["agent_nice"] == nice  # as the kernel had it
    assert f"agent at nice {nice}" in md.read_text()
    assert result["command"].startswith("gridtao bench flood --triggers 2")
    for key in ("date", "machine", "commit", "broker"):
        assert key in result
    for phase in ("idle", "flood"):
        for kind in KINDS:
            stats = result[phase][kind]
            assert stats["triggers"] == 2
            for key in MEASURES:
                assert set(stats[key]) == {"p50", "p99", "max"}
            samples = result["samples"][phase][kind]
            assert len(samples) == 2
            # The counts are the samples' own: first acks and reached_at acks, trigger by trigger.
            assert stats["first_acks"] == sum(s["first_ack"] for s in samples)
            assert stats["reached_acks"] == sum(s["reached_ack"] for s in samples)
    # Nothing competes in the idle phase: every genuine trigger was acked and commanded.
    for kind in KINDS:
        assert result["idle"][kind]["first_acks"] == result["idle"][kind]["commanded"] == 2
        assert result["idle"][kind]["publish_to_command_ms"]["p50"] > 0
    assert all(s["id"].startswith("ffr-") for s in result["samples"]["idle"]["ffr"])
    # The flood happened and reached the agent; none of it activated anything.
    attack = result["flood"]["attack"]
    assert attack["dispatch"]["sent"] == 500 and attack["frequency"]["sent"] > 0
    assert attack["dispatch"]["error"] is None and attack["frequency"]["error"] is None
    handled = result["flood"]["agent_handled"]["rejected"]
    assert handled["dispatch"] > 0 and handled["frequency"] > 0
    assert result["unexpected_activations"] == []
    targets = result["targets"]
    assert set(targets) == {"ffr_publish_to_command_p99_ms", "dispatch_publish_to_command_p99_ms",
                            "genuine_acks_delivered", "rss_peak_mib", "no_forged_activation"}
    assert all(isinstance(t["met"], bool) for t in targets.values())
    assert targets["genuine_acks_delivered"]["expected"] == 8
    assert targets["rss_peak_mib"]["value"] > 10  # an interpreter's worth at least
    assert result["agent_stop"]["exit_status"] == 0
    text = md.read_text()
    assert text.startswith("### Genuine triggers under a flood")
    # A smaller flood than the target's is said to be one: its verdicts are not the target's.
    assert "at this run's smaller flood (500 dispatches, 500 samples/s)" in text
    assert "audit budget)" not in text and "audit trail)" not in text
    # --keep-dir kept what the run wrote: the agent's audit trail among it.
    assert list((tmp_path / "run" / "state").glob("audit-*"))
