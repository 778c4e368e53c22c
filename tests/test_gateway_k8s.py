"""The gateway's manifests (k8s/overlays/gateway; every object is also validated strictly by
test_k8s_manifests.py): what it needs to run, and that teams let it in and nothing more."""

from __future__ import annotations

import shutil

import pytest
import yaml
from k8s_schema import K8S, render

from raydl.gateway.config import config_from_dict

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not on PATH")


def kinds(objs: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objs}


def test_gateway_deployment_service_account_and_config():
    objs = render(K8S / "overlays" / "gateway")
    k = kinds(objs)
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PersistentVolumeClaim", "Deployment",
            "Service"} <= set(k)
    assert k["Namespace"]["metadata"]["name"] == "raydl-system"
    dep = k["Deployment"]["spec"]
    pod = dep["template"]["spec"]
    assert dep["replicas"] == 1 and dep["strategy"]["type"] == "Recreate" and pod["serviceAccountName"] == "raydl-gateway"
    c = pod["containers"][0]
    assert c["command"][:3] == ["raydl", "gateway", "serve"] and c["image"] == "registry.example.com/ml/raydl:0.1.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert k["Service"]["spec"]["selector"] == dep["template"]["metadata"]["labels"]
    cfg = config_from_dict(yaml.safe_load(k["ConfigMap"]["data"]["gateway.yaml"]))  # the shipped config is valid
    assert str(cfg.data_dir) == c["volumeMounts"][1]["mountPath"]
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in k["Role"]["rules"])


def test_each_team_namespace_lets_the_gateway_submit_and_reach_its_dashboard():
    for team in ("team-a", "team-b"):
        objs = render(K8S / "overlays" / team)
        rb = [o for o in objs if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "raydl-submitter-gateway"]
        assert rb and rb[0]["metadata"]["namespace"] == team
        assert rb[0]["subjects"] == [{"kind": "ServiceAccount", "name": "raydl-gateway", "namespace": "raydl-system"}]
        assert rb[0]["roleRef"]["name"] == "raydl-submitter"  # the team's own Role, namespaced: nothing elsewhere
        netpol = next(o for o in objs if o["kind"] == "NetworkPolicy")
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "raydl-system"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "raydl-gateway"}}} in netpol["spec"]["ingress"][0]["from"]
