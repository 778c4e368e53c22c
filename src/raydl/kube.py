"""raydl on Kubernetes: a KubeRay RayJob built from a spec, the spec in a ConfigMap beside it.

Pure parts first: `build` (the ConfigMap and the RayJob, resources from `scaling:`), `requested`
(what the job's pods ask for in total) and `quota_problem` (against a namespace's ResourceQuotas).
Then `Kube`, a thin wrapper over the `kubernetes` client (imported lazily: it is an optional extra)
that turns the API server's answers into one-line errors: no kubeconfig or context, 403, 404, 422.

The names here match the team platform in k8s/base/platform (PVC `raydl-runs` at /mnt/runs,
Secrets `raydl-wandb` and `raydl-s3`) and the RayJob template in k8s/base/rayjob.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path

from raydl.errors import AuthError, DataError, NotFoundError, RaydlError, ResourceError, SpecError
from raydl.spec import JobSpec, spec_to_yaml

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = "raydl:0.1.0"
SPEC_MOUNT, SPEC_KEY = "/raydl/spec", "spec.yaml"
RUNS_PVC, RUNS_MOUNT = "raydl-runs", "/mnt/runs"
WANDB_SECRET, S3_SECRET = "raydl-wandb", "raydl-s3"
MANAGED = {"app.kubernetes.io/managed-by": "raydl", "app.kubernetes.io/part-of": "raydl"}
HEAD = {"cpu": 1.0, "memory": 4 * 1024**3}
SUBMITTER = {"cpu": 0.5, "memory": 512 * 1024**2}
MEMORY_PER_CPU = 2 * 1024**3  # a worker pod's memory: 2 GiB per CPU it asks for, at least 2 GiB
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# ---- pure parts ------------------------------------------------------------------------------


def job_name(spec: JobSpec) -> str:
    """A DNS-1123 name (KubeRay derives the cluster's and the submitter's names from it)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", spec.run.name.lower()).strip("-")[:30] or "run"
    return f"raydl-{stem}-{uuid.uuid4().hex[:6]}"


def check_data(spec: JobSpec) -> None:
    """A RayJob carries no files: the data must be built-in, a URI, or a path on the team's volume."""
    from raydl.datasets import DATASETS
    from raydl.storage import is_uri

    src = spec.data.source
    if src not in DATASETS and not is_uri(src) and not src.startswith("/"):
        raise DataError(f"data.source {src!r}: a RayJob cannot carry local files; give a built-in dataset, a URI "
                        f"(s3://bucket/path/) or an absolute path on the team's shared volume ({RUNS_MOUNT}/...)")


def _gib(n: float) -> str:
    return f"{n / 1024**3:g}Gi"


def worker_resources(spec: JobSpec) -> dict[str, str]:
    sc = spec.scaling
    res = {"cpu": f"{sc.cpus_per_worker:g}", "memory": _gib(max(MEMORY_PER_CPU, MEMORY_PER_CPU * sc.cpus_per_worker))}
    if sc.use_gpu:
        res["nvidia.com/gpu"] = str(math.ceil(sc.gpus_per_worker))
    return res


def requested(spec: JobSpec) -> dict[str, tuple[float, str]]:
    """What the job's pods ask for in total (requests = limits), in base units, with how it adds up."""
    sc, n = spec.scaling, spec.scaling.num_workers
    w_mem = max(MEMORY_PER_CPU, MEMORY_PER_CPU * sc.cpus_per_worker)
    need = {
        "cpu": (HEAD["cpu"] + SUBMITTER["cpu"] + n * sc.cpus_per_worker,
                f"head {HEAD['cpu']:g} + submitter {SUBMITTER['cpu']:g} + {n} workers x {sc.cpus_per_worker:g}"),
        "memory": (HEAD["memory"] + SUBMITTER["memory"] + n * w_mem,
                   f"head {_gib(HEAD['memory'])} + submitter {_gib(SUBMITTER['memory'])} + {n} workers x {_gib(w_mem)}"),
        "pods": (n + 2.0, f"head + submitter + {n} workers"),
        "count/rayjobs.ray.io": (1.0, "this RayJob"),
    }
    if sc.use_gpu:
        g = math.ceil(sc.gpus_per_worker)
        need["nvidia.com/gpu"] = (float(n * g), f"{n} workers x {g}")
    return need


# quota key -> the need it limits (requests and limits are equal on every pod raydl builds)
_QUOTA_KEYS = {
    "cpu": "cpu", "requests.cpu": "cpu", "limits.cpu": "cpu",
    "memory": "memory", "requests.memory": "memory", "limits.memory": "memory",
    "requests.nvidia.com/gpu": "nvidia.com/gpu", "limits.nvidia.com/gpu": "nvidia.com/gpu",
    "pods": "pods", "count/pods": "pods", "count/rayjobs.ray.io": "count/rayjobs.ray.io",
}


def quantity(text) -> float:
    from decimal import Decimal

    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
    s = str(text).strip()
    for suffix in sorted(units, key=len, reverse=True):
        if s.endswith(suffix):
            return float(Decimal(s[: -len(suffix)]) * Decimal(units[suffix]))
    return float(Decimal(s))


def _show(key: str, v: float) -> str:
    return _gib(v) if key == "memory" else f"{v:g}"


def quota_problem(namespace: str, need: dict[str, tuple[float, str]], quotas: list[dict]) -> str | None:
    """None when the job fits what every ResourceQuota in the namespace has left; else one line."""
    for q in quotas:
        hard, used = q.get("spec", {}).get("hard") or {}, (q.get("status") or {}).get("used") or {}
        for key, limit in hard.items():
            what = _QUOTA_KEYS.get(key)
            if what is None or what not in need:
                continue
            left = quantity(limit) - quantity(used.get(key, "0"))
            amount, how = need[what]
            if amount > left + 1e-9:
                return (f"namespace {namespace}: the RayJob needs {key}={_show(what, amount)} ({how}) but ResourceQuota "
                        f"{q['metadata']['name']} leaves {_show(what, left)} ({limit} hard, {used.get(key, '0')} used); "
                        "lower scaling.num_workers or the per-worker resources")
    return None


def _pod_extras() -> dict:
    return {
        "env": [{"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": WANDB_SECRET, "key": "api-key", "optional": True}}}],
        "envFrom": [{"secretRef": {"name": S3_SECRET, "optional": True}}],
    }


def build(spec: JobSpec, *, name: str, namespace: str, image: str = DEFAULT_IMAGE, kind: str = "train") -> tuple[dict, dict]:
    """The ConfigMap holding the resolved spec, and the RayJob that runs `raydl KIND` on it."""
    labels = {**MANAGED, "raydl.io/run": spec.run.name[:63]}
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": f"{name}-spec", "namespace": namespace, "labels": labels},
          "data": {SPEC_KEY: spec_to_yaml(spec)}}
    runs_volume = {"name": "runs", "persistentVolumeClaim": {"claimName": RUNS_PVC}}
    runs_mount = {"name": "runs", "mountPath": RUNS_MOUNT}
    head_res = {"cpu": f"{HEAD['cpu']:g}", "memory": _gib(HEAD["memory"])}
    w_res = worker_resources(spec)
    sc = spec.scaling
    worker_pod: dict = {"containers": [{"name": "ray-worker", "image": image, "resources": {"requests": w_res, "limits": w_res},
                                        **_pod_extras(), "volumeMounts": [runs_mount]}],
                        "volumes": [runs_volume]}
    start = {"num-cpus": f"{sc.cpus_per_worker:g}"}
    if sc.use_gpu:
        start["num-gpus"] = w_res["nvidia.com/gpu"]
        worker_pod["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        worker_pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    sub_res = {"cpu": f"{SUBMITTER['cpu']:g}", "memory": f"{SUBMITTER['memory'] // 1024**2}Mi"}
    job = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "entrypoint": f"raydl {kind} {SPEC_MOUNT}/{SPEC_KEY}",
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "backoffLimit": 0,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"spec": {
                        "containers": [{"name": "ray-head", "image": image, "resources": {"requests": head_res, "limits": head_res},
                                        **_pod_extras(),
                                        "volumeMounts": [{"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True}, runs_mount]}],
                        "volumes": [{"name": "spec", "configMap": {"name": cm["metadata"]["name"]}}, runs_volume]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu" if sc.use_gpu else "cpu",
                    "replicas": sc.num_workers, "minReplicas": sc.num_workers, "maxReplicas": sc.num_workers,
                    "rayStartParams": start, "template": {"spec": worker_pod},
                }],
            },
            "submitterPodTemplate": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "ray-job-submitter", "image": image, "resources": {"requests": sub_res, "limits": sub_res}}]}},
        },
    }
    return cm, job


def job_record(obj: dict) -> dict:
    st = obj.get("status") or {}
    return {"job_id": obj["metadata"]["name"], "namespace": obj["metadata"].get("namespace"),
            "status": st.get("jobStatus") or "PENDING", "deployment_status": st.get("jobDeploymentStatus"),
            "message": st.get("message") or st.get("reason"), "start_time": st.get("startTime"),
            "end_time": st.get("endTime"), "suspended": bool(obj.get("spec", {}).get("suspend")),
            "run": obj["metadata"].get("labels", {}).get("raydl.io/run")}


# ---- the API server ----------------------------------------------------------------------------


def _kubeconfig_paths() -> list[Path]:
    raw = os.environ.get("KUBECONFIG")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p] if raw else [Path.home() / ".kube" / "config"]


class Kube:
    """The `kubernetes` client for one context, with one-line errors."""

    def __init__(self, context: str | None = None) -> None:
        try:
            from kubernetes import client, config
        except ImportError:
            raise RaydlError("--k8s needs the Kubernetes client: pip install 'raydl[k8s]'") from None
        paths = _kubeconfig_paths()
        where = os.pathsep.join(map(str, paths))
        if not any(p.is_file() for p in paths):
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:  # inside a pod: its service account
                config.load_incluster_config()
                self.api, self.context, self.default_ns = client.ApiClient(), "in-cluster", None
                return
            hint = "KUBECONFIG names no file" if os.environ.get("KUBECONFIG") else "~/.kube/config does not exist"
            raise NotFoundError(f"no kubeconfig: {hint} ({where}); point KUBECONFIG at your cluster's kubeconfig "
                                "(e.g. from your platform team or `gcloud container clusters get-credentials`)")
        try:
            contexts, current = config.list_kube_config_contexts(config_file=where)
        except config.ConfigException as e:
            raise NotFoundError(f"kubeconfig {where}: {str(e).splitlines()[0]}") from None
        names = [c["name"] for c in contexts]
        if context is not None and context not in names:
            raise NotFoundError(f"--context {context!r}: no such context in {where}; contexts: {', '.join(names) or 'none'}")
        if context is None and not current:
            raise NotFoundError(f"kubeconfig {where} has no current context; pass --context (contexts: {', '.join(names) or 'none'})")
        chosen = next(c for c in contexts if c["name"] == (context or current["name"]))
        self.api = config.new_client_from_config(config_file=where, context=chosen["name"])
        self.context, self.default_ns = chosen["name"], chosen.get("context", {}).get("namespace")
        if not self.api.configuration.verify_ssl:  # the kubeconfig says so (insecure-skip-tls-verify): no warning per request
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.server = self.api.configuration.host

    def _call(self, what: str, namespace: str, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=15, **kwargs)
        except ApiException as e:
            raise self._explain(e, what, namespace) from None
        except HTTPError as e:
            raise ResourceError(f"cannot reach the Kubernetes API server of context {self.context} "
                                f"({getattr(self, 'server', '?')}): {type(e).__name__}") from None

    def _explain(self, e, what: str, namespace: str) -> RaydlError:
        import json

        try:
            msg = json.loads(e.body).get("message") or e.reason
        except (TypeError, ValueError):
            msg = e.reason
        if e.status == 401:
            return AuthError(f"the Kubernetes API server of context {self.context} does not accept your credentials (401): "
                             "log in again or refresh the kubeconfig")
        if e.status == 403:
            return AuthError(f"not allowed to {what} in namespace {namespace!r} (403 Forbidden from context {self.context}): "
                             f"{msg}; use your team's namespace, or ask the platform team to bind you to the "
                             f"raydl-submitter role there")
        if e.status == 404:
            return NotFoundError(f"{what} in namespace {namespace!r}: not found (404): {msg}")
        if e.status == 422:
            return SpecError(f"the API server rejected the object ({what}, 422 Invalid): {msg}")
        return ResourceError(f"{what} in namespace {namespace!r} failed: {e.status} {e.reason}: {msg}")

    def _custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def _core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def quotas(self, namespace: str) -> list[dict]:
        got = self._call("read ResourceQuotas", namespace, self._core().list_namespaced_resource_quota, namespace)
        return [self.api.sanitize_for_serialization(q) for q in got.items]

    def create(self, cm: dict, job: dict) -> dict:
        """Create the RayJob, then its ConfigMap owned by it (deleted with it); roll back on failure."""
        ns = job["metadata"]["namespace"]
        made = self._call("create RayJobs", ns, self._custom().create_namespaced_custom_object,
                          GROUP, VERSION, ns, PLURAL, job, field_validation="Strict")
        owner = {"apiVersion": job["apiVersion"], "kind": "RayJob", "name": made["metadata"]["name"],
                 "uid": made["metadata"]["uid"]}
        cm = {**cm, "metadata": {**cm["metadata"], "ownerReferences": [owner]}}
        try:
            self._call("create ConfigMaps", ns, self._core().create_namespaced_config_map, ns, cm, field_validation="Strict")
        except BaseException:
            self.delete(ns, made["metadata"]["name"])
            raise
        return made

    def get(self, namespace: str, name: str) -> dict:
        try:
            return self._call(f"read RayJob {name!r}", namespace, self._custom().get_namespaced_custom_object,
                              GROUP, VERSION, namespace, PLURAL, name)
        except NotFoundError:
            raise NotFoundError(f"RayJob {name!r} not found in namespace {namespace!r}; "
                                f"`raydl jobs list --k8s --namespace {namespace}` lists them") from None

    def list(self, namespace: str) -> list[dict]:
        got = self._call("list RayJobs", namespace, self._custom().list_namespaced_custom_object, GROUP, VERSION,
                         namespace, PLURAL, label_selector="app.kubernetes.io/managed-by=raydl")
        return got.get("items", [])

    def suspend(self, namespace: str, name: str) -> dict:
        """Stop a RayJob the KubeRay way: `spec.suspend: true` (the operator deletes its Ray cluster)."""
        self.get(namespace, name)
        return self._call(f"stop RayJob {name!r}", namespace, self._custom().patch_namespaced_custom_object,
                          GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": True}})

    def delete(self, namespace: str, name: str) -> None:
        self._call(f"delete RayJob {name!r}", namespace, self._custom().delete_namespaced_custom_object,
                   GROUP, VERSION, namespace, PLURAL, name)

    def submitter_logs(self, namespace: str, name: str) -> str:
        obj = self.get(namespace, name)
        pods = self._call("list pods", namespace, self._core().list_namespaced_pod, namespace,
                          label_selector=f"job-name={name}").items
        if not pods:
            st = job_record(obj)
            raise NotFoundError(f"RayJob {name!r} has no submitter pod yet (status {st['status']}, deployment "
                                f"{st['deployment_status'] or 'not started'}); try again once it runs")
        pod = sorted(pods, key=lambda p: p.metadata.creation_timestamp)[-1]
        return self._call("read pod logs", namespace, self._core().read_namespaced_pod_log, pod.metadata.name, namespace)
