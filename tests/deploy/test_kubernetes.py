"""Kubernetes manifests: the overlays render, every object validates against the Kubernetes JSON
schemas (kubernetes-validate, strict: unknown fields fail), and the properties issue 9 asks for hold."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from .conftest import (
    DEPLOY,
    OVERLAYS,
    by_kind,
    kubectl_kustomize,
    kustomize_lite,
    pod_spec,
    render_overlay,
)

# Oldest Kubernetes minor the manifests must be valid for (schemas shipped by kubernetes-validate).
K8S_VERSION = "1.30.0"


def _base_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((DEPLOY / "base").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append(
                    (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
                )
    return docs


def _validate(obj: dict[str, Any]) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(obj, K8S_VERSION, strict=True)


# --- rendering ---------------------------------------------------------------------------------


def test_overlay_renders(overlay: str, rendered: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in rendered}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "ConfigMap",
        "NetworkPolicy",
    } <= kinds
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "brokerlink", obj["metadata"][
                "name"
            ]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "brokerlink"
        assert obj["metadata"]["labels"]["brokerlink.io/environment"] == overlay


def _canonical(objects: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {
        (o["kind"], o["metadata"]["name"]): yaml.safe_dump(o, sort_keys=True)
        for o in objects
    }


@pytest.mark.parametrize("name", OVERLAYS)
def test_kustomize_lite_matches_kubectl_kustomize(name: str) -> None:
    real = kubectl_kustomize(DEPLOY / "overlays" / name)
    if real is None:
        pytest.skip("kubectl not installed: kustomize_lite is the renderer in use")
    lite = kustomize_lite.render(DEPLOY / "overlays" / name)
    assert _canonical(lite) == _canonical(real)


def test_kustomize_lite_refuses_unknown_features(tmp_path: Any) -> None:
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    with pytest.raises(kustomize_lite.UnsupportedKustomization):
        kustomize_lite.render(tmp_path)


# --- schema validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ident,doc", _base_documents(), ids=[i for i, _ in _base_documents()]
)
def test_base_manifest_validates(ident: str, doc: dict[str, Any]) -> None:
    _validate(doc)


def test_rendered_overlay_validates(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        _validate(obj)


def test_validator_rejects_broken_manifests() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    deployment = copy.deepcopy(
        by_kind(render_overlay("prod")[1], "Deployment")["account-api"]
    )
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(
        by_kind(render_overlay("prod")[1], "Deployment")["account-api"]
    )
    pod_spec(deployment)["containers"][0][
        "readinessProb"
    ] = {}  # typo: an unknown field
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSION, strict=True)


# --- what issue 9 asks for -----------------------------------------------------------------------


def _workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def test_images_are_pinned_and_pods_run_as_non_root(
    rendered: list[dict[str, Any]],
) -> None:
    for obj in _workloads(rendered):
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False
        for c in spec["containers"]:
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (
                image
            )
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert "memory" in c["resources"]["limits"]


def test_long_running_pods_probe_their_real_health_endpoint(
    rendered: list[dict[str, Any]],
) -> None:
    expected_ports = {
        "account-api": 8000,
        "ib-connector": 8081,
        "schwab-connector": 8082,
    }
    for name, port in expected_ports.items():
        obj = (
            by_kind(rendered, "Deployment").get(name)
            or by_kind(rendered, "StatefulSet")[name]
        )
        (container,) = pod_spec(obj)["containers"]
        named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # liveness (and start-up) never depend on NATS or PostgreSQL; readiness does
        paths = {
            "readinessProbe": "/readyz",
            "livenessProbe": "/livez",
            "startupProbe": "/livez",
        }
        for probe, path in paths.items():
            http = container[probe]["httpGet"]
            assert http["path"] == path, (name, probe)
            assert named_ports.get(http["port"], http["port"]) == port, (name, probe)
        env = {e["name"]: e for e in container["env"]}
        health_env = {
            "ib-connector": "IB_CONNECTOR_HEALTH_PORT",
            "schwab-connector": "SCHWAB_CONNECTOR_HEALTH_PORT",
            "account-api": "API_PORT",
        }
        assert env[health_env[name]]["value"] == str(port)


def test_account_api_exposure(rendered: list[dict[str, Any]], overlay: str) -> None:
    ingresses = by_kind(rendered, "Ingress")
    backends = {
        path["backend"]["service"]["name"]
        for ing in ingresses.values()
        for rule in ing["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"account-api"}
    for svc in by_kind(rendered, "Service").values():
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"][
            "name"
        ]
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")["account-api"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "account-api",
    }
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = by_kind(rendered, "PodDisruptionBudget")["account-api"]
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    if overlay == "prod":
        assert hpa["spec"]["minReplicas"] >= 3 and pdb["spec"]["minAvailable"] >= 2
        assert ingresses["account-api"]["spec"]["tls"]


def test_ib_connector_has_stable_identities(rendered: list[dict[str, Any]]) -> None:
    sts = by_kind(rendered, "StatefulSet")["ib-connector"]
    headless = by_kind(rendered, "Service")[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    (container,) = pod_spec(sts)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["IB_CONNECTOR_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.name"
    )
    assert "schwab-connector" in by_kind(rendered, "Deployment")


def test_network_policies(rendered: list[dict[str, Any]]) -> None:
    policies = by_kind(rendered, "NetworkPolicy")
    deny = policies["default-deny-all"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {
        "Ingress",
        "Egress",
    }
    assert "ingress" not in deny and "egress" not in deny
    # only account-api admits traffic from outside the namespace (from the ingress controller)
    ingress_from_outside = {
        name
        for name, p in policies.items()
        for rule in p["spec"].get("ingress", [])
        for peer in rule.get("from", [])
        if "namespaceSelector" in peer or "ipBlock" in peer
    }
    assert ingress_from_outside <= {"account-api-ingress", "postgres-instances"}
    peers = policies["account-api-ingress"]["spec"]["ingress"][0]["from"]
    assert peers == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
            }
        }
    ]
    assert policies["account-api-ingress"]["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "account-api"
    }
    # postgres instances accept only in-cluster peers: clients, each other and the CNPG operator
    pg_peers = [
        peer
        for r in policies["postgres-instances"]["spec"]["ingress"]
        for peer in r["from"]
    ]
    assert all("ipBlock" not in peer for peer in pg_peers)
    # who may reach what, through the labels the policies select on
    labels = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in _workloads(rendered)
    }
    nats_clients = {
        n for n, lab in labels.items() if lab.get("brokerlink.io/nats-client") == "true"
    }
    pg_clients = {
        n
        for n, lab in labels.items()
        if lab.get("brokerlink.io/postgres-client") == "true"
    }
    assert nats_clients == {"account-api", "ib-connector", "schwab-connector"}
    assert pg_clients == {"account-api", "schema-migrate", "legacy-migrator"}


def test_secret_template_and_references(
    overlay: str, rendered: list[dict[str, Any]]
) -> None:
    template = yaml.safe_load((DEPLOY / "base" / "secret.yaml").read_text())
    assert set(template["stringData"].values()) == {"REPLACE_ME"}, (
        "the template holds no real value"
    )
    secrets = by_kind(rendered, "Secret")
    if overlay == "prod":
        assert "brokerlink-secrets" not in secrets, (
            "prod must not overwrite the real Secret"
        )
    else:
        assert "brokerlink-secrets" in secrets
    config = by_kind(rendered, "ConfigMap")["brokerlink-config"]["data"]
    for obj in _workloads(rendered):
        for c in pod_spec(obj)["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == "brokerlink-secrets":
                    assert ref["key"] in template["stringData"], (
                        obj["metadata"]["name"],
                        ref,
                    )
                if ref and ref["name"] == "brokerlink-pg-app":
                    assert ref["key"] in ("username", "password")
            # every $(VAR) in an env value is defined before it (Kubernetes expands only those)
            defined = set(config)
            for e in c.get("env", []):
                value = e.get("value", "")
                for var in re.findall(r"\$\(([A-Z_]+)\)", value):
                    assert var in defined, (obj["metadata"]["name"], e["name"], var)
                defined.add(e["name"])


def test_overlay_settings(overlay: str, rendered: list[dict[str, Any]]) -> None:
    config = by_kind(rendered, "ConfigMap")["brokerlink-config"]["data"]
    assert config["BROKERLINK_STREAM_REPLICAS"] == ("3" if overlay == "prod" else "1")
    assert (
        config["NATS_HOST"].startswith("nats.")
        and config["DATABASE_HOST"] == "brokerlink-pg-rw"
    )
    jobs = by_kind(rendered, "Job")
    assert jobs["legacy-migrator"]["spec"]["suspend"] is True
    assert pod_spec(jobs["schema-migrate"])["containers"][0]["args"] == [
        "account-api",
        "migrate",
    ]


def test_cnpg_cluster() -> None:
    docs = [
        d
        for d in yaml.safe_load_all((DEPLOY / "postgres" / "cluster.yaml").read_text())
        if d
    ]
    (cluster,) = docs
    assert (
        cluster["apiVersion"] == "postgresql.cnpg.io/v1"
        and cluster["kind"] == "Cluster"
    )
    assert (
        cluster["metadata"]["name"] == "brokerlink-pg"
    )  # the base reads Secret brokerlink-pg-app
    assert cluster["metadata"]["namespace"] == "brokerlink"
    spec = cluster["spec"]
    assert spec["instances"] == 3
    assert spec["bootstrap"]["initdb"]["database"] == "brokerlink"
    assert spec["storage"]["size"]
    assert spec["imageName"].split(":")[-1].startswith("16")
    _validate_cnpg_metadata(cluster)


def _validate_cnpg_metadata(cluster: dict[str, Any]) -> None:
    # the CRD's schema is not shipped by kubernetes-validate: check the ObjectMeta part at least
    kv = pytest.importorskip("kubernetes_validate")
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": cluster["metadata"]}
    kv.validate(probe, K8S_VERSION, strict=True)
