"""The packaging is checked like code: the systemd unit by systemd itself, the Kubernetes manifests
against the API schemas (kubernetes-validate) and against the daemon's own config loader, and the
Dockerfile structurally (no container engine here)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from router.config import Config, KafkaConfig, load_config_data
from router.delivery.kafka_queue import KafkaQueue
from router.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "router.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "router.env.example"
K8S = ROOT / "deploy" / "kubernetes"
K8S_KAFKA_QUEUE = ROOT / "deploy" / "kubernetes-kafka-queue"
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
ROUTER_SCRIPT = Path(sys.executable).with_name("router")


# -- systemd ----------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections to keys to every value given (systemd allows repeating a key)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[current][key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def _one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit[section][key]
    assert values, f"{section}.{key} is not set"
    return values[-1]


def _verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package `systemd`; scripts/setup installs it)")
    copy = tmp_path / "router.service"
    # verify requires ExecStart's binary to exist; point it at the router installed in this venv.
    copy.write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={ROUTER_SCRIPT}", text))
    return subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(copy)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    assert ROUTER_SCRIPT.exists()
    result = _verify(tmp_path, UNIT.read_text())
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "router.service" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """Guards the test above: verify only warns on unknown keys, so warnings must be looked at."""
    result = _verify(tmp_path, UNIT.read_text().replace("KillMode=mixed", "KillMode=mixed\nKilMode=mixed"))
    assert "Unknown key" in result.stderr and "KilMode" in result.stderr


def test_unit_is_notify_with_a_progress_watchdog(unit: dict[str, dict[str, list[str]]]) -> None:
    assert _one(unit, "Type") == "notify"
    assert _one(unit, "NotifyAccess") == "main"  # workers may not speak for the daemon
    assert _one(unit, "WatchdogSec") == "60"
    assert _one(unit, "Restart") == "on-failure"
    assert _one(unit, "RestartPreventExitStatus") == "2"  # a bad config does not restart-loop
    assert shlex.split(_one(unit, "ExecStart")) == ["/opt/router/.venv/bin/router", "run"]
    assert "ROUTER_CONFIG=/etc/router/router.yaml" in unit["Service"]["Environment"]
    assert _one(unit, "EnvironmentFile") == "-/etc/router/router.env"
    assert _one(unit, "StateDirectory") == "router"
    assert _one(unit, "WorkingDirectory") == "/var/lib/router"
    assert _one(unit, "User") == "router" and _one(unit, "DynamicUser") == "yes"
    assert _one(unit, "WantedBy", "Install") == "multi-user.target"


def test_unit_stops_gracefully_after_the_drain(unit: dict[str, dict[str, list[str]]]) -> None:
    assert _one(unit, "KillMode") == "mixed"  # SIGTERM to the daemon, which stops its own workers
    assert int(_one(unit, "TimeoutStopSec")) > Config().shutdown_timeout_seconds + 15


def test_unit_bounds_memory_without_stopping_on_a_handler_oom(unit: dict[str, dict[str, list[str]]]) -> None:
    assert _one(unit, "MemoryMax").endswith(("G", "M"))
    # A worker the kernel OOM-kills costs one invocation; OOMPolicy=stop would take the service down.
    assert _one(unit, "OOMPolicy") == "continue"


def test_unit_hardening_still_lets_workers_fork_and_exec(unit: dict[str, dict[str, list[str]]]) -> None:
    for key, value in {
        "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "LockPersonality": "yes",
        "RestrictSUIDSGID": "yes", "RestrictNamespaces": "yes", "CapabilityBoundingSet": "",
    }.items():
        assert _one(unit, key) == value, key
    assert set(_one(unit, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # The pool forks/execs Python workers and handlers may need W+X pages (ctypes, cffi, JITs).
    assert "MemoryDenyWriteExecute" not in unit["Service"]
    filters = unit["Service"]["SystemCallFilter"]
    allowed = [f for f in filters if not f.startswith("~")]
    denied = " ".join(f[1:] for f in filters if f.startswith("~")).split()
    assert allowed == ["@system-service"]  # includes @process (fork, clone, execve) and @resources
    assert not {"@process", "@resources", "@signal", "@ipc", "@network-io"} & set(denied)


def test_env_example_is_an_environment_file_without_secrets() -> None:
    names = []
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            line = line.lstrip("#").strip()
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line):
                continue  # prose
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(\S*)", line)
        assert match, f"not KEY=value: {raw!r}"
        names.append(match.group(1))
        value = match.group(2)
        if any(part in match.group(1) for part in ("PASSWORD", "TOKEN", "SECRET", "ACCESS_KEY")):
            assert value.startswith("change-me"), f"{match.group(1)} must hold a placeholder"
    example_config = (ROOT / "config" / "router.example.yaml").read_text()
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", example_config))
    secrets = {n for n in referenced if re.search(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY", n)}
    assert secrets <= set(names), f"router.env.example misses {sorted(secrets - set(names))}"


# -- Kubernetes -------------------------------------------------------------------------------------


def load_manifests() -> dict[str, dict[str, Any]]:
    """kind -> resource, across deploy/kubernetes/*.yaml; a second resource of a kind (the headless
    Service) as kind/name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = doc["kind"] if doc["kind"] not in found else f"{doc['kind']}/{doc['metadata']['name']}"
                assert key not in found, f"two {key} documents"
                found[key] = doc
    return found


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return load_manifests()


@pytest.fixture(scope="module")
def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [only] = manifests["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return dict(only)


def _deployment_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"]}


def _router_config(manifests: dict[str, dict[str, Any]], container: dict[str, Any]) -> Config:
    """router.yaml from the ConfigMap, loaded with exactly the env the StatefulSet provides."""
    env = {}
    for name, entry in _deployment_env(container).items():
        env[name] = entry.get("value", f"from-{name.lower()}")
    if "KAFKA_SASL_MECHANISM" not in env:
        env.pop("KAFKA_SASL_USERNAME", None)
        env.pop("KAFKA_SASL_PASSWORD", None)
    return load_config_data(yaml.safe_load(manifests["ConfigMap"]["data"]["router.yaml"]), env)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_api_schema(version: str, manifests: dict[str, dict[str, Any]]) -> None:
    core = {k: v for k, v in manifests.items() if k not in ("Kustomization", "ScaledObject")}
    assert set(core) == {"ConfigMap", "Secret", "StatefulSet", "Service", "Service/router-peers",
                         "PodDisruptionBudget", "NetworkPolicy"}
    for kind, doc in core.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_statefulset_probes_security_and_storage(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    deployment = manifests["StatefulSet"]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    config = _router_config(manifests, container)
    state_mount = next(p for p in mounts if config.state_dir.is_relative_to(p))
    # The async queue must outlive the pod: state_dir is on the replica's own claim, kept on scale-down.
    claims = {c["metadata"]["name"]: c for c in deployment["spec"]["volumeClaimTemplates"]}
    assert mounts[state_mount] in claims and mounts[state_mount] not in volumes, "state_dir must be on a PVC"
    assert claims[mounts[state_mount]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deployment["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                                          "whenScaled": "Retain"}
    headless = manifests["Service/router-peers"]
    assert deployment["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    router_config = Path(_deployment_env(container)["ROUTER_CONFIG"]["value"])
    config_volume = volumes[mounts[str(router_config.parent)]]
    assert config_volume["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert config_volume["configMap"]["items"][0]["path"] == router_config.name


def test_drain_fits_in_the_grace_period(manifests: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    config = _router_config(manifests, container)
    grace = manifests["StatefulSet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= config.shutdown_timeout_seconds + 15


def test_configmap_config_is_valid_with_the_deployment_env(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    config = _router_config(manifests, container)  # raises ConfigError naming the field if not
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.http.port == ports["http"]
    assert not config.http.is_loopback and config.http.admin_token is not None
    assert config.mqtt is not None and config.mqtt.client_id == "router-from-hostname"
    hostname = _deployment_env(container)["HOSTNAME"]
    assert hostname["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert config.stream_mappings() and config.bucket_mappings()


def test_credentials_come_from_secret_refs(manifests: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    secret = manifests["Secret"]
    for name, entry in _deployment_env(container).items():
        if re.search(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY|USERNAME", name):
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], f"the example Secret lacks {ref['key']}"
    for key, value in secret["stringData"].items():
        assert value == "" or value.startswith("replace"), f"{key}: the example must hold no real secret"
    raw = manifests["ConfigMap"]["data"]["router.yaml"]
    assert not re.search(r"(password|token|secret_access_key):\s*[^$\s{]", raw), "a literal secret in router.yaml"


def test_service_pdb_and_labels_line_up(manifests: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    labels = manifests["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    service, pdb = manifests["Service"], manifests["PodDisruptionBudget"]
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                     manifests["StatefulSet"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    [port] = service["spec"]["ports"]
    assert str(port["port"]) == annotations["prometheus.io/port"] and port["targetPort"] == "http"
    assert pdb["spec"]["minAvailable"] < manifests["StatefulSet"]["spec"]["replicas"]


def test_network_policy_opens_the_http_port_and_the_brokers_only(manifests: dict[str, dict[str, Any]]) -> None:
    policy = manifests["NetworkPolicy"]["spec"]
    labels = manifests["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    [ingress] = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]  # the named containerPort
    assert "http" in {p["name"] for p in manifests["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 9092, 1883, 9000} <= egress_ports
    assert "networkpolicy.yaml" in manifests["Kustomization"]["resources"]


def test_kustomization_never_applies_the_example_secret(manifests: dict[str, dict[str, Any]]) -> None:
    resources = manifests["Kustomization"]["resources"]
    assert all((K8S / r).exists() for r in resources)
    assert "secret.example.yaml" not in resources and "keda-scaledobject.yaml" not in resources
    assert {"configmap.yaml", "statefulset.yaml", "service.yaml", "pdb.yaml"} <= set(resources)


def json_patch(doc: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 add and remove, the two operations the overlay uses (kustomize applies the same)."""
    doc = json.loads(json.dumps(doc))
    for operation in operations:
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if operation["op"] == "remove":
            del target[int(last) if isinstance(target, list) else last]
        elif operation["op"] == "add" and isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), operation["value"])
        elif operation["op"] == "add":
            target[last] = operation["value"]
        else:
            raise AssertionError(f"unsupported operation {operation['op']}")
    return doc


def kafka_queue_statefulset() -> dict[str, Any]:
    kustomization = yaml.safe_load((K8S_KAFKA_QUEUE / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../kubernetes"]
    [patch] = kustomization["patches"]
    assert patch["target"] == {"kind": "StatefulSet", "name": "router"}
    operations = yaml.safe_load((K8S_KAFKA_QUEUE / patch["path"]).read_text())
    patched: dict[str, Any] = json_patch(load_manifests()["StatefulSet"], operations)
    return patched


def kafka_queue_config() -> Config:
    manifests = load_manifests()
    statefulset = kafka_queue_statefulset()
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    return _router_config({**manifests, "StatefulSet": statefulset}, container)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kafka_queue_overlay_keeps_no_state_on_the_pod(version: str) -> None:
    statefulset = kafka_queue_statefulset()
    kubernetes_validate.validate(statefulset, version, strict=True)
    pod = statefulset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert "persistentVolumeClaimRetentionPolicy" not in statefulset["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config = kafka_queue_config()
    state_mount = next(p for p in mounts if config.state_dir.is_relative_to(p))
    assert "emptyDir" in volumes[mounts[state_mount]]
    assert config.async_queue == "kafka://router-async-queue" and config.kafka is not None
    # Where kubectl is installed, kustomize itself renders the overlay to the same StatefulSet.
    if version == KUBERNETES_VERSIONS[0] and shutil.which("kubectl"):
        rendered = subprocess.run(["kubectl", "kustomize", str(K8S_KAFKA_QUEUE)], capture_output=True, text=True,
                                  check=True, timeout=60).stdout
        [built] = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "StatefulSet"]
        assert built["spec"] == statefulset["spec"]
    # The base (SQLite) configuration leaves the queue in state_dir.
    base = load_manifests()
    [base_container] = base["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert _router_config(base, base_container).async_queue is None


def test_keda_example_scales_the_statefulset_on_offset_lag(manifests: dict[str, dict[str, Any]]) -> None:
    scaled = manifests["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == manifests["StatefulSet"]["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    triggers = {t["type"]: t["metadata"] for t in scaled["spec"]["triggers"]}
    assert "router_offset_lag" in triggers["prometheus"]["query"]
    assert b"# TYPE router_offset_lag gauge" in Metrics().render()
    # The Kafka queue's backlog is its consumer group's lag, on the topic the overlay configures.
    queue = KafkaQueue(KafkaConfig(), kafka_queue_config().async_queue_topic or "")
    assert (triggers["kafka"]["consumerGroup"], triggers["kafka"]["topic"]) == (queue.group_id, queue.topic)


# -- Dockerfile ------------------------------------------------------------------------------------

KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def test_the_image_lock_pins_every_dependency_within_pyprojects_ranges() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (ROOT / "deploy" / "image-requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["examples"]]
    for requirement in wanted:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in the lock"
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} but the lock has {version}"


def test_dockerfile_structure() -> None:
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    unknown = {k for k, _ in instructions} - KNOWN_INSTRUCTIONS
    assert not unknown, f"unknown instructions {unknown}"
    froms = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    assert instructions[0][0] == "FROM"
    images = {instructions[i][1].split()[0] for i in froms}
    [image] = images  # both stages on the same base
    name, _, digest = image.partition("@")
    assert name.startswith("python:3.11-slim"), image
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{image}: pin the base image by digest"
    final = instructions[froms[-1]:]
    users = [args for k, args in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as non-root"
    entrypoint = [args for k, args in final if k == "ENTRYPOINT"]
    # Exec form under an init: tini reaps orphaned grandchildren and hands SIGTERM to the daemon.
    assert entrypoint and json.loads(entrypoint[-1]) == ["tini", "--", "router", "run"]
    assert any(k == "RUN" and "apt-get install" in a and " tini" in a for k, a in final)
    assert any(k == "RUN" and "pip install -r image-requirements.lock" in a for k, a in instructions)
    assert any(k == "RUN" and "pip install --no-deps '.[examples]'" in a for k, a in instructions)
    for keyword, args in instructions:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    exposed = [a for k, a in final if k == "EXPOSE"]
    assert exposed == [str(Config().http.port)]
