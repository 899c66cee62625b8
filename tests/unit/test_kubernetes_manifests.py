"""deploy/kubernetes/: every document is valid against Kubernetes' own schemas (offline, strict)
and keeps the invariants the README promises. No cluster runs here; this is what CI can check.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor

from broker.cli import main as cli
from openenv_zmq.worker.health import BEAT_SECONDS, PROBE

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31"
"""The Kubernetes release whose schemas the manifests are checked against (autoscaling/v2 and
every field used here are in 1.23+; 1.31 is a release clusters still run)."""
NAMESPACE = "openenv"
SECRET_VOLUMES = ("secret", "projected")
Document = dict[str, Any]


def documents() -> list[tuple[str, Document]]:
    found = []
    for path in sorted([*MANIFESTS.glob("*.yaml"), *MANIFESTS.glob("*.yml")]):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                found.append((path.name, document))
    return found


DOCUMENTS = documents()


def named(document: Document) -> str:
    return f"{document['kind']}/{document['metadata']['name']}"


def of_kind(kind: str) -> list[Document]:
    return [d for _, d in DOCUMENTS if d["kind"] == kind]


def deployment(component: str) -> Document:
    [found] = [
        d
        for d in of_kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def pod(document: Document) -> Document:
    spec: Document = document["spec"]["template"]["spec"]
    return spec


def containers() -> Iterator[tuple[str, Document, Document]]:
    """(deployment name, its pod spec, container) for every container of every Deployment."""
    for document in of_kind("Deployment"):
        spec = pod(document)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield document["metadata"]["name"], spec, container


def flags(container: Document) -> dict[str, str]:
    """The container's ``--name=value`` arguments (the manifests spell every flag so)."""
    return dict(a.split("=", 1) for a in container["args"] if a.startswith("--"))


# ---------------------------------------------------------------- schemas


def test_the_folder_holds_the_whole_deployment() -> None:
    kinds = sorted(named(d) for _, d in DOCUMENTS)
    assert kinds == [
        "Deployment/openenv-broker",
        "Deployment/openenv-gateway",
        "Deployment/openenv-worker",
        "HorizontalPodAutoscaler/openenv-worker",
        "Namespace/openenv",
        "Service/openenv-broker",
        "Service/openenv-gateway",
    ]
    # applied in file name order: the namespace before what lives in it
    assert DOCUMENTS[0][1]["kind"] == "Namespace"


def test_the_pinned_kubernetes_version_has_its_own_schemas() -> None:
    # kubernetes-validate falls back to the newest older schemas it bundles; that would check
    # against another release than the one named here without saying so
    assert KUBERNETES_VERSION in {major_minor(v) for v in all_versions()}


@pytest.mark.parametrize(("path", "document"), DOCUMENTS, ids=[named(d) for _, d in DOCUMENTS])
def test_every_document_is_valid_kubernetes(
    path: str, document: Document, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    try:
        # strict: a misspelt or unknown field is an error, not silently dropped by the cluster
        version = kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{path}: {exc.message} (only Kubernetes' own kinds, no custom resources)")
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{path}: {named(document)} at {where}: {exc.message}")
    assert version == KUBERNETES_VERSION


def test_a_misspelt_field_is_caught() -> None:
    broken = yaml.safe_load((MANIFESTS / "30-gateway.yaml").read_text().split("\n---\n")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_everything_lives_in_the_namespace() -> None:
    for _, document in DOCUMENTS:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE, named(document)


# ---------------------------------------------------------------- pods


def test_every_container_has_probes_and_resource_limits() -> None:
    for name, _, container in containers():
        assert "readinessProbe" in container, name
        assert "livenessProbe" in container, name
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert set(resources[bound]) >= {"cpu", "memory"}, (name, bound)


def test_every_pod_runs_unprivileged() -> None:
    for name, spec, container in containers():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        # a read-only root: the one writable place is an emptyDir at /tmp
        volumes = {v["name"]: v for v in spec["volumes"]}
        writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
        assert [m["mountPath"] for m in writable] == ["/tmp"], name
        assert "emptyDir" in volumes[writable[0]["name"]], name


def test_keys_come_from_secrets_mounted_read_only_never_from_env_vars() -> None:
    assert of_kind("Secret") == [], "key material is made with kubectl, never committed here"
    for name, spec, container in containers():
        volumes = {v["name"]: v for v in spec["volumes"]}
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if any(kind in volume for kind in SECRET_VOLUMES):
                assert mount.get("readOnly") is True, (name, mount)
                assert mount["mountPath"].startswith("/keys"), (name, mount)
        for volume in volumes.values():
            mode = volume.get("secret", {}).get("defaultMode")
            if "secret" in volume:
                assert mode is not None, (name, volume["name"])
                assert mode & 0o007 == 0, (name, oct(mode))  # no one but owner and fsGroup
        for variable in container.get("env", []):
            assert "secretKeyRef" not in variable.get("valueFrom", {}), (name, variable)
            assert "key" not in variable["name"].lower(), (name, variable)
        assert not any("secretRef" in source for source in container.get("envFrom", [])), name
        # every process is a CURVE peer, and reads its keys from the mounted folder
        curve_dir = flags(container)["--curve-dir"]
        mounted = [m["mountPath"] for m in container["volumeMounts"]]
        assert any(p == curve_dir or p.startswith(f"{curve_dir}/") for p in mounted), name


def test_the_broker_key_folder_has_the_layout_start_expects() -> None:
    [container] = pod(deployment("broker"))["containers"]
    mounted = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounted) >= {
        "/keys/broker.key",
        "/keys/broker.key_secret",
        "/keys/clients",
        "/keys/workers",
    }
    # the allowlists are whole-Secret mounts, which kubelet updates in place (a subPath mount
    # would never see a key added)
    assert "subPath" not in mounted["/keys/clients"]
    assert "subPath" not in mounted["/keys/workers"]


def test_every_command_line_parses() -> None:
    for name, _, container in containers():
        assert container["command"] == ["openenv-broker"], name
        subcommand = container["args"][0]
        command = cli.commands[subcommand]
        options = {option: p for p in command.params for option in p.opts}
        given = flags(container)
        assert len(given) == len(container["args"]) - 1, (name, "every flag as --name=value")
        for required in (p for p in command.params if p.required):
            assert set(required.opts) & set(given), (name, required.name)
        context = click.Context(command, info_name=subcommand)
        for flag, value in given.items():
            assert flag in options, f"{name}: `openenv-broker {subcommand}` has no {flag}"
            param = options[flag]
            if isinstance(param.type, click.Path):
                continue  # a folder or file that exists only in the pod (/keys, /tmp)
            try:
                param.type.convert(value, param, context)
            except click.BadParameter as exc:
                pytest.fail(f"{name}: {flag}={value}: {exc.format_message()}")


# ---------------------------------------------------------------- workers and draining


def test_a_worker_drains_within_its_grace_period() -> None:
    spec = pod(deployment("worker"))
    [container] = spec["containers"]
    drain_timeout = float(flags(container)["--drain-timeout"])
    grace = spec["terminationGracePeriodSeconds"]
    assert drain_timeout > 0
    # room after the deadline to send BYE, close the envs and exit before SIGKILL
    assert grace >= drain_timeout + 10, (grace, drain_timeout)


def test_worker_probes_read_the_health_file_the_worker_writes() -> None:
    [container] = pod(deployment("worker"))["containers"]
    health_file = flags(container)["--health-file"]
    assert health_file.startswith("/tmp/")  # the writable emptyDir
    checks = {}
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:5] == ["python", "-I", "-S", "-c", PROBE], probe
        path, want, max_age = command[5:]
        assert path == health_file, probe
        assert float(max_age) >= 5 * BEAT_SECONDS, probe
        checks[probe] = want
    assert checks == {"readinessProbe": "ready", "livenessProbe": "alive"}


def test_rolling_updates_wait_for_new_workers_and_the_autoscaler_owns_the_count() -> None:
    worker = deployment("worker")
    assert "replicas" not in worker["spec"]  # the HorizontalPodAutoscaler sets it
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    [autoscaler] = of_kind("HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", worker["metadata"]["name"])
    assert [m["resource"]["name"] for m in autoscaler["spec"]["metrics"]] == ["cpu"]
    assert autoscaler["spec"]["minReplicas"] >= 1


def test_workers_and_the_gateway_reach_the_broker_through_its_service() -> None:
    [service] = [s for s in of_kind("Service") if s["metadata"]["name"] == "openenv-broker"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    host = service["metadata"]["name"]
    [worker] = pod(deployment("worker"))["containers"]
    [gateway] = pod(deployment("gateway"))["containers"]
    [broker] = pod(deployment("broker"))["containers"]
    assert flags(worker)["--connect"] == f"tcp://{host}:{ports['workers']}"
    assert flags(gateway)["--connect"] == f"tcp://{host}:{ports['clients']}"
    assert flags(broker)["--advertise"] == flags(worker)["--connect"]
    assert flags(broker)["--workers"] == "0"


# ---------------------------------------------------------------- metrics


def test_the_broker_is_scraped_through_pod_annotations_on_its_metrics_port() -> None:
    broker = deployment("broker")
    annotations = broker["spec"]["template"]["metadata"]["annotations"]
    [container] = pod(broker)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"
    assert flags(container)["--metrics-port"] == str(ports["metrics"])
    assert flags(container)["--metrics-host"] == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert (check["path"], check["port"]) == ("/metrics", "metrics"), probe
