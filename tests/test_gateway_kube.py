"""`runner: kuberay` against a real kube-apiserver (tests/kubeapi.py: RBAC on, the KubeRay CRDs and
both teams' platform overlays applied). The gateway authenticates as its ServiceAccount
(system:serviceaccount:raydl-system:raydl-gateway), which only the teams' `raydl-submitter-gateway`
RoleBindings let in: a team's job becomes a RayJob in the team's namespace; a team without a
namespace bound to the gateway gets a 503 that says why. No KubeRay operator runs: the test writes
the RayJob's status, as the operator would, and reads it back through the gateway."""

from __future__ import annotations

import os

import httpx
import kubeapi
import pytest
import yaml
from gateway_server import auth, make_config, make_token, serve_thread

from raydl.spec import spec_from_dict

pytestmark = [pytest.mark.slow, pytest.mark.skipif(kubeapi.available() is not None, reason=str(kubeapi.available()))]

GATEWAY_SA = "system:serviceaccount:raydl-system:raydl-gateway"
SPEC = {"run": {"name": "digits-mlp"}, "data": {"source": "digits"}, "scaling": {"num_workers": 1},
        "training": {"epochs": 1}, "tracking": "none"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gwk")
    kubeapi.TOKENS[GATEWAY_SA] = ("gateway-sa-token", "system:serviceaccounts")
    before = os.environ.get("KUBECONFIG")
    srv = None
    try:
        srv = kubeapi.start()
        os.environ["KUBECONFIG"] = str(srv.kubeconfig(folder / "kubeconfig", current=GATEWAY_SA))
        cfg = make_config(folder / "data", runner="kuberay", kube_image="registry.example.com/ml/raydl:0.1.0",
                          teams={"team-a": {"max_concurrent_jobs": 5, "max_workers": 50},
                                 "team-b": {"max_concurrent_jobs": 5, "max_workers": 50},
                                 "team-c": {"max_concurrent_jobs": 5, "max_workers": 50}})
        toks = {t: make_token(cfg, t) for t in cfg["teams"]}
        with serve_thread(cfg) as (url, _):
            yield srv, url, toks
    finally:
        if before is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = before
        if srv is not None:
            srv.stop()
        kubeapi.TOKENS.pop(GATEWAY_SA, None)


def test_a_team_job_becomes_a_rayjob_in_its_namespace(platform):
    from kubernetes import client

    srv, url, toks = platform
    r = httpx.post(f"{url}/v1/jobs", json={"spec": SPEC}, headers=auth(toks["team-a"]), timeout=60)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    api = client.CustomObjectsApi(srv.client())
    obj = api.get_namespaced_custom_object("ray.io", "v1", "team-a", "rayjobs", job_id)
    assert obj["metadata"]["annotations"]["raydl.io/raydl_gateway_team"] == "team-a"
    cm = client.CoreV1Api(srv.client()).read_namespaced_config_map(f"{job_id}-spec", "team-a")
    shipped = spec_from_dict(yaml.safe_load(cm.data["spec.yaml"]))
    assert shipped.run.storage_path == f"/mnt/runs/{job_id}"  # the team's runs volume
    assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(toks["team-b"])).status_code == 404

    for status, deployment in (("RUNNING", "Running"), ("SUCCEEDED", "Complete")):  # the operator's part
        obj = api.get_namespaced_custom_object("ray.io", "v1", "team-a", "rayjobs", job_id)
        obj["status"] = {"jobStatus": status, "jobDeploymentStatus": deployment, "message": f"job {status.lower()}"}
        api.replace_namespaced_custom_object_status("ray.io", "v1", "team-a", "rayjobs", job_id, obj)
        got = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(toks["team-a"])).json()
        assert got["status"] == status, got

    second = httpx.post(f"{url}/v1/jobs", json={"spec": SPEC}, headers=auth(toks["team-a"]), timeout=60).json()["id"]
    stopped = httpx.post(f"{url}/v1/jobs/{second}/cancel", headers=auth(toks["team-a"]), timeout=60).json()
    assert stopped["status"] == "STOPPED"
    assert api.get_namespaced_custom_object("ray.io", "v1", "team-a", "rayjobs", second)["spec"]["suspend"] is True


def test_a_namespace_the_gateway_may_not_use_or_a_full_quota_is_503_saying_why(platform):
    _, url, toks = platform
    r = httpx.post(f"{url}/v1/jobs", json={"spec": SPEC}, headers=auth(toks["team-c"]), timeout=60)
    assert r.status_code == 503 and "did not take job" in r.json()["detail"] and "403" in r.json()["detail"], r.text
    failed = httpx.get(f"{url}/v1/jobs", headers=auth(toks["team-c"])).json()["jobs"]
    assert [j["status"] for j in failed] == ["FAILED"] and failed[0]["message"].startswith("not submitted")
    big = {**SPEC, "scaling": {"num_workers": 20}}  # within the gateway's quota, over team-b's ResourceQuota (8 CPUs)
    r = httpx.post(f"{url}/v1/jobs", json={"spec": big}, headers=auth(toks["team-b"]), timeout=60)
    assert r.status_code == 503 and "quota" in r.json()["detail"], r.text
