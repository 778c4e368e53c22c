"""Every kustomize overlay in k8s/ renders offline, and every object it renders validates: built-in
kinds strictly against Kubernetes' schemas, KubeRay kinds against the KubeRay v1.7.0 CRD schemas."""

from __future__ import annotations

import copy
import shutil

import pytest
from k8s_schema import K8S, overlays, problems, render

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not on PATH")

OVERLAYS = overlays()


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_there_are_team_and_job_overlays():
    assert {p.name for p in OVERLAYS} >= {"team-a", "team-b", "team-a-digits-job"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders_and_every_object_validates(overlay):
    objs = render(overlay)
    assert objs, f"{overlay} rendered nothing"
    found = [p for o in objs for p in problems(o)]
    assert not found, "\n".join(found)
    ns = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert len(ns) == 1 and None not in ns, f"every namespaced object goes to the team's namespace, got {ns}"


def test_team_platform_has_everything_a_team_needs():
    objs = by_kind(render(K8S / "overlays" / "team-a"))
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ResourceQuota", "LimitRange", "NetworkPolicy",
            "PersistentVolumeClaim", "RayCluster"} <= set(objs)
    assert objs["Namespace"][0]["metadata"]["name"] == "team-a"
    rb = objs["RoleBinding"][0]
    assert {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "raydl:team-a"} in rb["subjects"]
    assert {"kind": "ServiceAccount", "name": "raydl-submitter", "namespace": "team-a"} in rb["subjects"]
    rules = objs["Role"][0]["rules"]
    assert any("rayjobs" in r["resources"] and "create" in r["verbs"] for r in rules)
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in rules)
    netpol = objs["NetworkPolicy"][0]["spec"]
    assert netpol["podSelector"] == {} and netpol["policyTypes"] == ["Ingress"]
    assert {"podSelector": {}} in netpol["ingress"][0]["from"]  # same namespace only (and the operator)
    rc = objs["RayCluster"][0]["spec"]
    assert rc["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in rc["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["nodeSelector"] and gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups.values())
    env = rc["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "raydl-wandb", "key": "api-key", "optional": True}}} in env
    assert objs["ResourceQuota"][0]["spec"]["hard"]["requests.cpu"] == "32"


def test_team_b_is_cpu_only():
    objs = by_kind(render(K8S / "overlays" / "team-b"))
    assert [g["groupName"] for g in objs["RayCluster"][0]["spec"]["workerGroupSpecs"]] == ["cpu"]
    assert objs["ResourceQuota"][0]["spec"]["hard"]["requests.nvidia.com/gpu"] == "0"


def test_job_template_runs_raydl_train_on_the_spec_from_its_configmap():
    objs = by_kind(render(K8S / "overlays" / "team-a-digits-job"))
    job, cm = objs["RayJob"][0], objs["ConfigMap"][0]
    spec = job["spec"]
    assert spec["entrypoint"] == "raydl train /raydl/spec/spec.yaml"
    assert (spec["submissionMode"], spec["shutdownAfterJobFinishes"]) == ("K8sJobMode", True)
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 0
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "spec", "configMap": {"name": cm["metadata"]["name"]}} in head["volumes"]
    import yaml

    from raydl.spec import spec_from_dict

    shipped = spec_from_dict(yaml.safe_load(cm["data"]["spec.yaml"]))  # the ConfigMap holds a valid job spec
    assert shipped.run.storage_path == "/mnt/runs"


@pytest.mark.parametrize("path, bad", [
    (("spec", "backoffLimit"), "three"),                                   # RayJob: integer expected
    (("spec", "shutdownAfterJobFinishes"), "yes"),                         # RayJob: boolean expected
    (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "maxReplicas"), "2"),  # RayCluster spec inside: integer
    (("spec", "entrypoints"), "raydl train"),                              # unknown (misspelt) field
])
def test_an_invalid_field_fails_validation(path, bad):
    job = next(o for o in render(K8S / "overlays" / "team-a-digits-job") if o["kind"] == "RayJob")
    broken = copy.deepcopy(job)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    assert not problems(job)
    found = problems(broken)
    assert found and ".".join(map(str, path[1:])) in found[0], found


def test_an_invalid_builtin_object_fails_validation():
    quota = next(o for o in render(K8S / "overlays" / "team-a") if o["kind"] == "ResourceQuota")
    broken = copy.deepcopy(quota)
    broken["spec"]["hardd"] = broken["spec"].pop("hard")
    assert problems(broken) and not problems(quota)
    auth = next(o for o in render(K8S / "overlays" / "team-a") if o["kind"] == "RayCluster")
    broken = copy.deepcopy(auth)
    broken["spec"]["authOptions"]["mode"] = "password"
    assert any("authOptions.mode" in p for p in problems(broken))


# ---- raydl.kube's RayJob agrees with the CRD and with the template ------------------------------


@pytest.mark.parametrize("overrides", [[], ["scaling.use_gpu=true", "scaling.num_workers=3", "scaling.cpus_per_worker=4"]])
def test_built_rayjob_validates_and_matches_the_template(overrides):
    from clusters import DIGITS

    from raydl import kube
    from raydl.spec import load_spec

    spec = load_spec(DIGITS, ["run.storage_path=/mnt/runs", *overrides])
    cm, job = kube.build(spec, name="raydl-digits-mlp-abc123", namespace="team-a", image="registry.example.com/ml/raydl:0.1.0")
    assert not problems(job) and not problems(cm)
    template = next(o for o in render(K8S / "overlays" / "team-a-digits-job") if o["kind"] == "RayJob")

    def head(j):
        return j["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]

    for key in ("submissionMode", "shutdownAfterJobFinishes"):
        assert job["spec"][key] == template["spec"][key]
    assert job["spec"]["entrypoint"] == template["spec"]["entrypoint"]  # raydl train /raydl/spec/spec.yaml
    for part in ("env", "envFrom", "volumeMounts"):  # W&B and S3 secrets, spec and runs mounts
        assert head(job)["containers"][0][part] == head(template)["containers"][0][part]
    assert [v.get("persistentVolumeClaim") for v in head(job)["volumes"]] == \
        [v.get("persistentVolumeClaim") for v in head(template)["volumes"]]
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == spec.scaling.num_workers
    assert workers["rayStartParams"]["num-cpus"] == f"{spec.scaling.cpus_per_worker:g}"
    if spec.scaling.use_gpu:
        pod = workers["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" and pod["tolerations"]


def test_quantities_and_quota_arithmetic():
    from raydl import kube

    assert [kube.quantity(q) for q in ("500m", "2", "1.5", "4Gi", "1k", "100M")] == [0.5, 2, 1.5, 4 * 2**30, 1000, 1e8]
    need = {"cpu": (5.0, "x"), "memory": (6 * 2**30, "y")}
    quota = {"metadata": {"name": "q"}, "spec": {"hard": {"requests.cpu": "8", "limits.memory": "8Gi"}},
             "status": {"used": {"requests.cpu": "4", "limits.memory": "1Gi"}}}
    assert "requests.cpu=5 (x) but ResourceQuota q leaves 4 (8 hard, 4 used)" in kube.quota_problem("t", need, [quota])
    quota["status"]["used"]["requests.cpu"] = "3"
    assert kube.quota_problem("t", need, [quota]) is None
