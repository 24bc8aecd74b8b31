"""The chart against docs/runtime-contract.md: ports, probes, flags, environment."""

from __future__ import annotations

import json

import pytest

from tests.integration.chart_helpers import (
    FieldRef,
    Probe,
    by_kind_name,
    runtime_containers,
)
from tests.integration.staging_deployment.common import (
    NS,
    Index,
    Obj,
    workloads,
)


def test_containers_follow_the_runtime_contract(staging: Index) -> None:
    rc = runtime_containers(staging.values())
    ctl, node = rc["controller"], rc["node"]
    assert ctl.argv[:7] == [
        "x0tta6bl4",
        "controller",
        "--listen",
        "0.0.0.0:8080",
        "--tls-listen",
        "0.0.0.0:8443",
        "--store",
    ]
    assert ctl.ports == {"http": (8080, "TCP"), "https": (8443, "TCP")}
    assert ctl.probes["livenessProbe"] == Probe("/health", 8080)
    assert ctl.probes["readinessProbe"] == Probe("/ready", 8080)
    assert ctl.env["X0_CA_CERT_FILE"] == "/etc/x0tta6bl4/mesh-ca/ca.crt"
    assert ctl.env["X0_TRUST_DOMAIN"] == "x0tta6bl4.mesh"
    assert ctl.env["X0_SPIFFE_SOCKET"] == "/run/spire/agent-sockets/spire-agent.sock"
    assert node.argv[:4] == ["x0tta6bl4", "node", "--controller", "https://x0tta6bl4-api:8443"]
    assert node.env["X0_CONTROLLER_SPIFFE_ID"] == (
        f"spiffe://x0tta6bl4.mesh/ns/{NS}/sa/x0tta6bl4-app/controller"
    )
    assert node.ports == {"mesh": (7810, "UDP"), "http": (7811, "TCP")}
    assert node.probes["livenessProbe"] == Probe("/health", 7811)
    assert node.probes["readinessProbe"] == Probe("/ready", 7811)
    assert node.env["X0_NODE_NAME"] == FieldRef("spec.nodeName")
    assert node.env["X0_POD_IP"] == FieldRef("status.podIP")
    assert all(k.startswith("X0_") for k in [*ctl.env, *node.env])
    api_ports = staging["Service", "x0tta6bl4-api"]["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in api_ports] == [("http", 8080), ("https", 8443)]
    mesh_svc = staging["Service", "x0tta6bl4-mesh"]["spec"]
    assert mesh_svc["clusterIP"] == "None"
    assert {(p["port"], p["protocol"]) for p in mesh_svc["ports"]} == {(7810, "UDP"), (7811, "TCP")}


def test_runtime_container_extraction_unit() -> None:
    # A hand-written workload: named and numeric probe ports, value and fieldRef env.
    ds = {
        "kind": "DaemonSet",
        "metadata": {"name": "d"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "n",
                            "image": "i:1",
                            "command": ["x"],
                            "args": ["node", "--a", "b"],
                            "env": [
                                {"name": "A", "value": 4},
                                {
                                    "name": "B",
                                    "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                },
                            ],
                            "ports": [
                                {"name": "http", "containerPort": 7811},
                                {"name": "u", "containerPort": 1, "protocol": "UDP"},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                            "livenessProbe": {
                                "httpGet": {"path": "/health", "port": 9, "scheme": "HTTPS"}
                            },
                        }
                    ]
                }
            }
        },
    }
    from tests.integration.chart_helpers import extract_container

    spec = extract_container(ds, "n")
    assert spec.argv == ["x", "node", "--a", "b"]
    assert spec.env == {"A": "4", "B": FieldRef("status.podIP")}
    assert spec.ports == {"http": (7811, "TCP"), "u": (1, "UDP")}
    assert spec.probes == {
        "readinessProbe": Probe("/ready", 7811),
        "livenessProbe": Probe("/health", 9, "HTTPS"),
    }
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "nope"
    with pytest.raises(KeyError, match="nope"):
        extract_container(bad, "n")
    with pytest.raises(KeyError, match="no container"):
        extract_container(ds, "other")


def test_security_contexts(variants: dict[str, list[Obj]]) -> None:
    for name, objs in variants.items():
        for obj, pod in workloads(by_kind_name(objs)):
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            psc = pod["securityContext"]
            assert psc["runAsNonRoot"] is True, where
            assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                added = sc["capabilities"].get("add", [])
                tun = name == "operator-tun-hostpath" and c["name"] == "node"
                assert added == (["NET_ADMIN"] if tun else []), where
                assert sc.get("privileged", False) is False, where


def test_every_container_in_the_release_namespace_fits_the_quota(
    variants: dict[str, list[Obj]],
) -> None:
    # The guide's quota sets requests and limits: pods without both are rejected by the API.
    for name, objs in variants.items():
        for obj, pod in workloads(by_kind_name(objs)):
            if obj["metadata"]["namespace"] != NS:
                continue
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][part]), (
                        name,
                        obj["metadata"]["name"],
                        part,
                    )


def test_mesh_ca_comes_from_the_operator_secret(variants: dict[str, list[Obj]]) -> None:
    for objs in variants.values():
        assert not [o for o in objs if o["kind"] == "Secret"]  # the chart never creates keys
    dep = by_kind_name(variants["staging"])["Deployment", "x0tta6bl4-controller"]
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["mesh-ca"]["secret"]["secretName"] == "x0tta6bl4-mesh-ca"
    assert [i["key"] for i in vols["mesh-ca"]["secret"]["items"]] == ["ca.crt", "ca.key"]
