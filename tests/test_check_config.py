"""``gridtao check-config``: the agent's configuration checks without a GPU or a broker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gridtao.cli import main as cli


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def test_a_valid_file_is_summarised_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "gpus: {backend: sim, sim: {device: null, count: 4}}\n"
                            "mqtt: {host: 127.0.0.1, port: 18830, node_id: n1}\n"
                            "products: [{kind: ffr, capacity_w: 400}]\n"
                            "safety: {triggers: []}\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {path}\n")
    assert "node      n1" in out and "products  ffr 400 W" in out
    assert "127.0.0.1:18830" in out and "4 x h100-sxm (in-process)" in out
    assert "cuts      split proportionally" in out
    assert "planner   off; history " in out and "(kept 35 days)" in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    planning = _write(tmp_path, "gpus: {backend: sim, sim: {device: null}}\n"
                                "planner: {enabled: true, unawarded: zero}\n"
                                "history: {enabled: true}\n")
    assert cli.main(["--config", str(planning), "check-config"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("planner"))
    assert "every 3600 s, 24 h of 60-minute units, signals " in line
    assert "from gridtao/demo/signals only" in line and "unawarded: zero" in line


def test_a_history_that_is_not_a_database_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The agent would exit 2 at start with the same words: said before it starts."""
    (tmp_path / "h.txt").write_text("time,it_w\n")
    (tmp_path / "empty.sqlite3").write_bytes(b"")  # SQLite makes a database of it: fine
    for name, code in (("h.txt", 2), ("empty.sqlite3", 0)):
        path = _write(tmp_path, "gpus: {backend: sim, sim: {device: null}}\n"
                                f"history: {{path: {tmp_path / name}}}\n")
        assert cli.main(["--config", str(path), "check-config"]) == code
        err = capsys.readouterr().err
        assert (f"history.path: {tmp_path / name}: not a SQLite database" in err) == bool(code)


def test_a_late_signals_feed_is_a_warning_a_broken_file_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The agent starts and plans without a stale signals file: a pre-start check must not
    keep it from starting for a late feed, only for a file that is not one."""
    import json
    import time

    now = time.time()
    start = int(now) // 3600 * 3600
    doc = {"version": 1, "source": "test", "mtu_s": 3600,
           "energy_price_eur_per_mwh": [60.0] * 72}
    (tmp_path / "stale.json").write_text(json.dumps(
        doc | {"issued_at": now - 3 * 86_400, "start": start - 3 * 86_400}))
    (tmp_path / "broken.json").write_text("{\"version\": 1")
    for name, code, said in (("stale.json", 0, "gridtao: warning: "),
                             ("broken.json", 2, "gridtao: error: ")):
        path = _write(tmp_path, "gpus: {backend: sim, sim: {device: null}}\n"
                                f"planner: {{signals_file: {tmp_path / name}}}\n")
        assert cli.main(["--config", str(path), "check-config"]) == code
        err = capsys.readouterr().err
        assert err.startswith(said) and err.count("\n") == 1, err
        assert f"planner.signals_file: {tmp_path / name}: refused: " in err


def test_another_commands_file_is_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parent.parent / "configs" / "openadr.example.yaml"
    assert cli.main(["--config", str(example), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{example}: vtn: unknown key" in err
    assert "check it with `gridtao openadr --config FILE --check`" in err


def test_real_gpus_are_not_said_uncovered(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``backend: auto`` on a host with the driver runs on its real GPUs, whose number only
    the agent knows: no simulated GPU is named, in the cuts line or the GPUs line."""
    import gridtao.gpu

    monkeypatch.setattr(gridtao.gpu, "driver_present", lambda: True)
    path = _write(tmp_path, "gpus: {backend: auto, sim: {device: null, count: 8}}\n"
                            "control: {allocation: work-aware}\n"
                            "work: {sources: [{name: llm, url: 'http://127.0.0.1:9400/metrics', "
                            "kind: vllm, gpus: [0, 1, 2, 3]}]}\n")
    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "cuts      work-aware, 1 work source(s) on GPU(s) 0, 1, 2, 3\n" in out
    assert "gpus      backend auto\n" in out and "simulated" not in out


@pytest.mark.parametrize(("work", "said"), [
    ("", "work-aware asked, but work.sources lists no work: cuts will be split proportionally"),
    ("work: {sources: [{name: llm, url: 'http://127.0.0.1:9400/metrics', kind: vllm, "
     "gpus: [0, 1]}]}\n",
     "work-aware, 1 work source(s) on GPU(s) 0, 1; no source names simulated GPU(s) 2, 3: "
     "cuts will be split proportionally"),
    ("work: {sources: [{name: llm, url: 'http://127.0.0.1:9400/metrics', kind: vllm, "
     "gpus: [0, 1, 2, 3]}]}\n", "work-aware, 1 work source(s) on GPU(s) 0, 1, 2, 3\n"),
])
def test_the_summary_says_how_a_cut_will_be_split(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], work: str, said: str) -> None:
    path = _write(tmp_path, "gpus: {backend: sim, sim: {device: null, count: 4}}\n"
                            "control: {allocation: work-aware}\n" + work)
    assert cli.main(["--config", str(path), "check-config"]) == 0
    assert f"cuts      {said}" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "needle"), [
    ("auth: {mode: ed25519, keys: [{kid: a, file: missing.pem, topics: [dispatch]}]}\n",
     "auth.keys[0].file (kid 'a')"),
    ("audit: {path: x.jsonl}\njournal: {path: x.jsonl}\n", "journal.path"),
    ("gpus: {backend: sim, sim: {workload: trace, trace_csv: /dev/zero}}\n",
     "gpus.sim.trace_csv: /dev/zero: cannot read: not a regular file"),
    ("planner: {signals_file: nowhere.json}\n", "planner.signals_file"),
    ("mqtt: {tls: {enabled: true, ca_file: missing-ca.pem}}\n", "mqtt.tls.ca_file"),
    ("gpus: {backend: sim, sim: {device: null, count: 4}}\n"
     "tracker: {priorities: [{gpus: [99], floor_w: 300}]}\n",
     "tracker.priorities[0].gpus[0]: no GPU 99 on this node (its GPUs: 0-3)"),
    ("gpus: {backend: sim, sim: {device: null, count: 4}}\n"
     "tracker: {priorities: [{gpus: [1], floor_w: 100000}]}\n", "tracker.priorities[0]"),
])
def test_a_bad_file_is_one_line_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    assert cli.main(["--config", str(path), "check-config"]) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("gridtao: error:")]
    assert len(err) == 1 and str(path) in err[0] and needle in err[0], captured.err
    assert captured.out == ""


def test_a_signing_key_that_is_a_fifo_is_refused_without_blocking(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    os.mkfifo(tmp_path / "k1.pub")
    path = _write(tmp_path, "auth: {mode: hmac, keys: [{kid: k1, file: k1.pub, "
                            "topics: [dispatch]}]}\n")
    assert cli.main(["--config", str(path), "check-config"]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_a_file_name_with_a_newline_stays_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "site\nnode.yaml"
    bad.write_text("gpus: {backend: 3}\n")
    assert cli.main(["--config", str(bad), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "site\\nnode.yaml: gpus.backend" in err, err
    good = tmp_path / "ok\tnode.yaml"
    good.write_text("gpus: {backend: sim, sim: {device: null, count: 2}}\n")
    assert cli.main(["--config", str(good), "check-config"]) == 0
    assert capsys.readouterr().out.startswith("ok: " + str(good).replace("\t", "\\t") + "\n")


def test_the_machines_simulated_device_made_with_other_settings_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gridtao.clock import MonotonicClock
    from gridtao.config.agent import SimConfig
    from gridtao.config.paths import sim_device_path
    from gridtao.gpu.sim.nvml import SimNvml

    made = SimNvml.from_config(SimConfig(count=8), MonotonicClock(),
                               device_path=sim_device_path("default"))
    try:
        path = _write(tmp_path, "gpus: {backend: sim, sim: {count: 4}}\n")
        for command in (["check-config"], ["gpus"]):
            assert cli.main(["--config", str(path), *command]) == 2, command
            captured = capsys.readouterr()
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1, captured.err
            assert lines[0].startswith(f"gridtao: error: {path}: gpus.sim.count:"), lines
            assert "created with 8" in lines[0]
        same = _write(tmp_path, "gpus: {backend: sim, sim: {count: 8}}\n")
        assert cli.main(["--config", str(same), "check-config"]) == 0
    finally:
        if made.device is not None:
            made.device.close()


def test_a_state_folder_the_agent_cannot_write_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        unwritable: Callable[[Path], None]) -> None:
    """A read-only file system under the state folder (the check asks the kernel, as root
    too: ``access`` says EROFS whoever asks; here it is made to say so for one folder)."""
    state = tmp_path / "state"
    state.mkdir()
    unwritable(state)
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    path = _write(tmp_path, "gpus: {backend: sim, sim: {device: null}}\n")
    assert cli.main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"audit.path: {state}/" in err
    assert f"cannot write there ({state} is read-only" in err
    assert list(state.iterdir()) == []


def test_the_site_coordinators_signing_key_is_checked_and_its_settings_said(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gridtao site` refuses to start on a missing signing key: check-config says so first,
    and its summary says what the site part of the file sets up."""
    text = ("gpus: {backend: sim, sim: {device: null}}\n"
            "site: {id: s1, nodes: [n1, n2], signing: {mode: hmac, kid: site, file: %s}}\n")
    path = _write(tmp_path, text % (tmp_path / "missing.key"))
    assert cli.main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "site.signing.file: " in err and "missing.key" in err
    assert cli.main(["keygen", "--alg", "hmac", "--out", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    path = _write(tmp_path, text % (tmp_path / "k.hmac"))
    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "site      for gridtao site: id s1, 2 node(s) expected, signs as 'site' (hmac)" in out


def test_triggers_no_key_may_sign_frequency_for_are_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Signed mode with every key kept to dispatch: each frequency sample would be refused, so
    the default triggers could never fire; check-config says so (and the agent starts)."""
    assert cli.main(["keygen", "--alg", "hmac", "--out", str(tmp_path / "agg")]) == 0
    capsys.readouterr()
    def text(topics: str) -> str:
        key = f"{{kid: agg, file: {tmp_path / 'agg.hmac'}, topics: [{topics}]}}"
        return ("gpus: {backend: sim, sim: {device: null}}\n"
                f"auth: {{mode: hmac, keys: [{key}]}}\n")

    path = _write(tmp_path, text("dispatch"))
    assert cli.main(["--config", str(path), "check-config"]) == 0
    err = capsys.readouterr().err
    assert "no key may sign the frequency topic" in err and "safety.triggers" in err
    path = _write(tmp_path, text("dispatch, frequency"))
    assert cli.main(["--config", str(path), "check-config"]) == 0
    assert "frequency topic" not in capsys.readouterr().err


def test_a_node_file_without_a_site_section_says_nothing_of_the_site(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A node's own file has no `site:` section: the summary has no site line (it said what
    `gridtao site` would run with the defaults, which no operator asked about)."""
    path = _write(tmp_path, "gpus: {backend: sim, sim: {device: null}}\n")
    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "gridtao site" not in out
