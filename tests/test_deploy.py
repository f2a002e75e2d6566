"""Offline checks of `deploy/`: nothing is built, started or applied.

- Kubernetes: every manifest, and each overlay as rendered, validates against the Kubernetes
  JSON schemas (`kubernetes-validate`, strict: unknown fields fail) and follows the pod policy
  (non-root, read-only, probes on the right ports, resources, budgets, scaling bounds).
  No pure-Python kustomize exists, so `kustomize_build` renders the subset of kustomize the
  overlays use, and refuses any field outside it rather than ignoring it.
- Compose: its structure (health checks, start order, volumes, the Redis settings that matter).
- Configuration: every `METER_*` variable shipped is a setting, and the values validate.
- Commands: every `meter ...` command named by the Dockerfile, compose file and manifests answers
  `--help` with exit code 0.
- Monitoring: the dashboard and alert rules use only metric names the code registers.

Each check is a function returning its problems; the tests assert there are none, and feed each
check a broken copy to show it can fail.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from meter.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = sorted(p for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
TARGETS = [BASE, *OVERLAYS]
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENV_FILE = DEPLOY / "meter.env"
DASHBOARD = DEPLOY / "grafana" / "meter.json"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yaml"

KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())
"""The oldest Kubernetes the manifests support, and the newest the validator knows."""

PLACEHOLDER = "change-me"
"""What the shipped example secrets contain; production refuses such an admin token."""

Doc = dict[str, Any]


def target_id(path: Path) -> str:
    return str(path.relative_to(KUBERNETES))


def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def key(obj: Doc) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


# -- a renderer for the kustomize subset the overlays use -----------------------------------------


class KustomizeError(Exception):
    pass


KUSTOMIZE_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "images", "patches"})
CLUSTER_SCOPED = frozenset({"Namespace"})


def kustomize_build(directory: Path) -> list[Doc]:
    """Render `directory/kustomization.yaml`: resources (files and directories), strategic-merge
    patches given by `path` (lists of named items merge by name; `$patch: delete` removes the
    object), `images` and `namespace`. Anything else is an error."""
    kustomization_file = directory / "kustomization.yaml"
    if not kustomization_file.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    kustomization = yaml.safe_load(kustomization_file.read_text())
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    if unknown:
        raise KustomizeError(f"{kustomization_file}: fields this renderer lacks: {sorted(unknown)}")
    objects: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects += kustomize_build(path)
        elif path.is_file():
            objects += load_docs(path)
        else:
            raise KustomizeError(f"{kustomization_file}: resource {entry} does not exist")
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{kustomization_file}: only `path` patches: {patch}")
        path = directory / patch["path"]
        if not path.is_file():
            raise KustomizeError(f"{kustomization_file}: patch {patch['path']} does not exist")
        for doc in load_docs(path):
            objects = apply_patch(objects, doc, path)
    for image in kustomization.get("images", []):
        set_image(objects, image)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def apply_patch(objects: list[Doc], patch: Doc, source: Path) -> list[Doc]:
    matches = [i for i, obj in enumerate(objects) if key(obj) == key(patch)]
    if not matches:
        raise KustomizeError(f"{source}: patch target {key(patch)} is not among the resources")
    i = matches[0]
    if patch.get("$patch") == "delete":
        return objects[:i] + objects[i + 1 :]
    return [*objects[:i], merge(objects[i], patch), *objects[i + 1 :]]


def merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            if value is None:
                merged.pop(name, None)
            elif name in merged:
                merged[name] = merge(merged[name], value)
            else:
                merged[name] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        by_name = {item["name"]: item for item in base}
        for item in patch:
            by_name[item["name"]] = merge(by_name.get(item["name"], {}), item)
        return list(by_name.values())
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def set_image(objects: list[Doc], image: Doc) -> None:
    for _, container in containers(objects):
        name, _, tag = container["image"].partition(":")
        if name == image["name"]:
            container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


# -- what the manifests hold ----------------------------------------------------------------------


def pod_templates(objects: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) of every Deployment and Job."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, obj["spec"]["template"]


def containers(objects: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for workload, template in pod_templates(objects):
        for container in template["spec"].get("containers", []):
            yield workload, container


def find(objects: list[Doc], kind: str) -> list[Doc]:
    return [obj for obj in objects if obj["kind"] == kind]


def config_data(objects: list[Doc]) -> dict[str, str]:
    """The data of every ConfigMap together."""
    data: dict[str, str] = {}
    for config_map in find(objects, "ConfigMap"):
        data.update(config_map.get("data", {}))
    return data


def role(container: Doc) -> str | None:
    """The meter command a container runs (`api`, `consume`, ...), or None."""
    argv = [*container.get("command", []), *container.get("args", [])]
    return argv[1] if len(argv) > 1 and argv[0] == "meter" else None


def dockerfile_uid() -> int:
    users = [line.split()[1] for line in dockerfile_lines() if line.startswith("USER ")]
    return int(users[-1].split(":")[0])


# -- checks of the manifests ----------------------------------------------------------------------


def schema_problems(objects: list[Doc], version: str) -> list[str]:
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{key(obj)} at {path or '/'}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{key(obj)}: {exc.message}")
    return problems


EXPECTED_PROBES = {
    "api": ("/healthz", "/readyz", "METER_API_PORT"),
    "consume": ("/livez", "/readyz", "METER_METRICS_PORT"),
    "scheduler": ("/livez", "/readyz", "METER_METRICS_PORT"),
}
"""Liveness path, readiness path and the setting naming the port, per long-running role."""


def pod_problems(
    objects: list[Doc], uid: int, out_of_band: frozenset[tuple[str, str]] = frozenset()
) -> list[str]:
    """Security context, resources, /tmp, configuration references (to objects rendered, or
    `out_of_band`: created apart), probes, scrape annotations."""
    problems = []
    config = config_data(objects)
    names = {key(obj) for obj in objects} | out_of_band
    for workload, template in pod_templates(objects):
        where = f"{workload['kind']} {workload['metadata']['name']}"
        spec = template["spec"]
        pod_security = spec.get("securityContext", {})
        if pod_security.get("runAsNonRoot") is not True:
            problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
        if pod_security.get("runAsUser") != uid:
            problems.append(f"{where}: runAsUser is not the image's uid {uid}")
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        annotations = template.get("metadata", {}).get("annotations", {})
        for container in spec["containers"]:
            where_c = f"{where} container {container['name']}"
            security = container.get("securityContext", {})
            for field, wanted in (
                ("readOnlyRootFilesystem", True),
                ("allowPrivilegeEscalation", False),
                ("runAsNonRoot", True),
            ):
                if security.get(field) is not wanted:
                    problems.append(f"{where_c}: securityContext.{field} is not {wanted}")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where_c}: capabilities do not drop ALL")
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        problems.append(f"{where_c}: no {kind}.{resource}")
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            if mounts.get("/tmp") not in empty_dirs:
                problems.append(f"{where_c}: /tmp is not an emptyDir")
            for source in container.get("envFrom", []):
                for ref, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if ref in source and (kind, source[ref]["name"]) not in names:
                        problems.append(f"{where_c}: {kind} {source[ref]['name']} not found")
            name = role(container)
            if name is None:
                problems.append(f"{where_c}: does not run a meter command")
            elif workload["kind"] == "Deployment":
                problems += probe_problems(where_c, container, EXPECTED_PROBES.get(name), config)
                problems += scrape_problems(where_c, container, annotations)
    return problems


def container_port(container: Doc, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    by_name = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    return by_name.get(port)


def probe_problems(
    where: str, container: Doc, expected: tuple[str, str, str] | None, config: dict[str, str]
) -> list[str]:
    if expected is None:
        return [f"{where}: a Deployment of a role without expected probes"]
    live, ready, port_setting = expected
    port = int(config.get(port_setting, "0"))
    problems = []
    for probe, path in (("livenessProbe", live), ("readinessProbe", ready)):
        http = container.get(probe, {}).get("httpGet")
        if http is None:
            problems.append(f"{where}: no HTTP {probe}")
            continue
        if http.get("path") != path:
            problems.append(f"{where}: {probe} path {http.get('path')}, expected {path}")
        if container_port(container, http.get("port", 0)) != port:
            problems.append(f"{where}: {probe} port is not {port_setting}={port}")
    return problems


def scrape_problems(where: str, container: Doc, annotations: dict[str, str]) -> list[str]:
    if annotations.get("prometheus.io/scrape") != "true":
        return [f"{where}: no prometheus.io/scrape annotation"]
    ports = {p["containerPort"] for p in container.get("ports", [])}
    if int(annotations.get("prometheus.io/port", "0")) not in ports:
        return [f"{where}: prometheus.io/port is not a port of the container"]
    if annotations.get("prometheus.io/path") != "/metrics":
        return [f"{where}: prometheus.io/path is not /metrics"]
    return []


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def topology_problems(objects: list[Doc]) -> list[str]:
    """Replica counts, the API's autoscaler, a budget per Deployment, Services that select pods."""
    problems = []
    deployments = {obj["metadata"]["name"]: obj for obj in find(objects, "Deployment")}
    by_role = {role(c): w for w, c in containers(objects) if w["kind"] == "Deployment"}
    partitions = int(config_data(objects).get("METER_TOPIC_PARTITIONS", "4"))
    for name in ("api", "consume", "scheduler"):
        if name not in by_role:
            problems.append(f"no Deployment runs `meter {name}`")
    if not any(role(c) == "migrate" for w, c in containers(objects) if w["kind"] == "Job"):
        problems.append("no Job runs `meter migrate`")
    if "consume" in by_role and by_role["consume"]["spec"].get("replicas", 1) > partitions:
        problems.append(f"meter consume: more replicas than METER_TOPIC_PARTITIONS={partitions}")
    if "scheduler" in by_role and by_role["scheduler"]["spec"].get("replicas", 1) != 2:
        problems.append("meter scheduler: not two replicas (one active, one standing by)")
    autoscalers = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa
        for hpa in find(objects, "HorizontalPodAutoscaler")
        if hpa["apiVersion"] == "autoscaling/v2"
    }
    for target in autoscalers:
        if target not in deployments:
            problems.append(f"HorizontalPodAutoscaler targets missing Deployment {target}")
    api = by_role.get("api")
    if api is not None:
        hpa = autoscalers.get(api["metadata"]["name"])
        if hpa is None:
            problems.append("meter api: no autoscaling/v2 HorizontalPodAutoscaler")
        elif hpa["spec"].get("minReplicas", 1) < 2:
            problems.append("meter api: the autoscaler allows fewer than 2 replicas")
    budgets = find(objects, "PodDisruptionBudget")
    services = find(objects, "Service")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not selects(deployment["spec"]["selector"]["matchLabels"], labels):
            problems.append(f"Deployment {name}: its selector does not select its pods")
        if not any(selects(b["spec"]["selector"]["matchLabels"], labels) for b in budgets):
            problems.append(f"Deployment {name}: no PodDisruptionBudget")
    pod_labels = [t["metadata"]["labels"] for _, t in pod_templates(objects)]
    for service in services:
        if not any(selects(service["spec"].get("selector", {}), lab) for lab in pod_labels):
            problems.append(f"Service {service['metadata']['name']} selects no pod")
    return problems


@pytest.fixture(scope="module", params=TARGETS, ids=target_id)
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    return kustomize_build(request.param)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(
    rendered: list[Doc], version: str
) -> None:
    assert rendered
    assert schema_problems(rendered, version) == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_file_validates_alone(version: str) -> None:
    """Each file of a base is a complete object (patches of overlays are checked rendered)."""
    files = [p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"]
    assert files
    for path in files:
        assert schema_problems(load_docs(path), version) == [], path.name


def test_schema_check_fails_on_a_misspelt_field() -> None:
    objects = kustomize_build(BASE)
    container = next(c for w, c in containers(objects) if w["kind"] == "Deployment")
    container["readinesProbe"] = container.pop("readinessProbe")
    assert schema_problems(objects, KUBERNETES_VERSIONS[-1])


def test_pods_are_non_root_read_only_probed_and_scraped(rendered: list[Doc]) -> None:
    # An overlay may drop the base's placeholder Secret: the real one is created apart.
    dropped = {key(obj) for obj in kustomize_build(BASE)} - {key(obj) for obj in rendered}
    secrets = frozenset(k for k in dropped if k[0] == "Secret")
    assert pod_problems(rendered, dockerfile_uid(), secrets) == []


def test_pod_check_fails_on_a_writable_root_or_a_wrong_probe_port() -> None:
    objects = kustomize_build(BASE)
    for _, container in containers(objects):
        if role(container) == "consume":
            container["securityContext"]["readOnlyRootFilesystem"] = False
            container["livenessProbe"]["httpGet"]["port"] = 8080
    problems = pod_problems(objects, dockerfile_uid())
    assert any("readOnlyRootFilesystem" in p for p in problems)
    assert any("livenessProbe port" in p for p in problems)
    assert pod_problems(kustomize_build(BASE), 0)


def test_roles_scale_within_their_bounds(rendered: list[Doc]) -> None:
    assert topology_problems(rendered) == []


def test_topology_check_fails_on_more_consumers_than_partitions() -> None:
    objects = kustomize_build(BASE)
    for workload, container in containers(objects):
        if role(container) == "consume":
            workload["spec"]["replicas"] = 1000
        if role(container) == "scheduler":
            workload["spec"]["replicas"] = 1
    problems = topology_problems(objects)
    assert any("METER_TOPIC_PARTITIONS" in p for p in problems)
    assert any("two replicas" in p for p in problems)


def test_overlays_change_what_they_patch() -> None:
    base = {key(obj): obj for obj in kustomize_build(BASE)}
    for overlay in OVERLAYS:
        rendered = {key(obj): obj for obj in kustomize_build(overlay)}
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        for patch in kustomization.get("patches", []):
            for doc in load_docs(overlay / patch["path"]):
                if doc.get("$patch") == "delete":
                    assert key(doc) not in rendered
                else:
                    assert key(doc) in base
                    assert contains(rendered[key(doc)], doc), key(doc)
        namespace = kustomization.get("namespace")
        for obj in rendered.values():
            if obj["kind"] not in CLUSTER_SCOPED:
                assert obj["metadata"].get("namespace") == namespace
        for image in kustomization.get("images", []):
            for _, container in containers(list(rendered.values())):
                assert container["image"] == f"{image['newName']}:{image['newTag']}"


def contains(obj: Any, part: Any) -> bool:
    """Whether every value of `part` is in `obj` (named list items matched by name)."""
    if isinstance(part, dict):
        return isinstance(obj, dict) and all(
            name in obj and contains(obj[name], value) for name, value in part.items()
        )
    if isinstance(part, list) and _named(part):
        by_name = {item.get("name"): item for item in obj if isinstance(item, dict)}
        return all(contains(by_name.get(item["name"]), item) for item in part)
    return bool(obj == part)


def test_kustomize_references_must_exist(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(KustomizeError, match=r"missing\.yaml"):
        kustomize_build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{BASE}]\npatches: [{{path: p.yaml}}]\n"
    )
    with pytest.raises(KustomizeError, match=r"p\.yaml"):
        kustomize_build(tmp_path)
    (tmp_path / "p.yaml").write_text("kind: Deployment\nmetadata: {name: meter-nothing}\n")
    with pytest.raises(KustomizeError, match="meter-nothing"):
        kustomize_build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{BASE}]\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        kustomize_build(tmp_path)


# -- configuration --------------------------------------------------------------------------------

SETTING_VARIABLES = frozenset("METER_" + name.upper() for name in Settings.model_fields)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def config_problems(where: str, variables: dict[str, str]) -> list[str]:
    unknown = sorted(set(variables) - SETTING_VARIABLES)
    if unknown:
        return [f"{where}: not settings: {unknown}"]
    try:
        Settings(**{name.removeprefix("METER_").lower(): v for name, v in variables.items()})
    except ValueError as exc:
        return [f"{where}: {exc}"]
    return []


def shipped_configurations() -> dict[str, dict[str, str]]:
    configurations = {"meter.env": read_env_file(ENV_FILE)}
    for target in TARGETS:
        objects = kustomize_build(target)
        variables = config_data(objects)
        for secret in find(objects, "Secret"):
            variables.update(secret.get("stringData", {}))
        configurations[target_id(target)] = variables
    return configurations


def test_shipped_variables_are_settings_with_valid_values() -> None:
    for where, variables in shipped_configurations().items():
        assert variables.get("METER_ENV") == "production", where
        assert config_problems(where, variables) == []


def test_config_check_fails_on_a_misspelt_variable_or_a_bad_value() -> None:
    assert config_problems("x", {"METER_KAFKA_BOOTSTRAPS": "kafka:9092"})
    assert config_problems("x", {"METER_TOPIC_PARTITIONS": "0"})


def test_shipped_admin_tokens_are_placeholders() -> None:
    tokens = {
        where: variables["METER_ADMIN_TOKEN"]
        for where, variables in shipped_configurations().items()
        if "METER_ADMIN_TOKEN" in variables
    }
    assert "meter.env" in tokens
    assert all(PLACEHOLDER in token for token in tokens.values()), tokens


# -- compose --------------------------------------------------------------------------------------


def load_compose() -> Doc:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict)
    return compose


def is_one_shot(service: Doc) -> bool:
    return service.get("restart") == "no"


def compose_problems(compose: Doc) -> list[str]:
    problems = []
    services: dict[str, Doc] = compose.get("services", {})
    partitions = int(read_env_file(ENV_FILE).get("METER_TOPIC_PARTITIONS", "4"))
    roles = {}
    for name, service in services.items():
        command = service.get("command", [])
        if command[:1] == ["meter"]:
            roles[command[1]] = name
            env_files = service.get("env_file", [])
            env_files = [env_files] if isinstance(env_files, str) else env_files
            if not env_files or not all((COMPOSE.parent / f).is_file() for f in env_files):
                problems.append(f"{name}: no env_file, or it does not exist")
        if "restart" not in service:
            problems.append(f"{name}: no restart policy")
        check = service.get("healthcheck", {})
        healthy = bool(check.get("test")) and not check.get("disable")
        if not healthy and not is_one_shot(service):
            problems.append(f"{name}: no healthcheck (and not a one-shot)")
        depends_on = service.get("depends_on", {})
        if not isinstance(depends_on, dict):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for target, condition in depends_on.items():
            other = services.get(target)
            if other is None:
                problems.append(f"{name}: depends on missing service {target}")
                continue
            wanted = "service_completed_successfully" if is_one_shot(other) else "service_healthy"
            if condition.get("condition") != wanted:
                problems.append(f"{name}: depends on {target} without condition {wanted}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")) and source not in compose.get("volumes", {}):
                problems.append(f"{name}: volume {source} is not declared")
    for name in ("migrate", "api", "consume", "scheduler"):
        if name not in roles:
            problems.append(f"no service runs `meter {name}`")
    if "migrate" in roles and not is_one_shot(services[roles["migrate"]]):
        problems.append('meter migrate is not a one-shot (restart: "no")')
    for name in ("api", "consume", "scheduler"):
        waits_for = services[roles[name]].get("depends_on", {}) if name in roles else {}
        if name in roles and roles.get("migrate") not in waits_for:
            problems.append(f"meter {name} does not wait for the migrations")
    replicas = {n: services[s].get("deploy", {}).get("replicas", 1) for n, s in roles.items()}
    if replicas.get("scheduler") != 2:
        problems.append("meter scheduler: not two replicas")
    if replicas.get("consume", 1) > partitions:
        problems.append("meter consume: more replicas than partitions")
    redis = " ".join(str(a) for a in services.get("redis", {}).get("command", []))
    for setting in ("--maxmemory-policy noeviction", "--appendonly yes"):
        if setting not in redis:
            problems.append(f"redis: not started with {setting}")
    return problems


def test_compose_services_are_healthy_and_start_in_order() -> None:
    assert compose_problems(load_compose()) == []


def test_compose_check_fails_on_a_missing_healthcheck_or_condition() -> None:
    compose = load_compose()
    del compose["services"]["api"]["healthcheck"]
    compose["services"]["consume"]["depends_on"]["migrate"] = {"condition": "service_healthy"}
    compose["services"]["redis"]["command"] = ["redis-server"]
    problems = compose_problems(compose)
    assert any(p.startswith("api: no healthcheck") for p in problems)
    assert any(p.startswith("consume: depends on migrate") for p in problems)
    assert any("noeviction" in p for p in problems)


# -- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_lines(text: str | None = None) -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text() if text is None else text
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip()]


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    lines = dockerfile_lines(text)
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    if len(stages) < 2:
        return ["not multi-stage"]
    builder, runtime = lines[stages[0] : stages[-1]], lines[stages[-1] :]
    if not lines[stages[-1]].startswith("FROM python:3.11-slim"):
        problems.append("the runtime stage is not python:3.11-slim")
    if not any("pip wheel" in line for line in builder):
        problems.append("the builder stage builds no wheel")
    installs = [line for line in runtime if "pip install" in line]
    if not installs or any("[" in line or " -e " in line for line in installs):
        problems.append("the runtime stage does not install just the wheel")
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    if not users or not users[-1].split(":")[0].isdigit() or users[-1].split(":")[0] == "0":
        problems.append("no fixed non-root USER uid")
    exposed = {p for line in runtime if line.startswith("EXPOSE ") for p in line.split()[1:]}
    if not {"8080", "9100"} <= exposed:
        problems.append("does not EXPOSE 8080 9100")
    health = [line for line in runtime if line.startswith("HEALTHCHECK ")]
    if not health or "/healthz" not in health[0] or "urllib" not in health[0]:
        problems.append("no HEALTHCHECK of /healthz with urllib")
    env = " ".join(line for line in runtime if line.startswith("ENV "))
    for setting in ("METER_ENV=production", "METER_API_HOST=0.0.0.0"):
        if setting not in env.split():
            problems.append(f"no ENV {setting}")
    cmd = [json.loads(line[4:]) for line in runtime if line.startswith("CMD ")]
    if cmd[-1:] != [["meter", "api"]]:
        problems.append('CMD is not ["meter", "api"]')
    return problems


def test_dockerfile_builds_a_wheel_and_runs_it_unprivileged() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_dockerfile_check_fails_on_root_or_dev_extras() -> None:
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text.replace("USER 10001:10001", "USER root"))
    assert dockerfile_problems(text.replace("/wheels/meter-*.whl", "'/wheels/meter-*.whl[dev]'"))
    assert dockerfile_problems(text.replace("EXPOSE 8080 9100", "EXPOSE 8080"))


# -- meter commands -------------------------------------------------------------------------------


def meter_commands() -> set[tuple[str, ...]]:
    """Every `meter ...` command line the Dockerfile, compose file and manifests run, as the
    subcommand words (options dropped)."""
    argvs: list[list[str]] = []
    for line in dockerfile_lines():
        instruction, _, rest = line.partition(" ")
        if instruction in ("CMD", "ENTRYPOINT"):
            argvs.append(json.loads(rest) if rest.startswith("[") else shlex.split(rest))
    for service in load_compose()["services"].values():
        command = service.get("command")
        if command is not None:
            argvs.append(shlex.split(command) if isinstance(command, str) else command)
    for target in TARGETS:
        for _, container in containers(kustomize_build(target)):
            argvs.append([*container.get("command", []), *container.get("args", [])])
    commands = set()
    for argv in argvs:
        if argv and argv[0] == "meter":
            words = []
            for word in argv[1:]:
                if word.startswith("-"):
                    break
                words.append(word)
            commands.add(tuple(words))
    return commands


def meter_help(words: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / "meter"
    meter = str(executable) if executable.exists() else shutil.which("meter")
    assert meter is not None, "the meter console script is not installed"
    return subprocess.run(
        [meter, *words, "--help"], capture_output=True, text=True, timeout=60, check=False
    )


def test_deploy_names_every_role() -> None:
    assert {("api",), ("consume",), ("scheduler",), ("migrate",)} <= meter_commands()


@pytest.mark.parametrize("words", sorted(meter_commands()), ids=" ".join)
def test_every_command_deploy_runs_exists(words: tuple[str, ...]) -> None:
    result = meter_help(words)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: meter {' '.join(words)}")


def test_a_misspelt_command_fails_its_help() -> None:
    assert meter_help(("consumer",)).returncode != 0


# -- dashboard and alert rules --------------------------------------------------------------------


def registered_metrics() -> set[str]:
    """Every series name the code's registry can expose: the modules that register metrics
    (found by their `registry=REGISTRY`) are imported first."""
    for package in ("meter", "consumers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "registry=REGISTRY" in path.read_text():
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                importlib.import_module(module)
    from meter.metrics import REGISTRY

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "offset", "bool", "inf", "nan"}
)  # fmt: skip


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression selects (labels, functions, ranges, variables dropped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def dashboard_exprs(dashboard: Doc) -> list[str]:
    panels = list(dashboard.get("panels", []))
    for panel in dashboard.get("panels", []):
        panels += panel.get("panels", [])
    return [t["expr"] for p in panels if p.get("type") != "row" for t in p.get("targets", [])]


def dashboard_problems(dashboard: Doc, known: set[str]) -> list[str]:
    problems = []
    if not dashboard.get("uid") or not dashboard.get("title"):
        problems.append("dashboard without uid or title")
    for panel in dashboard.get("panels", []):
        if panel.get("type") != "row" and not panel.get("targets"):
            problems.append(f"panel {panel.get('title')}: no query")
    exprs = dashboard_exprs(dashboard)
    for expr in exprs:
        unknown = promql_metrics(expr) - known
        if unknown:
            problems.append(f"unknown metrics {sorted(unknown)} in {expr}")
    return problems


def rule_problems(rules: Doc, known: set[str]) -> list[str]:
    problems = []
    names = []
    for group in rules.get("groups", []):
        if not group.get("name") or not group.get("rules"):
            problems.append(f"group without name or rules: {group.get('name')}")
        for rule in group.get("rules", []):
            names.append(rule.get("alert"))
            if not rule.get("alert") or not rule.get("expr"):
                problems.append(f"rule without alert or expr: {rule}")
                continue
            if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                problems.append(f"{rule['alert']}: severity is not warning or critical")
            if not rule.get("annotations", {}).get("summary"):
                problems.append(f"{rule['alert']}: no summary")
            if rule["expr"].count("(") != rule["expr"].count(")"):
                problems.append(f"{rule['alert']}: unbalanced parentheses")
            metrics = promql_metrics(rule["expr"])
            if not metrics:
                problems.append(f"{rule['alert']}: selects no metric")
            if metrics - known:
                problems.append(f"{rule['alert']}: unknown metrics {sorted(metrics - known)}")
    if len(names) != len(set(names)):
        problems.append("alert names repeat")
    return problems


def load_rules() -> Doc:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    assert isinstance(rules, dict)
    return rules


def test_dashboard_uses_only_registered_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard_exprs(dashboard)
    assert dashboard_problems(dashboard, registered_metrics()) == []


def test_alert_rules_use_only_registered_metrics() -> None:
    assert rule_problems(load_rules(), registered_metrics()) == []


def test_alert_rules_cover_lag_dead_letters_latency_and_errors() -> None:
    used = set()
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            used |= promql_metrics(rule["expr"])
    assert {
        "meter_consumer_lag",
        "meter_events_dead_lettered_total",
        "meter_http_request_duration_seconds_bucket",
        "meter_http_requests_total",
    } <= used


def test_metric_checks_fail_on_a_misspelt_name() -> None:
    known = registered_metrics()
    assert promql_metrics('sum by (le) (rate(a_b_bucket{x="y"}[5m])) / on(z) c') == {
        "a_b_bucket",
        "c",
    }
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][1]["targets"][0]["expr"] = "rate(meter_checks_totl[5m])"
    assert dashboard_problems(dashboard, known)
    rules = load_rules()
    rules["groups"][0]["rules"][0]["expr"] = "meter_consumer_lags > 1"
    assert rule_problems(rules, known)
