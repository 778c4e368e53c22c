"""`raydl submit --k8s` and `raydl jobs --k8s` against a real Kubernetes API server (kube-apiserver +
etcd, RBAC on, the KubeRay CRDs and both teams' platform overlays applied; see tests/kubeapi.py)."""

from __future__ import annotations

import json
import os

import kubeapi
import pytest
import yaml
from clusters import DIGITS
from k8s_schema import problems

from raydl import kube
from raydl.cli import main
from raydl.spec import load_spec, spec_from_dict

why_not = kubeapi.available()
if why_not and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the Kubernetes tests: {why_not}")  # never a silent skip in CI
pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not is not None, reason=why_not or "")]

SPEC_OVERRIDES = ["run.storage_path=/mnt/runs", "training.epochs=1"]


@pytest.fixture(scope="module")
def server():
    srv = kubeapi.start()
    yield srv
    srv.stop()


@pytest.fixture
def kubeconfig(server, tmp_path, monkeypatch):
    path = server.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


def cli(args: list[str], capfd) -> tuple[int, str, str]:
    code = main(args)
    out = capfd.readouterr()
    return code, out.out, out.err.strip()


def rayjobs(server, ns: str = "team-a") -> list[dict]:
    from kubernetes import client

    return client.CustomObjectsApi(server.client()).list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs")["items"]


def test_submit_creates_a_rayjob_and_jobs_reads_its_status(server, kubeconfig, capfd):
    from kubernetes import client

    code, out, err = cli(["submit", DIGITS, *SPEC_OVERRIDES, "--k8s", "--namespace", "team-a", "--json",
                          "--image", "registry.example.com/ml/raydl:0.1.0"], capfd)
    assert code == 0, err
    rec = json.loads(out)
    name = rec["job_id"]
    assert rec["namespace"] == "team-a" and rec["context"] == "alice" and name.startswith("raydl-digits-mlp-")

    admin = server.client()
    job = client.CustomObjectsApi(admin).get_namespaced_custom_object("ray.io", "v1", "team-a", "rayjobs", name)
    assert not problems(job)  # what the server stored passes the full (strict, CEL-free) CRD schema too
    spec = job["spec"]
    assert spec["entrypoint"] == "raydl train /raydl/spec/spec.yaml"
    assert (spec["submissionMode"], spec["shutdownAfterJobFinishes"]) == ("K8sJobMode", True)
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (workers["replicas"], workers["minReplicas"], workers["maxReplicas"]) == (2, 2, 2)
    assert workers["template"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    cm = client.CoreV1Api(admin).read_namespaced_config_map(f"{name}-spec", "team-a")
    assert cm.metadata.owner_references[0].uid == job["metadata"]["uid"]  # deleted with its RayJob
    assert spec_from_dict(yaml.safe_load(cm.data["spec.yaml"])) == load_spec(DIGITS, SPEC_OVERRIDES)

    # No KubeRay operator runs here: play its part and write the status, then read it through raydl.
    job["status"] = {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete", "message": "Job finished successfully."}
    client.CustomObjectsApi(admin).replace_namespaced_custom_object_status("ray.io", "v1", "team-a", "rayjobs", name, job)
    code, out, err = cli(["jobs", "status", name, "--k8s", "--namespace", "team-a", "--json"], capfd)
    assert code == 0, err
    st = json.loads(out)
    assert (st["status"], st["deployment_status"], st["run"]) == ("SUCCEEDED", "Complete", "digits-mlp")
    code, out, _ = cli(["jobs", "list", "--k8s", "--json"], capfd)  # the context's namespace: team-a
    assert code == 0 and name in [j["job_id"] for j in json.loads(out)["jobs"]]

    code, out, err = cli(["jobs", "stop", name, "--k8s", "--namespace", "team-a", "--json"], capfd)
    assert code == 0 and json.loads(out)["suspended"] is True, err
    code, _, err = cli(["jobs", "logs", name, "--k8s", "--namespace", "team-a"], capfd)
    assert code == 2 and f"RayJob {name!r} has no submitter pod yet (status SUCCEEDED" in err


def test_invalid_spec_never_reaches_the_server(server, kubeconfig, capfd):
    before = len(rayjobs(server))
    code, _, err = cli(["submit", DIGITS, "run.storage_path=/mnt/runs", "optimizer.lr=0", "--k8s", "--namespace", "team-a"], capfd)
    assert code == 2 and "optimizer.lr" in err
    code, _, err = cli(["submit", DIGITS, "run.storage_path=/mnt/runs", "data.source=rows.csv", "--k8s", "--namespace", "team-a"], capfd)
    assert code == 2 and "a RayJob cannot carry local files" in err
    assert len(rayjobs(server)) == before


def test_over_the_team_quota_is_refused_before_submitting(server, kubeconfig, capfd):
    before = len(rayjobs(server))
    code, _, err = cli(["submit", DIGITS, *SPEC_OVERRIDES, "scaling.num_workers=16", "scaling.cpus_per_worker=2",
                        "--k8s", "--namespace", "team-a"], capfd)
    assert code == 2
    # team-a's overlay sets requests.cpu: "32": 1 (head) + 0.5 (submitter) + 16 x 2 = 33.5
    assert err == ("raydl: error: namespace team-a: the RayJob needs requests.cpu=33.5 (head 1 + submitter 0.5 + "
                   "16 workers x 2) but ResourceQuota raydl-quota leaves 32 (32 hard, 0 used); "
                   "lower scaling.num_workers or the per-worker resources")
    code, _, err = cli(["submit", DIGITS, *SPEC_OVERRIDES, "scaling.use_gpu=true", "--k8s", "--namespace", "team-b",
                        "--context", "bob"], capfd)
    assert code == 2 and "requests.nvidia.com/gpu=2 (2 workers x 1) but ResourceQuota raydl-quota leaves 0" in err
    assert len(rayjobs(server)) == before and not rayjobs(server, "team-b")


def test_another_teams_namespace_is_403_explained(server, kubeconfig, capfd):
    code, _, err = cli(["submit", DIGITS, *SPEC_OVERRIDES, "--k8s", "--namespace", "team-b"], capfd)
    assert code == 2
    assert err.startswith("raydl: error: not allowed to read ResourceQuotas in namespace 'team-b' "
                          "(403 Forbidden from context alice):")
    assert "raydl-submitter role" in err and len(err.splitlines()) == 1
    code, _, err = cli(["jobs", "list", "--k8s", "--namespace", "team-b"], capfd)
    assert code == 2 and "not allowed to list RayJobs in namespace 'team-b' (403" in err
    assert not rayjobs(server, "team-b")


def test_the_server_validates_rayjobs_422(server, kubeconfig):
    """The API server checks the RayJob against the CRD's schema: raydl explains its 422 in one line."""
    spec = load_spec(DIGITS, SPEC_OVERRIDES)
    cm, job = kube.build(spec, name="raydl-bad-1", namespace="team-a")
    job["spec"]["backoffLimit"] = "three"
    with pytest.raises(kube.SpecError, match=r"rejected the object \(create RayJobs, 422 Invalid\): .*backoffLimit"):
        kube.Kube("alice").create(cm, job)
    assert "raydl-bad-1" not in [j["metadata"]["name"] for j in rayjobs(server)]


def test_missing_kubeconfig_context_or_job(server, kubeconfig, tmp_path, monkeypatch, capfd):
    code, _, err = cli(["jobs", "status", "raydl-none", "--k8s", "--namespace", "team-a"], capfd)
    assert code == 2 and err == ("raydl: error: RayJob 'raydl-none' not found in namespace 'team-a'; "
                                 "`raydl jobs list --k8s --namespace team-a` lists them")
    code, _, err = cli(["jobs", "list", "--k8s", "--context", "carol"], capfd)
    assert code == 2 and err == f"raydl: error: --context 'carol': no such context in {kubeconfig}; contexts: admin, alice, bob"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    code, _, err = cli(["submit", DIGITS, *SPEC_OVERRIDES, "--k8s", "--namespace", "team-a"], capfd)
    assert code == 2 and err.startswith(f"raydl: error: no kubeconfig: KUBECONFIG names no file ({tmp_path / 'nowhere'})")


def test_unreachable_api_server_fails_in_seconds(server, tmp_path, monkeypatch, capfd):
    import time

    from clusters import free_port

    path = server.kubeconfig(tmp_path / "kubeconfig")
    path.write_text(path.read_text().replace(server.url, f"https://127.0.0.1:{free_port()}"))
    monkeypatch.setenv("KUBECONFIG", str(path))
    t0 = time.monotonic()
    code, _, err = cli(["jobs", "list", "--k8s", "--namespace", "team-a"], capfd)
    assert code == 2 and "cannot reach the Kubernetes API server of context alice (https://127.0.0.1:" in err, err
    assert time.monotonic() - t0 < 30
