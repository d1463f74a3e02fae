"""Deployment artefacts (deploy/): the systemd units as systemd reads and scores them, with the
agent run under the memory protection they ask for; the Kubernetes manifests validated offline
against Kubernetes' schemas, their configuration rendered and loaded as the pod would; the
container file read instruction by instruction and its package built from what it copies."""

from __future__ import annotations

import copy
import ctypes
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from agentproc import WAIT_S, status_wait, write_agent_config
from broker import MosquittoBroker

from gridtao.bench.floodsetup import AGENT_NICE
from gridtao.cli.main import build_parser
from gridtao.config.agent import load_config

# jsonschema ships no type information: used untyped, on purpose.
jsonschema: Any = importlib.import_module("jsonschema")
REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not found "
                                   "(Debian: apt-get install systemd); the units are unchecked")
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
Unit = dict[str, dict[str, list[str]]]


def read_unit(path: Path) -> Unit:
    """Section -> key -> values in order (systemd allows a key more than once)."""
    out: Unit = {}
    section = ""
    for raw in path.read_text("utf-8").replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def check_gridtao_argv(argv: list[str]) -> None:
    """``argv`` is a command line the gridtao CLI accepts (argparse exits on anything else)."""
    assert Path(argv[0]).name == "gridtao", argv
    build_parser().parse_args(argv[1:])


AGENT, SITE = (read_unit(DEPLOY / "systemd" / f"gridtao-{u}.service") for u in ("agent", "site"))
COMMON = {"NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
          "PrivateTmp": ["yes"], "Restart": ["always"],
          "ProtectKernelModules": ["yes"], "ProtectKernelTunables": ["yes"],
          "MemoryDenyWriteExecute": ["yes"], "RestrictNamespaces": ["yes"],
          "SystemCallArchitectures": ["native"], "SystemCallErrorNumber": ["EPERM"],
          "DevicePolicy": ["closed"], "User": ["root"], "LockPersonality": ["yes"]}


def test_the_units_run_gridtao_hardened() -> None:
    agent, site = AGENT["Service"], SITE["Service"]
    for service in (agent, site):
        assert {k: service.get(k) for k in COMMON} == COMMON
        assert 1 <= float(service["RestartSec"][0].rstrip("s")) <= 10
    # The agent reloads keys and credentials on SIGHUP; the coordinator reloads nothing.
    assert agent["ExecReload"] == ["/bin/kill -HUP $MAINPID"] and "ExecReload" not in site
    assert agent["ExecStart"] == ["/opt/gridtao/bin/gridtao run --config /etc/gridtao/agent.yaml"]
    assert site["ExecStart"] == ["/opt/gridtao/bin/gridtao site --config /etc/gridtao/site.yaml"]
    assert agent["StateDirectory"] == agent["RuntimeDirectory"] == ["gridtao"]
    assert agent["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"]
    # The trigger path is served first for the CPU, at the nice the flood bench measures.
    assert agent["Nice"] == [str(AGENT_NICE)] and agent["CPUWeight"] == ["1000"]
    assert site["CapabilityBoundingSet"] == site["AmbientCapabilities"] == [""]
    # NVML needs the NVIDIA devices and /proc/driver/nvidia; PrivateUsers would void the
    # capability on them.
    assert agent["PrivateDevices"] == ["no"] and "char-nvidia* rw" in agent["DeviceAllow"]
    assert not {"ProcSubset", "PrivateUsers"} & set(agent)
    assert site["PrivateDevices"] == ["yes"] and "DeviceAllow" not in site
    for service in (agent, site):
        check_gridtao_argv(shlex.split(service["ExecStart"][0]))


def installed_units(tmp: Path) -> list[Path]:
    """The units with ExecStart pointing at this environment's gridtao (verify needs it)."""
    exe = Path(sys.executable).parent / "gridtao"
    assert exe.exists(), f"{exe}: the gridtao entry point is not installed"
    out = []
    for name in ("gridtao-agent.service", "gridtao-site.service"):
        text = (DEPLOY / "systemd" / name).read_text("utf-8")
        (tmp / name).write_text(text.replace("/opt/gridtao/bin/gridtao", str(exe)), "utf-8")
        out.append(tmp / name)
    return out


@needs_systemd
def test_systemd_verifies_the_units_without_a_word(tmp_path: Path) -> None:
    units = installed_units(tmp_path)
    broken = tmp_path / "broken.service"  # the check hears a value systemd cannot parse
    broken.write_text(units[0].read_text("utf-8").replace("=strict", "=strikt"), "utf-8")
    for paths, quiet in ((units, True), ([broken], False)):
        run = subprocess.run([str(SYSTEMD_ANALYZE), "verify", *map(str, paths)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        said = [line for line in (run.stdout + run.stderr).splitlines() if ".service" in line]
        assert (run.returncode == 0 and not said) == quiet, said


@needs_systemd
def test_systemd_security_exposure_stays_low(tmp_path: Path) -> None:
    helps = subprocess.run([str(SYSTEMD_ANALYZE), "security", "--help"], capture_output=True,
                           text=True, timeout=30).stdout
    if "--offline" not in helps:
        pytest.skip("this systemd-analyze has no security --offline (systemd < 250)")
    limits = {"gridtao-agent.service": 2.5, "gridtao-site.service": 1.5}
    report = {}
    for unit in installed_units(tmp_path):
        out = subprocess.run([str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--no-pager",
                              unit.name], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path).stdout
        report[unit.name] = out
        m = re.search(rf"Overall exposure level for {unit.name}: (\d+\.\d)", out)
        assert m is not None, out[-2000:]
        assert float(m.group(1)) <= limits[unit.name], out
        for setting in ("NoNewPrivileges=", "ProtectSystem=", "MemoryDenyWriteExecute=",
                        "RestrictNamespaces=~user", "SystemCallFilter=~@privileged",
                        "CapabilityBoundingSet=~CAP_SYS_MODULE", "ProtectKernelModules="):
            assert re.search(rf"✓ {re.escape(setting)}\s", out), (unit.name, setting)
    # systemd reads the agent's device list as meant: the NVIDIA devices and the clock alone.
    devices = re.search(r"DeviceAllow=.*?: (.*?)\s{2,}", report["gridtao-agent.service"])
    assert devices is not None and set(devices.group(1).split()) == {
        "char-rtc:r", "/dev/nvidia-uvm:rw", "/dev/nvidiactl:rw", "char-nvidia*:rw"}


def test_the_agent_runs_with_memory_deny_write_execute(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes, emulated with the kernel's own flag (PR_SET_MDWE, Linux
    6.3+): no writable and executable memory for the agent and everything it loads."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    cfg = write_agent_config(tmp_path, mqtt_broker, "mdwe", prefix="gridtao/mdwe", gpus=2,
                             planner={"enabled": True})
    wrapper = ("import ctypes, os, sys\n"
               "libc = ctypes.CDLL(None, use_errno=True)\n"
               "assert libc.prctl(65, 1, 0, 0, 0) == 0 and libc.prctl(66, 0, 0, 0, 0) == 1\n"
               "os.execv(sys.executable, [sys.executable, '-m', 'gridtao', *sys.argv[1:]])\n")
    with open(tmp_path / "agent.log", "ab") as log, \
            mqtt_broker.subscriber("gridtao/mdwe/nodes/mdwe/#") as sub:
        agent = subprocess.Popen([sys.executable, "-c", wrapper, "--config", str(cfg), "run"],
                                 cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            status_wait(sub, lambda p: p.get("online") is True, "the agent's status")
            status_wait(sub, lambda p: "offers_w" in p, "the planner's first round")
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(WAIT_S)
    assert code == 0, (tmp_path / "agent.log").read_text("utf-8")[-3000:]


# ---------------------------------------------------------------- Kubernetes

KUBE = DEPLOY / "kubernetes"
SERVICE_MONITOR = {  # the fields these ServiceMonitors use (monitoring.coreos.com/v1 CRD)
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["selector", "endpoints"],
                 "additionalProperties": False, "properties": {
            "selector": {"type": "object", "required": ["matchLabels"],
                         "additionalProperties": False, "properties": {"matchLabels": {
                             "type": "object", "additionalProperties": {"type": "string"}}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["port"], "additionalProperties": False,
                "properties": {
                    "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                    "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                    "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                    "relabelings": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "sourceLabels": {"type": "array", "items": {"type": "string"}},
                            "targetLabel": {"type": "string"}, "action": {"type": "string"}}}},
                }}}}}}}


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, from every file the kustomization lists."""
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text("utf-8"))
    files = sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files, "a manifest the kustomization omits"
    return {(d["kind"], d["metadata"]["name"]): d for f in files
            for d in yaml.safe_load_all((KUBE / f).read_text("utf-8"))}


def validate(resource: dict[str, Any]) -> None:
    if resource["kind"] == "ServiceMonitor":
        jsonschema.validate(resource, SERVICE_MONITOR)
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_manifests_are_valid_kubernetes() -> None:
    resources = manifests()
    for resource in resources.values():
        validate(resource)
    daemonset = copy.deepcopy(resources["DaemonSet", "gridtao-agent"])
    daemonset["spec"]["template"]["spec"]["containers"][0]["capabilites"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(daemonset)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not found: kustomize "
                    "build unchecked (the files it lists are checked one by one)")
def test_kustomize_builds_the_set() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    docs = list(yaml.safe_load_all(built))
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == set(manifests())
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gridtao"
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "gridtao"


def pod_config(pod: dict[str, Any], container: dict[str, Any], tmp: Path,
               configmap: dict[str, Any]) -> Path:
    """The configuration file ``container`` reads, as the pod's init containers leave it: each
    volume a folder, the ConfigMap's files in its own, the init commands run for real."""
    mounts = {v["name"]: tmp / v["name"] for v in pod["volumes"]}
    for folder in mounts.values():
        folder.mkdir()
    source = next(v["name"] for v in pod["volumes"]
                  if v.get("configMap", {}).get("name") == configmap["metadata"]["name"])
    for name, text in configmap["data"].items():
        (mounts[source] / name).write_text(text, "utf-8")

    def local(text: str, c: dict[str, Any]) -> str:
        """``text`` with each of ``c``'s mount paths read as its volume's folder (one pass)."""
        where = {m["mountPath"]: str(mounts[m["name"]]) for m in c["volumeMounts"]}
        paths = "|".join(map(re.escape, sorted(where, key=len, reverse=True)))
        return re.sub(rf"(?<![\w.-])({paths})(?=[/\s]|$)", lambda m: where[m.group(1)], text)

    for init in pod.get("initContainers", []):
        env = {"PATH": os.environ["PATH"]}
        for e in init["env"]:
            assert e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
            env[e["name"]] = e.get("value") or "gpu-node-07.example.net"
        subprocess.run([local(a, init) for a in init["command"]], env=env, check=True)
    argv = container["command"]
    check_gridtao_argv(argv)
    return Path(local(argv[argv.index("--config") + 1], container))


@pytest.mark.parametrize("workload,configmap", [(("DaemonSet", "gridtao-agent"), "gridtao-agent"),
                                               (("Deployment", "gridtao-site"), "gridtao-site")])
def test_each_pod_gets_a_configuration_gridtao_loads(
        workload: tuple[str, str], configmap: str, tmp_path: Path) -> None:
    resources = manifests()
    pod = resources[workload]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = load_config(pod_config(pod, container, tmp_path, resources["ConfigMap", configmap]))
    port = container["ports"][0]
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", port["containerPort"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": port["name"]}
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    key_dirs = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in secrets]
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"] in secrets)
    assert all(s["defaultMode"] == 0o400 for s in secrets.values())
    files = [k.file for k in config.auth.keys] + [config.mqtt.tls.ca_file or ""]
    files += [config.site.signing.file or ""] if workload[0] == "Deployment" else []
    assert all(any(f.startswith(d + "/") for d in key_dirs) for f in files), files
    labels = resources[workload]["spec"]["template"]["metadata"]["labels"]
    service = next(s for (k, _), s in resources.items()
                   if k == "Service" and s["spec"]["selector"].items() <= labels.items())
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    monitor = next(m for (k, _), m in resources.items() if k == "ServiceMonitor" and
                   m["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
                       "labels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    security = container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"]
    for c in pod["containers"] + pod.get("initContainers", []):  # no GPU taken from workloads
        asked = {**c["resources"].get("requests", {}), **c["resources"].get("limits", {})}
        assert not [r for r in asked if r.startswith("nvidia.com/")], c["name"]
    if workload[0] == "DaemonSet":
        assert config.mqtt.node_id == "gpu-node-07.example.net"
        assert security["capabilities"]["add"] == ["SYS_ADMIN"]
        assert pod["priorityClassName"] == "system-node-critical"
        env = {e["name"]: e for e in container["env"]}
        assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        state = next(v for v in pod["volumes"] if v["name"] == "state")
        assert state["hostPath"]["path"] == env["STATE_DIRECTORY"]["value"] == "/var/lib/gridtao"
    else:
        assert "add" not in security["capabilities"]
        assert resources[workload]["spec"]["replicas"] == 1
        assert resources[workload]["spec"]["strategy"] == {"type": "Recreate"}


# ---------------------------------------------------------------- container image

INSTRUCTIONS = {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "LABEL", "USER", "EXPOSE",
                "ENTRYPOINT", "CMD", "HEALTHCHECK", "STOPSIGNAL", "VOLUME", "SHELL", "ADD"}


def test_the_container_file_builds_the_package_from_what_it_copies(tmp_path: Path) -> None:
    text = (DEPLOY / "container" / "Containerfile").read_text("utf-8")
    lines = [ln for ln in text.replace("\\\n", " ").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    steps = [(ln.split(None, 1)[0], ln.split(None, 1)[1]) for ln in lines]
    assert {op for op, _ in steps} <= INSTRUCTIONS and steps[0][0] in ("ARG", "FROM")
    copies = [arg.split()[:-1] for op, arg in steps if op == "COPY" and "--from" not in arg]
    sources = [src for srcs in copies for src in srcs]
    ignore = (DEPLOY / "container" / "Containerfile.dockerignore").read_text("utf-8")
    for src in sources:
        assert (REPO / src).exists() and f"!{src}" in ignore.split(), src
    context = tmp_path / "context"  # exactly what the build stage has
    for src in sources:
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, context / src, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (context / src).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / src, context / src)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), "."],
                         cwd=context, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    wheel = zipfile.ZipFile(next((tmp_path / "wheel").glob("gridtao-*.whl")))
    names = wheel.namelist()
    assert {"gridtao/safety/island.py", "gridtao/cli/main.py"} <= set(names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gridtao = gridtao.cli.main:main" in wheel.read(entry).decode()
    argv = [*json.loads(dict(steps)["ENTRYPOINT"]), *json.loads(dict(steps)["CMD"])]
    check_gridtao_argv(argv)
    daemonset = manifests()["DaemonSet", "gridtao-agent"]["spec"]["template"]["spec"]
    assert argv == daemonset["containers"][0]["command"]
    assert argv[1:] == shlex.split(AGENT["Service"]["ExecStart"][0])[1:]


def test_the_systemd_example_configuration_loads_with_production_defaults() -> None:
    config = load_config(DEPLOY / "systemd" / "agent.yaml")
    assert config.gpus.backend == "nvml" and config.gpus.require_actuation
    assert config.auth.mode == "ed25519" and config.mqtt.tls.enabled
    assert {k.kid for k in config.auth.keys} == {"aggregator-1", "meter-1"}
    assert [p.kind for p in config.products] == ["ffr"] and config.safety.triggers == ()
    assert config.metrics.host == "127.0.0.1"


def test_the_daemonset_and_the_systemd_unit_enrol_a_node_alike(tmp_path: Path) -> None:
    """Two starting points for the same production node: whichever an operator deploys with,
    the node cuts for the same products, at the same ramp-out, down to the same floor."""
    resources = manifests()
    pod = resources["DaemonSet", "gridtao-agent"]["spec"]["template"]["spec"]
    pod_file = pod_config(pod, pod["containers"][0], tmp_path,
                          resources["ConfigMap", "gridtao-agent"])
    kube, unit = load_config(pod_file), load_config(DEPLOY / "systemd" / "agent.yaml")
    for section in ("products", "safety", "limits"):
        assert getattr(kube, section) == getattr(unit, section), section
